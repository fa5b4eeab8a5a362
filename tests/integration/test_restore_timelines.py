"""Restores against the real S3 server (versitygw) and real PostgreSQL 15: the prefetching
restore_command (pgop.backup.prefetch) and restores across a promotion (timelines).

PostgreSQL runs `pgop agent wal-fetch %f %p` (and a restore's shell fast path) as the postgres
OS user with the pod's PGOP_S3_* environment, like the other WAL tests (test_backup_wal).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from e2e.harness.pg import OS_USER, LocalPostgres, _as_user
from pgop.backup import basebackup, prefetch, wal
from pgop.backup.restore import restore
from tests.integration.test_backup_wal import (  # noqa: F401  (fixtures)
    CLUSTER,
    _own,
    archive_env,
    archiving_postgres,
    launcher,
    s3,
    storage,
    wait_for,
)

PREFIX = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []
SEGMENT = 16 << 20


def _segment_name(number: int, timeline: int = 1) -> str:
    return f"{timeline:08X}{number // 256:08X}{number % 256:08X}"


def _fake_segments(directory: Path, count: int, first: int = 1) -> dict[str, bytes]:
    """`count` files of a segment's size, each different, compressible like WAL."""
    made = {}
    for number in range(first, first + count):
        name = _segment_name(number)
        content = (name.encode() + os.urandom(40)) * (SEGMENT // (len(name) + 40)) + b"\0" * (
            SEGMENT % (len(name) + 40))
        (directory / name).write_bytes(content)
        made[name] = content
    return made


def _pgdata_like(root: Path) -> Path:
    pgdata = root / "data"
    (pgdata / "pg_wal").mkdir(parents=True)
    for path in (root, pgdata, pgdata / "pg_wal"):
        _own(path)
    return pgdata


