"""WAL archiving against the real S3 server (versitygw) and real PostgreSQL 15 servers.

PostgreSQL runs `pgop agent wal-push %p` / `pgop agent wal-fetch %f %p` exactly as the agent
renders them (pgop.pgconfig), as the postgres OS user, with the S3 settings in its environment
and the credentials as files, like a pod gives them.
"""
from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import botocore.config
import pytest

from e2e.harness.pg import OS_USER, LocalPostgres, _as_user
from pgop.agent.state import read_archiver
from pgop.agent.status import archiver_status
from pgop.backup import wal
from pgop.backup.layout import ArchiveLayout
from pgop.backup.s3 import Credentials, S3Storage
from pgop.cluster.controller import archiving_condition
from pgop.kernel import pgconfig

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "orders"
WAIT = 60.0  # seconds any one wait may take


def wait_for(predicate, what: str, timeout: float = WAIT, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam(OS_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


# ------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def s3(local_env):
    client = boto3.client("s3", endpoint_url=local_env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                          aws_access_key_id=local_env["S3_ACCESS_KEY_ID"],
                          aws_secret_access_key=local_env["S3_SECRET_ACCESS_KEY"],
                          config=botocore.config.Config(s3={"addressing_style": "path"}))
    bucket = f"pgop-wal-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    yield {"bucket": bucket, "endpoint": local_env["AWS_ENDPOINT_URL_S3"],
           "access": local_env["S3_ACCESS_KEY_ID"], "secret": local_env["S3_SECRET_ACCESS_KEY"],
           "client": client}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents") or ():
            client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def storage(s3):
    return S3Storage(s3["bucket"], endpoint=s3["endpoint"], credentials=Credentials(s3["access"], s3["secret"]))


@pytest.fixture(scope="module")
def launcher():
    """A `pgop` on PATH that the postgres OS user can run: the test's interpreter may live where
    that user cannot reach (a root-only pyenv), so the launcher uses the system Python of the same
    version with this checkout and the venv's packages on its path."""
    directory = Path(tempfile.mkdtemp(prefix="pgop-bin-", dir="/var/tmp"))
    python = sys.executable
    if os.geteuid() == 0:
        python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        if not os.access(python, os.X_OK):
            pytest.skip(f"no {python} the postgres user can run")
    paths = [str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    script = directory / "pgop"
    script.write_text(f"#!{python}\nimport sys\nsys.path[:0] = {paths!r}\n"
                      "from pgop.entry import main\nmain()\n")
    directory.chmod(0o755)
    script.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _credentials_dir(access: str, secret: str) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="pgop-s3-", dir="/var/tmp"))
    for name, value in (("ACCESS_KEY_ID", access), ("ACCESS_SECRET_KEY", secret)):
        (directory / name).write_text(value)
        (directory / name).chmod(0o440)
        _own(directory / name)
    directory.chmod(0o750)
    _own(directory)
    return directory


@pytest.fixture
def archive_env(s3, launcher, monkeypatch):
    """The pod's environment (pgop/specs/pods.py) for servers started by this test; returns the
    credentials directory so a test can break or mend the keys."""
    directory = _credentials_dir(s3["access"], s3["secret"])
    path = f"it-{uuid.uuid4().hex[:8]}"
    for key, value in {"PGOP_CLUSTER": CLUSTER, "PGOP_S3_BUCKET": s3["bucket"], "PGOP_S3_PATH": path,
                       "PGOP_S3_ENDPOINT": s3["endpoint"], "PGOP_S3_REGION": "us-east-1",
                       "PGOP_S3_CREDENTIALS_DIR": str(directory),
                       "PATH": f"{launcher}:{os.environ.get('PATH', '/usr/bin:/bin')}"}.items():
        monkeypatch.setenv(key, value)
    yield {"credentials": directory, "layout": ArchiveLayout(CLUSTER, path)}
    shutil.rmtree(directory, ignore_errors=True)


def _configure(pg: LocalPostgres, **settings: str) -> None:
    with open(pg.pgdata / "postgresql.conf", "a") as conf:
        for key, value in settings.items():
            conf.write(f"{key} = '{value}'\n")


@pytest.fixture
def archiving_postgres(archive_env):
    pg = LocalPostgres()
    pg.initdb()
    _configure(pg, archive_mode="on", archive_command=pgconfig.WAL_PUSH_COMMAND, wal_level="replica")
    pg.start()
    yield pg
    pg.cleanup()


