from dataclasses import replace
from datetime import timedelta

from pgop.cluster.status import MOVING_REFRESH, cluster_status, worth_writing
from pgop.kernel.conditions import set_conditions
from pgop.kernel.model import Cluster
from tests.unit.world import NOW, World, cluster_body, make_cluster, plan, running_cluster


def condition(status, kind):
    return next(c for c in status["conditions"] if c["type"] == kind)


def healthy(instances=3, **spec):
    world, cluster = running_cluster(instances, **spec)
    world.report("orders-0", lsn="0/5000000")
    for name in world.instance_names()[1:]:
        world.report(name, lsn="0/4000000")
    return world, cluster


def status_of(world, cluster, at=NOW, **kwargs):
    return cluster_status(cluster, world.all("PgInstance"), now=at, **kwargs)


def test_a_healthy_cluster_says_so():
    world, cluster = healthy()
    status = status_of(world, cluster)
    assert status["phase"] == "Ready"
    assert status["currentPrimary"] == "orders-0"
    assert status["readyInstances"] == 3
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Progressing")["status"] == "False"
    assert condition(status, "Degraded")["status"] == "False"
    assert status["timeline"] == 1


def test_each_instance_shows_role_lsn_and_lag_in_bytes():
    world, cluster = healthy()
    entries = {e["name"]: e for e in status_of(world, cluster)["instances"]}
    assert [e["name"] for e in status_of(world, cluster)["instances"]] == ["orders-0", "orders-1", "orders-2"]
    assert entries["orders-0"]["role"] == "primary" and "lagBytes" not in entries["orders-0"]
    assert entries["orders-1"]["role"] == "replica"
    assert entries["orders-1"]["lagBytes"] == 0x1000000  # 16 MiB behind
    assert entries["orders-1"]["lsn"] == "0/4000000" and entries["orders-1"]["ready"] is True


def test_instance_entries_hold_no_nulls_the_crd_would_refuse():
    world, cluster = running_cluster(2)
    world.objects[("PgInstance", "orders-1")]["status"] = {}
    for entry in status_of(world, cluster)["instances"]:
        assert None not in entry.values()


