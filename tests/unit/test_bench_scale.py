"""The pure parts of the scale benchmark (bench/scale*.py): what it parses from /metrics, what its
simulated agents write (judged by the operator's own status code), and that the PgClusters it
makes land on the simulated nodes (by the operator's own pod builders)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml

from bench import scale, scale_kwok
from bench.kubeapi import _kind
from bench.scale_agents import Agents, World, made_up_lsn, simulated_status, system_identifier, volume_for
from bench.scale_metrics import (
    Series,
    bucket_quantile,
    delta,
    etcd_db_bytes,
    histogram,
    request_counts,
    samples,
    top,
)
from pgop.cluster.status import cluster_status
from pgop.kernel.meta import COMPONENT_BOOTSTRAP, LABEL_CLUSTER, LABEL_COMPONENT, LABEL_INSTANCE
from pgop.kernel.model import Cluster, Instance, instance_name
from pgop.kernel.readiness import is_ready
from pgop.specs.instance import build_instance
from pgop.specs.pods import build_bootstrap_pod, build_postgres_pod

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

METRICS = """\
# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 40
apiserver_request_total{code="500",component="apiserver",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="pgop.io",resource="pginstances",scope="resource",subresource="status",verb="PATCH",version="v1"} 1e+03
apiserver_request_total_other{verb="GET"} 99
etcd_mvcc_db_total_size_in_bytes 4.194304e+06
etcd_mvcc_db_total_size_in_use_in_bytes 2.097152e+06
"""


def test_request_counts_sum_over_codes_and_name_subresources():
    counts = request_counts(METRICS)
    assert counts == {("LIST", "pods"): 42, ("PATCH", "pginstances/status"): 1000}
    assert samples(METRICS, "apiserver_request_total_other") == [({"verb": "GET"}, 99.0)]


def test_etcd_size_and_missing_metrics():
    assert etcd_db_bytes(METRICS) == (4 << 20, 2 << 20)
    assert etcd_db_bytes("") == (None, None)


def test_delta_counts_from_zero_after_a_restart_and_drops_zeroes():
    before = {("GET", "pods"): 10, ("LIST", "pods"): 50, ("GET", "nodes"): 3}
    after = {("GET", "pods"): 25, ("LIST", "pods"): 7, ("GET", "nodes"): 3}
    assert delta(before, after) == {("GET", "pods"): 15, ("LIST", "pods"): 7}
    assert top(delta(before, after), 5.0, n=1) == [("GET pods", 3.0)]


def test_series_window_is_mean_cpu_and_largest_rss():
    s = Series(1, [(0.0, 10.0, 100), (1.0, 10.5, 300), (2.0, 11.0, 200), (10.0, 20.0, 999)])
    share, peak = s.window(0.0, 2.0)
    assert share == pytest.approx(0.5) and peak == 300
    assert s.window(5.0, 6.0) == (None, None)


def test_the_heartbeat_delay_quantiles_come_from_the_buckets_between_two_scrapes():
    def text(counts):
        return "".join(f'pgop_heartbeat_delivery_delay_seconds_bucket{{le="{le}"}} {n}\n'
                       for le, n in zip(("0.5", "1.0", "2.0", "+Inf"), counts))
    before = histogram(text((5, 10, 10, 10)), "pgop_heartbeat_delivery_delay_seconds")
    assert before == {0.5: 5, 1.0: 10, 2.0: 10, float("inf"): 10}
    after = histogram(text((5, 100, 109, 110)), "pgop_heartbeat_delivery_delay_seconds")
    # 100 observed between them: 90 in (0.5, 1], 9 in (1, 2], 1 above 2 s
    assert bucket_quantile(before, after, 0.5) == 1.0
    assert bucket_quantile(before, after, 0.99) == 2.0
    assert bucket_quantile(before, after, 1.0) == float("inf")
    assert bucket_quantile(after, after, 0.5) is None  # nothing observed
    assert histogram("", "pgop_heartbeat_delivery_delay_seconds") == {}


def test_kind_of_paths():
    assert _kind("/api/v1/namespaces/a/pods/b") == "pods"
    assert _kind("/apis/pgop.io/v1/namespaces/a/pginstances/b/status") == "pginstances/status"
    assert _kind("/apis/pgop.io/v1/pginstances") == "pginstances"
    assert _kind("/api/v1/namespaces/a") == "namespaces"
    assert _kind("/api/v1/nodes") == "nodes"


# ------------------------------------------------------------------ the simulated nodes

def test_nodes_are_tainted_labelled_and_get_their_own_pod_ranges():
    nodes = [scale_kwok.node_manifest(f"n{i}", i, "run1") for i in range(3)]
    assert len({n["spec"]["podCIDR"] for n in nodes}) == 3
    for n in nodes:
        assert n["spec"]["taints"] == [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]
        assert n["metadata"]["labels"]["type"] == "kwok"
        assert n["metadata"]["labels"][scale_kwok.LABEL_RUN] == "run1"
    with pytest.raises(ValueError, match="at most 64"):
        scale_kwok.node_manifest("too-many", 64, "run1")
    argv = scale_kwok.command(scale_kwok.Path("/bin/kwok"), "/k", scale_kwok.Path("/c"), "run1")
    assert f"--manage-nodes-with-label-selector={scale_kwok.LABEL_RUN}=run1" in argv


def test_stages_parse_and_bootstrap_pods_finish():
    stages = list(yaml.safe_load_all(scale_kwok.STAGES.replace("@BOOTSTRAP_MS@", "1000")))
    names = [s["metadata"]["name"] for s in stages]
    assert names == ["node-initialize", "pod-ready", "pgop-bootstrap-complete", "pod-delete"]
    done = stages[2]["spec"]
    assert done["selector"]["matchLabels"] == {LABEL_COMPONENT: COMPONENT_BOOTSTRAP}
    assert done["delay"]["durationMilliseconds"] == 1000
    assert "phase: Succeeded" in done["next"]["statusTemplate"]


def test_the_benchmark_clusters_pods_go_to_the_simulated_nodes_only():
    body = scale.cluster_manifest("c0001", "bench-scale-x-000", "bench-scale-x", "x")
    body["metadata"]["uid"] = "uid-c"
    cluster = Cluster.from_object(body)
    assert cluster.validate() == []
    instance = build_instance(cluster, 0, "primary", "initdb", primary=instance_name("c0001", 0))
    instance["metadata"]["uid"] = "uid-i"
    for pod in (build_postgres_pod(Instance.from_object(instance)), build_bootstrap_pod(Instance.from_object(instance))):
        assert pod["spec"]["nodeSelector"] == {"type": "kwok"}
        assert pod["spec"]["tolerations"] == scale_kwok.TOLERATIONS
    assert instance["spec"]["storage"]["storageClassName"] == "bench-scale-x"


def test_the_benchmark_can_give_its_clusters_a_failover_delay():
    assert "failoverDelay" not in scale.cluster_manifest("c0001", "ns", "sc", "x")["spec"]
    body = scale.cluster_manifest("c0001", "ns", "sc", "x", failover_delay="10m")
    body["metadata"]["uid"] = "uid-c"
    cluster = Cluster.from_object(body)
    assert cluster.validate() == []
    assert cluster.spec.failover_delay_seconds == 600


# ------------------------------------------------------------------ the simulated agents

def _cluster_objects(ns: str = "bench-scale-x-000", name: str = "c0001"):
    body = scale.cluster_manifest(name, ns, "sc", "x") | {"status": {"phase": "Creating"}}
    body["metadata"] |= {"uid": "uid-c", "generation": 1}
    cluster = Cluster.from_object(body)
    primary = instance_name(name, 0)
    instances, pods = [], []
    for ordinal in range(3):
        inst = build_instance(cluster, ordinal, "primary" if ordinal == 0 else "replica",
                              "initdb" if ordinal == 0 else "basebackup", primary=primary)
        inst["metadata"] |= {"uid": f"uid-{ordinal}", "generation": 2}
        instances.append(inst)
        pods.append({"metadata": {"name": inst["metadata"]["name"], "namespace": ns, "uid": f"pod-{ordinal}",
                                  "labels": {LABEL_CLUSTER: name, LABEL_INSTANCE: inst["metadata"]["name"]}},
                     "spec": {"nodeName": "kwok-0"}, "status": {"phase": "Running", "podIP": f"10.252.0.{ordinal}"}})
    return cluster, instances, pods


def test_simulated_agents_make_a_cluster_ready_by_the_operators_own_judgement():
    cluster, instances, pods = _cluster_objects()
    reported = []
    for inst, pod in zip(instances, pods):
        patch = simulated_status(inst, pod, now=NOW, primary_lsn="0/3000060", lsn=made_up_lsn(1),
                                 members=instances, interval=2.0)
        reported.append(inst | {"status": patch})
    views = [Instance.from_object(i) for i in reported]
    assert all(is_ready(v, NOW) for v in views)
    primary, replica = reported[0]["status"], reported[1]["status"]
    assert primary["role"] == "primary" and replica["role"] == "replica"
    assert replica["following"] == instance_name("c0001", 0) and replica["walReceiver"] == "streaming"
    assert replica["podIP"] == "10.252.0.1" and replica["podUID"] == "pod-1" and replica["node"] == "kwok-0"
    assert primary["observedGeneration"] == 2 == replica["observedGeneration"]
    assert set(primary["replicaSyncStates"]) == {instance_name("c0001", 1), instance_name("c0001", 2)}
    assert primary["systemIdentifier"] == replica["systemIdentifier"] == system_identifier("bench-scale-x-000",
                                                                                            "c0001")
    status = cluster_status(cluster, reported, now=NOW + timedelta(seconds=5))
    assert status["phase"] == "Ready" and status["readyInstances"] == 3
    # ... and a heartbeat as old as the operator's limit is not believed: the simulator must keep up
    assert cluster_status(cluster, reported, now=NOW + timedelta(seconds=16))["phase"] != "Ready"


class _RecordingApi:
    """What the simulated agents send, by verb and path (every request succeeds)."""

    def __init__(self):
        self.sent: list[tuple[str, str]] = []

    def merge_patch(self, path, body):
        self.sent.append(("PATCH", path))
        return body

    def create(self, path, body):
        self.sent.append(("POST", path))
        return body


def test_simulated_agents_beat_through_the_lease_as_the_agent_does_and_rewrite_the_status_only_when_due():
    _, instances, pods = _cluster_objects()
    ns, replica = "bench-scale-x-000", instances[1]
    key = (ns, replica["metadata"]["name"])
    world = World(prefix="bench-scale-x-")
    for inst, pod in zip(instances, pods):
        world.instances[(ns, inst["metadata"]["name"])] = inst
        world.pods[(ns, inst["metadata"]["name"])] = pod
    api = _RecordingApi()
    agents = Agents(api, world, "sc", reads=False)  # type: ignore[arg-type]

    def turn(after: float) -> tuple[str, str]:
        """A turn `after` seconds past the last beat (status write or renewal)."""
        for table in (agents.written_at, agents.leased):
            if key in table:
                table[key] -= after
        before = len(api.sent)
        agents.turn(key)
        return api.sent[before] if len(api.sent) > before else ("-", "")

    verb, path = turn(0)  # the first report is a status write
    assert verb == "PATCH" and path.endswith(f"/pginstances/{key[1]}/status")
    world.instances[key] = replica | {"status": simulated_status(
        replica, pods[1], now=datetime.now(UTC), primary_lsn=None, lsn=made_up_lsn(1), members=instances,
        interval=2.0)}
    assert turn(0.5) == ("-", "")  # a beat is not due yet
    verb, path = turn(10)  # due, nothing new: the Lease is made, the status left alone
    assert verb == "POST" and path.endswith(f"/namespaces/{ns}/leases")
    verb, path = turn(10)  # ... and then renewed
    assert verb == "PATCH" and path.endswith(f"/leases/{key[1]}-liveness")
    verb, path = turn(agents.report_refresh)  # the unchanged status again, once a report refresh
    assert verb == "PATCH" and path.endswith("/status")


def test_progress_and_rollout_are_counted_from_the_watched_objects():
    cluster, instances, pods = _cluster_objects()
    world = World(prefix="bench-scale-x-")
    ns = "bench-scale-x-000"
    cluster_body = {"metadata": {"name": "c0001", "namespace": ns, "generation": 2},
                    "status": {"phase": "Ready", "readyInstances": 3, "observedGeneration": 2}}
    world.clusters[(ns, "c0001")] = cluster_body
    for inst, pod in zip(instances, pods):
        name = inst["metadata"]["name"]
        world.instances[(ns, name)] = inst | {"status": {"observedGeneration": 2}}
        world.pods[(ns, name)] = pod
        world.claims[(ns, name)] = {"metadata": {"name": name, "namespace": ns, "labels": {LABEL_CLUSTER: "c0001"}},
                                    "status": {"phase": "Bound"}}
    p = scale.progress(world)
    assert (p["primaries"], p["primary pods"], p["objects"], p["ready"]) == (1, 1, 1, 1)
    assert scale.rolled(world, scale.CHANGE) == 0  # the change is not in the instances' spec yet
    for inst in world.instances.values():
        inst["spec"]["parameters"] = dict(scale.CHANGE)
    assert scale.rolled(world, scale.CHANGE) == 1
    next(iter(world.instances.values()))["metadata"]["generation"] = 3  # one instance not applied yet
    assert scale.rolled(world, scale.CHANGE) == 0


def test_volumes_are_pre_bound_to_their_claim_and_kept_for_the_benchmark_to_delete():
    claim = {"metadata": {"name": "c0001-0", "namespace": "ns", "uid": "u1"},
             "spec": {"storageClassName": "sc", "resources": {"requests": {"storage": "1Gi"}}}}
    pv = volume_for(claim, "bench-scale-x-")
    assert pv["spec"]["claimRef"] == {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "ns",
                                      "name": "c0001-0", "uid": "u1"}
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert pv["metadata"]["labels"] == {"bench.pgop.io/scale-pv": "bench-scale-x"}


def test_the_sampler_follows_a_restarted_process_and_says_so():
    import subprocess
    import sys

    from bench.scale_metrics import Sampler
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    second = None
    try:
        current = {"pid": first.pid}
        sampler = Sampler({"operator": first.pid}, follow={"operator": lambda: current["pid"]})
        sampler.sample()
        first.kill()
        first.wait()
        current["pid"] = None  # as proc.pid_of says of a process that went
        sampler.sample()
        second = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        current["pid"] = second.pid
        sampler.sample()
        series = sampler.series["operator"]
        assert series.pid == second.pid and len(series.points) == 2
        assert series.points[1][1] >= series.points[0][1]  # CPU seconds count on
        assert [(name, pid) for _, name, pid in sampler.restarts] == [("operator", None), ("operator", second.pid)]
    finally:
        first.kill()
        if second is not None:
            second.kill()
            second.wait()


def test_the_wait_for_ready_ends_when_only_failed_over_clusters_are_left():
    from collections import Counter

    from bench.scale import failed_over_only
    left = Counter({"Failover/FailoverWaitingForReplicas": 41})
    assert failed_over_only(left, objects_done=True) == 41
    # Something else still moves, or objects are still being made: keep waiting.
    assert failed_over_only(left + Counter({"Creating/Scaling": 1}), objects_done=True) == 0
    assert failed_over_only(left, objects_done=False) == 0
    assert failed_over_only(Counter(), objects_done=True) == 0


def test_process_age_counts_from_the_process_start():
    import os

    from bench.scale_metrics import CLOCK_TICKS, process_age
    started = int(open(f"/proc/{os.getpid()}/stat").read().rsplit(")", 1)[1].split()[19])
    assert process_age(os.getpid(), uptime=f"{started / CLOCK_TICKS + 42.5} 0.0") == pytest.approx(42.5)
    assert process_age(2**22 + 12345) is None  # no such process
