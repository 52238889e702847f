{{/* Names, labels and the pieces every Ray pod shares. */}}

{{- define "fabriek.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* RELEASE-fabriek, or the release name when it already holds the chart name. */}}
{{- define "fabriek.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "fabriek.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fabriek.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fabriek.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "fabriek.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fabriek
{{- end -}}

{{/*
A domain's Ray token Secret, RELEASE-fabriek-<domain>-ray (KubeRay's authOptions): each
domain's Ray cluster has its own token, and no other domain's pods mount it.
Call with (dict "root" $ "domain" NAME).
*/}}
{{- define "fabriek.raySecretName" -}}
{{- printf "%s-ray" (include "fabriek.domainFullname" .) -}}
{{- end -}}

{{/* A domain's namespace: domainNamespaces.<domain>, else the release's. Call with (dict "root" $ "domain" NAME). */}}
{{- define "fabriek.domainNamespace" -}}
{{- index (.root.Values.domainNamespaces | default dict) .domain | default .root.Release.Namespace -}}
{{- end -}}

{{/* Every namespace that holds a domain's objects, once each, in domain order (JSON list). */}}
{{- define "fabriek.namespaces" -}}
{{- $namespaces := list -}}
{{- range $domain := include "fabriek.domainList" . | fromJsonArray -}}
{{- $namespaces = append $namespaces (include "fabriek.domainNamespace" (dict "root" $ "domain" $domain.name)) -}}
{{- end -}}
{{- toJson ($namespaces | uniq) -}}
{{- end -}}

{{/*
The isolation domains, derived as routers/isolation_domains.py derives them: classes that
share a pool share a domain (transitively). Each class starts labelled with its own name;
every pass gives both classes of a shared pool the smaller label. With at most 3 classes
(the TenantClass enum) no two classes are more than 2 shares apart, so 3 passes reach the
closure. A domain is named by its classes, sorted and joined with "-"; its pools keep config
order, and domains follow the order of their first pool. Pools no class uses are in none.
Returns JSON: {"domains": [{"name", "classes", "pools"}], "byPool": {pool: domain}}.
*/}}
{{- define "fabriek.domains" -}}
{{- $classPools := dict -}}
{{- range $class, $spec := (.Values.platform.classes | default dict) -}}
{{- if $spec }}{{ $_ := set $classPools $class ($spec.pools | default list) }}{{ end -}}
{{- end -}}
{{- $label := dict -}}
{{- range $class, $_ := $classPools }}{{ $_ := set $label $class $class }}{{ end -}}
{{- range $pass := until 3 -}}
{{- range $a, $poolsA := $classPools -}}
{{- range $b, $poolsB := $classPools -}}
{{- $shared := false -}}
{{- range $poolsA }}{{ if has . $poolsB }}{{ $shared = true }}{{ end }}{{ end -}}
{{- if $shared -}}
{{- $la := index $label $a -}}
{{- $lb := index $label $b -}}
{{- $least := $lb -}}
{{- if lt $la $lb }}{{ $least = $la }}{{ end -}}
{{- $_ := set $label $a $least -}}
{{- $_ := set $label $b $least -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $domains := list -}}
{{- $byPool := dict -}}
{{- $seen := dict -}}
{{- range $pool := .Values.platform.pools -}}
{{- $root := "" -}}
{{- range $class, $pools := $classPools }}{{ if and (not $root) (has $pool.name $pools) }}{{ $root = index $label $class }}{{ end }}{{ end -}}
{{- if and $root (not (hasKey $seen $root)) -}}
{{- $classes := list -}}
{{- range $class, $l := $label }}{{ if eq $l $root }}{{ $classes = append $classes $class }}{{ end }}{{ end -}}
{{- $name := join "-" ($classes | sortAlpha) -}}
{{- $members := list -}}
{{- range $p := $.Values.platform.pools -}}
{{- range $class := $classes }}{{ if and (has $p.name (index $classPools $class)) (not (has $p.name $members)) }}{{ $members = append $members $p.name }}{{ end }}{{ end -}}
{{- end -}}
{{- range $members }}{{ $_ := set $byPool . $name }}{{ end -}}
{{- $_ := set $seen $root $name -}}
{{- $domains = append $domains (dict "name" $name "classes" ($classes | sortAlpha) "pools" $members) -}}
{{- end -}}
{{- end -}}
{{- toJson (dict "domains" $domains "byPool" $byPool) -}}
{{- end -}}

{{/* The domains as a list (see fabriek.domains). */}}
{{- define "fabriek.domainList" -}}
{{- toJson (include "fabriek.domains" . | fromJson).domains -}}
{{- end -}}

{{/* A domain's Secret settings: secret.domains.<name>, empty where not given. Call with (dict "root" $ "domain" NAME). */}}
{{- define "fabriek.domainSecretValues" -}}
{{- toJson (index (.root.Values.secret.domains | default dict) .domain | default dict) -}}
{{- end -}}

{{/* A domain's Secret: key hashes, cache salt, ledger URL. Call with (dict "root" $ "domain" NAME). */}}
{{- define "fabriek.domainSecretName" -}}
{{- $values := include "fabriek.domainSecretValues" . | fromJson -}}
{{- $values.existingSecret | default (include "fabriek.domainFullname" .) -}}
{{- end -}}

{{/* A domain's object names: RELEASE-fabriek-<domain>. */}}
{{- define "fabriek.domainFullname" -}}
{{- printf "%s-%s" (include "fabriek.fullname" .root) .domain | trunc 55 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select every pod of one domain's Ray cluster, its head included (never another domain's). */}}
{{- define "fabriek.domainSelectorLabels" -}}
{{ include "fabriek.selectorLabels" .root }}
fabriek.ai/domain: {{ .domain }}
{{- end -}}

{{/* Labels that select one domain's worker pods (never its head, never another domain's). */}}
{{- define "fabriek.domainWorkerSelectorLabels" -}}
{{ include "fabriek.domainSelectorLabels" . }}
app.kubernetes.io/component: worker
{{- end -}}

{{/* Labels that select one domain's head pod. */}}
{{- define "fabriek.domainHeadSelectorLabels" -}}
{{ include "fabriek.domainSelectorLabels" . }}
app.kubernetes.io/component: head
{{- end -}}

{{- define "fabriek.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "fabriek.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/*
Where each domain's Secret is mounted, in that domain's worker pods only:
/etc/fabriek/secrets/<domain>/. The platform config names it with {domain}.
*/}}
{{- define "fabriek.secretsDir" -}}/etc/fabriek/secrets{{- end -}}

{{/*
The platform config as every domain's app receives it: the values' `platform`, with the key
file and the cache salt secret in the domain's mounted Secret (`{domain}` in the paths;
serving/config/auth_specs.py). Each app cuts its own domain out of it
(serving/config/domains.py), so a domain's processes know only its tenants.
*/}}
{{- define "fabriek.platformConfig" -}}
{{- $platform := deepCopy .Values.platform -}}
{{- $auth := deepCopy (default (dict) $platform.auth) -}}
{{- $_ := set $auth "key_file" (printf "%s/{domain}/api-keys.json" (include "fabriek.secretsDir" .)) -}}
{{- $_ := set $auth "cache_salt_secret_file" (printf "%s/{domain}/cache-salt.secret" (include "fabriek.secretsDir" .)) -}}
{{- $_ := set $platform "auth" $auth -}}
{{- toYaml $platform -}}
{{- end -}}

{{/* The environment variable the usage ledger reads its URL from (platform.ledger.url_env). */}}
{{- define "fabriek.ledgerUrlEnv" -}}
{{- ((.Values.platform.ledger).url_env) | default "FABRIEK_USAGE_DATABASE_URL" -}}
{{- end -}}

{{- define "fabriek.httpPort" -}}
{{- ((.Values.platform.http).port) | default 8000 | int -}}
{{- end -}}

{{- define "fabriek.grpcPort" -}}
{{- ((.Values.platform.grpc).port) | default 9000 | int -}}
{{- end -}}

{{/*
Ray Serve's config for one domain's RayService, as in deploy/serve-config.yaml: the domain's
application (name = domain, route prefix /<domain>) with the platform config inline and the
domain it builds, and the domain's own power governor (its pools only). Nothing of another
domain. Call with (dict "root" $ "domain" NAME).
*/}}
{{- define "fabriek.serveConfig" -}}
{{- $root := .root -}}
{{- $platform := include "fabriek.platformConfig" $root | fromYaml -}}
{{- $apps := list (dict "name" .domain "route_prefix" (printf "/%s" .domain) "import_path" "serving.app:build_app" "args" (dict "config" $platform "domain" .domain)) -}}
{{- /* The domain's power governor (serving.power.governor): no route prefix. */ -}}
{{- $apps = append $apps (dict "name" "fabriek-power" "route_prefix" nil "import_path" "serving.app:build_power_app" "args" (dict "config" $platform "domain" .domain)) -}}
{{- $http := dict "host" "0.0.0.0" "port" (include "fabriek.httpPort" $root | int) -}}
{{- $grpc := dict "port" (include "fabriek.grpcPort" $root | int) "grpc_servicer_functions" $root.Values.grpc.servicerFunctions -}}
{{- $config := dict "proxy_location" "EveryNode" "http_options" $http "grpc_options" $grpc "applications" $apps -}}
{{- with $root.Values.tracing }}{{ if .otlpEndpoint -}}
{{- /* What serving.records.tracing.serve_tracing_config derives from the OTEL_* variables below. */ -}}
{{- $_ := set $config "tracing_config" (dict "enabled" true "exporter_import_path" "serving.records.tracing:span_processors" "sampling_ratio" .samplingRatio) -}}
{{- end }}{{ end -}}
{{- toYaml $config -}}
{{- end -}}

{{/*
Environment of every Ray process: Ray Serve's data-path settings from `platform.serve`
(what `fabriek config ray-env` prints; the chart tests compare the two). A worker's
domain adds its usage database URL (fabriek.rayContainer).
*/}}
{{- define "fabriek.rayEnv" -}}
{{- $serve := default (dict) .Values.platform.serve -}}
{{- $haproxy := ternary "1" "0" (eq (default "haproxy" $serve.proxy) "haproxy") -}}
{{- $throughput := true -}}
{{- if hasKey $serve "throughput_optimized" }}{{ $throughput = $serve.throughput_optimized }}{{ end -}}
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: {{ $haproxy | quote }}
- name: RAY_SERVE_ENABLE_DIRECT_INGRESS
  value: {{ $haproxy | quote }}
- name: RAY_SERVE_THROUGHPUT_OPTIMIZED
  value: {{ ternary "1" "0" $throughput | quote }}
- name: RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S
  value: {{ (hasKey $serve "drain_period_s") | ternary $serve.drain_period_s 30.0 | float64 | toString | quote }}
- name: RAY_SERVE_HAPROXY_STATS_PORT
  value: {{ (hasKey $serve "haproxy_stats_port") | ternary $serve.haproxy_stats_port 8404 | int | toString | quote }}
- name: RAY_SERVE_HAPROXY_METRICS_PORT
  value: {{ (hasKey $serve "haproxy_metrics_port") | ternary $serve.haproxy_metrics_port 9101 | int | toString | quote }}
{{- $http := default (dict) .Values.platform.http }}
- name: RAY_SERVE_GRPC_MAX_MESSAGE_SIZE
  value: {{ (hasKey $http "max_request_bytes") | ternary $http.max_request_bytes 1048576 | int | toString | quote }}
{{- with .Values.tracing }}{{ if .otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .otlpEndpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .protocol | quote }}
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .samplingRatio | toString | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .serviceName | quote }}
- name: FABRIEK_VLLM_TRACES
  value: {{ ternary "on" "off" .vllmSpans | quote }}
{{- end }}{{ end }}
{{- end -}}

{{/*
Ray's own ports, fixed (`rayPorts`) so that the NetworkPolicies can name them: the raylet
(node manager), the object manager, the dashboard agent (gRPC and HTTP) and the range
Ray's worker processes (actors, tasks) listen in. The head's GCS is 6379 (KubeRay's default).
*/}}
{{- define "fabriek.rayPortParams" -}}
node-manager-port: {{ .Values.rayPorts.nodeManager | quote }}
object-manager-port: {{ .Values.rayPorts.objectManager | quote }}
dashboard-agent-grpc-port: {{ .Values.rayPorts.dashboardAgentGrpc | quote }}
dashboard-agent-listen-port: {{ .Values.rayPorts.dashboardAgentListen | quote }}
min-worker-port: {{ .Values.rayPorts.minWorker | quote }}
max-worker-port: {{ .Values.rayPorts.maxWorker | quote }}
{{- end -}}

{{/* The Ray container's ports: every node runs a Serve proxy (proxy_location EveryNode). */}}
{{- define "fabriek.servePorts" -}}
- name: serve
  containerPort: {{ include "fabriek.httpPort" . }}
- name: grpc
  containerPort: {{ include "fabriek.grpcPort" . }}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
{{- end -}}

{{/*
A Ray container: `group` is the head's or a worker group's values, `extraMounts` the
chart's own mounts, `domain` the worker group's isolation domain (empty for the head, which
gets no domain's Secret). Called with (dict "root" $ "group" $group "name" "ray-head" ...).
*/}}
{{- define "fabriek.rayContainer" -}}
{{- $root := .root -}}
- name: {{ .name }}
  image: "{{ $root.Values.image.repository }}:{{ $root.Values.image.tag }}"
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  ports:
    {{- .ports | nindent 4 }}
  env:
    {{- include "fabriek.rayEnv" $root | nindent 4 }}
    {{- if .domain }}
    {{- /* The domain's own usage database, from the domain's own Secret. */}}
    - name: {{ include "fabriek.ledgerUrlEnv" $root }}
      valueFrom:
        secretKeyRef:
          name: {{ include "fabriek.domainSecretName" (dict "root" $root "domain" .domain) }}
          key: usage-database-url
          optional: true
    {{- end }}
    {{- with .group.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .group.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml (.resources | default dict) | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  {{- /* Stop Ray's processes cleanly when the pod stops (KubeRay's recommendation). */}}
  lifecycle:
    preStop:
      exec:
        command: ["/bin/sh", "-c", "ray stop"]
  volumeMounts:
    {{- if .domain }}
    - name: secret-{{ .domain }}
      mountPath: {{ include "fabriek.secretsDir" $root }}/{{ .domain }}
      readOnly: true
    {{- end }}
    {{- .extraMounts | nindent 4 }}
    {{- with .group.volumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* Pod-level settings shared by head and workers. */}}
{{- define "fabriek.podSpec" -}}
{{- $root := .root -}}
{{- /* With the autoscaler, the head keeps the ServiceAccount KubeRay makes for it. */}}
{{- if not (and .isHead $root.Values.autoscaling.enabled) }}
serviceAccountName: {{ include "fabriek.serviceAccountName" $root }}
{{- end }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with .group.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A Ray pod's volumes: its domain's Secret (workers only), /dev/shm, and the group's own. */}}
{{- define "fabriek.podVolumes" -}}
{{- if .domain }}
- name: secret-{{ .domain }}
  secret:
    secretName: {{ include "fabriek.domainSecretName" (dict "root" .root "domain" .domain) }}
    defaultMode: 0440
    items:
      - {key: api-keys.json, path: api-keys.json}
      - {key: cache-salt.secret, path: cache-salt.secret}
{{- end }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shmSize }}
{{- with .group.volumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
NetworkPolicy ports of the Ray control plane. Towards the head (from a domain's workers):
GCS, the raylet, the object manager, Ray's worker processes (the Serve controller is one),
and with HAProxy Ray Serve's fallback proxy on the head (RAY_SERVE_FALLBACK_PROXY_HTTP_PORT
and _GRPC_PORT, 8500 and 9500 in Ray): each node's HAProxy counts it as a backup server of
every application and is not ready to serve until some server of each is up.
Called with (dict "rp" .Values.rayPorts "haproxy" BOOL).
*/}}
{{- define "fabriek.npHeadPorts" -}}
- {port: 6379, protocol: TCP}
- {port: {{ .rp.nodeManager }}, protocol: TCP}
- {port: {{ .rp.objectManager }}, protocol: TCP}
- {port: {{ .rp.minWorker }}, endPort: {{ .rp.maxWorker }}, protocol: TCP}
{{- if .haproxy }}
- {port: 8500, protocol: TCP}
- {port: 9500, protocol: TCP}
{{- end }}
{{- end -}}

{{/*
Towards a domain's workers (from the head): the raylet (GCS leases workers and health-checks
it there), the object manager, the dashboard agent (gRPC and HTTP: the dashboard's node,
log and state views) and Ray's worker processes (the controller calls the replicas).
Called with .Values.rayPorts.
*/}}
{{- define "fabriek.npWorkerPorts" -}}
- {port: {{ .nodeManager }}, protocol: TCP}
- {port: {{ .objectManager }}, protocol: TCP}
- {port: {{ .dashboardAgentGrpc }}, protocol: TCP}
- {port: {{ .dashboardAgentListen }}, protocol: TCP}
- {port: {{ .minWorker }}, endPort: {{ .maxWorker }}, protocol: TCP}
{{- end -}}

{{/* Egress to the cluster DNS (networkPolicy.dnsEgress). Called with .Values.networkPolicy. */}}
{{- define "fabriek.npDnsEgress" -}}
# DNS.
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
  {{- with .dnsEgress }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
