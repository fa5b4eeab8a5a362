"""The agent writes its PgInstance status when something in it changes, and otherwise only every
status refresh to renew the heartbeat: an idle instance is one small write per refresh, while a
change (what failover reacts to) is written on the turn it is seen."""
from __future__ import annotations

import dataclasses

from pgop.agent import kube
from pgop.agent.loop import Agent
from pgop.agent.settings import DEFAULT_STATUS_REFRESH, AgentSettings
from pgop.agent.status import changes, worth_writing
from pgop.kernel.readiness import DEFAULT_HEARTBEAT_TIMEOUT
from tests.unit.test_agent_parts import POD_ENV

STORED = {"lastHeartbeat": "2026-12-02T10:00:00Z", "phase": "Running", "ready": True, "role": "replica",
          "walReceiver": "streaming", "archiver": {"archivedCount": 3, "refusal": None},
          "replicaSyncStates": {"b": "quorum"},
          "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-02T09:00:00Z"}]}


def test_a_patch_that_repeats_the_stored_status_changes_nothing():
    same = {**STORED, "lastHeartbeat": "2026-12-02T10:00:02Z", "message": None,
            "archiver": {"archivedCount": 3, "refusal": None}}
    assert not changes(STORED, {k: v for k, v in same.items() if k != "lastHeartbeat"})


def test_what_failover_reacts_to_is_a_change():
    assert changes(STORED, {"walReceiver": "stopped"})
    assert changes(STORED, {"ready": False})
    assert changes(STORED, {"role": "primary"})
    assert changes(STORED, {"message": "rejoining"})  # a new field
    assert changes(STORED, {"replicaSyncStates": {"b": None}})  # removed from a map
    assert changes(STORED, {"replicaSyncStates": None})  # the whole map removed
    assert changes(STORED, {"archiver": {"archivedCount": 4}})
    assert changes(STORED, {"conditions": [{"type": "Ready", "status": "False"}]})
    assert changes({}, {"archiver": {"archivedCount": 0}})
    assert not changes({}, {"archiver": {"refusal": None}})  # nothing to remove


def test_worth_writing_renews_the_heartbeat_only_after_the_refresh():
    patch = {**STORED, "lastHeartbeat": "2026-12-02T10:00:04Z"}
    assert worth_writing(STORED, patch, since_written=None)  # nothing written yet by this agent
    assert not worth_writing(STORED, patch, since_written=DEFAULT_STATUS_REFRESH - 0.1)
    assert worth_writing(STORED, patch, since_written=DEFAULT_STATUS_REFRESH)
    assert worth_writing(STORED, {**patch, "walReceiver": "stopped"}, since_written=0.1)


def test_three_refreshes_fit_in_the_heartbeat_timeout():
    # The operator calls an agent silent after DEFAULT_HEARTBEAT_TIMEOUT: three missed refreshes.
    assert 3 * DEFAULT_STATUS_REFRESH <= DEFAULT_HEARTBEAT_TIMEOUT


def _agent(refresh: float) -> tuple[Agent, kube.MemoryInstanceStore]:
    settings = dataclasses.replace(AgentSettings.from_env(POD_ENV), status_refresh=refresh)
    store = kube.MemoryInstanceStore()
    store.put(settings.instance, {"cluster": settings.cluster, "role": "replica"})
    return Agent(settings, store), store


def test_an_idle_agent_does_not_write_the_same_status_every_turn(tmp_path):
    agent, store = _agent(refresh=3600)
    for _ in range(5):  # no data directory: the same Failed status each turn
        agent.turn()
    assert len(store.patches) == 1
    assert store.objects[agent.settings.instance]["status"]["phase"] == "Failed"


def test_another_writer_s_change_is_put_right_on_the_next_turn():
    agent, store = _agent(refresh=3600)
    agent.turn()
    store.patch_status(agent.settings.instance, {"phase": "Unavailable", "ready": False})  # e.g. the operator
    agent.turn()
    assert store.objects[agent.settings.instance]["status"]["phase"] == "Failed"
    assert len(store.patches) == 3  # the agent's, the other writer's, the agent's again


def test_with_a_zero_refresh_every_turn_beats():
    agent, store = _agent(refresh=0)
    for _ in range(3):
        agent.turn()
    assert len(store.patches) == 3


def test_a_primary_beats_every_turn_replicas_every_refresh():
    from pgop.agent.observed import PostgresState
    from pgop.agent.status import refresh_for
    from pgop.agent.streaming import ReceiverState
    from pgop.kernel.model import Instance

    def instance(role: str) -> Instance:
        return Instance.from_object({"metadata": {"name": "a-1", "namespace": "n", "generation": 1},
                                     "spec": {"cluster": "a", "role": role}})
    assert refresh_for(instance("primary"), PostgresState(), 5.0) == 0.0
    assert refresh_for(instance("replica"), PostgresState(role="primary"), 5.0) == 0.0  # still running as one
    streaming = ReceiverState(status="streaming", received_tli=1, sender_host="10.0.0.1")
    assert refresh_for(instance("replica"), PostgresState(role="replica", receiver=streaming), 5.0) == 5.0
    # without a WAL stream a replica is a witness of a lost primary: it beats every turn
    assert refresh_for(instance("replica"), PostgresState(role="replica"), 5.0) == 0.0
    waiting = ReceiverState(status="waiting", received_tli=1, sender_host="10.0.0.1")
    assert refresh_for(instance("replica"), PostgresState(role="replica", receiver=waiting), 5.0) == 0.0


def test_a_new_spec_generation_is_answered_at_once():
    agent, store = _agent(refresh=3600)
    agent.turn()
    store.update_spec(agent.settings.instance, synchronousReplicas=1)  # the operator asks something
    agent.turn()
    assert len(store.patches) == 2  # the report after the change, though the status did not change
