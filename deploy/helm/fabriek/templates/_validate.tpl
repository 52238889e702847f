{{/*
Checks that JSON schema cannot express (bitnami's validateValues): values that contradict
each other fail rendering with a message naming the value and the fix.
*/}}
{{- define "fabriek.validateValues" -}}
{{- $messages := list -}}
{{- $pools := list -}}
{{- $models := dict -}}
{{- range .Values.platform.models -}}
{{- $_ := set $models .id (default (dict) .engine_args) -}}
{{- end -}}
{{- range $pool := .Values.platform.pools -}}
{{- $pools = append $pools $pool.name -}}
{{- $group := index $.Values.workerGroups $pool.name -}}
{{- if not $group -}}
{{- $messages = append $messages (printf "platform.pools[%s]: no worker group; add workerGroups.%s (gpus, nodeSelector, tolerations, replicas)" $pool.name $pool.name) -}}
{{- else -}}
{{- $gpus := int $group.gpus -}}
{{- if and (eq $pool.accelerator "gpu") (lt $gpus 1) -}}
{{- $messages = append $messages (printf "workerGroups.%s.gpus: pool %s has accelerator gpu; give its worker pods at least 1 GPU" $pool.name $pool.name) -}}
{{- end -}}
{{- if and (eq $pool.accelerator "cpu") (gt $gpus 0) -}}
{{- $messages = append $messages (printf "workerGroups.%s.gpus: pool %s has accelerator cpu; set gpus to 0" $pool.name $pool.name) -}}
{{- end -}}
{{- if or (gt (int $group.minReplicas) (int $group.replicas)) (gt (int $group.replicas) (int $group.maxReplicas)) -}}
{{- $messages = append $messages (printf "workerGroups.%s: need minReplicas <= replicas <= maxReplicas (got %v <= %v <= %v)" $pool.name $group.minReplicas $group.replicas $group.maxReplicas) -}}
{{- end -}}
{{- range $modelId := $pool.models -}}
{{- $args := merge (deepCopy (default (dict) $pool.engine_args)) (deepCopy (default (dict) (index $models $modelId))) -}}
{{- $perEngine := mul (int (default 1 $args.tensor_parallel_size)) (int (default 1 $args.pipeline_parallel_size)) -}}
{{- if and (eq $pool.accelerator "gpu") (gt $gpus 0) (gt $perEngine $gpus) -}}
{{- $messages = append $messages (printf "platform.pools[%s]: %s needs %d GPUs (tensor_parallel_size x pipeline_parallel_size) but workerGroups.%s.gpus is %d; lower the parallel sizes or raise gpus" $pool.name $modelId $perEngine $pool.name $gpus) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $name, $_ := .Values.workerGroups -}}
{{- if not (has $name $pools) -}}
{{- $messages = append $messages (printf "workerGroups.%s: no pool of that name in platform.pools (pools: %s); remove it or add the pool" $name (join ", " $pools)) -}}
{{- end -}}
{{- end -}}
{{- /* Helm merges maps key by key: a class of values.yaml's example stays unless set to null. */ -}}
{{- range $class, $spec := (.Values.platform.classes | default dict) -}}
{{- range $spec.pools -}}
{{- if not (has . $pools) -}}
{{- $messages = append $messages (printf "platform.classes.%s.pools: unknown pool %s (pools: %s); fix it, or set platform.classes.%s to null to drop the class" $class . (join ", " $pools) $class) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with (.Values.platform.auth) -}}
{{- if or .key_file .cache_salt_secret_file -}}
{{- $messages = append $messages "platform.auth: key_file and cache_salt_secret_file are set by the chart (each domain's mounted Secret); remove them and use the secret.domains.<domain>.* values" -}}
{{- end -}}
{{- end -}}
{{- /* Isolation domains (fabriek.domains): every pool in one, every Secret for one. */ -}}
{{- $derived := include "fabriek.domains" . | fromJson -}}
{{- $domainNames := list -}}
{{- range $derived.domains }}{{ $domainNames = append $domainNames .name }}{{ end -}}
{{- range $pool := .Values.platform.pools -}}
{{- if not (hasKey $derived.byPool $pool.name) -}}
{{- $messages = append $messages (printf "platform.pools[%s]: no tenant class uses it, so it is in no isolation domain and would not be deployed; add it to a class's pools under platform.classes, or remove the pool (and workerGroups.%s)" $pool.name $pool.name) -}}
{{- end -}}
{{- end -}}
{{- $classDomain := dict -}}
{{- range $derived.domains }}{{ $d := .name }}{{ range .classes }}{{ $_ := set $classDomain . $d }}{{ end }}{{ end -}}
{{- range $name, $spec := (.Values.secret.domains | default dict) -}}
{{- if $spec -}}
{{- if not (has $name $domainNames) -}}
{{- $messages = append $messages (printf "secret.domains.%s: the config has no isolation domain %s (domains: %s); rename the entry to its domain, or set secret.domains.%s to null to drop it" $name $name (join ", " $domainNames) $name) -}}
{{- else if and (not $spec.existingSecret) $spec.apiKeys -}}
{{- $keys := $spec.apiKeys | fromJson -}}
{{- if or (hasKey $keys "Error") (ne (toString (index $keys "version")) "1") -}}
{{- $messages = append $messages (printf "secret.domains.%s.apiKeys: not a fabriek key file (JSON with \"version\": 1); use the file `fabriek keys create` writes" $name) -}}
{{- else -}}
{{- /* A domain's key file holds its own tenants' keys only. */ -}}
{{- range $record := (index $keys "keys" | default list) -}}
{{- $tenantDomain := "" -}}
{{- range $.Values.platform.tenants }}{{ if eq .id $record.tenant_id }}{{ $tenantDomain = index $classDomain (index . "class") | default "" }}{{ end }}{{ end -}}
{{- if ne $tenantDomain $name -}}
{{- $messages = append $messages (printf "secret.domains.%s.apiKeys: key %s is for tenant %s, which is not a tenant of domain %s; put it into that tenant's domain's key file (`fabriek keys create --tenant` writes there)" $name (toString $record.key_id) (toString $record.tenant_id) $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with (.Values.platform.ledger) -}}
{{- if and .url (gt (len $domainNames) 1) (not (contains "{domain}" .url)) -}}
{{- $messages = append $messages (printf "platform.ledger.url: %d isolation domains (%s) would share one usage database; put {domain} in the URL, or leave it out and set secret.domains.<domain>.usageDatabaseUrl" (len $domainNames) (join ", " $domainNames)) -}}
{{- end -}}
{{- end -}}
{{- /* What the chart sets itself: placement resources, Ray's ports, the labels policies select. */ -}}
{{- $portParams := list "node-manager-port" "object-manager-port" "dashboard-agent-grpc-port" "dashboard-agent-listen-port" "min-worker-port" "max-worker-port" -}}
{{- range $key, $_ := (.Values.head.rayStartParams | default dict) -}}
{{- if has $key (concat $portParams (list "resources" "num-gpus" "dashboard-host" "metrics-export-port")) -}}
{{- $messages = append $messages (printf "head.rayStartParams.%s: set by the chart (rayPorts, metrics.port; no GPUs or domain resources on the head); remove it" $key) -}}
{{- end -}}
{{- end -}}
{{- range $group, $spec := (.Values.workerGroups | default dict) -}}
{{- range $key, $_ := ($spec.rayStartParams | default dict) -}}
{{- if has $key (concat $portParams (list "resources" "num-gpus" "metrics-export-port")) -}}
{{- $messages = append $messages (printf "workerGroups.%s.rayStartParams.%s: set by the chart (pool and domain resources, gpus, rayPorts, metrics.port); remove it" $group $key) -}}
{{- end -}}
{{- end -}}
{{- range $key, $_ := ($spec.labels | default dict) -}}
{{- if or (hasPrefix "fabriek.ai/" $key) (hasPrefix "app.kubernetes.io/" $key) -}}
{{- $messages = append $messages (printf "workerGroups.%s.labels.%s: set by the chart (the Services and NetworkPolicies select on it); use another label" $group $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $key, $_ := (.Values.head.labels | default dict) -}}
{{- if or (hasPrefix "fabriek.ai/" $key) (hasPrefix "app.kubernetes.io/" $key) -}}
{{- $messages = append $messages (printf "head.labels.%s: set by the chart (the NetworkPolicies select on it); use another label" $key) -}}
{{- end -}}
{{- end -}}
{{- if gt (int .Values.rayPorts.minWorker) (int .Values.rayPorts.maxWorker) -}}
{{- $messages = append $messages (printf "rayPorts: need minWorker <= maxWorker (got %v > %v)" .Values.rayPorts.minWorker .Values.rayPorts.maxWorker) -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.ingress.host) .Values.ingress.tls -}}
{{- $messages = append $messages "ingress.tls: TLS needs ingress.host" -}}
{{- end -}}
{{- if $messages -}}
{{- fail (printf "\n\nfabriek: invalid values:\n  %s\n" (join "\n  " $messages)) -}}
{{- end -}}
{{- end -}}