def _wal_fetch(pgdata: Path, name: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """As PostgreSQL runs it: in PGDATA, %p relative, as the postgres user."""
    return _as_user(["pgop", "agent", "wal-fetch", name, "pg_wal/RECOVERYXLOG"], cwd=pgdata,
                    env={**os.environ, **(env or {})}, timeout=120)


def _stop_prefetcher(spool: Path) -> None:
    shutil.rmtree(spool, ignore_errors=True)  # it exits within a second once its spool is gone


def test_segments_come_from_the_prefetched_spool_identical_and_in_order(archive_env, storage):
    layout = archive_env["layout"]
    root = Path(tempfile.mkdtemp(prefix="pgop-prefetch-", dir="/var/tmp"))
    _own(root)
    try:
        source = root / "archived"
        source.mkdir()
        made = _fake_segments(source, 16)
        for name in made:
            assert wal.push(storage, layout, source / name) == wal.PUSHED
        pgdata = _pgdata_like(root)
        spool = prefetch.spool_directory(pgdata / "pg_wal" / "RECOVERYXLOG", dict(os.environ))
        started = time.monotonic()
        for name, content in made.items():
            done = _wal_fetch(pgdata, name)
            assert done.returncode == 0, done.stderr
            assert (pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == content, name
        seconds = time.monotonic() - started
        stats = prefetch._ask(spool, {"op": "stats"}, 10)
        assert stats is not None, "no prefetcher listens in the spool"
        # the first one was asked for; the rest were waiting in the spool (or on their way)
        assert stats["prefetched"] >= len(made) - 2, stats
        assert stats["took"] + stats["from_spool"] >= len(made) - 2, stats
        assert stats["segmentSize"] == SEGMENT
        # bounded: never more than the window of finished files in the spool
        assert len([p for p in spool.iterdir() if prefetch.is_segment(p.name)]) <= prefetch.DEFAULT_DEPTH
        print(f"\n{len(made)} segments through the prefetcher in {seconds:.2f}s")

        # the end of the archive is "not found" (exit 1), from S3 itself, every time
        after = _segment_name(len(made) + 1)
        for _ in range(2):
            assert _wal_fetch(pgdata, after).returncode == 1
    finally:
        _stop_prefetcher(prefetch.spool_directory(root / "data" / "pg_wal" / "RECOVERYXLOG", dict(os.environ)))
        shutil.rmtree(root, ignore_errors=True)


def test_a_damaged_segment_is_never_handed_over_and_never_taken_for_the_end(archive_env, storage):
    """A segment whose archived content does not match its checksum, inside the prefetch window:
    the ones before it arrive, it fails with 255 outside standby mode (PostgreSQL stops instead
    of promoting early) and 1 on a standby, and no file of it is ever put in place."""
    layout = archive_env["layout"]
    root = Path(tempfile.mkdtemp(prefix="pgop-prefetch-", dir="/var/tmp"))
    _own(root)
    try:
        source = root / "archived"
        source.mkdir()
        made = _fake_segments(source, 6)
        names = list(made)
        for name in names[:3] + names[4:]:
            wal.push(storage, layout, source / name)
        # the fourth: another file's bytes under its name, with its own checksum in the metadata
        damaged = source / "damaged"
        damaged.write_bytes(made[names[0]])
        with open(damaged, "rb") as body, tempfile.SpooledTemporaryFile() as packed:
            wal.compress(body, packed)
            size = packed.tell()
            packed.seek(0)
            import hashlib
            storage.put_new(layout.wal_key(names[3]), packed, size,
                            {wal.META_SHA256: hashlib.sha256(made[names[3]]).hexdigest(),
                             wal.META_SIZE: str(SEGMENT), wal.META_COMPRESSION: "zstd"})
        pgdata = _pgdata_like(root)
        for name in names[:3]:
            assert _wal_fetch(pgdata, name).returncode == 0
        (pgdata / "pg_wal" / "RECOVERYXLOG").unlink()
        done = _wal_fetch(pgdata, names[3])
        assert done.returncode == 255, done.stderr
        assert "checksum mismatch" in done.stderr and "stopping recovery" in done.stderr
        assert not (pgdata / "pg_wal" / "RECOVERYXLOG").exists()
        spool = prefetch.spool_directory(pgdata / "pg_wal" / "RECOVERYXLOG", dict(os.environ))
        assert not (spool / names[3]).exists()
        (pgdata / "standby.signal").write_text("")
        assert _wal_fetch(pgdata, names[3]).returncode == 1  # a standby streams and asks again
    finally:
        _stop_prefetcher(prefetch.spool_directory(root / "data" / "pg_wal" / "RECOVERYXLOG", dict(os.environ)))
        shutil.rmtree(root, ignore_errors=True)


def test_a_restore_warms_the_spool_before_postgres_asks(archive_env, storage):
    """What a restore runs as the base backup unpacks (`wal-fetch --prefetch FIRST TARGET`, as the
    postgres user, warming once its input ends): the prefetcher starts and downloads the backup's first segment and the
    window after it, so PostgreSQL's first restore_command calls are served from the spool (no
    fetch on demand), identical, and the spool stays bounded."""
    layout = archive_env["layout"]
    root = Path(tempfile.mkdtemp(prefix="pgop-prefetch-", dir="/var/tmp"))
    _own(root)
    try:
        source = root / "archived"
        source.mkdir()
        made = _fake_segments(source, 12)
        for name in made:
            assert wal.push(storage, layout, source / name) == wal.PUSHED
        pgdata = _pgdata_like(root)
        names = list(made)
        # its input ends at once: the base backup is on disk
        warm = _as_user(["pgop", "agent", "wal-fetch", "--prefetch", names[0], f"pg_wal/{names[0]}"], cwd=pgdata,
                        env=dict(os.environ), timeout=60, input="")
        assert warm.returncode == 0, warm.stderr
        spool = prefetch.spool_directory(pgdata / "pg_wal" / names[0], dict(os.environ))
        wait_for(lambda: all((spool / name).exists() for name in names[:prefetch.DEFAULT_DEPTH]),
                 "the backup's first segments in the spool before anyone asked")
        for number, name in enumerate(names):
            done = _wal_fetch(pgdata, name)
            assert done.returncode == 0, done.stderr
            assert (pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == made[name], name
            if number == prefetch.DEFAULT_DEPTH - 1:
                stats = prefetch._ask(spool, {"op": "stats"}, 10)
                assert stats is not None and stats["fetched_now"] == 0, stats  # none waited for S3
        assert len([p for p in spool.iterdir() if prefetch.is_segment(p.name)]) <= prefetch.DEFAULT_DEPTH
    finally:
        _stop_prefetcher(prefetch.spool_directory(root / "data" / "pg_wal" / "RECOVERYXLOG", dict(os.environ)))
        shutil.rmtree(root, ignore_errors=True)


def _archived(pg: LocalPostgres, storage, layout) -> str:
    last = pg.psql("SELECT pg_walfile_name(pg_switch_wal())")
    wait_for(lambda: storage.head(layout.wal_key(last)) is not None, f"{last} archived")
    return last


def _restore_into(storage, layout, backups, bindir: str, **kwargs) -> tuple[LocalPostgres, int | None]:
    target = LocalPostgres()
    target._chown()
    target.pgdata.mkdir(mode=0o700)
    if PREFIX:
        shutil.chown(target.pgdata, OS_USER, OS_USER)
    result = restore(storage, layout, target.pgdata, backups, bindir=bindir, prefix=PREFIX, stall_after=120,
                     options=f"-p {target.port} -k {target.socket_dir} -c listen_addresses=''", **kwargs)
    return target, result.timeline


def test_a_restore_to_the_end_follows_a_promotion_onto_its_new_timeline(archiving_postgres, archive_env, storage):
    """A failover, as the HA path makes one: the primary of timeline 1 is gone and a copy of it,
    restored from the archive, is promoted (timeline 2) and archives to the same archive. A
    restore of the timeline-1 backup to the end of the archive follows the archive to the end of
    timeline 2 (recovery_target_timeline latest); pinned to the backup's timeline it stops at the
    end of timeline 1."""
    primary, layout = archiving_postgres, archive_env["layout"]
    primary.psql("CREATE TABLE orders (id int primary key, note text)")
    primary.psql("INSERT INTO orders SELECT g, 'before the backup' FROM generate_series(1, 100) g")
    basebackup.take_base_backup(storage, layout, "tl1", basebackup.Source(
        host=str(primary.socket_dir), port=primary.port, user="postgres", bindir=primary.bindir, prefix=PREFIX),
        archive_wait=60)
    primary.psql("INSERT INTO orders SELECT g, 'timeline 1' FROM generate_series(101, 200) g")
    _archived(primary, storage, layout)
    primary.stop()
    backups = basebackup.list_backups(storage, layout.path, CLUSTER)
    promoted = later = pinned = None
    try:
        promoted, timeline = _restore_into(storage, layout, backups, primary.bindir)
        assert timeline == 2
        # the history file of the new timeline waits for the restored server's archiver
        assert (promoted.pgdata / "pg_wal" / "archive_status" / "00000002.history.ready").exists()
        assert not [p for p in (promoted.pgdata / "pg_wal").iterdir() if p.name.startswith(prefetch.SPOOL_PREFIX)]
        # it archives to the source's archive: it is the source's new primary (same env, same system)
        promoted.start(timeout=60)
        assert promoted.psql("SELECT count(*) FROM orders") == "200"
        promoted.psql("INSERT INTO orders SELECT g, 'timeline 2' FROM generate_series(201, 350) g")
        _archived(promoted, storage, layout)
        wait_for(lambda: storage.head(layout.wal_key("00000002.history")) is not None,
                 "00000002.history in the archive")
        promoted.stop()

        later, timeline = _restore_into(storage, layout, backups, primary.bindir)
        assert timeline == 3
        later.start(timeout=60)
        assert later.psql("SELECT count(*), max(id), count(*) FILTER (WHERE note = 'timeline 2') FROM orders") \
            == "350|350|150"

        pinned, timeline = _restore_into(storage, layout, backups, primary.bindir, target_timeline="1")
        pinned.start(timeout=60)
        assert pinned.psql("SELECT count(*), max(id) FROM orders") == "200|200"
    finally:
        for pg in (promoted, later, pinned):
            if pg is not None:
                pg.cleanup()


def test_the_end_of_a_restore_asks_python_for_nothing_twice(archiving_postgres, archive_env, storage, launcher):
    """PostgreSQL asks for the next timeline's history file when recovery starts and again when it
    ends, asks twice for the segment after the end of the archive, and at the end reads its last
    segment once more, from the archive first, and its own timeline's history file. The shell fast
    path answers the second questions (a fresh "not there" mark of the prefetcher's S3 probe; the
    segment it delivered, still in pg_wal as that very file): `pgop agent wal-fetch` (Python),
    logged by a wrapper on the server's PATH, runs at most once per name and never for a history
    file, except for the segment after the end of the archive, which S3 answers each time (recovery
    ends at it). Before, the next timeline's history file and the last segment went to Python twice
    each, and the backup's timeline's history file once."""
    primary, layout = archiving_postgres, archive_env["layout"]
    primary.psql("CREATE TABLE orders (id int primary key, note text)")
    primary.psql("INSERT INTO orders SELECT g, 'before the backup' FROM generate_series(1, 100) g")
    basebackup.take_base_backup(storage, layout, "ask-once", basebackup.Source(
        host=str(primary.socket_dir), port=primary.port, user="postgres", bindir=primary.bindir, prefix=PREFIX),
        archive_wait=60)
    primary.psql("INSERT INTO orders SELECT g, 'after the backup' FROM generate_series(101, 250) g")
    _archived(primary, storage, layout)
    primary.stop()
    backups = basebackup.list_backups(storage, layout.path, CLUSTER)
    wrapper = Path(tempfile.mkdtemp(prefix="pgop-ask-", dir="/var/tmp"))
    asked = wrapper / "asked"
    asked.touch()
    (wrapper / "pgop").write_text(f'#!/bin/sh\necho "$3" >> {asked}\nexec {launcher}/pgop "$@"\n')
    (wrapper / "pgop").chmod(0o755)
    for path in (wrapper, asked):
        _own(path)
    restored = None
    try:
        restored, timeline = _restore_into(storage, layout, backups, primary.bindir,
                                           env={"PATH": f"{wrapper}:{os.environ['PATH']}"})
        assert timeline == 2
        calls = [name for name in asked.read_text().split() if not name.startswith("-")]
        # The segment after the end of the archive is asked of S3 each time (twice): recovery ends
        # at it, so no mark answers for it outside a standby. Every other name at most once.
        after_end = max(name for name in calls if prefetch.is_segment(name))
        others = [name for name in calls if name != after_end]
        assert len(others) == len(set(others)), f"asked Python more than once: {calls}"
        assert calls.count(after_end) <= 2, calls
        # the restore warmed the prefetcher, which asked S3 for every history file first
        assert not [name for name in calls if prefetch.is_history(name)], calls
        restored.start(timeout=60)
        assert restored.psql("SELECT count(*), max(id) FROM orders") == "250|250"
    finally:
        if restored is not None:
            restored.cleanup()
        shutil.rmtree(wrapper, ignore_errors=True)
