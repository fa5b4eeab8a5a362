"""pgop.cluster.failover through the cluster planner, against the in-memory world: every rule of
docs/high-availability.md "Failover, step by step", switchover, fencing, and volumes that are never
initialised twice. The agents are played by `world.report`; pods and volumes are put in the world
by hand (`with_pods`)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta

from pgop.cluster.failover import ANNOTATION_FENCED, ANNOTATION_SWITCHOVER, pod_state
from pgop.cluster.status import cluster_status
from pgop.kernel import liveness
from pgop.kernel.actions import CREATE, PATCH, WARNING
from pgop.kernel.conditions import rfc3339
from pgop.kernel.model import Instance
from pgop.specs.pods import pod_role_label
from tests.unit.world import NOW, World, make_cluster, plan, running_cluster

T = NOW


def with_pods(world: World) -> None:
    """A running, Ready Postgres pod and an initialised volume for every instance."""
    for name in world.instance_names():
        labels = {"pgop.io/cluster": "orders", "pgop.io/instance": name}
        world.objects[("Pod", name)] = {
            "kind": "Pod", "metadata": {"name": name, "labels": labels, "uid": f"pod-{name}"},
            "spec": {"nodeName": "node-1"},
            "status": {"phase": "Running", "podIP": f"10.244.0.{10 + int(name.rsplit('-', 1)[1])}",
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "postgres", "state": {"running": {}}, "ready": True}]}}
        world.objects[("PersistentVolumeClaim", name)] = {
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "labels": labels, "annotations": {"pgop.io/initialized": "initdb"}}}


def ha_cluster(instances=3, **spec):
    world, cluster = running_cluster(instances, **spec)
    with_pods(world)
    for _ in range(2):  # the first pass hands down the pod IPs (spec.primaryHost): the agents apply them
        for name in world.instance_names():
            if name == "orders-0":
                world.report(name, lsn="0/5000000", systemIdentifier="7001")
            else:
                world.report(name, lsn="0/4000000", receivedLSN="0/4000000", replayLSN="0/4000000",
                             walReceiver="streaming", following="orders-0", systemIdentifier="7001")
        step(world, cluster)
    assert world.cluster_status["currentPrimary"] == "orders-0"
    assert world.cluster_status["targetPrimary"] == "orders-0"
    return world, cluster


def step(world, cluster, at=T):
    """One reconcile: plan (with pods and volumes observed), write status, apply."""
    result = plan(world, cluster, now=at, pods=True)
    world.apply(result)
    return result


def spec_of(world, name):
    return world.objects[("PgInstance", name)]["spec"]


def answer(world, name, received, replay=None, at=T, **extra):
    """The replica's agent stopped its WAL receiver on request and says where it stopped."""
    extra.setdefault("systemIdentifier", "7001")
    world.report(name, role="replica", heartbeat=at, receivedLSN=received, replayLSN=replay or received,
                 walReceiver="stopped", following="", **extra)


def reasons(result):
    return [e.reason for e in result.events]


def kill_pod(world, name):
    del world.objects[("Pod", name)]


# ---------------------------------------------------------------------------- detection

def test_a_deleted_primary_pod_starts_a_failover_at_once():
    world, cluster = ha_cluster()
    kill_pod(world, "orders-0")
    result = step(world, cluster)
    assert reasons(result) == ["FailoverStarted"]
    assert "orders-0" in result.events[0].message and "pod is gone" in result.events[0].message
    failover = world.cluster_status["failover"]
    assert (failover["phase"], failover["oldPrimary"], failover["deposed"]) == ("Deciding", "orders-0", ["orders-0"])
    assert world.cluster_status["targetPrimary"] == ""
    assert world.cluster_status["currentPrimary"] == "orders-0"  # until another one is primary
    # Step 1: every replica stops streaming; the old primary is demoted in its spec.
    assert {n: (spec_of(world, n)["role"], spec_of(world, n)["primary"]) for n in world.instance_names()} == {
        "orders-0": ("replica", ""), "orders-1": ("replica", ""), "orders-2": ("replica", "")}
    # The old primary's patch comes first.
    assert [a.name for a in result if a.kind == "PgInstance"][0] == "orders-0"


def _silent_primary(stopped_receivers: tuple[str, ...], silence: float = 7.0, replicas_after: bool = True):
    """The primary's agent beat last at T; `silence` seconds later the replicas report (after its
    last beat, or before it), those in `stopped_receivers` without a WAL stream."""
    world, cluster = ha_cluster()
    now = T + timedelta(seconds=silence)
    for name in ("orders-1", "orders-2"):
        at = now - timedelta(seconds=1) if replicas_after else T - timedelta(seconds=1)
        world.report(name, role="replica", heartbeat=at, receivedLSN="0/4000000", following="orders-0",
                     walReceiver="stopped" if name in stopped_receivers else "streaming", systemIdentifier="7001")
    return step(world, cluster, at=now)


def test_a_silent_primary_whose_replicas_all_lost_its_stream_fails_over_before_the_heartbeat_timeout():
    """Its node died, froze or was cut off: the API server and the replicas both lost it."""
    result = _silent_primary(("orders-1", "orders-2"))
    assert reasons(result) == ["FailoverStarted"]
    assert "stopped receiving its WAL" in result.events[0].message


