#!/usr/bin/env bash
# Device discovery over mDNS through the command, between two network
# namespaces joined by a veth pair (the library's own test of the same is
# tests/discovery/main.rs, run by `cargo test`):
#   in A:  mindoo-replica discover --advertise NODE --port PORT
#            prints "advertising <port> <node>", announces until SIGTERM/SIGINT,
#            then says goodbye and prints "stopped <node>"
#   in B:  mindoo-replica discover --wait-secs N [--except NODE]
#            listens N seconds, then prints one line per other device:
#            "found <addr>[,<addr>...] <node>" (IPv4 first; the node name is
#            the rest of the line, and may hold spaces)
# Checks: B finds A by its node name at A's IPv4 address (in B's subnet)
# first; with --except that name, B finds nothing; A stops cleanly on SIGTERM.
#
#   bash tests/discovery/netns.sh
#
# Needs root (network namespaces) and iproute2. The binary is
# MINDOO_REPLICA_BINARY, default $CARGO_TARGET_DIR/release/mindoo-replica, and
# without CARGO_TARGET_DIR ~/.cache/mindoo-replica/target/release/mindoo-replica.
# Lines starting "FAIL" say what failed; the exit status is non-zero then.

set -euo pipefail

ok() { printf '   ok    %s\n' "$*"; }
fail() {
  printf 'FAIL  %s\n' "$*" >&2
  exit 1
}

[[ $(id -u) -eq 0 ]] || fail "the discovery test needs root (network namespaces and veth links); run: sudo bash $0"
command -v ip >/dev/null 2>&1 || fail "no ip command: apt-get install iproute2"
BIN=${MINDOO_REPLICA_BINARY:-${CARGO_TARGET_DIR:-$HOME/.cache/mindoo-replica/target}/release/mindoo-replica}
[[ -x $BIN ]] || fail "no binary at $BIN: build it (cargo build --release) or set MINDOO_REPLICA_BINARY"

NODE="Ada's laptop (ä)"
PORT=7700
WAIT_SECS=3
A=mdisc-$$-cli-a
B=mdisc-$$-cli-b
A_IP=10.77.250.1
B_IP=10.77.250.2
WORK=$(mktemp -d /tmp/mindoo-discovery.XXXXXX)
ADV_PID=

# shellcheck disable=SC2329 # run by the EXIT trap
cleanup() {
  if [[ -n $ADV_PID ]] && kill -0 "$ADV_PID" 2>/dev/null; then
    kill -KILL "$ADV_PID" 2>/dev/null || true
    wait "$ADV_PID" 2>/dev/null || true
  fi
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$A" || fail "ip netns add $A (root, a kernel with network namespaces?)"
ip netns add "$B" || fail "ip netns add $B"
ip link add veth-a netns "$A" type veth peer name veth-b netns "$B" || fail "ip link add veth (a kernel with veth?)"
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

ip netns exec "$A" "$BIN" discover --advertise "$NODE" --port "$PORT" >"$WORK/advertise.out" 2>"$WORK/advertise.err" &
ADV_PID=$!
for _ in $(seq 100); do
  grep -q '^advertising ' "$WORK/advertise.out" && break
  kill -0 "$ADV_PID" 2>/dev/null || { cat "$WORK/advertise.err" >&2; fail "the advertiser in $A exited"; }
  sleep 0.1
done
grep -qxF "advertising $PORT $NODE" "$WORK/advertise.out" \
  || { cat "$WORK/advertise.out" "$WORK/advertise.err" >&2; fail "no 'advertising $PORT $NODE' line from the advertiser in $A"; }
ok "$A: advertising $PORT $NODE"

start=$SECONDS
ip netns exec "$B" "$BIN" discover --wait-secs "$WAIT_SECS" >"$WORK/browse.out" 2>"$WORK/browse.err" \
  || { cat "$WORK/browse.err" >&2; fail "discover in $B failed"; }
# found <addr>[,<addr>...] <node>
line=$(awk -v node="$NODE" '$1 == "found" { rest = $0; sub(/^found [^ ]+ /, "", rest); if (rest == node) print }' "$WORK/browse.out")
[[ -n $line ]] || { cat "$WORK/browse.out" >&2; fail "$B did not find '$NODE' in $WAIT_SECS s"; }
[[ $(grep -c '^found ' "$WORK/browse.out") -eq 1 ]] || { cat "$WORK/browse.out" >&2; fail "$B found more than one device"; }
addrs=$(awk '{ print $2 }' <<<"$line")
first=${addrs%%,*}
[[ $first == "$A_IP:$PORT" ]] || fail "the first address of '$NODE' is $first, not $A_IP:$PORT (in $B's subnet): $addrs"
ok "$B: found $NODE at $addrs in $((SECONDS - start)) s"

ip netns exec "$B" "$BIN" discover --wait-secs "$WAIT_SECS" --except "$NODE" >"$WORK/except.out" 2>"$WORK/except.err" \
  || { cat "$WORK/except.err" >&2; fail "discover --except in $B failed"; }
if grep -q '^found ' "$WORK/except.out"; then
  cat "$WORK/except.out" >&2
  fail "with --except '$NODE', $B still found a device"
fi
ok "$B: --except '$NODE' finds nothing"

kill -TERM "$ADV_PID"
status=0
wait "$ADV_PID" || status=$?
ADV_PID=
[[ $status -eq 0 ]] || { cat "$WORK/advertise.err" >&2; fail "the advertiser exited with $status on SIGTERM"; }
grep -qxF "stopped $NODE" "$WORK/advertise.out" || fail "no 'stopped $NODE' line from the advertiser"
ok "$A: stopped on SIGTERM"
echo "discovery: passed in ${SECONDS} s"
