"""What the archive's ownership check (pgop.backup.marker) costs per archived WAL segment.

    .venv/bin/python -m bench.archive_check [--segments 40]

`pgop agent wal-push` as archive_command runs once per segment; this runs its function
(backup.commands.wal_push) in-process on real 16 MiB segments inside a real data directory (its
pg_control gives the system identifier), against the local S3 server, three ways:

- without the check (the code before the marker existed),
- with the check as shipped (the verdict cached in PGDATA/pg_stat_tmp: one GET per five minutes),
- with the check uncached (one GET of archive.json per segment: the cache file removed each time).

Prints milliseconds per segment (median and mean). A separate process per segment, as PostgreSQL
runs it, adds the interpreter's start on top of every figure alike. Never fails on a slow figure.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import botocore.config

from e2e.harness import envfile
from e2e.harness.pg import LocalPostgres
from pgop.backup import commands, marker
from pgop.kernel.lsn import wal_file_name


def _segments(pg: LocalPostgres, count: int) -> list[Path]:
    """`count` copies of one real, full segment in the server's pg_wal, under names of a timeline
    the server never writes (so nothing of its own is touched)."""
    pg.psql("CREATE TABLE rows (id int, payload text)")
    first = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    pg.psql("INSERT INTO rows SELECT g, md5(g::text) || repeat('x', 40) FROM generate_series(1, 150000) g")
    pg.psql("SELECT pg_switch_wal()")
    pg.psql("CHECKPOINT")
    source = pg.pgdata / "pg_wal" / first
    content = source.read_bytes() if source.exists() else os.urandom(16 << 20)
    out = []
    for number in range(count):
        path = pg.pgdata / "pg_wal" / wal_file_name(0x7F, f"0/{(number + 1) << 24:X}", 16 << 20)
        path.write_bytes(content)
        out.append(path)
    return out


def _run(paths: list[Path], env: dict[str, str], pgdata: Path, *, check: bool, cached: bool) -> list[float]:
    original = commands._check_owner
    if not check:
        commands._check_owner = lambda *args: None  # type: ignore[assignment]
    try:
        times = []
        for path in paths:
            if not cached:
                (pgdata / marker.CACHE_FILE).unlink(missing_ok=True)
            started = time.perf_counter()
            code = commands.wal_push(str(path), env)
            times.append((time.perf_counter() - started) * 1000)
            if code != commands.OK:
                raise SystemExit(f"wal-push {path.name} failed")
        return times
    finally:
        commands._check_owner = original  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--segments", type=int, default=40)
    args = parser.parse_args()
    env_file = envfile.load()
    endpoint, access, secret = env_file["AWS_ENDPOINT_URL_S3"], env_file["S3_ACCESS_KEY_ID"], env_file["S3_SECRET_ACCESS_KEY"]
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=access,
                          aws_secret_access_key=secret, config=botocore.config.Config(s3={"addressing_style": "path"}))
    bucket = f"pgop-bench-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    credentials = Path(tempfile.mkdtemp(prefix="pgop-s3-"))
    (credentials / "ACCESS_KEY_ID").write_text(access)
    (credentials / "ACCESS_SECRET_KEY").write_text(secret)
    pg = LocalPostgres()
    try:
        pg.initdb()
        pg.start()
        paths = _segments(pg, args.segments)
        figures = {}
        for label, check, cached in (("without the check", False, False), ("check, cached (shipped)", True, True),
                                     ("check, uncached", True, False)):
            env = {"PGOP_CLUSTER": "bench", "PGOP_NAMESPACE": "bench", "PGOP_S3_BUCKET": bucket,
                   "PGOP_S3_PATH": f"run-{uuid.uuid4().hex[:6]}", "PGOP_S3_NAMESPACE": "bench",
                   "PGOP_S3_ENDPOINT": endpoint, "PGOP_S3_REGION": "us-east-1",
                   "PGOP_S3_CREDENTIALS_DIR": str(credentials)}
            (pg.pgdata / marker.CACHE_FILE).unlink(missing_ok=True)
            figures[label] = _run(paths, env, pg.pgdata, check=check, cached=cached)
        print(f"wal-push of {args.segments} segments of 16 MiB (in-process), ms per segment:")
        print(f"{'':28} {'median':>8} {'mean':>8}")
        for label, times in figures.items():
            print(f"{label:28} {statistics.median(times):8.1f} {statistics.fmean(times):8.1f}")
    finally:
        pg.cleanup()
        shutil.rmtree(credentials, ignore_errors=True)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents") or ():
                client.delete_object(Bucket=bucket, Key=item["Key"])
        client.delete_bucket(Bucket=bucket)


if __name__ == "__main__":
    main()
