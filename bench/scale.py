"""How one operator copes with many PgClusters (issue 15): N clusters of 3 instances on the real API
server of the local environment, on simulated nodes (KWOK), with simulated agents.

    make up                                   # the environment and the operator (not started here)
    make bench-scale                          # builds KWOK once (cached), then N=100
    make bench-scale BENCH_ARGS="--clusters 300"
    .venv/bin/python -m bench.scale --clusters 20 --idle 30

What is real: the API server, etcd, the scheduler, the controllers and the operator that `make up`
runs (this never starts, stops or restarts it). What is simulated: the nodes (KWOK: pods are
placed and turn Running with their containers ready, so a Postgres pod's bootstrap counts as
done the moment its pod runs, a restore's bootstrap pod finishes after 1 s, no container runs; bench/scale_kwok.py)
and, clearly labelled, the agents' API traffic and a volume provisioner (bench/scale_agents.py).

It prints, for N clusters (default 100):
- time until every PgCluster is submitted, every primary's PgInstance exists, every object exists
  (3 PgInstances, 3 bound PVCs and 3 running Postgres pods per cluster; the operator makes the
  cluster's Secrets, Services, PDBs, ServiceAccount and Role before its first PgInstance), and
  every cluster reports Ready (phase Ready, 3 ready instances);
- the operator's CPU (share of one core) and RSS over time, from /proc of its PID
  (/var/lib/pgop-env/pids/operator.pid), and those of kube-apiserver, etcd and this process;
- API requests per second (deltas of the API server's apiserver_request_total) before the
  benchmark, while converging, at idle with every cluster Ready, and during a change rolled over
  every cluster (spec.parameters.work_mem: a reload, no restart), split into the simulated
  agents' share (counted by this process) and the rest; the busiest verbs and resources; the
  requests dispatched per API Priority and Fairness flow schema (the operator's identity, group
  pgop:operators, falls in `global-default`; this process and KWOK are system:masters, `exempt`);
- how far behind the operator's view is: per window, the bucket bounds holding the median, the
  99th percentile and the largest of pgop_heartbeat_delivery_delay_seconds (how old an agent's new
  heartbeat was when the operator's watch delivered it; whole seconds, so up to 1 s high), from
  the /metrics that `make up`'s operator serves on 127.0.0.1:18091;
- etcd's database size (etcd_mvcc_db_total_size_in_bytes and ..._in_use_in_bytes).

Then it deletes everything it made (namespaces bench-scale-<run>-*, the KWOK nodes, their
volumes, its StorageClass), with time-limited waits. Objects it made carry the label
bench.pgop.io/scale=<run>; `--clean-leftovers` removes those of an earlier run that was killed.

The simulated agents send what the agent sends: a status patch when the status changes (and an
unchanged one every 60 s), otherwise a renewal of the instance's liveness Lease as its heartbeat
(a primary's every 2 s turn, a replica's every 5 s; pgop.agent.loop.report, pgop.kernel.liveness).
The agent reads its cluster's PgInstances from its watch (pgop.agent.kube: one LIST and one watch
per agent, renewed every 15 s); the simulated agents open no watches (3000 of them do not fit in
this process), so that part of the agents' load on the API server is not in the figures.
`--agent-reads` makes them GET + LIST on every turn instead, as the agent did before it cached.
The report says how late the simulated agents' turns were, so a figure taken while they could not
keep up shows it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3

from bench import scale_kwok
from bench.kubeapi import Api, ApiError
from bench.scale_agents import PGOP, Agents, World
from bench.scale_metrics import (
    Sampler,
    Series,
    bucket_quantile,
    delta,
    etcd_db_bytes,
    histogram,
    process_age,
    request_counts,
    samples,
    top,
)
from e2e.harness import build, envfile, paths, proc
from pgop.agent.settings import DEFAULT_INTERVAL
from pgop.kernel.meta import LABEL_CLUSTER
from pgop.kernel.model import instance_name

LABEL_RUN = scale_kwok.LABEL_RUN
log = logging.getLogger("bench.scale")
ETCD_METRICS = f"http://127.0.0.1:{paths.ETCD_CLIENT_PORT}/metrics"
CHANGE = {"work_mem": "8MB"}  # a reload on every instance, no restart


def say(text: str) -> None:
    print(text, flush=True)


def cluster_manifest(name: str, namespace: str, storage_class: str, run: str,
                     failover_delay: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "pgop.io/v1", "kind": "PgCluster",
        "metadata": {"name": name, "namespace": namespace, "labels": {LABEL_RUN: run}},
        "spec": {
            "instances": 3, "postgresVersion": 15,
            "storage": {"size": "1Gi", "storageClassName": storage_class},
            "bootstrap": {"initdb": {"database": "app", "owner": "app"}},
            # Onto the simulated nodes only (bench/scale_kwok.py): the operator's own placement fields.
            "affinity": {"nodeSelector": dict(scale_kwok.NODE_LABELS), "tolerations": scale_kwok.TOLERATIONS},
        },
    }
    if failover_delay:
        body["spec"]["failoverDelay"] = failover_delay
    return body


# ------------------------------------------------------------------------------- milestones

def progress(world: World, instances_per_cluster: int = 3) -> dict[str, int]:
    """How many clusters have reached each milestone, from the watched objects."""
    with world.lock:
        clusters = list(world.clusters.values())
        by_cluster: dict[tuple[str, str], dict[str, int]] = {}
        for (ns, _), inst in world.instances.items():
            cluster = (inst.get("spec") or {}).get("cluster", "")
            c = by_cluster.setdefault((ns, cluster), Counter())
            c["instances"] += 1
            if inst["metadata"]["name"] == instance_name(cluster, 0):
                c["primary"] += 1
        for (ns, _), claim in world.claims.items():
            if (claim.get("status") or {}).get("phase") == "Bound":
                by_cluster.setdefault((ns, claim["metadata"].get("labels", {}).get(LABEL_CLUSTER, "")),
                                      Counter())["bound"] += 1
        for (ns, _), pod in world.pods.items():
            if (pod.get("status") or {}).get("phase") == "Running":
                by_cluster.setdefault((ns, pod["metadata"].get("labels", {}).get(LABEL_CLUSTER, "")),
                                      Counter())["running"] += 1
        primary_running = sum(1 for pod in world.pods.values()
                              if (pod.get("status") or {}).get("phase") == "Running" and pod["metadata"]["name"]
                              == instance_name(pod["metadata"].get("labels", {}).get(LABEL_CLUSTER, ""), 0))
    n = instances_per_cluster
    ready = sum(1 for c in clusters if (c.get("status") or {}).get("phase") == "Ready"
                and (c.get("status") or {}).get("readyInstances") == n)
    return {
        "clusters": len(clusters),
        "primaries": sum(1 for c in by_cluster.values() if c["primary"]),
        "primary pods": primary_running,
        "objects": sum(1 for c in by_cluster.values()
                       if c["instances"] >= n and c["bound"] >= n and c["running"] >= n),
        "instances": sum(c["instances"] for c in by_cluster.values()),
        "running pods": sum(c["running"] for c in by_cluster.values()),
        "ready": ready,
    }


OLD_OPERATOR = 120.0  # seconds: an operator older than this at the start may carry an earlier run's RSS
STUCK_WAIT = 60.0  # seconds with only failed-over clusters left before the wait for Ready ends


def not_ready_reasons(world: World) -> Counter[str]:
    """Why the clusters that are not Ready are not: phase and the Ready condition's reason."""
    reasons: Counter[str] = Counter()
    with world.lock:
        for c in world.clusters.values():
            st = c.get("status") or {}
            if st.get("phase") == "Ready":
                continue
            ready = next((x for x in st.get("conditions") or [] if x.get("type") == "Ready"), {})
            degraded = next((x for x in st.get("conditions") or [] if x.get("type") == "Degraded"
                             and x.get("status") == "True"), {})
            reasons[f"{st.get('phase') or 'none'}/{degraded.get('reason') or ready.get('reason') or '-'}"] += 1
    return reasons