def test_a_stale_replica_heartbeat_makes_ready_false_with_a_reason():
    world, cluster = healthy()
    world.report("orders-2", lsn="0/4000000", heartbeat=NOW - timedelta(seconds=45))
    status = status_of(world, cluster)
    ready = condition(status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "HeartbeatStale"
    assert "orders-2" in ready["message"] and "45s" in ready["message"]
    assert condition(status, "Degraded")["status"] == "True"
    assert status["readyInstances"] == 2
    assert status["phase"] == "Degraded"
    assert {e["name"]: e["ready"] for e in status["instances"]}["orders-2"] is False


def test_a_stale_primary_is_not_believed_even_if_it_said_ready():
    world, cluster = healthy()
    world.report("orders-0", ready=True, heartbeat=NOW - timedelta(seconds=60))
    status = status_of(world, cluster)
    assert condition(status, "Ready")["reason"] == "PrimaryHeartbeatStale"
    degraded = condition(status, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "PrimaryUnavailable"
    assert status["phase"] == "Degraded"


def test_the_heartbeat_timeout_is_a_parameter():
    world, cluster = healthy()
    world.report("orders-1", heartbeat=NOW - timedelta(seconds=20))
    assert condition(status_of(world, cluster), "Ready")["status"] == "False"
    assert condition(status_of(world, cluster, heartbeat_timeout=30), "Ready")["status"] == "True"


def test_a_new_cluster_is_creating_and_progressing_not_degraded():
    world, cluster = World(), make_cluster(synchronousReplicas=1)
    world.apply(plan(world, cluster))
    status = status_of(world, cluster)
    assert status["phase"] == "Creating"
    assert condition(status, "Ready")["status"] == "False"
    assert condition(status, "Progressing")["status"] == "True"
    assert condition(status, "Degraded")["status"] == "False"
    world.report("orders-0")
    world.apply(plan(world, cluster))  # the replicas are being cloned
    status = status_of(world, cluster)
    assert status["phase"] == "Creating"
    assert condition(status, "Degraded")["status"] == "False"
    assert "orders-1" in condition(status, "Progressing")["message"]


def test_waiting_notes_of_the_plan_show_in_progressing():
    world = World()
    cluster = make_cluster(bootstrap={"recovery": {"source": "gone", "s3": {
        "bucket": "pg-backups", "path": "archive", "endpoint": "http://s3.local:7070", "credentialsSecret": "c"}}})
    first = plan(world, cluster)
    world.apply(first)
    status = status_of(world, cluster, waiting=first.waiting)
    assert "created once the primary orders-0 is ready" in condition(status, "Progressing")["message"]


def test_required_sync_without_enough_replicas_says_commits_wait():
    world, cluster = healthy(3, synchronousReplicas=2, synchronousMode="required")
    world.report("orders-2", ready=False)
    degraded = condition(status_of(world, cluster), "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "SynchronousQuorumLost"
    assert "1 of the 2 synchronous replicas required are ready: commits wait" in degraded["message"]
    assert "orders-2: not ready" in degraded["message"]


def test_preferred_sync_without_enough_replicas_says_commits_continue():
    world, cluster = healthy(2, synchronousReplicas=1)
    world.report("orders-1", ready=False)
    degraded = condition(status_of(world, cluster), "Degraded")
    assert degraded["reason"] == "InstancesUnavailable"
    assert "0 of 1 synchronous replicas are ready: commits continue" in degraded["message"]


def test_a_rollout_in_progress_is_updating():
    world, cluster = healthy()
    world.objects[("PgInstance", "orders-1")]["metadata"]["generation"] += 1  # patched, not yet applied
    status = status_of(world, cluster)
    assert status["phase"] == "Updating"
    assert condition(status, "Progressing")["reason"] == "RollingUpdate"


def test_scaling_a_ready_cluster_is_scaling_not_creating():
    world, cluster = healthy()
    previous = status_of(world, cluster)
    bigger = Cluster.from_object(cluster_body(instances=5) | {"status": previous})
    status = cluster_status(bigger, world.all("PgInstance"), now=NOW)
    assert status["phase"] == "Scaling"
    assert condition(status, "Progressing")["reason"] == "ScalingUp"


def test_transition_time_moves_only_when_the_condition_flips():
    world, cluster = healthy()
    first = status_of(world, cluster)
    cluster = Cluster.from_object(cluster_body() | {"status": first})
    later = status_of(world, cluster, at=NOW + timedelta(seconds=5))
    assert condition(later, "Ready")["lastTransitionTime"] == condition(first, "Ready")["lastTransitionTime"]
    world.report("orders-1", ready=False, heartbeat=NOW + timedelta(seconds=10))
    flipped = status_of(world, cluster, at=NOW + timedelta(seconds=10))
    assert condition(flipped, "Ready")["lastTransitionTime"] == "2026-11-22T12:00:10Z"


def test_conditions_of_other_controllers_are_kept():
    previous = [{"type": "ContinuousArchiving", "status": "True", "reason": "Archiving", "message": "",
                 "lastTransitionTime": "2026-11-01T00:00:00Z"}]
    merged = set_conditions(previous, [{"type": "Ready", "status": "True", "reason": "x", "message": ""}], now=NOW,
                            generation=4)
    assert merged[0] == previous[0]
    assert merged[1]["observedGeneration"] == 4


def test_no_primary_is_degraded():
    world, cluster = healthy()
    world.objects[("PgInstance", "orders-0")]["spec"]["role"] = "replica"
    status = status_of(world, cluster)
    assert status["currentPrimary"] is None
    assert condition(status, "Degraded")["reason"] == "NoPrimary"
    assert condition(status, "Ready")["reason"] == "NoPrimary"


def test_a_new_cluster_whose_first_primary_has_not_reported_is_creating_not_degraded():
    world = World()
    cluster = make_cluster(instances=3)
    world.apply(plan(world, cluster))  # the first primary's PgInstance exists, nothing reported yet
    ha = {"targetPrimary": "orders-0", "currentPrimary": None}
    status = status_of(world, cluster, ha=ha)
    assert status["phase"] == "Creating" and status["currentPrimary"] is None
    assert condition(status, "Degraded")["status"] == "False"
    assert condition(status, "Ready")["reason"] == "PrimaryNotReady"
    # a cluster that had a primary and lost it is still degraded
    lost = status_of(world, cluster, ha={"targetPrimary": "", "currentPrimary": None})
    assert lost["phase"] == "Degraded" and condition(lost, "Degraded")["reason"] == "NoPrimary"


def test_two_instances_running_as_primary_is_called_out():
    world, cluster = healthy()
    world.report("orders-1", role="primary")
    degraded = condition(status_of(world, cluster), "Degraded")
    assert degraded["reason"] == "MultiplePrimaries" and "orders-0, orders-1" in degraded["message"]


def test_a_publish_path_outside_the_namespace_degrades_the_cluster_and_says_why():
    world, cluster = healthy(publish={"vaultPath": "secret/data/k8s/billing/k8s/shop/db"})
    status = status_of(world, cluster)
    degraded = condition(status, "Degraded")
    assert status["phase"] == "Degraded" and degraded["status"] == "True"
    assert degraded["reason"] == "PathOutsideNamespace"
    assert degraded["message"].startswith("spec.publish.vaultPath 'secret/data/k8s/billing/k8s/shop/db'")
    assert condition(status, "Ready")["status"] == "True"  # the database itself is fine


def test_a_restoring_instance_shows_its_progress_and_a_failed_restore_degrades_the_cluster():
    world = World()
    cluster = make_cluster(instances=1)
    world.apply(plan(world, cluster))  # the PgInstance exists; its bootstrap pod restores
    body = world.get("PgInstance", "orders-0")
    body["status"] = {"restore": {"phase": "Replaying", "walFilesRestored": 40, "attempt": 1}}
    for ha in (None, {"targetPrimary": "orders-0", "currentPrimary": None}):
        status = status_of(world, cluster, ha=ha)
        assert "orders-0 (restore Replaying, 40 WAL files restored)" in condition(status, "Progressing")["message"]
        assert condition(status, "Degraded")["status"] == "False" and status["phase"] == "Creating"

    body["status"] = {"restore": {"phase": "Failed", "attempt": 3,
                                  "message": "the restore failed 3 times; the last error: S3 unreachable"}}
    status = status_of(world, cluster)
    degraded = condition(status, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "RestoreFailed"
    assert "orders-0: the restore failed 3 times; the last error: S3 unreachable" in degraded["message"]
    assert status["phase"] == "Degraded"
    # as the controller sees it (the first primary has never reported: no currentPrimary yet)
    status = status_of(world, cluster, ha={"targetPrimary": "orders-0", "currentPrimary": None})
    assert status["phase"] == "Degraded" and condition(status, "Degraded")["reason"] == "RestoreFailed"


def test_a_restore_refused_for_its_encryption_key_says_so_in_the_reason():
    from pgop.backup.encryption import Key, Keyring, key_mismatch
    world = World()
    cluster = make_cluster(instances=1)
    world.apply(plan(world, cluster))
    error = key_mismatch("backup nightly", "00112233aabbccdd", Keyring((Key.from_bytes(b"k" * 32),)))
    body = world.get("PgInstance", "orders-0")
    body["status"] = {"restore": {"phase": "Failed", "attempt": 3,
                                  "message": f"the restore failed 3 times; the last error: {error}"}}
    degraded = condition(status_of(world, cluster), "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "EncryptionKeyMismatch"
    assert "encrypted with the key of id 00112233aabbccdd" in degraded["message"]
    # a restored cluster's instance is no primary until its restore finished: the refusal is
    # still the reason, not the missing primary it causes
    body["spec"].pop("role", None)
    degraded = condition(status_of(world, cluster), "Degraded")
    assert degraded["reason"] == "EncryptionKeyMismatch", degraded


# ---- when the operator writes the PgCluster status (worth_writing)

def test_a_new_heartbeat_or_wal_position_alone_is_not_written_at_once():
    """Agents report every few seconds; an idle or busy but healthy cluster's status must not be
    rewritten on each report (every write wakes every watcher of the PgCluster)."""
    world, cluster = healthy()
    written = status_of(world, cluster)
    cluster = replace(cluster, status=written)  # as the operator wrote it
    world.report("orders-0", lsn="0/9000000", heartbeat=NOW + timedelta(seconds=4))
    for name in world.instance_names()[1:]:
        world.report(name, lsn="0/8000000", heartbeat=NOW + timedelta(seconds=5))
    desired = status_of(world, cluster, at=NOW + timedelta(seconds=6))
    assert desired != written  # the LSNs and heartbeats did move
    assert not worth_writing(written, desired)


def test_wal_positions_are_refreshed_every_five_minutes():
    world, cluster = healthy()
    written = status_of(world, cluster)
    cluster = replace(cluster, status=written)  # as the operator wrote it
    world.report("orders-1", lsn="0/4800000", heartbeat=NOW + timedelta(seconds=MOVING_REFRESH))
    desired = status_of(world, cluster, at=NOW + timedelta(seconds=MOVING_REFRESH))
    assert worth_writing(written, desired)
    assert {e["name"]: e.get("lagBytes") for e in desired["instances"]}["orders-1"] == 0x800000


def test_any_change_of_state_is_written_at_once():
    world, cluster = healthy()
    written = status_of(world, cluster)
    cluster = replace(cluster, status=written)  # as the operator wrote it
    world.report("orders-2", ready=False, heartbeat=NOW + timedelta(seconds=2))
    assert worth_writing(written, status_of(world, cluster, at=NOW + timedelta(seconds=2)))
    world, cluster = healthy()
    written = status_of(world, cluster)
    cluster = replace(cluster, status=written)  # as the operator wrote it
    world.report("orders-1", heartbeat=NOW + timedelta(seconds=2), walReceiver="stopped")
    assert worth_writing(written, status_of(world, cluster, at=NOW + timedelta(seconds=2)))
    # an instance's first report, and a phase change, too
    assert worth_writing({}, written)
    assert worth_writing(written, {**written, "phase": "Degraded"})


def test_a_stale_heartbeat_is_written_when_it_makes_the_instance_not_ready():
    world, cluster = healthy()
    written = status_of(world, cluster)
    cluster = replace(cluster, status=written)  # as the operator wrote it
    later = NOW + timedelta(seconds=20)  # past the heartbeat timeout, no new report
    assert worth_writing(written, status_of(world, cluster, at=later))


def test_a_cluster_is_not_ready_until_the_instances_it_removes_are_gone():
    # Scaled down from 3 to 2: orders-2 is deleted but its finalizer holds it (its pod stops, the
    # primary drops its slot). The two that stay are ready, yet the cluster has not settled.
    world, _ = healthy()
    world.objects[("PgInstance", "orders-2")]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    smaller = Cluster.from_object(cluster_body(instances=2) | {"status": status_of(*healthy())})
    status = cluster_status(smaller, world.all("PgInstance"), now=NOW)
    assert status["phase"] == "Scaling"
    assert [e["name"] for e in status["instances"]] == ["orders-0", "orders-1"]
    assert status["readyInstances"] == 2
    assert condition(status, "Ready")["status"] == "True"  # the two it wants serve
    progressing = condition(status, "Progressing")
    assert (progressing["status"], progressing["reason"], progressing["message"]) == \
        ("True", "RemovingInstances", "removing orders-2")
    assert condition(status, "Degraded")["status"] == "False"
    # gone: Ready
    del world.objects[("PgInstance", "orders-2")]
    assert cluster_status(smaller, world.all("PgInstance"), now=NOW)["phase"] == "Ready"


def _ready_since(world, name, at):
    world.report(name, conditions=[{"type": "Ready", "status": "True",
                                    "lastTransitionTime": at.strftime("%Y-%m-%dT%H:%M:%SZ")}], pod=name)


def _new_primary_ready_for(seconds):
    """A new one-instance cluster whose agent said ready `seconds` ago."""
    world, cluster = World(), make_cluster(instances=1)
    world.apply(plan(world, cluster))
    _ready_since(world, "orders-0", NOW - timedelta(seconds=seconds))
    return world, cluster


def _pods(ready=(), not_ready=()):
    def pod(name, ok):
        return {"kind": "Pod", "metadata": {"name": name},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ok else "False"}]}}
    return {name: pod(name, True) for name in ready} | {name: pod(name, False) for name in not_ready}


def test_a_new_cluster_is_ready_once_the_kubelet_marks_its_pods_ready_not_when_its_agents_say_so():
    # The Services route to a pod only once its Ready condition is True; a client that connects
    # the moment the cluster says Ready must get through.
    world, cluster = _new_primary_ready_for(1)
    status = status_of(world, cluster, pods=_pods(not_ready=["orders-0"]))
    assert status["phase"] == "Creating"
    assert status["readyInstances"] == 0
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PrimaryNotReady")
    assert "orders-0: its agent is ready, its pod orders-0 is not Ready" in ready["message"]
    progressing = condition(status, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "PodsNotReadyYet")
    assert condition(status, "Degraded")["status"] == "False"  # coming up, not missing
    status = status_of(world, cluster, pods=_pods(ready=["orders-0"]))
    assert status["phase"] == "Ready" and condition(status, "Ready")["status"] == "True"
    # without the pods observed, the agents' word
    assert status_of(world, cluster)["phase"] == "Ready"


def test_a_scaled_up_replica_is_scaling_until_its_pod_is_ready():
    world, cluster = healthy()
    for name in world.instance_names():
        _ready_since(world, name, NOW - timedelta(seconds=60))
    _ready_since(world, "orders-2", NOW)
    scaling = Cluster.from_object(cluster_body() | {"status": {"phase": "Scaling"}})
    status = cluster_status(scaling, world.all("PgInstance"), now=NOW,
                            pods=_pods(ready=["orders-0", "orders-1"], not_ready=["orders-2"]))
    assert status["phase"] == "Scaling"
    assert status["readyInstances"] == 2
    assert condition(status, "Degraded")["status"] == "False"
    assert condition(status, "Ready")["reason"] == "InstancesNotReady"


def test_a_pod_that_is_not_ready_under_a_ready_agent_degrades_a_ready_cluster():
    # e.g. its node's kubelet stopped: the node controller marks the pod not Ready and the
    # Services drop it, while Postgres and its agent still run.
    world, cluster = healthy()
    for name in world.instance_names():
        _ready_since(world, name, NOW - timedelta(seconds=600))
    was_ready = Cluster.from_object(cluster_body() | {"status": status_of(world, cluster)})
    status = cluster_status(was_ready, world.all("PgInstance"), now=NOW,
                            pods=_pods(ready=["orders-1", "orders-2"], not_ready=["orders-0"]))
    assert status["phase"] == "Degraded"
    degraded = condition(status, "Degraded")
    assert degraded["reason"] == "PrimaryUnavailable"
    assert "its pod orders-0 is not Ready" in degraded["message"]
    assert condition(status, "Ready")["status"] == "False"


def test_a_pod_the_kubelet_never_marks_ready_degrades_the_cluster_after_the_grace():
    world, cluster = _new_primary_ready_for(11)
    status = status_of(world, cluster, pods=_pods(not_ready=["orders-0"]))
    assert status["phase"] == "Degraded"
    assert condition(status, "Degraded")["reason"] == "PrimaryUnavailable"
    # a pod being deleted is out of the Services too, and a missing pod routes nothing
    assert status_of(world, cluster, pods={})["readyInstances"] == 0
    deleting = _pods(ready=["orders-0"])
    deleting["orders-0"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert status_of(world, cluster, pods=deleting)["readyInstances"] == 0
