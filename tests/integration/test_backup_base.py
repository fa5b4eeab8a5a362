"""Base backups streamed to the real S3 server from a real PostgreSQL 15 that archives its WAL with
`pgop agent wal-push`, and point-in-time restores from them into a new data directory."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import zstandard
from botocore.exceptions import ClientError

from e2e.harness.pg import OS_USER, LocalPostgres
from pgop.backup import basebackup
from pgop.backup import layout as keys
from pgop.backup.catalog import RestoreTargetError
from pgop.backup.restore import restore
from pgop.backup.s3 import Credentials, S3Storage
from pgop.kernel.lsn import parse_lsn
from pgop.kernel.model import InstanceSpec, RecoverySpec, S3Spec
from tests.integration.test_backup_wal import (  # noqa: F401  (fixtures)
    CLUSTER,
    archive_env,
    archiving_postgres,
    launcher,
    s3,
    storage,
)

PREFIX = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []


def _source(pg: LocalPostgres) -> basebackup.Source:
    return basebackup.Source(host=str(pg.socket_dir), port=pg.port, user="postgres", bindir=pg.bindir,
                             prefix=PREFIX)


def _keys(s3, prefix: str) -> set[str]:
    found = set()
    for page in s3["client"].get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix=prefix):
        found |= {item["Key"] for item in page.get("Contents") or ()}
    return found


def _empty_pgdata() -> LocalPostgres:
    target = LocalPostgres()
    target._chown()
    target.pgdata.mkdir(mode=0o700)
    if PREFIX:
        shutil.chown(target.pgdata, OS_USER, OS_USER)
    return target


def test_a_base_backup_lands_in_s3_with_its_catalog(archiving_postgres, archive_env, storage, s3):
    pg = archiving_postgres
    layout = archive_env["layout"]
    pg.psql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)")
    backup = basebackup.take_base_backup(storage, layout, "first", _source(pg), archive_wait=60)

    prefix = keys.backup_prefix(layout, "first")
    assert _keys(s3, prefix) == {prefix + "base.tar.zst", prefix + "backup.json"}
    document = json.loads(storage.get(prefix + "backup.json")[1].read())
    assert document["backupName"] == "first" and document["phase"] == "Completed"
    assert document["timeline"] == 1 and document["pgVersion"] == 15
    assert parse_lsn(document["beginLSN"]) < parse_lsn(document["endLSN"])
    assert document["beginWal"] <= document["endWal"] and document["beginWal"].startswith("00000001")
    assert document["systemIdentifier"] == pg.psql("SELECT system_identifier FROM pg_control_system()")
    assert document["sizeBytes"] > 20 << 20  # a fresh cluster's files
    assert storage.head(prefix + "base.tar.zst").size < document["sizeBytes"]
    # the checksums a restore checks: of the object as stored, and of the tar inside it
    _, body = storage.get(prefix + "base.tar.zst")
    with body:
        stored = body.read()
    [entry] = document["files"]
    assert entry["storedSha256"] == hashlib.sha256(stored).hexdigest()
    tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stored), read_across_frames=True).readall()
    assert entry["sha256"] == hashlib.sha256(tar).hexdigest() and len(tar) == document["sizeBytes"]
    assert storage.head(layout.wal_key(document["endWal"])) is not None
    assert backup.to_dict()["endLSN"] == document["endLSN"]

    listed = basebackup.list_backups(storage, layout.path, CLUSTER)
    assert [b.backup_name for b in listed] == ["first"]
    assert listed[0].s3_path == f"s3://{s3['bucket']}/{prefix}"
    with pytest.raises(basebackup.BaseBackupError, match="already exists"):
        basebackup.take_base_backup(storage, layout, "first", _source(pg))


def test_a_failed_upload_leaves_no_catalog_document(archiving_postgres, archive_env, s3):
    layout = archive_env["layout"]
    wrong = S3Storage(s3["bucket"], endpoint=s3["endpoint"], credentials=Credentials(s3["access"], "wrong"),
                      max_attempts=1)
    with pytest.raises(ClientError):  # the S3 server refuses the wrong secret
        basebackup.take_base_backup(wrong, layout, "broken", _source(archiving_postgres))
    assert not _keys(s3, keys.backup_prefix(layout, "broken"))
    # a server that fails mid-stream: the upload is aborted, nothing is listed
    good = S3Storage(s3["bucket"], endpoint=s3["endpoint"], credentials=Credentials(s3["access"], s3["secret"]))
    bad_source = _source(archiving_postgres)
    bad_source.port = 1  # nobody listens there
    bad_source.host = "127.0.0.1"
    with pytest.raises(basebackup.BaseBackupError, match="pg_basebackup failed"):
        basebackup.take_base_backup(good, layout, "unreachable", bad_source)
    assert not _keys(s3, keys.backup_prefix(layout, "unreachable"))
    assert basebackup.list_backups(good, layout.path, CLUSTER) == []
    uploads = s3["client"].list_multipart_uploads(Bucket=s3["bucket"]).get("Uploads") or []
    assert not [u for u in uploads if u["Key"].startswith(keys.backup_prefix(layout, "unreachable"))]


def test_point_in_time_restore_into_a_new_data_directory(archiving_postgres, archive_env, storage):
    pg = archiving_postgres
    layout = archive_env["layout"]
    pg.psql("CREATE TABLE orders (id int, at timestamptz default clock_timestamp());"
            "INSERT INTO orders (id) SELECT generate_series(1, 100)")
    basebackup.take_base_backup(storage, layout, "pitr", _source(pg), archive_wait=60)
    pg.psql("INSERT INTO orders (id) SELECT generate_series(101, 200)")
    time.sleep(1.1)
    target_time = datetime.now(UTC)
    time.sleep(1.1)
    pg.psql("INSERT INTO orders (id) SELECT generate_series(201, 300)")
    last = pg.psql("SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + 60
    while storage.head(layout.wal_key(last)) is None:
        assert time.monotonic() < deadline, f"{last} never archived"
        time.sleep(0.3)

    backups = basebackup.list_backups(storage, layout.path, CLUSTER)
    with pytest.raises(RestoreTargetError, match="available: .* \\(end of pitr\\)"):
        restore(storage, layout, Path(tempfile.gettempdir()), backups,
                target_time=datetime(2000, 1, 1, tzinfo=UTC))

    target = _empty_pgdata()
    try:
        result = restore(storage, layout, target.pgdata, backups, target_time=target_time, bindir=pg.bindir,
                         prefix=PREFIX, stall_after=120,
                         options=f"-p {target.port} -k {target.socket_dir} -c listen_addresses=''")
        restore_log = (target.root / "data-restore.log").read_text()
        assert result.backup.backup_name == "pitr" and result.timeline == 2, restore_log
        assert not (target.pgdata / "recovery.signal").exists()
        target.start()
        assert target.psql("SELECT count(*), max(id) FROM orders") == "200|200"
        assert target.psql("SELECT pg_is_in_recovery()") == "f"
        assert target.psql("SELECT timeline_id FROM pg_control_checkpoint()") == "2"
    finally:
        target.cleanup()


def test_bootstrap_recovery_mode_restores_the_latest_backup_for_an_instance(
        archiving_postgres, archive_env, storage, monkeypatch):
    from e2e.harness.pg import AgentHost, _as_user
    from pgop.agent import bootstrap

    pg = archiving_postgres
    layout = archive_env["layout"]
    pg.psql("CREATE TABLE kept (id int); INSERT INTO kept SELECT generate_series(1, 10)")
    basebackup.take_base_backup(storage, layout, "for-bootstrap", _source(pg), archive_wait=60)
    pg.psql("INSERT INTO kept SELECT generate_series(11, 20)")
    last = pg.psql("SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + 60
    while storage.head(layout.wal_key(last)) is None:
        assert time.monotonic() < deadline, f"{last} never archived"
        time.sleep(0.3)

    host = AgentHost()
    settings = host.settings("restored-0")
    spec = InstanceSpec(cluster="restored", ordinal=0, role="primary", bootstrap="recovery",
                        recovery=RecoverySpec(source=CLUSTER, s3=S3Spec(bucket="", credentials_secret="",
                                                                          path=layout.path)))
    try:
        result = bootstrap.bootstrap(settings, "recovery", spec)
        assert not result.already_done and bootstrap.is_bootstrapped(settings)
        auto = (settings.pgdata / "postgresql.auto.conf").read_text()
        assert "restore_command" not in auto and not (settings.pgdata / "recovery.signal").exists()
        started = _as_user([f"{settings.bindir}/pg_ctl", "-D", str(settings.pgdata), "-w", "-t", "60",
                            "-l", str(settings.pgdata.parent / "check.log"), "start"])
        assert started.returncode == 0, started.stderr
        try:
            count = _as_user([f"{settings.bindir}/psql", "-h", str(settings.socket_dir), "-p",
                              str(settings.pg_port), "-XAtc", "SELECT count(*), pg_is_in_recovery() FROM kept"])
            assert count.stdout.strip() == "20|f", count.stderr
            # the restored roles now have this cluster's passwords, not the source's
            for kind in ("superuser", "replication", "app"):
                user = (host.secrets_dir / kind / "username").read_text().strip()
                with psycopg.connect(host="127.0.0.1", port=settings.pg_port, dbname="postgres", user=user,
                                     password=host.passwords[kind], connect_timeout=5) as conn:
                    assert conn.execute("SELECT current_user").fetchone()[0] == user
        finally:
            _as_user([f"{settings.bindir}/pg_ctl", "-D", str(settings.pgdata), "-m", "fast", "-w", "stop"])
        assert bootstrap.bootstrap(settings, "recovery").already_done
    finally:
        host.cleanup()


def test_pgop_agent_backup_backs_up_the_local_instance(archiving_postgres, archive_env, storage, monkeypatch):
    from typer.testing import CliRunner

    from pgop.cli import app

    pg = archiving_postgres
    for key, value in {"PGOP_INSTANCE": f"{CLUSTER}-0", "PGOP_NAMESPACE": "test", "PGDATA": str(pg.pgdata),
                       "PGOP_SOCKET_DIR": str(pg.socket_dir), "PGOP_PG_PORT": str(pg.port),
                       "PGOP_PG_BINDIR": pg.bindir}.items():
        monkeypatch.setenv(key, value)
    if PREFIX:
        monkeypatch.setenv("PGOP_RUN_AS", OS_USER)
    result = CliRunner().invoke(app, ["agent", "backup", "--name", "from-cli"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["backupName"] == "from-cli" and document["endWal"]
    assert [b.backup_name for b in basebackup.list_backups(storage, archive_env["layout"].path, CLUSTER)] \
        == ["from-cli"]
    again = CliRunner().invoke(app, ["agent", "backup", "--name", "from-cli"])
    assert again.exit_code == 1 and "already exists" in again.output