def failed_over_only(reasons: Counter[str], objects_done: bool) -> int:
    """How many clusters wait in phase Failover when nothing else is left to wait for (every object
    exists, every other cluster Ready): 0 otherwise. The load generator plays agents that are
    healthy, never a failover (no replica stops streaming or is promoted), so a cluster whose
    simulated primary fell behind the operator's heartbeat limit stays in Failover for good (pure)."""
    if not objects_done or not reasons or any(not k.startswith("Failover/") for k in reasons):
        return 0
    return sum(reasons.values())


def rolled(world: World, change: dict[str, str]) -> int:
    """Clusters whose every instance has the change in its spec and reports it applied, and that
    are Ready again on their current generation."""
    with world.lock:
        done_instances: Counter[tuple[str, str]] = Counter()
        for (ns, _), inst in world.instances.items():
            spec, st = inst.get("spec") or {}, inst.get("status") or {}
            params = spec.get("parameters") or {}
            if all(params.get(k) == v for k, v in change.items()) and \
                    st.get("observedGeneration") == inst["metadata"].get("generation"):
                done_instances[(ns, spec.get("cluster", ""))] += 1
        count = 0
        for (ns, name), c in world.clusters.items():
            st = c.get("status") or {}
            if done_instances[(ns, name)] >= 3 and st.get("phase") == "Ready" and \
                    st.get("observedGeneration") == c["metadata"].get("generation") and st.get("readyInstances") == 3:
                count += 1
    return count


