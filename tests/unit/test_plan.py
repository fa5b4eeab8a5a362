import copy
import random
from dataclasses import replace

import pytest

from pgop.cluster.plan import plan_cluster, plan_instance
from pgop.kernel.actions import CREATE, DELETE, PATCH, Action, Plan, apply_merge_patch, merge_patch
from pgop.kernel.meta import ANNOTATION_BOOTSTRAP_MODE
from pgop.kernel.model import Cluster, Instance
from pgop.specs.pods import pod_inputs_hash
from pgop.specs.pvc import ANNOTATION_INITIALIZED
from tests.unit.world import (
    World,
    cluster_body,
    converge,
    instance_actions,
    make_cluster,
    plan,
    running_cluster,
    spec_change,
    summary,
)

# ------------------------------------------------------------------------------ first creation

def test_first_plan_creates_the_cluster_objects_in_dependency_order():
    actions = plan(World(), make_cluster())
    assert summary(actions) == [
        (PATCH, "PgCluster", "orders"),  # the archive layout, pinned before anything archives
        (CREATE, "ServiceAccount", "orders-agent"),
        (CREATE, "Role", "orders-agent"),
        (CREATE, "RoleBinding", "orders-agent"),
        (CREATE, "Secret", "orders-ca"),
        (CREATE, "Secret", "orders-server"),
        (CREATE, "Secret", "orders-replication-tls"),
        (CREATE, "Secret", "orders-superuser"),
        (CREATE, "Secret", "orders-replication"),
        (CREATE, "Secret", "orders-app"),
        (CREATE, "Service", "orders-rw"),
        (CREATE, "Service", "orders-ro"),
        (CREATE, "Service", "orders-r"),
        (CREATE, "PodDisruptionBudget", "orders-primary"),
        (CREATE, "PodDisruptionBudget", "orders"),
        (CREATE, "PgInstance", "orders-0"),
        (CREATE, "PgInstance", "orders-1"),
        (CREATE, "PgInstance", "orders-2"),
    ]
    assert all(a.namespace == "shop" for a in actions)


def test_first_instance_is_a_primary_made_by_initdb():
    first = [a for a in plan(World(), make_cluster()) if a.kind == "PgInstance"][0]
    assert (first.body["spec"]["role"], first.body["spec"]["bootstrap"], first.body["spec"]["ordinal"]) == \
        ("primary", "initdb", 0)


SOURCE_S3 = {"bucket": "pg-backups", "path": "shop", "endpoint": "http://s3.local:7070",
             "credentialsSecret": "s3-creds"}


def test_a_restored_cluster_starts_from_recovery_at_the_source_clusters_archive():
    cluster = make_cluster(bootstrap={"recovery": {"source": "orders-old", "targetTime": "2026-11-22T03:00:00Z"}})
    source = cluster_body(name="orders-old", backup={"s3": SOURCE_S3})
    observed = replace(World().observed_cluster(), recovery_source=source)
    [first] = [a for a in plan_cluster(cluster, observed, rng=random.Random(1)) if a.kind == "PgInstance"]
    assert first.body["spec"]["bootstrap"] == "recovery"
    assert first.body["spec"]["recovery"] == {"source": "orders-old", "targetTime": "2026-11-22T03:00:00Z",
                                              "s3": SOURCE_S3}
    assert "orders-old" in first.reason


def test_a_recovery_with_its_own_s3_needs_no_source_cluster():
    own = dict(SOURCE_S3, path="archive", credentialsSecret="old-creds")
    cluster = make_cluster(bootstrap={"recovery": {"source": "gone", "s3": own}})
    [first] = [a for a in plan(World(), cluster) if a.kind == "PgInstance"]
    assert first.body["spec"]["recovery"]["s3"] == own


def test_a_recovery_without_a_known_archive_waits_and_says_why():
    cluster = make_cluster(bootstrap={"recovery": {"source": "orders-old"}})
    result = plan(World(), cluster)
    assert [a for a in result if a.kind == "PgInstance"] == []
    assert any("orders-old" in w and "spec.bootstrap.recovery.s3" in w for w in result.waiting)