def test_a_silent_primary_still_streaming_to_a_replica_waits_for_the_heartbeat_timeout():
    """Cut off from the API server only: a replica still receives its WAL."""
    assert reasons(_silent_primary(("orders-1",))) == []
    assert reasons(_silent_primary(("orders-1",), silence=16.0)) == ["FailoverStarted"]


def test_replica_reports_older_than_the_primarys_last_beat_do_not_count():
    assert reasons(_silent_primary(("orders-1", "orders-2"), replicas_after=False)) == []
    assert reasons(_silent_primary(("orders-1", "orders-2"), silence=4.0)) == []  # not silent long enough


def test_replicas_whose_lease_renewals_say_their_lost_stream_still_holds_corroborate_a_later_last_beat():
    """A node killed process by process: the replicas lost the stream and wrote so at T-1, the
    primary's agent beat once more at T, then died. The replicas have nothing new to write; their
    Lease renewals after T say their status still holds."""
    world, cluster = ha_cluster()
    now = T + timedelta(seconds=7)
    for name in ("orders-1", "orders-2"):
        world.report(name, role="replica", heartbeat=T - timedelta(seconds=1), receivedLSN="0/4000000",
                     following="orders-0", walReceiver="stopped", systemIdentifier="7001", podUID=f"pod-{name}")
    assert reasons(step(world, cluster, at=now)) == []  # only status writes from before the beat
    for name in ("orders-1", "orders-2"):
        body = world.objects[("PgInstance", name)]
        world.objects[("PgInstance", name)] = liveness.with_liveness(
            body, {"holder": body["status"]["podUID"], "renewTime": liveness.micro_time(now - timedelta(seconds=1))})
    result = step(world, cluster, at=now)
    assert reasons(result) == ["FailoverStarted"]
    assert "stopped receiving its WAL" in result.events[0].message