# ---------------------------------------------------------------------------------- the run

# A scrape: when, API requests per (verb, resource), requests this process sent, requests per
# flow schema, the operator's heartbeat delivery delay buckets.
Scrape = tuple[float, Counter[tuple[str, str]], int, Counter[str], dict[float, float]]
OPERATOR_METRICS = f"http://127.0.0.1:{paths.OPERATOR_METRICS_PORT}/metrics"
HEARTBEAT_DELAY = "pgop_heartbeat_delivery_delay_seconds"

class Run:
    def __init__(self, args: argparse.Namespace, operator_pid: int | None):
        self.args = args
        self.operator_pid = operator_pid
        self.operator_age: float | None = None  # seconds it had run when this run started
        self.env = envfile.load()
        self.api = Api()
        self.id = args.run or uuid.uuid4().hex[:5]
        self.prefix = f"bench-scale-{self.id}-"
        self.storage_class = f"bench-scale-{self.id}"
        self.namespaces = [f"{self.prefix}{i:03d}" for i in range(math.ceil(args.clusters / args.per_namespace))]
        self.nodes = [f"bench-scale-{self.id}-kwok-{i}" for i in range(args.nodes)]
        self.world = World(prefix=self.prefix)
        self.agents = Agents(self.api, self.world, self.storage_class, interval=args.interval,
                             reads=args.agent_reads, workers=args.agent_workers)
        self.kwok: subprocess.Popen[bytes] | None = None
        self.sampler: Sampler | None = None
        self.marks: dict[str, float] = {}  # milestone -> seconds after t0
        self.windows: dict[str, tuple[float, float, Counter[tuple[str, str]], int, Counter[str]]] = {}
        self.etcd: dict[str, tuple[int | None, int | None]] = {}
        self.churn: dict[str, tuple[Counter[str], Counter[str]]] = {}  # window -> (role flips, left Ready)
        self.churn_seen: tuple[Counter[str], Counter[str]] = (Counter(), Counter())
        self.delays: dict[str, tuple[float | None, ...]] = {}  # window -> heartbeat delay p50, p99, max (at most)
        self.t0 = time.monotonic()

    # -- measurements --------------------------------------------------------------------

    def scrape(self) -> Scrape:
        text = self.api.text("/metrics")
        flows: Counter[str] = Counter()
        for labels, value in samples(text, "apiserver_flowcontrol_dispatched_requests_total"):
            flows[labels.get("flow_schema", "?")] += int(value)
        return time.monotonic(), request_counts(text), self.api.sent_total(), flows, self.operator_delays()

    def operator_delays(self) -> dict[float, float]:
        """The operator's pgop_heartbeat_delivery_delay_seconds buckets (`make up` serves its
        /metrics on loopback); empty when it does not answer."""
        try:
            import urllib.request
            with urllib.request.urlopen(OPERATOR_METRICS, timeout=5) as r:
                return histogram(r.read().decode(), HEARTBEAT_DELAY)
        except OSError:
            return {}

    def window(self, name: str, start: Scrape, churn: bool = True) -> None:
        if churn:
            with self.world.lock:  # what changed since the last window ended (the windows follow each other)
                flips, left = Counter(self.world.role_flips), Counter(self.world.left_ready)
            self.churn[name] = (flips - self.churn_seen[0], left - self.churn_seen[1])
            self.churn_seen = (flips, left)
        end = self.scrape()
        self.delays[name] = tuple(bucket_quantile(start[4], end[4], q) for q in (0.5, 0.99, 1.0))
        flows: Counter[str] = Counter({k: v - start[3].get(k, 0) for k, v in end[3].items()})
        self.windows[name] = (start[0], end[0], delta(start[1], end[1]), end[2] - start[2], +flows)

    def etcd_size(self, when: str) -> None:
        try:
            import urllib.request
            with urllib.request.urlopen(ETCD_METRICS, timeout=10) as r:
                self.etcd[when] = etcd_db_bytes(r.read().decode())
        except OSError as error:
            log.warning("etcd metrics: %s", error)
            self.etcd[when] = (None, None)

    def mark(self, name: str) -> None:
        if name not in self.marks:
            self.marks[name] = time.monotonic() - self.t0
            say(f"  {self.marks[name]:7.1f}s  {name}")

    # -- setup ---------------------------------------------------------------------------

    def leftovers(self) -> dict[str, list[str]]:
        """Runs that left objects (namespaces, nodes, StorageClasses): run id -> its namespaces."""
        runs: dict[str, list[str]] = {}
        for path in ("/api/v1/namespaces", "/api/v1/nodes", "/apis/storage.k8s.io/v1/storageclasses"):
            for obj in self.api.get(path, labelSelector=LABEL_RUN).get("items") or []:
                names = runs.setdefault(obj["metadata"]["labels"][LABEL_RUN], [])
                if path.endswith("namespaces"):
                    names.append(obj["metadata"]["name"])
        return runs

    def setup(self, kwok_bin: str) -> None:
        run_label = {LABEL_RUN: self.id}
        self.api.create("/apis/storage.k8s.io/v1/storageclasses", {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": self.storage_class, "labels": run_label},
            # Bound at once by the simulated provisioner (bench/scale_agents.py): nothing to place.
            "provisioner": "bench.pgop.io/simulated", "reclaimPolicy": "Retain",
            "volumeBindingMode": "Immediate"})
        for i, name in enumerate(self.nodes):
            self.api.create("/api/v1/nodes", scale_kwok.node_manifest(name, i, self.id))
        workdir = paths.LOGS / f"bench-scale-{self.id}"
        self.kwok = scale_kwok.start(Path(kwok_bin), self.env["KUBECONFIG"], workdir, self.id)
        say(f"KWOK pid {self.kwok.pid}, log {workdir / 'kwok.log'}")
        wait_for(lambda: all(node_ready(self.api, n) for n in self.nodes), 90, "the KWOK nodes to be Ready")
        for ns in self.namespaces:
            self.api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": ns, "labels": run_label}})
        self.agents.start()

    # -- phases --------------------------------------------------------------------------

    def converge(self) -> bool:
        n = self.args.clusters
        names = [(self.namespaces[i // self.args.per_namespace], f"c{i:04d}") for i in range(n)]
        start = self.scrape()
        self.t0 = time.monotonic()
        say(f"\nCreating {n} PgClusters of 3 instances in {len(self.namespaces)} namespace(s):")

        def create(item: tuple[str, str]) -> None:
            ns, name = item
            self.api.create(f"{PGOP}/namespaces/{ns}/pgclusters",
                            cluster_manifest(name, ns, self.storage_class, self.id,
                                             self.args.failover_delay))

        with concurrent.futures.ThreadPoolExecutor(self.args.create_concurrency) as pool:
            list(pool.map(create, names))
        self.mark(f"all {n} PgClusters submitted")
        goals = [("primaries", "every primary PgInstance exists"),
                 ("primary pods", "every primary's Postgres pod runs"),
                 ("objects", "every object exists (3 PgInstances, 3 bound PVCs, 3 running pods each)"),
                 ("ready", "every cluster Ready")]
        try:
            return self.follow(lambda p: [(label, p[key] >= n) for key, label in goals], self.args.timeout)
        finally:  # also when interrupted: the figures so far
            self.window("converge", start)

    def follow(self, judge: Callable[[dict[str, int]], list[tuple[str, bool]]] | None, timeout: float) -> bool:
        """Marks each goal when first met; a progress line every 10 s; True once all are met
        (without goals: after `timeout`)."""
        deadline = time.monotonic() + timeout
        last = self.scrape()
        stuck_since: float | None = None
        while time.monotonic() < deadline:
            p = progress(self.world)
            p["rolled"] = rolled(self.world, CHANGE)
            results = judge(p) if judge is not None else [("", False)]
            for label, met in results:
                if met:
                    self.mark(label)
            if all(met for _, met in results):
                return True
            stuck = failed_over_only(not_ready_reasons(self.world), judge is not None and p["objects"] >= p["clusters"] > 0)
            stuck_since = (stuck_since or time.monotonic()) if stuck else None
            if stuck_since is not None and time.monotonic() - stuck_since >= STUCK_WAIT:
                say(f"  {stuck} cluster(s) stay in Failover: their simulated primaries renewed late (the load "
                    f"generator's turns late by up to {max(self.agents.lateness, default=0.0):.1f}s), the operator failed them over, and the "
                    "load generator plays no failover; not waiting for them")
                return False
            if time.monotonic() - last[0] >= 10:
                try:
                    now = self.scrape()
                except (ApiError, urllib3.exceptions.HTTPError, OSError) as error:
                    say(f"  cannot read the API server's metrics: {error}")
                    last = (time.monotonic(), *last[1:])
                    continue
                rate = sum(delta(last[1], now[1]).values()) / (now[0] - last[0])
                mine = (now[2] - last[2]) / (now[0] - last[0])
                cpu = self.cpu("operator", last[0], now[0])
                say(f"  {now[0] - self.t0:7.1f}s  instances {p['instances']:5}  running pods {p['running pods']:5}  "
                    f"ready clusters {p['ready']:5}  rolled {p['rolled']:5}  | operator CPU {cpu}  "
                    f"RSS {self.rss('operator', last[0], now[0])}  | API {rate:6.0f} req/s "
                    f"(simulated agents {mine:5.0f})")
                waiting = not_ready_reasons(self.world)
                if waiting and p["clusters"]:
                    say("             not Ready: " + ", ".join(f"{k} {v}" for k, v in waiting.most_common(4)))
                last = now
            time.sleep(0.5)
        if judge is not None:
            say(f"  timed out after {timeout:.0f}s: {progress(self.world)}")
        return judge is None

    def idle(self) -> None:
        say(f"\nIdle: {self.args.idle:.0f}s with every cluster Ready")
        time.sleep(min(10.0, self.args.idle / 3))  # the last status writes settle
        start = self.scrape()
        end = None
        try:
            # The last third on its own too: after converging the operator works off a tail (kopf
            # finishing create handling), and the whole window mixes it with the steady state.
            self.follow(None, self.args.idle * 2 / 3)
            end = self.scrape()
            self.follow(None, self.args.idle / 3)
        finally:
            self.window("idle", start)
            if end is not None:
                self.window("idle-end", end, churn=False)

    def rollout(self) -> bool:
        n = self.args.clusters
        say(f"\nRollout: spec.parameters {CHANGE} on every PgCluster (a reload on every instance)")
        start = self.scrape()
        self.t0 = time.monotonic()

        def change(key: tuple[str, str]) -> None:
            self.api.merge_patch(f"{PGOP}/namespaces/{key[0]}/pgclusters/{key[1]}", {"spec": {"parameters": CHANGE}})

        with self.world.lock:
            keys = list(self.world.clusters)
        with concurrent.futures.ThreadPoolExecutor(self.args.create_concurrency) as pool:
            list(pool.map(change, keys))
        self.mark(f"rollout: all {n} PgClusters changed")
        try:
            return self.follow(lambda p: [("rollout: every instance applied it, every cluster Ready",
                                           p["rolled"] >= n)], self.args.timeout)
        finally:
            self.window("rollout", start)

    def count_objects(self) -> dict[str, int]:
        """Objects of the benchmark's clusters, by kind (one LIST each, after Ready)."""
        kinds = {"Secret": "/api/v1/secrets", "Service": "/api/v1/services",
                 "ServiceAccount": "/api/v1/serviceaccounts", "ConfigMap": "/api/v1/configmaps",
                 "Role": "/apis/rbac.authorization.k8s.io/v1/roles",
                 "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/rolebindings",
                 "PodDisruptionBudget": "/apis/policy/v1/poddisruptionbudgets",
                 "PgInstance": f"{PGOP}/pginstances", "PersistentVolumeClaim": "/api/v1/persistentvolumeclaims",
                 "Pod": "/api/v1/pods"}
        out = {}
        for kind, path in kinds.items():
            try:
                items = self.api.get(path, labelSelector=LABEL_CLUSTER).get("items") or []
            except ApiError:
                continue
            out[kind] = sum(1 for i in items if self.world.ours(i))
        return out

    # -- cleanup -------------------------------------------------------------------------

    def cleanup(self, namespaces: list[str] | None = None, run: str | None = None) -> None:
        """Deletes what the run made; KWOK is stopped whatever happens (the API server gone too)."""
        try:
            self._cleanup(namespaces, run)
        except (ApiError, urllib3.exceptions.HTTPError, OSError) as error:
            say(f"  cleanup failed: {error}; later: python -m bench.scale --clean-leftovers --clusters 0")
        finally:
            self.stop_kwok()

    def stop_kwok(self) -> None:
        if self.kwok is not None and self.kwok.poll() is None:
            self.kwok.send_signal(signal.SIGTERM)
            try:
                self.kwok.wait(15)
            except subprocess.TimeoutExpired:
                self.kwok.kill()
                self.kwok.wait(5)

    def namespaces_gone(self, namespaces: list[str]) -> bool:
        """True once they are gone. Meanwhile, what nobody else would finish: without KWOK (a
        killed run's), the pods of its nodes are deleted at once; without the operator (a test
        session stops it), its finalizers on the benchmark's PgClusters (which publish nothing)
        are removed."""
        left = [ns for ns in namespaces if self.api.get_or_none(f"/api/v1/namespaces/{ns}") is not None]
        kwok_runs = self.kwok is not None and self.kwok.poll() is None
        operator_runs = proc.pid_of("operator") is not None
        for ns in left:
            if not kwok_runs:
                for pod in self.api.get(f"/api/v1/namespaces/{ns}/pods").get("items") or []:
                    if pod["metadata"].get("deletionTimestamp"):
                        self.api.delete(f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}", gracePeriodSeconds=0)
            if not operator_runs:
                for kind in ("pgclusters", "pginstances"):
                    for obj in self.api.get(f"{PGOP}/namespaces/{ns}/{kind}").get("items") or []:
                        if obj["metadata"].get("deletionTimestamp") and obj["metadata"].get("finalizers"):
                            self.api.merge_patch(f"{PGOP}/namespaces/{ns}/{kind}/{obj['metadata']['name']}",
                                                 {"metadata": {"finalizers": None}})
        return not left

    def _cleanup(self, namespaces: list[str] | None = None, run: str | None = None) -> None:
        run = run or self.id
        namespaces = self.namespaces if namespaces is None else namespaces
        say(f"\nCleaning up run {run}: {len(namespaces)} namespace(s), nodes, volumes, StorageClass")
        t = time.monotonic()
        self.agents.stop()
        for ns in namespaces:
            self.api.delete(f"/api/v1/namespaces/{ns}")
        gone = wait_for(lambda: self.namespaces_gone(namespaces), self.args.cleanup_timeout, "the namespaces to go",
                        quiet=True)
        if not gone:
            left = [ns for ns in namespaces if self.api.get_or_none(f"/api/v1/namespaces/{ns}") is not None]
            say(f"  still there after {self.args.cleanup_timeout:.0f}s: {', '.join(left)} "
                f"(delete by hand: kubectl delete namespace -l {LABEL_RUN}={run})")
        pvs = self.api.get("/api/v1/persistentvolumes", labelSelector=f"bench.pgop.io/scale-pv=bench-scale-{run}")
        for pv in pvs.get("items") or []:
            self.api.delete(f"/api/v1/persistentvolumes/{pv['metadata']['name']}")
        for node in self.api.get("/api/v1/nodes", labelSelector=f"{LABEL_RUN}={run}").get("items") or []:
            self.api.delete(f"/api/v1/nodes/{node['metadata']['name']}")
        self.stop_kwok()  # after the pods and nodes: it deletes the pods of deleted namespaces
        for sc in self.api.get("/apis/storage.k8s.io/v1/storageclasses",
                               labelSelector=f"{LABEL_RUN}={run}").get("items") or []:
            self.api.delete(f"/apis/storage.k8s.io/v1/storageclasses/{sc['metadata']['name']}")
        say(f"  done in {time.monotonic() - t:.0f}s" + ("" if gone else " (with leftovers, see above)"))

    # -- report --------------------------------------------------------------------------

    def cpu(self, name: str, start: float, end: float) -> str:
        if self.sampler is None or name not in self.sampler.series:
            return "  -  "
        share, _ = self.sampler.series[name].window(start, end)
        return f"{100 * share:5.1f}%" if share is not None else "  -  "

    def rss(self, name: str, start: float, end: float) -> str:
        if self.sampler is None or name not in self.sampler.series:
            return "  -  "
        _, peak = self.sampler.series[name].window(start, end)
        return f"{peak / 2**20:5.0f} MB" if peak is not None else "  -  "

    def connections(self, name: str, start: float, end: float) -> str:
        if self.sampler is None or name not in self.sampler.series:
            return "  -  "
        held = [n for t, n in self.sampler.series[name].connections if start <= t <= end]
        return str(max(held)) if held else "  -  "

    def report(self, objects: dict[str, int]) -> None:
        a, n = self.args, self.args.clusters
        say("\n" + "=" * 100)
        say(f"pgop scale benchmark, run {self.id}: {n} PgClusters x 3 instances, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
            f"{len(self.nodes)} KWOK nodes, operator pid {self.operator_pid}")
        if self.operator_age is not None and self.operator_age > OLD_OPERATOR:
            say(f"the operator started {self.operator_age:.0f}s before this run: its RSS figures include what "
                "earlier work left (Python keeps the memory); restart it (make up) for this run's own")
        say(f"simulated agents: a turn every {a.interval:g}s per instance "
            f"({'GET + LIST, then ' if a.agent_reads else ''}PATCH status when it changes or every "
            f"{self.agents.report_refresh:g}s, else renew the liveness Lease as the agent does), "
            "a Postgres pod's bootstrap is done when its pod runs, its container ready (a restore's bootstrap pod "
            f"after {scale_kwok.BOOTSTRAP_SECONDS:g}s)")
        say("\nmilestone                                                               seconds")
        for name, t in self.marks.items():
            say(f"{name:70} {t:8.1f}")
        if objects:
            say("\nobjects of the benchmark's clusters: "
                + ", ".join(f"{k} {v} ({v / n:.1f}/cluster)" for k, v in objects.items()))
        cols = [c for c in ("baseline", "converge", "idle", "idle-end", "rollout") if c in self.windows]
        say("\n" + f"{'':44}" + "".join(f"{c:>12}" for c in cols))
        say(f"{'window length (s)':44}" + "".join(f"{self.windows[c][1] - self.windows[c][0]:12.0f}" for c in cols))
        for proc_name in ("operator", "kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler",
                          "kwok", "bench (simulated agents)"):
            if self.sampler is not None and proc_name in self.sampler.series:
                say(f"{proc_name + ' CPU, % of a core':44}"
                    + "".join(f"{self.cpu(proc_name, *self.windows[c][:2]):>12}" for c in cols))
        say(f"{'operator RSS, largest':44}" + "".join(f"{self.rss('operator', *self.windows[c][:2]):>12}"
                                                       for c in cols))
        say(f"{'operator connections to the API server, most':44}"
            + "".join(f"{self.connections('operator', *self.windows[c][:2]):>12}" for c in cols))
        for label, pick in (("API requests/s, all", lambda w: sum(w[2].values())),
                            ("  of which the simulated agents (this process)", lambda w: w[3]),
                            ("  the rest (operator, controllers, KWOK, ...)", lambda w: sum(w[2].values()) - w[3]),
                            ("  flow schema global-default (operator, kube-proxy)", lambda w: w[4].get("global-default", 0))):
            say(f"{label:44}" + "".join(f"{pick(self.windows[c]) / (self.windows[c][1] - self.windows[c][0]):12.1f}"
                                        for c in cols))
        say(f"{'heartbeat delivery delay s, p50/p99/max':44}" + "".join(
            f"{'/'.join(_le(q) for q in self.delays.get(c, ())) or '-':>12}" for c in cols))
        say(f"{'etcd DB MB (total / in use)':44}" + "".join(
            f"{_mb(self.etcd.get(c, (None, None))):>12}" for c in cols))
        for c in ("converge", "idle", "idle-end", "rollout"):
            if c in self.windows:
                w = self.windows[c]
                say(f"\nbusiest API requests, {c} (req/s): "
                    + ", ".join(f"{k} {v:.1f}" for k, v in top(w[2], w[1] - w[0])))
                if c == "converge":  # what converging costs, whatever the machine's speed
                    say(f"busiest API requests, {c} (per cluster): "
                        + ", ".join(f"{k} {v:.1f}" for k, v in top(w[2], n, n=16)))
                say(f"per flow schema, {c} (req/s): "
                    + ", ".join(f"{k} {v / (w[1] - w[0]):.1f}" for k, v in w[4].most_common(8)))
        if self.sampler is not None and self.sampler.restarts:
            say("\nTHE OPERATOR WENT AWAY DURING THE RUN (a test session stops it; figures after that are not "
                "comparable): " + ", ".join(f"{t - self.t0:+.0f}s {'pid ' + str(pid) if pid else 'gone'}"
                                           for t, _, pid in self.sampler.restarts))
        for when, (flips, left) in self.churn.items():
            say(f"\n{when}: Postgres pods' role label changes {dict(flips) or 'none'}; "
                f"clusters that left Ready (by their next phase) {dict(left) or 'none'}")
        late = sorted(self.agents.lateness)
        if late:
            q = statistics.quantiles(late, n=100) if len(late) >= 100 else late
            say(f"\nsimulated agent turns: {len(late)}, late by p50 {statistics.median(late):.2f}s, "
                f"p99 {q[-1]:.2f}s, max {late[-1]:.2f}s; failed {self.agents.failures} "
                f"({', '.join(f'{k}: {v}' for k, v in self.agents.failed.most_common(4)) or 'none'})"
                + ("  <-- the simulator fell behind (heartbeats older than the operator's 15 s limit)"
                   if late[-1] > 10 else ""))
        say("=" * 100)


def _le(bound: float | None) -> str:
    """A bucket's upper bound as the report prints it ("at most")."""
    if bound is None:
        return "-"
    return ">60" if bound == float("inf") else f"{bound:g}"


def _mb(pair: tuple[int | None, int | None]) -> str:
    total, used = pair
    if total is None:
        return "-"
    return f"{total / 2**20:.0f}/{(used or 0) / 2**20:.0f}"


def node_ready(api: Api, name: str) -> bool:
    node = api.get_or_none(f"/api/v1/nodes/{name}")
    conds = ((node or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def wait_for(check: Callable[[], bool], timeout: float, what: str, quiet: bool = False) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except ApiError as error:
            log.debug("waiting for %s: %s", what, error)
        time.sleep(1.0)
    if not quiet:
        raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
    return False


def kwok_binary(explicit: str | None) -> str:
    if explicit:
        return explicit
    component = build.by_name()["kwok"]
    if not component.built():
        build.build(component)  # cached under ~/.cache/pgop/bin by version
    return str(component.bindir / "kwok")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clusters", type=int, default=100, help="PgClusters of 3 instances (default 100)")
    p.add_argument("--per-namespace", type=int, default=10, help="clusters per namespace (default 10)")
    p.add_argument("--nodes", type=int, default=0, help="KWOK nodes (default: one per 100 instances, at least 3)")
    p.add_argument("--interval", type=float, default=DEFAULT_INTERVAL,
                   help=f"seconds between two turns of a simulated agent (default {DEFAULT_INTERVAL:g}, the agent's)")
    p.add_argument("--agent-reads", action=argparse.BooleanOptionalAction, default=False,
                   help="each simulated turn GETs the PgInstance and LISTs the cluster's first, as the agent did "
                        "before it read from its watch (default: off)")
    p.add_argument("--failover-delay", metavar="DURATION",
                   help="spec.failoverDelay of every PgCluster (e.g. 10m): on a machine too small for the load "
                        "generator, its late heartbeats are not failed over at once (default: the CRD's 0s)")
    p.add_argument("--agent-workers", type=int, default=6, help="threads playing the agents (default 6)")
    p.add_argument("--baseline", type=float, default=20, help="seconds measured before anything is made")
    p.add_argument("--idle", type=float, default=60, help="seconds measured with every cluster Ready")
    p.add_argument("--timeout", type=float, default=1200, help="seconds each phase may take at most")
    p.add_argument("--cleanup-timeout", type=float, default=600, help="seconds the deletion may take at most")
    p.add_argument("--create-concurrency", type=int, default=4, help="PgClusters created at once")
    p.add_argument("--no-rollout", dest="rollout", action="store_false", help="skip the rollout phase")
    p.add_argument("--keep", action="store_true", help="leave everything in place (clean up later with "
                                                      "--clean-leftovers)")
    p.add_argument("--clean-leftovers", action="store_true",
                   help="delete what earlier runs left (namespaces, nodes, volumes labelled bench.pgop.io/scale)")
    p.add_argument("--wait-operator", type=float, default=0,
                   help="seconds to wait for the operator of `make up` to run (default: not at all)")
    p.add_argument("--kwok", help="the kwok binary (default: built by the harness, cached)")
    p.add_argument("--run", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.nodes <= 0:
        args.nodes = max(3, math.ceil(3 * args.clusters / 100))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    run = Run(args, proc.pid_of("operator"))
    leftovers = run.leftovers()
    if leftovers and args.clean_leftovers:
        for old, old_ns in sorted(leftovers.items()):
            run.cleanup(old_ns, old)
    elif leftovers:
        say(f"Note: earlier runs left objects ({', '.join(sorted(leftovers))}); --clean-leftovers deletes them.")
    if args.clusters == 0:
        return 0
    # A test session stops the operator of `make up` while it runs (e2e/harness/fixtures.py), and
    # starts it again afterwards: wait for it a while.
    deadline = time.monotonic() + args.wait_operator
    while (operator_pid := proc.pid_of("operator")) is None and time.monotonic() < deadline:
        time.sleep(2)
    if operator_pid is None:
        say("The operator is not running (no live PID in /var/lib/pgop-env/pids/operator.pid): run `make up` "
            "(a test session stops it while it runs).")
        return 2
    run.operator_pid = operator_pid
    run.operator_age = process_age(operator_pid)
    kwok_bin = kwok_binary(args.kwok)

    pids = {"operator": operator_pid, "bench (simulated agents)": os.getpid()}
    for name in ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler"):
        pid = proc.pid_of(name)
        if pid:
            pids[name] = pid
    run.sampler = Sampler(pids, follow={"operator": lambda: proc.pid_of("operator")},
                          connections={"operator": paths.APISERVER_PORT})
    run.sampler.start()

    objects: dict[str, int] = {}
    ok = False

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM: clean up as after Ctrl-C

    signal.signal(signal.SIGTERM, interrupted)
    try:
        say(f"Run {run.id}: {args.clusters} clusters, {len(run.namespaces)} namespaces {run.prefix}*, "
            f"{args.nodes} KWOK nodes; baseline {args.baseline:.0f}s")
        run.etcd_size("baseline")
        start = run.scrape()
        time.sleep(args.baseline)
        run.window("baseline", start)
        run.setup(kwok_bin)
        if run.kwok is not None:
            run.sampler.series["kwok"] = Series(run.kwok.pid)
        ok = run.converge()
        run.etcd_size("converge")
        objects = run.count_objects()
        if not ok:
            say("Not every cluster is Ready at once; measuring the idle window all the same (no rollout)")
        run.idle()
        run.etcd_size("idle")
        if ok and args.rollout:
            ok = run.rollout()
            run.etcd_size("rollout")
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        run.sampler.stop()
        try:
            run.report(objects)
        finally:
            if args.keep:
                run.agents.stop()
                say(f"\n--keep: left in place; later: python -m bench.scale --clean-leftovers --clusters 0 "
                    f"(KWOK pid {run.kwok.pid if run.kwok else '-'} keeps running; stop it by that PID)")
            else:
                run.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