def test_a_new_clusters_replicas_come_with_its_primary_and_get_its_pod_ip_once_it_has_one():
    """initdb: the replicas' volumes and bootstrap pods are made while the primary bootstraps. They
    name no host to clone from until the primary's Postgres pod has an IP (never -rw meanwhile:
    pgop.agent.bootstrap.wait_for_source waits for spec.primaryHost)."""
    world, cluster = World(), make_cluster()
    first = plan(world, cluster)
    replicas = [a for a in first if a.kind == "PgInstance" and a.name != "orders-0"]
    assert instance_actions(replicas) == [(CREATE, "orders-1"), (CREATE, "orders-2")]
    assert {(a.body["spec"]["role"], a.body["spec"]["bootstrap"], a.body["spec"]["primary"],
             a.body["spec"].get("primaryHost", "")) for a in replicas} == {("replica", "basebackup", "orders-0", "")}
    assert all("clones once orders-0 is up" in a.reason for a in replicas)
    world.apply(first)
    assert plan(world, cluster, pods=True) == []  # no pod IP yet: nothing to hand down
    world.objects[("Pod", "orders-0")] = {
        "kind": "Pod", "metadata": {"name": "orders-0", "uid": "pod-orders-0",
                                    "labels": {"pgop.io/cluster": "orders", "pgop.io/instance": "orders-0"}},
        "spec": {"nodeName": "node-1"}, "status": {"phase": "Running", "podIP": "10.244.0.10"}}
    handed = plan(world, cluster, pods=True)
    assert sorted((a.verb, a.name, a.patch["spec"].get("primaryHost")) for a in handed if a.kind == "PgInstance") == [
        (PATCH, "orders-1", "10.244.0.10"), (PATCH, "orders-2", "10.244.0.10")]
    assert [a for a in handed if a.verb == CREATE] == []


def test_a_restored_clusters_replicas_wait_for_the_primary_to_be_ready():
    """recovery (a restore may take hours): the first primary comes alone, the replicas once it
    is ready."""
    own = dict(SOURCE_S3, path="archive", credentialsSecret="old-creds")
    world, cluster = World(), make_cluster(bootstrap={"recovery": {"source": "gone", "s3": own}})
    first = plan(world, cluster)
    assert instance_actions(first) == [(CREATE, "orders-0")]
    assert any("created once the primary orders-0 is ready" in note for note in first.waiting)
    world.apply(first)
    second = plan(world, cluster)
    assert second == []
    world.report("orders-0", ready=False)
    # Postgres runs as primary (not ready yet): the cluster has data, nothing is created yet.
    assert [a for a in plan(world, cluster) if a.verb == CREATE] == []
    world.report("orders-0")
    actions = [a for a in plan(world, cluster) if a.verb == CREATE]
    assert instance_actions(actions) == [(CREATE, "orders-1"), (CREATE, "orders-2")]
    assert {(a.body["spec"]["role"], a.body["spec"]["bootstrap"], a.body["spec"]["primary"])
            for a in actions} == {("replica", "basebackup", "orders-0")}


def test_missing_replicas_of_a_cluster_with_instances_wait_for_the_primary_to_be_ready():
    world, cluster = World(), make_cluster(instances=1)
    world.apply(plan(world, cluster))
    grown = spec_change(cluster, instances=3)
    assert [a for a in plan(world, grown) if a.verb == CREATE] == []
    assert any("wait for the primary orders-0 to be ready" in note for note in plan(world, grown).waiting)
    world.report("orders-0")
    assert instance_actions(a for a in plan(world, grown) if a.verb == CREATE) == [
        (CREATE, "orders-1"), (CREATE, "orders-2")]


def test_applying_a_plan_then_planning_again_yields_nothing():
    world, cluster = World(), make_cluster()
    world.apply(plan(world, cluster))
    assert plan(world, cluster) == []
    world.report("orders-0")
    world.apply(plan(world, cluster))
    assert plan(world, cluster) == []
    world.settle_all()
    assert plan(world, cluster) == []


def test_the_same_world_always_gives_the_same_plan():
    world, cluster = running_cluster()
    changed = spec_change(cluster, instances=5, parameters={"work_mem": "8MB"})
    assert plan(world, changed) == plan(world, changed)
    # A new cluster's first plan makes fresh keys for its certificates: the same actions, new keys.
    assert summary(plan(World(), cluster, seed=3)) == summary(plan(World(), cluster, seed=3))
    def passwords():
        return [a.body["stringData"]["password"] for a in plan(World(), cluster, seed=3)
                if a.kind == "Secret" and "password" in a.body["stringData"]]
    assert passwords() == passwords()


def test_a_cluster_being_deleted_is_left_to_the_garbage_collector():
    body = cluster_body()
    body["metadata"]["deletionTimestamp"] = "2026-11-22T12:00:00Z"
    assert plan(World(), Cluster.from_object(body)) == []


# ------------------------------------------------------------------------------ secrets and services

def test_existing_secrets_are_never_regenerated():
    world, cluster = running_cluster()
    before = copy.deepcopy(world.all("Secret"))
    assert [a for a in plan(world, cluster, seed=99) if a.kind == "Secret"] == []
    assert world.all("Secret") == before


def test_a_missing_secret_alone_is_recreated():
    world, cluster = running_cluster()
    del world.objects[("Secret", "orders-app")]
    assert summary(plan(world, cluster)) == [(CREATE, "Secret", "orders-app")]


def test_a_tampered_rw_selector_is_put_back():
    world, cluster = running_cluster()
    service = world.get("Service", "orders-rw")
    service["spec"]["selector"]["pgop.io/role"] = "replica"
    service["spec"]["selector"]["team"] = "x"
    [action] = plan(world, cluster)
    assert summary([action]) == [(PATCH, "Service", "orders-rw")]
    assert action.patch == {"spec": {"selector": {"pgop.io/role": "primary", "team": None}}}
    world.apply([action])
    assert plan(world, cluster) == []


