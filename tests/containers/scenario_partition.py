"""Scenario 4, partition: one replica cut off from the network for a while.

Disconnects a replica for PARTITION_SECONDS while writes go on through the
others, reading its per-peer metrics from inside its network namespace (they
must show the partition). After the reconnect, times how long the mesh takes
to converge (limit PARTITION_LIMIT_SECONDS), shows the replication settings in
effect, and checks that every pair is connected again with no lag.
"""

from __future__ import annotations

import time

import replica
from harness import Fail, Mesh, effective_replication_settings, info, ok, require, say

TITLE = "partition and convergence"
PARTITION_SECONDS = 15
PARTITION_LIMIT_SECONDS = 10


def run(m: Mesh) -> str:
    x = 1 if 1 in m.pods else sorted(m.pods)[0]
    pod = m.pods[x]
    others = [o for o in sorted(m.pods) if o != x]
    peer = {o: f"{m.pods[o].plan.fqdn}:{m.pods[o].plan.ports['grpc']}" for o in others}  # the `peer` label
    port = pod.plan.ports["metrics"]
    m.writer.write_to(others)
    time.sleep(1.0)
    old_ip = pod.ip()
    before = len(m.writer.acked)
    t0 = time.monotonic()
    pod.disconnect()
    ok(f"podman network disconnect {pod.plan.name} (ip {old_ip}); writes go on through "
       f"{[m.pods[o].plan.name for o in others]}")
    # Its metrics from inside its own network namespace while it is cut off.
    pid = pod.pid()
    connected = {o: 1.0 for o in others}
    lag_s = {o: 0.0 for o in others}
    while time.monotonic() - t0 < PARTITION_SECONDS:
        mx = replica.scrape_in_netns(pid, port)
        for o in others:
            connected[o] = min(connected[o], mx.total("mindoo_replica_peer_connected", peer=peer[o]))
            lag_s[o] = max(lag_s[o], mx.total("mindoo_replica_peer_lag_seconds", peer=peer[o]))
        time.sleep(1.0)
    written = len(m.writer.acked) - before
    m.writer.pause()
    cut = replica.scrape_in_netns(pid, port)
    t1 = time.monotonic()  # the network comes back during `podman network connect`: timed from its start
    pod.connect()
    connect_took = time.monotonic() - t1
    m.clients[x].reset()  # its connection went with the old address
    info(f"cut off {t1 - t0:.1f} s; {written} entries written meanwhile; reconnected (ip {pod.ip()}; "
         f"podman network connect took {connect_took:.2f} s)")
    info(f"during the partition, on {pod.plan.name}: peer_connected min "
         f"{{{', '.join(f'{m.pods[o].plan.name}: {v:.0f}' for o, v in connected.items())}}}, peer_lag_seconds max "
         f"{{{', '.join(f'{m.pods[o].plan.name}: {v:.1f}' for o, v in lag_s.items())}}}")

    # Convergence: the same entry count everywhere, all acknowledged entries included.
    ids = m.writer.ids()
    new_session = {}  # when it started a new session with each peer, seconds after the cut
    converged = None
    while time.monotonic() < t1 + 120:
        try:
            mx = m.metrics(x)
            for o in others:
                if o not in new_session and mx.total("mindoo_replica_peer_sessions_total", peer=peer[o]) > \
                        cut.total("mindoo_replica_peer_sessions_total", peer=peer[o]):
                    new_session[o] = time.monotonic() - t0
            counts = m.counts(timeout=1)
        except Exception:  # noqa: BLE001 - the published port comes back with the network
            time.sleep(0.1)
            continue
        if len(set(counts.values())) == 1 and counts[x] >= len(ids):
            converged = time.monotonic() - t1
            break
        time.sleep(0.1)
    after = m.metrics(x)
    errors = {}
    for labels, v in after.get("mindoo_replica_peer_errors_total"):
        old = sum(w for lb, w in cut.get("mindoo_replica_peer_errors_total") if lb == labels)
        if v > old:
            errors[f"{labels.get('peer', '').split('.')[0]}/{labels.get('kind')}"] = int(v - old)
    info(f"after the reconnect, on {pod.plan.name}: new session with "
         + ", ".join(f"{m.pods[o].plan.name} {t:.1f} s" for o, t in sorted(new_session.items()))
         + f" after the cut; peer errors since the reconnect {errors or 'none'}")
    s = {k: int(v) for k, v in effective_replication_settings(m).items() if v.isdigit()}
    keepalive = s.get("keepalive_interval_ms", 0) / 1000
    info(f"settings in effect: keepalive_interval_ms {s.get('keepalive_interval_ms')}, session_idle_timeout_ms "
         f"{s.get('session_idle_timeout_ms')}, connect_timeout_ms {s.get('connect_timeout_ms')}, backoff_max_ms "
         f"{s.get('backoff_max_ms')}; a dead connection is noticed <= {keepalive:.0f} s keepalive + "
         f"{min(keepalive, 20):.0f} s ping timeout after the cut, a silent session ends <= "
         f"{s.get('session_idle_timeout_ms', 0) / 1000:.0f} s, retries <= {s.get('backoff_max_ms', 0) / 1000:.0f} s apart")
    if converged is None:
        raise Fail(f"partition: not converged 120 s after the reconnect (entry counts {m.counts(timeout=2)})")
    m.wait_all_hold(ids, 10)
    verdict = "PASS" if converged <= PARTITION_LIMIT_SECONDS else "FAIL"
    say(f"{verdict}  partition convergence {converged:.1f} s after the reconnect (limit {PARTITION_LIMIT_SECONDS} s; "
        f"{written} entries to catch up)")

    # After: every pair caught up.
    t = time.monotonic()
    while True:
        lags = {i: m.metrics(i).by("mindoo_replica_peer_lag_entries", "peer") for i in sorted(m.pods)}
        conn = {i: m.metrics(i).by("mindoo_replica_peer_connected", "peer") for i in sorted(m.pods)}
        lag_s_after = m.metrics(x).by("mindoo_replica_peer_lag_seconds", "peer")
        if all(v == 0 for d in lags.values() for v in d.values()) and \
                all(v == 1 for d in conn.values() for v in d.values()) and all(v < 5 for v in lag_s_after.values()):
            break
        require(time.monotonic() - t < 60, f"lag not back to zero 60 s after converging: lag {lags}, connected {conn}")
        time.sleep(0.5)
    shown = ", ".join(f"{k.split('.')[0]}: {v:.1f}" for k, v in lag_s_after.items())
    ok(f"after: peer_lag_entries 0 and peer_connected 1 for every pair, peer_lag_seconds on {pod.plan.name} {{{shown}}}")
    problems = []
    if min(connected.values()) == 1 and max(lag_s.values()) < 5:
        problems.append(f"the per-peer metrics of {pod.plan.name} never showed the partition (peer_connected stayed 1, "
                        f"peer_lag_seconds under 5 s)")
    if verdict != "PASS":
        problems.append(f"convergence took {converged:.1f} s, over {PARTITION_LIMIT_SECONDS} s")
    require(not problems, "; ".join(problems))
    return f"converged {converged:.1f} s after the reconnect (limit {PARTITION_LIMIT_SECONDS} s)"
