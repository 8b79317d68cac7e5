"""Scenario 2, mesh: writes through every replica reach every replica.

Writes through all replicas, then checks that every acknowledged entry is on
every replica, with the same entry count and entries_stored_total everywhere;
runs `mindoo-replica check` from the host through each replica in turn, and
the chart's helm test pod in a container, which must exit 0.

With TLS (the replicas then replicated over mutual TLS to get here), checks
what the gRPC port takes: a plaintext connection fails, as do certificates
from another CA or from the mesh CA naming no peer or operator, each counted
in connection_tls_handshake_failures_total; the admin call PeerStatus is
PERMISSION_DENIED without a certificate and answered with the operator's,
from Python and from `mindoo-replica status`.

With client authentication required (the default run: every call above was
signed, the helm test pod's and the host's `check` with the chart's test
key), checks what it refuses: a request without credentials, with a stale,
forged or replayed x-mindoo-auth header (the same header sent twice, each
time on a new connection: the second time), all UNAUTHENTICATED; a valid key not listed for the namespace
(the outsider's) PERMISSION_DENIED on write, with nothing stored on any
replica, and on read, while it may read a namespace without lists of its
own; a scan of every namespace by a key that may read only some
PERMISSION_DENIED; PeerStatus for a client key PERMISSION_DENIED, for a key
of auth.operators answered.
"""

from __future__ import annotations

import re
import subprocess
import time

import grpc

import replica
from harness import Mesh, info, ok, require

TITLE = "mesh forms and converges; helm test; what TLS and client authentication let through"
HANDSHAKE_FAILURES = "mindoo_replica_connection_tls_handshake_failures_total"


def has_check(binary: str) -> bool:
    return subprocess.run([binary, "check", "--help"], capture_output=True).returncode == 0


def run(m: Mesh) -> str:
    n = len(m.pods)
    t0 = time.monotonic()
    m.writer.write_to(m.pods)
    while len(m.writer.acked) < 300 * n // 3:
        require(time.monotonic() - t0 < 30, f"writes fail: {dict(m.writer.failed)} {m.writer.last_error}")
        time.sleep(0.05)
    m.writer.pause()
    ids = m.writer.ids()
    per = {i: sum(1 for a in m.writer.acked if a.replica == i) for i in sorted(m.pods)}
    t1 = time.monotonic()
    took = m.wait_all_hold(ids, 30)
    counts = m.counts()
    require(len(set(counts.values())) == 1, f"entry counts differ: {counts}")
    ok(f"wrote {len(ids)} entries through the {n} replicas {per} in {t1 - t0:.1f} s; all on every replica "
       f"{took * 1000:.0f} ms after the last write (entry counts {counts})")

    stored = {i: m.metrics(i).total("mindoo_replica_entries_stored_total") for i in sorted(m.pods)}
    require(all(v == len(ids) for v in stored.values()),
            f"entries_stored_total per replica {stored}, expected {len(ids)} each")
    ok(f"mindoo_replica_entries_stored_total = {len(ids)} on each replica")

    require(has_check(m.binary), "the binary has no `check` subcommand (`mindoo-replica check --addr A --addr B ...`): "
            "the helm test pod runs it; rebuild the binary with it")
    addrs = [m.pods[i].addr("grpc") for i in sorted(m.pods)]
    for first in range(n):
        order = addrs[first:] + addrs[:first]
        t = time.monotonic()
        # Signed with the chart's helm test key, which may use the namespace
        # `check` writes (mindoo-check/probe), when authentication is required.
        proc = subprocess.run([m.binary, "check", *sum([["--addr", a] for a in order], [])],
                              capture_output=True, text=True, timeout=60,
                              env=m.cli_env(key="helm-test" if m.auth else None))
        require(proc.returncode == 0, f"mindoo-replica check through {order[0]} failed ({proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}")
        how = ", ".join(w for w, on in (("TLS, the CA alone", m.certs), ("signed with the helm test key", m.auth)) if on)
        ok(f"host: mindoo-replica check through {order[0]}{f' ({how})' if how else ''}: "
           f"exit 0 in {time.monotonic() - t:.2f} s")
        for line in proc.stdout.strip().splitlines():
            info(line)

    test = m.test_pod()
    info(f"helm test pod {test.plan.name}: {test.plan.image} {' '.join(test.plan.args)}")
    for k, v in test.plan.env.items():
        info(f"       env {k}={v}")
    for v in test.plan.volumes:
        if v.kind == "secret":
            info(f"       {v.mount_path} <- Secret {v.source}, only {sorted(v.project(m.secret_data(m.render, v.source)))}")
    t = time.monotonic()
    proc = test.run_to_completion(timeout=test.plan.active_deadline or 120)
    for line in (proc.stdout + proc.stderr).strip().splitlines():
        info(f"| {line}")
    require(proc.returncode == 0, f"the helm test pod failed: exit {proc.returncode}")
    ok(f"helm test pod: exit 0 in {time.monotonic() - t:.1f} s")
    note = f"{len(ids)} entries on every replica {took * 1000:.0f} ms after the last write; helm test passed"
    if m.certs is not None:
        note += "; " + check_tls(m)
    if m.auth:
        note += "; " + check_auth(m)
    else:
        head = replica.head_once(m.pods[0].addr("grpc"), m.tls_to(0))
        ok(f"client authentication off: an unsigned Head answered (head_seq {head.head_seq}), as were the unsigned "
           f"writes and reads above")
    return note