def test_server_defaults_on_services_are_not_drift():
    world, cluster = running_cluster()
    assert world.get("Service", "orders-rw")["spec"]["clusterIP"]  # added by the fake API server
    assert plan(world, cluster) == []


def test_a_new_s3_credentials_secret_widens_the_agents_role():
    world, cluster = running_cluster()
    backed_up = Cluster.from_object(cluster_body(instances=3, backup={
        "s3": {"bucket": "b", "credentialsSecret": "s3-creds"}}))
    role_patches = [a for a in plan(world, backed_up) if a.kind == "Role"]
    assert len(role_patches) == 1
    assert any("s3-creds" in rule.get("resourceNames", []) for rule in role_patches[0].patch["rules"])


# ---------------------------------------------------------------------------------- scaling

def test_scale_up_adds_replicas_after_the_highest_ordinal():
    world, cluster = running_cluster(3)
    actions = plan(world, spec_change(cluster, instances=5))
    assert instance_actions(actions) == [(CREATE, "orders-3"), (CREATE, "orders-4")]
    assert all(a.body["spec"]["role"] == "replica" for a in actions if a.kind == "PgInstance")
    [pdb] = [a for a in actions if a.kind == "PodDisruptionBudget"]
    assert (pdb.name, pdb.patch["spec"]["minAvailable"]) == ("orders", 3)  # 4 replicas, one down at a time


def test_scale_up_never_reuses_a_name_still_taken():
    world, cluster = running_cluster(3)
    del world.objects[("PgInstance", "orders-1")]
    world.objects[("PgInstance", "orders-2")]["metadata"]["deletionTimestamp"] = "2026-11-22T12:00:00Z"
    # Live: 0. Terminating: 2. Two replicas are missing, and orders-2 is still a taken name.
    assert instance_actions(plan(world, cluster)) == [(CREATE, "orders-3"), (CREATE, "orders-4")]


def test_scale_down_removes_the_highest_ordinal_replicas():
    world, cluster = running_cluster(5)
    actions = plan(world, spec_change(cluster, instances=3))
    assert instance_actions(actions) == [(DELETE, "orders-4"), (DELETE, "orders-3")]
    kinds = [a.kind for a in actions]
    assert kinds.index("PodDisruptionBudget") < kinds.index("PgInstance")
    deletion = actions[-1]
    assert deletion.uid == world.get("PgInstance", "orders-3")["metadata"]["uid"]
    assert "slot pgop_orders_3" in deletion.reason


def test_scale_down_never_removes_the_primary_even_at_the_highest_ordinal():
    world, cluster = running_cluster(5)
    # After a failover, orders-4 is the primary.
    world.cluster_status.update(targetPrimary="orders-4", currentPrimary="orders-4")
    world.objects[("PgInstance", "orders-0")]["spec"].update(role="replica", primary="orders-4")
    world.objects[("PgInstance", "orders-4")]["spec"].update(role="primary", primary="orders-4")
    for name in ("orders-1", "orders-2", "orders-3"):
        world.objects[("PgInstance", name)]["spec"]["primary"] = "orders-4"
    actions = plan(world, spec_change(cluster, instances=2))
    assert instance_actions(actions) == [(DELETE, "orders-3"), (DELETE, "orders-2"), (DELETE, "orders-1")]
    world.apply(actions)
    assert world.instance_names() == ["orders-0", "orders-4"]
    assert world.instance("orders-4").is_primary


def test_scale_3_to_5_to_2_converges_and_keeps_the_primary():
    world, cluster = running_cluster(3)
    converge(world, spec_change(cluster, instances=5))
    assert world.instance_names() == [f"orders-{n}" for n in range(5)]
    converge(world, spec_change(cluster, instances=2))
    assert world.instance_names() == ["orders-0", "orders-1"]
    assert world.instance("orders-0").is_primary
    assert world.get("PodDisruptionBudget", "orders")["spec"]["minAvailable"] == 0  # its one replica may go


def test_no_replica_is_created_without_a_primary():
    world, cluster = running_cluster(3)
    # A failover is deciding: nobody is primary.
    world.cluster_status.update(targetPrimary="", failover={"kind": "Failover", "phase": "Deciding",
                                                            "oldPrimary": "orders-0", "since": "2026-11-22T12:00:00Z",
                                                            "phaseSince": "2026-11-22T12:00:00Z",
                                                            "deposed": ["orders-0"]})
    del world.objects[("PgInstance", "orders-2")]
    result = plan(world, cluster)
    assert [a for a in instance_actions(result) if a[0] != PATCH] == []
    assert any("primary" in note for note in result.waiting)


def test_nothing_new_is_made_while_all_instances_are_being_deleted():
    world, cluster = running_cluster(1)
    world.objects[("PgInstance", "orders-0")]["metadata"]["deletionTimestamp"] = "2026-11-22T12:00:00Z"
    result = plan(world, cluster)
    assert instance_actions(result) == []
    assert result.waiting


