"""The chart's rendered manifests, and what a kubelet would make of them.

`render()` runs `helm template` and keeps every document. `pod_plan()` turns
the StatefulSet's pod template (or a bare Pod, such as the `helm test` pod)
into a `PodPlan`: the image, args, env, ports, probes, security context and
volumes of one pod, resolved the way Kubernetes resolves them (pod name and
DNS name from the StatefulSet and its headless Service, `$(VAR)` references,
downward-API fields, fsGroup). Nothing here knows the chart's values: every
setting comes from the rendered manifests.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import subprocess
import time
from pathlib import Path

import yaml

# The kubelet's default cluster domain: a property of the cluster, not of the chart.
CLUSTER_DOMAIN = "cluster.local"


class ChartError(Exception):
    pass


@dataclasses.dataclass
class Render:
    docs: list[dict]
    release: str
    namespace: str

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [d for d in self.of_kind(kind) if name is None or d["metadata"]["name"] == name]
        if len(found) != 1:
            raise ChartError(f"expected one {kind}{' ' + name if name else ''} in the render, found {len(found)}")
        return found[0]

    @property
    def statefulset(self) -> dict:
        return self.one("StatefulSet")

    @property
    def headless_service(self) -> dict:
        name = self.statefulset["spec"]["serviceName"]
        svc = self.one("Service", name)
        if svc["spec"].get("clusterIP") != "None":
            raise ChartError(f"Service {name} (the StatefulSet's serviceName) is not headless")
        return svc

    def test_pods(self) -> list[dict]:
        return [p for p in self.of_kind("Pod") if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]

    def configmap_data(self, name: str) -> dict[str, bytes]:
        cm = self.one("ConfigMap", name)
        out = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        out.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
        return out

    def secret_data(self, name: str) -> dict[str, bytes]:
        secret = self.one("Secret", name)
        out = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
        out.update({k: v.encode() for k, v in (secret.get("stringData") or {}).items()})
        return out


def render(helm: str, chart: str, release: str, namespace: str, sets: dict[str, str],
           set_files: dict[str, Path] | None = None) -> Render:
    """`helm template` with --set for `sets` and --set-file for `set_files`
    (values read from files, such as PEM certificates)."""
    cmd = [helm, "template", release, chart, "--namespace", namespace]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    for key, path in (set_files or {}).items():
        cmd += ["--set-file", f"{key}={path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ChartError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return Render(docs, release, namespace)


@dataclasses.dataclass
class Volume:
    """A volume mount of the pod, with where its content comes from."""

    name: str
    mount_path: str
    read_only: bool
    kind: str  # claim, configMap, secret, emptyDir
    source: str = ""  # the claim template, ConfigMap or Secret name
    mode: int = 0o644  # files of a configMap or secret volume
    size: str = ""  # emptyDir sizeLimit
    items: dict[str, str] | None = None  # configMap/secret: key -> file name; None projects every key

    def project(self, data: dict[str, bytes]) -> dict[str, bytes]:
        """The files of a configMap or secret volume, from its source's data."""
        if self.items is None:
            return data
        missing = sorted(set(self.items) - set(data))
        if missing:
            raise ChartError(f"volume {self.name}: {self.source} has no key {', '.join(missing)}")
        return {path: data[key] for key, path in self.items.items()}


@dataclasses.dataclass
class PodPlan:
    """One pod as the kubelet would run it."""

    name: str
    hostname: str
    fqdn: str  # <pod>.<headless>.<namespace>.svc.<domain>, "" for a bare pod
    service_fqdn: str  # the headless Service's name, resolving to every pod
    image: str
    pull_policy: str
    command: list[str]
    args: list[str]
    env: dict[str, str]
    ports: dict[str, int]  # port name -> containerPort
    user: int | None
    group: int | None
    run_as_non_root: bool
    fs_group: int | None
    supplemental_groups: list[int]
    read_only_root: bool
    no_new_privileges: bool
    privileged: bool
    cap_drop: list[str]
    cap_add: list[str]
    seccomp: str
    volumes: list[Volume]
    readiness: dict  # the readinessProbe as rendered
    startup: dict
    grace_seconds: int
    memory_limit: str
    cpu_limit: str
    active_deadline: int | None
    labels: dict[str, str]
    container_name: str = ""
    init_containers: list[PodPlan] = dataclasses.field(default_factory=list)  # run in order before the container

    def probe_port_name(self, probe: dict) -> str:
        """The name of the container port a rendered gRPC probe asks (the
        metrics port when the chart serves metrics, else the gRPC port): the
        kubelet probes a port number, this harness publishes ports by name."""
        port = probe["grpc"]["port"]
        names = [name for name, number in self.ports.items() if number == port]
        if not names:
            raise ChartError(f"pod {self.name}: the probe's port {port} is none of the container's ports "
                             f"{self.ports}; this harness reaches declared container ports only")
        return names[0]


