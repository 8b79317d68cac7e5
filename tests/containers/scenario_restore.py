"""Scenario 7, restore: pod 0 restored from a backup kept on its volume.

Writes N entries and waits until every replica holds them; takes an online
backup of pod 0 inside its container (`mindoo-replica backup`, with the
credentials the chart gives the container, as `kubectl exec` would); writes M
more through pod 0 and waits until every replica holds them. Then stops pod 0
and starts it from a render with restore.from=<the backup> and
restore.pod=<pod 0>: the chart's init container `restore` runs to completion
first. Checks that it restored (a new incarnation), that pod 0 is ready and
pulls what it missed since the backup (N+M), that the others still hold
exactly N+M, and that a restart with the same values does not restore again.
"""

from __future__ import annotations

import re
import time

import chart
import podman
import replica
from harness import NAMESPACE, RELEASE, Fail, Mesh, info, ok, require

TITLE = "backup of a running replica, restore of its pod through the chart's init container"
N = 2000
M = 500
BATCH = 50
SIZE = 256


def write(m: Mesh, ordinal: int, n: int) -> list[bytes]:
    """n new entries through pod `ordinal`, in batches; their ids."""
    ids = []
    for start in range(0, n, BATCH):
        entries = [replica.make_entry(SIZE) for _ in range(min(BATCH, n - start))]
        statuses = m.clients[ordinal].put(entries, timeout=10)
        bad = [s for s in statuses if s not in ("PUT_STATUS_STORED", "PUT_STATUS_DUPLICATE")]
        require(not bad, f"writing through {m.pods[ordinal].plan.name}: {bad[:3]}")
        ids += [eid for eid, _ in entries]
    return ids


def incarnation(m: Mesh, ordinal: int) -> str:
    return m.clients[ordinal].head().incarnation.hex()


def wait_counts(m: Mesh, want: int, timeout: float) -> dict[int, int]:
    """Until every replica's entry_count is `want`; the counts."""
    deadline = time.monotonic() + timeout
    counts = {}
    while time.monotonic() < deadline:
        try:
            counts = m.counts(timeout=2)
        except replica.grpc.RpcError:
            time.sleep(0.2)
            continue
        if all(c == want for c in counts.values()):
            return counts
        time.sleep(0.2)
    raise Fail(f"after {timeout:.0f} s, entry counts {counts}, expected {want} on every replica")


def peer_status(m: Mesh, ordinal: int):
    """Replication/PeerStatus of pod `ordinal`, as an operator."""
    tls = m.tls_to(ordinal, m.certs.operator) if m.certs else None
    return replica.peer_status(m.pods[ordinal].addr("grpc"), tls, key=m.operator_key)


def restart_with(m: Mesh, ordinal: int, render: chart.Render) -> tuple[podman.Pod, float]:
    """Stops pod `ordinal` (SIGTERM) and starts it from `render`, init
    containers first; the new pod and the seconds until it was ready."""
    pod = m.pods[ordinal]
    code = pod.stop(pod.plan.grace_seconds)
    require(code == 0, f"{pod.plan.name} exited {code} on SIGTERM")
    pod.remove()
    t = time.monotonic()
    new = m.start(ordinal, render)
    m.wait_ready(ordinal)
    m.clients[ordinal].reset()
    return new, time.monotonic() - t


