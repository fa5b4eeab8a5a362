"""Base backup and restore throughput of pgop against the local S3 server, on a pgbench database.

    .venv/bin/python -m bench.backup_throughput [--scale 15]

A PostgreSQL 15 (Debian package, as the postgres OS user) archiving with `pgop agent wal-push`,
`pgbench -i -s SCALE` (15: about 230 MB of data directory), then one base backup streamed to S3
(pg_basebackup | zstd | multipart upload) and one restore of it into a new data directory
(S3 | zstd -d | tar -x, then WAL replay to the end and promotion). Prints a table; never fails on
a slow figure. pgBackRest and barman-cloud side by side: bench.backup_compare.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
import tempfile
import time
import uuid
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=15)
    args = parser.parse_args()
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
    storage = S3Storage(bucket, endpoint=endpoint, credentials=Credentials(access, secret))
    source, target = LocalPostgres(), LocalPostgres()
    try:
        source.initdb()
        with open(source.pgdata / "postgresql.conf", "a") as conf:
            conf.write(f"archive_mode = on\narchive_command = '{pgconfig.WAL_PUSH_COMMAND}'\n")
        source.start()
        seconds = _pgbench_init(source, args.scale)
        print(f"pgbench -i -s {args.scale}: {seconds:.1f}s, database "
              f"{int(source.psql('SELECT pg_database_size(current_database())')) / 2**20:.0f} MB")
        # The backup's own figure, not the archiver catching up with pgbench's WAL (the server
        # waits for its end segment to be archived before pg_basebackup finishes).
        started = time.monotonic()
        _archive_all(source)
        print(f"checkpoint and archiving of pgbench's WAL: {time.monotonic() - started:.1f}s")
        src = basebackup.Source(host=str(source.socket_dir), port=source.port, user="postgres",
                                bindir=source.bindir, prefix=PREFIX)
        started = time.monotonic()
        backup = basebackup.take_base_backup(storage, layout, "bench", src, archive_wait=300)
        backup_seconds = time.monotonic() - started
        compressed = backup.files[0]["compressedBytes"]

        target._chown()
        target.pgdata.mkdir(mode=0o700)
        if PREFIX:
            shutil.chown(target.pgdata, OS_USER, OS_USER)
        started = time.monotonic()
        result = restore(storage, layout, target.pgdata, [backup], bindir=source.bindir, prefix=PREFIX,
                         options=f"-p {target.port} -k {target.socket_dir} -c listen_addresses=''")
        restore_seconds = time.monotonic() - started
        size = backup.size_bytes / 2**20
        print(f"\n{'step':<28}{'MB':>8}{'seconds':>10}{'MB/s':>8}")
        streamed = backup.files[0]["streamSeconds"]
        print(f"{'backup: stream to S3':<28}{size:>8.0f}{streamed:>10.2f}{size / streamed:>8.0f}")
        print(f"{'backup (+ WAL archived)':<28}{size:>8.0f}{backup_seconds:>10.2f}{size / backup_seconds:>8.0f}")
        print(f"{'restore: download + untar':<28}{size:>8.0f}{result.seconds_unpack:>10.2f}"
              f"{size / result.seconds_unpack:>8.0f}")
        print(f"{'restore: whole (+ recovery)':<28}{size:>8.0f}{restore_seconds:>10.2f}{size / restore_seconds:>8.0f}")
        print(f"\ncompressed {compressed / 2**20:.0f} MB (ratio {backup.size_bytes / compressed:.1f}), "
              f"zstd level {basebackup.COMPRESSION_LEVEL}, parts of {basebackup.PART_SIZE >> 20} MiB; "
              f"restored onto timeline {result.timeline}")
    finally:
        source.cleanup()
        target.cleanup()
        _drop_bucket(client, bucket)
        shutil.rmtree(launcher, ignore_errors=True)
        shutil.rmtree(creds, ignore_errors=True)


if __name__ == "__main__":
    main()
