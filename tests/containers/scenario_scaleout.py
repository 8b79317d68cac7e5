"""Scenario 5, scaleout: replicaCount 3 -> 4 through the mounted config only.

Checks that the replicas re-read their config file (replication.config_poll_ms),
that scaling leaves the pod template's checksum/config as it is (so no pod
restarts), then swaps the replicaCount=4 ConfigMap into the running pods' config
volumes as the kubelet does and starts pod 3. Pod 3 must bootstrap every entry
from its peers; pods 0..2 must start pulling from it, without a restart.
"""

from __future__ import annotations

import time

import chart
import podman
from harness import Mesh, effective_replication_settings, ok, require

TITLE = "scale out 3 -> 4 through the mounted config"


def run(m: Mesh) -> str:
    settings = effective_replication_settings(m)
    require("config_poll_ms" in settings, "the binary has no replication.config_poll_ms: it does not re-read its "
            "config file, so a scaled StatefulSet's new peers would need a restart; rebuild the binary with it")
    poll = int(settings["config_poll_ms"])
    require(poll > 0, "replication.config_poll_ms is 0 in the rendered config: the replicas re-read their config only "
            "on SIGHUP, which nothing sends in Kubernetes, so new peers would need a restart")
    r4 = m.render_with(4)
    key = "checksum/config"
    a3 = m.render.statefulset["spec"]["template"]["metadata"].get("annotations", {}).get(key)
    a4 = r4.statefulset["spec"]["template"]["metadata"].get("annotations", {}).get(key)
    require(a3 == a4, f"{key} differs between replicaCount 3 and 4: scaling would restart every pod")
    ok(f"replicaCount 3 -> 4 keeps {key}: the StatefulSet rolls no pod; only the ConfigMap changes")
    started = {i: m.pods[i].inspect()["State"]["StartedAt"] for i in m.pods}

    t0 = time.monotonic()
    for i, pod in m.pods.items():
        for v in pod.plan.volumes:
            if v.kind == "configMap":
                pod.configmaps[v.source] = r4.configmap_data(v.source)
                pod.write_volume(v)
    peers = podman.podman("exec", m.pods[0].container, "cat", "/etc/mindoo-replica/config/config.toml").stdout
    require(chart.replica_plan(r4, 3).fqdn in peers, "the mounted config.toml of pod 0 does not list pod 3 after the swap")
    ok(f"ConfigMap of the replicaCount=4 render swapped into the mounted config of pods 0..{len(m.pods) - 1} "
       f"(..data symlink renamed, as the kubelet does); config_poll_ms {poll}")

    m.start(3, r4)
    if m.prometheus:
        m.prometheus.reload(m.pods.values())
    ready = m.wait_ready(3)
    ids = m.writer.ids()
    boot = m.wait_all_hold(ids, 60, ordinals=[3])
    mx = m.metrics(3)
    ok(f"{m.pods[3].plan.name} ready in {ready:.2f} s; holds all {len(ids)} entries {boot:.2f} s later, bootstrapped from "
       f"its peers: {mx.total('mindoo_replica_peer_entries_pulled_total'):.0f} entries, "
       f"{mx.total('mindoo_replica_peer_bytes_pulled_total') / 1e6:.2f} MB pulled")

    # Each of the others starts pulling from pod 3 once it has re-read its config.
    pod3 = f"{m.pods[3].plan.fqdn}:{m.pods[3].plan.ports['grpc']}"
    since = {}
    deadline = time.monotonic() + poll / 1000 + 30
    while len(since) < 3:
        for i in range(3):
            if i not in since and m.metrics(i).total("mindoo_replica_peer_connected", peer=pod3) == 1:
                since[i] = time.monotonic() - t0
        require(time.monotonic() < deadline, f"pods {sorted(set(range(3)) - set(since))} have no session with "
                f"{pod3} {time.monotonic() - t0:.0f} s after the config swap (config_poll_ms {poll})")
        time.sleep(0.2)
    ok("pods 0..2 pull from pod 3 without a restart: session up "
       + ", ".join(f"{m.pods[i].plan.name} {t:.1f} s" for i, t in sorted(since.items())) + " after the config swap")

    pulled_before = {i: m.metrics(i).total("mindoo_replica_peer_entries_pulled_total", peer=pod3) for i in range(3)}
    before = len(m.writer.acked)
    t1 = time.monotonic()
    m.writer.write_to([3])
    while len(m.writer.acked) - before < 200:
        require(time.monotonic() - t1 < 30, f"writes to pod 3 fail: {m.writer.last_error}")
        time.sleep(0.05)
    m.writer.pause()
    new_ids = [a.id for a in m.writer.acked[before:]]
    took = m.wait_all_hold(new_ids, 60, ordinals=[i for i in m.pods if i != 3])
    direct = {i: m.metrics(i).total("mindoo_replica_peer_entries_pulled_total", peer=pod3) - pulled_before[i]
              for i in range(3)}
    ok(f"{len(new_ids)} entries written to {m.pods[3].plan.name} only: on pods 0..2 {took:.2f} s after the last write; "
       f"pulled straight from pod 3: {direct}")
    require(all(v > 0 for v in direct.values()), f"not every pod pulled from pod 3 itself: {direct}")
    now = {i: m.pods[i].inspect()["State"]["StartedAt"] for i in started}
    require(now == started, f"pods were restarted: {started} -> {now}")
    ok("pods 0..2 were not restarted (same container start times)")
    m.render = r4
    return (f"pod 3 bootstrapped {len(ids)} entries in {boot:.2f} s; 0..2 pulling from it "
            f"{max(since.values()):.1f} s after the config swap")