def test_a_terminated_container_starts_a_failover():
    world, cluster = ha_cluster()
    world.objects[("Pod", "orders-0")]["status"]["containerStatuses"][0]["state"] = {
        "terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    result = step(world, cluster)
    assert reasons(result) == ["FailoverStarted"] and "OOMKilled" in result.events[0].message


def test_a_primary_pod_still_starting_while_its_agent_already_reports_is_no_failure():
    """The agent reports before the kubelet posts the container as running: no failover then."""
    def starting(made: datetime):
        world, cluster = ha_cluster()
        pod = world.objects[("Pod", "orders-0")]
        pod["metadata"]["creationTimestamp"] = rfc3339(made)
        pod["status"]["phase"] = "Pending"
        pod["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "PodInitializing"}}
        return world, cluster

    world, cluster = starting(T - timedelta(seconds=5))  # the agent beat since the pod was made
    assert reasons(step(world, cluster)) == []
    world.report("orders-0", heartbeat=T - timedelta(seconds=20))  # ... and then fell silent
    assert reasons(step(world, cluster)) == ["FailoverStarted"]

    world, cluster = starting(T + timedelta(seconds=1))  # made after the last heartbeat
    result = step(world, cluster)
    assert reasons(result) == ["FailoverStarted"] and "replaced" in result.events[0].message


def test_a_replaced_primary_pod_starts_a_failover_though_its_old_container_still_beats():
    """A force-deleted pod's containers run on until the kubelet stops them, and its agent goes on
    beating; the new pod (same name, new UID) is not yet running: the UID tells them apart."""
    world, cluster = ha_cluster()
    pod = world.objects[("Pod", "orders-0")]
    pod["metadata"]["creationTimestamp"] = rfc3339(T - timedelta(seconds=1))
    pod["status"]["phase"] = "Pending"
    pod["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    world.report("orders-0", heartbeat=T, podUID="uid-of-the-deleted-pod")  # beat after the new pod was made
    result = step(world, cluster)
    assert reasons(result) == ["FailoverStarted"] and "replaced" in result.events[0].message
    world, cluster = ha_cluster()  # the same pod, still starting, its agent reporting from it
    pod = world.objects[("Pod", "orders-0")]
    pod["status"]["phase"] = "Pending"
    pod["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    world.report("orders-0", podUID=pod["metadata"]["uid"])
    assert reasons(step(world, cluster)) == []


def test_a_stale_heartbeat_starts_a_failover():
    world, cluster = ha_cluster()
    world.report("orders-0", heartbeat=T - timedelta(seconds=20))
    result = step(world, cluster)
    assert reasons(result) == ["FailoverStarted"] and "no heartbeat" in result.events[0].message


def test_a_lost_volume_starts_a_failover():
    world, cluster = ha_cluster()
    del world.objects[("PersistentVolumeClaim", "orders-0")]
    result = step(world, cluster)
    assert reasons(result) == ["FailoverStarted"] and "volume is gone" in result.events[0].message


def test_a_new_empty_volume_under_the_primary_starts_a_failover():
    world, cluster = ha_cluster()
    world.objects[("PersistentVolumeClaim", "orders-0")]["metadata"]["annotations"] = {}  # made anew, empty
    result = step(world, cluster)
    assert reasons(result) == ["FailoverStarted"] and "new and empty" in result.events[0].message


def test_a_volume_not_yet_marked_is_no_failure_once_the_agent_reported_from_the_pod_that_fills_it():
    """A new primary's agent bootstraps its volume, starts Postgres and reports; the operator marks
    the volume a moment later. In between the volume is not marked, yet it holds the data."""
    def unmarked(reported_from: str):
        world, cluster = ha_cluster()
        world.objects[("PersistentVolumeClaim", "orders-0")]["metadata"]["annotations"] = {}
        pod = world.objects[("Pod", "orders-0")]
        pod["metadata"]["annotations"] = {"pgop.io/bootstrap-mode": "initdb"}
        world.report("orders-0", podUID=reported_from)
        return world, cluster, pod

    world, cluster, pod = unmarked(reported_from="pod-orders-0")  # this very pod
    assert reasons(step(world, cluster)) == []
    # A pod made anew on a new volume whose agent has not reported (the report is its
    # predecessor's): the data is lost.
    world, cluster, pod = unmarked(reported_from="pod-of-the-lost-volume")
    result = step(world, cluster)
    assert reasons(result) == ["FailoverStarted"] and "new and empty" in result.events[0].message


def test_a_postmaster_crash_in_a_live_pod_is_the_agents_to_restart():
    world, cluster = ha_cluster()
    # Postgres is down, the agent beats and restarts it (crash recovery): no failover.
    world.report("orders-0", ready=False, role="primary", phase="Starting")
    result = step(world, cluster)
    assert result.events == [] and "failover" not in world.cluster_status or \
        world.cluster_status.get("failover") is None
    assert spec_of(world, "orders-0")["role"] == "primary"


def test_a_pod_being_deleted_gracefully_is_failed_over_once_it_is_gone():
    world, cluster = ha_cluster()
    world.objects[("Pod", "orders-0")]["metadata"]["deletionTimestamp"] = "2026-11-22T12:00:00Z"
    assert reasons(step(world, cluster)) == []  # its fast shutdown still sends WAL to the replicas
    kill_pod(world, "orders-0")
    assert reasons(step(world, cluster)) == ["FailoverStarted"]


def test_failover_delay_waits_and_a_primary_back_in_time_cancels_it():
    world, cluster = ha_cluster(failoverDelay="30s")
    kill_pod(world, "orders-0")
    assert reasons(step(world, cluster)) == []
    assert world.cluster_status["failover"]["phase"] == "Pending"
    assert spec_of(world, "orders-0")["role"] == "primary"
    assert reasons(step(world, cluster, at=T + timedelta(seconds=10))) == []
    with_pods(world)  # the pod is back within the delay
    step(world, cluster, at=T + timedelta(seconds=12))
    assert world.cluster_status.get("failover") is None
    kill_pod(world, "orders-0")
    step(world, cluster, at=T + timedelta(seconds=13))
    world.report("orders-0", heartbeat=T + timedelta(seconds=13))
    assert reasons(step(world, cluster, at=T + timedelta(seconds=40))) == []
    result = step(world, cluster, at=T + timedelta(seconds=44))
    assert reasons(result) == ["FailoverStarted"] and "failoverDelay 30s" in result.events[0].message


def test_a_fenced_primary_is_never_failed_over():
    world, cluster = ha_cluster()
    world.cluster_annotations[ANNOTATION_FENCED] = '["orders-0"]'
    result = step(world, cluster)
    assert reasons(result) == ["Fenced"] and spec_of(world, "orders-0")["fenced"] is True
    kill_pod(world, "orders-0")
    result = step(world, cluster)
    assert reasons(result) == [] and world.cluster_status.get("failover") is None
    assert any("fenced" in note for note in result.waiting)


# ---------------------------------------------------------------------------- choosing

def started(instances=3, **spec):
    world, cluster = ha_cluster(instances, **spec)
    kill_pod(world, "orders-0")
    step(world, cluster)
    return world, cluster


def test_nothing_is_promoted_before_a_replica_answers():
    world, cluster = started()
    result = step(world, cluster)
    assert world.cluster_status["targetPrimary"] == "" and reasons(result) == []
    assert any("no replica has stopped streaming" in note for note in result.waiting)


def test_the_most_advanced_replica_is_promoted_not_the_lagging_one():
    world, cluster = started()
    answer(world, "orders-1", "0/4000000")
    answer(world, "orders-2", "0/4800000", replay="0/4000000")
    result = step(world, cluster)
    assert world.cluster_status["targetPrimary"] == "orders-2"
    assert world.cluster_status["failover"]["phase"] == "Promoting"
    [promoted] = result.events
    assert promoted.reason == "Promoted" and promoted.type == WARNING  # preferred: the tail may be lost
    assert "orders-1 received 0/4000000" in promoted.message and "orders-2 received 0/4800000" in promoted.message
    assert "may be lost" in promoted.message
    assert (spec_of(world, "orders-2")["role"], spec_of(world, "orders-2")["primary"]) == ("primary", "orders-2")
    # The other replica streams from the target while it promotes, by its pod IP (its synchronous
    # standby at once); the old primary waits to rejoin.
    assert (spec_of(world, "orders-1")["primary"], spec_of(world, "orders-1")["primaryHost"]) == (
        "orders-2", "10.244.0.12")
    assert spec_of(world, "orders-0")["primary"] == ""
    # The new primary reports: the failover is done, the replicas follow it.
    world.report("orders-2", role="primary", lsn="0/4800100", timeline=2, heartbeat=T)
    result = step(world, cluster)
    assert reasons(result) == ["FailoverDone"]
    assert world.cluster_status["currentPrimary"] == "orders-2" and world.cluster_status.get("failover") is None
    assert world.cluster_status["rejoining"] == ["orders-0"]
    assert {n: spec_of(world, n)["primary"] for n in world.instance_names()} == {
        "orders-0": "orders-2", "orders-1": "orders-2", "orders-2": "orders-2"}


def test_a_target_that_never_reports_primary_is_deposed_and_the_failover_decides_again():
    from pgop.cluster.failover import PROMOTION_TIMEOUT
    world, cluster = started()
    answer(world, "orders-1", "0/4000000")
    answer(world, "orders-2", "0/4800000")
    step(world, cluster)
    assert world.cluster_status["targetPrimary"] == "orders-2"
    # Its agent beats on, but pg_promote() never succeeds: within the bound it is waited for ...
    later = T + timedelta(seconds=PROMOTION_TIMEOUT - 5)
    world.report("orders-2", role="replica", heartbeat=later, phase="Promoting", message="pg_promote() did not finish")
    result = step(world, cluster, at=later)
    assert world.cluster_status["failover"]["phase"] == "Promoting" and not reasons(result)
    # ... past it, it is deposed and the others are asked again.
    past = T + timedelta(seconds=PROMOTION_TIMEOUT + 5)
    world.report("orders-2", role="replica", heartbeat=past, phase="Promoting", message="pg_promote() did not finish")
    result = step(world, cluster, at=past)
    assert reasons(result) == ["FailoverStarted"] and "did not report primary" in result.events[0].message
    failover = world.cluster_status["failover"]
    assert failover["phase"] == "Deciding" and "orders-2" in failover["deposed"]
    assert spec_of(world, "orders-2")["role"] == "replica"


def test_replicas_stream_from_the_new_primarys_pod_ip_at_once_even_while_the_old_pod_is_behind_rw():
    """A replica streams from the pod IP of the instance it follows (spec.primaryHost), never
    through -rw: the old primary's pod may still carry the `primary` label (a primary cut off
    from the API server only runs on), and a replica reaching it again through -rw would let it
    acknowledge commits the new primary never gets. By IP, that cannot happen, so nothing waits."""
    import copy
    world, cluster = started()
    assert spec_of(world, "orders-1")["primaryHost"] == ""  # deciding: follows nobody
    pod = copy.deepcopy(world.objects[("Pod", "orders-1")])
    pod["metadata"].update(name="orders-0", uid="uid-old-primary-pod")
    pod["metadata"]["labels"] = {**pod["metadata"]["labels"], "pgop.io/instance": "orders-0", "pgop.io/role": "primary"}
    pod["status"]["podIP"] = "10.244.0.10"
    answer(world, "orders-1", "0/4000000")
    answer(world, "orders-2", "0/4800000")
    step(world, cluster)
    world.report("orders-2", role="primary", lsn="0/4800100", timeline=2, heartbeat=T)
    world.objects[("Pod", "orders-0")] = pod
    result = step(world, cluster)
    assert reasons(result) == ["FailoverDone"]
    assert (spec_of(world, "orders-1")["primary"], spec_of(world, "orders-1")["primaryHost"]) == (
        "orders-2", "10.244.0.12")
    assert spec_of(world, "orders-2")["primaryHost"] == ""  # the primary streams from nobody
    assert not any("-rw" in note for note in result.waiting)


def test_without_a_pod_ip_for_the_new_primary_replicas_wait_until_the_old_pod_left_rw():
    """Only while the new primary's pod has no IP would a replica connect through -rw: then it is
    not pointed there while another pod still carries the `primary` label."""
    import copy
    world, cluster = started()
    pod = copy.deepcopy(world.objects[("Pod", "orders-1")])
    pod["metadata"].update(name="orders-0", uid="uid-old-primary-pod")
    pod["metadata"]["labels"] = {**pod["metadata"]["labels"], "pgop.io/instance": "orders-0", "pgop.io/role": "primary"}
    del world.objects[("Pod", "orders-2")]["status"]["podIP"]
    answer(world, "orders-1", "0/4000000")
    answer(world, "orders-2", "0/4800000")
    world.objects[("Pod", "orders-0")] = pod  # cut off: its pod is back in the API, its agent silent
    world.report("orders-0", heartbeat=T - timedelta(seconds=20))
    result = step(world, cluster)
    assert world.cluster_status["targetPrimary"] == "orders-2"
    assert spec_of(world, "orders-1")["primary"] == ""
    assert any("once the pod of orders-0 has left -rw" in note for note in result.waiting)
    world.report("orders-2", role="primary", lsn="0/4800100", timeline=2, heartbeat=T)
    result = step(world, cluster)
    assert reasons(result) == ["FailoverDone"] and spec_of(world, "orders-1")["primary"] == ""
    pod["metadata"]["labels"]["pgop.io/role"] = "pending"  # the instance planner moved the label
    step(world, cluster)
    assert (spec_of(world, "orders-1")["primary"], spec_of(world, "orders-1")["primaryHost"]) == ("orders-2", "")
    world.objects[("Pod", "orders-2")]["status"]["podIP"] = "10.244.0.22"
    result = step(world, cluster)
    assert spec_of(world, "orders-1")["primaryHost"] == "10.244.0.22"
    assert any("orders-2 is at 10.244.0.22 now" in a.reason for a in result)
    # the pod recreated, not yet running: the last address stays (never -rw instead)
    del world.objects[("Pod", "orders-2")]["status"]["podIP"]
    step(world, cluster)
    assert spec_of(world, "orders-1")["primaryHost"] == "10.244.0.22"


def test_while_a_second_target_promotes_the_deposed_one_and_the_old_primary_follow_nobody():
    from pgop.cluster.failover import PROMOTION_TIMEOUT
    world, cluster = started(instances=4)
    for name, lsn in (("orders-1", "0/4000000"), ("orders-2", "0/4400000"), ("orders-3", "0/4800000")):
        answer(world, name, lsn)
    step(world, cluster)
    assert world.cluster_status["targetPrimary"] == "orders-3"
    assert {n: spec_of(world, n)["primary"] for n in world.instance_names()} == {
        "orders-0": "", "orders-1": "orders-3", "orders-2": "orders-3", "orders-3": "orders-3"}
    past = T + timedelta(seconds=PROMOTION_TIMEOUT + 5)
    # pg_promote() never succeeded, and it no longer answers (it streams from the old primary)
    world.report("orders-3", role="replica", heartbeat=past, phase="Promoting", following="orders-0",
                 walReceiver="streaming")
    step(world, cluster, at=past)  # orders-3 deposed: Deciding again, everyone stops streaming
    assert {spec_of(world, n)["primary"] for n in ("orders-1", "orders-2")} == {""}
    again = past + timedelta(seconds=1)
    answer(world, "orders-1", "0/4000000", at=again)
    answer(world, "orders-2", "0/4400000", at=again)
    step(world, cluster, at=again)
    assert world.cluster_status["targetPrimary"] == "orders-2"
    assert {n: spec_of(world, n)["primary"] for n in world.instance_names()} == {
        "orders-0": "", "orders-1": "orders-2", "orders-2": "orders-2", "orders-3": ""}


def test_a_cleanly_stopped_former_primary_counts_toward_the_quorum_with_its_pg_control_position():
    """Two quick failures: the first failed primary came back cleanly stopped (its pod's deletion
    ran the agent's fast shutdown) and waits; with one replica answering, that makes 2 of 3."""
    world, cluster = started()
    world.report("orders-0", role=None, phase="Stopped", lsn="0/4800028", timeline=1, systemIdentifier="7001",
                 heartbeat=T)
    world.objects[("PgInstance", "orders-0")]["status"].pop("role", None)
    answer(world, "orders-1", "0/48000A0")
    result = step(world, cluster)
    assert world.cluster_status["targetPrimary"] == "orders-1", result.waiting
    assert reasons(result) == ["Promoted"]


def test_a_newer_timeline_outranks_more_wal_on_an_older_one():
    """WAL an old timeline has past the fork was never acknowledged: the newer timeline wins."""
    world, cluster = started()
    answer(world, "orders-1", "0/4000100", timeline=2)
    answer(world, "orders-2", "0/4800000", timeline=1)
    step(world, cluster)
    assert world.cluster_status["targetPrimary"] == "orders-1"


def test_equal_received_positions_go_by_replay_then_lowest_ordinal():
    world, cluster = started(4)
    answer(world, "orders-1", "0/4000000", replay="0/3000000")
    answer(world, "orders-2", "0/4000000", replay="0/3800000")
    answer(world, "orders-3", "0/4000000", replay="0/3800000")
    step(world, cluster)
    assert world.cluster_status["targetPrimary"] == "orders-2"


def test_a_fenced_replica_or_one_of_another_system_is_never_chosen():
    world, cluster = started(4)
    world.cluster_annotations[ANNOTATION_FENCED] = '["orders-1"]'
    answer(world, "orders-1", "0/9000000")
    answer(world, "orders-3", "0/4000000")
    answer(world, "orders-2", "0/8000000")
    world.objects[("PgInstance", "orders-2")]["status"]["systemIdentifier"] = "6666"
    step(world, cluster)
    assert world.cluster_status["targetPrimary"] == "orders-3"


def test_an_answer_from_before_the_failover_does_not_count():
    world, cluster = started()
    answer(world, "orders-1", "0/4000000", at=T - timedelta(seconds=3))
    step(world, cluster, at=T + timedelta(seconds=1))
    assert world.cluster_status["targetPrimary"] == ""


# ---------------------------------------------------------------------------- safety

def test_required_mode_waits_for_a_quorum_of_answers():
    world, cluster = started(3, synchronousReplicas=1, synchronousMode="required")
    answer(world, "orders-1", "0/4000000")
    result = step(world, cluster)
    assert world.cluster_status["targetPrimary"] == ""
    assert reasons(result) == ["FailoverWaitingForQuorum"]
    assert "R >= N - n" in result.events[0].message and "orders-2" in result.events[0].message
    status = cluster_status(world.cluster(cluster), world.all("PgInstance"), now=T, ha=world.cluster_status)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "FailoverWaitingForQuorum")
    assert status["phase"] == "Failover"
    answer(world, "orders-2", "0/4000100")
    result = step(world, cluster)
    assert world.cluster_status["targetPrimary"] == "orders-2"
    assert result.events[0].type == "Normal" and "may be lost" not in result.events[0].message


def test_an_old_primary_that_still_beats_is_waited_for_until_it_is_demoted():
    world, cluster = ha_cluster()
    world.report("orders-0", role="primary", ready=False, phase="Failed", message="postgres does not start")
    assert reasons(step(world, cluster)) == ["FailoverStarted"]
    answer(world, "orders-1", "0/4000000")
    answer(world, "orders-2", "0/4000000")
    result = step(world, cluster)
    assert world.cluster_status["targetPrimary"] == ""
    assert any("orders-0 may still accept writes" in note for note in result.waiting)
    # Its agent sees spec.role replica and reports the demotion: now it cannot write.
    world.report("orders-0", role="replica", ready=False, phase="Failed")
    step(world, cluster)
    assert world.cluster_status["targetPrimary"] == "orders-1"


def test_required_mode_every_replica_stopped_proves_the_old_primary_cannot_commit():
    world, cluster = ha_cluster(synchronousReplicas=1, synchronousMode="required")
    world.report("orders-0", role="primary", ready=False, phase="Failed")
    step(world, cluster)
    answer(world, "orders-1", "0/4000000")
    answer(world, "orders-2", "0/4000000")
    step(world, cluster)
    assert world.cluster_status["targetPrimary"] == "orders-1"


def test_a_silent_old_primary_is_trusted_to_have_stopped_after_the_isolation_timeout():
    world, cluster = ha_cluster()
    world.report("orders-0", heartbeat=T - timedelta(seconds=16))
    step(world, cluster)
    answer(world, "orders-1", "0/4000000")
    step(world, cluster)
    assert world.cluster_status["targetPrimary"] == "orders-1"


def test_the_rw_label_is_never_on_two_pods_during_a_failover():
    world, cluster = started()

    def primaries():
        return [n for n in world.instance_names() if pod_role_label(world.instance(n)) == "primary"]
    assert primaries() == []  # the old primary is demoted in spec: its pod, if any, leaves -rw
    answer(world, "orders-1", "0/4000000")
    answer(world, "orders-2", "0/4000000")
    step(world, cluster)
    assert primaries() == []  # orders-1 is being promoted, not primary yet
    world.report("orders-1", role="primary", timeline=2)
    assert primaries() == ["orders-1"]
    world.report("orders-0", role="primary", heartbeat=T - timedelta(seconds=60))  # stale last word
    assert primaries() == ["orders-1"]


# ---------------------------------------------------------------------------- restarts, repeats

def test_operator_restarted_mid_failover_continues_where_it_was():
    world, cluster = started()
    since = world.cluster_status["failover"]["since"]
    # A new operator process: nothing but the stored status and the world.
    result = step(world, cluster, at=T + timedelta(seconds=2))
    assert reasons(result) == [] and world.cluster_status["failover"]["since"] == since
    answer(world, "orders-1", "0/4000000", at=T + timedelta(seconds=2))
    answer(world, "orders-2", "0/3000000", at=T + timedelta(seconds=2))
    step(world, cluster, at=T + timedelta(seconds=3))
    assert world.cluster_status["targetPrimary"] == "orders-1"
    # Restarted again while promoting, with positions that moved since: the choice stands.
    answer(world, "orders-2", "0/9000000", at=T + timedelta(seconds=4))
    result = step(world, cluster, at=T + timedelta(seconds=5))
    assert world.cluster_status["targetPrimary"] == "orders-1" and reasons(result) == []


def test_a_status_written_but_not_applied_is_applied_on_the_next_pass():
    world, cluster = started()
    answer(world, "orders-1", "0/4000000")
    result = plan(world, cluster, pods=True)
    world.cluster_status.update(result.status)  # the operator died after writing status
    step(world, cluster)
    assert spec_of(world, "orders-1")["role"] == "primary"


def test_two_quick_failures_in_a_row():
    world, cluster = started()
    answer(world, "orders-1", "0/4000000")
    answer(world, "orders-2", "0/4800000")
    step(world, cluster)
    world.report("orders-2", role="primary", timeline=2)
    step(world, cluster)
    assert world.cluster_status["currentPrimary"] == "orders-2"
    # The new primary fails at once; orders-0 is still gone.
    kill_pod(world, "orders-2")
    t2 = T + timedelta(seconds=5)
    result = step(world, cluster, at=t2)
    assert reasons(result) == ["FailoverStarted"]
    assert world.cluster_status["failover"]["oldPrimary"] == "orders-2"
    answer(world, "orders-1", "0/4800000", at=t2)
    result = step(world, cluster, at=t2)
    assert world.cluster_status["targetPrimary"] == "orders-1"
    world.report("orders-1", role="primary", timeline=3, heartbeat=t2)
    step(world, cluster, at=t2)
    assert world.cluster_status["currentPrimary"] == "orders-1"
    assert set(world.cluster_status["rejoining"]) == {"orders-0", "orders-2"}


def test_a_target_that_dies_before_it_is_primary_is_passed_over():
    world, cluster = started()
    answer(world, "orders-1", "0/4000000")
    answer(world, "orders-2", "0/4800000")
    step(world, cluster)
    assert world.cluster_status["targetPrimary"] == "orders-2"
    kill_pod(world, "orders-2")
    world.report("orders-2", heartbeat=T - timedelta(seconds=30))
    result = step(world, cluster, at=T + timedelta(seconds=1))
    assert reasons(result) == ["FailoverStarted"] and "promotion of orders-2 failed" in result.events[0].message
    assert world.cluster_status["failover"]["deposed"] == ["orders-0", "orders-2"]
    assert spec_of(world, "orders-2")["role"] == "replica"
    answer(world, "orders-1", "0/4000000", at=T + timedelta(seconds=2))
    step(world, cluster, at=T + timedelta(seconds=2))
    assert world.cluster_status["targetPrimary"] == "orders-1"


def test_a_former_primary_that_streams_again_has_rejoined():
    world, cluster = started()
    answer(world, "orders-1", "0/4000000")
    step(world, cluster)
    world.report("orders-1", role="primary", timeline=2)
    step(world, cluster)
    with_pods(world)
    world.report("orders-0", role="replica", walReceiver="streaming", following="orders-1")
    result = step(world, cluster)
    assert reasons(result) == ["Rejoined"] and world.cluster_status.get("rejoining") is None


def test_nothing_is_scaled_down_or_rolled_during_a_failover():
    world, cluster = started(4)
    from tests.unit.world import spec_change
    result = plan(world, spec_change(cluster, instances=2, parameters={"shared_buffers": "64MB"}), pods=True)
    assert [a for a in result if a.kind == "PgInstance" and a.verb != PATCH] == []
    assert all(set(a.patch["spec"]) <= {"role", "primary", "fenced", "bootstrap"}
               for a in result if a.kind == "PgInstance")


# ---------------------------------------------------------------------------- migration, volumes

def test_an_existing_cluster_without_target_primary_takes_the_marked_primary():
    world, cluster = running_cluster(3)
    world.cluster_status = {}
    world.objects[("PgInstance", "orders-0")]["spec"]["role"] = "replica"
    world.objects[("PgInstance", "orders-1")]["spec"]["role"] = "primary"
    world.report("orders-1", role="primary")
    world.apply(plan(world, cluster))
    assert world.cluster_status["targetPrimary"] == world.cluster_status["currentPrimary"] == "orders-1"


def test_once_the_cluster_has_data_every_instance_is_rebuilt_by_basebackup():
    world, cluster = ha_cluster()
    assert {spec_of(world, n)["bootstrap"] for n in world.instance_names()} == {"basebackup"}
    assert "initdb" not in spec_of(world, "orders-0")


def test_every_instance_gone_after_data_waits_and_never_initdbs():
    world, cluster = ha_cluster()
    for name in world.instance_names():
        del world.objects[("PgInstance", name)]
    result = step(world, cluster)
    assert [a for a in result if a.verb == CREATE and a.kind == "PgInstance"] == []
    assert any("never running initdb again" in note for note in result.waiting)


# ---------------------------------------------------------------------------- switchover

def streaming(world, name, received="0/4000000"):
    world.report(name, role="replica", receivedLSN=received, replayLSN=received, walReceiver="streaming",
                 following="orders-0", systemIdentifier="7001")


def test_switchover_demotes_waits_for_the_last_wal_then_promotes():
    world, cluster = ha_cluster()
    world.cluster_annotations[ANNOTATION_SWITCHOVER] = "orders-1"
    result = step(world, cluster)
    assert reasons(result) == ["SwitchoverStarted"]
    assert world.cluster_status["failover"]["kind"] == "Switchover"
    # The old primary shuts down cleanly; the replicas keep streaming from it meanwhile.
    assert (spec_of(world, "orders-0")["role"], spec_of(world, "orders-0")["primary"]) == ("replica", "")
    assert spec_of(world, "orders-1")["primary"] == spec_of(world, "orders-2")["primary"] == "orders-0"
    world.report("orders-0", role="replica", lsn="0/5000100", replayLSN="0/5000100")
    streaming(world, "orders-1", "0/5000000")
    result = step(world, cluster)
    assert world.cluster_status["failover"]["oldPrimaryLSN"] == "0/5000100"
    assert world.cluster_status["targetPrimary"] == ""
    assert any("0/5000100" in note for note in result.waiting)
    streaming(world, "orders-1", "0/5000100")
    result = step(world, cluster)
    assert reasons(result) == ["Promoted"] and world.cluster_status["targetPrimary"] == "orders-1"
    world.report("orders-1", role="primary", timeline=2)
    result = step(world, cluster)
    assert reasons(result) == ["SwitchoverDone"]
    assert world.cluster_status["currentPrimary"] == "orders-1"
    assert world.cluster_status["lastSwitchover"]["result"] == "Done"
    assert ANNOTATION_SWITCHOVER not in world.cluster_annotations
    assert spec_of(world, "orders-0")["primary"] == "orders-1"


def test_switchover_to_an_unfit_target_is_refused_with_a_reason():
    world, cluster = ha_cluster()
    world.report("orders-2", role="replica", walReceiver="stopped", following="orders-0")
    for target, words in (("orders-2", "not streaming"), ("orders-9", "not an instance")):
        world.cluster_annotations[ANNOTATION_SWITCHOVER] = target
        result = step(world, cluster)
        assert reasons(result) == ["SwitchoverRefused"] and words in result.events[0].message
        assert world.cluster_status["lastSwitchover"]["result"] == "Refused"
        assert ANNOTATION_SWITCHOVER not in world.cluster_annotations
        assert world.cluster_status["currentPrimary"] == "orders-0"
        assert spec_of(world, "orders-0")["role"] == "primary"


def test_a_switchover_whose_target_does_not_catch_up_gives_the_primary_back():
    world, cluster = ha_cluster()
    world.cluster_annotations[ANNOTATION_SWITCHOVER] = "orders-1"
    step(world, cluster)
    world.report("orders-0", role="replica", lsn="0/5000100", replayLSN="0/5000100")
    step(world, cluster)
    result = step(world, cluster, at=T + timedelta(seconds=61))
    assert reasons(result) == ["SwitchoverRefused"] and world.cluster_status["targetPrimary"] == "orders-0"
    world.report("orders-0", role="primary", heartbeat=T + timedelta(seconds=62))
    step(world, cluster, at=T + timedelta(seconds=62))
    assert world.cluster_status["currentPrimary"] == "orders-0" and world.cluster_status.get("failover") is None


# ---------------------------------------------------------------------------- fencing

def test_fencing_follows_the_annotation_with_events():
    world, cluster = ha_cluster()
    world.cluster_annotations[ANNOTATION_FENCED] = json.dumps(["*"])
    result = step(world, cluster)
    assert reasons(result) == ["Fenced"] * 3
    assert all(spec_of(world, n)["fenced"] for n in world.instance_names())
    world.cluster_annotations[ANNOTATION_FENCED] = "[]"
    assert reasons(step(world, cluster)) == ["Unfenced"] * 3
    world.cluster_annotations[ANNOTATION_FENCED] = "orders-1"  # not JSON: nothing changes
    result = step(world, cluster)
    assert reasons(result) == [] and any("JSON list" in note for note in result.waiting)


def test_pod_state_reads_the_postgres_container():
    assert not pod_state(None).exists
    waiting = {"metadata": {}, "status": {"phase": "Running", "containerStatuses": [
        {"name": "postgres", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}
    assert not pod_state(waiting).running and "CrashLoopBackOff" in pod_state(waiting).stopped_why


def test_instance_spec_primary_is_read_by_the_model():
    assert Instance.from_object({"spec": {"primary": "orders-2"}}).spec.primary == "orders-2"
    assert Instance.from_object({"spec": {}}).spec.primary == ""


def test_a_new_cluster_targets_ordinal_zero():
    world, cluster = World(), make_cluster()
    result = plan(world, cluster)
    assert result.status["targetPrimary"] == "orders-0" and result.status["currentPrimary"] is None


# ---------------------------------------------------------------------------- rolling restarts

def test_a_rolling_restart_switches_over_instead_of_restarting_the_primary():
    from tests.unit.world import spec_change
    world, cluster = ha_cluster()
    changed = spec_change(cluster, parameters={"shared_buffers": "256MB"})
    for _ in range(6):  # the replicas restart one by one and report they stream again
        result = step(world, changed)
        for name in ("orders-1", "orders-2"):
            streaming(world, name, "0/5000000")
        if any(a.kind == "PgCluster" for a in result):
            break
    assert world.cluster_annotations.get(ANNOTATION_SWITCHOVER) == "orders-1"
    assert "shared_buffers" not in spec_of(world, "orders-0")["parameters"]  # not restarted in place
    assert any("after the switchover" in note for note in result.waiting)
    result = step(world, changed)
    assert reasons(result) == ["SwitchoverStarted"]


# ---------------------------------------------------------------------------- node drains

def spread(world, **nodes):
    for name, node in nodes.items():
        world.objects[("Pod", name)]["spec"]["nodeName"] = node


def test_a_cordoned_primary_node_is_answered_by_a_switchover_to_the_most_advanced_replica_elsewhere():
    world, cluster = ha_cluster()
    spread(world, **{"orders-0": "node-1", "orders-1": "node-2", "orders-2": "node-3"})
    streaming(world, "orders-2", "0/4800000")  # more advanced than orders-1
    world.cordoned = {"node-1"}
    result = step(world, cluster)
    assert world.cluster_annotations.get(ANNOTATION_SWITCHOVER) == "orders-2"
    assert reasons(result) == ["NodeDrain"] and "node-1" in result.events[0].message
    result = step(world, cluster)
    assert reasons(result) == ["SwitchoverStarted"]
    assert world.cluster_status["failover"]["target"] == "orders-2"


def test_a_drain_never_picks_a_replica_on_a_cordoned_node():
    world, cluster = ha_cluster()
    spread(world, **{"orders-0": "node-1", "orders-1": "node-1", "orders-2": "node-2"})
    world.cordoned = {"node-1"}
    step(world, cluster)
    assert world.cluster_annotations.get(ANNOTATION_SWITCHOVER) == "orders-2"


def test_a_drain_with_no_replica_to_take_over_waits_and_says_why():
    world, cluster = ha_cluster()
    spread(world, **{"orders-0": "node-1", "orders-1": "node-2", "orders-2": "node-3"})
    for name in ("orders-1", "orders-2"):  # not streaming: not fit to take over
        world.report(name, role="replica", walReceiver="stopped", following="", systemIdentifier="7001")
    world.cordoned = {"node-1"}
    result = step(world, cluster)
    assert ANNOTATION_SWITCHOVER not in world.cluster_annotations
    assert any("node-1 is cordoned" in note and "PodDisruptionBudget" in note for note in result.waiting)


def test_a_cordoned_replica_node_changes_nothing():
    world, cluster = ha_cluster()
    spread(world, **{"orders-0": "node-1", "orders-1": "node-2", "orders-2": "node-3"})
    world.cordoned = {"node-2"}
    result = step(world, cluster)
    assert ANNOTATION_SWITCHOVER not in world.cluster_annotations and not reasons(result)
