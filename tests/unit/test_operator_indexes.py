"""The operator's watch-fed indexes (pgop.cluster.indexes, pgop.cluster.observe), in kopf's own
index structures: a reconcile planned from them sees what a LIST would show, finds nothing to do
on a settled cluster (and so reads nothing through the API), and hands anything it would do to a
pass planned from the API. The RBAC grants what the watches need."""
from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path

import kopf
import pytest
import yaml
from kopf._core.engines.indexing import OperatorIndexer

from pgop.cluster import controller, indexes, observe, pace
from pgop.cluster.plan import plan_cluster
from pgop.cluster.status import MOVING_REFRESH
from pgop.kernel import names
from pgop.kernel.actions import DELETE, NORMAL, Action
from pgop.kernel.model import Instance
from pgop.runtime import apply
from pgop.runtime.kube import RESOURCES
from tests.unit.test_failover import ha_cluster
from tests.unit.world import NOW

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

# index name -> the function kopf calls for each object it watches
FUNCTIONS = {name: getattr(indexes, name) for name in (*indexes.NAMES, indexes.NODES)}
KIND_OF = {"pgop_clusters": "PgCluster", "pgop_instances": "PgInstance", "pgop_pods": "Pod",
           "pgop_volumes": "PersistentVolumeClaim", "pgop_services": "Service", "pgop_secrets": "Secret",
           "pgop_pdbs": "PodDisruptionBudget", "pgop_service_accounts": "ServiceAccount",
           "pgop_roles": "Role", "pgop_role_bindings": "RoleBinding", "pgop_cordoned_nodes": "Node",
           "pgop_backups": "PgBackup"}


class Watched:
    """kopf's indexers, fed the way kopf feeds them: every event of an object replaces what was
    indexed for it (by its uid), a deletion discards it."""

    def __init__(self) -> None:
        self.indexers = {name: OperatorIndexer() for name in FUNCTIONS}

    def event(self, body: dict) -> None:
        kind = body.get("kind")
        key = (body["metadata"].get("namespace"), body["metadata"]["name"], body["metadata"].get("uid"))
        for name, fn in FUNCTIONS.items():
            if KIND_OF[name] == kind:
                self.indexers[name].replace(key, fn(body=body))

    def deleted(self, body: dict) -> None:
        key = (body["metadata"].get("namespace"), body["metadata"]["name"], body["metadata"].get("uid"))
        for indexer in self.indexers.values():
            indexer.discard(key)

    def reader(self, nodes: bool = True) -> observe.IndexReader:
        return observe.IndexReader({name: i.index for name, i in self.indexers.items()}, nodes, kube=None)  # type: ignore[arg-type]


def settled():
    """A 3-instance cluster after failover's own tests' start (tests.unit.test_failover), its pods
    and volumes labelled and placed as pgop makes them."""
    world, cluster = ha_cluster(3)
    for (kind, _), obj in world.objects.items():
        obj["metadata"].setdefault("namespace", "shop")
        if kind == "Pod":
            obj["metadata"]["labels"]["pgop.io/component"] = "postgres"
    return world, cluster


def watched(world) -> Watched:
    w = Watched()
    for obj in world.objects.values():
        w.event(copy.deepcopy(obj))
    return w


def by_name(objects):
    return sorted(objects or [], key=lambda o: (o["kind"], o["metadata"]["name"]))


def test_the_indexes_show_a_cluster_as_its_lists_and_gets_would():
    world, cluster = settled()
    reader = watched(world).reader()
    seen = controller.observe_cluster(reader, "shop", "orders", cluster)
    listed = world.observed_cluster("orders", pods=True)
    for field in ("instances", "services", "secrets", "pods", "volumes"):
        assert by_name(getattr(seen, field)) == by_name(getattr(listed, field)), field
        assert getattr(seen, field), field  # not vacuous
    for field in ("pdb", "primary_pdb", "service_account", "role", "role_binding"):
        assert getattr(seen, field) == getattr(listed, field) and getattr(seen, field) is not None, field
    assert seen.cordoned_nodes == frozenset()
    # another cluster's objects are not this one's
    assert controller.observe_cluster(reader, "shop", "billing").instances == []
    assert controller.observe_cluster(reader, "other", "orders").instances == []