# ------------------------------------------------------------------------- configuration changes

def test_a_reloadable_change_reaches_every_instance_at_once_replicas_first():
    world, cluster = running_cluster(3)
    changed = spec_change(cluster, parameters={"work_mem": "64MB"})
    actions = plan(world, changed)
    assert instance_actions(actions) == [(PATCH, "orders-1"), (PATCH, "orders-2"), (PATCH, "orders-0")]
    for action in actions:
        assert action.patch["spec"]["parameters"] == {"work_mem": "64MB"}
        assert action.patch["spec"]["configHash"] != world.get("PgInstance", action.name)["spec"]["configHash"]
        assert "no restart" in action.reason
    world.apply(actions)
    assert plan(world, changed) == []


def test_synchronous_replicas_change_is_a_reload_for_all_and_no_new_pod():
    world, cluster = running_cluster(3)
    pods_before = {name: pod_inputs_hash(world.instance(name)) for name in world.instance_names()}
    changed = spec_change(cluster, synchronousReplicas=1)
    actions = plan(world, changed)
    assert instance_actions(actions) == [(PATCH, "orders-1"), (PATCH, "orders-2"), (PATCH, "orders-0")]
    assert all(a.patch["spec"]["synchronousReplicas"] == 1 for a in actions)
    world.apply(actions)
    assert {name: pod_inputs_hash(world.instance(name)) for name in world.instance_names()} == pods_before


def test_a_restart_change_rolls_one_instance_at_a_time_primary_last():
    world, cluster = running_cluster(3)
    changed = spec_change(cluster, parameters={"shared_buffers": "256MB"})
    order = []
    for _ in range(10):
        actions = plan(world, changed)
        if not actions:
            break
        assert len(actions) == 1 and "restart" in actions[0].reason
        order.append(actions[0].name)
        world.apply(actions)
        # Until the patched instance reports back on its new spec, nothing else moves.
        stalled = plan(world, changed)
        assert stalled == []
        if len(order) < 3:
            assert any(f"waits for {actions[0].name}" in note for note in stalled.waiting)
        world.report(actions[0].name)
    assert order == ["orders-1", "orders-2", "orders-0"]
    assert all(world.get("PgInstance", n)["spec"]["parameters"] == {"shared_buffers": "256MB"}
               for n in world.instance_names())


def test_a_change_that_breaks_a_replica_never_reaches_the_primary():
    world, cluster = running_cluster(3)
    changed = spec_change(cluster, parameters={"shared_preload_libraries": "does_not_exist"})
    world.apply(plan(world, changed))
    world.report("orders-1", ready=False)  # its Postgres does not come back
    for _ in range(3):
        assert plan(world, changed) == []
    assert world.get("PgInstance", "orders-0")["spec"]["parameters"] == {}


def test_not_ready_replicas_restart_first():
    world, cluster = running_cluster(3)
    world.report("orders-2", ready=False)
    [first] = plan(world, spec_change(cluster, parameters={"max_connections": "200"}))
    assert first.name == "orders-2"


def test_lowering_a_hot_standby_minimum_restarts_the_primary_first():
    world, cluster = running_cluster(3, parameters={"max_connections": "200"})
    lowered = spec_change(cluster, parameters={"max_connections": "150"})
    [first] = plan(world, lowered)
    assert first.name == "orders-0" and "primary first" in first.reason
    world.apply([first])
    world.report("orders-0")
    assert instance_actions(plan(world, lowered)) == [(PATCH, "orders-1")]


def test_an_image_change_rolls_like_a_restart():
    world, cluster = running_cluster(2)
    [first] = plan(world, spec_change(cluster, image="registry.example/pg:15.10"))
    assert first.name == "orders-1" and first.patch["spec"]["image"] == "registry.example/pg:15.10"


def test_a_rollout_waits_for_a_bootstrapping_instance():
    world, cluster = running_cluster(2)
    world.apply(plan(world, spec_change(cluster, instances=3)))  # orders-2 is being cloned
    tuned = spec_change(cluster, instances=3, parameters={"shared_buffers": "1GB"})
    # The clone serves nothing yet, so it takes the new spec first...
    first = plan(world, tuned)
    assert instance_actions(first) == [(PATCH, "orders-2")]
    world.apply(first)
    # ...and the serving instances wait until it has come up on it.
    result = plan(world, tuned)
    assert result == [] and any("waits for orders-2" in note for note in result.waiting)
    world.report("orders-2")
    assert instance_actions(plan(world, tuned)) == [(PATCH, "orders-1")]


