"""What every scenario shares: the release's names, the output lines, the
running release (Mesh: the pods by ordinal and their gRPC clients), the
replication settings in effect, and the summary of the results.

Output lines: "== N. title" opens a scenario; indented under it, "ok" starts a
check that held, "time" the scenario's duration, and details are indented
further; a line starting "FAIL" says what failed. A failed check raises Fail
(`require`); the scenario stops there and the next one runs.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path

import chart
import podman
import prom
import replica
from replica import Replica, Writer

RELEASE = "mindoo-replica"
NAMESPACE = "default"
NETWORK = "mindoo-replica-test"


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


def heading(number: int, title: str) -> None:
    print(f"\n== {number}. {title}", flush=True)


def time_line(seconds: float) -> None:
    say(f"time  {seconds:.1f} s")


def fail_line(msg: str) -> None:
    """Prints a FAIL line; raises nothing (a failed check raises Fail)."""
    print(f"FAIL  {msg}", flush=True)


# The failures a check or a tool reports on purpose: their message is enough,
# no traceback.
REPORTED = (Fail, chart.ChartError, podman.PodmanError)


def describe(e: Exception) -> str:
    if isinstance(e, replica.grpc.RpcError):
        return f"gRPC {e.code().name}: {e.details()}"
    if isinstance(e, REPORTED):
        return str(e)
    return f"{type(e).__name__}: {e}"


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
        # The port the rendered probe names: the metrics port when the chart
        # serves metrics (its listener answers grpc.health.v1 too), else grpc.
        port_name = pod.plan.probe_port_name(probe)
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


@dataclasses.dataclass
class Result:
    number: int
    name: str
    passed: bool
    seconds: float
    note: str


def print_summary(results: list[Result], started: float) -> int:
    """The summary lines; the exit status: 1 if a scenario failed."""
    print("\n== summary")
    for r in results:
        print(f"   {'PASS' if r.passed else 'FAIL'}  {r.number}. {r.name:<11} {r.seconds:6.1f} s  {r.note}")
    failed = [r for r in results if not r.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    print(f"scenarios took {time.monotonic() - started:.0f} s")
    return 1 if failed else 0
