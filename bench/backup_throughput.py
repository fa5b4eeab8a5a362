"""Base backup and restore throughput of pgop against the local S3 server, on a pgbench database.

    .venv/bin/python -m bench.backup_throughput [--scale 15]

A PostgreSQL 15 (Debian package, as the postgres OS user) archiving with `pgop agent wal-push`,
`pgbench -i -s SCALE` (15: about 230 MB of data directory), then base backups streamed to S3
(pg_basebackup | zstd | multipart upload), each in a process of its own (bench.pgop_backup) whose
largest RSS is measured: one with the settings of before (32 MiB parts, 2 in flight, a zstd worker
per core with its default 8 MiB jobs) and one with today's; then one restore of the last into a
new data directory (S3 | zstd -d | tar -x, then WAL replay to the end and promotion). Prints a
table; never fails on a slow figure. pgBackRest and barman-cloud side by side: bench.backup_compare.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.config

from e2e.harness import envfile
from e2e.harness.pg import OS_USER, LocalPostgres, _as_user
from pgop.backup import basebackup
from pgop.backup.layout import ArchiveLayout
from pgop.backup.restore import restore
from pgop.backup.s3 import Credentials, S3Storage
from pgop.kernel import pgconfig

REPO = Path(__file__).resolve().parents[1]
PREFIX = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []


def _launcher() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="pgop-bin-", dir="/var/tmp"))
    python = sys.executable
    if os.geteuid() == 0:
        python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    paths = [str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    # As in a pod's venv: none of Debian's Python packages (python3-awscrt, which barman-cli-cloud
    # brings, would be loaded by boto3 and add its memory to pgop's figures).
    (directory / "pgop").write_text(f"#!{python}\nimport sys\nsys.path[:0] = {paths!r}\n"
                                    "sys.path = [p for p in sys.path if 'dist-packages' not in p]\n"
                                    "from pgop.entry import main\nmain()\n")
    directory.chmod(0o755)
    (directory / "pgop").chmod(0o755)
    return directory


def _credentials(access: str, secret: str) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="pgop-s3-", dir="/var/tmp"))
    for name, value in (("ACCESS_KEY_ID", access), ("ACCESS_SECRET_KEY", secret)):
        (directory / name).write_text(value)
    if PREFIX:
        for path in (directory, *directory.iterdir()):
            shutil.chown(path, OS_USER, OS_USER)
    return directory


def _s3_client(endpoint: str, access: str, secret: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=access,
                        aws_secret_access_key=secret, config=botocore.config.Config(s3={"addressing_style": "path"}))


def _drop_bucket(client, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents") or ():
            client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)


def _pgbench_init(pg: LocalPostgres, scale: int) -> float:
    """`pgbench -i -s SCALE` into the postgres database; its seconds."""
    started = time.monotonic()
    done = _as_user([f"{pg.bindir}/pgbench", "-i", "-q", "-s", str(scale), "-h", str(pg.socket_dir),
                     "-p", str(pg.port), "postgres"])
    if done.returncode:
        raise SystemExit(done.stderr)
    return time.monotonic() - started


def _archive_all(pg: LocalPostgres, timeout: float = 300) -> None:
    """Checkpoint, switch WAL and wait until the archiver has archived everything up to there."""
    pg.psql("CHECKPOINT")
    last = pg.psql("SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout
    while pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < last:
        if time.monotonic() > deadline:
            raise SystemExit(f"the archiver did not catch up within {timeout:.0f}s")
        time.sleep(0.2)


@dataclass
class Archive:
    """A PostgreSQL archiving with `pgop agent wal-push` into a bucket of its own, on the local S3."""
    storage: S3Storage
    layout: ArchiveLayout
    source: LocalPostgres
    endpoint: str


@contextlib.contextmanager
def pgop_archive(conf: str = "") -> Iterator[Archive]:
    """The set-up bench.backup_throughput and bench.wal_replay share, removed afterwards: a bucket,
    the `pgop` command, the agent's S3 environment, a started source server (`conf` appended to
    its postgresql.conf)."""
    env = envfile.load()
    endpoint, access, secret = env["AWS_ENDPOINT_URL_S3"], env["S3_ACCESS_KEY_ID"], env["S3_SECRET_ACCESS_KEY"]
    client = _s3_client(endpoint, access, secret)
    bucket = f"pgop-bench-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    launcher, creds = _launcher(), _credentials(access, secret)
    layout = ArchiveLayout("bench", "b")
    os.environ.update({"PGOP_CLUSTER": "bench", "PGOP_S3_BUCKET": bucket, "PGOP_S3_PATH": layout.path,
                       "PGOP_S3_ENDPOINT": endpoint, "PGOP_S3_REGION": "us-east-1",
                       "PGOP_S3_CREDENTIALS_DIR": str(creds), "PATH": f"{launcher}:{os.environ['PATH']}"})
    if PREFIX:
        os.environ["PGOP_RUN_AS"] = OS_USER
    storage = S3Storage(bucket, endpoint=endpoint, credentials=Credentials(access, secret))
    source = LocalPostgres()
    try:
        source.initdb()
        with open(source.pgdata / "postgresql.conf", "a") as f:
            f.write(f"archive_mode = on\narchive_command = '{pgconfig.WAL_PUSH_COMMAND}'\n{conf}")
        source.start()
        yield Archive(storage, layout, source, endpoint)
    finally:
        source.cleanup()
        _drop_bucket(client, bucket)
        shutil.rmtree(launcher, ignore_errors=True)
        shutil.rmtree(creds, ignore_errors=True)


# Settings of take_base_backup: those of before this change, and today's defaults.
BACKUP_SETTINGS = {
    "before: 32 MiB parts x 2, zstd a worker per core, 8 MiB jobs":
        {"part_size": 32 << 20, "in_flight": 2, "threads": -1, "job_size": 0},
    f"now: {basebackup.PART_SIZE >> 20} MiB parts x {basebackup.UPLOADS_IN_FLIGHT}, zstd "
    f"{basebackup.COMPRESSION_THREADS} worker, {basebackup.COMPRESSION_JOB_SIZE >> 20} MiB jobs": {},
}


def backup_process(name: str, settings: dict, source: LocalPostgres) -> tuple[dict, int]:
    """A base backup by bench.pgop_backup in a process of its own: its files[0] entry, and its
    largest RSS in bytes (wait4's, of it and pg_basebackup, which is the smaller)."""
    env = {**os.environ, "BENCH_PG_HOST": str(source.socket_dir), "BENCH_PG_PORT": str(source.port),
           "BENCH_PG_BINDIR": source.bindir}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen([sys.executable, "-m", "bench.pgop_backup", name, json.dumps(settings)],
                                   stdout=out, stderr=err, env=env, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode:
            raise SystemExit(f"bench.pgop_backup failed: {err.read().decode(errors='replace')[-1500:]}")
        return json.loads(out.read()), usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=15)
    args = parser.parse_args()
    with pgop_archive() as archive:
        source, storage, layout = archive.source, archive.storage, archive.layout
        target = LocalPostgres()
        try:
            seconds = _pgbench_init(source, args.scale)
            print(f"pgbench -i -s {args.scale}: {seconds:.1f}s, database "
                  f"{int(source.psql('SELECT pg_database_size(current_database())')) / 2**20:.0f} MB")
            # The backup's own figure, not the archiver catching up with pgbench's WAL (the server
            # waits for its end segment to be archived before pg_basebackup finishes).
            started = time.monotonic()
            _archive_all(source)
            print(f"checkpoint and archiving of pgbench's WAL: {time.monotonic() - started:.1f}s")
            rows = []
            for number, (label, settings) in enumerate(BACKUP_SETTINGS.items()):
                files, rss = backup_process(f"bench-{number}", settings, source)
                rows.append((label, files, rss))
            backup = basebackup.list_backups(storage, layout.path, "bench")[-1]

            target._chown()
            target.pgdata.mkdir(mode=0o700)
            if PREFIX:
                shutil.chown(target.pgdata, OS_USER, OS_USER)
            started = time.monotonic()
            result = restore(storage, layout, target.pgdata, [backup], bindir=source.bindir, prefix=PREFIX,
                             options=f"-p {target.port} -k {target.socket_dir} -c listen_addresses=''")
            restore_seconds = time.monotonic() - started
        finally:
            target.cleanup()
    size = (backup.size_bytes or 0) / 2**20
    print(f"\n{'backup settings':<62}{'MB':>6}{'stream s':>10}{'MB/s':>7}{'RSS max MB':>12}{'in S3 MB':>10}")
    for label, files, rss in rows:
        streamed = files["streamSeconds"]
        print(f"{label:<62}{size:>6.0f}{streamed:>10.2f}{size / streamed:>7.0f}{rss / 2**20:>12.0f}"
              f"{files['compressedBytes'] / 2**20:>10.1f}")
    print(f"\n{'restore':<28}{'MB':>8}{'seconds':>10}{'MB/s':>8}")
    print(f"{'download + untar':<28}{size:>8.0f}{result.seconds_unpack:>10.2f}{size / result.seconds_unpack:>8.0f}")
    print(f"{'whole (+ recovery)':<28}{size:>8.0f}{restore_seconds:>10.2f}{size / restore_seconds:>8.0f}")
    print(f"\nzstd level {basebackup.COMPRESSION_LEVEL}; restored onto timeline {result.timeline}")


if __name__ == "__main__":
    main()