def _archiver(pg: LocalPostgres) -> dict:
    row = pg.psql("SELECT archived_count, coalesce(last_archived_wal, ''), failed_count,"
                  " coalesce(last_failed_wal, '') FROM pg_stat_archiver").split("|")
    return {"archived": int(row[0]), "last": row[1], "failed": int(row[2]), "last_failed": row[3]}


def _switch(pg: LocalPostgres) -> str:
    """Write something and switch WAL; the name of the segment that was just finished."""
    pg.psql("CREATE TABLE IF NOT EXISTS filler (x text); INSERT INTO filler VALUES (now()::text)")
    return pg.psql("SELECT pg_walfile_name(pg_switch_wal())")


def _keys(s3, prefix: str) -> set[str]:
    found = set()
    for page in s3["client"].get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix=prefix):
        found |= {item["Key"] for item in page.get("Contents") or ()}
    return found


# ------------------------------------------------------------------------- wal-push, wal-fetch

def _full_segment(pg: LocalPostgres, into: Path) -> Path:
    """A real 16 MB segment, written full of rows (as compressible as a busy database's WAL)."""
    pg.psql("CREATE TABLE rows (id int, payload text)")
    first = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    pg.psql("INSERT INTO rows SELECT g, md5(g::text) || repeat('x', 40) FROM generate_series(1, 150000) g")
    pg.psql("SELECT pg_switch_wal()")
    segment = into / first
    shutil.copyfile(pg.pgdata / "pg_wal" / first, segment)
    assert segment.stat().st_size == 16 << 20
    return segment


def test_a_real_segment_fetched_back_is_identical_and_pushing_is_idempotent(local_postgres, storage, tmp_path):
    layout = ArchiveLayout(CLUSTER, f"unit-{uuid.uuid4().hex[:8]}")
    segment = _full_segment(local_postgres, tmp_path)
    started = time.monotonic()
    assert wal.push(storage, layout, segment) == wal.PUSHED
    pushed = time.monotonic() - started
    info = storage.head(layout.wal_key(segment.name))
    assert info.metadata["size"] == str(16 << 20) and info.metadata["compression"] == "zstd"
    assert info.size < 16 << 20

    target = tmp_path / "fetched"
    started = time.monotonic()
    assert wal.fetch(storage, layout, segment.name, target) == wal.FETCHED
    fetched = time.monotonic() - started
    assert target.read_bytes() == segment.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".pgop-fetch")]
    print(f"\n16 MB segment: push {16 / pushed:.0f} MB/s ({pushed:.2f}s), fetch {16 / fetched:.0f} MB/s "
          f"({fetched:.2f}s), stored {info.size / 2**20:.1f} MB")

    # the same content again (PostgreSQL re-archives what it did not see succeed): success
    assert wal.push(storage, layout, segment) == wal.ALREADY_ARCHIVED
    # a different file of the same name: refused, and the archived one is untouched
    impostor = tmp_path / "other" / segment.name
    impostor.parent.mkdir()
    impostor.write_bytes(os.urandom(1 << 20))
    with pytest.raises(wal.WalConflict, match="different file"):
        wal.push(storage, layout, impostor)
    assert storage.head(layout.wal_key(segment.name)).metadata["sha256"] == info.metadata["sha256"]
    # a name that is not in the archive is "not found", not an error
    assert wal.fetch(storage, layout, "000000010000000000000F00", tmp_path / "none") == wal.NOT_FOUND
    assert not (tmp_path / "none").exists()


def test_a_corrupted_object_is_refused_and_leaves_no_file(storage, tmp_path):
    layout = ArchiveLayout(CLUSTER, f"corrupt-{uuid.uuid4().hex[:8]}")
    segment = tmp_path / "000000010000000000000002"
    segment.write_bytes(os.urandom(256 << 10))
    wal.push(storage, layout, segment)
    key = layout.wal_key(segment.name)
    # the same object with one byte of the content changed, and the archived checksum kept
    head = storage.client.head_object(Bucket=storage.bucket, Key=key)
    import io
    changed = bytearray(segment.read_bytes())
    changed[1000] ^= 1
    packed = io.BytesIO()
    wal.compress(io.BytesIO(bytes(changed)), packed)
    storage.client.put_object(Bucket=storage.bucket, Key=key, Body=packed.getvalue(), Metadata=head["Metadata"])
    with pytest.raises(wal.WalCorrupt, match="checksum mismatch"):
        wal.fetch(storage, layout, segment.name, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".pgop-fetch")]


