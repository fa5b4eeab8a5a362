"""Leader election against the real kube-apiserver (`make up`): two candidates, one Lease.
The operator processes themselves are tried in e2e/test_operator_ha.py."""
from __future__ import annotations

import time

import pytest

from pgop.runtime import leader
from pgop.runtime.kube import Kube

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


@pytest.fixture
def kube(local_env):
    from kubernetes import client, config
    configuration = client.Configuration()
    config.load_kube_config(config_file=local_env["KUBECONFIG"], client_configuration=configuration)
    return Kube(client.ApiClient(configuration))


def test_one_leader_a_crashed_one_is_replaced_after_the_duration_a_released_one_at_once(kube, namespace):
    a = leader.Elector(kube, namespace, "ops", identity="a")
    b = leader.Elector(kube, namespace, "ops", identity="b")
    assert a.try_acquire()                       # the first one creates the Lease
    assert not b.try_acquire()                   # held: b waits
    lease = kube.get("Lease", namespace, "ops")["spec"]
    assert lease["holderIdentity"] == "a" and lease["leaseDurationSeconds"] == leader.LEASE_DURATION

    # a renews; b keeps waiting, however long, while the record keeps changing
    for _ in range(3):
        time.sleep(leader.LEASE_DURATION / 3)
        a.renew()
        assert not b.try_acquire()

    # a "crashes" (renews no more): b takes over once it has seen no change for the duration
    stopped = time.monotonic()
    while not b.try_acquire():
        assert time.monotonic() - stopped < leader.LEASE_DURATION + 5, "b never took the Lease"
        time.sleep(0.2)
    waited = time.monotonic() - stopped
    assert waited >= leader.LEASE_DURATION - 1  # not before a could have stopped acting
    lease = kube.get("Lease", namespace, "ops")["spec"]
    assert lease["holderIdentity"] == "b" and lease["leaseTransitions"] == 1
    # a, back, learns it lost
    with pytest.raises(leader.LostLeadership, match="held by b"):
        a.renew()

    # b stops cleanly: a takes the Lease at its next look, without waiting out the duration
    b.release()
    assert a.try_acquire()
    assert kube.get("Lease", namespace, "ops")["spec"]["holderIdentity"] == "a"


def test_two_candidates_racing_for_a_free_lease_one_wins(kube, namespace):
    a = leader.Elector(kube, namespace, "race", identity="a")
    b = leader.Elector(kube, namespace, "race", identity="b")
    assert a.try_acquire()
    a.release()
    # both read the free Lease, then both write: the second write carries a stale resourceVersion
    record_a, record_b = a._read(), b._read()
    assert record_a.holder is None and record_b.holder is None
    from datetime import UTC, datetime
    won_a = a._write(leader.lease_spec("a", record_a, datetime.now(UTC)))
    won_b = b._write(leader.lease_spec("b", record_b, datetime.now(UTC)))
    assert (won_a, won_b) == (True, False)
    assert kube.get("Lease", namespace, "race")["spec"]["holderIdentity"] == "a"
