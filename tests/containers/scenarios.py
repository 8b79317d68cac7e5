"""The chart's replicas in real containers: seven scenarios, run by run.sh.

  1 start      the rendered StatefulSet as 3 podman containers, ready
  2 mesh       writes through every replica reach every replica; the helm test pod passes;
               with TLS, what the gRPC port refuses and who may call PeerStatus; with client
               authentication, which credentials and keys are refused
  3 restart    rolling restart in reverse ordinal order under writes: 0 lost
  4 partition  one replica cut off for a while, then the time to converge
  5 scaleout   replicaCount 3 -> 4 through the mounted config only
  6 prometheus the Prometheus config, rules and dashboard queries against the containers
  7 restore    a backup of pod 0 on its volume; pod 0 restored from it by the chart's init
               container: a new incarnation, what it missed pulled back, no second restore

Each is a module, scenario_<name>.py; harness.py holds what they share. This
runs the selected ones in order on one release (a failed scenario's pods are
brought back for the next) and prints the summary. Every setting of the pods
comes from `helm template`; see chart.py and podman.py.

By default the release runs under mutual TLS (--tls, or MINDOO_CONTAINERS_TLS):
certificates made for the run (certs.py) in a Secret the cluster holds, as
cert-manager writes it (existing-secret), or in the chart's own Secret from
inline values (inline); "off" runs it in plaintext. Client authentication
is required with TLS (auth.clients "required", keys made for the run) and off
without it; `--set auth.clients=...` overrides that.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import traceback
from pathlib import Path

import chart
import podman
import replica
import scenario_mesh
import scenario_partition
import scenario_prometheus
import scenario_restart
import scenario_restore
import scenario_scaleout
import scenario_start
from harness import REPORTED, Mesh, Result, describe, fail_line, heading, print_summary, time_line
from replica import Writer

# In the order they run; each has a TITLE and run(mesh) -> the note for the summary.
SCENARIOS = {"start": scenario_start, "mesh": scenario_mesh, "restart": scenario_restart,
             "partition": scenario_partition, "scaleout": scenario_scaleout, "prometheus": scenario_prometheus,
             "restore": scenario_restore}


def parse_args() -> argparse.Namespace:
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
    ap.add_argument("--tls", choices=["existing-secret", "inline", "off"],
                    default=os.environ.get("MINDOO_CONTAINERS_TLS", "existing-secret"),
                    help="mutual TLS with the certificates in a Secret the cluster holds (tls.existingSecret), "
                         "in the chart's own Secret (tls.cert/tls.key/tls.ca), or no TLS")
    ap.add_argument("scenarios", nargs="*", help=f"a subset of {list(SCENARIOS)} (start always runs)")
    args = ap.parse_args()
    if args.tls not in ("existing-secret", "inline", "off"):
        ap.error(f"MINDOO_CONTAINERS_TLS={args.tls}: use existing-secret, inline or off")
    args.chart = args.repo / "helm/mindoo-replica"
    return args


def main() -> int:
    args = parse_args()
    names = list(SCENARIOS)
    wanted = ["start"] + [s for s in names[1:] if not args.scenarios or s in args.scenarios]
    unknown = set(args.scenarios) - set(names)
    if unknown:
        fail_line(f"unknown scenarios {sorted(unknown)}; known: {names}")
        return 2
    for port in [args.port_base + i for i in range(4)] + [args.port_base + 100 + i for i in range(4)] + [args.port_base + 200]:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                fail_line(f"port 127.0.0.1:{port} is taken; set MINDOO_CONTAINERS_PORT_BASE")
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
            fail_line(str(e))
            return 1
        m.writer = Writer(m.clients)
        for name in wanted:
            number = names.index(name) + 1
            heading(number, SCENARIOS[name].TITLE)
            t = time.monotonic()
            try:
                note = SCENARIOS[name].run(m)
                if name == "start" and "prometheus" in wanted:
                    scenario_prometheus.start_server(m)
                results.append(Result(number, name, True, time.monotonic() - t, note))
                time_line(time.monotonic() - t)
            except Exception as e:  # noqa: BLE001 - reported, then the next scenario
                if not isinstance(e, REPORTED):
                    traceback.print_exc()
                message = describe(e)
                fail_line(f"{name}: {message}")
                note = message.splitlines()[0]
                results.append(Result(number, name, False, time.monotonic() - t,
                                      note if len(note) <= 200 else note[:197] + "..."))
                m.diagnostics()
                if name == "start":
                    break
                try:
                    m.heal()
                except Exception as e2:  # noqa: BLE001
                    fail_line(f"cannot bring the pods back after {name}: {describe(e2)}")
                    m.diagnostics()
                    break
            m.writer.pause()
    finally:
        if m and m.writer:
            m.writer.close()
        if m and m.prometheus:
            m.prometheus.stop()
        podman.cleanup()

    return print_summary(results, started)


if __name__ == "__main__":
    sys.exit(main())
