"""Write gap on failover: what an application sees when the primary goes, measured from a writer pod
inside the cluster that inserts through `<cluster>-rw` every 20 ms (e2e/chaos.py).

    make up && .venv/bin/python -m bench.failover [--runs 3] [--scenarios pod-delete,switchover]
    make up NODES=3 && .venv/bin/python -m bench.failover --scenarios node-kill,node-freeze,node-partition,node-apiserver-partition,node-drain

Needs the operator running (make up). Per scenario, one 3-instance PgCluster
(`synchronousMode: required`, `synchronousReplicas: 1`) in a namespace of its own, faulted N times
in a row (each run waits until every instance streams again). Per run: the write gap over the fault
(last acknowledged write before it to the first acknowledged write sent after it), acknowledged
writes missing on the final primary, writes acknowledged by a deposed primary, failed attempts,
and the time from the fault until every instance is Ready and streaming on the newest timeline; for
the scenarios that cut the primary off (isolation, node-*), how long after the fault the old
primary still acknowledged a write.
The node-* scenarios fault the primary's *node* on the three-node local cluster (`make up NODES=3`):
the cluster then has one instance per node on node-local volumes, the writer runs on the host node
(never faulted), and before each run the primary is switched over to an extra node if it runs on the
host node; after each run every node is up again.
Prints a table next to CloudNativePG's e2e bounds; never fails on a figure (a run that does not
recover within the bounds is shown as an error and ends that scenario).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from e2e.chaos import (
    CNPG_BOUNDS,
    ChaosCluster,
    NetworkCut,
    Writer,
    force_delete_pod,
    kill_postmaster,
    lose_volume,
    median,
    switchover,
)
from e2e.chaos_nodes import HostWriter, node_of, primary_on_extra_node, spread_manifest
from e2e.harness import envfile, proc
from e2e.harness.fixtures import ClusterNodes, Kubectl

NAME = "bench"
RESUME = 120
CONVERGE = 300

MANIFEST = """
apiVersion: pgop.io/v1
kind: PgCluster
metadata: {{name: {name}, namespace: {ns}}}
spec:
  instances: {n}
  postgresVersion: 15
  synchronousReplicas: 1
  synchronousMode: {mode}
  storage: {{size: 1Gi}}
  bootstrap: {{initdb: {{database: app, owner: app}}}}