def quantity_bytes(q: str) -> int:
    """A Kubernetes quantity of bytes (64Mi, 1G, ...)."""
    m = re.fullmatch(r"(\d+)([KMGT]i?)?", str(q))
    if not m:
        raise ChartError(f"cannot translate the quantity {q!r}")
    number, unit = int(m.group(1)), m.group(2) or ""
    factor = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
              "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[unit]
    return number * factor


def expand_env(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: earlier variables are substituted,
    $$ escapes a $, unknown references stay as they are."""
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and ")" in value[i + 2:]:
            end = value.index(")", i + 2)
            name = value[i + 2:end]
            out.append(env[name] if name in env else value[i:end + 1])
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _field_ref(path: str, meta: dict, spec: dict) -> str:
    if path == "metadata.name":
        return meta["name"]
    if path == "metadata.namespace":
        return meta["namespace"]
    if path == "spec.serviceAccountName":
        return spec.get("serviceAccountName", "default")
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return meta.get(m.group(1), {}).get(m.group(2), "")
    raise ChartError(f"env fieldRef {path} is not supported by this harness")


def _security(pod_spec: dict, container: dict) -> dict:
    psc = pod_spec.get("securityContext") or {}
    csc = container.get("securityContext") or {}
    merged = dict(psc)
    merged.update({k: v for k, v in csc.items()})
    return {"pod": psc, "container": csc, "merged": merged}


def _items(source: dict) -> dict[str, str] | None:
    """A configMap or secret volume's `items` (key -> path), None without them."""
    items = source.get("items")
    if items is None:
        return None
    for it in items:
        if "mode" in it or "/" in it["path"]:
            raise ChartError(f"volume items {items}: per-item modes and subdirectories are not supported by this harness")
    return {it["key"]: it["path"] for it in items}


def pod_plan(r: Render, pod_spec: dict, meta: dict, *, claims: tuple[str, ...] = (), fqdn: str = "",
             service_fqdn: str = "") -> PodPlan:
    """One pod of the render; `claims` are the StatefulSet's volumeClaimTemplates."""
    containers = pod_spec["containers"]
    if len(containers) != 1:
        raise ChartError(f"pod {meta['name']}: {len(containers)} containers; this harness runs one")
    c = containers[0]
    # Init containers: each as a plan of its own (the pod's volumes, security
    # context and name), run to completion in order before the container.
    init_plans = [pod_plan(r, {**pod_spec, "containers": [ic], "initContainers": []}, meta, claims=claims,
                           fqdn=fqdn, service_fqdn=service_fqdn)
                  for ic in pod_spec.get("initContainers") or []]

    env: dict[str, str] = {}
    for e in c.get("env") or []:
        if "value" in e:
            env[e["name"]] = expand_env(str(e["value"]), env)
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = _field_ref(e["valueFrom"]["fieldRef"]["fieldPath"], meta, pod_spec)
        elif "configMapKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = r.configmap_data(ref["name"])[ref["key"]].decode()
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = r.secret_data(ref["name"])[ref["key"]].decode()
        else:
            raise ChartError(f"env {e['name']}: source {e.get('valueFrom')} is not supported by this harness")
    if c.get("envFrom"):
        raise ChartError("envFrom is not supported by this harness")

    sec = _security(pod_spec, c)
    merged = sec["merged"]
    caps = merged.get("capabilities") or {}
    seccomp = (merged.get("seccompProfile") or {}).get("type", "RuntimeDefault")

    pod_volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    volumes = []
    for m in c.get("volumeMounts") or []:
        if m.get("subPath") or m.get("subPathExpr"):
            raise ChartError(f"volumeMount {m['name']}: subPath is not supported by this harness")
        ro = bool(m.get("readOnly"))
        name = m["name"]
        if name in pod_volumes:
            v = pod_volumes[name]
            if "configMap" in v:
                volumes.append(Volume(name, m["mountPath"], ro, "configMap", v["configMap"]["name"],
                                      v["configMap"].get("defaultMode", 0o644), items=_items(v["configMap"])))
            elif "secret" in v:
                volumes.append(Volume(name, m["mountPath"], ro, "secret", v["secret"]["secretName"],
                                      v["secret"].get("defaultMode", 0o644), items=_items(v["secret"])))
            elif "emptyDir" in v:
                volumes.append(Volume(name, m["mountPath"], ro, "emptyDir",
                                      size=str((v["emptyDir"] or {}).get("sizeLimit", ""))))
            else:
                raise ChartError(f"volume {name}: {sorted(v)} is not supported by this harness")
        elif name in claims:
            volumes.append(Volume(name, m["mountPath"], ro, "claim", name))
        else:
            raise ChartError(f"volumeMount {name} names no volume or claim template")

    probes = {}
    for kind in ("readinessProbe", "startupProbe"):
        probe = c.get(kind) or {}
        if probe and "grpc" not in probe:
            raise ChartError(f"{kind}: only gRPC probes are supported by this harness")
        if probe and probe["grpc"].get("port") not in {p["containerPort"] for p in c.get("ports") or []}:
            raise ChartError(f"{kind}: port {probe['grpc'].get('port')} is not a container port of pod "
                             f"{meta['name']}; this harness reaches declared container ports only")
        probes[kind] = probe

    limits = (c.get("resources") or {}).get("limits") or {}
    return PodPlan(
        name=meta["name"],
        hostname=pod_spec.get("hostname", meta["name"]),
        fqdn=fqdn,
        service_fqdn=service_fqdn,
        image=c["image"],
        pull_policy=c.get("imagePullPolicy", "IfNotPresent"),
        command=list(c.get("command") or []),
        args=[expand_env(str(a), env) for a in c.get("args") or []],
        env=env,
        ports={p["name"]: p["containerPort"] for p in c.get("ports") or []},
        user=merged.get("runAsUser"),
        group=merged.get("runAsGroup"),
        run_as_non_root=bool(merged.get("runAsNonRoot")),
        fs_group=sec["pod"].get("fsGroup"),
        supplemental_groups=list(sec["pod"].get("supplementalGroups") or []),
        read_only_root=bool(sec["container"].get("readOnlyRootFilesystem")),
        no_new_privileges=sec["container"].get("allowPrivilegeEscalation") is False,
        privileged=bool(sec["container"].get("privileged")),
        cap_drop=list(caps.get("drop") or []),
        cap_add=list(caps.get("add") or []),
        seccomp=seccomp,
        volumes=volumes,
        readiness=probes["readinessProbe"],
        startup=probes["startupProbe"],
        grace_seconds=int(pod_spec.get("terminationGracePeriodSeconds", 30)),
        memory_limit=str(quantity_bytes(limits["memory"])) if "memory" in limits else "",
        cpu_limit=str(limits.get("cpu", "")),
        active_deadline=pod_spec.get("activeDeadlineSeconds"),
        labels=dict(meta.get("labels") or {}),
        container_name=c.get("name", ""),
        init_containers=init_plans,
    )


def replica_plan(r: Render, ordinal: int) -> PodPlan:
    """Pod `ordinal` of the StatefulSet, named and addressed as Kubernetes does."""
    sts = r.statefulset
    replicas = sts["spec"]["replicas"]
    if not 0 <= ordinal < replicas:
        raise ChartError(f"ordinal {ordinal} is outside the StatefulSet's {replicas} replicas")
    headless = r.headless_service
    template = sts["spec"]["template"]
    selector = sts["spec"]["selector"]["matchLabels"]
    labels = template["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        raise ChartError("the pod template's labels do not match the StatefulSet's selector")
    if any(labels.get(k) != v for k, v in headless["spec"]["selector"].items()):
        raise ChartError("the headless Service does not select the StatefulSet's pods")
    name = f"{sts['metadata']['name']}-{ordinal}"
    meta = {**template["metadata"], "name": name, "namespace": r.namespace}
    service = f"{headless['metadata']['name']}.{r.namespace}.svc.{CLUSTER_DOMAIN}"
    spec = dict(template["spec"], hostname=name, subdomain=headless["metadata"]["name"])
    claims = tuple(t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates") or [])
    return pod_plan(r, spec, meta, claims=claims, fqdn=f"{name}.{service}", service_fqdn=service)


def test_pod_plan(r: Render) -> PodPlan:
    pods = r.test_pods()
    if len(pods) != 1:
        raise ChartError(f"expected one helm test pod in the render, found {len(pods)}")
    pod = pods[0]
    meta = {**pod["metadata"], "namespace": r.namespace}
    return pod_plan(r, pod["spec"], meta)


def write_projected(directory: Path, files: dict[str, bytes], mode: int, gid: int | None) -> None:
    """Writes a configMap/secret volume the way the kubelet does, and updates
    it the same way: the files live in a timestamped directory, `..data`
    points at it and each name is a link through `..data`; an update writes a
    new directory and swaps `..data` with one rename, so a reader sees the
    old files or the new ones, never a mix."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / (time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()) + os.urandom(4).hex())
    stamp.mkdir(mode=0o755)
    for name, content in files.items():
        path = stamp / name
        path.write_bytes(content)
        os.chmod(path, mode)
        if gid is not None:
            os.chown(path, 0, gid)
    data = directory / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    tmp = directory / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(stamp.name, tmp)
    os.rename(tmp, data)
    for name in files:
        link = directory / name
        if not link.is_symlink():
            os.symlink(f"..data/{name}", link)
    for entry in directory.iterdir():
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in files:
            entry.unlink()
    if old:
        for path in sorted((directory / old).iterdir()):
            path.unlink()
        (directory / old).rmdir()