def test_role_and_fencing_follow_the_failover_state_not_the_rollout():
    world, cluster = running_cluster(3)
    world.objects[("PgInstance", "orders-1")]["spec"]["fenced"] = True  # not in the annotation
    world.objects[("PgInstance", "orders-2")]["spec"]["role"] = "primary"  # a hand edit
    actions = plan(world, spec_change(cluster, parameters={"work_mem": "1MB"}))
    roles = [a for a in actions if a.kind == "PgInstance" and {"role", "fenced"} & set(a.patch["spec"])]
    assert [(a.name, a.patch["spec"]) for a in roles] == [("orders-2", {"role": "replica"}),
                                                          ("orders-1", {"fenced": False})]
    for action in actions:
        if action.kind == "PgInstance" and action not in roles:
            assert not {"role", "fenced", "primary", "bootstrap", "ordinal", "cluster"} & set(action.patch["spec"])


# ------------------------------------------------------------------------------- plan instance

def new_instance(world, reclaim="Retain"):
    """A world holding the first objects of a new cluster, orders-0 among them."""
    world.apply(plan(world, make_cluster(storage={"size": "1Gi", "reclaimPolicy": reclaim})))
    return world


def iplan(world, name="orders-0"):
    return plan_instance(world.get("PgInstance", name), world.get("PersistentVolumeClaim", name),
                         world.pods_of(name))


def _postgres(world, name="orders-0", phase="Running", ready=False, **state):
    """The kubelet's view of the Postgres pod's container (its agent bootstraps, then runs Postgres)."""
    world.objects[("Pod", name)]["status"] = {
        "phase": phase, "containerStatuses": [{"name": "postgres", "ready": ready, **state}]}


