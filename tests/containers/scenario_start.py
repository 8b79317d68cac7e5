"""Scenario 1, start: the rendered StatefulSet as 3 podman containers.

Renders the chart (`helm template`) and shows what pod 0 runs with: env (no
reference left unresolved), args, user, volumes, ports, probes. Starts every
replica at once (podManagementPolicy Parallel) and waits until each answers
its readiness probe. Then checks the process inside pod 0 as the rendered
securityContext should leave it: its uid, gid and fsGroup, no capabilities,
no-new-privileges, a read-only root and writable volumes.
"""

from __future__ import annotations

import time

import chart
import podman
from harness import NAMESPACE, NETWORK, RELEASE, Mesh, info, ok, require

TITLE = "the rendered StatefulSet in containers"


def run(m: Mesh) -> str:
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
    info(f"       ports {plan.ports}, readiness gRPC {plan.readiness['grpc']} "
         f"(the {plan.probe_port_name(plan.readiness)} port), grace {plan.grace_seconds} s")

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
