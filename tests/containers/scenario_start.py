"""Scenario 1, start: the rendered StatefulSet as 3 podman containers.

Renders the chart (`helm template`) and shows what pod 0 runs with: env (no
reference left unresolved), args, user, volumes, ports, probes, and with TLS
the rendered [tls] section and the Secret its files come from, and the
rendered [auth] section (client authentication: required with TLS, the keys
made for the run listed; off without TLS). Starts every
replica at once (podManagementPolicy Parallel) and waits until each answers
its readiness probe. Then checks the process inside pod 0 as the rendered
securityContext should leave it: its uid, gid and fsGroup, no capabilities,
no-new-privileges, a read-only root and writable volumes.
"""

from __future__ import annotations

import os
import time
import tomllib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import certs
import chart
import podman
import replica
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
    if m.certs is not None:
        show_tls(m, plan)
    show_auth(m, plan)

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


def show_tls(m: Mesh, plan: chart.PodPlan) -> None:
    """The rendered [tls] section and where its files come from."""
    config = next(v for v in plan.volumes if v.kind == "configMap")
    tls = tomllib.loads(m.render.configmap_data(config.source)["config.toml"].decode()).get("tls", {})
    require(tls.get("enabled") is True, f"the rendered config.toml has no [tls] with enabled = true: {tls}")
    files = [tls["cert_file"], tls["key_file"], tls["ca_file"]]
    mounts = {v.mount_path: v for v in plan.volumes if v.kind == "secret"}
    volume = mounts.get(os.path.dirname(files[0]))
    require(volume is not None and all(os.path.dirname(f) == volume.mount_path for f in files),
            f"[tls] names {files}, which no Secret volume of pod 0 holds ({sorted(mounts)})")
    origin = ("tls.existingSecret: held by the cluster, as cert-manager keeps it" if volume.source in m.cluster_secrets
              else "the chart's own, from tls.cert, tls.key and tls.ca")
    ok(f"[tls] enabled: {', '.join(files)} from Secret {volume.source} ({origin}); "
       f"operator_names {tls.get('operator_names')}")
    info(f"certificates made for this run: CA, replicas {m.certs.replica_names} (server and client auth), "
         f"operator {certs.OPERATOR_NAME} (client auth)")


def show_auth(m: Mesh, plan: chart.PodPlan) -> None:
    """The rendered [auth] section: client authentication as the run asks,
    the keys made for it where the values put them, and the helm test pod's
    key (generated by the chart) on the namespace `check` writes."""
    config = next(v for v in plan.volumes if v.kind == "configMap")
    auth = tomllib.loads(m.render.configmap_data(config.source)["config.toml"].decode()).get("auth", {})
    want = "required" if m.auth else "off"
    require(auth.get("clients") == want, f"the rendered config.toml has [auth] clients = {auth.get('clients')!r}, "
            f"expected {want!r}")
    if not m.auth:
        ok('[auth] clients = "off" (TLS off: the binary refuses "required" with peers and no TLS); the clients '
           'here sign nothing')
        return
    app, outsider, operator = (replica.public_hex(k) for k in (m.client_key, m.outsider_key, m.operator_key))
    lists = {f"{n['tenant']}/{n['db']}": n for n in auth["namespaces"]}
    own = lists.get("/".join(replica.NAMESPACE), {})
    require(own.get("readers") == [app] and own.get("writers") == [app],
            f"[auth] {'/'.join(replica.NAMESPACE)}: {own}, expected the application's key alone")
    require(auth["readers"] == [outsider] and auth["writers"] == [outsider] and auth["operators"] == [operator],
            f"[auth] readers {auth['readers']}, writers {auth['writers']}, operators {auth['operators']}")
    test = chart.test_pod_plan(m.render)
    key_file = test.env.get("MINDOO_REPLICA_CLIENT_KEY_FILE", "")
    volume = next((v for v in test.volumes if key_file.startswith(v.mount_path + "/")), None)
    require(volume is not None and volume.kind == "secret",
            f"the helm test pod's MINDOO_REPLICA_CLIENT_KEY_FILE {key_file!r} is in no Secret volume")
    seed = volume.project(m.secret_data(m.render, volume.source))[key_file.rsplit("/", 1)[1]].decode().strip()
    test_public = replica.public_hex(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed)))
    probe = lists.get("mindoo-check/probe", {})
    require(test_public in probe.get("readers", []) and test_public in probe.get("writers", []),
            f"[auth] mindoo-check/probe {probe} lacks the helm test key {test_public}")
    ok(f'[auth] clients = "required": {"/".join(replica.NAMESPACE)} read and written by the application key '
       f'{app[:16]}… alone; readers/writers of the other namespaces: the outsider key {outsider[:16]}…; '
       f'operators: {operator[:16]}… (keys made for this run)')
    info(f"helm test pod: signs with {key_file} from Secret {volume.source} (generated by the chart), public key "
         f"{test_public[:16]}…, which [auth] lets read and write mindoo-check/probe")
