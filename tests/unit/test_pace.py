"""The pace of the timed passes (pgop.cluster.pace): fast while anything moves; a steady object is
looked at when its first heartbeat would go stale and has a full pass every RESYNC seconds, or
when something of it is due."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pgop.cluster import pace
from pgop.kernel.model import Instance
from pgop.kernel.readiness import DEFAULT_HEARTBEAT_TIMEOUT, is_stale

NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


def _ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def test_anything_moving_is_looked_at_every_fast_interval():
    assert pace.next_pass_in(False, [_ago(1)], NOW) == pace.FAST
    assert pace.next_pass_in(True, [_ago(1), None], NOW) == pace.FAST  # an instance that never beat
    assert pace.next_pass_in(True, [_ago(DEFAULT_HEARTBEAT_TIMEOUT + 1)], NOW) == pace.FAST  # already stale


def test_a_steady_object_is_looked_at_when_its_first_heartbeat_would_go_stale():
    # Beats 1 s and 9 s old: the older one goes stale first, 6 s (and the margin) from now.
    steady = pace.next_pass_in(True, [_ago(1), _ago(9)], NOW)
    assert steady == pace.Steady(look=DEFAULT_HEARTBEAT_TIMEOUT - 9 + pace.MARGIN, resync=pace.RESYNC)
    # At that moment the readiness rule says it is stale: the look asks for a pass, which sees a
    # silent agent.
    later = NOW + timedelta(seconds=steady.look)
    silent = Instance.from_object({"metadata": {"name": "i-1", "namespace": "n"}, "spec": {"cluster": "c"},
                                   "status": {"lastHeartbeat": _ago(9).strftime("%Y-%m-%dT%H:%M:%SZ")}})
    assert is_stale(silent, later)
    assert not is_stale(silent, later - timedelta(seconds=pace.MARGIN + 0.01))
    assert pace.look_again_in(True, [_ago(1), _ago(9)], later) is None
    # Had the agent beaten meanwhile, the look finds its new deadline and no pass is due.
    assert pace.look_again_in(True, [_ago(1), later], later) == DEFAULT_HEARTBEAT_TIMEOUT - 1 + pace.MARGIN - steady.look


def test_a_look_asks_for_a_pass_when_the_object_is_no_longer_steady():
    assert pace.look_again_in(False, [_ago(0)], NOW) is None
    assert pace.look_again_in(True, [_ago(0), None], NOW) is None
    # fresh beats: the next look at most LOOK_EVERY seconds on (its view may change meanwhile)
    assert pace.look_again_in(True, [_ago(0)], NOW) == pace.LOOK_EVERY < DEFAULT_HEARTBEAT_TIMEOUT + pace.MARGIN


def test_a_steady_object_has_a_full_pass_every_resync_interval_at_most():
    assert pace.next_pass_in(True, [_ago(0)], NOW) == pace.Steady(pace.LOOK_EVERY, pace.RESYNC)
    assert pace.next_pass_in(True, [], NOW) == pace.Steady(pace.LOOK_EVERY, pace.RESYNC)  # no heartbeat to watch
    # The jitter takes off up to a tenth, so many clusters' passes spread out.
    assert pace.next_pass_in(True, [], NOW, jitter=0.999).resync > pace.RESYNC * (1 - pace.JITTER) - 0.01
    assert pace.next_pass_in(True, [], NOW, jitter=0.5).resync == pace.RESYNC * (1 - pace.JITTER / 2)


def test_something_due_brings_the_full_pass_forward():
    # A scheduled backup due in 20 s: the pass is just after it, whatever the resync interval.
    due = NOW + timedelta(seconds=20)
    assert pace.next_pass_in(True, [_ago(0)], NOW, due=due) == pace.Steady(pace.LOOK_EVERY, 20 + pace.MARGIN)
    assert pace.next_pass_in(True, [_ago(0)], NOW, due=NOW + timedelta(seconds=3)) == pace.Steady(3.25, 3.25)
    assert pace.next_pass_in(True, [], NOW, due=NOW + timedelta(hours=1)).resync == pace.RESYNC
    assert pace.next_pass_in(True, [], NOW, due=NOW - timedelta(seconds=5)) == pace.Steady(pace.SHORTEST, pace.SHORTEST)


def test_never_a_busy_loop():
    # A heartbeat a hair from going stale (or a clock that jumped): the shortest wait, not zero.
    hair = [_ago(DEFAULT_HEARTBEAT_TIMEOUT + pace.MARGIN - 0.01)]
    assert pace.next_pass_in(True, hair, NOW).look == pace.SHORTEST
    assert pace.look_again_in(True, hair, NOW) == pace.SHORTEST


def test_heartbeats_are_read_from_the_pginstances():
    instances = [{"status": {"lastHeartbeat": "2026-12-03T11:59:55Z"}}, {"status": {}}, {}]
    assert pace.heartbeats(instances) == [_ago(5), None, None]


PRIMARY = {"status": {"role": "primary"}}
STREAMING_REPLICA = {"status": {"role": "replica", "walReceiver": "streaming", "following": "c-1"}}


def test_only_a_ready_cluster_of_its_current_generation_is_steady():
    def cluster(phase, observed=3, generation=3):
        return {"metadata": {"generation": generation}, "status": {"phase": phase, "observedGeneration": observed}}
    members = [PRIMARY, STREAMING_REPLICA, STREAMING_REPLICA]
    assert pace.cluster_steady(cluster("Ready"), members)
    for phase in ("Creating", "Degraded", "Failover", "Switchover", "Updating", "Scaling", "Hibernating", None):
        assert not pace.cluster_steady(cluster(phase), members), phase
    assert not pace.cluster_steady(cluster("Ready", observed=2), members)  # a new spec not yet looked at
    assert not pace.cluster_steady({"metadata": {}}, members)


def test_a_replica_that_lost_its_wal_stream_keeps_the_cluster_at_the_fast_pace():
    """Its report may be the second witness of a silent primary: the failover may start 6 s after
    the primary's last beat (CORROBORATED_SILENCE), well before the heartbeat timeout."""
    ready = {"metadata": {"generation": 1}, "status": {"phase": "Ready", "observedGeneration": 1}}
    lost = {"status": {"role": "replica", "walReceiver": "stopped", "following": "c-1"}}
    assert not pace.cluster_steady(ready, [PRIMARY, STREAMING_REPLICA, lost])
    assert not pace.cluster_steady(ready, [PRIMARY, {"status": {"role": "replica"}}])


