"""`pgop restart` and `pgop reload`: annotations on the PgCluster, rolled out by the planner into
spec.restartRequestedAt / spec.reloadRequestedAt of each PgInstance, carried out by the agent."""
from __future__ import annotations

import json
from dataclasses import replace

from pgop.agent import ha
from pgop.cluster.failover import ANNOTATION_SWITCHOVER
from pgop.kernel.actions import PATCH
from pgop.specs.instance import ANNOTATION_RELOAD, ANNOTATION_RESTART, ANNOTATION_RESTART_INSTANCES
from tests.unit.test_agent_ha import running, stopped, wanted
from tests.unit.world import instance_actions, plan, running_cluster

T1 = "2026-11-22T12:00:00Z"
T2 = "2026-11-22T13:00:00Z"


def restart_turns(world, cluster, stream=False):
    """Plan, apply, let the patched instance report back; the order of the instances patched."""
    order = []
    for _ in range(10):
        actions = plan(world, cluster)
        patched = instance_actions(actions)
        if not actions:
            break
        if not patched:
            return order, actions
        assert len(patched) == 1, patched
        order.append(patched[0][1])
        world.apply(actions)
        assert instance_actions(plan(world, cluster)) == []  # nothing moves until it is back
        world.report(patched[0][1], **({"walReceiver": "streaming", "following": "orders-0"}
                                       if stream and patched[0][1] != "orders-0" else {}))
    return order, None


def test_a_restart_rolls_replicas_first_then_the_primary_in_place_without_a_streaming_replica():
    world, cluster = running_cluster(3)
    world.cluster_annotations[ANNOTATION_RESTART] = T1
    order, _ = restart_turns(world, cluster)
    assert order == ["orders-1", "orders-2", "orders-0"]
    assert {world.get("PgInstance", n)["spec"]["restartRequestedAt"] for n in order} == {T1}
    assert plan(world, cluster) == []  # done: the same token asks for nothing more


def test_the_primary_is_handed_over_by_switchover_before_its_restart():
    world, cluster = running_cluster(3)
    for name in ("orders-1", "orders-2"):
        world.report(name, walReceiver="streaming", following="orders-0")
    world.cluster_annotations[ANNOTATION_RESTART] = T1
    order, last = restart_turns(world, cluster, stream=True)
    assert order == ["orders-1", "orders-2"]
    [switchover] = last
    assert switchover.kind == "PgCluster" and switchover.verb == PATCH
    assert switchover.patch["metadata"]["annotations"][ANNOTATION_SWITCHOVER] in ("orders-1", "orders-2")
    assert "restartRequestedAt" not in world.get("PgInstance", "orders-0")["spec"]


def test_a_restart_of_one_instance_leaves_the_others_alone():
    world, cluster = running_cluster(3)
    world.cluster_annotations[ANNOTATION_RESTART] = T1
    world.cluster_annotations[ANNOTATION_RESTART_INSTANCES] = json.dumps(["orders-2"])
    order, _ = restart_turns(world, cluster)
    assert order == ["orders-2"]
    assert "restartRequestedAt" not in world.get("PgInstance", "orders-1")["spec"]
    # A later restart of the whole cluster reaches every instance, orders-2 again too.
    world.cluster_annotations[ANNOTATION_RESTART] = T2
    del world.cluster_annotations[ANNOTATION_RESTART_INSTANCES]
    order, _ = restart_turns(world, cluster)
    assert order == ["orders-1", "orders-2", "orders-0"]


def test_an_unreadable_instance_list_restarts_nothing():
    world, cluster = running_cluster(2)
    world.cluster_annotations[ANNOTATION_RESTART] = T1
    world.cluster_annotations[ANNOTATION_RESTART_INSTANCES] = "orders-1"
    assert instance_actions(plan(world, cluster)) == []


def test_removing_the_restart_annotation_restarts_nothing():
    world, cluster = running_cluster(2)
    world.cluster_annotations[ANNOTATION_RESTART] = T1
    restart_turns(world, cluster)
    del world.cluster_annotations[ANNOTATION_RESTART]
    actions = plan(world, cluster)
    assert instance_actions(actions) == [(PATCH, "orders-1"), (PATCH, "orders-0")]  # one plan: no roll
    assert all("no restart" in a.reason and a.patch["spec"] == {"restartRequestedAt": None} for a in actions)


def test_a_reload_reaches_every_instance_in_one_plan_replicas_first():
    world, cluster = running_cluster(3)
    world.cluster_annotations[ANNOTATION_RELOAD] = T1
    actions = plan(world, cluster)
    assert instance_actions(actions) == [(PATCH, "orders-1"), (PATCH, "orders-2"), (PATCH, "orders-0")]
    assert all(a.patch["spec"] == {"reloadRequestedAt": T1} and "no restart" in a.reason for a in actions)


def test_the_agent_restarts_once_per_token():
    assert ha.decide(wanted(restart_token=T1), running()).kinds() == []  # honoured unknown: nothing
    actual = running()
    asked = ha.decide(wanted(restart_token=T1), replace(actual, restarted_for=""))
    assert asked.kinds() == [ha.RESTART] and T1 in asked.actions[0].reason and not asked.applied
    done = ha.decide(wanted(restart_token=T1), replace(actual, restarted_for=T1))
    assert done.kinds() == [] and done.applied


def test_the_agent_reloads_once_per_token_and_a_restart_covers_a_reload():
    actual = running()
    asked = ha.decide(wanted(reload_token=T1), replace(actual, reloaded_for=""))
    assert asked.kinds() == [ha.RELOAD]
    both = ha.decide(wanted(reload_token=T1, restart_token=T1),
                     replace(actual, reloaded_for="", restarted_for=""))
    assert both.kinds() == [ha.RESTART]
    changed = ha.decide(wanted(restart_token=T1, settings={**wanted().settings, "shared_buffers": "1GB"}),
                        replace(actual, restarted_for=""))
    assert changed.kinds() == [ha.WRITE_CONFIG, ha.RESTART]  # one restart, not two


def test_a_stopped_postgres_just_starts():
    assert ha.decide(wanted(restart_token=T1), stopped()).kinds() == [ha.START]
