#!/usr/bin/env bash
# The Helm chart proven in real containers: the rendered StatefulSet, ConfigMap,
# Secrets and headless Service run as podman containers of the image built from
# the Dockerfile, under mutual TLS with certificates made for the run and with
# client authentication required (every client call signed with a key made for
# the run and listed in the chart's auth values), then
# (tests/containers/scenarios.py runs scenario_<name>.py in this order):
#   start      3 replicas ready, with the rendered env, args, ports, security context, volumes, [tls], [auth]
#   mesh       writes through every replica reach every replica; the helm test pod passes (signing with
#              the chart's test key); plaintext and foreign certificates refused, PeerStatus for operators
#              only; unsigned, stale, forged and replayed requests UNAUTHENTICATED, a key not listed for
#              the namespace PERMISSION_DENIED with nothing stored
#   restart    rolling restart in reverse ordinal order under writes: 0 acknowledged entries lost
#   partition  one replica cut off for 15 s; time to converge after the reconnect (limit 10 s)
#   scaleout   replicaCount 3 -> 4 through the mounted ConfigMap only, no restart
#   prometheus deploy/prometheus config and rules, and every query of the Grafana dashboard
#   restore    a backup of replica 0 taken while it serves, more writes, then its pod restarted with the
#              chart's restore.from/restore.pod: the init step restores it (new incarnation), it pulls what it
#              missed, its peers follow its new log, and a later restart does not restore again
#
#   bash tests/containers/run.sh [SCENARIO...]      (default: all; start always runs)
#   MINDOO_CONTAINERS_SET="config.replication.keepalive_interval_ms=30000" bash tests/containers/run.sh partition
#   MINDOO_CONTAINERS_TLS=inline bash tests/containers/run.sh
#       the certificates in the chart's own Secret (tls.cert/tls.key/tls.ca) rather
#       than in a Secret the cluster holds (tls.existingSecret, the default,
#       as cert-manager writes it); "off" runs without TLS, and so with
#       client authentication off (auth.clients "off")
#
# Needs root (rootful podman). Installs what is missing: podman, runc,
# aardvark-dns, debootstrap (Debian), helm and a Python venv (tests/chart/tools.sh).
# No registry is reachable, so debian:bookworm-slim is made with debootstrap
# (cached under the tools dir). The binary is the host's release build
# (MINDOO_REPLICA_BINARY, default $CARGO_TARGET_DIR/release/mindoo-replica, and without
# CARGO_TARGET_DIR ~/.cache/mindoo-replica/target/release/mindoo-replica),
# copied and stripped for the image's `binary` stage. Lines starting "FAIL" say
# what failed; the exit status is non-zero then.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$PWD

step() { printf '\n== %s\n' "$*"; }
ok() { printf '   ok    %s\n' "$*"; }
fail() {
  printf 'FAIL  %s\n' "$*" >&2
  exit 1
}

[[ $(id -u) -eq 0 ]] || fail "the container tests need root (rootful podman: networks with DNS aliases, nsenter into a container's network); run: sudo bash tests/containers/run.sh"

step "tools"
# shellcheck source=tests/chart/tools.sh
source tests/chart/tools.sh
tools_venv_add grpcio==1.85.1 grpcio-tools==1.85.1 grpcio-health-checking==1.85.1 protobuf==7.36.2 \
  blake3==1.0.11 PyYAML==6.0.4 cryptography==48.0.0
PY=$MINDOO_TOOLS/venv/bin/python
BINARY_SRC=${MINDOO_REPLICA_BINARY:-${CARGO_TARGET_DIR:-$HOME/.cache/mindoo-replica/target}/release/mindoo-replica}
IMAGE=mindoo-replica:test
BASE_IMAGE=docker.io/library/debian:bookworm-slim
BASE_TARBALL=$MINDOO_TOOLS/images/debian-bookworm-minbase.tar.gz
LABEL=mindoo-replica-test=containers

missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
[[ -x /usr/lib/podman/aardvark-dns ]] || missing+=(aardvark-dns)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
command -v strip >/dev/null 2>&1 || missing+=(binutils)
if ((${#missing[@]})); then
  tools_apt "${missing[@]}"
fi
ok "helm $(helm version --template '{{.Version}}'), $(podman --version), runc $(runc --version | awk 'NR==1 {print $3}'), $(prometheus --version 2>&1 | head -1 | awk '{print $1, $3}')"

# crun, podman's default runtime, fails here ("cgroups in hybrid mode not
# supported"), and runc cannot set the default rlimits in this sandbox: every
# podman call below uses runc, and containers get no default ulimits.
CONF=/etc/containers/containers.conf
if ! grep -Eq '^[[:space:]]*default_ulimits[[:space:]]*=' "$CONF" 2>/dev/null; then
  mkdir -p /etc/containers
  if grep -Eq '^[[:space:]]*\[containers\]' "$CONF" 2>/dev/null; then
    sed -i '0,/^[[:space:]]*\[containers\]/s//&\ndefault_ulimits = []/' "$CONF"
  else
    printf '[containers]\ndefault_ulimits = []\n' >>"$CONF"
  fi
  ok "$CONF: default_ulimits = [] added"
fi
pm() { podman --runtime runc "$@"; }

exec 9>"$MINDOO_TOOLS/containers.lock"
flock -n 9 || fail "another tests/containers/run.sh is running (lock $MINDOO_TOOLS/containers.lock)"

WORK=$(mktemp -d /tmp/mindoo-containers.XXXXXX)
# shellcheck disable=SC2329 # run by the EXIT trap
cleanup() {
  local kind ids
  mapfile -t ids < <(pm ps -aq --filter "label=$LABEL" 2>/dev/null)
  ((${#ids[@]} == 0)) || pm rm -f -t 0 "${ids[@]}" >/dev/null 2>&1 || true
  for kind in network volume; do
    mapfile -t ids < <(pm "$kind" ls -q --filter "label=$LABEL" 2>/dev/null)
    ((${#ids[@]} == 0)) || pm "$kind" rm -f "${ids[@]}" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

step "base image $BASE_IMAGE"
if pm image exists "$BASE_IMAGE"; then
  ok "present"
else
  if [[ ! -s $BASE_TARBALL ]]; then
    echo "   debootstrap --variant=minbase bookworm (no registry is reachable; Debian's mirror is)"
    start=$SECONDS
    debootstrap --variant=minbase bookworm "$WORK/rootfs" >"$WORK/debootstrap.log" 2>&1 \
      || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap failed"; }
    # As the official slim image: no package cache or lists, no man pages,
    # translations or docs other than the copyright files.
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/* \
      "$WORK"/rootfs/usr/share/man/* "$WORK"/rootfs/usr/share/locale/*
    find "$WORK/rootfs/usr/share/doc" -type f ! -name copyright -delete
    mkdir -p "$(dirname "$BASE_TARBALL")"
    tar --numeric-owner -C "$WORK/rootfs" -c . | gzip -1 >"$BASE_TARBALL.tmp"
    mv "$BASE_TARBALL.tmp" "$BASE_TARBALL"
    rm -rf "$WORK/rootfs"
    ok "debootstrap in $((SECONDS - start)) s; cached $BASE_TARBALL ($(du -h "$BASE_TARBALL" | cut -f1))"
  fi
  pm import "$BASE_TARBALL" "$BASE_IMAGE" >"$WORK/import.log" 2>&1 || { cat "$WORK/import.log"; fail "podman import $BASE_TARBALL failed"; }
  ok "imported $BASE_TARBALL as $BASE_IMAGE"
fi
out=$(pm run --rm --pull never --network none "$BASE_IMAGE" true 2>&1) \
  || fail "podman cannot run a container here: $out"
ok "podman --runtime runc runs a container"

step "image $IMAGE (the Dockerfile's runtime stage, the host binary as its 'binary' stage)"
[[ -x $BINARY_SRC ]] || fail "no binary at $BINARY_SRC: build it (cargo build --release) or set MINDOO_REPLICA_BINARY"
mkdir -p "$WORK/bin"
# A copy first: the binary may be rebuilt while the tests run.
cp "$BINARY_SRC" "$WORK/bin/mindoo-replica.full"
strip -o "$WORK/bin/mindoo-replica" "$WORK/bin/mindoo-replica.full"
rm "$WORK/bin/mindoo-replica.full"
BINARY=$WORK/bin/mindoo-replica
ok "$BINARY_SRC ($(du -m "$BINARY_SRC" | cut -f1) MB) copied and stripped: $(du -m "$BINARY" | cut -f1) MB, $("$BINARY" --version)"
pm build --pull=never --build-context binary="$WORK/bin" --target runtime -t "$IMAGE" -f Dockerfile . \
  >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; fail "podman build failed"; }
want=$(sha256sum "$BINARY" | cut -d' ' -f1)
got=$(pm run --rm --pull never --network none --entrypoint sha256sum "$IMAGE" /usr/local/bin/mindoo-replica | cut -d' ' -f1)
[[ $got == "$want" ]] || fail "the image's /usr/local/bin/mindoo-replica is not the host binary (--build-context binary= not used?)"
size=$(pm image inspect --format '{{.Size}}' "$IMAGE")
ok "podman build --build-context binary=<stripped copy> --target runtime: $IMAGE, $((size / 1000000)) MB (base $(($(pm image inspect --format '{{.Size}}' "$BASE_IMAGE") / 1000000)) MB); its binary is the host's"

# MINDOO_CONTAINERS_SET="key=value ...": more chart values for every render,
# e.g. other failure-detection settings under config.replication.
read -ra extra <<<"${MINDOO_CONTAINERS_SET:-}"
sets=()
for kv in "${extra[@]}"; do sets+=(--set "$kv"); done
status=0
# gRPC's C core would log every failed TLS handshake, also those the mesh
# scenario provokes on purpose and reports itself.
GRPC_VERBOSITY=${GRPC_VERBOSITY:-NONE} "$PY" tests/containers/scenarios.py --repo "$REPO" --work "$WORK" --binary "$BINARY" \
  --helm "$(command -v helm)" --image-repository "${IMAGE%:*}" --image-tag "${IMAGE##*:}" \
  "${sets[@]}" "$@" || status=$?
echo "containers: $([[ $status -eq 0 ]] && echo passed || echo FAILED) in ${SECONDS} s (setup included)"
exit $status
