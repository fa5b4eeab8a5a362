"""WAL replay through pgop's restore_command: segments per second PostgreSQL restores from the
archive, one process per file (before) against the prefetching spool (after), and how fast a
primary archives the same WAL with `pgop agent wal-push`.

    .venv/bin/python -m bench.wal_replay [--wal-mb 1024] [--depth 8]

A PostgreSQL 15 (Debian's, as the postgres OS user) archiving to the local S3 server, a base
backup of it while it is nearly empty, then --wal-mb of WAL (inserts into a table), which the
archiver archives once all of it is written: segments per second archived (PGOP_WAL_PUSHER=0 in
the environment for the process-per-segment figure).
Each mode restores that backup into a new data directory and replays all of the WAL to the end
of the archive (recovery_target_timeline latest, promote), as a restore's bootstrap pod does:

- direct: PGOP_WAL_PREFETCH=0, a `pgop agent wal-fetch` process per file fetching from S3 (pgop
  before the prefetcher);
- prefetch: the Python client takes each file from the spool the prefetcher keeps --depth
  segments ahead;
- prefetch + shell: the restore_command a restore writes: the shell's `mv` takes a prefetched
  file, Python runs only for a file not there yet.
Replay seconds are from the server's start to its promotion (WAL files counted from its log).
Needs the local environment's S3 server (`make up`). A benchmark never fails on a slow figure.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from bench.backup_throughput import PREFIX, pgop_archive
from e2e.harness.pg import OS_USER, LocalPostgres
from pgop.backup import basebackup, restore
from pgop.backup.layout import ArchiveLayout
from pgop.backup.recovery_progress import RestoreProgress
from pgop.backup.s3 import S3Storage
from pgop.kernel import pgconfig

SEGMENT_MB = 16


def _make_wal(pg: LocalPostgres, megabytes: int, gate: Path) -> tuple[int, float]:
    """Inserts until `megabytes` of WAL are written while the archiver waits at `gate`; then the
    gate opens: (bytes written, seconds the archiver took for all of it)."""
    start = pg.psql("SELECT pg_current_wal_lsn()")
    pg.psql("CREATE TABLE IF NOT EXISTS filler (id bigint, pad text)")
    while int(pg.psql(f"SELECT pg_current_wal_lsn() - '{start}'::pg_lsn")) < megabytes << 20:
        pg.psql("INSERT INTO filler SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 200000) g")
    written = int(pg.psql(f"SELECT pg_current_wal_lsn() - '{start}'::pg_lsn"))
    last = pg.psql("SELECT pg_walfile_name(pg_switch_wal())")
    started = time.monotonic()
    gate.write_text("")
    while pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < last:
        time.sleep(0.05)
    return written, time.monotonic() - started


def _replay(storage: S3Storage, layout: ArchiveLayout, backup, bindir: str, mode: str, depth: int) -> dict:
    target = LocalPostgres()
    target._chown()
    target.pgdata.mkdir(mode=0o700)
    if PREFIX:
        shutil.chown(target.pgdata, OS_USER, OS_USER)
    try:
        restore.unpack(storage, layout, backup, target.pgdata, PREFIX)
        for leftover in ("postmaster.pid", "postmaster.opts", "standby.signal"):
            (target.pgdata / leftover).unlink(missing_ok=True)
        extra = {"PGOP_WAL_PREFETCH": "0" if mode == "direct" else str(depth)}
        env = {**os.environ, **extra}
        command = restore.restore_command(layout.cluster, layout.path, extra, namespace=layout.namespace,
                                          server_env=env if mode == "prefetch + shell" else None)
        restore.write_recovery(target.pgdata, restore.recovery_settings(command))
        seen: list[RestoreProgress] = []
        started = time.monotonic()
        restore.recover(target.pgdata, bindir=bindir, prefix=PREFIX, env=extra, progress=seen.append,
                        options=f"-p {target.port} -k {target.socket_dir} -c listen_addresses=''")
        seconds = time.monotonic() - started
        files = max((p.wal_files_restored for p in seen), default=0)
        return {"mode": mode, "seconds": seconds, "files": files}
    finally:
        target.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wal-mb", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--modes", default="direct,prefetch,prefetch + shell")
    args = parser.parse_args()
    with pgop_archive("max_wal_size = '4GB'\n") as archive:
        storage, layout, source = archive.storage, archive.layout, archive.source
        src = basebackup.Source(host=str(source.socket_dir), port=source.port, user="postgres",
                                bindir=source.bindir, prefix=PREFIX)
        backup = basebackup.take_base_backup(storage, layout, "replay", src, archive_wait=300)
        # The archiver waits at a gate while the WAL is written, then archives all of it: its rate
        # alone, not the rate of the inserts.
        gate = source.root / "archive-gate"
        pusher = "direct, a process per segment" if os.environ.get("PGOP_WAL_PUSHER") == "0" else "the pusher"
        source.psql("ALTER SYSTEM SET archive_command = "
                    f"'while [ ! -e {gate} ]; do sleep 0.05; done; {pgconfig.WAL_PUSH_COMMAND}'")
        source.psql("SELECT pg_reload_conf()")
        written, archived = _make_wal(source, args.wal_mb, gate)
        segments = written / (SEGMENT_MB << 20)
        print(f"WAL archived: {written / 2**20:.0f} MB ({segments:.0f} segments) in {archived:.1f}s: "
              f"{segments / archived:.1f} segments/s by `pgop agent wal-push` ({pusher})")
        source.stop()
        rows = []
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            rows.append(_replay(storage, layout, backup, source.bindir, mode, args.depth))
            print(f"  {mode}: {rows[-1]['seconds']:.1f}s", flush=True)
        print(f"\n{'restore_command':<20}{'WAL files':>10}{'replay s':>10}{'files/s':>9}{'MB/s':>8}")
        for row in rows:
            rate = row["files"] / row["seconds"]
            print(f"{row['mode']:<20}{row['files']:>10}{row['seconds']:>10.1f}{rate:>9.1f}"
                  f"{rate * SEGMENT_MB:>8.0f}")
        print(f"\nprefetch depth {args.depth} segments (PGOP_WAL_PREFETCH), S3 {archive.endpoint}")


if __name__ == "__main__":
    main()
