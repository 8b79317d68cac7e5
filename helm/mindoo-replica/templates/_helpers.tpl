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

{{/* The Secret with tls.crt, tls.key and ca.crt: tls.existingSecret or the chart's own. */}}
{{- define "mindoo-replica.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "mindoo-replica.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{/* Where the replica and test pods mount the TLS Secret. */}}
{{- define "mindoo-replica.tlsDir" -}}
/etc/mindoo-replica/tls
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

{{/* auth.clients in effect: "required" or "off"; "" follows tls.enabled. */}}
{{- define "mindoo-replica.authClients" -}}
{{- if .Values.auth.clients -}}
{{- .Values.auth.clients -}}
{{- else -}}
{{- ternary "required" "off" .Values.tls.enabled -}}
{{- end -}}
{{- end -}}

{{/* A list of keys for NOTES.txt: "*" as "any key", keys shortened. */}}
{{- define "mindoo-replica.keyList" -}}
{{- $out := list -}}
{{- range . -}}
{{- $out = append $out (ternary "any key (*)" (printf "%s…" (trunc 16 .)) (eq . "*")) -}}
{{- end -}}
{{- if $out }}{{ join ", " $out }}{{ else }}none{{ end -}}
{{- end -}}

{{/* A quota for NOTES.txt; call with (dict "entries" N "mb" M), 0 or unset for none. */}}
{{- define "mindoo-replica.quotaText" -}}
{{- $parts := list -}}
{{- with .entries }}{{ $parts = append $parts (printf "%d entries" (int64 .)) }}{{ end -}}
{{- with .mb }}{{ $parts = append $parts (printf "%d MiB" (int64 .)) }}{{ end -}}
{{- if $parts }}at most {{ join " and " $parts }}{{ else }}no limit{{ end -}}
{{- end -}}

{{/* Whether the rendered config has peers (what makes "required" need TLS). */}}
{{- define "mindoo-replica.hasPeers" -}}
{{- if or (ne .Values.topology.mode "mesh") (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{/* The namespace `mindoo-replica check` (the helm test pod) writes to, as tenant/db. */}}
{{- define "mindoo-replica.testNamespace" -}}
mindoo-check/probe
{{- end -}}

{{/* The Secret with the helm test pod's client key (client.key). */}}
{{- define "mindoo-replica.testKeySecretName" -}}
{{- printf "%s-test-key" (include "mindoo-replica.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Whether the helm test pod signs its requests: tests on, clients required. */}}
{{- define "mindoo-replica.testKeyEnabled" -}}
{{- if and .Values.tests.enabled (eq (include "mindoo-replica.authClients" .) "required") -}}true{{- end -}}
{{- end -}}

{{/*
Hex to bytes, as base64 (Helm has no hex decoding); the length must be a
multiple of 6 hex digits (3 bytes), as the 48-byte key below is.
*/}}
{{- define "mindoo-replica.hexToBase64" -}}
{{- $alphabet := "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/" -}}
{{- $out := "" -}}
{{- range $i := until (div (len .) 6 | int) -}}
{{- $n := int64 (printf "0x%s" (substr (mul $i 6 | int) (add (mul $i 6) 6 | int) $)) -}}
{{- range $d := list 262144 4096 64 1 -}}
{{- $k := mod (div $n $d) 64 | int -}}
{{- $out = printf "%s%s" $out (substr $k (add $k 1 | int) $alphabet) -}}
{{- end -}}
{{- end -}}
{{- $out -}}
{{- end -}}

{{/*
The ed25519 public key (64 hex) of a secret key (64 hex digits, its seed).
Helm cannot compute it directly: the seed becomes a PKCS#8 private key, a
certificate is made with it, and the key is read from the certificate's
SubjectPublicKeyInfo (302a300506032b6570032100 then the 32 bytes).
*/}}
{{- define "mindoo-replica.ed25519Public" -}}
{{- $b64 := include "mindoo-replica.hexToBase64" (printf "302e020100300506032b657004220420%s" (lower .)) -}}
{{- $pem := printf "-----BEGIN PRIVATE KEY-----\n%s\n-----END PRIVATE KEY-----\n" $b64 -}}
{{- $cert := genSelfSignedCertWithKey "mindoo-replica key" nil nil 1 $pem -}}
{{- $der := $cert.Cert | replace "-----BEGIN CERTIFICATE-----" "" | replace "-----END CERTIFICATE-----" "" | nospace | b64dec -}}
{{- $hex := "" -}}
{{- range $i := until (len $der) -}}
{{- $hex = printf "%s%02x" $hex (index $der $i) -}}
{{- end -}}
{{- $public := regexFind "302a300506032b6570032100[0-9a-f]{64}" $hex | trimPrefix "302a300506032b6570032100" -}}
{{- if not $public -}}
{{- fail "tests.clientKey: cannot derive its ed25519 public key" -}}
{{- end -}}
{{- $public -}}
{{- end -}}

{{/*
The helm test pod's client key as JSON {"secret": seed hex, "public": hex}:
tests.clientKey, else the one in the cluster's Secret (kept across upgrades),
else a new one. Worked out once per render and kept in .Values (the
templates of one chart share that map), so the ConfigMap, the Secret and
NOTES.txt agree on a generated key.
*/}}
{{- define "mindoo-replica.testKey" -}}
{{- if not (hasKey .Values "mindooReplicaTestKey") -}}
{{- $secret := lower .Values.tests.clientKey -}}
{{- if not $secret -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "mindoo-replica.testKeySecretName" .) -}}
{{- if and $existing $existing.data (hasKey $existing.data "client.key") -}}
{{- $secret = index $existing.data "client.key" | b64dec | trim | lower -}}
{{- else -}}
{{- $secret = randBytes 64 | sha256sum -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values "mindooReplicaTestKey" (dict "secret" $secret "public" (include "mindoo-replica.ed25519Public" $secret)) -}}
{{- end -}}
{{- toJson .Values.mindooReplicaTestKey -}}
{{- end -}}

{{/*
The [auth] section as JSON; call with (dict "ctx" $ "live" true|false). With
"live" false the access lists, which the replicas apply without a restart,
are left out. With clients required and tests on, the helm test pod's key is
added to the readers and writers of the namespace it checks (to its own
lists when auth.namespaces lists it, else to a copy of the defaults, so
that namespace stays as open to every other key as the rest).
*/}}
{{- define "mindoo-replica.authDict" -}}
{{- $a := .ctx.Values.auth -}}
{{- $auth := dict
      "clients" (include "mindoo-replica.authClients" .ctx)
      "max_clock_skew_ms" $a.maxClockSkewMs
      "max_recent_requests" $a.maxRecentRequests -}}
{{- if .live -}}
{{- $readers := $a.readers | default list -}}
{{- $writers := $a.writers | default list -}}
{{- $namespaces := list -}}
{{- $test := dict -}}
{{- $testNs := include "mindoo-replica.testNamespace" .ctx -}}
{{- if include "mindoo-replica.testKeyEnabled" .ctx -}}
{{- $test = include "mindoo-replica.testKey" .ctx | fromJson -}}
{{- end -}}
{{- $listed := false -}}
{{- range $ns := $a.namespaces | default list -}}
{{- $r := $ns.readers | default list -}}
{{- $w := $ns.writers | default list -}}
{{- if and $test (eq (printf "%s/%s" $ns.tenant $ns.db) $testNs) -}}
{{- $listed = true -}}
{{- $r = append $r $test.public | uniq -}}
{{- $w = append $w $test.public | uniq -}}
{{- end -}}
{{- $namespaces = append $namespaces (dict "tenant" $ns.tenant "db" $ns.db "readers" $r "writers" $w) -}}
{{- end -}}
{{- if and $test (not $listed) -}}
{{- $parts := splitList "/" $testNs -}}
{{- $namespaces = append $namespaces (dict "tenant" (index $parts 0) "db" (index $parts 1)
      "readers" (append $readers $test.public | uniq) "writers" (append $writers $test.public | uniq)) -}}
{{- end -}}
{{- $_ := set $auth "readers" $readers -}}
{{- $_ := set $auth "writers" $writers -}}
{{- $_ := set $auth "operators" ($a.operators | default list) -}}
{{- $_ := set $auth "namespaces" $namespaces -}}
{{- end -}}
{{- toJson $auth -}}
{{- end -}}

{{/*
The config as a dict, stored under "config" in the "out" dict; call with
(dict "ctx" $ "live" true|false "out" (dict)). A dict is handed back this way
rather than as YAML text because fromYaml would turn every integer into a
float (rendered as 5000.0 in the TOML). With "live" false what the replicas
apply without a restart is left out: the peer list derived from replicaCount,
the access lists of [auth] (readers, writers, operators, namespaces) and the
[quotas] section (config.quotas). That is what checksum/config is computed
over, so scaling alone, a new client key or a new quota rolls no pod.
`config` is merged over the rendered settings key by key (an empty value
there still replaces the rendered one).
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
{{- if .live -}}
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
{{- if $v.secrets.enabled -}}
{{- $_ := set $replication "fingerprint_key_file" "/etc/mindoo-replica/secrets/fingerprint.key" -}}
{{- $_ := set $replication "reconcile_interval_ms" (int $v.topology.reconcileIntervalMs) -}}
{{- end -}}
{{- $cfg := dict "server" $server "storage" $storage "replication" $replication "log" $log -}}
{{- if $v.tls.enabled -}}
{{- $dir := include "mindoo-replica.tlsDir" .ctx -}}
{{- $_ := set $cfg "tls" (dict
      "enabled" true
      "cert_file" (printf "%s/tls.crt" $dir)
      "key_file" (printf "%s/tls.key" $dir)
      "ca_file" (printf "%s/ca.crt" $dir)
      "peer_names" ($v.tls.peerNames | default list)
      "operator_names" ($v.tls.operatorNames | default list)) -}}
{{- end -}}
{{- $_ := set $cfg "auth" (include "mindoo-replica.authDict" (dict "ctx" .ctx "live" .live) | fromJson) -}}
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
{{- /* [quotas], like the access lists, is applied live: not in the checksum. */ -}}
{{- if not .live -}}
{{- $_ := unset $cfg "quotas" -}}
{{- end -}}
{{- /* Numbers from -f values files arrive as floats: render integers, in
       the tables of an array of tables too (quotas.tenants), which are
       copied rather than changed in .Values. */ -}}
{{- range $section, $keys := $cfg -}}
{{- range $key, $value := $keys -}}
{{- if and (kindIs "float64" $value) (eq (float64 (int64 $value)) $value) -}}
{{- $_ := set $keys $key (int64 $value) -}}
{{- else if kindIs "slice" $value -}}
{{- $items := list -}}
{{- range $item := $value -}}
{{- if kindIs "map" $item -}}
{{- $copy := dict -}}
{{- range $k, $v := $item -}}
{{- if and (kindIs "float64" $v) (eq (float64 (int64 $v)) $v) -}}
{{- $v = int64 $v -}}
{{- end -}}
{{- $_ := set $copy $k $v -}}
{{- end -}}
{{- $item = $copy -}}
{{- end -}}
{{- $items = append $items $item -}}
{{- end -}}
{{- $_ := set $keys $key $items -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $_ := set .out "config" $cfg -}}
{{- end -}}

{{/* config.toml; call with (dict "ctx" $ "live" true|false). */}}
{{- define "mindoo-replica.configToml" -}}
{{- $out := dict -}}
{{- include "mindoo-replica.configDict" (dict "ctx" .ctx "live" .live "out" $out) -}}
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
{{- include "mindoo-replica.configDict" (dict "ctx" . "live" false "out" $out) -}}
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
{{- include "mindoo-replica.configDict" (dict "ctx" $ "live" false "out" $out) -}}
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
{{- /* One client's pool (src/fair.rs), whichever connections it uses,
       holds the largest entry too. */ -}}
{{- $perClient := int64 (get $limits "max_send_data_per_client_mb" | default 16) -}}
{{- if lt (mul $perClient 1048576) $entryBytes -}}
{{- fail (printf "config.limits.max_send_data_per_client_mb (%d MiB) must hold the largest entry, config.limits.max_entry_bytes (%d bytes)" $perClient $entryBytes) -}}
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
{{- with .Values.config.tls -}}
{{- fail "config.tls: the [tls] section comes from the chart's tls values (tls.enabled, tls.existingSecret or tls.cert/tls.key/tls.ca, tls.peerNames, tls.operatorNames), which also mount the files" -}}
{{- end -}}
{{- with .Values.config.auth -}}
{{- fail "config.auth: the [auth] section comes from the chart's auth values (auth.clients, auth.readers, auth.writers, auth.operators, auth.namespaces, auth.maxClockSkewMs, auth.maxRecentRequests), which also give the helm test pod its key" -}}
{{- end -}}
{{- /* Client authentication: "required" with peers needs TLS (the binary
       refuses the config otherwise); each namespace listed once. */ -}}
{{- if and (eq (include "mindoo-replica.authClients" .) "required") (not .Values.tls.enabled) (include "mindoo-replica.hasPeers" .) -}}
{{- fail (printf "auth.clients \"required\" needs tls.enabled: the replicas (topology %s, replicaCount %d) have peers, and replicas prove who they are to each other by their TLS certificates, so the binary refuses client authentication without TLS. Turn TLS on (tls.enabled with certificates), or set auth.clients \"off\", which lets anyone who reaches the gRPC port read and write every namespace" .Values.topology.mode (int .Values.replicaCount)) -}}
{{- end -}}
{{- $seen := dict -}}
{{- range $i, $ns := .Values.auth.namespaces -}}
{{- $name := printf "%s/%s" $ns.tenant $ns.db -}}
{{- if hasKey $seen $name -}}
{{- fail (printf "auth.namespaces: %s is listed twice (entries %d and %d); give it one entry with all its readers and writers" $name (int (get $seen $name)) $i) -}}
{{- end -}}
{{- $_ := set $seen $name $i -}}
{{- end -}}
{{- /* Quotas: each tenant listed once (the binary refuses the config
       otherwise). Read from .Values: with "live" false, configDict leaves
       [quotas] out. */ -}}
{{- $quotaSeen := dict -}}
{{- range $i, $q := (get (.Values.config | default dict) "quotas" | default dict).tenants | default list -}}
{{- $tenant := toString $q.tenant -}}
{{- if hasKey $quotaSeen $tenant -}}
{{- fail (printf "config.quotas.tenants: tenant %s is listed twice (entries %d and %d); give it one entry" $tenant (int (get $quotaSeen $tenant)) $i) -}}
{{- end -}}
{{- $_ := set $quotaSeen $tenant $i -}}
{{- end -}}
{{- /* TLS: certificates from one source, complete, and probes the kubelet
       can still make (it speaks no TLS). */ -}}
{{- $tls := .Values.tls -}}
{{- if $tls.enabled -}}
{{- $inline := list -}}
{{- $missing := list -}}
{{- range $k := list "cert" "key" "ca" -}}
{{- if get $tls $k -}}
{{- $inline = append $inline (printf "tls.%s" $k) -}}
{{- else -}}
{{- $missing = append $missing (printf "tls.%s" $k) -}}
{{- end -}}
{{- end -}}
{{- if and $tls.existingSecret $inline -}}
{{- fail (printf "tls: set tls.existingSecret (%s) or the PEM values tls.cert, tls.key and tls.ca, not both (%s set)" $tls.existingSecret (join ", " $inline)) -}}
{{- end -}}
{{- if and (not $tls.existingSecret) (not $inline) -}}
{{- fail "tls.enabled is true but no certificates are given: set tls.existingSecret (a Secret with the keys tls.crt, tls.key and ca.crt, as cert-manager writes them) or the PEM values tls.cert, tls.key and tls.ca" -}}
{{- end -}}
{{- if and (not $tls.existingSecret) $missing -}}
{{- fail (printf "tls: the chart's TLS Secret needs tls.cert, tls.key and tls.ca; missing: %s" (join ", " $missing)) -}}
{{- end -}}
{{- $probed := or .Values.startupProbe.enabled .Values.livenessProbe.enabled .Values.readinessProbe.enabled -}}
{{- if and $probed (eq (int (include "mindoo-replica.probePort" .)) (int .Values.containerPorts.grpc)) -}}
{{- fail (printf "tls.enabled: the gRPC port (%d) takes TLS only and the kubelet's gRPC probes speak plaintext; they need the metrics listener, which answers them without TLS: set metrics.enabled true and keep config.server.metrics_listen on 0.0.0.0:%d" (int .Values.containerPorts.grpc) (int .Values.containerPorts.metrics)) -}}
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