def test_a_new_instance_gets_its_volume_then_a_postgres_pod_that_bootstraps_it_first():
    world = new_instance(World())
    actions = iplan(world)
    assert summary(actions) == [(CREATE, "PersistentVolumeClaim", "orders-0"), (CREATE, "Pod", "orders-0")]
    pod = actions[1].body
    # One container: the agent bootstraps, then runs Postgres; no init container to wait for.
    assert "initContainers" not in pod["spec"]
    [container] = pod["spec"]["containers"]
    assert container["command"] == ["pgop", "agent", "run"]
    assert {"name": "pgdata", "mountPath": "/var/lib/postgresql/data"} in container["volumeMounts"]
    assert pod["metadata"]["annotations"][ANNOTATION_BOOTSTRAP_MODE] == "initdb"
    [permit] = [e for e in container["env"] if e["name"] == "PGOP_BOOTSTRAP_PERMIT"]
    assert permit["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.annotations['pgop.io/bootstrap-mode']"
    world.apply(actions)
    running = iplan(world)
    assert running == [] and any("initdb of orders-0 runs in pod orders-0" in note for note in running.waiting)


def test_the_volume_is_marked_once_postgres_was_ready_then_the_pod_may_not_bootstrap_again():
    world = new_instance(World())
    world.apply(iplan(world))
    _postgres(world, state={"running": {"startedAt": "2026-01-01T00:00:00Z"}})
    assert iplan(world) == []
    # A failed bootstrap exits the agent; the kubelet starts it again in place: say so.
    _postgres(world, restartCount=1, state={"waiting": {"reason": "CrashLoopBackOff"}})
    failed = iplan(world)
    assert failed == [] and any("waiting: CrashLoopBackOff, restarted 1 times" in note for note in failed.waiting)
    _postgres(world, ready=True, state={"running": {"startedAt": "2026-01-01T00:00:09Z"}})
    marked = iplan(world)
    assert summary(marked) == [(PATCH, "PersistentVolumeClaim", "orders-0")]
    assert marked[0].patch["metadata"]["annotations"][ANNOTATION_INITIALIZED] == "initdb"
    world.apply(marked)
    # The next pass takes away the pod's permission to bootstrap (its agent reads it at each
    # start); the pod itself stays: Postgres runs in it.
    [revoke] = iplan(world)
    assert (revoke.verb, revoke.kind, revoke.name) == (PATCH, "Pod", "orders-0")
    assert revoke.patch == {"metadata": {"annotations": {ANNOTATION_BOOTSTRAP_MODE: None}}}
    world.apply([revoke])
    assert ANNOTATION_BOOTSTRAP_MODE not in world.get("Pod", "orders-0")["metadata"]["annotations"]
    assert iplan(world) == []


def test_the_volume_is_marked_as_soon_as_the_agent_reported_from_the_pod_that_bootstraps_it():
    world = new_instance(World())
    world.apply(iplan(world))
    _postgres(world, state={"running": {}})  # the kubelet has not yet found the container ready
    world.report("orders-0", podUID="uid-of-an-earlier-pod")
    assert iplan(world) == []
    world.objects[("Pod", "orders-0")]["metadata"]["uid"] = "pod-uid-0"
    world.report("orders-0", podUID="pod-uid-0")
    assert summary(iplan(world)) == [(PATCH, "PersistentVolumeClaim", "orders-0")]


def test_a_pod_that_ended_before_its_volume_was_marked_is_replaced_by_one_that_bootstraps():
    world = new_instance(World())
    world.apply(iplan(world))
    _postgres(world, phase="Failed", state={"running": {}})  # evicted while it cloned
    assert summary(iplan(world)) == [(DELETE, "Pod", "orders-0")]
    world.apply(iplan(world))
    [again] = iplan(world)
    assert (again.verb, again.name) == (CREATE, "orders-0")
    assert again.body["metadata"]["annotations"][ANNOTATION_BOOTSTRAP_MODE] == "initdb"


def test_a_postgres_pod_without_a_bootstrap_on_an_unmarked_volume_is_left_alone():
    world = new_instance(World())
    world.apply(iplan(world))
    del world.objects[("Pod", "orders-0")]["metadata"]["annotations"][ANNOTATION_BOOTSTRAP_MODE]
    result = iplan(world)
    assert result == [] and any("not bootstrapping under a running Postgres" in n for n in result.waiting)


def test_a_hibernated_instance_loses_its_pod_even_while_it_bootstraps():
    world = new_instance(World())
    world.apply(iplan(world))
    _postgres(world, state={"running": {}})
    world.objects[("PgInstance", "orders-0")]["spec"]["hibernated"] = True
    assert summary(iplan(world)) == [(DELETE, "Pod", "orders-0")]


def new_restore(world):
    """orders-0 of a cluster restored from a backup: its bootstrap is a recovery."""
    world = new_instance(world)
    world.objects[("PgInstance", "orders-0")]["spec"]["bootstrap"] = "recovery"
    return world


def test_a_restore_runs_in_a_bootstrap_pod_of_its_own():
    world = new_restore(World())
    actions = iplan(world)
    assert summary(actions) == [(CREATE, "PersistentVolumeClaim", "orders-0"), (CREATE, "Pod", "orders-0-bootstrap")]
    assert "initContainers" not in actions[1].body["spec"]
    world.apply(actions)
    running = iplan(world)
    assert running == [] and any("recovery" in note for note in running.waiting)


def test_a_finished_restore_hands_the_volume_to_postgres():
    world = new_restore(World())
    world.apply(iplan(world))
    world.set_pod_phase("orders-0-bootstrap", "Succeeded")
    actions = iplan(world)
    assert summary(actions) == [
        (PATCH, "PersistentVolumeClaim", "orders-0"),
        (DELETE, "Pod", "orders-0-bootstrap"),
        (CREATE, "Pod", "orders-0"),
    ]
    assert actions[0].patch["metadata"]["annotations"][ANNOTATION_INITIALIZED] == "recovery"
    assert "initContainers" not in actions[2].body["spec"]
    world.apply(actions)
    assert iplan(world) == []


def _bootstrap_container(world, **state):
    world.objects[("Pod", "orders-0-bootstrap")]["status"] = {
        "phase": "Running", "containerStatuses": [{"name": "bootstrap", "state": state}]}


def test_the_handover_starts_when_the_bootstrap_container_exited_0_before_the_pod_phase_says_so():
    world = new_restore(World())
    world.apply(iplan(world))
    _bootstrap_container(world, running={"startedAt": "2026-01-01T00:00:00Z"})
    assert [a for a in iplan(world) if a.verb == CREATE] == []
    _bootstrap_container(world, terminated={"exitCode": 1, "reason": "Error"})  # OnFailure: it runs again
    assert iplan(world) == []
    _bootstrap_container(world, terminated={"exitCode": 0, "reason": "Completed"})
    assert summary(iplan(world)) == [
        (PATCH, "PersistentVolumeClaim", "orders-0"),
        (DELETE, "Pod", "orders-0-bootstrap"),
        (CREATE, "Pod", "orders-0"),
    ]


def test_the_handover_resumes_after_an_operator_crash_halfway():
    world = new_restore(World())
    world.apply(iplan(world))
    world.set_pod_phase("orders-0-bootstrap", "Succeeded")
    world.apply(iplan(world)[:1])  # only the volume got marked
    assert summary(iplan(world)) == [(DELETE, "Pod", "orders-0-bootstrap"), (CREATE, "Pod", "orders-0")]


def test_never_two_bootstrap_pods():
    world = new_restore(World())
    world.apply(iplan(world))
    for phase in ("Pending", "Running"):
        world.set_pod_phase("orders-0-bootstrap", phase)
        assert [a for a in iplan(world) if a.verb == CREATE] == []


def test_a_failed_bootstrap_pod_is_removed_before_another_is_made():
    world = new_restore(World())
    world.apply(iplan(world))
    world.set_pod_phase("orders-0-bootstrap", "Failed")
    assert summary(iplan(world)) == [(DELETE, "Pod", "orders-0-bootstrap")]
    world.apply(iplan(world))
    assert summary(iplan(world)) == [(CREATE, "Pod", "orders-0-bootstrap")]


def initialised(world, name="orders-0"):
    """The instance bootstrapped by its Postgres pod's agent, its volume marked and the pod's
    permission to bootstrap removed; Postgres runs."""
    world.apply(iplan(world, name))
    _postgres(world, name, ready=True, state={"running": {}})
    world.apply(iplan(world, name))
    world.apply(iplan(world, name))
    world.set_pod_phase(name, "Running")
    return world


def test_an_initialised_volume_is_never_bootstrapped_again():
    world = initialised(new_instance(World()))
    del world.objects[("Pod", "orders-0")]
    # Even for a new PgInstance with an empty status (e.g. recreated by hand) the volume decides.
    world.objects[("PgInstance", "orders-0")].pop("status", None)
    actions = iplan(world)
    assert summary(actions) == [(CREATE, "Pod", "orders-0")]
    assert ANNOTATION_BOOTSTRAP_MODE not in actions[0].body["metadata"]["annotations"]
    assert "PGOP_BOOTSTRAP_PERMIT" not in {e["name"] for e in actions[0].body["spec"]["containers"][0]["env"]}


def test_a_deleted_postgres_pod_comes_back_on_the_same_volume():
    world = initialised(new_instance(World()))
    world.report("orders-0")
    del world.objects[("Pod", "orders-0")]
    [action] = iplan(world)
    assert (action.verb, action.kind, action.name) == (CREATE, "Pod", "orders-0")
    [claim] = [v for v in action.body["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"]["claimName"] == "orders-0"
    assert "data is kept" in action.reason


def test_an_evicted_postgres_pod_is_replaced():
    world = initialised(new_instance(World()))
    world.set_pod_phase("orders-0", "Failed")
    assert summary(iplan(world)) == [(DELETE, "Pod", "orders-0")]


def test_a_bootstrap_pod_running_over_an_initialised_volume_is_stopped_first():
    world = initialised(new_instance(World()))
    del world.objects[("Pod", "orders-0")]
    world.objects[("Pod", "orders-0-bootstrap")] = {
        "kind": "Pod", "metadata": {"name": "orders-0-bootstrap", "uid": "b", "namespace": "shop",
                                    "labels": {"pgop.io/instance": "orders-0"}},
        "status": {"phase": "Running"}}
    result = iplan(world)
    assert summary(result) == [(DELETE, "Pod", "orders-0-bootstrap")]
    assert result.waiting


def test_a_volume_of_another_cluster_is_neither_bootstrapped_nor_started():
    world = new_instance(World())
    world.apply(iplan(world))
    del world.objects[("Pod", "orders-0")]
    world.get("PersistentVolumeClaim", "orders-0")["metadata"]["annotations"].update(
        {ANNOTATION_INITIALIZED: "initdb", "pgop.io/cluster-uid": "an-older-orders"})
    result = iplan(world)
    assert result == []
    assert any("another PgCluster" in note for note in result.waiting)


def test_the_pod_role_label_follows_the_role_postgres_reports():
    world = initialised(new_instance(World()))
    assert world.get("Pod", "orders-0")["metadata"]["labels"]["pgop.io/role"] == "pending"
    world.report("orders-0", role="primary")
    [action] = iplan(world)
    assert action.patch == {"metadata": {"labels": {"pgop.io/role": "primary"}}}
    world.apply([action])
    assert iplan(world) == []


def test_a_new_image_replaces_the_pod_on_the_same_volume():
    world = initialised(new_instance(World()))
    world.objects[("PgInstance", "orders-0")]["spec"]["image"] = "registry.example/pg:15.10"
    assert summary(iplan(world)) == [(DELETE, "Pod", "orders-0")]
    world.apply(iplan(world))
    [create] = iplan(world)
    assert create.body["spec"]["containers"][0]["image"] == "registry.example/pg:15.10"


def test_a_parameter_change_does_not_touch_the_pod():
    world = initialised(new_instance(World()))
    world.report("orders-0", role="primary")
    world.apply(iplan(world))
    world.objects[("PgInstance", "orders-0")]["spec"]["parameters"] = {"work_mem": "64MB"}
    assert iplan(world) == []


def test_volumes_grow_but_never_shrink():
    world = initialised(new_instance(World()))
    world.objects[("PgInstance", "orders-0")]["spec"]["storage"]["size"] = "2Gi"
    [grow] = iplan(world)
    assert grow.patch == {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}
    world.objects[("PgInstance", "orders-0")]["spec"]["storage"]["size"] = "512Mi"
    result = iplan(world)
    assert result == [] and any("never shrink" in note for note in result.waiting)


def test_reclaim_policy_decides_whether_the_volume_follows_its_instance():
    world = initialised(new_instance(World(), reclaim="Delete"))
    uid = world.get("PgInstance", "orders-0")["metadata"]["uid"]
    assert world.get("PersistentVolumeClaim", "orders-0")["metadata"]["ownerReferences"][0]["uid"] == uid
    world.objects[("PgInstance", "orders-0")]["spec"]["storage"]["reclaimPolicy"] = "Retain"
    [action] = iplan(world)
    assert action.patch == {"metadata": {"ownerReferences": None}}
    world.apply([action])
    assert iplan(world) == []


def test_a_deleted_instance_gets_no_actions():
    world = new_instance(World())
    world.objects[("PgInstance", "orders-0")]["metadata"]["deletionTimestamp"] = "2026-11-22T12:00:00Z"
    assert iplan(world) == []


def test_plan_instance_takes_the_plain_body_kopf_hands_over():
    world = new_instance(World())
    body = world.get("PgInstance", "orders-0")
    assert plan_instance(body, None, []) == plan_instance(Instance.from_object(body), None, [])


# ------------------------------------------------------------------------------ actions, patches

def test_actions_never_show_a_password():
    actions = plan(World(), make_cluster())
    passwords = [a.body["stringData"]["password"] for a in actions
                 if a.kind == "Secret" and "password" in a.body["stringData"]]
    keys = [value for a in actions if a.kind == "Secret" for key, value in a.body["stringData"].items()
            if key.endswith(".key")]
    text = " ".join(repr(a) + a.describe() for a in actions)
    assert passwords and keys and not any(p in text for p in passwords + keys)


def test_actions_carry_their_api_version():
    assert Action(CREATE, "PodDisruptionBudget", "x", "ns", "r").api_version == "policy/v1"
    assert Action(CREATE, "PgInstance", "x", "ns", "r").api_version == "pgop.io/v1"


def test_plan_compares_like_a_list_and_carries_waiting_notes():
    empty = Plan([], ["waiting for the primary"])
    assert empty == [] and not empty and empty.waiting == ["waiting for the primary"]


@pytest.mark.parametrize("target, patch, result", [
    # From RFC 7386, appendix A.
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
])
def test_apply_merge_patch_follows_rfc_7386(target, patch, result):
    assert apply_merge_patch(target, patch) == result


@pytest.mark.parametrize("current, desired", [
    ({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 5}}),
    ({"x": [1, 2]}, {"x": [2]}),
    ({}, {"a": {"b": 1}}),
    ({"a": {"b": 1}}, {}),
    ({"same": {"deep": True}}, {"same": {"deep": True}}),
])
def test_merge_patch_turns_current_into_desired(current, desired):
    patch = merge_patch(current, desired)
    assert apply_merge_patch(current, patch) == desired
    assert (patch == {}) == (current == desired)



def test_a_new_pod_template_revision_rolls_the_pods_of_an_upgraded_operator_one_at_a_time():
    from pgop.specs.pods import POD_TEMPLATE_REVISION
    world, cluster = running_cluster(3)
    for name in world.instance_names():  # instances made by an operator from before revisions
        world.get("PgInstance", name)["spec"].pop("podTemplate", None)
    before = {name: pod_inputs_hash(world.instance(name)) for name in world.instance_names()}
    order = []
    for _ in range(10):
        actions = plan(world, cluster)
        if not actions:
            break
        assert len(actions) == 1 and "podTemplate changed" in actions[0].reason
        assert actions[0].patch["spec"]["podTemplate"] == POD_TEMPLATE_REVISION
        order.append(actions[0].name)
        world.apply(actions)
        assert plan(world, cluster) == []  # nothing else moves until it is back on the new pod
        world.report(actions[0].name)
    assert order == ["orders-1", "orders-2", "orders-0"]
    after = {name: pod_inputs_hash(world.instance(name)) for name in world.instance_names()}
    assert all(after[name] != before[name] for name in before)  # each got a new pod
    assert plan(world, cluster) == []  # and the same revision again restarts nothing


def test_a_new_clusters_first_primary_deleted_before_it_ran_is_made_again_for_its_waiting_replicas():
    world, cluster = World(), make_cluster()
    world.apply(plan(world, cluster))
    del world.objects[("PgInstance", "orders-0")]  # by hand, while the replicas wait to clone it
    again = plan(world, cluster, pods=True)
    [made] = [a for a in again if a.verb == CREATE]
    assert (made.name, made.body["spec"]["role"], made.body["spec"]["bootstrap"]) == ("orders-0", "primary", "initdb")
    assert "went before it ever ran" in made.reason
    world.apply(again)
    assert plan(world, cluster, pods=True) == []


def test_a_first_primary_gone_after_an_instance_ran_is_never_initdb_again():
    world, cluster = World(), make_cluster()
    world.apply(plan(world, cluster))
    world.report("orders-1", ready=False)  # a replica's agent ran: it holds a clone
    del world.objects[("PgInstance", "orders-0")]
    assert [a for a in plan(world, cluster, pods=True) if a.verb == CREATE] == []
    world, cluster = World(), make_cluster()
    world.apply(plan(world, cluster))
    world.objects[("PersistentVolumeClaim", "orders-1")] = {
        "kind": "PersistentVolumeClaim", "metadata": {
            "name": "orders-1", "labels": {"pgop.io/cluster": "orders", "pgop.io/instance": "orders-1"},
            "annotations": {"pgop.io/initialized": "basebackup"}}}
    del world.objects[("PgInstance", "orders-0")]
    assert [a for a in plan(world, cluster, pods=True) if a.verb == CREATE] == []
