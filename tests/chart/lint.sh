#!/usr/bin/env bash
# Static checks of the Kubernetes deliverables: the Helm chart, the Dockerfile,
# the Prometheus rules and config, and the Grafana dashboard. Needs no cluster
# and no container engine; tools.sh installs what it uses on the first run.
#
#   bash tests/chart/lint.sh
#
# Stops at the first failure with a line starting "FAIL".

# The Python checks below are single-quoted on purpose.
# shellcheck disable=SC2016

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# shellcheck source=tests/chart/tools.sh
source tests/chart/tools.sh
# ed25519 in the checks of the helm test pod's client key (the version the
# container tests use too).
tools_venv_add cryptography==48.0.0

CHART=helm/mindoo-replica
RELEASE=replica
NAMESPACE=mindoo
# Kubernetes versions the manifests are validated against (kubernetes-validate
# bundles 1.25-1.37; the chart needs 1.27 or later for gRPC probes).
K8S_VERSIONS=(1.31.0 1.33.0)
PY=$MINDOO_TOOLS/venv/bin/python

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n== %s\n' "$*"; }
ok() { printf '   ok    %s\n' "$*"; }
fail() {
  printf 'FAIL  %s\n' "$*" >&2
  exit 1
}

# helm template with this script's release name and namespace.
render() {
  helm template "$RELEASE" "$CHART" --namespace "$NAMESPACE" "$@"
}

step "tools"
need() { command -v "$1" >/dev/null 2>&1 || fail "$1 is missing (tests/chart/tools.sh installs it)"; }
for tool in helm kubernetes-validate hadolint shellcheck promtool node jq; do need "$tool"; done
ok "helm $(helm version --template '{{.Version}}')"
ok "kubernetes-validate $(kubernetes-validate --version 2>&1 | awk '{print $NF}')"
ok "$(promtool --version 2>&1 | head -1)"
ok "hadolint $(hadolint --version | awk '{print $NF}'), shellcheck $(shellcheck --version | awk '/^version/ {print $2}'), node $(node --version)"

step "shell scripts (shellcheck)"
shellcheck -x tests/chart/lint.sh tests/chart/tools.sh tests/containers/run.sh \
  || fail "shellcheck found problems in tests/chart/*.sh or tests/containers/run.sh"
ok "tests/chart/lint.sh tests/chart/tools.sh tests/containers/run.sh"

step "Dockerfile (hadolint and the stages the tests rely on)"
hadolint Dockerfile || fail "hadolint found problems in Dockerfile"
ok "hadolint Dockerfile"
grep -Eq '^FROM rust:1-bookworm AS build$' Dockerfile || fail "Dockerfile: no 'FROM rust:1-bookworm AS build' stage"
grep -Eq '^FROM scratch AS binary$' Dockerfile || fail "Dockerfile: no 'FROM scratch AS binary' stage"
grep -Eq '^COPY --from=binary /mindoo-replica /usr/local/bin/mindoo-replica$' Dockerfile \
  || fail "Dockerfile: the runtime stage must take the binary from the 'binary' stage (podman build --build-context binary=...)"
[[ $(grep -E '^FROM ' Dockerfile | tail -1) == "FROM debian:bookworm-slim AS runtime" ]] \
  || fail "Dockerfile: the last stage (the default target) must be 'FROM debian:bookworm-slim AS runtime'"
grep -Eq '^USER 10001:10001$' Dockerfile || fail "Dockerfile: the runtime must run as USER 10001:10001"
grep -Eq '^ENTRYPOINT \["/usr/local/bin/mindoo-replica"\]$' Dockerfile || fail "Dockerfile: ENTRYPOINT must be the exec form of /usr/local/bin/mindoo-replica"
grep -Eq '^CMD \["serve"\]$' Dockerfile || fail "Dockerfile: CMD must be [\"serve\"]"
grep -Eq '^EXPOSE 7700 9700$' Dockerfile || fail "Dockerfile: EXPOSE 7700 9700 missing"
for pattern in target/ .git .mindoo-mesh; do
  grep -q "^${pattern}" .dockerignore || fail ".dockerignore does not exclude $pattern"
done
ok "stages build, binary, runtime (last); user 10001; exec-form entrypoint; .dockerignore"

