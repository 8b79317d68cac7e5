"""Scenario 2, mesh: writes through every replica reach every replica.

Writes through all replicas, then checks that every acknowledged entry is on
every replica, with the same entry count and entries_stored_total everywhere;
runs `mindoo-replica check` from the host through each replica in turn, and
the chart's helm test pod in a container, which must exit 0.
"""

from __future__ import annotations

import subprocess
import time

import chart
import podman
from harness import NETWORK, Mesh, info, ok, require

TITLE = "mesh forms and converges; helm test"


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
        proc = subprocess.run([m.binary, "check", *sum([["--addr", a] for a in order], [])],
                              capture_output=True, text=True, timeout=60)
        require(proc.returncode == 0, f"mindoo-replica check through {order[0]} failed ({proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}")
        ok(f"host: mindoo-replica check through {order[0]}: exit 0 in {time.monotonic() - t:.2f} s")
        for line in proc.stdout.strip().splitlines():
            info(line)

    test = podman.Pod(chart.test_pod_plan(m.render), NETWORK, {}, m.work / "volumes", {}, {})
    info(f"helm test pod {test.plan.name}: {test.plan.image} {' '.join(test.plan.args)}")
    t = time.monotonic()
    proc = test.run_to_completion(timeout=test.plan.active_deadline or 120)
    for line in (proc.stdout + proc.stderr).strip().splitlines():
        info(f"| {line}")
    require(proc.returncode == 0, f"the helm test pod failed: exit {proc.returncode}")
    ok(f"helm test pod: exit 0 in {time.monotonic() - t:.1f} s")
    return f"{len(ids)} entries on every replica {took * 1000:.0f} ms after the last write; helm test passed"
