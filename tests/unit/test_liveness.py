"""Agent liveness through a Lease per instance (pgop.kernel.liveness): the agent renews its Lease
when its status has nothing new, the operator takes the newest of the status's heartbeat and the
Lease's renewal as the agent's sign of life, and what needs a report newer than a request still
reads the status alone."""
from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from pgop.agent import kube
from pgop.agent.loop import Agent
from pgop.agent.settings import AgentSettings
from pgop.cluster import controller, pace
from pgop.cluster.failover import _Facts
from pgop.cluster.leases import LeaseTable
from pgop.cluster.observe import IndexReader
from pgop.kernel import liveness
from pgop.kernel.conditions import rfc3339
from pgop.kernel.meta import LABEL_CLUSTER, LABEL_COMPONENT, LABEL_INSTANCE
from pgop.kernel.model import Cluster, Instance
from pgop.kernel.readiness import DEFAULT_HEARTBEAT_TIMEOUT, is_ready, why_not_ready
from tests.unit.test_agent_parts import POD_ENV

NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
POD = "7d1c0a52-pod-uid"


def body(beat_age: float | None, pod_uid: str | None = POD, **status) -> dict:
    st = {"ready": True, "role": "replica", "phase": "Running", **status}
    if beat_age is not None:
        st["lastHeartbeat"] = rfc3339(NOW - timedelta(seconds=beat_age))
    if pod_uid:
        st["podUID"] = pod_uid
    return {"metadata": {"name": "orders-1", "namespace": "shop", "generation": 1, "uid": "inst-uid"},
            "spec": {"cluster": "orders", "role": "replica", "ordinal": 1}, "status": st}


def lease(age: float, holder: str = POD, instance: str = "orders-1") -> dict:
    made = liveness.lease_body("shop", instance, "orders", "inst-uid", holder, NOW - timedelta(seconds=age))
    return made


def seen(age: float, holder: str = POD) -> dict[str, str]:
    kept = liveness.seen(lease(age, holder))
    assert kept is not None
    return kept[1]


# ------------------------------------------------------------------------------- the Lease