step "chart metadata and values documentation"
crate_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
app_version=$(sed -n 's/^appVersion: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")
[[ -n $crate_version && $crate_version == "$app_version" ]] \
  || fail "Chart.yaml appVersion ($app_version) differs from the crate version in Cargo.toml ($crate_version)"
ok "appVersion $app_version = crate version"
"$PY" - "$CHART/values.yaml" <<'PY' || fail "values.yaml: every key needs a '## @param' line, and every '## @param' a key"
import re, sys, yaml
text = open(sys.argv[1]).read()
values = yaml.safe_load(text)
def leaves(node, prefix=""):
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from leaves(value, path + ".")
        else:
            yield path
keys = set(leaves(values))
params = set(re.findall(r"^\s*## @param (\S+)", text, re.M))
missing = sorted(keys - params)
unknown = sorted(params - keys)
for k in missing:
    print(f"   values.yaml: {k} has no '## @param {k}' line")
for k in unknown:
    print(f"   values.yaml: '## @param {k}' names no key")
if missing or unknown:
    sys.exit(1)
print(f"   ok    {len(keys)} keys, each with a ## @param line")
PY

"$PY" - "$CHART/values.schema.json" src/config/raw.rs <<'PY' || fail "values.schema.json: the keys under config differ from the binary's (src/config/raw.rs): update the schema"
import json, re, sys
schema = json.load(open(sys.argv[1]))["properties"]["config"]
src = open(sys.argv[2]).read()
def fields(struct):
    body = re.search(r"pub struct %s \{(.*?)\n\}" % struct, src, re.S)
    assert body, f"no struct {struct} in {sys.argv[2]}"
    return set(re.findall(r"^\s*pub (\w+):", body.group(1), re.M))
pairs = {"config": ("RawConfig", schema)}
for section, sub in schema["properties"].items():
    pairs[f"config.{section}"] = ("Raw" + section.capitalize(), sub)
pairs["config.policy.namespaces[]"] = ("RawNamespace", schema["properties"]["policy"]["properties"]["namespaces"]["items"])
pairs["config.auth.namespaces[]"] = ("RawAccess", schema["properties"]["auth"]["properties"]["namespaces"]["items"])
pairs["config.quotas.tenants[]"] = ("RawTenantQuota", schema["properties"]["quotas"]["properties"]["tenants"]["items"])
bad = False
for path, (struct, node) in pairs.items():
    have, want = set(node["properties"]), fields(struct)
    for k in sorted(want - have):
        print(f"   {path}: {k} ({struct}) is missing from the schema"); bad = True
    for k in sorted(have - want):
        print(f"   {path}: {k} is in the schema but not in {struct}"); bad = True
if bad:
    sys.exit(1)
print(f"   ok    the schema's config keys are the fields of src/config/raw.rs ({len(pairs)} structs)")
PY

step "one copy of the alert rules"
[[ -L deploy/prometheus/alerts.yaml ]] || fail "deploy/prometheus/alerts.yaml must be a symlink to the chart's files/alerts.yaml"
[[ $(readlink -f deploy/prometheus/alerts.yaml) == "$(readlink -f "$CHART/files/alerts.yaml")" ]] \
  || fail "deploy/prometheus/alerts.yaml does not resolve to $CHART/files/alerts.yaml"
copies=$(find . -path ./target -prune -o -path ./.git -prune -o -name alerts.yaml -type f -print)
[[ $(wc -l <<<"$copies") -eq 1 ]] || fail "more than one alerts.yaml file: $copies"
ok "deploy/prometheus/alerts.yaml -> $CHART/files/alerts.yaml, the only file of that name"

# The deploy/ examples, and values only the tests use (TLS from inline PEM
# values; client authentication with every kind of list).
VALUES_FILES=(deploy/values-*.yaml tests/chart/values-*.yaml)
[[ -e ${VALUES_FILES[0]} ]] || fail "no deploy/values-*.yaml example files"

step "helm lint --strict"
helm lint --strict "$CHART" >"$WORK/lint.out" 2>&1 || { cat "$WORK/lint.out"; fail "helm lint --strict with the default values"; }
ok "default values"
for f in "${VALUES_FILES[@]}"; do
  helm lint --strict "$CHART" -f "$f" >"$WORK/lint.out" 2>&1 || { cat "$WORK/lint.out"; fail "helm lint --strict -f $f"; }
  ok "$f"
done

step "helm package (the packaged chart carries the rules)"
helm package "$CHART" --destination "$WORK" >/dev/null || fail "helm package $CHART"
package=$(ls "$WORK"/mindoo-replica-*.tgz)
tar -tzf "$package" | grep -qx 'mindoo-replica/files/alerts.yaml' || fail "the packaged chart has no files/alerts.yaml"
helm template "$RELEASE" "$package" --set metrics.prometheusRule.enabled=true --show-only templates/prometheusrule.yaml >/dev/null \
  || fail "the packaged chart does not render its PrometheusRule"
ok "$(basename "$package") holds files/alerts.yaml and renders the PrometheusRule"

# The operator's CRDs are outside kubernetes-validate's schemas: these are
# checked with the validators of @kubernetes-models/prometheus-operator (types,
# required fields, patterns such as durations; not unknown fields).
cat >"$WORK/validate-crds.mjs" <<'JS'
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
const models = `${process.env.MINDOO_TOOLS}/node/node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1`;
const docs = JSON.parse(readFileSync(process.argv[2], "utf8"));
let failed = 0;
for (const doc of docs) {
  const name = `${doc.kind}/${doc.metadata?.name}`;
  if (doc.apiVersion !== "monitoring.coreos.com/v1" || !["ServiceMonitor", "PrometheusRule"].includes(doc.kind)) {
    console.log(`   no schema for ${doc.apiVersion} ${name}`);
    failed++;
    continue;
  }
  const mod = await import(pathToFileURL(`${models}/${doc.kind}.js`).href);
  try {
    new mod[doc.kind](doc).validate();
    console.log(`   ok    ${name} against the prometheus-operator schema`);
  } catch (e) {
    console.log(`   ${name}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
JS

# Splits a multi-document manifest into core kinds (YAML) and CRDs (JSON).
split_manifest() {
  "$PY" - "$1" "$2" "$3" <<'PY'
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
crd = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
core = [d for d in docs if d not in crd]
with open(sys.argv[2], "w") as f:
    yaml.safe_dump_all(core, f)
json.dump(crd, open(sys.argv[3], "w"))
PY
}

step "helm template | kubernetes-validate --strict (${K8S_VERSIONS[*]}), CRDs against their schemas"
for f in "" "${VALUES_FILES[@]}"; do
  label=${f:-default values}
  args=()
  [[ -n $f ]] && args=(-f "$f")
  render "${args[@]}" >"$WORK/all.yaml" 2>"$WORK/err" || { cat "$WORK/err"; fail "helm template with $label"; }
  split_manifest "$WORK/all.yaml" "$WORK/core.yaml" "$WORK/crd.json" || fail "the manifests rendered with $label do not parse as YAML"
  for v in "${K8S_VERSIONS[@]}"; do
    if ! kubernetes-validate -k "$v" --strict --quiet "$WORK/core.yaml" >"$WORK/kv.out" 2>&1; then
      cat "$WORK/kv.out"
      fail "kubernetes-validate --strict ($v) rejects the manifests rendered with $label"
    fi
    if grep -q . "$WORK/kv.out"; then
      cat "$WORK/kv.out"
      fail "kubernetes-validate ($v) could not check every manifest rendered with $label"
    fi
  done
  "$PY" - "$WORK/core.yaml" <<'PY' || fail "the config.toml rendered with $label is not what the binary reads"
import sys, tomllib, yaml
def floats(node, path=""):
    if isinstance(node, float):
        yield path
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from floats(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from floats(v, f"{path}[{i}]")
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ConfigMap" and "config.toml" in d.get("data", {}):
        bad = list(floats(tomllib.loads(d["data"]["config.toml"])))
        if bad:
            print("   config.toml has floats where the binary wants integers: " + ", ".join(bad))
            sys.exit(1)
PY
  kinds=$("$PY" -c 'import sys, yaml; print(" ".join(sorted({d["kind"] for d in yaml.safe_load_all(open(sys.argv[1])) if d})))' "$WORK/core.yaml") || fail "the manifests rendered with $label do not parse"
  ok "$label: $kinds"
  if [[ $(jq length "$WORK/crd.json") -gt 0 ]]; then
    node "$WORK/validate-crds.mjs" "$WORK/crd.json" || fail "the prometheus-operator resources rendered with $label do not match their schema"
  fi
done

step "bad values are rejected (tests/chart/bad-values)"
bad_files=(tests/chart/bad-values/*.yaml)
[[ -e ${bad_files[0]} ]] || fail "no tests/chart/bad-values/*.yaml"
for f in "${bad_files[@]}"; do
  expect=$(sed -n 's/^# expect: //p' "$f" | head -1)
  [[ -n $expect ]] || fail "$f has no '# expect: <part of the error>' line"
  if render -f "$f" >/dev/null 2>"$WORK/err"; then
    fail "helm template accepted $f (expected: $expect)"
  fi
  grep -qF -- "$expect" "$WORK/err" || { cat "$WORK/err"; fail "helm template rejected $f, but not with: $expect"; }
  # helm lint fails on schema errors; a template's fail() it only logs
  # ("[INFO] Fail: ..."), by design of Helm's lint mode.
  if helm lint --strict "$CHART" -f "$f" >"$WORK/err" 2>&1; then
    grep -qF -- "Fail: $expect" "$WORK/err" || { cat "$WORK/err"; fail "helm lint accepted $f without reporting: $expect"; }
    how="helm template fails, helm lint reports it"
  else
    grep -qF -- "$expect" "$WORK/err" || { cat "$WORK/err"; fail "helm lint rejected $f, but not with: $expect"; }
    how="helm template and helm lint fail"
  fi
  ok "$(basename "$f"): $how: $expect"
done

step "rendered manifests"
checksum() {
  render "$@" --show-only templates/statefulset.yaml | sed -n 's/^ *checksum\/config: //p'
}
# Runs the Python checks in $1 over the manifests rendered with the rest of the arguments.
check_rendered() {
  local checks=$1
  shift
  render "$@" >"$WORK/r.yaml" || fail "helm template $*"
  "$PY" - "$WORK/r.yaml" "$RELEASE" "$NAMESPACE" <<<"$checks" || fail "rendered with ${*:-the default values}: the check marked NOT above does not hold"
}

COMMON=$(
  cat <<'PY'
import base64, json, re, sys, tomllib, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
release, ns = sys.argv[2], sys.argv[3]
full = f"{release}-mindoo-replica"
headless = f"{full}-headless"
def one(kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
def config():
    return tomllib.loads(one("ConfigMap")["data"]["config.toml"])
def fqdn(i, port=7700):
    return f"{full}-{i}.{headless}.{ns}.svc.cluster.local:{port}"
def check(cond, msg):
    if not cond:
        print(f"   NOT   {msg}")
        sys.exit(1)
    print(f"   ok    {msg}")
PY
)

check_rendered "$COMMON"'
cfg = config()
check(cfg["replication"]["peers"] == [fqdn(i) for i in range(3)], "replicaCount 3: the ConfigMap lists the 3 peer FQDNs")
check(cfg["server"]["listen"] == "0.0.0.0:7700" and cfg["server"]["metrics_listen"] == "0.0.0.0:9700", "server.listen 0.0.0.0:7700, metrics_listen 0.0.0.0:9700")
check(cfg["storage"]["path"] == "/var/lib/mindoo-replica" and cfg["log"]["format"] == "json", "storage.path is the data volume, log.format json")
check(all(type(v) is int for v in (cfg["server"]["shutdown_delay_ms"], cfg["server"]["drain_timeout_ms"])), "numbers render as TOML integers")
sts = one("StatefulSet")
spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
c = pod["containers"][0]
check(spec["podManagementPolicy"] == "Parallel" and spec["serviceName"] == headless, "StatefulSet: Parallel, serviceName is the headless Service")
env = {e["name"]: e for e in c["env"]}
check(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
      and env["MINDOO_REPLICA__REPLICATION__ADVERTISE"]["value"] == f"$(POD_NAME).{headless}.{ns}.svc.cluster.local:7700",
      "advertise = $(POD_NAME).<headless>.<ns>.svc.cluster.local:7700 from the downward API")
check(c["args"] == ["serve", "--config", "/etc/mindoo-replica/config/config.toml"], "serve --config /etc/mindoo-replica/config/config.toml")
check(c["readinessProbe"]["grpc"] == {"port": 9700, "service": "mindoo.replica.v1.Store"}
      and c["livenessProbe"]["grpc"] == {"port": 9700} and c["startupProbe"]["grpc"] == {"port": 9700}
      and {"name": "metrics", "containerPort": 9700, "protocol": "TCP"} in c["ports"],
      "gRPC probes on the metrics port (9700): readiness on mindoo.replica.v1.Store, liveness and startup on the overall health")
sc, psc = c["securityContext"], pod["securityContext"]
check(psc["runAsNonRoot"] and psc["runAsUser"] == 10001 and psc["runAsGroup"] == 10001 and psc["fsGroup"] == 10001
      and psc["seccompProfile"]["type"] == "RuntimeDefault"
      and sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"],
      "securityContext: non-root 10001, fsGroup 10001, read-only root, no privilege escalation, drop ALL, RuntimeDefault")
mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
vols = {v["name"]: v for v in pod["volumes"]}
check(mounts["/var/lib/mindoo-replica"] == "data" and mounts["/tmp"] == "tmp" and "emptyDir" in vols["tmp"]
      and mounts["/etc/mindoo-replica/secrets"] == "secrets" and "subPath" not in str(c["volumeMounts"]),
      "data volume, /tmp emptyDir, secrets at /etc/mindoo-replica/secrets, no subPath (config updates reach the pods)")
check(spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
      and spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi", "volumeClaimTemplates: data, 8Gi")
check(pod["terminationGracePeriodSeconds"] * 1000 > cfg["server"]["shutdown_delay_ms"] + 2 * cfg["server"]["drain_timeout_ms"],
      "terminationGracePeriodSeconds covers the shutdown delay and the drain")
check("preferredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"], "soft pod anti-affinity by default")
hl = one("Service", headless)["spec"]
check(hl["clusterIP"] == "None" and hl["publishNotReadyAddresses"] is True and hl["ports"][0]["name"] == "grpc",
      "headless Service: clusterIP None, publishNotReadyAddresses, grpc port")
m = one("Service", f"{full}-metrics")
check(m["spec"]["ports"][0]["name"] == "metrics" and m["metadata"]["annotations"]["prometheus.io/scrape"] == "true",
      "metrics Service: port named metrics, prometheus.io/scrape")
check(one("PodDisruptionBudget")["spec"] == {"maxUnavailable": 1, "selector": spec["selector"]}, "PodDisruptionBudget: maxUnavailable 1 on the pods selector")
key = base64.b64decode(one("Secret")["data"]["fingerprint.key"]).decode()
check(re.fullmatch("[0-9a-f]{64}", key) is not None, "Secret: a generated 64-hex-digit fingerprint.key")
test = one("Pod")
tc = test["spec"]["containers"][0]
check(test["metadata"]["annotations"]["helm.sh/hook"] == "test" and test["spec"]["restartPolicy"] == "Never"
      and tc["image"] == c["image"], "test Pod: helm.sh/hook test, restartPolicy Never, the replicas image")
check(tc["args"] == ["check", "--namespace", "mindoo-check/probe", "--replicas", "2"] + [a for i in range(3) for a in ("--addr", fqdn(i))],
      "test Pod: mindoo-replica check --namespace mindoo-check/probe --replicas 2 (write concern) with one --addr per replica")
check(tc["securityContext"] == sc and test["spec"]["securityContext"] == psc, "test Pod: the replicas security contexts")
selector = spec["selector"]["matchLabels"]
check(not all(test["metadata"]["labels"].get(k) == v for k, v in selector.items()), "test Pod is not selected by the replicas Services")
check(not [d for d in docs if d["kind"] in ("ServiceMonitor", "PrometheusRule", "NetworkPolicy")], "no ServiceMonitor, PrometheusRule or NetworkPolicy by default")
check("tls" not in cfg and "tls" not in vols and "/etc/mindoo-replica/tls" not in mounts
      and not [e for e in c["env"] + tc.get("env", []) if e["name"].startswith("MINDOO_REPLICA_TLS")]
      and not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == f"{full}-tls"],
      "TLS off by default: no [tls] in the config, no TLS Secret, volume or client environment")
check(cfg["auth"] == {"clients": "off", "max_clock_skew_ms": 30000, "max_recent_requests": 500000,
                      "readers": [], "writers": [], "operators": [], "namespaces": []}
      and not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == f"{full}-test-key"]
      and not [e for e in tc.get("env", []) if e["name"] == "MINDOO_REPLICA_CLIENT_KEY_FILE"] and "client-key" not in str(test["spec"]["volumes"]),
      "TLS off by default, so [auth] clients = \"off\" explicitly (the binary refuses required with peers and no TLS); no test key")
'

check_rendered "$COMMON"'
check(len(config()["replication"]["peers"]) == 4, "replicaCount 4: the ConfigMap lists 4 peers")
check(one("Pod")["spec"]["containers"][0]["args"].count("--addr") == 4, "replicaCount 4: the test Pod checks 4 addresses")
' --set replicaCount=4

base=$(checksum)
[[ $base =~ ^[0-9a-f]{64}$ ]] || fail "no checksum/config annotation on the pods"
[[ $(checksum --set replicaCount=4) == "$base" ]] || fail "replicaCount 3 -> 4 changes checksum/config: scaling would restart every pod"
ok "replicaCount 3 -> 4 keeps checksum/config (no rollout on scaling)"
[[ $(checksum --set topology.mode=discovery --set replicaCount=7) == "$(checksum --set topology.mode=discovery)" ]] \
  || fail "discovery mode: replicaCount changes checksum/config"
for change in shutdown.drainTimeoutMs=9000 config.storage.sync_writes=true log.format=text 'topology.namespaces={acme/notes}' \
  config.limits.client_requests_per_second=2000 config.limits.max_send_data_per_client_mb=32; do
  [[ $(checksum --set "$change") != "$base" ]] || fail "--set $change leaves checksum/config unchanged: the pods would not pick it up"
  ok "--set $change changes checksum/config"
done
# [quotas] is applied live, as the access lists are: no rollout for a quota.
for change in config.quotas.max_entries_per_tenant=1000000 config.quotas.max_mb_per_tenant=10240 \
  'config.quotas.tenants[0].tenant=acme,config.quotas.tenants[0].max_entries=5,config.quotas.tenants[0].max_mb=1'; do
  [[ $(checksum --set "$change") == "$base" ]] \
    || fail "--set $change changes checksum/config: a new quota would roll every pod (the replicas apply [quotas] live)"
done
quota_base=$(checksum -f tests/chart/values-limits-quotas.yaml)
[[ $(checksum -f tests/chart/values-limits-quotas.yaml --set config.quotas.max_mb_per_tenant=1 --set config.quotas.max_entries_per_tenant=0) == "$quota_base" ]] \
  || fail "changing the quotas of tests/chart/values-limits-quotas.yaml changes checksum/config"
ok "config.quotas (defaults and tenants) keeps checksum/config (applied live, no rollout)"

check_rendered "$COMMON"'
cfg = config()
check(cfg["replication"]["hubs"] == [fqdn(0), "hub.example.org:7700"] and cfg["replication"]["peers"] == [fqdn(i) for i in range(3)],
      "topology hubs: ordinal 0 becomes its FQDN, names stay; every replica in peers")
' --set topology.mode=hubs --set 'topology.hubs={0,hub.example.org:7700}'

check_rendered "$COMMON"'
r = config()["replication"]
check(r["discovery"] == f"{headless}.{ns}.svc.cluster.local:7700" and "peers" not in r and r["discovery_interval_ms"] == 30000,
      "topology discovery: replication.discovery is the headless Service name")
' --set topology.mode=discovery

check_rendered "$COMMON"'
r = config()["replication"]
check(r["peers"] == ["a.example.org:7700", "b.example.org:7700"] and r["namespaces"] == ["acme/notes"], "topology peers: the explicit list, and the namespace filter")
' --set topology.mode=peers --set 'topology.peers={a.example.org:7700,b.example.org:7700}' --set 'topology.namespaces={acme/notes}'

check_rendered "$COMMON"'
cfg = config()
check(cfg["storage"]["sync_writes"] is True and cfg["storage"]["path"] == "/var/lib/mindoo-replica", "config: a new key joins the rendered section")
check(cfg["server"]["metrics_listen"] == "" and cfg["limits"]["max_page"] == 500, "config: an empty value replaces the rendered one; a new section is added")
c = one("StatefulSet")["spec"]["template"]["spec"]["containers"][0]
check({c[p]["grpc"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")} == {7700},
      "config.server.metrics_listen empty: the probes go to the gRPC port")
' --set config.storage.sync_writes=true --set config.server.metrics_listen= --set config.limits.max_page=500

check_rendered "$COMMON"'
cfg = config()
given = yaml.safe_load(open("tests/chart/values-limits-quotas.yaml"))["config"]
check(cfg["limits"] == given["limits"] and all(type(v) is int for v in cfg["limits"].values()),
      "config.limits: the per-client limits as given, integers")
q = cfg["quotas"]
check(q == given["quotas"] and all(type(v) is int for t in q["tenants"] for k, v in t.items() if k != "tenant"),
      "config.quotas: defaults and [[quotas.tenants]] as given, integers in the tables too (values files give floats)")
' -f tests/chart/values-limits-quotas.yaml

check_rendered "$COMMON"'
c = one("StatefulSet")["spec"]["template"]["spec"]["containers"][0]
check({c[p]["grpc"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")} == {7700}
      and [p["name"] for p in c["ports"]] == ["grpc"] and config()["server"]["metrics_listen"] == "",
      "metrics.enabled false: no metrics listener, the probes go to the gRPC port")
' --set metrics.enabled=false

check_rendered "$COMMON"'
c = one("StatefulSet")["spec"]["template"]["spec"]["containers"][0]
check({c[p]["grpc"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")} == {9800}
      and config()["server"]["metrics_listen"] == "0.0.0.0:9800",
      "containerPorts.metrics 9800: metrics_listen and the probes follow it")
' --set containerPorts.metrics=9800

check_rendered "$COMMON"'
c = one("StatefulSet")["spec"]["template"]["spec"]["containers"][0]
check({c[p]["grpc"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")} == {7700},
      "config.server.metrics_listen on loopback: the kubelet cannot reach it, the probes go to the gRPC port")
' --set config.server.metrics_listen=127.0.0.1:9700

check_rendered "$COMMON"'
pod = one("StatefulSet")["spec"]["template"]["spec"]
check(not [d for d in docs if d["kind"] == "ConfigMap"] and {"name": "my-config"} == [v for v in pod["volumes"] if v["name"] == "config"][0]["configMap"]
      and "checksum/config" not in one("StatefulSet")["spec"]["template"]["metadata"].get("annotations", {}),
      "existingConfigMap: no ConfigMap rendered, the pods mount the given one")
check(not [d for d in docs if d["kind"] == "Secret"] and [v for v in pod["volumes"] if v["name"] == "secrets"][0]["secret"]["secretName"] == "my-secret",
      "existingSecret: no Secret rendered, the pods mount the given one")
' --set existingConfigMap=my-config --set secrets.existingSecret=my-secret

check_rendered "$COMMON"'
sts = one("StatefulSet")["spec"]
vols = {v["name"]: v for v in sts["template"]["spec"]["volumes"]}
check("volumeClaimTemplates" not in sts and vols["data"]["emptyDir"] == {}, "persistence disabled: data is an emptyDir")
key = base64.b64decode(one("Secret")["data"]["fingerprint.key"]).decode()
check(key == "ab" * 32, "secrets.fingerprintKey is used as given")
' --set persistence.enabled=false --set secrets.fingerprintKey="$(printf 'ab%.0s' {1..32})"

check_rendered "$COMMON"'
rule = one("PrometheusRule")
alerts = yaml.safe_load(open("helm/mindoo-replica/files/alerts.yaml"))
check(rule["spec"]["groups"] == alerts["groups"], "PrometheusRule: the groups of files/alerts.yaml, unchanged")
sm = one("ServiceMonitor")
ep = sm["spec"]["endpoints"][0]
check(ep["port"] == "metrics" and ep["interval"] == "15s" and ep["scrapeTimeout"] == "5s" and sm["metadata"]["namespace"] == "monitoring"
      and sm["metadata"]["labels"]["release"] == "prom" and ep["relabelings"][0]["targetLabel"] == "cluster",
      "ServiceMonitor: metrics port, namespace, interval, scrapeTimeout, labels, relabelings")
np = one("NetworkPolicy")["spec"]
check(np["ingress"][0]["ports"][0]["port"] == 7700 and len(np["ingress"][0]["from"]) == 2 and np["ingress"][1]["ports"][0]["port"] == 9700,
      "NetworkPolicy: gRPC from the release and allowedClients, metrics from the selected namespaces")
' --set metrics.prometheusRule.enabled=true --set metrics.serviceMonitor.enabled=true \
  --set metrics.serviceMonitor.namespace=monitoring --set metrics.serviceMonitor.interval=15s \
  --set metrics.serviceMonitor.scrapeTimeout=5s --set metrics.serviceMonitor.labels.release=prom \
  --set 'metrics.serviceMonitor.relabelings[0].targetLabel=cluster' --set 'metrics.serviceMonitor.relabelings[0].replacement=eu1' \
  --set networkPolicy.enabled=true \
  --set 'networkPolicy.allowedClients[0].namespaceSelector.matchLabels.team=apps'

TLS_COMMON="$COMMON"'
TLS_DIR = "/etc/mindoo-replica/tls"
def tls_checks(secret):
    """What TLS on renders, whichever the Secret: [tls] naming the mounted
    files, the Secret mounted read-only, the client environment of the
    replica and the test pod (which gets the CA alone), probes off the gRPC port."""
    cfg = config()
    t = cfg["tls"]
    check(t["enabled"] is True and (t["cert_file"], t["key_file"], t["ca_file"]) == (f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key", f"{TLS_DIR}/ca.crt"),
          f"[tls] enabled, cert_file/key_file/ca_file the files of the mounted Secret under {TLS_DIR}")
    pod = one("StatefulSet")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    vol = [v for v in pod["volumes"] if v["name"] == "tls"][0]["secret"]
    mount = [m for m in c["volumeMounts"] if m["name"] == "tls"][0]
    check(vol == {"secretName": secret, "defaultMode": 0o440} and mount == {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
          f"Secret {secret} mounted read-only at {TLS_DIR}, whole (no subPath: renewals reach the pod), mode 0440")
    env = {e["name"]: e.get("value") for e in c["env"]}
    check({k: env.get(k) for k in ("MINDOO_REPLICA_TLS_CA", "MINDOO_REPLICA_TLS_CERT", "MINDOO_REPLICA_TLS_KEY")}
          == {"MINDOO_REPLICA_TLS_CA": f"{TLS_DIR}/ca.crt", "MINDOO_REPLICA_TLS_CERT": f"{TLS_DIR}/tls.crt", "MINDOO_REPLICA_TLS_KEY": f"{TLS_DIR}/tls.key"},
          "replica container: MINDOO_REPLICA_TLS_CA/_CERT/_KEY name the files, for `kubectl exec ... mindoo-replica status`")
    check({c[p]["grpc"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")} == {9700},
          "the gRPC probes go to the metrics port (plaintext health), not the TLS-only gRPC port")
    test = one("Pod")["spec"]
    tc = test["containers"][0]
    tvol = [v for v in test["volumes"] if v["name"] == "tls"][0]["secret"]
    check({e["name"]: e["value"] for e in tc["env"]}.get("MINDOO_REPLICA_TLS_CA") == f"{TLS_DIR}/ca.crt"
          and not [e for e in tc["env"] if e["name"] in ("MINDOO_REPLICA_TLS_CERT", "MINDOO_REPLICA_TLS_KEY")]
          and tvol["secretName"] == secret and tvol["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
          and {"name": "tls", "mountPath": TLS_DIR, "readOnly": True} in tc["volumeMounts"],
          "test Pod: MINDOO_REPLICA_TLS_CA and the CA alone (ca.crt) from the Secret, no private key")
    return cfg
'

check_rendered "$TLS_COMMON"'
cfg = tls_checks("my-tls")
check(cfg["tls"]["peer_names"] == [] and cfg["tls"]["operator_names"] == ["*.operators.example.org"], "[tls] operator_names from tls.operatorNames")
check(not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == f"{full}-tls"], "tls.existingSecret: no TLS Secret rendered")
' --set tls.enabled=true --set tls.existingSecret=my-tls --set 'tls.operatorNames={*.operators.example.org}'

check_rendered "$TLS_COMMON"'
cfg = tls_checks(f"{full}-tls")
given = yaml.safe_load(open("tests/chart/values-tls-inline.yaml"))["tls"]
secret = one("Secret", f"{full}-tls")
data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
check(secret["type"] == "kubernetes.io/tls" and data == {"tls.crt": given["cert"], "tls.key": given["key"], "ca.crt": given["ca"]},
      f"inline PEM values: Secret {full}-tls of type kubernetes.io/tls with tls.crt, tls.key, ca.crt as given")
check(cfg["tls"]["peer_names"] == given["peerNames"] and cfg["tls"]["operator_names"] == given["operatorNames"],
      "[tls] peer_names and operator_names from tls.peerNames and tls.operatorNames")
' -f tests/chart/values-tls-inline.yaml

tls_on=$(checksum -f tests/chart/values-tls-inline.yaml)
[[ $tls_on != "$base" ]] || fail "tls.enabled leaves checksum/config unchanged: the pods would not turn TLS on"
ok "tls.enabled changes checksum/config (the pods roll to turn TLS on)"
[[ $(checksum -f tests/chart/values-tls-inline.yaml --set 'tls.operatorNames={ops2.operators.mindoo-replica.internal}') != "$tls_on" ]] \
  || fail "tls.operatorNames leaves checksum/config unchanged"
ok "tls.operatorNames changes checksum/config"
# A renewed certificate (other tls.cert and tls.key) changes the Secret only:
# the replicas read the mounted files again, so no pod restarts.
sed 's/cmVwbGljYSBjZXJ0aWZpY2F0ZQ==/cmVuZXdlZCBjZXJ0aWZpY2F0ZQ==/; s/cHJpdmF0ZSBrZXk=/cmVuZXdlZCBrZXk=/' \
  tests/chart/values-tls-inline.yaml >"$WORK/values-tls-renewed.yaml"
cmp -s tests/chart/values-tls-inline.yaml "$WORK/values-tls-renewed.yaml" && fail "the renewed-certificate values equal the originals"
[[ $(render -f "$WORK/values-tls-renewed.yaml" --show-only templates/secret-tls.yaml) != "$(render -f tests/chart/values-tls-inline.yaml --show-only templates/secret-tls.yaml)" ]] \
  || fail "a new tls.cert does not change the TLS Secret"
[[ $(render -f "$WORK/values-tls-renewed.yaml" --show-only templates/statefulset.yaml) == "$(render -f tests/chart/values-tls-inline.yaml --show-only templates/statefulset.yaml)" ]] \
  || fail "a new tls.cert/tls.key changes the StatefulSet: a certificate renewal would restart every pod"
ok "a new tls.cert/tls.key changes the TLS Secret and not the StatefulSet (renewals restart no pod)"

# Client authentication (auth.*): [auth] rendered, the helm test pod's key.
AUTH_COMMON="$COMMON"'
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
PROBE = ("mindoo-check", "probe")
KEY_DIR = "/etc/mindoo-replica/client"
def public_of(seed):
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed))
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
def probe_entries(a):
    return [n for n in a["namespaces"] if (n["tenant"], n["db"]) == PROBE]
def no_test_key():
    env = [e for p in docs if p["kind"] == "Pod" for e in p["spec"]["containers"][0].get("env", [])]
    return (not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == f"{full}-test-key"]
            and not [e for e in env if e["name"] == "MINDOO_REPLICA_CLIENT_KEY_FILE"])
def test_key_checks():
    """The helm test pod signs with the key of Secret <full>-test-key: its
    secret key (64 hex) mounted alone into the test pod, not into the
    replicas; its public key (derived here with cryptography) in the
    annotation and in the readers and writers of mindoo-check/probe."""
    secret = one("Secret", f"{full}-test-key")
    seed = base64.b64decode(secret["data"]["client.key"]).decode()
    check(list(secret["data"]) == ["client.key"] and re.fullmatch("[0-9a-f]{64}", seed) is not None,
          f"Secret {full}-test-key holds client.key alone: 64 hex digits (an ed25519 secret key)")
    public = public_of(seed)
    check(secret["metadata"]["annotations"]["mindoo-replica/public-key"] == public,
          "its annotation mindoo-replica/public-key is the ed25519 public key of client.key (derived by the chart)")
    a = config()["auth"]
    probe = probe_entries(a)
    check(len(probe) == 1 and public in probe[0]["readers"] and public in probe[0]["writers"]
          and not [n for n in a["namespaces"] if n not in probe and public in n["readers"] + n["writers"]]
          and public not in a["readers"] + a["writers"] + a["operators"],
          "[auth]: the test key may read and write mindoo-check/probe, and nothing else")
    test = one("Pod")["spec"]
    tc = test["containers"][0]
    env = {e["name"]: e["value"] for e in tc["env"]}
    vol = [v for v in test["volumes"] if v["name"] == "client-key"][0]["secret"]
    check(env["MINDOO_REPLICA_CLIENT_KEY_FILE"] == f"{KEY_DIR}/client.key"
          and vol == {"secretName": f"{full}-test-key", "defaultMode": 0o440, "items": [{"key": "client.key", "path": "client.key"}]}
          and {"name": "client-key", "mountPath": KEY_DIR, "readOnly": True} in tc["volumeMounts"],
          f"test Pod: MINDOO_REPLICA_CLIENT_KEY_FILE={KEY_DIR}/client.key from that Secret, read-only, mode 0440")
    pod = one("StatefulSet")["spec"]["template"]["spec"]
    check(f"{full}-test-key" not in json.dumps(pod) and not [d for d in docs if d["kind"] == "ConfigMap" and seed in json.dumps(d)],
          "the replicas do not mount the test key, and no ConfigMap holds its secret")
    return a, public
'

check_rendered "$AUTH_COMMON"'
a, public = test_key_checks()
check(a["clients"] == "required" and a["readers"] == [] and a["writers"] == [] and a["operators"] == []
      and a["namespaces"] == [{"tenant": "mindoo-check", "db": "probe", "readers": [public], "writers": [public]}],
      "auth.clients \"\" with tls.enabled: [auth] clients = \"required\"; no lists but the test key on mindoo-check/probe")
' --set tls.enabled=true --set tls.existingSecret=my-tls

check_rendered "$AUTH_COMMON"'
a, public = test_key_checks()
given = yaml.safe_load(open("tests/chart/values-auth.yaml"))
v = given["auth"]
check(public == public_of(given["tests"]["clientKey"]) and base64.b64decode(one("Secret", f"{full}-test-key")["data"]["client.key"]).decode() == given["tests"]["clientKey"],
      "tests.clientKey: the Secret holds it as given, the config lists its public key")
check((a["clients"], a["max_clock_skew_ms"], a["max_recent_requests"]) == ("required", 10000, 100000)
      and (a["readers"], a["writers"], a["operators"]) == (v["readers"], v["writers"], v["operators"]),
      "[auth] clients, max_clock_skew_ms, max_recent_requests, readers, writers, operators from auth.*")
check(a["namespaces"] == [v["namespaces"][0], {"tenant": "mindoo-check", "db": "probe",
                                               "readers": v["namespaces"][1]["readers"] + [public], "writers": [public]}],
      "auth.namespaces as given; the test key joins the lists auth.namespaces gives mindoo-check/probe (no second entry)")
' -f tests/chart/values-auth.yaml

check_rendered "$AUTH_COMMON"'
a, public = test_key_checks()
check(probe_entries(a)[0]["readers"] == ["*", public] and probe_entries(a)[0]["writers"] == ["ab" * 32, public],
      "mindoo-check/probe not listed: its entry copies auth.readers and auth.writers, plus the test key (the namespace stays as open as the rest, and \"*\" readers may still read every namespace)")
' --set tls.enabled=true --set tls.existingSecret=my-tls --set 'auth.readers={*}' --set "auth.writers={$(printf 'ab%.0s' {1..32})}"

check_rendered "$AUTH_COMMON"'
a = config()["auth"]
check(a["clients"] == "off" and not probe_entries(a) and no_test_key(),
      "auth.clients off with TLS on: [auth] clients = \"off\", no test key, no entry for mindoo-check/probe")
' --set tls.enabled=true --set tls.existingSecret=my-tls --set auth.clients=off

check_rendered "$AUTH_COMMON"'
a, public = test_key_checks()
check(a["clients"] == "required" and "tls" not in config() and config()["replication"]["peers"] == [fqdn(0)],
      "auth.clients required without TLS renders for a single replica (no peers, which the binary accepts)")
' --set replicaCount=1 --set auth.clients=required

check_rendered "$AUTH_COMMON"'
a = config()["auth"]
check(a["clients"] == "required" and not probe_entries(a) and no_test_key() and not [d for d in docs if d["kind"] == "Pod"],
      "tests.enabled false: no test key and no entry for mindoo-check/probe")
' --set tls.enabled=true --set tls.existingSecret=my-tls --set tests.enabled=false

auth_on=(--set tls.enabled=true --set tls.existingSecret=my-tls)
auth_base=$(checksum "${auth_on[@]}")
[[ $(checksum "${auth_on[@]}") == "$auth_base" ]] \
  || fail "two renders with a generated helm test key differ in checksum/config: every helm upgrade would roll the pods"
ok "a generated helm test key is left out of checksum/config (two renders, two keys, one checksum)"
for change in "auth.readers={*}" "auth.writers={$(printf 'cd%.0s' {1..32})}" "auth.operators={$(printf 'ef%.0s' {1..32})}" \
  "auth.namespaces[0].tenant=acme,auth.namespaces[0].db=notes,auth.namespaces[0].readers={*}" "tests.clientKey=$(printf '42%.0s' {1..32})"; do
  [[ $(checksum "${auth_on[@]}" --set "$change") == "$auth_base" ]] \
    || fail "--set $change changes checksum/config: a new client key would roll every pod (the replicas apply the lists live)"
done
ok "auth.readers, writers, operators, namespaces and tests.clientKey keep checksum/config (applied live, no rollout)"
for change in auth.clients=off auth.maxClockSkewMs=10000 auth.maxRecentRequests=100000; do
  [[ $(checksum "${auth_on[@]}" --set "$change") != "$auth_base" ]] || fail "--set $change leaves checksum/config unchanged: the pods would not pick it up"
done
ok "auth.clients, maxClockSkewMs and maxRecentRequests change checksum/config (read at start: the pods roll)"

# The restore step (restore.from, restore.pod): an init container in every
# pod that restores the one pod named, and lets the others start. Its script
# runs here with /bin/sh, a stand-in mindoo-replica first on PATH recording
# its arguments, and the environment the manifest gives it.
RESTORE_COMMON="$COMMON"'
import os, subprocess, tempfile
DATA = "/var/lib/mindoo-replica"
def restore_checks(chosen, source, data=DATA):
    pod = one("StatefulSet")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    inits = pod.get("initContainers", [])
    check([i["name"] for i in inits] == ["restore"], "restore.from set: one init container, restore")
    r = inits[0]
    check(all(r[k] == c[k] for k in ("image", "imagePullPolicy", "securityContext", "resources")),
          "restore: the replica container image, imagePullPolicy, securityContext and resources")
    data_mount = [m for m in c["volumeMounts"] if m["name"] == "data"]
    check(r["volumeMounts"] == [{"name": "data", "mountPath": DATA}, {"name": "tmp", "mountPath": "/tmp"}]
          and data_mount == [{"name": "data", "mountPath": DATA}],
          f"restore: the data volume at {DATA} (as in the replica container) and tmp at /tmp, nothing else")
    env = {e["name"]: e for e in r["env"]}
    check(env["POD_NAME"] == {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
          and (env["RESTORE_POD"]["value"], env["RESTORE_FROM"]["value"], env["RESTORE_DATA"]["value"]) == (chosen, source, data),
          f"restore: POD_NAME from metadata.name; RESTORE_POD {chosen}, RESTORE_FROM {source!r}, RESTORE_DATA {data}")
    script = r["command"][2] if r["command"][:2] == ["/bin/sh", "-c"] and len(r["command"]) == 3 else ""
    check("[ \"$POD_NAME\" != \"$RESTORE_POD\" ]" in script
          and "exec mindoo-replica restore --once --from \"$RESTORE_FROM\" --data \"$RESTORE_DATA\"" in script
          and source not in script and "args" not in r,
          "restore: /bin/sh -c, a pod check, exec mindoo-replica restore --once --from \"$RESTORE_FROM\" --data \"$RESTORE_DATA\" (the path in the environment alone)")
    with tempfile.TemporaryDirectory() as tmp:
        calls = os.path.join(tmp, "calls")
        stub = os.path.join(tmp, "mindoo-replica")
        with open(stub, "w") as f:
            f.write("#!/bin/sh\nfor a in \"$@\"; do printf \"%s\\n\" \"$a\"; done >>\"$CALLS\"\n")
        os.chmod(stub, 0o755)
        ran = {}
        for i in range(int(one("StatefulSet")["spec"]["replicas"])):
            name = chosen.rsplit("-", 1)[0] + f"-{i}"
            environ = {"PATH": f"{tmp}:/usr/bin:/bin", "CALLS": calls, "POD_NAME": name,
                       **{k: e["value"] for k, e in env.items() if "value" in e}}
            done = subprocess.run(["/bin/sh", "-c", script], env=environ, capture_output=True, text=True)
            ran[name] = (done.returncode, open(calls).read().splitlines() if os.path.exists(calls) else None)
            if os.path.exists(calls):
                os.remove(calls)
        want = ["restore", "--once", "--from", source, "--data", data]
        check(ran[chosen] == (0, want) and all(v == (0, None) for k, v in ran.items() if k != chosen),
              f"restore script under /bin/sh: {chosen} runs mindoo-replica with exactly {want}; the {len(ran) - 1} other pods exit 0 without it")
'

check_rendered "$COMMON"'
pod = one("StatefulSet")["spec"]["template"]["spec"]
check("restore" not in [i["name"] for i in pod.get("initContainers", [])], "restore.from empty (the default): no init container restore")
'
check_rendered "$RESTORE_COMMON"'
restore_checks(f"{full}-0", "/var/lib/mindoo-replica/backups/backup-1-10")
' --set restore.from=/var/lib/mindoo-replica/backups/backup-1-10 --set restore.pod="$RELEASE-mindoo-replica-0"
check_rendered "$RESTORE_COMMON"'
restore_checks("mindoo-replica-2", yaml.safe_load(open("tests/chart/values-restore.yaml"))["restore"]["from"])
' -f tests/chart/values-restore.yaml
check_rendered "$RESTORE_COMMON"'
restore_checks(f"{full}-1", "/var/lib/mindoo-replica/backups/backup-1-10", data="/var/lib/mindoo-replica/db")
' --set restore.from=/var/lib/mindoo-replica/backups/backup-1-10 --set restore.pod="$RELEASE-mindoo-replica-1" \
  --set config.storage.path=/var/lib/mindoo-replica/db

# NOTES.txt is not rendered by helm template: render it through a copy of the
# chart with one more template that includes it.
cp -r "$CHART" "$WORK/notes-chart"
printf '%s\n' 'notes: |' '  {{- include "mindoo-replica/templates/NOTES.txt" . | nindent 2 }}' >"$WORK/notes-chart/templates/zz-notes.yaml"
notes() {
  helm template "$RELEASE" "$WORK/notes-chart" --namespace "$NAMESPACE" --show-only templates/zz-notes.yaml "$@"
}
notes >"$WORK/notes.txt" || fail "NOTES.txt does not render"
for line in \
  "$RELEASE-mindoo-replica-2.$RELEASE-mindoo-replica-headless.$NAMESPACE.svc.cluster.local:7700" \
  "kubectl port-forward --namespace $NAMESPACE svc/$RELEASE-mindoo-replica 7700:7700" \
  "kubectl exec --namespace $NAMESPACE $RELEASE-mindoo-replica-0 -- mindoo-replica status --addr 127.0.0.1:7700" \
  "No pod restarts"; do
  grep -qF -- "$line" "$WORK/notes.txt" || { cat "$WORK/notes.txt"; fail "NOTES.txt lacks: $line"; }
done
grep -q 'WARNING: tls.enabled is false' "$WORK/notes.txt" || { cat "$WORK/notes.txt"; fail "NOTES.txt does not warn that TLS is off"; }
if ! grep -q 'WARNING: auth.clients is off: client authentication is OFF. Anyone who reaches the gRPC port' "$WORK/notes.txt" \
  || ! grep -q 'can READ and WRITE EVERY NAMESPACE' "$WORK/notes.txt"; then
  cat "$WORK/notes.txt"
  fail "NOTES.txt does not warn loudly that client authentication is off"
fi
grep 'WARNING' "$WORK/notes.txt" | grep -v 'WARNING: tls.enabled is false' | grep -v 'WARNING: auth.clients is off' \
  && { cat "$WORK/notes.txt"; fail "NOTES.txt warns about the default values beyond TLS and client authentication"; }
grep -qF "Probes: the kubelet's gRPC probes use port 9700 (the metrics listener: grpc.health.v1 in plaintext" "$WORK/notes.txt" \
  || { cat "$WORK/notes.txt"; fail "NOTES.txt does not say the probes use the metrics port"; }
ok "NOTES.txt: peer FQDNs, port-forward, status command, probes on the metrics port, scaling note; warns only that TLS and client authentication are off"
notes -f deploy/values-production.yaml >"$WORK/notes.txt" || fail "NOTES.txt does not render with deploy/values-production.yaml"
for line in \
  "TLS: on." \
  "Secret mindoo-replica-tls (tls.crt, tls.key, ca.crt)" \
  "answers only peers and operators (*.operators.mindoo-replica.internal)" \
  "MINDOO_REPLICA_TLS_CA=ca.crt MINDOO_REPLICA_TLS_CERT=operator.crt MINDOO_REPLICA_TLS_KEY=operator.key" \
  "kubectl exec --namespace $NAMESPACE $RELEASE-mindoo-replica-0 -- mindoo-replica status --addr $RELEASE-mindoo-replica-0.$RELEASE-mindoo-replica-headless.$NAMESPACE.svc.cluster.local:7700" \
  "Probes: the kubelet's gRPC probes use port 9700 (the metrics listener" \
  "Client authentication: required." \
  "operators (PeerStatus): c3c3c3c3c3c3c3c3…, and certificates named *.operators.mindoo-replica.internal" \
  "acme/payroll: readers d4d4d4d4d4d4d4d4…; writers d4d4d4d4d4d4d4d4…" \
  "helm test key (Secret $RELEASE-mindoo-replica-test-key): " \
  "MINDOO_REPLICA_TLS_CA=ca.crt MINDOO_REPLICA_CLIENT_KEY_FILE=client.key"; do
  grep -qF -- "$line" "$WORK/notes.txt" || { cat "$WORK/notes.txt"; fail "NOTES.txt with TLS on lacks: $line"; }
done
grep -q 'WARNING' "$WORK/notes.txt" && { cat "$WORK/notes.txt"; fail "NOTES.txt warns about deploy/values-production.yaml"; }
ok "NOTES.txt with TLS on (deploy/values-production.yaml): the Secret, who may call PeerStatus, status over TLS by peer name; client authentication required, the lists, the helm test key; no warning"
notes --set tls.enabled=true --set tls.existingSecret=my-tls >"$WORK/notes.txt"
if ! grep -qF "NOTE: auth.readers, auth.writers and auth.namespaces are empty: no client key may read or write any namespace" "$WORK/notes.txt" \
  || grep -q 'WARNING: auth.clients is off' "$WORK/notes.txt"; then
  cat "$WORK/notes.txt"
  fail "NOTES.txt with TLS on and no client keys listed does not say that no client may read or write"
fi
ok "NOTES.txt with TLS on and empty auth lists: client authentication required by default, no client key listed yet"
notes --set tls.enabled=true --set tls.existingSecret=my-tls --set auth.clients=off >"$WORK/notes.txt"
grep -q 'WARNING: auth.clients is off' "$WORK/notes.txt" || { cat "$WORK/notes.txt"; fail "NOTES.txt does not warn that client authentication is off (TLS on)"; }
ok "NOTES.txt warns when auth.clients is off with TLS on as well"
notes --set persistence.enabled=false --set replicaCount=1 >"$WORK/notes.txt"
if ! grep -q 'WARNING: persistence.enabled is false' "$WORK/notes.txt" || ! grep -q 'WARNING: replicaCount is 1' "$WORK/notes.txt"; then
  cat "$WORK/notes.txt"
  fail "NOTES.txt does not warn about persistence disabled and a single replica"
fi
ok "NOTES.txt warns about persistence disabled and a single replica"
notes -f tests/chart/values-limits-quotas.yaml >"$WORK/notes.txt" || fail "NOTES.txt does not render with tests/chart/values-limits-quotas.yaml"
for line in \
  "every tenant not listed: at most 1000000 entries and 10240 MiB" \
  "acme: at most 50000000 entries and 512000 MiB" \
  "mindoo-check: no limit" \
  "globex: at most 2048 MiB" \
  "A change of config.quotas rolls"; do
  grep -qF -- "$line" "$WORK/notes.txt" || { cat "$WORK/notes.txt"; fail "NOTES.txt with quotas lacks: $line"; }
done
notes | grep -q 'Quotas per tenant' && fail "NOTES.txt lists quotas when config.quotas is unset"
ok "NOTES.txt lists the quotas per tenant when config.quotas is set (and says they apply without a restart)"

notes | grep -q '^  Restore:' && fail "NOTES.txt mentions a restore when restore.from is unset"
notes --set restore.from=/var/lib/mindoo-replica/backups/backup-1-10 --set restore.pod="$RELEASE-mindoo-replica-0" >"$WORK/notes.txt" \
  || fail "NOTES.txt does not render with restore.from and restore.pod"
for line in \
  "Restore: pod $RELEASE-mindoo-replica-0 restores its database from /var/lib/mindoo-replica/backups/backup-1-10" \
  "its peers read its log again" \
  "kubectl logs --namespace $NAMESPACE $RELEASE-mindoo-replica-0 -c restore" \
  "unset restore.from and restore.pod"; do
  grep -qF -- "$line" "$WORK/notes.txt" || { cat "$WORK/notes.txt"; fail "NOTES.txt with restore.from lacks: $line"; }
done
ok "NOTES.txt with restore.from: which pod restores from what, its peers read its log again, unset restore.* afterwards"

step "deploy/cert-manager matches the chart (deploy/values-production.yaml)"
render -f deploy/values-production.yaml >"$WORK/production.yaml" || fail "helm template -f deploy/values-production.yaml"
"$PY" - deploy/cert-manager/certificates.yaml "$WORK/production.yaml" deploy/values-production.yaml "$RELEASE" "$NAMESPACE" <<'PY' \
  || fail "deploy/cert-manager/certificates.yaml does not issue what the chart with deploy/values-production.yaml needs"
import sys, tomllib, yaml
cm_path, rendered_path, values_path, release, ns = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(cm_path)) if d]
rendered = [d for d in yaml.safe_load_all(open(rendered_path)) if d]
tls = yaml.safe_load(open(values_path))["tls"]
def check(cond, msg):
    if not cond:
        print(f"   NOT   {msg}")
        sys.exit(1)
    print(f"   ok    {msg}")
def covers(pattern, host):
    """TLS name matching: a wildcard stands for exactly one leftmost label."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and "." not in host[: -len(pattern) + 1]
    return pattern == host
def under(pattern, name):
    """The binary's peer/operator name rule: *.suffix is any name under suffix."""
    return name.endswith(pattern[1:]) if pattern.startswith("*.") else pattern == name
check({d["apiVersion"] for d in docs} == {"cert-manager.io/v1"} and {d["metadata"]["namespace"] for d in docs} == {ns},
      f"cert-manager.io/v1 resources, all in the namespace {ns}")
issuers = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Issuer"}
certs = [d for d in docs if d["kind"] == "Certificate"]
def issued_by(cert):
    ref = cert["spec"]["issuerRef"]
    return issuers.get(ref["name"]) if ref.get("kind", "Issuer") == "Issuer" else None
cas = [c for c in certs if c["spec"].get("isCA")]
check(len(cas) == 1 and "selfSigned" in (issued_by(cas[0]) or {}), "one CA Certificate, from a self-signed Issuer")
ca_issuer = [n for n, spec in issuers.items() if spec.get("ca", {}).get("secretName") == cas[0]["spec"]["secretName"]]
check(len(ca_issuer) == 1, f"a CA Issuer over the CA's Secret {cas[0]['spec']['secretName']}")
replica = [c for c in certs if c["spec"]["secretName"] == tls["existingSecret"]]
check(len(replica) == 1 and replica[0]["spec"]["issuerRef"]["name"] == ca_issuer[0],
      f"the replicas' Certificate writes tls.existingSecret ({tls['existingSecret']}), issued by the CA Issuer")
spec = replica[0]["spec"]
check({"server auth", "client auth"} <= set(spec["usages"]), "the replicas' certificate: usages server auth and client auth")
sts = [d for d in rendered if d["kind"] == "StatefulSet"][0]
svc = f"{sts['metadata']['name']}.{ns}.svc.cluster.local"
cfg = tomllib.loads([d for d in rendered if d["kind"] == "ConfigMap"][0]["data"]["config.toml"])
hosts = [p.rsplit(":", 1)[0] for p in cfg["replication"]["peers"]]
uncovered = [h for h in hosts + [svc] if not any(covers(n, h) for n in spec["dnsNames"])]
check(cfg["tls"]["enabled"] and not uncovered,
      f"its dnsNames cover the {len(hosts)} rendered peer names (which makes it a peer) and the client Service {svc}"
      + (f"; not: {uncovered}" if uncovered else ""))
operators = [c for c in certs if c not in cas + replica]
check(operators and all(c["spec"]["issuerRef"]["name"] == ca_issuer[0] and "client auth" in c["spec"]["usages"]
                        and all(any(under(p, n) for p in tls["operatorNames"]) for n in c["spec"]["dnsNames"]) for c in operators),
      f"{len(operators)} operator Certificate(s): client auth, from the CA Issuer, named under tls.operatorNames {tls['operatorNames']}")
PY

step "Prometheus rules and config (promtool)"
promtool check rules deploy/prometheus/alerts.yaml >"$WORK/p.out" 2>&1 || { cat "$WORK/p.out"; fail "promtool check rules deploy/prometheus/alerts.yaml"; }
ok "promtool check rules: $(grep -o '[0-9]* rules found' "$WORK/p.out")"
(cd deploy/prometheus && promtool test rules alerts.test.yaml) >"$WORK/p.out" 2>&1 || { cat "$WORK/p.out"; fail "promtool test rules deploy/prometheus/alerts.test.yaml"; }
alerts_defined=$(grep -c '^ *- alert: ' "$CHART/files/alerts.yaml")
while read -r alert; do
  grep -q "alertname: $alert\$" deploy/prometheus/alerts.test.yaml || fail "alerts.test.yaml has no test for $alert"
done < <(sed -n 's/^ *- alert: //p' "$CHART/files/alerts.yaml")
ok "promtool test rules: every one of the $alerts_defined alerts fires in a test"
if promtool check config deploy/prometheus/prometheus.yml >"$WORK/p.out" 2>&1; then
  ok "promtool check config deploy/prometheus/prometheus.yml"
elif grep -q 'field kubernetes_sd_configs not found' "$WORK/p.out"; then
  # Debian builds promtool without Kubernetes discovery. Check everything else,
  # relabelings included, with those blocks replaced by static targets.
  mkdir -p "$WORK/prom"
  cp deploy/prometheus/alerts.yaml "$WORK/prom/alerts.yaml"
  if ! "$PY" - deploy/prometheus/prometheus.yml "$WORK/prom/prometheus.yml" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
for job in cfg["scrape_configs"]:
    for sd in job.pop("kubernetes_sd_configs", []):
        unknown = set(sd) - {"role", "namespaces", "selectors", "api_server", "kubeconfig_file", "attach_metadata"}
        if unknown or sd.get("role") not in {"node", "pod", "service", "endpoints", "endpointslice", "ingress"}:
            print(f"   job {job['job_name']}: kubernetes_sd_configs {sd}")
            sys.exit(1)
        job.setdefault("static_configs", []).append({"targets": ["127.0.0.1:9700"]})
yaml.safe_dump(cfg, open(sys.argv[2], "w"))
PY
  then
    fail "deploy/prometheus/prometheus.yml: a kubernetes_sd_configs block has an unknown key or role"
  fi
  promtool check config "$WORK/prom/prometheus.yml" >"$WORK/p.out" 2>&1 || { cat "$WORK/p.out"; fail "promtool check config deploy/prometheus/prometheus.yml"; }
  ok "promtool check config deploy/prometheus/prometheus.yml (this promtool lacks Kubernetes discovery: kubernetes_sd_configs checked for known keys and role only)"
else
  cat "$WORK/p.out"
  fail "promtool check config deploy/prometheus/prometheus.yml"
fi

step "Grafana dashboard"
dashboard=deploy/grafana/mindoo-replica.json
jq -e . "$dashboard" >/dev/null || fail "$dashboard is not valid JSON"
jq -e '.templating.list[] | select(.type == "datasource" and .query == "prometheus")' "$dashboard" >/dev/null \
  || fail "$dashboard has no Prometheus datasource variable"
jq -e '[.panels[] | select(.type != "row") | .datasource.uid == "${datasource}"] | all' "$dashboard" >/dev/null \
  || fail "$dashboard: a panel does not use the datasource variable"
# Every query must parse: check them as recording rules, the variables
# replaced by values Prometheus accepts.
jq -r '.panels[] | .targets[]?.expr' "$dashboard" >"$WORK/exprs.txt"
"$PY" - "$WORK/exprs.txt" "$WORK/dash-rules.yaml" <<'PY' || fail "cannot turn the queries of $dashboard into rules"
import sys, yaml
exprs = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
subst = {"$__rate_interval": "5m", "$__range": "1h", "$job": "mindoo-replica", "$instance": ".*"}
rules = []
for i, e in enumerate(exprs):
    for k, v in subst.items():
        e = e.replace(k, v)
    rules.append({"record": f"dashboard:query_{i}", "expr": e})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
PY
promtool check rules "$WORK/dash-rules.yaml" >"$WORK/p.out" 2>&1 || { cat "$WORK/p.out"; fail "a query of $dashboard does not parse"; }
ok "$dashboard: valid JSON, datasource variable, $(wc -l <"$WORK/exprs.txt") queries that parse"

step "metric names exist in src/metrics and src/sync/metrics.rs"
# The process collector's series get the registry prefix too.
process_metrics="process_cpu_seconds_total process_open_fds process_max_fds process_virtual_memory_bytes process_resident_memory_bytes process_start_time_seconds process_threads"
grep -q 'ProcessCollector::for_self' src/metrics/mod.rs || process_metrics=""
names=$(grep -ohE 'mindoo_replica_[a-z0-9_]+' "$dashboard" "$CHART/files/alerts.yaml" deploy/prometheus/alerts.test.yaml | sort -u)
[[ -n $names ]] || fail "no mindoo_replica_* metric names found in the dashboard and the alerts"
count=0
for full in $names; do
  name=${full#mindoo_replica_}
  base=$(sed -E 's/_(bucket|sum|count)$//' <<<"$name")
  if grep -rqF "\"$name\"" src/metrics src/sync/metrics.rs || { [[ $base != "$name" ]] && grep -rqF "\"$base\"" src/metrics src/sync/metrics.rs; } \
    || [[ " $process_metrics " == *" $name "* ]]; then
    count=$((count + 1))
  else
    fail "$full (used in the dashboard or the alerts) is not a metric of src/metrics or src/sync/metrics.rs"
  fi
done
ok "$count metric names, each defined in src/metrics or src/sync/metrics.rs"

printf '\nchart lint passed in %ds (tools included)\n' "$SECONDS"
