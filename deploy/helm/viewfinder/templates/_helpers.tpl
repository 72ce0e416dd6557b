{{/*
Names, labels and the per-service view every template ranges over.
*/}}

{{- define "viewfinder.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "viewfinder.fullname" -}}
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

{{- define "viewfinder.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "viewfinder.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: viewfinder
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "search") */}}
{{- define "viewfinder.selectorLabels" -}}
app.kubernetes.io/name: {{ include "viewfinder.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "viewfinder.componentLabels" -}}
{{ include "viewfinder.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
Fills keys missing from .dst with .src, recursively, in place. Unlike sprig's
merge/mergeOverwrite it decides by presence, not by emptiness, so a service's
`enabled: false` or `replicas: 0` is kept rather than replaced by a default.
*/}}
{{- define "viewfinder.fillDefaults" -}}
{{- $dst := .dst -}}
{{- range $key, $value := .src -}}
{{- if not (hasKey $dst $key) -}}
{{- $_ := set $dst $key (deepCopy $value) -}}
{{- else if and (kindIs "map" $value) (kindIs "map" (index $dst $key)) -}}
{{- include "viewfinder.fillDefaults" (dict "dst" (index $dst $key) "src" $value) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
One service, with serviceDefaults filled in and derived fields added, as JSON:
  $svc := include "viewfinder.service" (dict "root" $ "name" $name) | fromJson
Every check that spans several values lives here, so each template fails the
same way.
*/}}
{{- define "viewfinder.service" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $svc := deepCopy (index $root.Values.services $name | default dict) -}}
{{- include "viewfinder.fillDefaults" (dict "dst" $svc "src" $root.Values.serviceDefaults) -}}
{{- if not (regexMatch "^[a-z][a-z0-9]*$" $name) -}}
{{- fail (printf "services.%s: service names are lower-case letters and digits (they become env prefixes VIEWFINDER_<NAME>_)" $name) -}}
{{- end -}}
{{- if not $svc.grpcPort -}}
{{- fail (printf "services.%s.grpcPort is required" $name) -}}
{{- end -}}
{{- $_ := set $svc "name" $name -}}
{{- $_ := set $svc "resourceName" (printf "%s-%s" (include "viewfinder.fullname" $root) $name | trunc 63 | trimSuffix "-") -}}
{{- $_ := set $svc "envPrefix" (printf "VIEWFINDER_%s_" (upper $name)) -}}
{{- $_ := set $svc "consumerGroup" (default (printf "viewfinder-%s" $name) $svc.consumerGroup) -}}
{{- $image := $svc.image | default dict -}}
{{- $repository := default (printf "viewfinder-%s" $name) $image.repository -}}
{{- $tag := default (default $root.Chart.AppVersion $root.Values.image.tag) $image.tag -}}
{{- $registry := trimSuffix "/" $root.Values.image.registry -}}
{{- $_ := set $svc "imageRef" (ternary (printf "%s/%s:%s" $registry $repository $tag) (printf "%s:%s" $repository $tag) (ne $registry "")) -}}
{{- $topics := list -}}
{{- $cap := 0 -}}
{{- range $key := $svc.consumes -}}
{{- $topic := index $root.Values.kafka.topics $key -}}
{{- if not $topic -}}
{{- fail (printf "services.%s.consumes: %q is not a key of kafka.topics" $name $key) -}}
{{- end -}}
{{- $partitions := int $topic.partitions -}}
{{- $topics = append $topics (dict "key" $key "name" $topic.name "partitions" $partitions) -}}
{{- if or (eq $cap 0) (lt $partitions $cap) -}}
{{- $cap = $partitions -}}
{{- end -}}
{{- end -}}
{{- $_ := set $svc "topics" $topics -}}
{{- range $field, $target := $svc.links -}}
{{- if not (hasKey $root.Values.services $target) -}}
{{- fail (printf "services.%s.links.%s: %q is not a key of services" $name $field $target) -}}
{{- end -}}
{{- end -}}
{{- $hpa := $svc.autoscaling.hpa -}}
{{- $keda := $svc.autoscaling.keda -}}
{{- if and $hpa.enabled $keda.enabled -}}
{{- fail (printf "services.%s: enable autoscaling.hpa or autoscaling.keda, not both (KEDA manages its own HPA)" $name) -}}
{{- end -}}
{{- if $hpa.enabled -}}
{{- if gt (int $hpa.minReplicas) (int $hpa.maxReplicas) -}}
{{- fail (printf "services.%s.autoscaling.hpa: minReplicas > maxReplicas" $name) -}}
{{- end -}}
{{- end -}}
{{- if $keda.enabled -}}
{{- if eq (len $topics) 0 -}}
{{- fail (printf "services.%s.autoscaling.keda needs a consumed topic (services.%s.consumes)" $name $name) -}}
{{- end -}}
{{/* More consumers than partitions sit idle: cap at the smallest consumed topic. */}}
{{- $max := min (int $keda.maxReplicas) $cap -}}
{{- if gt (int $keda.minReplicas) $max -}}
{{- fail (printf "services.%s.autoscaling.keda.minReplicas (%d) exceeds the cap of %d (maxReplicas or the partition count)" $name (int $keda.minReplicas) $max) -}}
{{- end -}}
{{- $_ := set $svc "kedaMaxReplicas" $max -}}
{{- end -}}
{{- $_ := set $svc "autoscaled" (or $hpa.enabled $keda.enabled) -}}
{{- if and $svc.signsPageTokens (not $root.Values.pageTokens.existingSecret) (or $svc.autoscaled (gt (int $svc.replicas) 1)) -}}
{{- fail (printf "services.%s runs more than one replica: set pageTokens.existingSecret so that every replica signs page tokens with the same key" $name) -}}
{{- end -}}
{{- if ge (int $svc.shutdownGraceSeconds) (int $svc.terminationGracePeriodSeconds) -}}
{{- fail (printf "services.%s: shutdownGraceSeconds must be below terminationGracePeriodSeconds, or the kubelet kills in-flight calls" $name) -}}
{{- end -}}
{{- toJson $svc -}}
{{- end -}}

{{/* Names of the enabled services, sorted, as JSON: include "viewfinder.enabledServices" $ | fromJsonArray */}}
{{- define "viewfinder.enabledServices" -}}
{{- $names := list -}}
{{- range $name := keys .Values.services | sortAlpha -}}
{{- $svc := include "viewfinder.service" (dict "root" $ "name" $name) | fromJson -}}
{{- if $svc.enabled -}}
{{- $names = append $names $name -}}
{{- end -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/*
Non-secret environment of one service (the ConfigMap's data): every key is a
field of the service's Settings class (tests/deploy checks this).
  (dict "root" $ "svc" $svc)
*/}}
{{- define "viewfinder.configEnv" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $p := $svc.envPrefix -}}
{{- $env := dict -}}
{{/* Listen on every interface: the Settings default (127.0.0.1) is unreachable for probes and Services. */}}
{{- $_ := set $env (printf "%sGRPC_HOST" $p) "0.0.0.0" -}}
{{- $_ := set $env (printf "%sGRPC_PORT" $p) (include "viewfinder.envValue" $svc.grpcPort) -}}
{{- $_ := set $env (printf "%sLOG_LEVEL" $p) (toString (default $root.Values.logLevel $svc.logLevel)) -}}
{{- $_ := set $env (printf "%sLOG_JSON" $p) (toString (ternary $svc.logJson $root.Values.logJson (hasKey $svc "logJson"))) -}}
{{- $_ := set $env (printf "%sSHUTDOWN_GRACE_S" $p) (include "viewfinder.envValue" $svc.shutdownGraceSeconds) -}}
{{- if $svc.consumerGroupSetting -}}
{{- $_ := set $env (printf "%s%s" $p (upper $svc.consumerGroupSetting)) $svc.consumerGroup -}}
{{- end -}}
{{- range $field, $target := $svc.links -}}
{{- $linked := include "viewfinder.service" (dict "root" $root "name" $target) | fromJson -}}
{{- if not $linked.enabled -}}
{{- fail (printf "services.%s.links.%s points at %s, which is disabled" $svc.name $field $target) -}}
{{- end -}}
{{- $_ := set $env (printf "%s%s" $p (upper $field)) (printf "%s:%d" $linked.resourceName (int $linked.grpcPort)) -}}
{{- end -}}
{{- range $svc.extraPorts -}}
{{- if .hostSetting -}}
{{- $_ := set $env (printf "%s%s" $p (upper .hostSetting)) "0.0.0.0" -}}
{{- end -}}
{{- if .portSetting -}}
{{- $_ := set $env (printf "%s%s" $p (upper .portSetting)) (include "viewfinder.envValue" .port) -}}
{{- end -}}
{{- end -}}
{{- with $root.Values.kafka -}}
{{- $_ := set $env "VIEWFINDER_KAFKA_BOOTSTRAP_SERVERS" .bootstrapServers -}}
{{- $_ := set $env "VIEWFINDER_KAFKA_SECURITY_PROTOCOL" .securityProtocol -}}
{{- if .sasl.mechanism -}}
{{- $_ := set $env "VIEWFINDER_KAFKA_SASL_MECHANISM" .sasl.mechanism -}}
{{- end -}}
{{- if .sasl.username -}}
{{- $_ := set $env "VIEWFINDER_KAFKA_SASL_USERNAME" .sasl.username -}}
{{- end -}}
{{- range $key, $topic := .topics -}}
{{- $_ := set $env (printf "VIEWFINDER_KAFKA_TOPIC_%s" (snakecase $key | upper)) $topic.name -}}
{{- end -}}
{{- end -}}
{{- $_ := set $env "VIEWFINDER_DB_URL" $root.Values.database.url -}}
{{- with $root.Values.s3 -}}
{{- if .endpointUrl -}}
{{- $_ := set $env "VIEWFINDER_S3_ENDPOINT_URL" .endpointUrl -}}
{{- end -}}
{{- $_ := set $env "VIEWFINDER_S3_REGION" .region -}}
{{- $_ := set $env "VIEWFINDER_S3_ADDRESSING_STYLE" .addressingStyle -}}
{{- end -}}
{{- if $svc.usesVectorStore -}}
{{- $vs := $root.Values.vectorStore -}}
{{- $_ := set $env "VIEWFINDER_VECTORSTORE_KIND" $vs.kind -}}
{{- if eq $vs.kind "milvus" -}}
{{- $_ := set $env "VIEWFINDER_MILVUS_URI" $vs.milvus.uri -}}
{{- $_ := set $env "VIEWFINDER_MILVUS_DB_NAME" $vs.milvus.dbName -}}
{{- else if has $vs.kind (list "opensearch" "lindorm" "elasticsearch") -}}
{{- $conf := index $vs $vs.kind -}}
{{- $_ := set $env (printf "VIEWFINDER_%s_URI" (upper $vs.kind)) $conf.uri -}}
{{- if $conf.username -}}
{{- $_ := set $env (printf "VIEWFINDER_%s_USERNAME" (upper $vs.kind)) $conf.username -}}
{{- end -}}
{{- else if eq $vs.kind "hologres" -}}
{{- $_ := set $env "VIEWFINDER_HOLOGRES_HOST" $vs.hologres.host -}}
{{- $_ := set $env "VIEWFINDER_HOLOGRES_PORT" (include "viewfinder.envValue" $vs.hologres.port) -}}
{{- $_ := set $env "VIEWFINDER_HOLOGRES_DATABASE" $vs.hologres.database -}}
{{- end -}}
{{- end -}}
{{- range $field, $value := $svc.config -}}
{{- $_ := set $env (printf "%s%s" $p (upper $field)) (include "viewfinder.envValue" $value) -}}
{{- end -}}
{{- range $name, $value := $svc.extraEnv -}}
{{- $_ := set $env $name (include "viewfinder.envValue" $value) -}}
{{- end -}}
{{- toJson $env -}}
{{- end -}}

{{/*
Secret references of one service: a list of {name, secretName, key}.
  (dict "root" $ "svc" $svc)
*/}}
{{- define "viewfinder.secretEnv" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $refs := list -}}
{{- with $root.Values.database -}}
{{- if .existingSecret -}}
{{- $refs = append $refs (dict "name" "VIEWFINDER_DB_PASSWORD" "secretName" .existingSecret "key" .passwordKey) -}}
{{- end -}}
{{- end -}}
{{- with $root.Values.kafka.sasl -}}
{{- if .existingSecret -}}
{{- $refs = append $refs (dict "name" "VIEWFINDER_KAFKA_SASL_PASSWORD" "secretName" .existingSecret "key" .passwordKey) -}}
{{- end -}}
{{- end -}}
{{- if not .skipS3 -}}
{{- with $root.Values.s3 -}}
{{- if .existingSecret -}}
{{- $refs = append $refs (dict "name" "VIEWFINDER_S3_ACCESS_KEY_ID" "secretName" .existingSecret "key" .accessKeyIdKey) -}}
{{- $refs = append $refs (dict "name" "VIEWFINDER_S3_SECRET_ACCESS_KEY" "secretName" .existingSecret "key" .secretAccessKeyKey) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $svc $svc.usesVectorStore -}}
{{- $vs := $root.Values.vectorStore -}}
{{- $conf := index $vs $vs.kind | default dict -}}
{{- if $conf.existingSecret -}}
{{- if eq $vs.kind "milvus" -}}
{{- $refs = append $refs (dict "name" "VIEWFINDER_MILVUS_TOKEN" "secretName" $conf.existingSecret "key" $conf.tokenKey) -}}
{{- else if eq $vs.kind "hologres" -}}
{{- $refs = append $refs (dict "name" "VIEWFINDER_HOLOGRES_ACCESS_KEY_ID" "secretName" $conf.existingSecret "key" $conf.accessKeyIdKey) -}}
{{- $refs = append $refs (dict "name" "VIEWFINDER_HOLOGRES_ACCESS_KEY_SECRET" "secretName" $conf.existingSecret "key" $conf.accessKeySecretKey) -}}
{{- else -}}
{{- $refs = append $refs (dict "name" (printf "VIEWFINDER_%s_PASSWORD" (upper $vs.kind)) "secretName" $conf.existingSecret "key" $conf.passwordKey) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $svc $svc.usesConnections $root.Values.connections.existingSecret -}}
{{- $refs = append $refs (dict "name" "VIEWFINDER_CONNECTIONS_SECRET_KEY" "secretName" $root.Values.connections.existingSecret "key" $root.Values.connections.secretKeyKey) -}}
{{- end -}}
{{- if and $svc $svc.signsPageTokens $root.Values.pageTokens.existingSecret -}}
{{- $refs = append $refs (dict "name" (printf "%sPAGE_TOKEN_KEY" $svc.envPrefix) "secretName" $root.Values.pageTokens.existingSecret "key" $root.Values.pageTokens.key) -}}
{{- end -}}
{{- if $svc -}}
{{- range $svc.secretEnv -}}
{{- $refs = append $refs (dict "name" .name "secretName" .secretName "key" .key) -}}
{{- end -}}
{{- end -}}
{{- toJson $refs -}}
{{- end -}}

{{/*
A value as an environment string. Values arrive as float64 from YAML, which
toString would print as 1e+06; whole numbers print as integers. Lists and maps
become JSON, which pydantic-settings parses for complex fields.
*/}}
{{- define "viewfinder.envValue" -}}
{{- if or (kindIs "slice" .) (kindIs "map" .) -}}
{{- toJson . -}}
{{- else if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* The env: list of secret references, for a container spec. */}}
{{- define "viewfinder.secretEnvList" -}}
{{- range . }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
{{- end }}
{{- end -}}

{{- define "viewfinder.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
