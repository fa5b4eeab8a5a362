"""Hibernation (`pgop hibernate on|off`, pgop.kernel.hibernation) through the cluster and instance
planners against the in-memory world: replicas stop first once caught up, the primary last, no
failover while the pods are gone, nothing created or scaled, and waking brings every instance back
with the role it had."""
from __future__ import annotations

from datetime import timedelta

from pgop.backup.plan import plan_backups
from pgop.cluster.plan import plan_instance
from pgop.cluster.status import cluster_status
from pgop.kernel import hibernation
from pgop.kernel.actions import DELETE, PATCH
from pgop.kernel.conditions import find_condition
from tests.unit.test_failover import ha_cluster, spec_of, step, with_pods
from tests.unit.world import NOW, make_cluster

T = NOW


def ask(world, value):
    world.cluster_annotations[hibernation.ANNOTATION_HIBERNATION] = value


def instance_controllers(world):
    """What each instance's controller does with its spec: the pods of hibernated instances go."""
    deleted = []
    for name in world.instance_names():
        body = world.objects[("PgInstance", name)]
        pvc = world.objects.get(("PersistentVolumeClaim", name))
        result = plan_instance(body, pvc, world.pods_of(name))
        for action in result:
            if action.kind == "Pod" and action.verb == DELETE and "hibernated" in action.reason:
                world.apply([action])
                deleted.append(action.name)
    return deleted


def hibernated(world):
    return sorted(n for n in world.instance_names() if spec_of(world, n).get("hibernated"))


def phase(world):
    return (world.cluster_status.get("hibernation") or {}).get("phase")


def test_replicas_stop_first_once_caught_up_then_the_primary_and_the_cluster_is_hibernated():
    world, cluster = ha_cluster()
    ask(world, "on")
    # orders-0 reported 0/5000000, the replicas received 0/4000000: they catch up first.
    result = step(world, cluster)
    assert phase(world) == "Hibernating"
    assert hibernated(world) == []
    assert any("received the primary's last WAL" in w for w in result.waiting)
    assert [e.reason for e in result.events] == ["Hibernating"]
    for name in ("orders-1", "orders-2"):
        world.report(name, lsn="0/5000000", receivedLSN="0/5000000", replayLSN="0/5000000",
                     walReceiver="streaming", following="orders-0", systemIdentifier="7001")
    result = step(world, cluster)
    assert hibernated(world) == ["orders-1", "orders-2"]  # the primary keeps running
    assert instance_controllers(world) == ["orders-1", "orders-2"]
    result = step(world, cluster)
    assert hibernated(world) == ["orders-0", "orders-1", "orders-2"]
    assert [a.name for a in result if a.kind == "PgInstance"] == ["orders-0"]
    assert phase(world) == "Hibernating"
    assert instance_controllers(world) == ["orders-0"]
    result = step(world, cluster)
    assert phase(world) == "Hibernated"
    assert [e.reason for e in result.events] == ["Hibernated"]
    # Nothing more: no failover of the gone primary, no pod made again, volumes and instances kept.
    later = step(world, cluster, at=T + timedelta(minutes=10))
    assert [a for a in later] == []
    assert not world.cluster_status.get("failover")
    assert world.cluster_status["currentPrimary"] == world.cluster_status["targetPrimary"] == "orders-0"
    assert instance_controllers(world) == []
    assert len(world.all("PersistentVolumeClaim")) == 3 and len(world.all("PgInstance")) == 3
    for name in world.instance_names():
        assert any("hibernated" in w for w in plan_instance(world.objects[("PgInstance", name)],
                                                             world.objects[("PersistentVolumeClaim", name)],
                                                             []).waiting)


def test_a_replica_that_does_not_catch_up_stops_after_the_timeout_with_a_warning():
    world, cluster = ha_cluster(2)
    ask(world, "on")
    step(world, cluster)
    assert hibernated(world) == []
    late = T + timedelta(seconds=hibernation.CATCH_UP_TIMEOUT + 1)
    for name in world.instance_names():  # the agents keep beating
        world.report(name, heartbeat=late, lsn="0/5000000" if name == "orders-0" else "0/4000000",
                     receivedLSN=None if name == "orders-0" else "0/4000000", walReceiver="streaming",
                     following="orders-0", systemIdentifier="7001")
    result = step(world, cluster, at=late)
    assert hibernated(world) == ["orders-1"]
    assert [e.reason for e in result.events] == ["HibernationCatchUpTimeout"]


