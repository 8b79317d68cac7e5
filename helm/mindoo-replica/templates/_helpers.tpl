{{/* Chart name, cut to the 63 characters a label value allows. */}}
{{- define "mindoo-replica.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name of the release's resources. Pod names add "-N" and the StatefulSet
controller adds a revision hash to a label, so stay well under 63.
*/}}
{{- define "mindoo-replica.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "mindoo-replica.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select this release's pods and Services. */}}
{{- define "mindoo-replica.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mindoo-replica.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of the replica pods and what selects them (the test pod has others). */}}
{{- define "mindoo-replica.podSelectorLabels" -}}
{{ include "mindoo-replica.selectorLabels" . }}
app.kubernetes.io/component: replica
{{- end -}}

{{/* Labels of every resource. */}}
{{- define "mindoo-replica.labels" -}}
helm.sh/chart: {{ include "mindoo-replica.chart" . }}
{{ include "mindoo-replica.selectorLabels" . }}
app.kubernetes.io/version: {{ include "mindoo-replica.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mindoo-replica
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
metadata.annotations of a resource (commonAnnotations plus "extra"), indented
for metadata, with a leading newline; nothing when there are none.
*/}}
{{- define "mindoo-replica.annotations" -}}
{{- $all := merge (dict) (.extra | default dict) (.ctx.Values.commonAnnotations | default dict) -}}
{{- with $all }}
  annotations:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- end -}}

{{- define "mindoo-replica.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mindoo-replica.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mindoo-replica.headlessName" -}}
{{- printf "%s-headless" (include "mindoo-replica.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mindoo-replica.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "mindoo-replica.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "mindoo-replica.imageTag" .) -}}
{{- end -}}
{{- end -}}

{{- define "mindoo-replica.configMapName" -}}
{{- default (include "mindoo-replica.fullname" .) .Values.existingConfigMap -}}
{{- end -}}

{{- define "mindoo-replica.secretName" -}}
{{- default (include "mindoo-replica.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* DNS suffix of the peer names: "<headless>.<namespace>.svc.<clusterDomain>". */}}
{{- define "mindoo-replica.peerDomain" -}}
{{- printf "%s.%s.svc.%s" (include "mindoo-replica.headlessName" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* One pod's peer address; call with (dict "ctx" $ "ordinal" N). */}}
{{- define "mindoo-replica.peerAddress" -}}
{{- printf "%s-%d.%s:%d" (include "mindoo-replica.fullname" .ctx) (int .ordinal) (include "mindoo-replica.peerDomain" .ctx) (int .ctx.Values.containerPorts.grpc) -}}
{{- end -}}

{{/* Every pod's peer address, as a JSON list (derived from replicaCount). */}}
{{- define "mindoo-replica.peerList" -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.replicaCount) -}}
{{- $peers = append $peers (include "mindoo-replica.peerAddress" (dict "ctx" $ "ordinal" $i)) -}}
{{- end -}}
{{- toJson $peers -}}
{{- end -}}

{{/* The hubs as addresses: an ordinal names a pod of this release. JSON list. */}}
{{- define "mindoo-replica.hubList" -}}
{{- $hubs := list -}}
{{- range $h := .Values.topology.hubs -}}
{{- if kindIs "string" $h -}}
{{- $hubs = append $hubs $h -}}
{{- else -}}
{{- $hubs = append $hubs (include "mindoo-replica.peerAddress" (dict "ctx" $ "ordinal" $h)) -}}
{{- end -}}
{{- end -}}
{{- toJson $hubs -}}
{{- end -}}

{{/*
The config as a dict, stored under "config" in the "out" dict; call with
(dict "ctx" $ "peers" true|false "out" (dict)). A dict is handed back this way
rather than as YAML text because fromYaml would turn every integer into a
float (rendered as 5000.0 in the TOML). With "peers" false the peer list derived from
replicaCount is left out: that is what checksum/config is computed over, so
scaling alone rolls no pod. `config` is merged over the rendered settings key
by key (an empty value there still replaces the rendered one).
*/}}
{{- define "mindoo-replica.configDict" -}}
{{- $v := .ctx.Values -}}
{{- $server := dict
      "listen" (printf "0.0.0.0:%d" (int $v.containerPorts.grpc))
      "metrics_listen" (ternary (printf "0.0.0.0:%d" (int $v.containerPorts.metrics)) "" $v.metrics.enabled)
      "shutdown_delay_ms" $v.shutdown.delayMs
      "drain_timeout_ms" $v.shutdown.drainTimeoutMs -}}
{{- $storage := dict "path" "/var/lib/mindoo-replica" -}}
{{- $log := dict "filter" $v.log.filter "format" $v.log.format -}}
{{- $fd := $v.failureDetection -}}
{{- $replication := dict
      "keepalive_interval_ms" $fd.keepaliveIntervalMs
      "session_idle_timeout_ms" $fd.sessionIdleTimeoutMs
      "connect_timeout_ms" $fd.connectTimeoutMs
      "backoff_max_ms" $fd.backoffMaxMs -}}
{{- $derived := list -}}
{{- if .peers -}}
{{- $derived = include "mindoo-replica.peerList" .ctx | fromJsonArray -}}
{{- end -}}
{{- if eq $v.topology.mode "mesh" -}}
{{- $_ := set $replication "peers" $derived -}}
{{- else if eq $v.topology.mode "peers" -}}
{{- $_ := set $replication "peers" $v.topology.peers -}}
{{- else if eq $v.topology.mode "hubs" -}}
{{- $_ := set $replication "peers" $derived -}}
{{- $_ := set $replication "hubs" (include "mindoo-replica.hubList" .ctx | fromJsonArray) -}}
{{- else if eq $v.topology.mode "discovery" -}}
{{- $_ := set $replication "discovery" (printf "%s:%d" (include "mindoo-replica.peerDomain" .ctx) (int $v.containerPorts.grpc)) -}}
{{- $_ := set $replication "discovery_interval_ms" $v.topology.discoveryIntervalMs -}}
{{- end -}}
{{- with $v.topology.namespaces -}}
{{- $_ := set $replication "namespaces" . -}}
{{- end -}}
{{- $cfg := dict "server" $server "storage" $storage "replication" $replication "log" $log -}}
{{- range $section, $keys := $v.config -}}
{{- $dst := dict -}}
{{- with (get $cfg $section) -}}
{{- $dst = . -}}
{{- end -}}
{{- range $key, $value := $keys -}}
{{- $_ := set $dst $key $value -}}
{{- end -}}
{{- $_ := set $cfg $section $dst -}}
{{- end -}}
{{- /* Numbers from -f values files arrive as floats: render integers. */ -}}
{{- range $section, $keys := $cfg -}}
{{- range $key, $value := $keys -}}
{{- if and (kindIs "float64" $value) (eq (float64 (int64 $value)) $value) -}}
{{- $_ := set $keys $key (int64 $value) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $_ := set .out "config" $cfg -}}
{{- end -}}

{{/* config.toml; call with (dict "ctx" $ "peers" true|false). */}}
{{- define "mindoo-replica.configToml" -}}
{{- $out := dict -}}
{{- include "mindoo-replica.configDict" (dict "ctx" .ctx "peers" .peers "out" $out) -}}
# Rendered by the mindoo-replica chart. replication.advertise is set per pod
# through MINDOO_REPLICA__REPLICATION__ADVERTISE.
{{ toToml $out.config }}
{{- end -}}

{{/*
The container port the kubelet's gRPC probes use: the metrics port whenever
the replicas serve on it (metrics.enabled, and config.server.metrics_listen not
moved to another port or to loopback), since that listener answers
grpc.health.v1 beside /metrics and has none of the gRPC port's connection caps;
else the gRPC port. With existingConfigMap, that file must then serve metrics
on containerPorts.metrics, as the metrics Service already assumes.
*/}}
{{- define "mindoo-replica.probePort" -}}
{{- $port := int .Values.containerPorts.grpc -}}
{{- if .Values.metrics.enabled -}}
{{- $out := dict -}}
{{- include "mindoo-replica.configDict" (dict "ctx" . "peers" false "out" $out) -}}
{{- $listen := toString (get $out.config.server "metrics_listen") -}}
{{- $suffix := printf ":%d" (int .Values.containerPorts.metrics) -}}
{{- $host := trimSuffix $suffix $listen -}}
{{- if and (hasSuffix $suffix $listen) $host (not (regexMatch "^(127\\.|localhost$|\\[::1\\]$)" $host)) -}}
{{- $port = int .Values.containerPorts.metrics -}}
{{- end -}}
{{- end -}}
{{- $port -}}
{{- end -}}

{{/* Checks across values that the schema cannot express. */}}
{{- define "mindoo-replica.validateValues" -}}
{{- $out := dict -}}
{{- include "mindoo-replica.configDict" (dict "ctx" $ "peers" false "out" $out) -}}
{{- $delay := int64 (get $out.config.server "shutdown_delay_ms") -}}
{{- $drain := int64 (get $out.config.server "drain_timeout_ms") -}}
{{- $graceMs := mul (int64 .Values.terminationGracePeriodSeconds) 1000 -}}
{{- $needMs := add $delay (mul 2 $drain) -}}
{{- if le $graceMs $needMs -}}
{{- fail (printf "terminationGracePeriodSeconds (%d s) must be longer than the shutdown delay (%d ms) plus twice the drain timeout (2 × %d ms: workers, then calls), %d ms in all" (int64 .Values.terminationGracePeriodSeconds) $delay $drain $needMs) -}}
{{- end -}}
{{- /* The send-data pools nest: the largest entry fits in a connection's
       pool, which fits in an address's, which fits in the total. Keys left
       unset take the binary's defaults (src/config/raw.rs, src/limits.rs, src/connections/mod.rs). */ -}}
{{- $limits := get $out.config "limits" | default dict -}}
{{- $entryBytes := int64 (get $limits "max_entry_bytes" | default 1048576) -}}
{{- $perConn := int64 (get $limits "max_send_data_per_connection_mb" | default 8) -}}
{{- $perAddr := int64 (get $limits "max_send_data_per_address_mb" | default 16) -}}
{{- $total := int64 (get $limits "max_send_data_mb" | default 64) -}}
{{- if lt (mul $perConn 1048576) $entryBytes -}}
{{- fail (printf "config.limits.max_send_data_per_connection_mb (%d MiB) must hold the largest entry, config.limits.max_entry_bytes (%d bytes)" $perConn $entryBytes) -}}
{{- end -}}
{{- if lt $perAddr $perConn -}}
{{- fail (printf "config.limits.max_send_data_per_address_mb (%d MiB) must be at least config.limits.max_send_data_per_connection_mb (%d MiB)" $perAddr $perConn) -}}
{{- end -}}
{{- if lt $total $perAddr -}}
{{- fail (printf "config.limits.max_send_data_mb (%d MiB) must be at least config.limits.max_send_data_per_address_mb (%d MiB)" $total $perAddr) -}}
{{- end -}}
{{- if and (eq .Values.topology.mode "peers") (empty .Values.topology.peers) -}}
{{- fail "topology.mode peers needs topology.peers (the host:port of each replica)" -}}
{{- end -}}
{{- if eq .Values.topology.mode "hubs" -}}
{{- if empty .Values.topology.hubs -}}
{{- fail "topology.mode hubs needs topology.hubs (ordinals of this release's pods or host:port names)" -}}
{{- end -}}
{{- range .Values.topology.hubs -}}
{{- if and (not (kindIs "string" .)) (ge (int .) (int $.Values.replicaCount)) -}}
{{- fail (printf "topology.hubs: ordinal %d is not a pod of this release (replicaCount %d)" (int .) (int $.Values.replicaCount)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if .Values.pdb.create -}}
{{- $min := .Values.pdb.minAvailable -}}
{{- if and (not (kindIs "string" $min)) (ge (int $min) (int .Values.replicaCount)) -}}
{{- fail (printf "pdb.minAvailable (%d) must be below replicaCount (%d), or no replica could ever be evicted" (int $min) (int .Values.replicaCount)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Pod anti-affinity from podAntiAffinityPreset. */}}
{{- define "mindoo-replica.affinity" -}}
{{- if .Values.affinity -}}
{{- toYaml .Values.affinity -}}
{{- else if eq .Values.podAntiAffinityPreset "soft" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 1
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "mindoo-replica.podSelectorLabels" . | nindent 12 }}
{{- else if eq .Values.podAntiAffinityPreset "hard" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "mindoo-replica.podSelectorLabels" . | nindent 10 }}
{{- end -}}
{{- end -}}