@pytest.fixture
def shared_tmp():
    """A scratch directory the postgres OS user can reach (pytest's tmp_path is root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="pgop-walcmd-", dir="/var/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_the_commands_speak_postgres_exit_codes(archive_env, s3, shared_tmp):
    tmp_path = shared_tmp
    wal_dir = tmp_path / "w"
    wal_dir.mkdir()
    segment = wal_dir / "000000010000000000000003"
    segment.write_bytes(os.urandom(64 << 10))
    for p in (tmp_path, wal_dir, segment):
        _own(p)

    def run(*argv: str) -> int:
        done = _as_user(["pgop", "agent", *argv], cwd=str(tmp_path), timeout=120)
        print(done.stderr, end="")
        return done.returncode

    assert run("wal-push", str(segment)) == 0
    assert run("wal-push", str(segment)) == 0
    assert archive_env["layout"].wal_key(segment.name) in _keys(s3, archive_env["layout"].root)
    out = tmp_path / "RECOVERYXLOG"
    assert run("wal-fetch", segment.name, str(out)) == 0 and out.read_bytes() == segment.read_bytes()
    assert run("wal-fetch", "000000010000000000000009", str(tmp_path / "nope")) == 1
    segment.write_bytes(os.urandom(64 << 10))
    assert run("wal-push", str(segment)) == 1  # a different file of an archived name


# ------------------------------------------------------------------------ PostgreSQL archiving

def test_postgres_archives_each_switched_segment_to_s3(archiving_postgres, archive_env, s3):
    pg, layout = archiving_postgres, archive_env["layout"]
    finished = [_switch(pg) for _ in range(3)]
    wait_for(lambda: _archiver(pg)["archived"] >= 3 and _archiver(pg)["last"] >= finished[-1],
             f"pg_stat_archiver to show {finished[-1]} archived")
    keys = _keys(s3, layout.wal_root)
    for name in finished:
        assert layout.wal_key(name) in keys
    assert _archiver(pg)["failed"] == 0

    # what the agent reads and reports, and the condition the operator derives from it
    import psycopg
    pg.psql("ALTER USER postgres PASSWORD 'archiver-test'")
    with psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres", password="archiver-test",
                         dbname="postgres", connect_timeout=5) as conn:
        reported = archiver_status(read_archiver(conn))
    assert reported["archivedCount"] >= 3 and reported["lastArchivedWal"] >= finished[-1]
    instance = {"metadata": {"name": "orders-0"}, "spec": {"role": "primary"},
                "status": {"role": "primary", "archiver": reported}}
    assert archiving_condition([instance])["status"] == "True"


def test_wrong_credentials_fail_archiving_visibly_until_mended(archive_env, s3):
    credentials = archive_env["credentials"]
    (credentials / "ACCESS_SECRET_KEY").write_text("not-the-secret")
    pg = LocalPostgres()
    try:
        pg.initdb()
        _configure(pg, archive_mode="on", archive_command=pgconfig.WAL_PUSH_COMMAND, wal_level="replica")
        pg.start()
        stuck = _switch(pg)
        failing = wait_for(lambda: (lambda a: a if a["failed"] >= 2 else None)(_archiver(pg)),
                           "pg_stat_archiver.failed_count to grow")
        assert failing["archived"] == 0 and failing["last_failed"] == stuck
        assert (pg.pgdata / "pg_wal" / "archive_status" / f"{stuck}.ready").exists()  # kept, not lost
        assert "wal-push" in pg.log_tail(50)
        assert not _keys(s3, archive_env["layout"].wal_root)
        condition = archiving_condition([{"metadata": {"name": "orders-0"}, "spec": {"role": "primary"},
                                          "status": {"role": "primary", "archiver": {
                                              "failedCount": failing["failed"], "lastFailedWal": stuck,
                                              "lastFailedTime": "2026-01-01T00:00:00Z"}}}])
        assert (condition["status"], condition["reason"]) == ("False", "ArchivingFailing")

        # the right secret again: the same segment goes first, nothing is skipped
        (credentials / "ACCESS_SECRET_KEY").write_text(s3["secret"])
        after = _switch(pg)
        wait_for(lambda: _archiver(pg)["last"] >= after, f"{after} archived after the fix")
        keys = _keys(s3, archive_env["layout"].wal_root)
        assert archive_env["layout"].wal_key(stuck) in keys and archive_env["layout"].wal_key(after) in keys
    finally:
        pg.cleanup()


def test_a_copy_restored_from_a_base_backup_replays_archived_wal(archiving_postgres, archive_env, s3):
    """Point-in-time recovery basics: a base copy without WAL (pg_basebackup -X none), then
    every WAL file it needs comes from S3 through wal-fetch; as a standby it replays to the same
    rows, and once promoted it archives its new timeline's history file."""
    primary, layout = archiving_postgres, archive_env["layout"]
    primary.psql("CREATE TABLE orders (id int primary key, note text)")
    primary.psql("INSERT INTO orders SELECT g, 'before the backup' FROM generate_series(1, 1000) g")
    copy = LocalPostgres()
    try:
        copy._chown()
        backup = _as_user([f"{primary.bindir}/pg_basebackup", "-h", str(primary.socket_dir),
                           "-p", str(primary.port), "-D", str(copy.pgdata), "-X", "none",
                           "-c", "fast"], timeout=120)
        assert backup.returncode == 0, backup.stderr
        assert not [p for p in (copy.pgdata / "pg_wal").iterdir() if p.is_file()]  # -X none: no WAL at all
        primary.psql("INSERT INTO orders SELECT g, 'after the backup' FROM generate_series(1001, 2500) g")
        expected = primary.psql("SELECT count(*), sum(id) FROM orders")
        last = _switch(primary)
        wait_for(lambda: _archiver(primary)["last"] >= last, f"{last} archived")
        # the backup history file pg_basebackup left is archived too
        assert any(key.endswith(".backup.zst") for key in _keys(s3, layout.wal_root))

        # the copy's archive_command writes to its own archive (a new cluster restored from orders)
        _configure(copy, restore_command=pgconfig.WAL_FETCH_COMMAND, archive_mode="on",
                   archive_command=f"PGOP_CLUSTER=restored {pgconfig.WAL_PUSH_COMMAND}",
                   hot_standby="on")
        (copy.pgdata / "standby.signal").write_text("")
        _own(copy.pgdata / "standby.signal")
        copy.start(timeout=60)
        wait_for(lambda: _query(copy, "SELECT count(*), sum(id) FROM orders") == expected,
                 "the standby to replay the archived WAL to the primary's rows")
        assert copy.psql("SELECT pg_is_in_recovery()") == "t"

        copy.psql("SELECT pg_promote(true, 60)")
        assert copy.psql("SELECT pg_is_in_recovery()") == "f"
        restored = ArchiveLayout("restored", layout.path)
        wait_for(lambda: restored.wal_key("00000002.history") in _keys(s3, restored.wal_root),
                 "the new timeline's history file in the restored cluster's archive")
        # the source's archive stays the source's: nothing of timeline 2 lands there
        assert not _keys(s3, layout.timeline_prefix(2))
        assert copy.psql("SELECT count(*), sum(id) FROM orders") == expected
    finally:
        copy.cleanup()


