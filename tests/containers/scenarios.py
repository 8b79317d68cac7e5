"""The chart's replicas in real containers: six scenarios, run by run.sh.

  1 start      the rendered StatefulSet as 3 podman containers, ready
  2 mesh       writes through every replica reach every replica; the helm test pod passes
  3 restart    rolling restart in reverse ordinal order under writes: 0 lost
  4 partition  one replica cut off for a while, then the time to converge
  5 scaleout   replicaCount 3 -> 4 through the mounted config only
  6 prometheus the Prometheus config, rules and dashboard queries against the containers

Every setting of the pods comes from `helm template`; see chart.py and podman.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import yaml

import chart
import podman
import prom
import replica
from replica import Replica, Writer

RELEASE = "mindoo-replica"
NAMESPACE = "default"
NETWORK = "mindoo-replica-test"
PARTITION_SECONDS = 15
PARTITION_LIMIT_SECONDS = 10
SCENARIOS = ["start", "mesh", "restart", "partition", "scaleout", "prometheus"]


class Fail(Exception):
    pass


def say(msg: str) -> None:
    print(f"   {msg}", flush=True)


def ok(msg: str) -> None:
    say(f"ok    {msg}")


def info(msg: str) -> None:
    say(f"      {msg}")


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise Fail(msg)


@dataclasses.dataclass
class Result:
    number: int
    name: str
    passed: bool
    seconds: float
    note: str


class Mesh:
    """The rendered release, running: pods by ordinal, their gRPC clients."""

    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.binary = args.binary
        self.sets = {"image.repository": args.image_repository, "image.tag": args.image_tag}
        self.sets.update(kv.split("=", 1) for kv in args.set)
        self.pods: dict[int, podman.Pod] = {}
        self.clients: dict[int, Replica] = {}
        self.render = self.render_with(3)
        self.prometheus: prom.Prometheus | None = None
        self.writer: Writer | None = None

    def render_with(self, replicas: int) -> chart.Render:
        return chart.render(self.args.helm, str(self.args.chart), RELEASE, NAMESPACE,
                            {**self.sets, "replicaCount": str(replicas)})

    def new_pod(self, ordinal: int, render: chart.Render | None = None) -> podman.Pod:
        r = render or self.render
        plan = chart.replica_plan(r, ordinal)
        configmaps = {v.source: r.configmap_data(v.source) for v in plan.volumes if v.kind == "configMap"}
        secrets = {v.source: r.secret_data(v.source) for v in plan.volumes if v.kind == "secret"}
        # Each container port published on 127.0.0.1: base + 100 * (its index) + ordinal.
        host_ports = {name: self.args.port_base + 100 * k + ordinal for k, name in enumerate(plan.ports)}
        return podman.Pod(plan, NETWORK, host_ports, self.work / "volumes", configmaps, secrets)

    def start(self, ordinal: int, render: chart.Render | None = None) -> podman.Pod:
        pod = self.new_pod(ordinal, render)
        pod.start()
        self.pods[ordinal] = pod
        if ordinal not in self.clients:
            self.clients[ordinal] = Replica(pod.addr("grpc"))
        return pod

    def wait_ready(self, ordinal: int) -> float:
        pod = self.pods[ordinal]
        probe = pod.plan.readiness
        port_name = next(n for n, p in pod.plan.ports.items() if p == probe["grpc"]["port"])
        # The startup probe's budget bounds the wait, at most a minute here.
        startup = pod.plan.startup or {}
        budget = min(60, startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3))
        start = time.monotonic()
        answer = ""
        while time.monotonic() - start < budget:
            answer = replica.health(pod.addr(port_name), probe["grpc"].get("service", ""), probe.get("timeoutSeconds", 1))
            if answer == "SERVING":
                return time.monotonic() - start
            if not pod.running():
                state = pod.inspect()["State"]
                raise Fail(f"{pod.plan.name} exited {state['ExitCode']} before it was ready; its last log lines:\n"
                           f"{pod.logs(10)}")
            time.sleep(0.2)
        raise Fail(f"{pod.plan.name} not ready after {budget} s (readiness {probe}: {answer})")

    def metrics(self, ordinal: int) -> replica.Metrics:
        return replica.scrape(self.pods[ordinal].addr("metrics"))

    def counts(self, timeout: float = 5) -> dict[int, int]:
        return {i: c.head(timeout).entry_count for i, c in self.clients.items() if i in self.pods}

    def wait_all_hold(self, ids: list[bytes], timeout: float, ordinals=None) -> float:
        """Seconds until every replica (or those of `ordinals`) holds every id."""
        start = time.monotonic()
        ordinals = sorted(self.pods) if ordinals is None else ordinals
        missing = {}
        while time.monotonic() - start < timeout:
            missing = {i: len(self.clients[i].missing(ids)) for i in ordinals}
            if not any(missing.values()):
                return time.monotonic() - start
            time.sleep(0.2)
        raise Fail(f"after {timeout:.0f} s, acknowledged entries still missing per replica: {missing}")

    def heal(self) -> None:
        """After a failed scenario: every pod running, on the network, ready."""
        self.writer.pause()
        for i, pod in sorted(self.pods.items()):
            if not pod.running():
                pod.remove()
                pod.start()
            elif self.pods[i].network not in pod.inspect()["NetworkSettings"]["Networks"]:
                pod.connect()
            self.wait_ready(i)
            self.clients[i].reset()

    def status(self, ordinal: int) -> str:
        proc = subprocess.run([self.binary, "status", "--addr", self.pods[ordinal].addr("grpc")],
                              capture_output=True, text=True, timeout=20)
        return (proc.stdout + proc.stderr).rstrip()

    def diagnostics(self) -> None:
        for i, pod in sorted(self.pods.items()):
            print(f"--- {pod.plan.name}: status", flush=True)
            try:
                print(self.status(i))
            except Exception as e:  # noqa: BLE001 - diagnostics only
                print(f"(status failed: {e})")
            print(f"--- {pod.plan.name}: last log lines")
            print(pod.logs(8), flush=True)


# --- 1 -------------------------------------------------------------------------

def scenario_start(m: Mesh) -> str:
    r = m.render
    sts = r.statefulset
    kinds = sorted({d["kind"] for d in r.docs})
    sets = " ".join(f"--set {k}={v}" for k, v in m.sets.items())
    ok(f"helm template {RELEASE} {m.args.chart.relative_to(m.args.repo)} --namespace {NAMESPACE} {sets} "
       f"--set replicaCount=3: {len(r.docs)} manifests ({', '.join(kinds)})")
    plan = chart.replica_plan(r, 0)
    unresolved = {k: v for k, v in plan.env.items() if "$(" in v}
    require(not unresolved, f"env references left unresolved: {unresolved}")
    info(f"StatefulSet {sts['metadata']['name']}: {sts['spec']['replicas']} replicas, "
         f"{sts['spec']['podManagementPolicy']}, serviceName {sts['spec']['serviceName']}")
    info(f"pod 0: --hostname {plan.hostname} --network-alias {plan.fqdn}")
    info(f"       image {plan.image}, args {' '.join(plan.args)}")
    for k, v in plan.env.items():
        info(f"       env {k}={v}")
    info(f"       --user {plan.user}:{plan.group} --group-add {plan.fs_group} (fsGroup)"
         f"{' --read-only' if plan.read_only_root else ''} --cap-drop {','.join(plan.cap_drop)}"
         f"{' no-new-privileges' if plan.no_new_privileges else ''}, seccomp {plan.seccomp}")
    for v in plan.volumes:
        where = {"claim": f"volume {v.source}-{plan.name}", "configMap": f"ConfigMap {v.source} (kubelet layout)",
                 "secret": f"Secret {v.source} (mode {v.mode:o})", "emptyDir": f"emptyDir tmpfs {v.size}"}[v.kind]
        info(f"       {v.mount_path} <- {where}{' read-only' if v.read_only else ''}")
    info(f"       ports {plan.ports}, readiness gRPC {plan.readiness['grpc']}, grace {plan.grace_seconds} s")

    podman.create_network(NETWORK)
    t0 = time.monotonic()
    for i in range(sts["spec"]["replicas"]):  # Parallel: all at once
        m.start(i)
    for i in sorted(m.pods):
        m.wait_ready(i)
        ok(f"{m.pods[i].plan.name} ready {time.monotonic() - t0:.1f} s after start "
           f"(ip {m.pods[i].ip()}, grpc {m.pods[i].addr('grpc')}, metrics {m.pods[i].addr('metrics')})")

    # The process as the rendered securityContext should leave it.
    status = podman.podman("exec", m.pods[0].container, "cat", "/proc/1/status").stdout
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in status.splitlines() if ":" in line)}
    uid, gid, groups = fields["Uid"].split()[0], fields["Gid"].split()[0], fields["Groups"]
    cap_eff, cap_bnd, nnp = int(fields["CapEff"], 16), int(fields["CapBnd"], 16), fields["NoNewPrivs"]
    require(uid == str(plan.user) and gid == str(plan.group), f"the replica runs as {uid}:{gid}, not {plan.user}:{plan.group}")
    require(plan.fs_group is None or str(plan.fs_group) in groups.split(), f"fsGroup {plan.fs_group} not among {groups}")
    require(("ALL" not in plan.cap_drop) or (cap_eff == 0 and cap_bnd == 0),
            f"capabilities.drop ALL, yet CapEff {cap_eff:x} CapBnd {cap_bnd:x}")
    require(nnp == ("1" if plan.no_new_privileges else "0"), f"allowPrivilegeEscalation: NoNewPrivs is {nnp}")
    write_root = podman.podman("exec", m.pods[0].container, "touch", "/probe", check=False)
    if plan.read_only_root:
        require(write_root.returncode != 0 and "Read-only file system" in write_root.stderr,
                f"readOnlyRootFilesystem, yet / is not mounted read-only: {write_root.stderr.strip() or 'touch /probe worked'}")
    data_and_volumes = [v.mount_path + "/.probe" for v in plan.volumes if not v.read_only]
    write_data = podman.podman("exec", m.pods[0].container, "touch", *data_and_volumes, check=False)
    require(write_data.returncode == 0, f"a writable volume is not writable: {write_data.stderr.strip()}")
    ok(f"process: uid {uid} gid {gid} groups {groups}, CapEff {cap_eff:x} CapBnd {cap_bnd:x}, NoNewPrivs {nnp}, "
       f"/ {'read-only' if plan.read_only_root else 'writable'}, {' '.join(p.rsplit('/', 1)[0] for p in data_and_volumes)} writable")
    return f"{len(m.pods)} replicas ready"


# --- 2 -------------------------------------------------------------------------

def has_check(binary: str) -> bool:
    return subprocess.run([binary, "check", "--help"], capture_output=True).returncode == 0


def scenario_mesh(m: Mesh) -> str:
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


# --- 3 -------------------------------------------------------------------------

def stop_watching_readiness(pod: podman.Pod, grace: int) -> dict:
    """Stops the pod (SIGTERM) while asking for its readiness (the rendered
    probe's service) every 50 ms two ways: as the kubelet's gRPC probe does,
    on a new connection each time, and on one connection opened before the
    stop, as a client or peer holds one. For each way, the answers as they
    changed: [(seconds after the stop began, answer)]."""
    service = pod.plan.readiness["grpc"].get("service", "")
    seen = {"probe": [], "open connection": []}
    done = threading.Event()
    held = replica.HealthClient(pod.addr("grpc"))

    def poll(way, check):
        while not done.is_set():
            answer = check()
            if not seen[way] or seen[way][-1][1] != answer:
                seen[way].append((time.monotonic(), answer))
            time.sleep(0.05)

    pollers = [threading.Thread(target=poll, args=("probe", lambda: replica.health(pod.addr("grpc"), service, 0.5)),
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


def scenario_restart(m: Mesh) -> str:
    ordinals = sorted(m.pods, reverse=True)
    grace = m.pods[0].plan.grace_seconds
    restarted_at: dict[int, float] = {}
    acked_before = len(m.writer.acked)
    failed_before = sum(m.writer.failed.values())
    problems, no_not_serving = [], []
    for i in ordinals:
        pod = m.pods[i]
        others = [o for o in m.pods if o != i]
        m.writer.write_to(others)
        time.sleep(1.0)  # writes going on while it stops
        old_ip = pod.ip()
        r = stop_watching_readiness(pod, grace)
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
        # Written in its last second: it may or may not have pulled those before exiting.
        before_exit = [a for a in m.writer.acked_since(restarted_at[i] - 1, exclude=i) if a.at < restarted_at[i]]
        last_second = sum(a.size for a in before_exit)
        entries = mx.total("mindoo_replica_peer_entries_pulled_total")
        ok(f"{m.pods[i].plan.name}: pulled {pulled / 1e6:.3f} MB ({entries:.0f} entries) since its restart; written "
           f"through the others after it exited {expected / 1e6:.3f} MB ({len(written)} entries; "
           f"{len(before_exit)} more in the second before): ratio {ratio:.2f}")
        ratios.append(f"{ratio:.2f}")
        if not 0.99 * expected <= pulled <= 1.1 * expected + last_second:
            problems.append(f"{m.pods[i].plan.name} pulled {pulled / 1e6:.3f} MB after its restart; expected "
                            f"{expected / 1e6:.3f} MB (+ up to {last_second / 1e6:.3f} MB written in its last second)")
    require(not problems, "; ".join(problems))
    return (f"{during} entries written during the restarts, 0 lost; pulled after restart / written meanwhile "
            f"{' '.join(ratios)}")


# --- 4 -------------------------------------------------------------------------

def effective_replication_settings(m: Mesh) -> dict[str, str]:
    """The [replication] settings the replicas run with: the rendered
    config.toml and the binary's defaults, as `mindoo-replica config print` shows."""
    source = next(v.source for v in m.pods[0].plan.volumes if v.kind == "configMap")
    cfg = m.work / "config.toml"
    cfg.write_bytes(m.render.configmap_data(source)["config.toml"])
    proc = subprocess.run([m.binary, "config", "print", "--config", str(cfg)], capture_output=True, text=True)
    out, section = {}, ""
    for line in proc.stdout.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "replication" and "=" in line:
            k, v = (s.strip() for s in line.split("=", 1))
            out[k] = v
    return out


def scenario_partition(m: Mesh) -> str:
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


# --- 5 -------------------------------------------------------------------------

def scenario_scaleout(m: Mesh) -> str:
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


# --- 6 -------------------------------------------------------------------------

def scenario_prometheus(m: Mesh) -> str:
    p = m.prometheus
    # A few scrapes of every replica while writes go on, so rates have data.
    m.writer.write_to(m.pods)
    query = f'min(count_over_time(up{{job="{prom.K8S_JOB}"}}[10m]))'
    deadline = time.monotonic() + 60
    while True:
        result = p.api("query", query=query)["result"]
        scrapes = int(float(result[0]["value"][1])) if result else 0
        if scrapes >= 5:
            break
        require(time.monotonic() < deadline, f"Prometheus scraped the replicas only {scrapes} times in 60 s")
        time.sleep(p.interval)
    # Then one batch per replica that must be rejected (an id that is not the
    # hash of its body), so the rejection panel has data too.
    for i, c in m.clients.items():
        _, data = replica.make_entry(64)
        statuses = c.put([(bytes(32), data)])
        require(statuses == ["PUT_STATUS_REJECTED"], f"replica {i} took an entry with a wrong id: {statuses}")
    time.sleep(3 * p.interval)
    m.writer.pause()
    ok(f"{scrapes} or more scrapes of every replica (every {p.interval} s) under writes; an entry with a wrong id "
       f"rejected by each of the {len(m.clients)} replicas")

    deadline = time.monotonic() + 30
    while True:
        targets = p.api("targets")
        active = [t for t in targets["activeTargets"] if t["labels"].get("job") == prom.K8S_JOB]
        up = [t for t in active if t["health"] == "up"]
        if len(active) == len(m.pods) and len(up) == len(m.pods):
            break
        require(time.monotonic() < deadline, f"expected {len(m.pods)} active targets up, got "
                f"{[(t['labels'].get('pod'), t['scrapeUrl'], t['health'], t['lastError']) for t in active]}")
        time.sleep(1)
    labels = sorted(f"{t['labels']['pod']}" for t in up)
    require(all(t["labels"].get("namespace") == NAMESPACE and t["labels"].get("release") == RELEASE for t in up),
            f"the relabelings did not set namespace/release: {[t['labels'] for t in up]}")
    ok(f"{len(up)} targets up (the grpc ports dropped by the job's relabelings: "
       f"{len(targets['droppedTargets'])} dropped), labelled pod {labels}, namespace {NAMESPACE}, release {RELEASE}")

    alerts = yaml.safe_load((m.args.repo / "deploy/prometheus/alerts.yaml").read_text())
    want = sum(len(g["rules"]) for g in alerts["groups"])
    deadline = time.monotonic() + 30
    while True:
        groups = p.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        evaluated = [r for r in rules if r.get("health") == "ok" and not r.get("lastEvaluation", "").startswith("0001")]
        if len(rules) == want and len(evaluated) == want:
            break
        require(time.monotonic() < deadline, f"rules: {len(rules)} loaded, {len(evaluated)} evaluated ok, want {want}; "
                f"{[(r['name'], r.get('health'), r.get('lastError')) for r in rules if r.get('health') != 'ok']}")
        time.sleep(1)
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    ok(f"/api/v1/rules: {len(groups)} groups, {want} rules of alerts.yaml loaded and evaluated without error"
       f"; firing: {firing or 'none'}")

    end = time.time()
    range_s = int(end - p.started_at) + 1
    queries = prom.dashboard_queries(m.args.repo / "deploy/grafana/mindoo-replica.json")
    empty = []
    for title, expr in queries:
        q = prom.grafana_expr(expr, range_s)
        result = p.query_range(q, p.started_at, end, step=max(1, range_s // 100))
        if result:
            say(f"ok    {len(result):3d} series  {title}: {q}")
        else:
            say(f"EMPTY   0 series  {title}: {q}")
            empty.append(title)
    require(not empty, f"{len(empty)} of {len(queries)} dashboard queries returned no series over the run: {empty}"
            + (" (the panels that show only problems, `> 0`, have data once the restart and partition scenarios ran)"
               if not {"restart", "partition"} <= set(m.args.scenarios or SCENARIOS) else ""))
    ok(f"all {len(queries)} dashboard queries return series over the run ({range_s} s, $__rate_interval 1m)")
    return f"{len(up)} targets, {want} rules, {len(queries)} dashboard queries with data"


# --- main ----------------------------------------------------------------------

def describe(e: Exception) -> str:
    if isinstance(e, replica.grpc.RpcError):
        return f"gRPC {e.code().name}: {e.details()}"
    if isinstance(e, (Fail, chart.ChartError, podman.PodmanError)):
        return str(e)
    return f"{type(e).__name__}: {e}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--helm", default="helm")
    ap.add_argument("--image-repository", default="mindoo-replica")
    ap.add_argument("--image-tag", default="test")
    ap.add_argument("--port-base", type=int, default=int(os.environ.get("MINDOO_CONTAINERS_PORT_BASE", "27700")))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="more chart values for every render (helm template --set)")
    ap.add_argument("scenarios", nargs="*", help=f"a subset of {SCENARIOS} (start always runs)")
    args = ap.parse_args()
    args.chart = args.repo / "helm/mindoo-replica"
    wanted = ["start"] + [s for s in SCENARIOS[1:] if not args.scenarios or s in args.scenarios]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        print(f"FAIL  unknown scenarios {sorted(unknown)}; known: {SCENARIOS}")
        return 2
    for port in [args.port_base + i for i in range(4)] + [args.port_base + 100 + i for i in range(4)] + [args.port_base + 200]:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                print(f"FAIL  port 127.0.0.1:{port} is taken; set MINDOO_CONTAINERS_PORT_BASE")
                return 2

    replica.compile_protos(args.repo / "proto", Path(args.work) / "py")
    results: list[Result] = []
    m = None
    started = time.monotonic()
    try:
        podman.cleanup()
        try:
            m = Mesh(args)
        except chart.ChartError as e:
            print(f"FAIL  {e}")
            return 1
        m.writer = Writer(m.clients)
        funcs = {"start": scenario_start, "mesh": scenario_mesh, "restart": scenario_restart,
                 "partition": scenario_partition, "scaleout": scenario_scaleout, "prometheus": scenario_prometheus}
        titles = {"start": "the rendered StatefulSet in containers", "mesh": "mesh forms and converges; helm test",
                  "restart": "rolling restart under writes", "partition": "partition and convergence",
                  "scaleout": "scale out 3 -> 4 through the mounted config", "prometheus": "Prometheus, rules, dashboard"}
        for name in wanted:
            number = SCENARIOS.index(name) + 1
            print(f"\n== {number}. {titles[name]}", flush=True)
            t = time.monotonic()
            try:
                note = funcs[name](m)
                if name == "start" and "prometheus" in wanted:
                    # From here on, so the dashboard sees every scenario.
                    m.prometheus = prom.Prometheus(args.repo, Path(args.work), args.port_base + 200, NAMESPACE)
                    m.prometheus.start(m.pods.values())
                    ok(f"prometheus on 127.0.0.1:{args.port_base + 200} scrapes the containers every "
                       f"{m.prometheus.interval} s from now on (config derived from deploy/prometheus/prometheus.yml)")
                results.append(Result(number, name, True, time.monotonic() - t, note))
                say(f"time  {time.monotonic() - t:.1f} s")
            except Exception as e:  # noqa: BLE001 - reported, then the next scenario
                if not isinstance(e, (Fail, chart.ChartError, podman.PodmanError)):
                    traceback.print_exc()
                message = describe(e)
                print(f"FAIL  {name}: {message}", flush=True)
                note = message.splitlines()[0]
                results.append(Result(number, name, False, time.monotonic() - t,
                                      note if len(note) <= 200 else note[:197] + "..."))
                m.diagnostics()
                if name == "start":
                    break
                try:
                    m.heal()
                except Exception as e2:  # noqa: BLE001
                    print(f"FAIL  cannot bring the pods back after {name}: {describe(e2)}", flush=True)
                    m.diagnostics()
                    break
            m.writer.pause()
    finally:
        if m and m.writer:
            m.writer.close()
        if m and m.prometheus:
            m.prometheus.stop()
        podman.cleanup()

    print("\n== summary")
    for r in results:
        print(f"   {'PASS' if r.passed else 'FAIL'}  {r.number}. {r.name:<11} {r.seconds:6.1f} s  {r.note}")
    failed = [r for r in results if not r.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    print(f"scenarios took {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