def test_the_indexes_keep_no_managed_fields_and_leave_the_watched_body_as_it_is():
    """managedFields are up to half of an object's size and no pass reads them: the indexes drop
    them from what they keep, not from kopf's body."""
    world, _ = settled()
    w = Watched()
    bodies = []
    for obj in world.objects.values():
        body = copy.deepcopy(obj)
        body["metadata"]["managedFields"] = [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {}}}]
        bodies.append(body)
        w.event(body)
    assert all(b["metadata"]["managedFields"] for b in bodies)  # kopf's copies untouched
    kept = [obj for i in w.indexers.values() for store in i.index.values() for obj in store]
    assert len(kept) >= len(bodies)  # every object is somewhere (instances and pods under two keys)
    assert not [o for o in kept if "managedFields" in o["metadata"]]
    # what the passes read is the same as without them
    seen = controller.observe_cluster(w.reader(), "shop", "orders")
    assert by_name(seen.pods) == by_name(world.observed_cluster("orders", pods=True).pods)


def test_an_instance_reads_its_volume_and_its_pods_bootstrap_included():
    world, _ = settled()
    name = world.instance_names()[1]
    w = watched(world)
    bootstrap = {"kind": "Pod", "metadata": {"name": names.bootstrap_pod(name), "namespace": "shop", "uid": "b",
                                             "labels": {"pgop.io/cluster": "orders", "pgop.io/instance": name,
                                                        "pgop.io/component": "bootstrap"}}}
    w.event(bootstrap)
    reader = w.reader()
    assert reader.volume("shop", name) == world.objects[("PersistentVolumeClaim", name)]
    assert sorted(p["metadata"]["name"] for p in reader.instance_pods("shop", name)) == \
        sorted([name, names.bootstrap_pod(name)])
    assert names.bootstrap_pod(name) not in [p["metadata"]["name"] for p in reader.postgres_pods("shop", "orders")]
    w.deleted(bootstrap)
    assert [p["metadata"]["name"] for p in w.reader().instance_pods("shop", name)] == [name]


def settled_pass():
    """A pass over the settled cluster planned from the indexes: (the stored cluster, its plan, the
    status it would write)."""
    world, cluster = settled()
    stored = world.cluster(cluster)
    observed = controller.observe_cluster(watched(world).reader(), "shop", "orders", stored)
    plan = plan_cluster(stored, observed, now=NOW)
    return stored, plan, controller.status_for_cluster(stored, observed, plan)


def test_a_settled_cluster_needs_no_pass_through_the_api():
    stored, plan, status = settled_pass()
    assert list(plan) == [] and plan.events == [] and not controller.decision_changed({"status": stored.status}, plan)
    body = {"metadata": {"name": "orders", "namespace": "shop"}, "status": dict(status) | stored.status}
    assert not controller.needs_fresh_pass(body, plan, status)
    # a status that differs from the stored one is written only from a fresh pass
    assert controller.needs_fresh_pass({"metadata": {}, "status": {}}, plan, status)


