"""Keys that write and keys that delete (docs/backup-permissions.md), against a real S3 server.

The test starts its own versitygw (the harness's binary) with its internal IAM on a free loopback
port: two accounts of role `user`, and a bucket policy that lets the pods' account list, read,
write and abort uploads, and the retention account list, read and delete. versitygw, like AWS,
refuses what no statement of the policy allows. The shared S3 server of `make up` has no IAM and
is not touched.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError

from e2e.harness import services
from e2e.harness.pg import OS_USER, LocalPostgres
from pgop.backup import basebackup
from pgop.backup import layout as keys
from pgop.backup.cluster_backups import RetentionJobs, reconcile_backups
from pgop.backup.layout import ArchiveLayout
from pgop.backup.s3 import Credentials, S3Storage, error_code
from pgop.kernel import pgconfig
from pgop.kernel.actions import DELETE
from pgop.kernel.model import Cluster
from tests.integration.test_backup_wal import (  # noqa: F401  (the launcher fixture)
    _configure,
    _credentials_dir,
    launcher,
)

CLUSTER = "orders"
NAMESPACE = "shop"
WRITER_SECRET = "s3-writer"
RETENTION_SECRET = "s3-retention"
PREFIX = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []
WAIT = 60.0


def _client(endpoint: str, access: str, secret: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=access,
                        aws_secret_access_key=secret,
                        config=botocore.config.Config(s3={"addressing_style": "path"},
                                                      retries={"mode": "standard", "max_attempts": 2}))


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


class IamS3:
    """A versitygw of our own with an IAM directory, a bucket, a pods' account and a retention
    account, and the bucket policy between them."""

    def __init__(self, root: Path):
        binary = services.versitygw_binary()
        if not binary.exists():
            pytest.fail(f"{binary} is missing: run `make up` (it builds versitygw)", pytrace=False)
        self.binary, self.root = binary, root
        self.port = services.free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.admin = ("admin" + secrets.token_hex(4), secrets.token_hex(16))
        self.writer = ("writer" + secrets.token_hex(4), secrets.token_hex(16))
        self.retainer = ("retainer" + secrets.token_hex(4), secrets.token_hex(16))
        self.bucket = f"pgop-perm-{uuid.uuid4().hex[:10]}"
        data, iam = root / "data", root / "iam"
        data.mkdir()
        iam.mkdir()
        argv = [str(binary), "--access", self.admin[0], "--secret", self.admin[1], "--region", "us-east-1",
                "--port", f"127.0.0.1:{self.port}", "--health", "/health", "--iam-dir", str(iam), "--quiet",
                "posix"]
        if not services._xattrs_work(data):
            (root / "meta").mkdir()
            argv += ["--sidecar", str(root / "meta")]
        self.log = open(root / "versitygw.log", "wb")
        self.process = subprocess.Popen([*argv, str(data)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not _healthy(f"{self.endpoint}/health"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"versitygw did not start: {(root / 'versitygw.log').read_text()[-2000:]}")
            time.sleep(0.2)
        for access, secret in (self.writer, self.retainer):
            self._admin("create-user", "--access", access, "--secret", secret, "--role", "user")
        self.root_client = _client(self.endpoint, *self.admin)
        self.root_client.create_bucket(Bucket=self.bucket)
        self.root_client.put_bucket_policy(Bucket=self.bucket, Policy=json.dumps(self.policy()))

    def policy(self) -> dict:
        """The two IAM policies of docs/backup-permissions.md, as one bucket policy."""
        bucket, objects = f"arn:aws:s3:::{self.bucket}", f"arn:aws:s3:::{self.bucket}/*"
        return {"Version": "2012-10-17", "Statement": [
            {"Sid": "PodsListReadWrite", "Effect": "Allow", "Principal": {"AWS": [self.writer[0]]},
             "Action": ["s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
             "Resource": [bucket, objects]},
            {"Sid": "RetentionListReadDelete", "Effect": "Allow", "Principal": {"AWS": [self.retainer[0]]},
             "Action": ["s3:ListBucket", "s3:GetObject", "s3:DeleteObject"],
             "Resource": [bucket, objects]},
        ]}

    def _admin(self, *args: str) -> None:
        env = {**os.environ, "ADMIN_ACCESS_KEY_ID": self.admin[0], "ADMIN_SECRET_ACCESS_KEY": self.admin[1],
               "ADMIN_REGION": "us-east-1", "ADMIN_ENDPOINT_URL": self.endpoint}
        done = subprocess.run([str(self.binary), "admin", *args], env=env, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise AssertionError(f"versitygw admin {args[0]} failed: {done.stdout}{done.stderr}")

    def storage(self, account: tuple[str, str]) -> S3Storage:
        return S3Storage(self.bucket, endpoint=self.endpoint, credentials=Credentials(*account), max_attempts=2)

    def keys(self, prefix: str) -> set[str]:
        found = set()
        for page in self.root_client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            found |= {item["Key"] for item in page.get("Contents") or ()}
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def iam_s3():
    root = Path(tempfile.mkdtemp(prefix="pgop-iam-s3-"))
    server = IamS3(root)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def writer_postgres(iam_s3, launcher, monkeypatch):
    """A PostgreSQL 15 archiving through `pgop agent wal-push` with the pods' keys only, set up as
    a Postgres pod is (the location in PGOP_S3_*, the keys as files)."""
    directory = _credentials_dir(*iam_s3.writer)
    layout = ArchiveLayout(CLUSTER, f"it-{uuid.uuid4().hex[:8]}")
    for key, value in {"PGOP_CLUSTER": CLUSTER, "PGOP_S3_BUCKET": iam_s3.bucket, "PGOP_S3_PATH": layout.path,
                       "PGOP_S3_ENDPOINT": iam_s3.endpoint, "PGOP_S3_REGION": "us-east-1",
                       "PGOP_S3_CREDENTIALS_DIR": str(directory),
                       "PATH": f"{launcher}:{os.environ.get('PATH', '/usr/bin:/bin')}"}.items():
        monkeypatch.setenv(key, value)
    pg = LocalPostgres()
    pg.initdb()
    _configure(pg, archive_mode="on", archive_command=pgconfig.WAL_PUSH_COMMAND, wal_level="replica")
    pg.start()
    yield pg, layout
    pg.cleanup()
    shutil.rmtree(directory, ignore_errors=True)


def _source(pg: LocalPostgres) -> basebackup.Source:
    return basebackup.Source(host=str(pg.socket_dir), port=pg.port, user="postgres", bindir=pg.bindir,
                             prefix=PREFIX)


def _archived(pg: LocalPostgres, storage: S3Storage, layout: ArchiveLayout) -> str:
    """Write, switch WAL, wait until the finished segment is in the archive; its name."""
    pg.psql("CREATE TABLE IF NOT EXISTS filler (x text); INSERT INTO filler VALUES (now()::text)")
    segment = pg.psql("SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + WAIT
    while storage.head(layout.wal_key(segment)) is None:
        failed = pg.psql("SELECT failed_count FROM pg_stat_archiver")
        assert time.monotonic() < deadline, f"{segment} never archived ({failed} failed attempts)"
        time.sleep(0.3)
    return segment


def _refused(call) -> str:
    with pytest.raises(ClientError) as refused:
        call()
    return error_code(refused.value)


# ----------------------------------------------------------------------------------- the pods

def test_the_pods_keys_archive_and_back_up_but_may_not_delete(iam_s3, writer_postgres):
    pg, layout = writer_postgres
    writer = iam_s3.storage(iam_s3.writer)
    segment = _archived(pg, writer, layout)
    assert pg.psql("SELECT failed_count FROM pg_stat_archiver") == "0"
    pg.psql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)")
    backup = basebackup.take_base_backup(writer, layout, "first", _source(pg), archive_wait=WAIT)
    prefix = keys.backup_prefix(layout, "first")
    assert iam_s3.keys(prefix) == {prefix + "base.tar.zst", prefix + "backup.json"}
    assert [b.backup_name for b in basebackup.list_backups(writer, layout.path, CLUSTER)] == ["first"]
    assert writer.head(layout.wal_key(backup.end_wal)) is not None

    # ... and may not delete what they wrote: not a WAL file, not a backup, not its catalog
    for key in (layout.wal_key(segment), prefix + "base.tar.zst", prefix + "backup.json"):
        assert _refused(lambda key=key: writer.delete(key)) == "AccessDenied"
        assert iam_s3.root_client.head_object(Bucket=iam_s3.bucket, Key=key)
    # a batch delete answers 200 with the refusal per key, as on AWS
    batch = writer.client.delete_objects(Bucket=iam_s3.bucket, Delete={"Objects": [{"Key": layout.wal_key(segment)}]})
    assert [(e["Key"], e["Code"]) for e in batch.get("Errors") or ()] == [(layout.wal_key(segment), "AccessDenied")]
    assert not batch.get("Deleted")
    assert iam_s3.keys(layout.wal_key(segment)) == {layout.wal_key(segment)}

    # an upload they started they may abort (a failed backup cleans up its parts)
    upload = writer.client.create_multipart_upload(Bucket=iam_s3.bucket, Key=prefix + "aborted")["UploadId"]
    writer.client.upload_part(Bucket=iam_s3.bucket, Key=prefix + "aborted", UploadId=upload, PartNumber=1,
                              Body=b"x" * 1024)
    writer.client.abort_multipart_upload(Bucket=iam_s3.bucket, Key=prefix + "aborted", UploadId=upload)
    uploads = iam_s3.root_client.list_multipart_uploads(Bucket=iam_s3.bucket).get("Uploads") or []
    assert not [u for u in uploads if u["UploadId"] == upload]
    # the retention keys cannot write: the operator never writes to the archive
    retainer = iam_s3.storage(iam_s3.retainer)
    assert _refused(lambda: retainer.client.put_object(Bucket=iam_s3.bucket, Key=prefix + "x", Body=b"x")) \
        == "AccessDenied"


def test_a_useless_tar_the_pods_keys_cannot_delete_stays_unlisted(iam_s3, local_postgres, caplog):
    """The one delete a pod tries: the tar of a backup whose WAL never reached the archive (here
    nothing archives). Refused; the backup fails for its own reason, and nothing lists the tar."""
    layout = ArchiveLayout(CLUSTER, f"it-{uuid.uuid4().hex[:8]}")
    writer = iam_s3.storage(iam_s3.writer)
    with pytest.raises(basebackup.BaseBackupError, match="did not reach the archive"):
        basebackup.take_base_backup(writer, layout, "unarchived", _source(local_postgres), archive_wait=2)
    prefix = keys.backup_prefix(layout, "unarchived")
    assert iam_s3.keys(prefix) == {prefix + "base.tar.zst"}  # no backup.json: not a backup
    assert basebackup.list_backups(writer, layout.path, CLUSTER) == []
    [warning] = [r.getMessage() for r in caplog.records if "could not delete" in r.getMessage()]
    assert "S3 AccessDenied" in warning and "retention removes it with the failed backup" in warning
    assert iam_s3.writer[1] not in caplog.text


# ---------------------------------------------------------------------------- the operator

class Namespace:
    """What the operator reads through the Kubernetes API for retention: the cluster's PgBackups
    and its Secrets."""

    def __init__(self, pgbackups: list[dict], **accounts: tuple[str, str]):
        self.pgbackups = pgbackups
        self.secrets = {name.replace("_", "-"): {"metadata": {"name": name.replace("_", "-")}, "data": {
            "ACCESS_KEY_ID": base64.b64encode(access.encode()).decode(),
            "ACCESS_SECRET_KEY": base64.b64encode(secret.encode()).decode()}}
            for name, (access, secret) in accounts.items()}
        self.secrets_read: list[str] = []

    def get(self, kind: str, namespace: str, name: str):
        assert (kind, namespace) == ("Secret", NAMESPACE)
        self.secrets_read.append(name)
        return self.secrets.get(name)

    def list(self, kind: str, namespace: str):
        assert (kind, namespace) == ("PgBackup", NAMESPACE)
        return self.pgbackups


def _pgbackup(backup) -> dict:
    document = backup.to_dict()
    status = {key: document[key] for key in ("timeline", "beginLSN", "endLSN", "beginWal", "endWal",
                                             "startedAt", "completedAt", "sizeBytes")}
    return {"apiVersion": "pgop.io/v1", "kind": "PgBackup",
            "metadata": {"name": backup.backup_name, "namespace": NAMESPACE, "uid": f"uid-{backup.backup_name}",
                         "creationTimestamp": document["startedAt"]},
            "spec": {"cluster": CLUSTER}, "status": {"phase": "Completed", **status}}


def _cluster(layout: ArchiveLayout, iam_s3: IamS3, **s3: str) -> Cluster:
    return Cluster.from_object({
        "apiVersion": "pgop.io/v1", "kind": "PgCluster",
        "metadata": {"name": CLUSTER, "namespace": NAMESPACE, "uid": "cluster-uid"},
        "spec": {"instances": 1, "storage": {"size": "1Gi"}, "bootstrap": {"initdb": {}},
                 "backup": {"s3": {"bucket": iam_s3.bucket, "path": layout.path, "endpoint": iam_s3.endpoint,
                                   "credentialsSecret": WRITER_SECRET, **s3},
                            "retention": {"keepLast": 1}}}})


def _reconcile_until_pruned(kube, cluster, now, apply, warn, timeout: float = 60.0):
    """Two passes, as the operator's: the first starts retention's S3 work off the pass (and
    deletes no PgBackup), the next once it is done takes its outcome."""
    jobs = RetentionJobs()
    first, _ = reconcile_backups(kube, cluster, None, now, apply, warn, jobs=jobs)
    assert [a for a in first if a.verb == DELETE] == []
    deadline = time.monotonic() + timeout
    while jobs.running((cluster.namespace, cluster.name)) and time.monotonic() < deadline:
        time.sleep(0.05)
    plan, _ = reconcile_backups(kube, cluster, None, now, apply, warn, jobs=jobs)
    return plan


def test_retention_deletes_with_the_retention_keys_and_not_with_the_pods(iam_s3, writer_postgres):
    pg, layout = writer_postgres
    writer = iam_s3.storage(iam_s3.writer)
    _archived(pg, writer, layout)
    old = basebackup.take_base_backup(writer, layout, "old", _source(pg), archive_wait=WAIT)
    between = _archived(pg, writer, layout)
    time.sleep(1.1)  # completedAt has a resolution of a second
    new = basebackup.take_base_backup(writer, layout, "new", _source(pg), archive_wait=WAIT)
    assert between < new.begin_wal
    before = iam_s3.keys(layout.root)
    old_prefix, new_prefix = keys.backup_prefix(layout, "old"), keys.backup_prefix(layout, "new")
    old_wal = {k for k in before if k.startswith(layout.wal_root) and (layout.name_of_key(k) or "~") < new.begin_wal
               and not k.endswith(".history.zst")}
    assert layout.wal_key(between) in old_wal and layout.wal_key(old.begin_wal) in old_wal
    pgbackups = [_pgbackup(old), _pgbackup(new)]
    now = datetime.now(UTC)

    # Without a retention Secret the operator deletes with the pods' keys: S3 refuses, it says so,
    # and the PgBackup stays for the next pass.
    warnings: list[tuple[str, str]] = []
    applied: list = []
    kube = Namespace(pgbackups, s3_writer=iam_s3.writer, s3_retention=iam_s3.retainer)
    plan = _reconcile_until_pruned(kube, _cluster(layout, iam_s3), now, applied.append,
                                   lambda reason, text: warnings.append((reason, text)))
    assert [a for a in plan if a.verb == DELETE] == []
    [(reason, text)] = warnings
    assert reason == "RetentionFailed" and "S3 AccessDenied" in text and "old" in text
    assert iam_s3.writer[1] not in text and iam_s3.writer[0] not in text
    assert kube.secrets_read == [WRITER_SECRET]
    # the catalog went first and was refused: everything is still there
    assert iam_s3.keys(layout.root) >= before

    # With it, retention removes the old backup and the WAL only it needed, with those keys.
    warnings.clear()
    kube = Namespace(pgbackups, s3_writer=iam_s3.writer, s3_retention=iam_s3.retainer)
    plan = _reconcile_until_pruned(kube, _cluster(layout, iam_s3, retentionCredentialsSecret=RETENTION_SECRET),
                                   now, applied.append, lambda reason, text: warnings.append((reason, text)))
    assert warnings == []
    assert [(a.verb, a.kind, a.name) for a in plan if a.verb == DELETE] == [(DELETE, "PgBackup", "old")]
    assert kube.secrets_read == [RETENTION_SECRET]
    after = iam_s3.keys(layout.root)
    assert not iam_s3.keys(old_prefix)
    assert iam_s3.keys(new_prefix) == {new_prefix + "base.tar.zst", new_prefix + "backup.json"}
    assert not old_wal & after
    assert layout.wal_key(new.begin_wal) in after and layout.wal_key(new.end_wal) in after
    assert [b.backup_name for b in basebackup.list_backups(writer, layout.path, CLUSTER)] == ["new"]