def rpc_error(call) -> grpc.RpcError | None:
    """The error a gRPC call ends with; None when it is answered."""
    try:
        call()
    except grpc.RpcError as e:
        return e
    return None


def check_tls(m: Mesh) -> str:
    i = sorted(m.pods)[0]
    pod = m.pods[i]
    addr = pod.addr("grpc")
    anonymous = m.tls_to(i)
    mx = m.metrics(i)
    require(mx.get(HANDSHAKE_FAILURES), f"{pod.plan.name} serves no {HANDSHAKE_FAILURES} on /metrics")
    failures_before = mx.total(HANDSHAKE_FAILURES)

    # What the gRPC port refuses, each on a new connection: a Head call,
    # which anyone connected may make, fails only if the connection does.
    foreign, stranger = m.certs.foreign, m.certs.stranger
    attempts = {
        "plaintext (no TLS)": None,
        "a certificate from another CA": anonymous.presenting(foreign.cert, foreign.key),
        "a certificate from the mesh CA naming no peer or operator": anonymous.presenting(stranger.cert, stranger.key),
    }
    for what, tls in attempts.items():
        # Signed: were the connection taken, the call would be answered.
        e = rpc_error(lambda: replica.head_once(addr, tls, key=m.client_key))
        require(e is not None and e.code() == grpc.StatusCode.UNAVAILABLE,
                f"{what} to {addr}: {f'{e.code().name} ({e.details()})' if e else 'Head answered'}; "
                f"expected the connection to fail (UNAVAILABLE)")
        ok(f"{what}, to the gRPC port of {pod.plan.name}: refused, {e.code().name}: "
           f"{(e.details() or '').splitlines()[0][:120]}")
    head = replica.head_once(addr, anonymous, key=m.client_key)
    ok(f"TLS without a client certificate (as applications connect){', the call signed' if m.auth else ''}: "
       f"Head answered, head_seq {head.head_seq}")

    failures = m.metrics(i).total(HANDSHAKE_FAILURES) - failures_before
    require(failures >= len(attempts), f"{HANDSHAKE_FAILURES} on {pod.plan.name} grew by {failures:.0f} over "
            f"{len(attempts)} refused connections")
    ok(f"{HANDSHAKE_FAILURES} on {pod.plan.name}: +{failures:.0f} for the {len(attempts)} refused connections")

    # The admin call: peers and operators only.
    e = rpc_error(lambda: replica.peer_status(addr, anonymous, key=m.client_key))
    require(e is not None and e.code() == grpc.StatusCode.PERMISSION_DENIED,
            f"PeerStatus without a client certificate: {f'{e.code().name} ({e.details()})' if e else 'answered'}; "
            f"expected PERMISSION_DENIED")
    ok(f"PeerStatus without a client certificate{' (signed with a client key, not an operator key)' if m.auth else ''}"
       f": PERMISSION_DENIED ({e.details()})")
    status = replica.peer_status(addr, anonymous.presenting(m.certs.operator.cert, m.certs.operator.key))
    others = [p for p in status.peers if not p.is_self]
    connected = sum(1 for p in others if p.connected)
    require(len(others) == len(m.pods) - 1 and connected == len(others),
            f"PeerStatus with the operator's certificate: {connected} of {len(others)} peers connected, "
            f"expected {len(m.pods) - 1}: {[(p.peer, p.connected, p.last_error) for p in others]}")
    ok(f"PeerStatus with the operator's certificate: node {status.node}, {connected} of {len(others)} peers connected "
       f"(each session over mutual TLS)")

    # The same through the command line, as an operator runs it.
    def status(identity):
        return subprocess.run([m.binary, "status", "--addr", addr], capture_output=True, text=True, timeout=20,
                              env=m.cli_env(identity))

    denied, allowed = status(None), status(m.certs.operator)
    require(denied.returncode != 0, f"`mindoo-replica status` with the CA alone succeeded:\n{denied.stdout}")
    require(allowed.returncode == 0, f"`mindoo-replica status` with the operator's certificate failed "
            f"({allowed.returncode}):\n{allowed.stdout}{allowed.stderr}")
    said = (denied.stderr.strip().splitlines() or ["no message"])[-1]
    said = re.search(r'message: "(.*)"', said).group(1) if 'message: "' in said else said
    ok(f"host: mindoo-replica status --addr {addr}: with the CA alone exit {denied.returncode} ({said[:120]}); "
       f"with the operator's certificate exit 0:")
    for line in allowed.stdout.strip().splitlines():
        info(line)
    return (f"TLS: plaintext and foreign/unnamed certificates refused (+{failures:.0f} handshake failures), "
            f"PeerStatus denied without a certificate, answered for the operator")


