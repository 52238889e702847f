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
{{- $messages = append $messages "platform.auth: key_file and cache_salt_secret_file are set by the chart (the mounted Secret); remove them and use the secret.* values" -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.secret.existingSecret) .Values.secret.apiKeys -}}
{{- $keys := .Values.secret.apiKeys | fromJson -}}
{{- if or (hasKey $keys "Error") (ne (toString (index $keys "version")) "1") -}}
{{- $messages = append $messages "secret.apiKeys: not a fabriek key file (JSON with \"version\": 1); use the file `fabriek keys create` writes" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.ingress.host) .Values.ingress.tls -}}
{{- $messages = append $messages "ingress.tls: TLS needs ingress.host" -}}
{{- end -}}
{{- if $messages -}}
{{- fail (printf "\n\nfabriek: invalid values:\n  %s\n" (join "\n  " $messages)) -}}
{{- end -}}
{{- end -}}
