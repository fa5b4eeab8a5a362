"""The recovery bootstrap's attempts: a failing restore is retried after a pause, at most
MAX_ATTEMPTS times for one spec.recovery, then leaves the volume alone and says Failed with the
last error in status.restore; a changed spec.recovery starts again. The restore itself (S3 and
PostgreSQL) is replaced here by one that fails: tests/integration covers the real one."""
from __future__ import annotations

import pytest

from pgop.agent import backups, bootstrap
from pgop.agent.commands import Runner
from pgop.agent.kube import MemoryInstanceStore
from pgop.agent.settings import AgentSettings
from pgop.backup import recovery_progress as rules
from pgop.backup.restore import RestoreError
from pgop.kernel.model import InstanceSpec, RecoverySpec


@pytest.fixture
def world(tmp_path, monkeypatch):
    settings = AgentSettings(cluster="copy", instance="copy-0", namespace="shop", pgdata=tmp_path / "vol" / "pgdata",
                             secrets_dir=tmp_path / "secrets", run_dir=tmp_path / "run",
                             socket_dir=tmp_path / "run")
    settings.pgdata.mkdir(parents=True)
    store = MemoryInstanceStore("shop")
    store.put("copy-0", {"cluster": "copy"})
    calls: list[str] = []

    def failing_restore(_settings, wanted, env=None, progress=None, attempt=1):
        calls.append(wanted.target_time or "end")
        assert not any(settings.pgdata.iterdir())  # every attempt starts from an empty PGDATA
        progress(rules.RestoreProgress(phase=rules.REPLAYING, attempt=attempt, wal_files_restored=7))
        raise RestoreError("S3 unreachable: Could not connect to the endpoint URL")
    monkeypatch.setattr(backups, "restore_local", failing_restore)
    return settings, store, calls


def _spec(target: str | None = None) -> InstanceSpec:
    return InstanceSpec(cluster="copy", ordinal=0, role="primary", bootstrap="recovery",
                        recovery=RecoverySpec(source="orders", target_time=target))


def test_a_failing_restore_is_tried_three_times_with_pauses_then_left_alone_and_failed(world):
    settings, store, calls = world
    slept: list[float] = []
    for attempt in range(1, rules.MAX_ATTEMPTS + 1):
        with pytest.raises(RestoreError):
            bootstrap.recovery(settings, _spec(), Runner(), store=store, sleep=slept.append)
        shown = store.status("copy-0")["restore"]
        assert shown["attempt"] == attempt and "S3 unreachable" in shown["message"]
        assert shown["phase"] == (rules.FAILED if attempt == rules.MAX_ATTEMPTS else rules.RETRYING)
    assert slept == [rules.retry_delay(2), rules.retry_delay(3)] and all(slept)
    assert len(calls) == rules.MAX_ATTEMPTS

    (settings.pgdata / "PG_VERSION").write_text("15\n")  # whatever the last attempt left
    with pytest.raises(bootstrap.BootstrapError, match="failed 3 times.*S3 unreachable.*spec.bootstrap.recovery"):
        bootstrap.recovery(settings, _spec(), Runner(), store=store, sleep=slept.append)
    assert len(calls) == rules.MAX_ATTEMPTS  # not tried again
    assert (settings.pgdata / "PG_VERSION").exists()  # nothing wiped
    assert store.status("copy-0")["restore"]["phase"] == rules.FAILED

    # another target is another restore: counted anew, from an empty PGDATA
    with pytest.raises(RestoreError):
        bootstrap.recovery(settings, _spec("2026-11-22T03:00:00Z"), Runner(), store=store, sleep=slept.append)
    assert calls[-1] == "2026-11-22T03:00:00Z"
    assert store.status("copy-0")["restore"]["attempt"] == 1


def test_progress_reports_are_spaced_but_a_new_phase_is_reported_at_once():
    from pgop.agent.restore_status import RestoreReporter
    store = MemoryInstanceStore("shop")
    store.put("copy-0", {"cluster": "copy"})
    report = RestoreReporter(store, "copy-0", interval=3600)
    report(rules.RestoreProgress(phase=rules.UNPACKING, bytes_restored=1, message="old"))
    report(rules.RestoreProgress(phase=rules.UNPACKING, bytes_restored=2))  # too soon: not written
    assert store.status("copy-0")["restore"]["bytesRestored"] == 1
    report(rules.RestoreProgress(phase=rules.REPLAYING, bytes_restored=2, wal_files_restored=1))
    shown = store.status("copy-0")["restore"]
    assert shown["phase"] == "Replaying" and shown["walFilesRestored"] == 1
    assert "message" not in shown  # a key the new report has not is removed, not left over
    store.fail = True
    report(rules.RestoreProgress(phase=rules.COMPLETED))  # an unreachable API server costs the report only


def test_a_restore_that_cannot_succeed_as_specified_fails_at_once(world, monkeypatch):
    """The backup's key is not the one given: a retry reads the same Secret and fails the same way,
    so the first failure is final (Failed, EncryptionKeyMismatch in the message), not the third."""
    settings, store, calls = world

    def wrong_key(_settings, wanted, env=None, progress=None, attempt=1):
        calls.append("wrong key")
        raise RestoreError("EncryptionKeyMismatch: backup b1 is encrypted with the key of id 0a1b, "
                           "the given key has id 9f8e: name the Secret of the key it was made with")
    monkeypatch.setattr(backups, "restore_local", wrong_key)
    slept: list[float] = []
    with pytest.raises(RestoreError):
        bootstrap.recovery(settings, _spec(), Runner(), store=store, sleep=slept.append)
    shown = store.status("copy-0")["restore"]
    assert shown["phase"] == rules.FAILED and shown["attempt"] == 1
    assert "EncryptionKeyMismatch:" in shown["message"] and "not retried" in shown["message"]
    # the pod restarts: it gives up without trying or pausing again
    with pytest.raises(bootstrap.BootstrapError, match="cannot succeed as specified.*EncryptionKeyMismatch"):
        bootstrap.recovery(settings, _spec(), Runner(), store=store, sleep=slept.append)
    assert calls == ["wrong key"] and slept == []
    assert store.status("copy-0")["restore"]["phase"] == rules.FAILED
