#!/usr/bin/env bash
# Two devices that find each other over mDNS and sync, by hand through the
# command line, between two network namespaces joined by a veth pair: the
# same flow as the test `two_devices_find_each_other_and_sync` in
# tests/discovery/main.rs (run by `cargo test --test discovery`), for someone
# with the binary and without cargo.
#
#   keys init / export on A, keys import on B; doc create on A, offline
#   in A:  mindoo-replica serve --client-home A --advertise
#            (MINDOO_REPLICA__SERVER__LISTEN=<A's address>:7700, metrics off,
#            no shutdown delay)
#   in B:  mindoo-replica discover --wait-secs 3
#            lists A's device name (device-<A's actor id>) at A's address
#   in B:  mindoo-replica sync --home B --discover --every 1s --stop-after 1
#            finds A and pulls A's document ("got 1"); doc show on B shows it
#   on B:  doc set, then the same sync again pushes the edit ("sent 1")
#   in A:  SIGTERM: serve exits 0; doc show on A shows B's edit
#
#   bash tests/discovery/netns.sh
#
# Needs root (network namespaces) and iproute2. The binary is
# MINDOO_REPLICA_BINARY, default $CARGO_TARGET_DIR/release/mindoo-replica, and
# without CARGO_TARGET_DIR ~/.cache/mindoo-replica/target/release/mindoo-replica.
# Lines starting "FAIL" say what failed; the exit status is non-zero then.
# Takes about 15 s.

set -euo pipefail

ok() { printf '   ok    %s\n' "$*"; }
fail() {
  printf 'FAIL  %s\n' "$*" >&2
  exit 1
}
# Prints the named files to stderr, to explain a failure.
show() {
  local f
  for f in "$@"; do
    [[ -s $f ]] && { printf -- '--- %s\n' "${f##*/}" >&2; cat "$f" >&2; }
  done
  return 0
}

[[ $(id -u) -eq 0 ]] || fail "PREREQUISITE MISSING: this test needs root (network namespaces and veth links); run: sudo bash $0"
command -v ip >/dev/null 2>&1 || fail "PREREQUISITE MISSING: no ip command: apt-get install iproute2"
BIN=${MINDOO_REPLICA_BINARY:-${CARGO_TARGET_DIR:-$HOME/.cache/mindoo-replica/target}/release/mindoo-replica}
[[ -x $BIN ]] || fail "PREREQUISITE MISSING: no binary at $BIN: build it (cargo build --release) or set MINDOO_REPLICA_BINARY"

NS=acme/notes
PORT=7700
A=mdisc-$$-cli-a
B=mdisc-$$-cli-b
A_IP=10.77.250.1
B_IP=10.77.250.2
WORK=$(mktemp -d /tmp/mindoo-discovery.XXXXXX)
HOME_A=$WORK/home-a
HOME_B=$WORK/home-b
export MINDOO_PASSPHRASE=netns-test
SERVE_PID=

