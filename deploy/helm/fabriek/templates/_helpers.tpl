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

{{- define "fabriek.secretName" -}}
{{- .Values.secret.existingSecret | default (printf "%s-secrets" (include "fabriek.fullname" .)) -}}
{{- end -}}

{{- define "fabriek.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "fabriek.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* Where the Secret is mounted in every Ray pod; the platform config points there. */}}
{{- define "fabriek.secretDir" -}}/etc/fabriek/secret{{- end -}}

{{/*
The platform config as the app receives it: the values' `platform`, with the key file and
the cache salt secret in the mounted Secret (every ingress replica, on whichever pod,
reads the same files).
*/}}
{{- define "fabriek.platformConfig" -}}
{{- $platform := deepCopy .Values.platform -}}
{{- $auth := deepCopy (default (dict) $platform.auth) -}}
{{- $_ := set $auth "key_file" (printf "%s/api-keys.json" (include "fabriek.secretDir" .)) -}}
{{- $_ := set $auth "cache_salt_secret_file" (printf "%s/cache-salt.secret" (include "fabriek.secretDir" .)) -}}
{{- $_ := set $platform "auth" $auth -}}
{{- toYaml $platform -}}
{{- end -}}

{{- define "fabriek.httpPort" -}}
{{- ((.Values.platform.http).port) | default 8000 | int -}}
{{- end -}}

{{- define "fabriek.grpcPort" -}}
{{- ((.Values.platform.grpc).port) | default 9000 | int -}}
{{- end -}}

{{/*
Ray Serve's config for the RayService: the same application entry as
deploy/serve-config.yaml, with the platform config inline.
*/}}
{{- define "fabriek.serveConfig" -}}
{{- $app := dict "name" "fabriek" "route_prefix" "/" "import_path" "serving.app:build_app" "args" (dict "config" (include "fabriek.platformConfig" . | fromYaml)) -}}
{{- $http := dict "host" "0.0.0.0" "port" (include "fabriek.httpPort" . | int) -}}
{{- $grpc := dict "port" (include "fabriek.grpcPort" . | int) "grpc_servicer_functions" .Values.grpc.servicerFunctions -}}
{{- $config := dict "proxy_location" "EveryNode" "http_options" $http "grpc_options" $grpc "applications" (list $app) -}}
{{- with .Values.tracing }}{{ if .otlpEndpoint -}}
{{- /* What serving.records.tracing.serve_tracing_config derives from the OTEL_* variables below. */ -}}
{{- $_ := set $config "tracing_config" (dict "enabled" true "exporter_import_path" "serving.records.tracing:span_processors" "sampling_ratio" .samplingRatio) -}}
{{- end }}{{ end -}}
{{- toYaml $config -}}
{{- end -}}

{{/*
Environment of every Ray process: Ray Serve's data-path settings from `platform.serve`
(what `fabriek config ray-env` prints; the chart tests compare the two), and the usage
database URL from the Secret.
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
- name: FABRIEK_USAGE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "fabriek.secretName" . }}
      key: usage-database-url
      optional: true
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
chart's own mounts. Called with (dict "root" $ "group" $group "name" "ray-head" ...).
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
    - name: fabriek-secret
      mountPath: {{ include "fabriek.secretDir" $root }}
      readOnly: true
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

{{/* The pod volumes every Ray pod has: the Secret, /dev/shm, and the group's own. */}}
{{- define "fabriek.podVolumes" -}}
- name: fabriek-secret
  secret:
    secretName: {{ include "fabriek.secretName" .root }}
    defaultMode: 0440
    items:
      - {key: api-keys.json, path: api-keys.json}
      - {key: cache-salt.secret, path: cache-salt.secret}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shmSize }}
{{- with .group.volumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}