def hibernate(instances=3):
    world, cluster = ha_cluster(instances)
    ask(world, "on")
    for _ in range(6):
        for name in world.instance_names():
            if name != "orders-0":
                world.report(name, lsn="0/5000000", receivedLSN="0/5000000", walReceiver="streaming",
                             following="orders-0", systemIdentifier="7001")
        step(world, cluster)
        instance_controllers(world)
    assert phase(world) == "Hibernated"
    return world, cluster


def test_waking_brings_every_instance_back_with_its_role_and_failover_waits_for_the_primary():
    world, cluster = hibernate()
    roles = {n: (spec_of(world, n)["role"], spec_of(world, n)["primary"]) for n in world.instance_names()}
    ask(world, "off")
    wake_at = T + timedelta(minutes=30)
    result = step(world, cluster, at=wake_at)
    assert hibernated(world) == []
    assert phase(world) == "Waking"
    assert [e.reason for e in result.events] == ["Waking"]
    assert {n: (spec_of(world, n)["role"], spec_of(world, n)["primary"]) for n in world.instance_names()} == roles
    # The pods come back (the instance controllers create them); the primary's heartbeat is still
    # the old one: no failover while it starts.
    for name in world.instance_names():
        created = plan_instance(world.objects[("PgInstance", name)],
                                world.objects[("PersistentVolumeClaim", name)], [])
        assert [(a.verb, a.kind) for a in created] == [("create", "Pod")]
    with_pods(world)
    still = step(world, cluster, at=wake_at + timedelta(seconds=40))
    assert not world.cluster_status.get("failover") and phase(world) == "Waking"
    assert any("waking" in w for w in still.waiting)
    world.report("orders-0", heartbeat=wake_at + timedelta(seconds=41), lsn="0/5000000", systemIdentifier="7001")
    done = step(world, cluster, at=wake_at + timedelta(seconds=42))
    assert world.cluster_status.get("hibernation") is None
    assert "Awake" in [e.reason for e in done.events]
    assert world.cluster_status["currentPrimary"] == "orders-0"
    # awake: failover watches the primary again
    del world.objects[("Pod", "orders-0")]
    result = step(world, cluster, at=wake_at + timedelta(seconds=43))
    assert "FailoverStarted" in [e.reason for e in result.events]


def test_a_hibernated_instance_gets_no_pod_and_no_new_volume():
    world, cluster = hibernate(2)
    body = world.objects[("PgInstance", "orders-1")]
    result = plan_instance(body, None, [])
    assert list(result) == []
    assert any("hibernated" in w for w in result.waiting)


def test_waking_says_waking_in_the_phase_until_ready():
    world, cluster = hibernate(2)
    ask(world, "off")
    step(world, cluster, at=T + timedelta(minutes=30))
    status = cluster_status(world.cluster(cluster), world.all("PgInstance"), now=T + timedelta(minutes=30),
                            ha={"hibernation": world.cluster_status["hibernation"]})
    assert status["phase"] == "Waking"
    assert find_condition(status["conditions"], "Hibernated")["reason"] == "Waking"


def test_scaling_and_spec_changes_wait_while_hibernated():
    world, cluster = hibernate(2)
    bigger = make_cluster(instances=4)
    result = step(world, bigger, at=T + timedelta(minutes=5))
    assert [a for a in result if a.kind == "PgInstance"] == []


def test_hibernation_waits_for_a_failover_in_progress():
    world, cluster = ha_cluster()
    del world.objects[("Pod", "orders-0")]
    step(world, cluster)  # the failover starts
    assert world.cluster_status["failover"]
    ask(world, "on")
    result = step(world, cluster)
    assert phase(world) is None
    assert any("waits for the failover" in w for w in result.waiting)


def test_a_value_other_than_on_or_off_is_said_and_the_cluster_stays_awake():
    world, cluster = ha_cluster(2)
    ask(world, "yes")
    result = step(world, cluster)
    assert phase(world) is None and hibernated(world) == []
    assert any("neither 'on' nor 'off'" in w for w in result.waiting)


def test_the_status_says_hibernated_not_degraded():
    world, cluster = hibernate(2)
    stored = world.cluster(cluster)
    status = cluster_status(stored, world.all("PgInstance"), now=T + timedelta(minutes=5),
                            ha={"hibernation": world.cluster_status["hibernation"]})
    assert status["phase"] == "Hibernated"
    conditions = status["conditions"]
    assert find_condition(conditions, "Hibernated")["status"] == "True"
    assert find_condition(conditions, "Ready")["reason"] == "Hibernated"
    assert find_condition(conditions, "Degraded")["status"] == "False"