"""


@dataclass
class Run:
    gap: float | None = None
    lost: int = 0
    deposed: int = 0
    foreign: int = 0
    failed: int = 0
    streams_again: float | None = None
    isolated_acked_for: float | None = None
    new_primary: str = ""
    error: str = ""
    notes: list[str] = field(default_factory=list)


# ---- scenarios: each injects one fault into a converged cluster with a running writer, waits
# until writes resume and every instance streams again, and returns (fault time, seconds until
# every instance streams again, extra figures).

def pod_delete(cluster: ChaosCluster, writer: Writer) -> tuple[float, float, dict]:
    at = force_delete_pod(cluster, cluster.primary())
    writer.fault("pod delete", at)
    writer.wait_for_ack(sent_after=at, timeout=RESUME)
    return at, cluster.wait_converged(CONVERGE, since=at), {}


def postmaster_kill(cluster: ChaosCluster, writer: Writer) -> tuple[float, float, dict]:
    at = kill_postmaster(cluster, cluster.primary())
    writer.fault("postmaster kill", at)
    writer.wait_for_ack(sent_after=at, timeout=RESUME)
    return at, cluster.wait_converged(CONVERGE, since=at), {}


def volume_loss(cluster: ChaosCluster, writer: Writer) -> tuple[float, float, dict]:
    at = lose_volume(cluster, cluster.primary())
    writer.fault("volume loss", at)
    writer.wait_for_ack(sent_after=at, timeout=RESUME)
    return at, cluster.wait_converged(CONVERGE, since=at), {}


def do_switchover(cluster: ChaosCluster, writer: Writer) -> tuple[float, float, dict]:
    primary = cluster.primary()
    timeline = cluster.timeline(primary)
    target = next(n for n in cluster.instance_names() if n != primary)
    at = time.time()
    p = switchover(cluster, target)
    if p.returncode != 0:
        raise RuntimeError(f"pgop promote failed: {(p.stderr or p.stdout).strip()[-300:]}")
    writer.fault("switchover", at)
    writer.wait_for_ack(sent_after=at, timeout=RESUME, where=lambda a: a.tl > timeline)
    return at, cluster.wait_converged(CONVERGE, since=at), {}


def isolation(cluster: ChaosCluster, writer: Writer) -> tuple[float, float, dict]:
    primary = cluster.primary()
    timeline = cluster.timeline(primary)
    with NetworkCut(cluster, primary) as cut:
        assert cut.cut_at is not None
        writer.fault("isolation", cut.cut_at)
        writer.wait_for_ack(sent_after=cut.cut_at, timeout=RESUME, where=lambda a: a.tl > timeline)
    streams = cluster.wait_converged(CONVERGE, since=cut.cut_at)
    return cut.cut_at, streams, {"old_timeline": timeline}


# The node-level scenarios: set by main() when one is asked for (needs `make up NODES=3`).
NODES: ClusterNodes | None = None


def _nodes() -> ClusterNodes:
    if NODES is None:
        raise RuntimeError("node scenarios need the three-node environment (make up NODES=3)")
    return NODES


def node_fault(inject: Callable[[str], object], end: Callable[[str], object], what: str):
    """The primary's node faulted until a write is acknowledged on a newer timeline, then the fault
    ends (the node comes back) and every instance must stream again."""
    def scenario(cluster: ChaosCluster, writer: Writer) -> tuple[float, float, dict]:
        primary = cluster.primary()
        node = node_of(cluster, primary)
        timeline = cluster.timeline(primary)
        at = time.time()
        inject(node)
        writer.fault(f"{what} {node}", at)
        writer.wait_for_ack(sent_after=at, timeout=RESUME, where=lambda a: a.tl > timeline)
        end(node)
        return at, cluster.wait_converged(CONVERGE, since=at), {"old_timeline": timeline}
    return scenario


def node_drain(cluster: ChaosCluster, writer: Writer) -> tuple[float, float, dict]:
    primary = cluster.primary()
    node = node_of(cluster, primary)
    timeline = cluster.timeline(primary)
    at = time.time()
    writer.fault(f"kubectl drain {node}", at)
    p = _nodes().drain(node)
    if p.returncode != 0:
        raise RuntimeError(f"kubectl drain {node}: {(p.stderr or p.stdout).strip()[-300:]}")
    writer.wait_for_ack(sent_after=at, timeout=RESUME, where=lambda a: a.tl > timeline)
    _nodes().uncordon(node)
    return at, cluster.wait_converged(CONVERGE, since=at), {"drain": time.time() - at}


SCENARIOS: dict[str, tuple[Callable[[ChaosCluster, Writer], tuple[float, float, dict]], str]] = {
    # name: (scenario, the CloudNativePG bound on the write gap it compares with)
    "pod-delete": (pod_delete, "pod delete"),
    "postmaster-kill": (postmaster_kill, ""),
    "switchover": (do_switchover, "switchover"),
    "isolation": (isolation, ""),
    "volume-loss": (volume_loss, ""),
    "node-kill": (node_fault(lambda n: _nodes().kill(n), lambda n: _nodes().restart(n), "killed node"),
                  "node loss"),
    "node-freeze": (node_fault(lambda n: _nodes().freeze(n), lambda n: _nodes().thaw(n), "frozen node"),
                    "node loss"),
    "node-partition": (node_fault(lambda n: _nodes().partition(n), lambda n: _nodes().heal(n),
                                  "partitioned node"), "node loss"),
    "node-apiserver-partition": (node_fault(lambda n: _nodes().partition(n, apiserver_only=True),
                                            lambda n: _nodes().heal(n), "node cut off from the API server"),
                                 "node loss"),
    "node-drain": (node_drain, "switchover"),
}


def is_node_scenario(name: str) -> bool:
    return name.startswith("node-")


def one_run(cluster: ChaosCluster, scenario, on_nodes: bool = False) -> Run:
    run = Run()
    if on_nodes:  # the primary on a node that may be faulted; the client on the host node
        _nodes().reset()
        primary_on_extra_node(cluster, _nodes().extra, CONVERGE)
    writer = (HostWriter if on_nodes else Writer)(cluster, max_seconds=600)
    try:
        writer.start()
        time.sleep(2)
        at, streams, extra = scenario(cluster, writer)
        report = writer.finish()
        run.gap = report.gap_over(at)
        run.lost = len(report.missing)
        run.deposed = len(report.deposed_acks)
        run.foreign = len(report.foreign_acks)
        run.failed = len(report.failures)
        run.streams_again = streams
        run.new_primary = report.final_primary or ""
        if "old_timeline" in extra:
            last = report.last_ack_on(extra["old_timeline"])
            run.isolated_acked_for = max(0.0, last - at) if last is not None else 0.0
        run.notes = [p for p in report.problems() if "missing" not in p and "deposed" not in p]
    except Exception as e:
        run.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        traceback.print_exc(limit=2, file=sys.stderr)
        try:
            writer.stop(timeout=20)
            report = writer.report(converged=False)
            run.lost, run.deposed = len(report.missing), len(report.deposed_acks)
            run.failed = len(report.failures)
        except Exception:
            pass
    finally:
        writer.delete()
        if on_nodes:
            _nodes().reset()
    return run


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} s"


def table(results: dict[str, list[Run]]) -> str:
    head = ["scenario", "runs", "write gap median", "write gap max", "CNPG bound", "lost acked",
            "deposed acks", "old primary acked for (max)", "failed attempts (median)",
            "all streaming again median / max", "CNPG rejoin bound", "errors"]
    rows = []
    for name, runs in results.items():
        good = [r for r in runs if not r.error]
        gaps = [r.gap for r in good if r.gap is not None]
        streams = [r.streams_again for r in good if r.streams_again is not None]
        bound = SCENARIOS[name][1]
        rows.append([
            name, str(len(runs)), fmt(median(gaps)), fmt(max(gaps) if gaps else None),
            f"{CNPG_BOUNDS[bound]:.0f} s" if bound else "-",
            str(sum(r.lost for r in runs)), str(sum(r.deposed + r.foreign for r in runs)),
            fmt(max(acked)) if (acked := [r.isolated_acked_for for r in good if r.isolated_acked_for is not None])
            else "-",
            f"{median([float(r.failed) for r in good]):.0f}" if good else "-",
            f"{fmt(median(streams))} / {fmt(max(streams) if streams else None)}",
            f"{CNPG_BOUNDS['rejoin']:.0f} s",
            "; ".join(sorted({r.error for r in runs if r.error}))[:120] or "-",
        ])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "| " + " | ".join("-" * w for w in widths) + " |"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="faults per scenario (default 3)")
    ap.add_argument("--scenarios", default="pod-delete,postmaster-kill,switchover,isolation,volume-loss")
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--mode", choices=["required", "preferred"], default="required")
    ap.add_argument("--keep", action="store_true", help="keep the namespaces (for a look afterwards)")
    args = ap.parse_args(argv)
    names = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")

    env = envfile.load()
    kubectl = Kubectl(env)
    if any(is_node_scenario(n) for n in names):
        global NODES
        NODES = ClusterNodes(env, kubectl)
        if not NODES.extra:
            ap.error("the node-* scenarios need the three-node environment: make up NODES=3")
    if not proc.running("operator"):
        print("note: no operator of `make up` runs (pid file); the figures need one running", file=sys.stderr)
    results: dict[str, list[Run]] = {}
    # Interrupted (Ctrl-C, SIGTERM): the table of what was measured so far is still printed.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        measure(kubectl, names, args, results)
    except KeyboardInterrupt:
        print("interrupted: the figures so far", file=sys.stderr)
    print()
    print(f"Failover write gap ({args.instances} instances, synchronousMode {args.mode}, "
          f"writer every 20 ms through -rw; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    print(table(results))
    return 0


def measure(kubectl: Kubectl, names: list[str], args: argparse.Namespace, results: dict[str, list[Run]]) -> None:
    for name in names:
        ns = f"bench-failover-{uuid.uuid4().hex[:6]}"
        kubectl("create", "namespace", ns)
        cluster = ChaosCluster(kubectl, ns, NAME)
        cluster.allow_chaos()
        results[name] = []
        try:
            on_nodes = is_node_scenario(name)
            manifest = spread_manifest(NAME, ns, args.instances, args.mode) if on_nodes else \
                MANIFEST.format(name=NAME, ns=ns, n=args.instances, mode=args.mode)
            kubectl("apply", "-f", "-", input=manifest)
            cluster.wait_ready(args.instances, 300)
            cluster.wait_converged(120)
            for i in range(args.runs):
                run = one_run(cluster, SCENARIOS[name][0], on_nodes)
                results[name].append(run)
                print(f"{name} #{i + 1}: {json.dumps(run.__dict__, default=str)}", flush=True)
                if run.error:
                    break  # the cluster did not recover: further runs would measure something else
        except Exception as e:
            results[name].append(Run(error=f"set-up: {type(e).__name__}: {str(e).splitlines()[0][:160]}"))
        finally:
            if not args.keep:
                kubectl("delete", "namespace", ns, "--wait=false", check=False)


if __name__ == "__main__":
    sys.exit(main())
