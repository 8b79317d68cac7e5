"""What every scenario shares: the release's names, the output lines, the
running release (Mesh: the pods by ordinal and their gRPC clients, the
certificates of its mutual TLS and the client keys of its client
authentication), the replication settings in effect, and the summary of the
results.

Output lines: "== N. title" opens a scenario; indented under it, "ok" starts a
check that held, "time" the scenario's duration, and details are indented
further; a line starting "FAIL" says what failed. A failed check raises Fail
(`require`); the scenario stops there and the next one runs.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import certs
import chart
import podman
import prom
import replica
from replica import Replica, Tls, Writer, public_hex, secret_hex

RELEASE = "mindoo-replica"
NAMESPACE = "default"
NETWORK = "mindoo-replica-test"
# With --tls existing-secret: the Secret the replicas' certificate is in, as
# cert-manager keeps it (deploy/cert-manager), held by the "cluster", not the chart.
TLS_SECRET = "mindoo-replica-tls"


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
    """The rendered release, running: pods by ordinal, their gRPC clients.

    With TLS (args.tls other than "off") the chart gets tls.enabled and a
    certificate for every replica made here: from a Secret the cluster holds
    (tls.existingSecret, "existing-secret") or from the chart's own Secret
    (tls.cert/tls.key/tls.ca, "inline"). The clients here then connect over
    TLS without a certificate, as applications do, unless they present the
    operator's.

    Client authentication is required with TLS (the secured chart) and off
    without it (the binary refuses "required" with peers and no TLS), unless
    auth.clients is given with --set. When required, keys are made here and
    listed in the values: the application's (`client_key`: the only reader
    and writer of the namespace the clients here write, through its own
    auth.namespaces entry), an outsider's (`outsider_key`: auth.readers and
    auth.writers, the namespaces without lists of their own, so a valid key
    without rights on that namespace) and an operator's (`operator_key`:
    auth.operators). The clients here sign every call with the
    application's key."""

    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.binary = args.binary
        self.sets = {"image.repository": args.image_repository, "image.tag": args.image_tag}
        self.sets.update(kv.split("=", 1) for kv in args.set)
        # A cluster keeps the Secret's generated fingerprint key across renders (helm lookup);
        # renders here have no cluster to look it up in, so every render is given the same one.
        self.sets.setdefault("secrets.fingerprintKey", os.urandom(32).hex())
        self.set_files: dict[str, Path] = {}
        # Secrets the pods mount that the chart does not render.
        self.cluster_secrets: dict[str, dict[str, bytes]] = {}
        self.certs: certs.MeshCerts | None = None
        if args.tls != "off":
            self.certs = certs.make(self.work / "tls", self.replica_certificate_names())
            # Values given with --set win.
            self.sets.setdefault("tls.enabled", "true")
            self.sets.setdefault("tls.operatorNames[0]", certs.OPERATOR_PATTERN)
            if args.tls == "existing-secret":
                name = self.sets.setdefault("tls.existingSecret", TLS_SECRET)
                self.cluster_secrets[name] = {"tls.crt": self.certs.replica.cert, "tls.key": self.certs.replica.key,
                                              "ca.crt": self.certs.ca}
            else:
                self.set_files = {"tls.cert": self.certs.replica.cert_file, "tls.key": self.certs.replica.key_file,
                                  "tls.ca": self.certs.ca_file}
        self.sets.setdefault("auth.clients", "required" if self.certs else "off")
        self.auth = self.sets["auth.clients"] == "required"
        self.client_key = self.outsider_key = self.operator_key = None
        self.key_files: dict[str, Path] = {}
        if self.auth:
            self.client_key, self.outsider_key, self.operator_key = (Ed25519PrivateKey.generate() for _ in range(3))
            app, outsider = public_hex(self.client_key), public_hex(self.outsider_key)
            for key, value in {"auth.namespaces[0].tenant": replica.NAMESPACE[0],
                               "auth.namespaces[0].db": replica.NAMESPACE[1],
                               "auth.namespaces[0].readers[0]": app, "auth.namespaces[0].writers[0]": app,
                               "auth.readers[0]": outsider, "auth.writers[0]": outsider,
                               "auth.operators[0]": public_hex(self.operator_key)}.items():
                self.sets.setdefault(key, value)
            for who, key in (("client", self.client_key), ("outsider", self.outsider_key),
                             ("operator", self.operator_key)):
                self.key_files[who] = self.write_key(who, secret_hex(key))
        # Values a cluster would keep between renders (see render_with).
        self.kept: dict[str, str] = {}
        self.pods: dict[int, podman.Pod] = {}
        self.clients: dict[int, Replica] = {}
        self.render = self.render_with(3)
        test_keys = [d for d in self.render.of_kind("Secret")
                     if "mindoo-replica/public-key" in (d["metadata"].get("annotations") or {})]
        if test_keys:
            # The helm test pod's key, generated by the chart: `helm upgrade`
            # finds it in the cluster's Secret (lookup) and keeps it, so later
            # renders here (scaleout) keep it too.
            seed = self.render.secret_data(test_keys[0]["metadata"]["name"])["client.key"].decode()
            self.kept["tests.clientKey"] = seed
            self.key_files["helm-test"] = self.write_key("helm-test", seed)
        self.prometheus: prom.Prometheus | None = None
        self.writer: Writer | None = None

    def render_with(self, replicas: int) -> chart.Render:
        return chart.render(self.args.helm, str(self.args.chart), RELEASE, NAMESPACE,
                            {**self.sets, **self.kept, "replicaCount": str(replicas)}, self.set_files)

    def write_key(self, who: str, secret: str) -> Path:
        """A client key file as MINDOO_REPLICA_CLIENT_KEY_FILE reads it (64 hex digits), mode 0600."""
        path = self.work / "keys" / f"{who}.key"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secret + "\n")
        path.chmod(0o600)
        return path

    def replica_certificate_names(self) -> list[str]:
        """The names of the replicas' certificate, from the release's names
        (rendered without TLS): the wildcard of the headless Service's domain,
        which covers every pod's peer name (what peers and the helm test pod
        dial) and makes the certificate a peer's; and 127.0.0.1, the host the
        `mindoo-replica` commands on this machine dial (published ports)."""
        r = chart.render(self.args.helm, str(self.args.chart), RELEASE, NAMESPACE, self.sets)
        return [f"*.{r.headless_service['metadata']['name']}.{NAMESPACE}.svc.{chart.CLUSTER_DOMAIN}", "127.0.0.1"]

    def secret_data(self, r: chart.Render, name: str) -> dict[str, bytes]:
        return self.cluster_secrets[name] if name in self.cluster_secrets else r.secret_data(name)

    def volume_sources(self, plan: chart.PodPlan, r: chart.Render):
        """The ConfigMaps and Secrets behind a pod's volumes, by name."""
        configmaps = {v.source: r.configmap_data(v.source) for v in plan.volumes if v.kind == "configMap"}
        secrets = {v.source: self.secret_data(r, v.source) for v in plan.volumes if v.kind == "secret"}
        return configmaps, secrets

    def new_pod(self, ordinal: int, render: chart.Render | None = None) -> podman.Pod:
        r = render or self.render
        plan = chart.replica_plan(r, ordinal)
        configmaps, secrets = self.volume_sources(plan, r)
        # Each container port published on 127.0.0.1: base + 100 * (its index) + ordinal.
        host_ports = {name: self.args.port_base + 100 * k + ordinal for k, name in enumerate(plan.ports)}
        return podman.Pod(plan, NETWORK, host_ports, self.work / "volumes", configmaps, secrets)

    def start(self, ordinal: int, render: chart.Render | None = None) -> podman.Pod:
        pod = self.new_pod(ordinal, render)
        pod.start()
        self.pods[ordinal] = pod
        if ordinal not in self.clients:
            self.clients[ordinal] = Replica(pod.addr("grpc"), self.tls_to(ordinal), self.client_key)
        return pod

    def test_pod(self) -> podman.Pod:
        """The chart's helm test pod, ready to run."""
        plan = chart.test_pod_plan(self.render)
        configmaps, secrets = self.volume_sources(plan, self.render)
        return podman.Pod(plan, NETWORK, {}, self.work / "volumes", configmaps, secrets)

    def tls_to(self, ordinal: int, identity: certs.Identity | None = None) -> Tls | None:
        """How a client here reaches pod `ordinal`'s gRPC port: None without
        TLS; else checked against the mesh CA and the pod's DNS name,
        presenting `identity` when given."""
        if self.certs is None:
            return None
        plan = self.pods[ordinal].plan if ordinal in self.pods else chart.replica_plan(self.render, ordinal)
        tls = Tls(self.certs.ca, plan.fqdn)
        return tls.presenting(identity.cert, identity.key) if identity else tls

    def cli_env(self, identity: certs.Identity | None = None, key: str | None = None) -> dict[str, str]:
        """The environment of a `mindoo-replica` client command run here:
        TLS with the mesh CA, presenting `identity` when given; signing with
        the client key `key` names (of key_files: client, outsider, operator,
        helm-test) when given."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("MINDOO_REPLICA_TLS_") and k != "MINDOO_REPLICA_CLIENT_KEY_FILE"}
        if key is not None:
            env["MINDOO_REPLICA_CLIENT_KEY_FILE"] = str(self.key_files[key])
        if self.certs is not None:
            env["MINDOO_REPLICA_TLS_CA"] = str(self.certs.ca_file)
            if identity is not None:
                env["MINDOO_REPLICA_TLS_CERT"] = str(identity.cert_file)
                env["MINDOO_REPLICA_TLS_KEY"] = str(identity.key_file)
        return env

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
        """`mindoo-replica status` of a pod, as an operator (with TLS, the
        operator's certificate)."""
        operator = self.certs.operator if self.certs else None
        proc = subprocess.run([self.binary, "status", "--addr", self.pods[ordinal].addr("grpc")],
                              capture_output=True, text=True, timeout=20, env=self.cli_env(operator))
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
    env = dict(os.environ)
    # The fingerprint key is a file of the pods' Secret, which the binary
    # reads when it loads the config; the settings shown do not depend on it.
    env["MINDOO_REPLICA__REPLICATION__FINGERPRINT_KEY_FILE"] = ""
    if m.certs is not None:
        # [tls] names files inside the pods, which the binary checks when it
        # loads the config; the replication settings do not depend on them.
        # Without TLS, client authentication must be off too (with peers).
        env["MINDOO_REPLICA__TLS__ENABLED"] = "false"
        env["MINDOO_REPLICA__AUTH__CLIENTS"] = "off"
    proc = subprocess.run([m.binary, "config", "print", "--config", str(cfg)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise Fail(f"mindoo-replica config print --config <the rendered config.toml> failed ({proc.returncode}): "
                   f"{proc.stderr.strip()}")
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