def test_no_scheduled_backup_while_hibernated_and_a_due_one_is_skipped():
    world, cluster = hibernate(2)
    s3 = {"bucket": "b", "endpoint": "http://s3:7070", "credentialsSecret": "c"}
    backed = make_cluster(instances=2, backup={"s3": s3, "schedule": "0 * * * *"})
    stored = world.cluster(backed)
    stored.status["lastScheduledBackupTime"] = "2026-11-22T10:00:00Z"
    plan, _ = plan_backups(stored, [], T + timedelta(hours=2))
    assert [a for a in plan if a.kind == "PgBackup"] == []
    assert any("hibernated" in w for w in plan.waiting)
    awake = make_cluster(instances=2, backup={"s3": s3, "schedule": "0 * * * *"})
    awake.status["lastScheduledBackupTime"] = "2026-11-22T10:00:00Z"
    plan, _ = plan_backups(awake, [], T + timedelta(hours=2))
    assert [a.verb for a in plan if a.kind == "PgBackup"] == ["create"]


def test_patches_are_plain_spec_merge_patches():
    world, cluster = ha_cluster(2)
    ask(world, "on")
    world.report("orders-1", lsn="0/5000000", receivedLSN="0/5000000", walReceiver="streaming",
                 following="orders-0", systemIdentifier="7001")
    result = step(world, cluster)
    [action] = [a for a in result if a.kind == "PgInstance"]
    assert (action.verb, action.name, action.patch) == (PATCH, "orders-1", {"spec": {"hibernated": True}})


# ------------------------------------------------------------------------------ the commands

def _cluster(sync=0, mode="preferred", **status):
    return {"metadata": {"name": "orders", "annotations": {}},
            "spec": {"instances": 3, "synchronousReplicas": sync, "synchronousMode": mode},
            "status": {"currentPrimary": "orders-0", "targetPrimary": "orders-0", **status}}


def _members(*ready):
    return [{"metadata": {"name": f"orders-{n}"}, "status": {"ready": r}} for n, r in enumerate(ready)]


def test_destroy_refuses_the_primary_and_names_promote():
    from pgop.cli_hibernate import destroy_problem
    problem = destroy_problem(_cluster(), _members(True, True, True), "orders-0", force=True)
    assert "is the primary" in problem and "pgop promote orders" in problem


def test_destroy_refuses_an_unknown_instance_a_failover_and_a_hibernated_cluster():
    from pgop.cli_hibernate import destroy_problem
    assert "not an instance" in destroy_problem(_cluster(), _members(True, True), "orders-7", force=False)
    assert "Failover runs" in destroy_problem(_cluster(failover={"kind": "Failover"}), _members(True, True),
                                         "orders-1", force=False)
    hib = _cluster(hibernation={"phase": "Hibernated"})
    assert "hibernate off" in destroy_problem(hib, _members(True, True), "orders-1", force=False)


def test_destroy_guards_the_synchronous_quorum_unless_forced():
    from pgop.cli_hibernate import destroy_problem
    problem = destroy_problem(_cluster(sync=1, mode="required"), _members(True, True, False), "orders-1", force=False)
    assert "spec.synchronousReplicas 1" in problem and "--force" in problem and "commits wait" in problem
    assert destroy_problem(_cluster(sync=1), _members(True, True, False), "orders-1", force=True) == ""
    assert destroy_problem(_cluster(sync=1), _members(True, True, True), "orders-1", force=False) == ""
    assert destroy_problem(_cluster(), _members(True, True), "orders-1", force=False) == ""


def test_hibernate_follows_until_hibernated_or_ready():
    from pgop.cli_hibernate import hibernation_progress
    assert hibernation_progress({"status": {"phase": "Hibernating", "hibernation": {"phase": "Hibernating"}}},
                                True) == (False, "Hibernating")
    assert hibernation_progress({"status": {"hibernation": {"phase": "Hibernated"}}}, True)[0]
    assert not hibernation_progress({"status": {"phase": "Creating", "hibernation": {"phase": "Waking"}}}, False)[0]
    assert hibernation_progress({"status": {"phase": "Ready"}}, False) == (True, "Ready")
