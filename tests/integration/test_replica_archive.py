"""A replica that was away longer than its primary kept WAL catches up from the archive, then
streams again: real PostgreSQL 15 servers, the real S3 server (versitygw).

The replica runs with the restore_command the agent renders for it (pgop.agent.config:
`replica_restore_command`, the prefetching `pgop agent wal-fetch`) next to primary_conninfo; the
primary archives with `pgop agent wal-push`, keeps no WAL beyond what a checkpoint needs
(wal_keep_size 0) and lets the replica's slot go (max_slot_wal_keep_size 16MB). Without the restore_command the replica stops at "requested
WAL segment ... has already been removed" and this test times out.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from e2e.harness.pg import OS_USER, LocalPostgres, _as_user
from pgop.agent import config, streaming
from pgop.backup import commands, wal
from pgop.kernel import pgconfig
from tests.integration.test_backup_wal import (  # noqa: F401  (fixtures)
    CLUSTER,
    _archiver,
    _configure,
    _own,
    archive_env,
    launcher,
    s3,
    storage,
    wait_for,
)

CATCH_UP = 180.0
# About 15 segments; a wal-push that fails (the S3 server slow to answer while the other tests
# load the machine) costs the archiver a minute's pause before it tries again.
ARCHIVING = 200.0


def _segments(pgdata: Path) -> list[str]:
    return sorted(p.name for p in (pgdata / "pg_wal").iterdir() if len(p.name) == 24)


def _clone(primary: LocalPostgres) -> LocalPostgres:
    replica = LocalPostgres()
    replica._chown()
    done = _as_user([f"{replica.bindir}/pg_basebackup", "-h", str(primary.socket_dir), "-p", str(primary.port),
                     "-U", "postgres", "-D", str(replica.pgdata), "-X", "stream", "-c", "fast"])
    assert done.returncode == 0, done.stderr
    return replica


def _archived_up_to(pg: LocalPostgres) -> str:
    return pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")


def _wait_for_archiving(pg: LocalPostgres, last: str, timeout: float) -> None:
    """Until the archiver reached `last`; on timeout, says where it stands and what its archive
    command printed (a failed wal-push makes PostgreSQL's archiver wait a minute before retrying)."""
    try:
        wait_for(lambda: _archived_up_to(pg) >= last, f"the primary to archive its WAL up to {last}",
                 timeout=timeout)
    except AssertionError as timed_out:
        log = (pg.root / "postgres.log").read_text().splitlines()
        said = [line for line in log if "archiv" in line.lower() or "wal-push" in line or "pgop" in line]
        raise AssertionError(f"{timed_out}; pg_stat_archiver: {_archiver(pg)}; the log about it:\n"
                             + "\n".join(said[-30:])) from None


def test_a_replica_behind_the_primarys_kept_wal_catches_up_from_the_archive_then_streams(archive_env, storage):
    layout = archive_env["layout"]
    primary = LocalPostgres()
    replica: LocalPostgres | None = None
    try:
        primary.initdb()
        _configure(primary, archive_mode="on", archive_command=pgconfig.WAL_PUSH_COMMAND, wal_level="replica",
                   wal_keep_size="0", max_wal_size="64MB", min_wal_size="32MB", max_slot_wal_keep_size="16MB")
        primary.start()
        primary.psql("CREATE TABLE rows (id int primary key, payload text)")
        primary.psql("INSERT INTO rows SELECT g, 'before' FROM generate_series(1, 1000) g")
        slot = pgconfig.slot_name("replica-1")
        primary.psql(f"SELECT pg_create_physical_replication_slot('{slot}', true)")

        replica = _clone(primary)
        env = dict(os.environ)  # what the replica's postgres runs with, as the agent's postgres does
        _configure(replica, primary_conninfo=f"host={primary.socket_dir} port={primary.port} user=postgres "
                                             "application_name=replica-1",
                   primary_slot_name=slot, restore_command=config.replica_restore_command(env), wal_level="replica")
        (replica.pgdata / "standby.signal").touch()
        _own(replica.pgdata / "standby.signal")
        replica.start()
        wait_for(lambda: replica.psql("SELECT status FROM pg_stat_wal_receiver") == "streaming",
                 "the replica to stream")
        wait_for(lambda: replica.psql("SELECT count(*) FROM rows") == "1000", "the first rows on the replica")
        assert replica.psql("SHOW recovery_target_timeline") == "latest"
        stopped_at = replica.psql("SELECT pg_last_wal_replay_lsn()")
        replica.stop()

        # Away: the primary writes ~10 segments, archives them and recycles its pg_wal.
        # The last segment to wait for is the one the last switch completed (pg_walfile_name of the
        # switch's end names it): the current position may already be inside the next segment, which
        # nothing completes (a checkpoint's record, the slot's invalidation, writes after the switch).
        for batch in range(10):
            primary.psql(f"INSERT INTO rows SELECT g, repeat('w', 400) FROM generate_series("
                         f"{2000 + batch * 20000}, {2000 + batch * 20000 + 19999}) g")
            last = primary.psql("SELECT pg_walfile_name(pg_switch_wal())")
        _wait_for_archiving(primary, last, timeout=ARCHIVING)
        primary.psql("CHECKPOINT")
        primary.psql("SELECT pg_switch_wal()")
        primary.psql("CHECKPOINT")
        needed = primary.psql(f"SELECT pg_walfile_name('{stopped_at}')")
        assert _segments(primary.pgdata)[0] > needed, (
            f"the primary still has {needed} (oldest kept: {_segments(primary.pgdata)[0]}): the test proves nothing")
        assert storage.head(layout.wal_key(needed)) is not None
        expected = primary.psql("SELECT count(*) FROM rows")
        # Its slot kept no more than max_slot_wal_keep_size: invalidated. The primary's agent drops
        # and makes it again (pgop.agent.streaming.slot_changes), as here.
        slots = [streaming.Slot(name, active == "t", None, status) for name, active, status in (
            line.split("|") for line in primary.psql(
                "SELECT slot_name, active, wal_status FROM pg_replication_slots").splitlines())]
        assert slots == [streaming.Slot(slot, False, None, streaming.LOST)]
        assert streaming.slot_changes(frozenset({slot}), slots) == ([slot], [slot])
        primary.psql(f"SELECT pg_drop_replication_slot('{slot}')")
        primary.psql(f"SELECT pg_create_physical_replication_slot('{slot}', true)")

        started = time.monotonic()
        replica.start()
        wait_for(lambda: replica.psql("SELECT count(*) FROM rows") == expected,
                 "the replica to catch up from the archive", timeout=CATCH_UP, interval=0.5)
        caught_up = time.monotonic() - started
        wait_for(lambda: replica.psql("SELECT status FROM pg_stat_wal_receiver") == "streaming",
                 "the replica to stream again", timeout=CATCH_UP)
        assert primary.psql(f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'") == "t"
        streamed = time.monotonic() - started
        log = (replica.root / "postgres.log").read_text()
        assert "restored log file" in log  # from the archive, not from the primary
        primary.psql("INSERT INTO rows VALUES (0, 'after')")
        wait_for(lambda: replica.psql("SELECT payload FROM rows WHERE id = 0") == "after",
                 "a new row to stream to the replica", timeout=30)
        print(f"\nreplica away for {int(expected) - 1000} rows (~10 segments): caught up from S3 in "
              f"{caught_up:.1f}s, streaming after {streamed:.1f}s")
    finally:
        if replica is not None:
            replica.cleanup()
        primary.cleanup()


def test_a_replica_refuses_wal_another_database_system_archived(archive_env, storage):
    """The archive's own-system rule (pgop.backup.marker) per file: a segment of another database
    system (a cluster re-created under the same name and path) is never handed to a replica; on a
    standby the answer is "not there" (exit 1), so it streams on."""
    layout = archive_env["layout"]
    ours, theirs = LocalPostgres(), LocalPostgres()
    try:
        for pg in (ours, theirs):
            pg.initdb()
        name = "000000010000000000000042"
        segment = theirs.pgdata / "pg_wal" / name
        segment.write_bytes(os.urandom(1 << 20))
        assert wal.push(storage, layout, segment) == wal.PUSHED
        assert storage.head(layout.wal_key(name)).metadata[wal.META_SYSTEM_ID]
        (ours.pgdata / "standby.signal").touch()
        _own(ours.pgdata / "standby.signal")
        for prefetching in ("0", "8"):  # a direct fetch, and through the prefetcher
            argv = ["pgop", "agent", "wal-fetch", name, "pg_wal/RECOVERYXLOG"]
            fetched = subprocess.run(["runuser", "-u", OS_USER, "--", *argv] if os.geteuid() == 0 else argv,
                                     cwd=ours.pgdata, env={**os.environ, "PGOP_WAL_PREFETCH": prefetching},
                                     text=True, capture_output=True, timeout=120)
            assert fetched.returncode == commands.NOT_FOUND, fetched.stderr
            assert "archived by database system" in fetched.stderr, fetched.stderr
            assert not (ours.pgdata / "pg_wal" / "RECOVERYXLOG").exists()
        # The system that archived it gets it.
        segment.unlink()
        target = theirs.pgdata / "pg_wal" / "RECOVERYXLOG"
        assert commands.wal_fetch(name, str(target), dict(os.environ), cwd=theirs.pgdata) == commands.OK
        assert target.stat().st_size == 1 << 20
    finally:
        ours.cleanup()
        theirs.cleanup()