def run(m: Mesh) -> str:
    x = 0
    pod = m.pods[x]
    name = pod.plan.name
    base = m.counts()
    require(len(set(base.values())) == 1, f"entry counts differ before the scenario: {base}")
    base_count = next(iter(base.values()))

    # (1) N entries on every replica.
    t = time.monotonic()
    first = write(m, x, N)
    m.wait_all_hold(first, 60)
    wait_counts(m, base_count + N, 60)
    ok(f"{N} entries written through {name}, on every replica ({base_count + N} entries each) "
       f"in {time.monotonic() - t:.1f} s")

    # (2) A backup of pod 0, kept on its volume, taken inside its container.
    addr = f"{pod.plan.fqdn}:{pod.plan.ports['grpc']}" if m.certs else f"127.0.0.1:{pod.plan.ports['grpc']}"
    proc = podman.podman("exec", pod.container, "mindoo-replica", "backup", "--addr", addr, check=False, timeout=60)
    out = (proc.stdout + proc.stderr).strip()
    require(proc.returncode == 0, f"podman exec {name} mindoo-replica backup --addr {addr}: exit {proc.returncode}: {out}")
    found = re.search(r"kept at (\S+) on the replica's volume", out)
    require(found is not None, f"mindoo-replica backup printed no kept path: {out}")
    path = found.group(1)
    require(path.startswith("/var/lib/mindoo-replica/backups/backup-"), f"backup kept at {path}, not under backups/")
    for line in out.splitlines():
        info(f"backup: {line}")
    ok(f"podman exec {name} mindoo-replica backup --addr {addr} (the container's env and credentials): kept at {path}")

    # (3) M more through pod 0, on every replica.
    second = write(m, x, M)
    m.wait_all_hold(first + second, 60)
    want = base_count + N + M
    wait_counts(m, want, 60)
    old = incarnation(m, x)
    ok(f"{M} more entries written through {name} after the backup, on every replica ({want} entries each); "
       f"{name} incarnation {old}")

    # (4) Pod 0 stopped and started from a render with restore.from/restore.pod.
    r = chart.render(m.args.helm, str(m.args.chart), RELEASE, NAMESPACE,
                     {**m.sets, **m.kept, "replicaCount": str(len(m.pods)), "restore.from": path, "restore.pod": name},
                     m.set_files)
    inits = [p.container_name for p in chart.replica_plan(r, x).init_containers]
    require(inits == ["restore"], f"the render with restore.* has init containers {inits}, expected ['restore']")
    others_inits = {o: chart.replica_plan(r, o).init_containers for o in m.pods if o != x}
    restarted_ms = int(time.time() * 1000)
    pod, ready = restart_with(m, x, r)
    log = pod.init_output.get("restore", "")
    for line in log.splitlines():
        info(f"{name} -c restore: {line}")
    require("new incarnation" in log, f"the restore init container of {name} did not print 'new incarnation': {log}")
    restored = re.search(r"(\d+) entries, new incarnation", log)
    require(restored is not None and int(restored.group(1)) == base_count + N,
            f"the restore step of {name} restored {restored.group(1) if restored else '?'} entries, expected the "
            f"{base_count + N} the backup holds")
    new = incarnation(m, x)
    ok(f"{name} restarted with restore.from={path} restore.pod={name}: init container restore ran "
       f"(\"new incarnation\"), ready in {ready:.1f} s")
    require(new != old, f"{name}'s incarnation is still {old} after the restore")
    ok(f"{name} incarnation {old} -> {new}")

    # (5) Pod 0 pulls what it missed since the backup; the others hold exactly N+M.
    t = time.monotonic()
    m.wait_all_hold(first + second, 60)
    counts = wait_counts(m, want, 60)
    ok(f"{name} holds all {N}+{M} entries again {time.monotonic() - t:.1f} s after it was ready (the {M} written "
       f"after the backup pulled from its peers); entry counts {counts}, exactly {want} on every replica")
    # Its peers follow its new incarnation; what it pulled since it started is what it missed.
    fqdn = m.pods[x].plan.fqdn
    deadline, seen = time.monotonic() + 30, {}
    while time.monotonic() < deadline:
        seen = {o: [p.peer_incarnation.hex() for p in peer_status(m, o).peers if p.peer.startswith(fqdn)]
                for o in m.pods if o != x}
        if all(v == [new] for v in seen.values()):
            break
        time.sleep(0.5)
    require(all(v == [new] for v in seen.values()),
            f"the peers' PeerStatus for {name}: incarnations {seen}, expected [{new}] on each")
    # The peers found their cursors refused and compared their sets with it (set reconciliation,
    # keyed by the chart's Secret) instead of reading its whole log again.
    deadline, found = time.monotonic() + 30, {}
    while time.monotonic() < deadline:
        found = {m.pods[o].plan.name: p.last_reconcile
                 for o in m.pods if o != x for p in peer_status(m, o).peers
                 if p.peer.startswith(fqdn) and p.last_reconcile_unix_ms > restarted_ms}
        if len(found) == len(m.pods) - 1:
            break
        time.sleep(0.5)
    require(len(found) == len(m.pods) - 1,
            f"the peers of {name} reconciled with it after its restore: {found or 'none'}")
    ok(f"the peers reconciled with {name} after its restore: {found}")
    pulled = {p.peer.split(".")[0]: p.entries_pulled for p in peer_status(m, x).peers if not p.is_self}
    require(sum(pulled.values()) == M, f"{name} pulled {pulled} entries from its peers since the restore, "
                                       f"expected {M} in all (written after the backup)")
    ok(f"PeerStatus: the other replicas follow {name} at its new incarnation; {name} pulled {pulled} "
       f"= {M} entries since the restore")
    # The other pods' init step would exit at once: it restores only restore.pod.
    others = {m.pods[o].plan.name: (p[0].env.get("POD_NAME"), p[0].env.get("RESTORE_POD"))
              for o, p in others_inits.items()}
    require(all(len(p) == 1 for p in others_inits.values()) and all(pn != rp for pn, rp in others.values()),
            f"the other pods' restore step (POD_NAME, RESTORE_POD): {others}")

    # A restart with the same values does not restore again.
    pod, ready = restart_with(m, x, r)
    log = pod.init_output.get("restore", "")
    for line in log.splitlines():
        info(f"{name} -c restore (again): {line}")
    require("already restored" in log, f"the restore init container of {name} did not print 'already restored' "
                                        f"on the next start: {log}")
    again = incarnation(m, x)
    require(again == new, f"{name}'s incarnation changed on a restart with the same restore values: {new} -> {again}")
    counts = wait_counts(m, want, 30)
    m.wait_all_hold(first + second, 30)
    ok(f"{name} restarted with the same restore values: \"already restored\", incarnation still {again}, "
       f"ready in {ready:.1f} s; entry counts {counts}")
    return f"incarnation changed on restore, {M} missed entries pulled back, no second restore on restart"