def test_only_a_ready_instance_in_the_role_it_was_given_is_steady():
    assert pace.instance_steady({"spec": {"role": "primary"}, "status": {"ready": True, "role": "primary"}})
    assert pace.instance_steady({"spec": {}, "status": {"ready": True, "role": "replica"}})
    assert not pace.instance_steady({"spec": {"role": "primary"}, "status": {"ready": True, "role": "replica"}})
    assert not pace.instance_steady({"spec": {"role": "replica"}, "status": {"ready": False, "role": "replica"}})
    assert not pace.instance_steady({"spec": {"role": "replica"}})


def test_a_look_sees_a_changed_view_but_not_the_moving_fields():
    """What a look compares with the last pass: an agent's new LSN or heartbeat is no news (it
    reports them every turn); a new report of anything else, a pod's change or a new spec is."""
    instance = {"metadata": {"name": "c-1", "generation": 2},
                "status": {"role": "replica", "ready": True, "lsn": "0/1", "lastHeartbeat": "2026-12-03T11:59:55Z",
                           "certificates": {"server": "abc"}}}
    pod = {"metadata": {"name": "c-1", "resourceVersion": "7"}, "status": {"phase": "Running"}}
    before = pace.view_of([instance], [pod])
    moved = {**instance, "status": {**instance["status"], "lsn": "0/9", "lastHeartbeat": "2026-12-03T12:00:05Z"}}
    assert pace.view_of([moved], [pod]) == before
    reported = {**instance, "status": {**instance["status"], "certificates": {"server": "def"}}}
    assert pace.view_of([reported], [pod]) != before
    assert pace.view_of([{**instance, "metadata": {"name": "c-1", "generation": 3}}], [pod]) != before
    assert pace.view_of([instance], [{**pod, "status": {"phase": "Failed"}}]) != before
    assert pace.view_of([instance], []) != before  # the pod went