def test_a_status_to_show_is_written_without_a_pass_through_the_api():
    """The agents' LSNs and heartbeats moved on and the stored ones are a refresh old: that alone
    is one status patch of status.instances. A new readiness, count or phase is one status patch
    of what changed. An action, an Event or a decision hands it to a fresh pass."""
    stored, plan, status = settled_pass()
    body = {"metadata": {"name": "orders", "namespace": "shop"}, "status": copy.deepcopy(dict(status) | stored.status)}
    moved = copy.deepcopy(status)
    for entry in moved["instances"]:
        entry["lastHeartbeat"] = (NOW + timedelta(seconds=MOVING_REFRESH + 1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        entry["lsn"] = "0/6000000"
    assert controller.needs_fresh_pass(body, plan, moved)
    assert controller.status_refresh(body, plan, moved) == {"instances": moved["instances"]}
    # not due yet (a heartbeat 5 s newer): nothing to write at all
    soon = copy.deepcopy(moved)
    for entry in soon["instances"]:
        entry["lastHeartbeat"] = (NOW + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert not controller.needs_fresh_pass(body, plan, soon)
    assert controller.status_refresh(body, plan, soon) is None
    # a steady field of an instance, or anything outside status.instances: the keys that changed
    unready = copy.deepcopy(moved)
    unready["instances"][1]["ready"] = not unready["instances"][1]["ready"]
    assert controller.status_refresh(body, plan, unready) == {"instances": unready["instances"]}
    counted = copy.deepcopy(status) | {"readyInstances": status["readyInstances"] + 1}
    assert controller.status_refresh(body, plan, counted) == {"readyInstances": status["readyInstances"] + 1}
    fewer = copy.deepcopy(moved)
    fewer["instances"] = fewer["instances"][:2]
    assert controller.status_refresh(body, plan, fewer) == {"instances": fewer["instances"]}


def test_an_action_an_event_or_a_decision_is_never_written_from_the_indexes():
    stored, plan, status = settled_pass()
    body = {"metadata": {"name": "orders", "namespace": "shop"}, "status": copy.deepcopy(dict(status) | stored.status)}
    counted = copy.deepcopy(status) | {"readyInstances": status["readyInstances"] + 1}
    acting = copy.deepcopy(plan)
    acting.append(Action(DELETE, "PgInstance", "orders-2", "shop", "scale down"))
    assert controller.status_refresh(body, acting, counted) is None
    telling = copy.deepcopy(plan)
    telling.event(NORMAL, "Something", "happened")
    assert controller.status_refresh(body, telling, counted) is None
    deciding = copy.deepcopy(plan)
    deciding.status = dict(plan.status) | {"targetPrimary": "orders-1"}
    assert controller.decision_changed(body, deciding)
    assert controller.status_refresh(body, deciding, counted) is None


def test_a_gone_primary_pod_in_the_indexes_hands_the_failover_to_a_fresh_pass():
    world, cluster = settled()
    w = watched(world)
    primary = next(i for i in world.instance_names() if world.instance(i).spec.role == "primary")
    w.deleted(world.objects[("Pod", names.postgres_pod(primary))])
    stored = world.cluster(cluster)
    observed = controller.observe_cluster(w.reader(), "shop", "orders", stored)
    assert observed.pods is not None and all(p["metadata"]["name"] != names.postgres_pod(primary)
                                             for p in observed.pods)
    later = NOW + timedelta(seconds=30)
    plan = plan_cluster(stored, observed, now=later)
    status = controller.status_for_cluster(stored, observed, plan)
    assert controller.decision_changed({"status": stored.status}, plan)  # a failover begins
    assert controller.needs_fresh_pass({"metadata": {}, "status": stored.status}, plan, status)


def test_a_cordoned_node_is_indexed_until_it_is_schedulable_again():
    w = Watched()
    node = {"kind": "Node", "metadata": {"name": "n1", "uid": "u1"}, "spec": {"unschedulable": True}}
    w.event(node)
    assert w.reader().cordoned_nodes() == frozenset({"n1"})
    w.event({"kind": "Node", "metadata": {"name": "n1", "uid": "u1"}, "spec": {}})
    assert w.reader().cordoned_nodes() == frozenset()
    # an operator that may not watch Nodes says it does not know, as a 403 on the LIST did
    assert w.reader(nodes=False).cordoned_nodes() is None


def test_unlabelled_objects_are_not_indexed_and_secrets_only_under_their_cluster():
    assert observe.cluster_keys({"metadata": {"name": "s", "namespace": "shop"}}, "Secret") == {}
    assert observe.named_keys({"metadata": {"name": "r", "namespace": "shop"}}, "Role") == {}
    labelled = {"metadata": {"name": "s", "namespace": "shop", "labels": {"pgop.io/cluster": "orders"}}}
    assert list(observe.cluster_keys(labelled, "Secret")) == [("shop", "orders")]
    # a bootstrap pod is its instance's, not among the cluster's Postgres pods
    pod = {"metadata": {"name": "orders-1-bootstrap", "namespace": "shop",
                        "labels": {"pgop.io/cluster": "orders", "pgop.io/instance": "orders-1",
                                   "pgop.io/component": "bootstrap"}}}
    assert list(observe.pod_keys(pod)) == [("instance", "shop", "orders-1")]


def test_a_silent_agent_is_judged_by_its_heartbeat():
    body = {"apiVersion": "pgop.io/v1", "kind": "PgInstance",
            "metadata": {"name": "orders-1", "namespace": "shop", "uid": "u"},
            "spec": {"cluster": "orders", "role": "primary", "storage": {"size": "1Gi"}},
            "status": {"lastHeartbeat": NOW.strftime("%Y-%m-%dT%H:%M:%SZ")}}
    instance = Instance.from_object(body)
    assert not controller.silent_agent(instance, NOW + timedelta(seconds=5))
    assert controller.silent_agent(instance, NOW + timedelta(seconds=90))
    assert controller.silent_agent(Instance.from_object(body | {"status": {}}), NOW)


# ------------------------------------------------------------------------- watches and RBAC

def _grants(name: str, role: str | None = None) -> set[tuple[str, str, str]]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d and d["kind"] == "ClusterRole"]
    return {(g, r, v) for d in docs if role is None or d["metadata"]["name"] == role
            for rule in d["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


@pytest.mark.parametrize("manifest", ["operator.yaml", "operator-namespaced.yaml"])
def test_every_indexed_kind_may_be_listed_and_watched(manifest):
    granted = _grants(manifest)
    for kind in KIND_OF.values():
        resource = RESOURCES[kind]
        for verb in ("list", "watch"):
            assert (resource.group, resource.plural, verb) in granted, (manifest, kind, verb)


def test_the_watches_of_a_clusters_objects_are_narrowed_by_the_api_server():
    settings = kopf.OperatorSettings()
    indexes.narrow_watches(settings=settings)
    registered = {h.selector.any_name for h in kopf.get_default_registry()._indexing.get_all_handlers()
                  if h.selector is not None}
    assert registered - {"pgclusters", "pginstances", "pgbackups"} <= set(indexes.LABEL_SELECTORS)
    assert indexes.LABEL_SELECTORS["secrets"] == "pgop.io/cluster"
    assert indexes.FIELD_SELECTORS == {"nodes": "spec.unschedulable=true"}


def test_what_was_said_of_a_deleted_object_is_forgotten():
    body = {"metadata": {"namespace": "shop", "name": "orders"}}
    apply.remember(body, "archiving", "ok")
    apply.remember({"metadata": {"namespace": "shop", "name": "billing"}}, "archiving", "ok")
    apply.forget("shop", "orders")
    assert apply.remember(body, "archiving") is None
    assert apply.remember({"metadata": {"namespace": "shop", "name": "billing"}}, "archiving") == "ok"


# ---- clusters with backups: the schedule and retention previewed on the indexes

def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_backup_cluster_with_nothing_due_needs_no_pass_through_the_api():
    """Before, a cluster with spec.backup re-read everything through the API on every pass."""
    from pgop.backup.handlers import preview_backups
    from tests.unit.test_backup_plan import make_cluster, pgbackup
    w = Watched()
    w.event(pgbackup("b1"))
    w.event(pgbackup("elsewhere", uid="x") | {"metadata": {"name": "elsewhere", "namespace": "other", "uid": "x"}})
    reader = w.reader()
    assert [b["metadata"]["name"] for b in reader.backups("shop")] == ["b1"]
    cluster = make_cluster(schedule="0 0 1 1 *")  # once a year, and the cluster is new: not due
    status: dict = {}
    assert preview_backups({"metadata": {"name": "orders", "namespace": "shop", "creationTimestamp": _now()}},
                           cluster, status, reader)
    # what the pass from the API would write is there, to compare with the stored status
    assert status["lastBackup"]["name"] == "b1" and status["lastBackup"]["phase"] == "Completed"
    assert [c["reason"] for c in status["conditions"] if c["type"] == "LastBackupSucceeded"] == ["BackupCompleted"]


def test_a_due_scheduled_backup_hands_the_pass_to_the_api():
    from pgop.backup.handlers import preview_backups
    from tests.unit.test_backup_plan import make_cluster
    cluster = make_cluster(schedule="* * * * *")
    old = {"metadata": {"name": "orders", "namespace": "shop", "creationTimestamp": "2026-01-01T00:00:00Z"}}
    assert not preview_backups(old, cluster, {}, Watched().reader())


def test_a_steady_cluster_with_a_schedule_has_its_full_pass_when_its_next_backup_is_due():
    """Between a steady cluster's resyncs only its heartbeats are looked at: the backup schedule
    brings the full pass (whose preview hands a due backup to the API) to the due time."""
    from pgop.backup.handlers import next_scheduled_backup
    from pgop.runtime.apply import cluster_due
    from tests.unit.test_backup_plan import make_cluster
    cluster = make_cluster(schedule="30 2 * * *")
    now = datetime(2026, 12, 4, 2, 29, 50, tzinfo=UTC)
    assert next_scheduled_backup(cluster, now) == datetime(2026, 12, 4, 2, 30, tzinfo=UTC)
    assert cluster_due(cluster, now) == datetime(2026, 12, 4, 2, 30, tzinfo=UTC)  # registered
    assert pace.next_pass_in(True, [], now, due=cluster_due(cluster, now)).resync == 10 + pace.MARGIN
    assert next_scheduled_backup(make_cluster(), now) is None  # no schedule: nothing due
    assert next_scheduled_backup(make_cluster(schedule="61 * * * *"), now) is None  # refused: the pass says so


def test_a_settled_cluster_waits_for_its_first_heartbeat_to_go_stale_and_a_lost_stream_hurries_it():
    """The pace of the timed passes (pgop.cluster.pace) on the shapes the operator really holds: the
    status a pass computes for a settled cluster, its PgInstances as indexed."""
    world, cluster = settled()
    now = datetime.now(UTC)  # status_for_cluster judges heartbeats by the clock
    for (kind, _), obj in world.objects.items():
        if kind == "PgInstance":  # beats 1, 2 and 3 s ago
            age = 1 + sorted(world.instance_names()).index(obj["metadata"]["name"])
            obj["status"]["lastHeartbeat"] = (now - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    stored = world.cluster(cluster)
    observed = controller.observe_cluster(watched(world).reader(), "shop", "orders", stored)
    plan = plan_cluster(stored, observed, now=now)
    status = controller.status_for_cluster(stored, observed, plan)
    body = {"metadata": {"name": "orders", "namespace": "shop", "generation": stored.generation}, "status": status}
    instances = list(observed.instances)
    assert status["phase"] == "Ready" and pace.cluster_steady(body, instances)
    beats = pace.heartbeats(instances)
    assert len(beats) == 3 and None not in beats
    # the oldest beat (3 s, or 4 s with the second cut off) goes stale in 11-12 s: looked at then
    steady = pace.next_pass_in(True, beats, now)
    assert isinstance(steady, pace.Steady) and steady.resync == pace.RESYNC
    assert steady.look == pace.LOOK_EVERY  # sooner than the 11-12 s its heartbeats would allow
    # 9 s later, with no new beat, the oldest goes stale in 2-3 s; 13 s later the look asks for a pass
    assert 2 <= pace.look_again_in(True, beats, now + timedelta(seconds=9)) <= 3 + pace.MARGIN
    assert pace.look_again_in(True, beats, now + timedelta(seconds=13)) is None
    # A replica reports that it lost the primary's WAL stream: every FAST seconds again.
    replica = next(i for i in instances if (i.get("status") or {}).get("role") == "replica")
    replica["status"] = dict(replica["status"], walReceiver="stopped")
    assert not pace.cluster_steady(body, instances)


def test_a_steady_clusters_look_sees_a_cordon_and_a_report_but_not_a_new_lsn(monkeypatch):
    """What a look compares with the cluster's last pass (pgop.cluster.handlers._cluster_view):
    a drain's cordon and an agent's new report are news (a pass), an agent's new LSN is not."""
    from pgop.cluster import handlers
    world, _ = settled()
    w = watched(world)
    monkeypatch.setattr(indexes, "indexed", lambda index, ns, name: None)  # the PgCluster as not indexed
    key = ("shop", "orders")
    before = handlers._cluster_view(key, w.reader())
    assert before == handlers._cluster_view(key, w.reader())
    instance = next(copy.deepcopy(o) for (kind, _), o in world.objects.items() if kind == "PgInstance")
    w.event({**instance, "status": {**instance.get("status", {}), "lsn": "0/FFFFFF"}})
    assert handlers._cluster_view(key, w.reader()) == before
    w.event({**instance, "status": {**instance.get("status", {}), "pendingRestart": True}})
    reported = handlers._cluster_view(key, w.reader())
    assert reported != before
    w.event({"kind": "Node", "metadata": {"name": "n1", "uid": "u1"}, "spec": {"unschedulable": True}})
    assert handlers._cluster_view(key, w.reader()) != reported


def test_the_status_a_pass_writes_counts_an_instance_ready_only_once_its_indexed_pod_is_ready():
    """The pods the cluster pass reads from its indexes reach the status: an agent's `ready` is not
    enough while the kubelet has not marked its pod Ready (the Services do not route to it)."""
    world, cluster = settled()
    now = datetime.now(UTC)
    beat = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    for (kind, _), obj in world.objects.items():
        if kind == "PgInstance":
            obj["status"]["lastHeartbeat"] = beat
            obj["status"]["conditions"] = [{"type": "Ready", "status": "True", "lastTransitionTime": beat}]
    primary_pod = next(obj for (kind, _), obj in world.objects.items()
                       if kind == "Pod" and obj["metadata"]["labels"]["pgop.io/instance"] == "orders-0")
    primary_pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    stored = world.cluster(cluster)
    observed = controller.observe_cluster(watched(world).reader(), "shop", "orders", stored)
    status = controller.status_for_cluster(stored, observed, plan_cluster(stored, observed, now=now))
    assert status["readyInstances"] == 2
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PrimaryNotReady")
    assert "its pod" in ready["message"] and "is not Ready" in ready["message"]