# shellcheck disable=SC2329 # run by the EXIT trap
cleanup() {
  if [[ -n $SERVE_PID ]] && kill -0 "$SERVE_PID" 2>/dev/null; then
    kill -KILL "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
  fi
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The command on a device's home, outside any namespace (a home is files).
on() {
  local home=$1
  shift
  "$BIN" "$@" -n "$NS" --home "$home"
}

# 1. Two homes: keys made on A and imported on B; a document made on A.
on "$HOME_A" keys init >"$WORK/keys.out" 2>&1 || { show "$WORK/keys.out"; fail "keys init on A"; }
on "$HOME_A" keys export --out "$WORK/notes.keys" >"$WORK/keys.out" 2>&1 || { show "$WORK/keys.out"; fail "keys export on A"; }
on "$HOME_B" keys import "$WORK/notes.keys" >"$WORK/keys.out" 2>&1 || { show "$WORK/keys.out"; fail "keys import on B"; }
MARKER="made-on-a-$$-$RANDOM"
ID=$(on "$HOME_A" doc create --json "{\"title\":\"notes\",\"marker\":\"$MARKER\"}" 2>"$WORK/doc.err") \
  || { show "$WORK/doc.err"; fail "doc create on A"; }
ID=${ID//[[:space:]]/}
[[ -n $ID ]] || fail "doc create on A printed no id"
[[ -s $HOME_A/actor ]] || fail "A's home has no actor file: cannot tell its device name"
DEVICE_A="device-$(tr -d '[:space:]' <"$HOME_A/actor")"
ok "homes A ($DEVICE_A) and B share $NS; document $ID made on A"

# 2. The network: two namespaces joined by a veth pair.
ip netns add "$A" || fail "PREREQUISITE MISSING? ip netns add $A failed (root, a kernel with network namespaces?)"
ip netns add "$B" || fail "ip netns add $B"
ip link add veth-a netns "$A" type veth peer name veth-b netns "$B" \
  || fail "PREREQUISITE MISSING? ip link add veth failed (a kernel with veth?)"
ip -n "$A" addr add "$A_IP/24" dev veth-a
ip -n "$B" addr add "$B_IP/24" dev veth-b
ip -n "$A" addr add fd77:0:0:250::1/64 dev veth-a nodad
ip -n "$B" addr add fd77:0:0:250::2/64 dev veth-b nodad
for ns_dev in "$A veth-a" "$B veth-b"; do
  read -r ns dev <<<"$ns_dev"
  ip -n "$ns" link set lo up
  ip -n "$ns" link set "$dev" up
done
# mDNS daemons take the interfaces that are up when they start: wait for the
# link, and for the link-local IPv6 address to leave duplicate detection.
for ns_dev in "$A veth-a" "$B veth-b"; do
  read -r ns dev <<<"$ns_dev"
  for _ in $(seq 200); do
    if ip -n "$ns" -o link show dev "$dev" | grep -q 'state UP' \
      && [[ -z $(ip -n "$ns" -o -6 addr show dev "$dev" tentative) ]]; then
      continue 2
    fi
    sleep 0.05
  done
  fail "$dev in $ns is not up after 10 s"
done
ok "namespaces $A ($A_IP) and $B ($B_IP), joined by a veth pair"

# 3. A serves its store and announces itself.
# A device has no load balancer to wait for: no shutdown delay (by default
# serve waits 5 s on SIGTERM, and says goodbye after that).
MINDOO_REPLICA__SERVER__LISTEN="$A_IP:$PORT" MINDOO_REPLICA__SERVER__METRICS_LISTEN='' \
  MINDOO_REPLICA__SERVER__SHUTDOWN_DELAY_MS=0 \
  ip netns exec "$A" "$BIN" serve --client-home "$HOME_A" --advertise \
  >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVE_PID=$!
for _ in $(seq 200); do
  grep -q '^mindoo-replica listening ' "$WORK/serve.out" && break
  kill -0 "$SERVE_PID" 2>/dev/null || { show "$WORK/serve.out" "$WORK/serve.err"; fail "serve in $A exited before it was ready"; }
  sleep 0.05
done
grep -qxF "mindoo-replica listening grpc=$A_IP:$PORT metrics=off" "$WORK/serve.out" \
  || { show "$WORK/serve.out" "$WORK/serve.err"; fail "no 'mindoo-replica listening grpc=$A_IP:$PORT metrics=off' line from serve in $A"; }
ok "$A: serving $HOME_A at $A_IP:$PORT, announced as $DEVICE_A"

# 4. B lists A.
ip netns exec "$B" "$BIN" discover --wait-secs 3 >"$WORK/discover.out" 2>"$WORK/discover.err" \
  || { show "$WORK/discover.out" "$WORK/discover.err"; fail "discover in $B failed"; }
# found <addr>[,<addr>...] <node>
addrs=$(awk -v node="$DEVICE_A" '$1 == "found" && $3 == node { print $2 }' "$WORK/discover.out")
[[ -n $addrs ]] || { show "$WORK/discover.out" "$WORK/discover.err" "$WORK/serve.err"; fail "discover in $B did not list $DEVICE_A (does serve announce it? --advertise)"; }
[[ ${addrs%%,*} == "$A_IP:$PORT" ]] || fail "discover in $B lists $DEVICE_A first at ${addrs%%,*}, not $A_IP:$PORT: $addrs"
ok "$B: discover lists $DEVICE_A at $addrs"

# 5. B finds A and pulls A's document.
sync_round() {
  ip netns exec "$B" "$BIN" sync --home "$HOME_B" --discover --discover-wait 3s --every 1s --stop-after 1 \
    >"$WORK/sync.out" 2>"$WORK/sync.err" \
    || { show "$WORK/sync.out" "$WORK/sync.err"; fail "sync in $B failed"; }
  ROUND=$(grep '^round 1: ' "$WORK/sync.out") || { show "$WORK/sync.out" "$WORK/sync.err"; fail "sync in $B printed no round line"; }
  [[ $ROUND == *" 1 device(s) found; $DEVICE_A ($A_IP:$PORT) sent "* ]] \
    || { show "$WORK/sync.out" "$WORK/sync.err" "$WORK/serve.err"; fail "sync in $B did not find $DEVICE_A at $A_IP:$PORT alone: $ROUND"; }
}
sync_round
[[ $ROUND == *" sent 0 got 1 "* ]] || fail "B's first round should get A's document (got 1): $ROUND"
ok "$B: $ROUND"
shown=$(on "$HOME_B" doc show "$ID" 2>&1) || fail "doc show $ID on B: $shown"
[[ $shown == *"\"$MARKER\""* ]] || fail "B's copy of $ID lacks A's marker $MARKER: $shown"
ok "B shows A's document: $shown"

# 6. B edits offline; the next round pushes the edit to A.
EDIT="edited-on-b-$$"
out=$(on "$HOME_B" doc set "$ID" title "\"$EDIT\"" 2>&1) || fail "doc set on B: $out"
sync_round
[[ $ROUND == *" sent 1 got 0 "* ]] || fail "B's second round should send its edit (sent 1 got 0): $ROUND"
ok "$B: $ROUND"

# 7. A stops on SIGTERM and holds B's edit.
kill -TERM "$SERVE_PID"
status=0
wait "$SERVE_PID" || status=$?
SERVE_PID=
[[ $status -eq 0 ]] || { show "$WORK/serve.out" "$WORK/serve.err"; fail "serve in $A exited with $status on SIGTERM"; }
ok "$A: serve stopped on SIGTERM (exit 0)"
shown=$(on "$HOME_A" doc show "$ID" 2>&1) || fail "doc show $ID on A: $shown"
[[ $shown == *"\"$EDIT\""* && $shown == *"\"$MARKER\""* ]] || fail "A's copy of $ID lacks B's edit $EDIT: $shown"
ok "A shows B's edit: $shown"
echo "discovery: passed in ${SECONDS} s"
