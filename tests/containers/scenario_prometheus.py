"""Scenario 6, prometheus: deploy/prometheus and the Grafana dashboard against the containers.

A Prometheus started right after scenario 1 (`start_server`), with the config
derived from deploy/prometheus/prometheus.yml, scrapes the replicas through
every later scenario. Checks that every replica is a target that is up and
labelled by the job's relabelings, that every rule of alerts.yaml is loaded and
evaluated without error, and that every query of the Grafana dashboard returns
series over the run.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

import prom
import replica
from harness import NAMESPACE, RELEASE, Mesh, ok, require, say

TITLE = "Prometheus, rules, dashboard"


def start_server(m: Mesh) -> None:
    """Prometheus from here on, so the dashboard sees every scenario."""
    args = m.args
    m.prometheus = prom.Prometheus(args.repo, Path(args.work), args.port_base + 200, NAMESPACE)
    m.prometheus.start(m.pods.values())
    ok(f"prometheus on 127.0.0.1:{args.port_base + 200} scrapes the containers every "
       f"{m.prometheus.interval} s from now on (config derived from deploy/prometheus/prometheus.yml)")


def run(m: Mesh) -> str:
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
               if m.args.scenarios and not {"restart", "partition"} <= set(m.args.scenarios) else ""))
    ok(f"all {len(queries)} dashboard queries return series over the run ({range_s} s, $__rate_interval 1m)")
    return f"{len(up)} targets, {want} rules, {len(queries)} dashboard queries with data"