def expect_code(what: str, call, code: grpc.StatusCode) -> grpc.RpcError:
    e = rpc_error(call)
    require(e is not None and e.code() == code,
            f"{what}: {f'{e.code().name} ({e.details()})' if e else 'answered'}; expected {code.name}")
    ok(f"{what}: {code.name} ({(e.details() or '').splitlines()[0][:140]})")
    return e


def check_auth(m: Mesh) -> str:
    """What client authentication refuses, on pod 0 (and what it lets
    through), each call on a new connection over TLS without a certificate."""
    i = sorted(m.pods)[0]
    addr, tls = m.pods[i].addr("grpc"), m.tls_to(i)
    ns = replica.NAMESPACE
    other = ("containers", "elsewhere")  # a namespace without lists of its own
    unauth, denied = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED

    # No credentials, or credentials not taken.
    expect_code("Head without credentials", lambda: replica.head_once(addr, tls), unauth)
    entry = replica.make_entry(64)
    expect_code("PutEntries without credentials", lambda: replica.put_once(addr, tls, [entry]), unauth)
    expect_code("MissingIds without credentials", lambda: replica.missing_once(addr, tls, ns, [entry[0]]), unauth)
    stale = replica.sign(m.client_key, at_ms=int(time.time() * 1000) - 120_000)
    expect_code("Head with x-mindoo-auth signed 120 s ago (the allowed skew is 30 s)",
                lambda: replica.head_once(addr, tls, header=stale), unauth)
    key, at, nonce, _sig = replica.sign(m.client_key).split(".")[1:]
    forged = f"v1.{key}.{at}.{nonce}.{replica.sign(m.outsider_key).split('.')[4]}"
    expect_code("Head with the application's key and a signature by another key",
                lambda: replica.head_once(addr, tls, header=forged), unauth)

    # The same header twice, each on a new connection (as a captured header
    # would be replayed): taken once.
    header = replica.sign(m.client_key)
    first = replica.head_once(addr, tls, header=header)
    ok(f"Head with one x-mindoo-auth header made here: answered (head_seq {first.head_seq})")
    expect_code("Head with that same header again, on a new connection (a replay)",
                lambda: replica.head_once(addr, tls, header=header), unauth)

    # A valid key without the right for the namespace: refused, nothing stored.
    outsider = m.outsider_key
    replica.head_once(addr, tls, key=outsider)
    require(replica.missing_once(addr, tls, other, [entry[0]], key=outsider) == [entry[0]],
            f"MissingIds on {'/'.join(other)} with the outsider key did not answer that the entry is missing")
    ok(f"the outsider key is valid: Head answered, and MissingIds on {'/'.join(other)} (a namespace without lists "
       f"of its own, which auth.readers lets it read)")
    expect_code(f"PutEntries into {'/'.join(ns)} signed with the outsider key (not in that namespace's writers)",
                lambda: replica.put_once(addr, tls, [entry], key=outsider), denied)
    expect_code(f"MissingIds on {'/'.join(ns)} signed with the outsider key (not in its readers)",
                lambda: replica.missing_once(addr, tls, ns, [entry[0]], key=outsider), denied)
    time.sleep(1)  # anything stored would be on its way to the other replicas
    holding = [o for o, c in sorted(m.clients.items()) if o in m.pods and not c.missing([entry[0]])]
    require(not holding, f"the refused entry {entry[0].hex()[:16]}… is stored on replica(s) {holding}")
    ok(f"the refused entry {entry[0].hex()[:16]}… is on none of the {len(m.pods)} replicas (MissingIds with the "
       f"application's key)")

    # Reading every namespace needs the right on every namespace.
    records = replica.scan_once(addr, tls, [ns], key=m.client_key)
    ok(f"ScanSince of {'/'.join(ns)} with the application's key: answered ({records} records)")
    expect_code("ScanSince of every namespace (no filter) with the application's key, which may read only some",
                lambda: replica.scan_once(addr, tls, [], key=m.client_key), denied)

    # The admin call: a key of auth.operators may make it.
    status = replica.peer_status(addr, tls, key=m.operator_key)
    ok(f"PeerStatus signed with the key of auth.operators (no client certificate): answered, node {status.node}")
    proc = subprocess.run([m.binary, "status", "--addr", addr], capture_output=True, text=True, timeout=20,
                          env=m.cli_env(key="operator"))
    require(proc.returncode == 0, f"`mindoo-replica status` with MINDOO_REPLICA_CLIENT_KEY_FILE naming the "
            f"operator key failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    ok("host: mindoo-replica status with the CA and MINDOO_REPLICA_CLIENT_KEY_FILE (the operator key): exit 0")
    return ("auth: no, stale, forged and replayed credentials UNAUTHENTICATED; a key not listed for the "
            "namespace PERMISSION_DENIED, nothing stored; operator key answered")
