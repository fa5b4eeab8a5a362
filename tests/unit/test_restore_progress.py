"""A restore's progress and its end (pgop.backup.recovery_progress), the recovery settings of
timelines, and how `pgop restore` shows progress: all pure."""
from __future__ import annotations

from pathlib import Path

from pgop.backup import prefetch
from pgop.backup import recovery_progress as rules
from pgop.backup.recovery_progress import RestoreProgress, Watch
from pgop.backup.restore import recovery_settings, restore_command
from pgop.cli_backup import restore_manifest, restore_progress_line
from pgop.kernel.model import Cluster, RecoverySpec

LOG = """2026-12-02 06:00:00.001 UTC [9] LOG:  starting point-in-time recovery to earliest consistent point
2026-12-02 06:00:00.120 UTC [9] LOG:  restored log file "00000002.history" from archive
2026-12-02 06:00:00.300 UTC [9] LOG:  restored log file "000000010000000000000003" from archive
2026-12-02 06:00:00.400 UTC [9] LOG:  redo starts at 0/3000028
2026-12-02 06:00:00.500 UTC [9] LOG:  restored log file "000000010000000000000004" from archive
2026-12-02 06:00:00.600 UTC [9] LOG:  consistent recovery state reached at 0/4000100
"""


def test_the_server_log_says_which_wal_files_were_restored_and_when_it_became_consistent():
    seen = rules.read_server_log(LOG, RestoreProgress(phase=rules.REPLAYING))
    assert (seen.wal_files_restored, seen.last_wal, seen.consistent_at) == (2, "000000010000000000000004",
                                                                            "0/4000100")
    more = rules.read_server_log('LOG:  restored log file "000000020000000000000005" from archive\n'
                                 "LOG:  redo done at 0/5000060 system usage: ...\n", seen)
    assert (more.wal_files_restored, more.last_wal, more.replay_lsn) == (3, "000000020000000000000005", "0/5000060")
    assert rules.read_server_log("LOG:  checkpoint starting: time\n", more) is more


def test_a_restore_that_keeps_restoring_wal_never_times_out_and_one_that_stands_still_does():
    progress = RestoreProgress(phase=rules.REPLAYING)
    state = rules.watch(Watch(), progress, now=0.0)
    for minute in range(1, 300):  # five hours, a new WAL file every minute
        progress = rules.read_server_log(f'restored log file "0000000100000000000{minute:05X}" from archive\n',
                                         progress)
        state = rules.watch(state, progress, now=minute * 60.0)
        assert not rules.stalled(state, minute * 60.0 + 59, window=600)
    assert not rules.stalled(state, 299 * 60.0 + 599, window=600)
    assert rules.stalled(state, 299 * 60.0 + 600, window=600)
    assert "no progress for 600s" in rules.stall_message(progress, 600)
    assert progress.last_wal in rules.stall_message(progress, 600)


def test_unpacking_bytes_count_as_progress():
    state = rules.watch(Watch(), RestoreProgress(bytes_restored=1), 0.0)
    state = rules.watch(state, RestoreProgress(bytes_restored=2 << 30), 590.0)
    assert not rules.stalled(state, 1000.0, window=600)


def test_attempts_are_bounded_per_spec_and_a_changed_spec_starts_again():
    assert rules.next_attempt(None, "a") == ("restore", 1)
    assert rules.next_attempt(rules.Attempts("a", 1, "S3 down"), "a") == ("restore", 2)
    assert rules.next_attempt(rules.Attempts("a", rules.MAX_ATTEMPTS, "S3 down"), "a") == \
        ("give-up", rules.MAX_ATTEMPTS)
    assert rules.next_attempt(rules.Attempts("a", rules.MAX_ATTEMPTS, "x"), "b") == ("restore", 1)
    # a failure no retry can change ends the attempts for this spec at once
    assert rules.next_attempt(rules.Attempts("a", 1, "EncryptionKeyMismatch: ...", final=True), "a") == ("give-up", 1)
    assert rules.next_attempt(rules.Attempts("a", 1, "EncryptionKeyMismatch: ...", final=True), "b") == ("restore", 1)
    assert rules.is_final("EncryptionKeyMismatch: backup b1 is encrypted with the key of id 0a1b, ...")
    assert not rules.is_final("S3 unreachable: Could not connect to the endpoint URL")
    assert rules.retry_delay(1) == 0
    assert 0 < rules.retry_delay(2) <= rules.retry_delay(3) <= rules.retry_delay(10)