def test_the_lease_is_the_instance_s_own_owned_by_its_pginstance_and_renewed_by_a_merge_patch():
    made = lease(0)
    assert made["metadata"]["name"] == "orders-1-liveness"
    assert made["metadata"]["labels"][LABEL_INSTANCE] == "orders-1"
    assert made["metadata"]["labels"][LABEL_CLUSTER] == "orders"
    assert made["metadata"]["labels"][LABEL_COMPONENT] == "liveness"
    owner = made["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("PgInstance", "orders-1", "inst-uid")
    assert made["spec"]["holderIdentity"] == POD
    assert made["spec"]["renewTime"] == "2026-12-03T12:00:00.000000Z"  # a MicroTime
    assert made["spec"]["leaseDurationSeconds"] == int(DEFAULT_HEARTBEAT_TIMEOUT)
    later = NOW + timedelta(seconds=2.5)
    assert liveness.renewal(POD, later) == {"spec": {"holderIdentity": POD,
                                                     "renewTime": "2026-12-03T12:00:02.500000Z"}}


def test_an_agent_renews_only_a_lease_its_labels_make_its_own():
    assert liveness.is_own(lease(0), "orders-1", "orders")
    assert not liveness.is_own(lease(0), "orders-2", "orders")
    someone_else = {"metadata": {"name": "orders-1-liveness", "labels": {"app": "other"}}}
    assert not liveness.is_own(someone_else, "orders-1", "orders")
    assert liveness.seen(someone_else) is None


# ------------------------------------------------------------------ what the operator reads

def test_the_newest_of_status_heartbeat_and_lease_renewal_is_the_sign_of_life():
    instance = Instance.from_object(liveness.with_liveness(body(50), seen(1)))
    assert instance.status.last_heartbeat == NOW - timedelta(seconds=50)  # the report
    assert instance.status.alive_at == NOW - timedelta(seconds=1)  # the renewal
    assert is_ready(instance, NOW)
    stale_status_only = Instance.from_object(body(50))
    assert not is_ready(stale_status_only, NOW)
    assert "50s ago" in why_not_ready(stale_status_only, NOW)
    # a renewal older than the status write changes nothing
    assert Instance.from_object(liveness.with_liveness(body(2), seen(30))).status.alive_at == NOW - timedelta(seconds=2)


def test_a_lease_held_by_another_pod_vouches_for_nothing():
    # a replaced pod's agent (force-deleted, its containers still running) renews with its old UID
    assert Instance.from_object(liveness.with_liveness(body(50), seen(1, holder="old-pod"))).status.alive_at \
        == NOW - timedelta(seconds=50)
    assert liveness.with_liveness(body(50, pod_uid=None), seen(1)) == body(50, pod_uid=None)


def test_the_body_given_is_never_changed():
    original = body(50)
    overlaid = liveness.with_liveness(original, seen(1))
    assert liveness.LIVENESS_KEY not in original and liveness.LIVENESS_KEY in overlaid


def test_a_renewal_does_not_answer_a_request_made_after_the_last_status_write():
    cluster = Cluster.from_object({"metadata": {"name": "orders", "namespace": "shop"}, "spec": {"instances": 2}})
    instance = Instance.from_object(liveness.with_liveness(body(20), seen(1)))
    facts = _Facts(cluster, [instance], {instance.name: instance}, None, None, frozenset(), NOW,
                   DEFAULT_HEARTBEAT_TIMEOUT)
    assert facts.fresh(instance)  # alive
    assert not facts.fresh(instance, NOW - timedelta(seconds=10))  # but it has not reported since
    assert facts.fresh(instance, NOW - timedelta(seconds=30))


def test_timed_passes_and_the_silent_agent_report_read_the_lease():
    overlaid = liveness.with_liveness(body(50), seen(1))
    assert pace.heartbeats([overlaid, body(50), body(None)]) == [
        NOW - timedelta(seconds=1), NOW - timedelta(seconds=50), None]
    assert not controller.silent_agent(Instance.from_object(overlaid), NOW)
    assert controller.silent_agent(Instance.from_object(body(50)), NOW)


def test_the_lease_table_follows_list_and_watch_and_the_index_reader_puts_it_beside_the_body():
    table = LeaseTable()
    other = liveness.lease_body("billing", "pay-0", "pay", "u", "p", NOW)
    table.fill(None, [lease(5), other, {"metadata": {"name": "x", "namespace": "shop"}}])
    assert table.get("shop", "orders-1") == seen(5)
    table.event("MODIFIED", lease(1), NOW)
    assert table.get("shop", "orders-1") == seen(1)
    table.fill("billing", [])  # a namespace's list replaces only that namespace
    assert table.get("billing", "pay-0") is None and table.get("shop", "orders-1") is not None
    index = {"pgop_instances": {("cluster", "shop", "orders"): [body(50)], ("name", "shop", "orders-1"): [body(50)]}}
    reader = IndexReader(index, False, None, table.get)  # type: ignore[arg-type]
    assert Instance.from_object(reader.instances("shop", "orders")[0]).status.alive_at == NOW - timedelta(seconds=1)
    assert Instance.from_object(reader.instance("shop", "orders-1")).status.alive_at == NOW - timedelta(seconds=1)
    table.event("DELETED", lease(1), NOW)
    assert Instance.from_object(reader.instances("shop", "orders")[0]).status.alive_at == NOW - timedelta(seconds=50)


# ------------------------------------------------------------------------------ the agent

def _agent(store_cls=kube.MemoryInstanceStore, **changes) -> tuple[Agent, kube.MemoryInstanceStore]:
    settings = dataclasses.replace(AgentSettings.from_env({**POD_ENV, "PGOP_POD_UID": POD}), **changes)
    store = store_cls()
    store.put(settings.instance, {"cluster": settings.cluster, "role": "replica"})
    return Agent(settings, store), store


def test_an_unchanged_status_is_a_lease_renewal_and_is_written_again_only_every_report_refresh():
    agent, store = _agent(status_refresh=0, report_refresh=3600)
    for _ in range(4):  # no data directory: the same Failed status each turn
        agent.turn()
    assert len(store.patches) == 1  # the first report
    assert store.renewals == [(agent.settings.instance, POD)] * 3  # then a heartbeat per turn
    made = store.leases["orders-1-liveness"]
    assert made["metadata"]["ownerReferences"][0]["uid"] == "uid-orders-1"
    agent2, store2 = _agent(status_refresh=0, report_refresh=0)
    for _ in range(3):
        agent2.turn()
    assert len(store2.patches) == 3 and not store2.renewals


def test_a_replica_renews_every_status_refresh_not_every_turn():
    agent, store = _agent(status_refresh=3600, report_refresh=3600)
    for _ in range(3):
        agent.turn()
    assert len(store.patches) == 1 and store.renewals == []


def test_a_change_is_written_to_the_status_at_once_whatever_the_lease():
    agent, store = _agent(status_refresh=0, report_refresh=3600)
    agent.turn()
    agent.turn()
    store.patch_status(agent.settings.instance, {"phase": "Unavailable", "ready": False})  # e.g. the operator
    agent.turn()
    assert store.objects[agent.settings.instance]["status"]["phase"] == "Failed"
    assert len(store.patches) == 3 and len(store.renewals) == 1


class _NoLeases(kube.MemoryInstanceStore):
    def renew_lease(self, instance, holder, now):
        raise PermissionError("leases are forbidden (simulated)")


def test_a_lease_that_cannot_be_renewed_puts_the_heartbeat_back_into_the_status():
    agent, store = _agent(_NoLeases, status_refresh=0, report_refresh=3600)
    for _ in range(3):
        agent.turn()
    assert len(store.patches) == 3  # every turn's heartbeat, as without Leases


def test_a_lease_someone_else_made_is_not_renewed():
    agent, store = _agent(status_refresh=0, report_refresh=3600)
    store.leases["orders-1-liveness"] = {"metadata": {"name": "orders-1-liveness", "labels": {"app": "x"}},
                                         "spec": {"holderIdentity": "them"}}
    for _ in range(2):
        agent.turn()
    assert store.leases["orders-1-liveness"]["spec"] == {"holderIdentity": "them"}
    assert len(store.patches) == 2
