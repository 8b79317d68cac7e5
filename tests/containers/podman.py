"""Runs `PodPlan`s as podman containers, as the kubelet would run the pods.

Every container, network and volume made here carries the label
`mindoo-replica-test=containers`, so `cleanup()` (and run.sh's trap) find all
of them. Host ports are published on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from chart import PodPlan, Volume, quantity_bytes, write_projected

LABEL = "mindoo-replica-test=containers"
PODMAN = ["podman", "--runtime", "runc"]


class PodmanError(Exception):
    pass


def podman(*args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(PODMAN + list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise PodmanError(f"podman {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def cleanup() -> None:
    """Removes every container, network and volume of these tests."""
    ids = podman("ps", "-aq", "--filter", f"label={LABEL}", check=False).stdout.split()
    if ids:
        podman("rm", "-f", "-t", "0", *ids, check=False)
    for kind in ("network", "volume"):
        names = podman(kind, "ls", "-q", "--filter", f"label={LABEL}", check=False).stdout.split()
        if names:
            podman(kind, "rm", "-f", *names, check=False)


def create_network(name: str) -> None:
    podman("network", "create", "--label", LABEL, name)


def _kubelet_ownership(path: str, fs_group: int | None) -> None:
    """What the kubelet does to a new volume for fsGroup: group-owned by it,
    group-writable, setgid so new files join the group."""
    if fs_group is None:
        return
    os.chown(path, 0, fs_group)
    os.chmod(path, os.stat(path).st_mode & 0o7777 | 0o2070)


class Pod:
    """One running pod: its plan, the host directories behind its configMap
    and secret volumes, its published ports and its container."""

    def __init__(self, plan: PodPlan, network: str, host_ports: dict[str, int], volume_dir: Path,
                 configmaps: dict[str, dict[str, bytes]], secrets: dict[str, dict[str, bytes]]):
        self.plan = plan
        self.network = network
        self.host_ports = host_ports
        self.volume_dir = volume_dir / plan.name
        self.configmaps = configmaps
        self.secrets = secrets
        self.container = plan.name

    def addr(self, port_name: str) -> str:
        return f"127.0.0.1:{self.host_ports[port_name]}"

    def claim_name(self, v: Volume) -> str:
        # The PersistentVolumeClaim a StatefulSet makes: <template>-<pod>.
        return f"{v.source}-{self.plan.name}"

    def _volume_args(self) -> list[str]:
        args = []
        for v in self.plan.volumes:
            ro = ",ro" if v.read_only else ""
            if v.kind == "claim":
                claim = self.claim_name(v)
                if podman("volume", "exists", claim, check=False).returncode != 0:
                    self._new_claim(claim)
                # nocopy: a new claim is empty, whatever the image holds at that path.
                args += ["--volume", f"{claim}:{v.mount_path}:nocopy{ro}"]
            elif v.kind in ("configMap", "secret"):
                directory = self.volume_dir / v.name
                if not (directory / "..data").exists():
                    self.write_volume(v)
                args += ["--mount", f"type=bind,source={directory},destination={v.mount_path}{ro}"]
            elif v.kind == "emptyDir":
                size = f",tmpfs-size={quantity_bytes(v.size)}" if v.size else ""
                args += ["--mount", f"type=tmpfs,destination={v.mount_path},tmpfs-mode=1777{size}"]
        return args

    def _new_claim(self, claim: str) -> None:
        """A new volume as a PersistentVolume arrives: empty, owned by root;
        then what the kubelet does for fsGroup. (Podman hands a new volume to
        the first container's user: a root container takes that first.)"""
        podman("volume", "create", "--label", LABEL, claim)
        podman("run", "--rm", "--label", LABEL, "--network", "none", "--user", "0:0", "--pull", "never",
               "--volume", f"{claim}:/claim:nocopy", "--entrypoint", "true", self.plan.image)
        mountpoint = podman("volume", "inspect", "--format", "{{.Mountpoint}}", claim).stdout.strip()
        os.chown(mountpoint, 0, 0)
        os.chmod(mountpoint, 0o755)
        _kubelet_ownership(mountpoint, self.plan.fs_group)

    def write_volume(self, v: Volume) -> None:
        """(Re)writes a configMap or secret volume from the current render
        (or, for a Secret the chart does not make, what the cluster holds)."""
        data = self.configmaps[v.source] if v.kind == "configMap" else self.secrets[v.source]
        gid = self.plan.fs_group if v.kind == "secret" else None
        write_projected(self.volume_dir / v.name, v.project(data), v.mode, gid)

    def run_args(self, detach: bool = True) -> list[str]:
        p = self.plan
        args = ["run", "--name", self.container, "--label", LABEL, "--network", self.network,
                "--hostname", p.hostname]
        args.append("-d" if detach else "--rm")
        if p.fqdn:
            args += ["--network-alias", p.fqdn]
        if p.service_fqdn:
            args += ["--network-alias", p.service_fqdn]
        if p.pull_policy == "Always":
            raise PodmanError("imagePullPolicy Always: no registry is reachable here")
        args += ["--pull", "never"]
        for name, port in p.ports.items():
            if name in self.host_ports:
                args += ["-p", f"127.0.0.1:{self.host_ports[name]}:{port}"]
        for k, v in p.env.items():
            args += ["--env", f"{k}={v}"]
        if p.user is not None:
            args += ["--user", f"{p.user}:{p.group}" if p.group is not None else str(p.user)]
        if p.run_as_non_root and not p.user:
            raise PodmanError(f"{p.name}: runAsNonRoot without a non-zero runAsUser")
        for g in ([p.fs_group] if p.fs_group is not None else []) + p.supplemental_groups:
            args += ["--group-add", str(g)]
        if p.read_only_root:
            # Kubernetes adds no tmpfs of its own: only the pod's volumes are writable.
            args += ["--read-only", "--read-only-tmpfs=false"]
        if p.no_new_privileges:
            args += ["--security-opt", "no-new-privileges"]
        if p.privileged:
            args += ["--privileged"]
        for cap in p.cap_drop:
            args += ["--cap-drop", cap]
        for cap in p.cap_add:
            args += ["--cap-add", cap]
        if p.seccomp == "Unconfined":
            args += ["--security-opt", "seccomp=unconfined"]
        if p.memory_limit:
            args += ["--memory", p.memory_limit]
        if p.cpu_limit:
            args += ["--cpus", str(_cpus(p.cpu_limit))]
        # The kubelet stops a container with SIGTERM, then SIGKILL after the grace period.
        args += ["--stop-signal", "SIGTERM", "--stop-timeout", str(p.grace_seconds)]
        args += self._volume_args()
        if p.command:
            args += ["--entrypoint", json.dumps(p.command)]
        args.append(p.image)
        args += p.args
        return args

    def start(self, init_timeout: float = 120) -> None:
        """The init containers to completion, in order (each as `<pod>-init-<name>`,
        its output kept in `init_output`), then the container; an init
        container that exits non-zero stops there (PodmanError)."""
        self.init_output: dict[str, str] = {}
        for plan in self.plan.init_containers:
            init = Pod(plan, self.network, {}, self.volume_dir.parent, self.configmaps, self.secrets)
            init.container = f"{self.plan.name}-init-{plan.container_name}"
            init.remove()
            proc = init.run_to_completion(init_timeout)
            self.init_output[plan.container_name] = (proc.stdout + proc.stderr).rstrip()
            if proc.returncode != 0:
                raise PodmanError(f"{self.plan.name}: init container {plan.container_name} exited {proc.returncode}: "
                                  f"{self.init_output[plan.container_name]}")
        podman(*self.run_args())

    def run_to_completion(self, timeout: float) -> subprocess.CompletedProcess:
        return podman(*self.run_args(detach=False), check=False, timeout=timeout)

    def inspect(self) -> dict:
        return json.loads(podman("inspect", self.container).stdout)[0]

    def ip(self) -> str:
        nets = self.inspect()["NetworkSettings"]["Networks"]
        return nets[self.network]["IPAddress"] if self.network in nets else "-"

    def pid(self) -> int:
        return int(self.inspect()["State"]["Pid"])

    def running(self) -> bool:
        proc = podman("inspect", "--format", "{{.State.Running}}", self.container, check=False)
        return proc.stdout.strip() == "true"

    def stop(self, timeout: int) -> int:
        """SIGTERM, SIGKILL after `timeout` s; the exit code."""
        podman("stop", "--time", str(timeout), self.container, timeout=timeout + 30)
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.container).stdout.strip())

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.container, check=False)

    def disconnect(self) -> None:
        podman("network", "disconnect", self.network, self.container)

    def connect(self) -> None:
        aliases = [a for a in (self.plan.fqdn, self.plan.service_fqdn) if a]
        args = ["network", "connect"]
        for a in aliases:
            args += ["--alias", a]
        podman(*args, self.network, self.container)

    def logs(self, tail: int = 40) -> str:
        proc = podman("logs", "--tail", str(tail), self.container, check=False)
        return proc.stdout + proc.stderr


def _cpus(quantity: str) -> float:
    q = str(quantity)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)