def test_point_in_time_recovery_stops_at_the_target_and_never_ends_early_on_an_s3_error(
        archiving_postgres, archive_env):
    """recovery.signal + recovery_target_time: exactly the rows committed before T. First with the
    archive unreachable (a bucket that does not exist): wal-fetch must not answer "no more WAL",
    which would end recovery early; PostgreSQL stops with an error instead, and a second start
    with the archive back recovers to T."""
    primary = archiving_postgres
    primary.psql("CREATE TABLE orders (id int primary key, note text)")
    primary.psql("INSERT INTO orders SELECT g, 'in the backup' FROM generate_series(1, 1000) g")
    copy = LocalPostgres()
    try:
        copy._chown()
        backup = _as_user([f"{primary.bindir}/pg_basebackup", "-h", str(primary.socket_dir),
                           "-p", str(primary.port), "-D", str(copy.pgdata), "-X", "none", "-c", "fast"],
                          timeout=120)
        assert backup.returncode == 0, backup.stderr
        primary.psql("INSERT INTO orders SELECT g, 'before T' FROM generate_series(1001, 1500) g")
        target = primary.psql("SELECT pg_sleep(0.2), now()").split("|")[1]
        primary.psql("SELECT pg_sleep(0.2)")
        primary.psql("INSERT INTO orders SELECT g, 'after T' FROM generate_series(1501, 2200) g")
        last = _switch(primary)
        wait_for(lambda: _archiver(primary)["last"] >= last, f"{last} archived")

        _configure(copy, archive_mode="off", recovery_target_time=target, recovery_target_action="promote",
                   restore_command=f"PGOP_S3_BUCKET=no-such-bucket-{uuid.uuid4().hex[:6]} "
                                   f"{pgconfig.WAL_FETCH_COMMAND}")
        (copy.pgdata / "recovery.signal").write_text("")
        _own(copy.pgdata / "recovery.signal")
        with pytest.raises(RuntimeError):
            copy.start(timeout=30)
        log = copy.log_tail(80)
        assert "stopping recovery rather than ending it early" in log, log
        assert "NoSuchBucket" in log

        _configure(copy, restore_command=pgconfig.WAL_FETCH_COMMAND)  # the later line wins
        copy.start(timeout=60)
        wait_for(lambda: _query(copy, "SELECT pg_is_in_recovery()") == "f", "the copy to reach T and promote")
        assert copy.psql("SELECT count(*), max(id), count(*) FILTER (WHERE note = 'after T') FROM orders") \
            == "1500|1500|0"
    finally:
        copy.cleanup()


