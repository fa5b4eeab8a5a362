"""Leader election's decisions (pgop.runtime.leader): who may take the Lease, and what it then says."""
from datetime import UTC, datetime

from pgop.runtime.leader import LEASE_DURATION, Record, lease_spec, may_take, released_spec

NOW = datetime(2026, 12, 2, 6, 30, tzinfo=UTC)


def held_by(holder, transitions=3, duration=10.0):
    return Record(holder=holder, renew_time="2026-12-02T06:29:59.000000Z", duration=duration,
                  transitions=transitions)


def test_a_free_lease_is_taken_at_once():
    assert may_take(None, "b", unchanged_since=100.0, now=100.0)            # never made
    assert may_take(held_by(None), "b", unchanged_since=100.0, now=100.0)   # released cleanly


def test_a_held_lease_is_taken_only_after_its_duration_without_change_on_the_candidates_clock():
    record = held_by("a")
    assert not may_take(record, "b", unchanged_since=100.0, now=109.9)
    assert may_take(record, "b", unchanged_since=100.0, now=110.0)
    # the holder itself always may (a renewal)
    assert may_take(record, "a", unchanged_since=100.0, now=100.0)


def test_the_holders_own_duration_counts():
    assert not may_take(held_by("a", duration=30.0), "b", unchanged_since=0.0, now=20.0)


def test_taking_over_counts_a_transition_renewing_does_not():
    taken = lease_spec("b", held_by("a", transitions=3), NOW)
    assert taken["holderIdentity"] == "b" and taken["leaseTransitions"] == 4
    assert taken["acquireTime"] == taken["renewTime"] == "2026-12-02T06:30:00.000000Z"
    assert taken["leaseDurationSeconds"] == int(LEASE_DURATION)
    renewed = lease_spec("a", held_by("a", transitions=3), NOW)
    assert renewed["leaseTransitions"] == 3 and "acquireTime" not in renewed
    first = lease_spec("a", None, NOW)
    assert first["leaseTransitions"] == 0


def test_a_released_lease_has_no_holder():
    released = released_spec(held_by("a", transitions=5), NOW)
    assert released["holderIdentity"] is None and released["leaseTransitions"] == 5
    assert Record.of({"spec": released}).holder is None


def test_a_lease_object_reads_as_its_record():
    lease = {"spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "leaseTransitions": 2,
                      "renewTime": "2026-12-02T06:29:59.000000Z"}}
    assert Record.of(lease) == Record("a", "2026-12-02T06:29:59.000000Z", 15.0, 2)
    assert Record.of(None) is None
