"""Scenario 3, restart: a rolling restart under writes, in reverse ordinal order.

Each replica in turn gets SIGTERM (podman stop with the rendered grace period)
while writes go on through the others. Checks that its readiness probe (on the
port the rendered probe names, the metrics port when metrics are served, and
on a new connection each time, as the kubelet's) answers NOT_SERVING before the
replica stops answering, that it exits 0, and that the new container is ready
again. Afterwards: no acknowledged entry lost, and each replica pulled about
what was written while it was away, not everything again.
"""

from __future__ import annotations

import threading
import time

import podman
import replica
from harness import Mesh, info, ok, require, say

TITLE = "rolling restart under writes"


def stop_watching_readiness(pod: podman.Pod, grace: int, tls: replica.Tls | None) -> dict:
    """Stops the pod (SIGTERM) while asking for its readiness (the rendered
    probe's service) every 50 ms two ways: as the kubelet's gRPC probe does,
    on the probe's port with a new connection each time, and on one
    connection to the gRPC port (over TLS with `tls`) opened before the stop,
    as a client or peer holds one. For each way, the answers as they changed:
    [(seconds after the stop began, answer)]."""
    service = pod.plan.readiness["grpc"].get("service", "")
    probe_addr = pod.addr(pod.plan.probe_port_name(pod.plan.readiness))
    seen = {"probe": [], "open connection": []}
    done = threading.Event()
    held = replica.HealthClient(pod.addr("grpc"), tls)

    def poll(way, check):
        while not done.is_set():
            answer = check()
            if not seen[way] or seen[way][-1][1] != answer:
                seen[way].append((time.monotonic(), answer))
            time.sleep(0.05)

    pollers = [threading.Thread(target=poll, args=("probe", lambda: replica.health(probe_addr, service, 0.5)),
                                daemon=True),
               threading.Thread(target=poll, args=("open connection", lambda: held.check(service, 0.5)), daemon=True)]
    for t in pollers:
        t.start()
    time.sleep(0.2)  # answers from before the stop
    t0 = time.monotonic()
    code = pod.stop(grace)
    exited = time.monotonic() - t0
    done.set()
    for t in pollers:
        t.join()
    held.close()
    return {"code": code, "exited": exited, "seen": {way: [(t - t0, a) for t, a in changes]
                                                     for way, changes in seen.items()}}


def timeline(changes: list[tuple[float, str]]) -> str:
    return " -> ".join(f"{answer} {'before' if t < 0 else f'{t:.2f} s'}" for t, answer in changes)


def not_serving_then_gone(changes: list[tuple[float, str]], exited: float) -> tuple[float | None, float]:
    """When NOT_SERVING was first answered, and when the answers stopped for
    good (the last change to no answer, else the exit)."""
    first = next((t for t, a in changes if a == "NOT_SERVING" and t >= 0), None)
    gone = changes[-1][0] if changes and changes[-1][1] not in ("SERVING", "NOT_SERVING") else exited
    return first, gone


