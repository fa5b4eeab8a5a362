"""Retention's S3 work runs off the reconcile pass (pgop.backup.cluster_backups.RetentionJobs):
the pass that starts it returns at once, a later pass takes the outcome, once."""
from __future__ import annotations

import threading
import time

from pgop.backup.cluster_backups import RetentionJobs
from pgop.backup.retention import ConfirmedRetention

KEY = ("shop", "orders")


def _wait_done(jobs: RetentionJobs, key=KEY, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while jobs.running(key) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not jobs.running(key)


def _confirmed(*names: str) -> ConfirmedRetention:
    return ConfirmedRetention(s3_deletes=list(names), pgbackup_deletes=list(names))


def test_the_pass_returns_while_s3_is_slow_and_a_later_pass_takes_the_outcome_once():
    jobs, release, calls = RetentionJobs(), threading.Event(), []

    def slow_prune():
        calls.append(1)
        assert release.wait(5)
        return _confirmed("b1")

    started = time.monotonic()
    assert jobs.outcome(KEY, frozenset({"b1"}), slow_prune) is None
    assert time.monotonic() - started < 1.0  # not waiting for S3
    assert jobs.running(KEY)
    # Passes meanwhile neither wait nor start it twice.
    assert jobs.outcome(KEY, frozenset({"b1"}), slow_prune) is None
    release.set()
    _wait_done(jobs)
    outcome = jobs.outcome(KEY, frozenset({"b1"}), slow_prune)
    assert isinstance(outcome, ConfirmedRetention) and outcome.pgbackup_deletes == ["b1"]
    assert calls == [1]
    # Handed out once: the next pass that still sees b1 dropped prunes again (S3 says what is left).
    assert jobs.outcome(KEY, frozenset({"b1"}), lambda: _confirmed("b1")) is None
    _wait_done(jobs)


def test_a_failure_is_handed_to_the_next_pass_and_an_outcome_for_other_backups_is_not():
    jobs = RetentionJobs()

    def refused():
        raise RuntimeError("S3 AccessDenied: no")

    assert jobs.outcome(KEY, frozenset({"b1"}), refused) is None
    _wait_done(jobs)
    failure = jobs.outcome(KEY, frozenset({"b1"}), refused)
    assert isinstance(failure, RuntimeError) and "AccessDenied" in str(failure)

    assert jobs.outcome(KEY, frozenset({"b1"}), lambda: _confirmed("b1")) is None
    _wait_done(jobs)
    # Retention decided again meanwhile (b2 too): that outcome is stale, the work starts anew.
    assert jobs.outcome(KEY, frozenset({"b1", "b2"}), lambda: _confirmed("b1", "b2")) is None
    _wait_done(jobs)
    assert jobs.outcome(KEY, frozenset({"b1", "b2"}), lambda: _confirmed()).pgbackup_deletes == ["b1", "b2"]


def test_clusters_prune_side_by_side():
    jobs, release = RetentionJobs(workers=2), threading.Event()
    other = ("shop", "billing")
    for key in (KEY, other):
        assert jobs.outcome(key, frozenset({"b1"}), lambda: (release.wait(5), _confirmed("b1"))[1]) is None
    assert jobs.running(KEY) and jobs.running(other)
    release.set()
    _wait_done(jobs, KEY)
    _wait_done(jobs, other)


def test_a_deleted_cluster_keeps_nothing_even_when_its_pruning_was_under_way():
    import pgop.backup.handlers  # noqa: F401 - registers what a deleted cluster's forgetting drops
    from pgop.runtime import apply
    jobs, release = RetentionJobs(), threading.Event()
    other = ("shop", "billing")
    assert jobs.outcome(KEY, frozenset({"b1"}), lambda: (release.wait(5), _confirmed("b1"))[1]) is None
    assert jobs.outcome(other, frozenset({"b1"}), lambda: _confirmed("b1")) is None
    _wait_done(jobs, other)
    jobs.forget(KEY)  # deleted while its S3 work runs
    jobs.forget(other)  # deleted with its outcome not taken
    release.set()
    _wait_done(jobs, KEY)
    assert jobs.kept() == 0
    # A cluster of the same name made again starts afresh.
    assert jobs.outcome(KEY, frozenset({"b1"}), lambda: _confirmed("b1")) is None
    _wait_done(jobs)
    assert jobs.kept() == 1
    # The operator's own: what forgetting a deleted PgCluster (pgop.cluster.handlers) drops.
    from pgop.backup.cluster_backups import RETENTION
    assert RETENTION.outcome(KEY, frozenset({"b9"}), lambda: _confirmed("b9")) is None
    _wait_done(RETENTION)
    apply.forget(*KEY)
    assert RETENTION.kept() == 0