def test_the_status_has_what_is_known_only():
    status = RestoreProgress(phase=rules.REPLAYING, backup="b1", bytes_total=100, bytes_restored=100,
                             wal_files_restored=3, last_wal="000000010000000000000004").to_status()
    assert status == {"phase": "Replaying", "backup": "b1", "bytesTotal": 100, "bytesRestored": 100,
                      "walFilesRestored": 3, "lastWal": "000000010000000000000004", "attempt": 1}


def test_restores_follow_the_latest_timeline_unless_one_is_pinned():
    assert recovery_settings("cmd")["recovery_target_timeline"] == "latest"
    assert recovery_settings("cmd", target_timeline="3")["recovery_target_timeline"] == "3"
    assert recovery_settings("cmd", target_timeline="current")["recovery_target_timeline"] == "current"


def test_target_timeline_goes_from_the_cluster_to_the_instance_as_text():
    spec = RecoverySpec.from_dict({"source": "orders", "targetTimeline": 2})
    assert spec.target_timeline == "2"
    assert spec.to_dict()["targetTimeline"] == "2"
    assert RecoverySpec.from_dict({"source": "orders"}).target_timeline is None
    assert "targetTimeline" not in RecoverySpec.from_dict({"source": "orders"}).to_dict()
    cluster = Cluster.from_object({"metadata": {"name": "copy", "namespace": "ns"},
                                   "spec": {"instances": 1, "postgresVersion": 15, "storage": {"size": "1Gi"},
                                            "bootstrap": {"recovery": {"source": "orders", "targetTimeline": 2}}}})
    assert cluster.spec.bootstrap.recovery is not None
    assert cluster.spec.bootstrap.recovery.target_timeline == "2"


def test_pgop_restore_asks_for_a_timeline_in_the_manifest():
    manifest = restore_manifest("orders", {}, "copy", "ns", target_time=None, target_lsn=None, backup=None,
                                s3=None, instances=None, target_timeline="2")
    assert manifest["spec"]["bootstrap"]["recovery"]["targetTimeline"] == 2


def test_the_restore_command_takes_a_prefetched_file_with_the_shell_from_the_spool_the_client_uses():
    env = {"PGOP_S3_BUCKET": "b", "PGOP_S3_ENDPOINT": "http://s3", "PGOP_CLUSTER": "copy"}
    command = restore_command("orders", "p", namespace="ns", server_env=env)
    client_env = {**env, "PGOP_S3_CLUSTER": "orders", "PGOP_S3_PATH": "p", "PGOP_S3_NAMESPACE": "ns"}
    fast = prefetch.shell_fast_path(client_env)
    assert command.startswith(fast)
    slow = command[len(fast):]
    spool = prefetch.spool_directory(Path("/pgdata/pg_wal/RECOVERYXLOG"), client_env)
    assert fast.startswith(f"{{ mv -f pg_wal/{spool.name}/%f %p ")  # the client's spool, not another
    assert slow.endswith("pgop agent wal-fetch %f %p")
    assert "PGOP_S3_CLUSTER=orders" in slow
    assert restore_command("orders", "p", namespace="ns") == slow  # without the server's env: no fast path


def test_pgop_restore_prints_the_progress_of_each_restoring_instance():
    line = restore_progress_line("copy-0", {"phase": "Replaying", "bytesTotal": 2 << 30, "bytesRestored": 2 << 30,
                                            "walFilesRestored": 40, "lastWal": "000000010000000000000030",
                                            "target": "the end of the archive", "attempt": 1})
    assert line == ("copy-0: restore Replaying, base backup 2,048 MiB of 2,048 MiB (100%), 40 WAL files "
                    "restored, last 000000010000000000000030, target the end of the archive")
    failed = restore_progress_line("copy-0", {"phase": "Failed", "attempt": 3, "message": "S3 unreachable"})
    assert failed is not None and failed.endswith("attempt 3: S3 unreachable")
    assert restore_progress_line("copy-0", None) is None