def run(m: Mesh) -> str:
    ordinals = sorted(m.pods, reverse=True)
    grace = m.pods[0].plan.grace_seconds
    restarted_at: dict[int, float] = {}
    # When its listener closed (shutdown.delayMs after SIGTERM), which is when
    # its replication workers are drained, before the calls and the exit.
    listener_closed_at: dict[int, float] = {}
    acked_before = len(m.writer.acked)
    failed_before = sum(m.writer.failed.values())
    problems, no_not_serving = [], []
    for i in ordinals:
        pod = m.pods[i]
        others = [o for o in m.pods if o != i]
        m.writer.write_to(others)
        time.sleep(1.0)  # writes going on while it stops
        old_ip = pod.ip()
        r = stop_watching_readiness(pod, grace, m.tls_to(i))
        # It pulled until its replication stopped, just before it exited.
        restarted_at[i] = time.monotonic()
        probe, held = r["seen"]["probe"], r["seen"]["open connection"]
        info(f"{pod.plan.name} stop: readiness probe (new connection each): {timeline(probe)}")
        info(f"{pod.plan.name} stop: on an open connection:                {timeline(held)}")
        # Problems here are reported at the end: the rolling restart and its
        # checks go on.
        if r["code"] != 0:
            problems.append(f"{pod.plan.name} exited {r['code']} on SIGTERM (podman stop --time {grace})")
        not_serving, stopped = not_serving_then_gone(probe, r["exited"])
        listener_closed_at[i] = restarted_at[i] - r["exited"] + stopped
        if not_serving is None or not_serving >= stopped:
            no_not_serving.append(f"{pod.plan.name} (probe: {timeline(probe)}; open connection: {timeline(held)})")
        pod.remove()
        t = time.monotonic()
        pod.start()
        ready = m.wait_ready(i)
        shown = "never" if not_serving is None else f"{not_serving:.2f} s"
        say(f"{'ok  ' if r['code'] == 0 and not_serving is not None and not_serving < stopped else 'FAIL'}  "
            f"{pod.plan.name}: SIGTERM -> probe NOT_SERVING {shown} -> probe unanswered {stopped:.2f} s "
            f"-> exit {r['code']} at {r['exited']:.2f} s; new container (ip {old_ip} -> {pod.ip()}) ready in "
            f"{ready:.2f} s [{time.monotonic() - t:.1f} s]")
        m.writer.write_to(m.pods)
    if no_not_serving:
        problems.append("the readiness probe (a new connection each time, as the kubelet's) never answered NOT_SERVING "
                        "before the replica stopped answering: " + "; ".join(no_not_serving))
    time.sleep(1.0)
    m.writer.pause()
    during = len(m.writer.acked) - acked_before
    failed = sum(m.writer.failed.values()) - failed_before
    took = m.wait_all_hold(m.writer.ids(), 60)
    ok(f"{during} entries acknowledged during the rolling restart, {failed} write batches failed (not counted); "
       f"lost 0: all {len(m.writer.acked)} acknowledged entries on every replica {took * 1000:.0f} ms after the last write")
    ratios = []

    for i in ordinals:
        mx = m.metrics(i)
        pulled = mx.total("mindoo_replica_peer_bytes_pulled_total")
        written = m.writer.acked_since(restarted_at[i], exclude=i)
        expected = sum(a.size for a in written)
        ratio = pulled / expected if expected else float("inf")
        # Written in its last second, or since a second before its listener
        # closed (its replication stopped then; draining the calls may take
        # a while longer): it may or may not have pulled those before exiting.
        since = min(restarted_at[i], listener_closed_at[i]) - 1
        before_exit = [a for a in m.writer.acked_since(since, exclude=i) if a.at < restarted_at[i]]
        last_second = sum(a.size for a in before_exit)
        entries = mx.total("mindoo_replica_peer_entries_pulled_total")
        ok(f"{m.pods[i].plan.name}: pulled {pulled / 1e6:.3f} MB ({entries:.0f} entries) since its restart; written "
           f"through the others after it exited {expected / 1e6:.3f} MB ({len(written)} entries; "
           f"{len(before_exit)} more from a second before its listener closed): ratio {ratio:.2f}")
        ratios.append(f"{ratio:.2f}")
        if not 0.99 * expected <= pulled <= 1.1 * expected + last_second:
            problems.append(f"{m.pods[i].plan.name} pulled {pulled / 1e6:.3f} MB after its restart; expected "
                            f"{expected / 1e6:.3f} MB (+ up to {last_second / 1e6:.3f} MB written from a second before "
                            f"its listener closed until it exited)")
    require(not problems, "; ".join(problems))
    return (f"{during} entries written during the restarts, 0 lost; pulled after restart / written meanwhile "
            f"{' '.join(ratios)}")
