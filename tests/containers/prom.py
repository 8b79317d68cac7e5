"""A Prometheus on the host that scrapes the replica containers the way
deploy/prometheus/prometheus.yml scrapes the chart's pods, with the alert rules
of deploy/prometheus/alerts.yaml, and the queries of the Grafana dashboard.

Kubernetes discovery is replaced by static targets that carry the labels pod
discovery would give them (`__meta_kubernetes_*`: the pod's labels, name,
namespace and container port name, one target per container port), so the
job's relabelings run unchanged: they keep the metrics port of the replica
pods and set `namespace`, `pod` and `release`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

K8S_JOB = "mindoo-replica"  # the job of prometheus.yml that discovers the chart's pods


def _label_name(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_targets(pods, namespace: str) -> list[dict]:
    """A static_configs entry per container port of every pod, labelled as
    kubernetes_sd_configs role pod would label it."""
    out = []
    for pod in pods:
        plan = pod.plan
        for port_name in plan.ports:
            labels = {
                "__meta_kubernetes_namespace": namespace,
                "__meta_kubernetes_pod_name": plan.name,
                "__meta_kubernetes_pod_container_name": "replica",
                "__meta_kubernetes_pod_container_port_name": port_name,
                "__meta_kubernetes_pod_container_port_number": str(plan.ports[port_name]),
            }
            for k, v in plan.labels.items():
                labels[f"__meta_kubernetes_pod_label_{_label_name(k)}"] = v
                labels[f"__meta_kubernetes_pod_labelpresent_{_label_name(k)}"] = "true"
            out.append({"targets": [pod.addr(port_name)], "labels": labels})
    return out


class Prometheus:
    def __init__(self, repo: Path, work: Path, port: int, namespace: str, interval_s: int = 2):
        self.repo, self.dir, self.port, self.interval = repo, work / "prometheus", port, interval_s
        self.namespace = namespace
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.dir.mkdir(parents=True, exist_ok=True)
        # The rule file as Prometheus would load it next to prometheus.yml.
        shutil.copy(repo / "deploy/prometheus/alerts.yaml", self.dir / "alerts.yaml")

    def write_config(self, pods) -> None:
        cfg = yaml.safe_load((self.repo / "deploy/prometheus/prometheus.yml").read_text())
        interval = f"{self.interval}s"
        cfg["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
        jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == K8S_JOB]
        if len(jobs) != 1 or "kubernetes_sd_configs" not in jobs[0]:
            raise RuntimeError(f"deploy/prometheus/prometheus.yml has no job {K8S_JOB} with kubernetes_sd_configs")
        job = jobs[0]
        del job["kubernetes_sd_configs"]
        job["static_configs"] = pod_targets(pods, self.namespace)
        cfg["scrape_configs"] = [job]
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    def start(self, pods) -> None:
        self.write_config(pods)
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        self.log = open(self.dir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.started_at = time.time()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}: see {self.dir / 'prometheus.log'}")
            try:
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1)
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("prometheus not ready after 30 s")

    def reload(self, pods) -> None:
        self.write_config(pods)
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/-/reload", method="POST"), timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"{path}: {body}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: int) -> list[dict]:
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=str(step))["result"]


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard."""
    dash = json.loads(path.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets") or []:
            if target.get("expr"):
                out.append((panel.get("title", "?"), target["expr"]))
    return out


def grafana_expr(expr: str, range_s: int, rate_interval: str = "1m") -> str:
    """The query as Grafana sends it: its variables replaced (every job and
    instance selected, as "All" does)."""
    for var, value in (("$__rate_interval", rate_interval), ("$__range", f"{range_s}s"),
                       ("$job", ".*"), ("$instance", ".*")):
        expr = expr.replace(var, value)
    return expr