def _query(pg: LocalPostgres, sql: str) -> str | None:
    try:
        return pg.psql(sql)
    except RuntimeError:
        return None  # still starting, or the table not replayed yet


# ----------------------------------------------------------------------- the agent end to end

def test_the_agent_archives_when_its_spec_asks_and_reports_it(archive_env, s3):
    """A PgInstance with spec.backup.s3: the agent renders archive_command = wal-push, its
    postgres archives to S3, and the heartbeat carries pg_stat_archiver, from which the operator's
    ContinuousArchiving condition says True."""
    from e2e.harness.pg import AgentHost
    from pgop.agent import kube
    from tests.integration.test_agent_postgres import Fleet

    host = AgentHost(cluster=CLUSTER)
    fleet = Fleet(host, kube.MemoryInstanceStore(host.namespace), {
        "instances": 1, "bootstrap": {"initdb": {"database": "app", "owner": "app"}},
        "backup": {"s3": {"bucket": s3["bucket"], "path": archive_env["layout"].path,
                          "endpoint": s3["endpoint"], "credentialsSecret": "s3-creds"}}})
    try:
        name = fleet.primary()
        assert fleet.sql(name, "SHOW archive_command") == [(pgconfig.WAL_PUSH_COMMAND,)]
        fleet.sql(name, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        switched = fleet.sql(name, "SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        status = wait_for(lambda: (((s := fleet.status(name)).get("archiver") or {}).get("lastArchivedWal") or "") >= switched
                          and s, f"the heartbeat to report {switched} archived")
        assert status["archiver"]["failedCount"] == 0
        assert archive_env["layout"].wal_key(switched) in _keys(s3, archive_env["layout"].wal_root)
        instance = {"metadata": {"name": name}, "spec": {"role": "primary"}, "status": status}
        assert archiving_condition([instance])["status"] == "True"
    finally:
        fleet.cleanup()
        host.cleanup()


# --------------------------------------------------------------- one archive per database system

def _archiving(started: list[LocalPostgres]) -> LocalPostgres:
    pg = LocalPostgres()
    started.append(pg)
    pg.initdb()
    _configure(pg, archive_mode="on", archive_command=pgconfig.WAL_PUSH_COMMAND, wal_level="replica")
    pg.start()
    return pg


def _marker_of(s3, layout: ArchiveLayout) -> dict:
    body = s3["client"].get_object(Bucket=s3["bucket"], Key=layout.marker_key)["Body"].read()
    return json.loads(body)


def test_two_namespaces_with_one_cluster_name_and_path_archive_apart(archive_env, s3, monkeypatch):
    """The namespaced layout: two clusters `orders` in namespaces a and b, one bucket and path,
    each archives under its own root with its own marker."""
    path, started = archive_env["layout"].path, []
    try:
        servers = {}
        for namespace in ("a", "b"):
            monkeypatch.setenv("PGOP_S3_NAMESPACE", namespace)  # the server inherits it at start
            monkeypatch.setenv("PGOP_NAMESPACE", namespace)
            servers[namespace] = _archiving(started)
        for namespace, pg in servers.items():
            layout = ArchiveLayout(CLUSTER, path, namespace)
            segment = _switch(pg)
            wait_for(lambda pg=pg, segment=segment: _archiver(pg)["last"] >= segment, f"{segment} archived in {namespace}")
            assert layout.wal_key(segment) in _keys(s3, layout.wal_root)
            written = _marker_of(s3, layout)
            assert (written["systemIdentifier"], written["namespace"], written["cluster"]) == \
                (pg.psql("SELECT system_identifier FROM pg_control_system()"), namespace, CLUSTER)
            assert _archiver(pg)["failed"] == 0
        assert not _keys(s3, archive_env["layout"].wal_root)  # nothing in the legacy root
    finally:
        for pg in started:
            pg.cleanup()


def test_a_new_database_under_an_old_ones_name_is_refused_until_the_old_archive_is_moved(archive_env, s3):
    """A cluster deleted and created anew from scratch (same name, bucket and path, a new system
    identifier): its WAL stays in pg_wal, pg_stat_archiver counts failures, the agent's report and
    the cluster's condition say ArchiveBelongsToAnotherCluster; once the old archive is moved away
    the same segments are archived, nothing skipped."""
    from pgop.agent.state import Archiver, PostgresState, with_archive_refusal
    from pgop.backup import marker
    from pgop.kernel.model import REASON_FOREIGN_ARCHIVE

    layout, started = archive_env["layout"], []
    try:
        old = _archiving(started)
        first = _switch(old)
        wait_for(lambda: _archiver(old)["last"] >= first, f"{first} archived by the first database")
        old_id = old.psql("SELECT system_identifier FROM pg_control_system()")
        assert _marker_of(s3, layout)["systemIdentifier"] == old_id
        old.cleanup()

        new = _archiving(started)
        new_id = new.psql("SELECT system_identifier FROM pg_control_system()")
        assert new_id != old_id
        stuck = _switch(new)
        failing = wait_for(lambda: (lambda a: a if a["failed"] >= 1 else None)(_archiver(new)),
                           "the new database's archiving to be refused")
        assert failing["archived"] == 0
        assert (new.pgdata / "pg_wal" / "archive_status" / f"{stuck}.ready").exists()  # kept, not lost
        assert REASON_FOREIGN_ARCHIVE in new.log_tail(50)
        assert _marker_of(s3, layout)["systemIdentifier"] == old_id  # never overwritten
        reason, message = marker.last_refusal(new.pgdata)
        assert reason == REASON_FOREIGN_ARCHIVE and old_id in message and new_id in message
        # what the agent reports and the operator makes of it
        state = with_archive_refusal(PostgresState(role="primary", archiver=Archiver(failed_count=failing["failed"],
                                                                                     last_failed_wal=stuck)),
                                     new.pgdata)
        reported = archiver_status(state.archiver) | {"lastFailedTime": "2026-01-01T00:00:00Z"}
        condition = archiving_condition([{"metadata": {"name": "orders-0"}, "spec": {"role": "primary"},
                                          "status": {"role": "primary", "archiver": reported}}])
        assert (condition["status"], condition["reason"]) == ("False", REASON_FOREIGN_ARCHIVE)
        assert f"s3://{s3['bucket']}/{layout.root}" in condition["message"]

        # the user moves the old archive away: the next try archives, from the stuck segment on
        for key in _keys(s3, layout.root):
            s3["client"].delete_object(Bucket=s3["bucket"], Key=key)
        after = _switch(new)
        wait_for(lambda: _archiver(new)["last"] >= after, f"{after} archived once the old archive is gone",
                 timeout=120)
        keys = _keys(s3, layout.wal_root)
        assert layout.wal_key(stuck) in keys and layout.wal_key(after) in keys
        assert _marker_of(s3, layout)["systemIdentifier"] == new_id
        assert marker.last_refusal(new.pgdata) is None
    finally:
        for pg in started:
            pg.cleanup()


def test_a_base_backup_into_another_systems_archive_fails_before_uploading(archiving_postgres, archive_env, s3,
                                                                          storage):
    """The check the backup pod makes before pg_basebackup starts (pgop.agent.backups)."""
    from pgop.backup import marker
    from pgop.kernel.model import REASON_FOREIGN_ARCHIVE
    layout = ArchiveLayout(CLUSTER, archive_env["layout"].path, "shop")
    forged = marker.Marker("12345").to_json().encode()
    assert storage.put_new(layout.marker_key, io.BytesIO(forged), len(forged), {})
    pg = archiving_postgres
    system_id = pg.psql("SELECT system_identifier FROM pg_control_system()")
    with pytest.raises(marker.ForeignArchive, match=REASON_FOREIGN_ARCHIVE):
        marker.ensure_ours(storage, layout, system_id)
    assert not _keys(s3, f"{layout.root}base/")
    # its own (empty) root is claimed and a backup goes there
    own = ArchiveLayout(CLUSTER, archive_env["layout"].path, "sales")
    assert marker.ensure_ours(storage, own, system_id) == marker.CLAIMED
    assert marker.ensure_ours(storage, own, system_id) == marker.OURS
