"""Pods cannot delete the archive (docs/backup-permissions.md), end to end: a PgCluster whose pods
get keys that may list, read and write but not delete, and whose retention deletes with keys only
the operator reads.

The local S3 server (versitygw, started by the harness with an IAM directory) gets two accounts
for this test and a bucket of its own with a bucket policy between them; what no statement
allows, versitygw refuses, as AWS does.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import uuid

import boto3
import pytest
from botocore.config import Config

from e2e.harness import paths, services
from e2e.test_backup import condition, switch_and_wait_archived
from e2e.test_pgcluster import eventually, manifest, wait_ready

WRITER_SECRET, RETENTION_SECRET = "s3-writer", "s3-retention"


class Accounts:
    """Accounts in the local S3 server's IAM, made with `versitygw admin` as its root."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.made: list[str] = []

    def _admin(self, *args: str) -> None:
        # the root keys in the environment, not on a command line `ps` shows
        env = {**os.environ, "ADMIN_ACCESS_KEY_ID": self.env["S3_ACCESS_KEY_ID"],
               "ADMIN_SECRET_ACCESS_KEY": self.env["S3_SECRET_ACCESS_KEY"], "ADMIN_REGION": paths.AWS_REGION,
               "ADMIN_ENDPOINT_URL": self.env["AWS_ENDPOINT_URL_S3"]}
        done = subprocess.run([str(services.versitygw_binary()), "admin", *args], env=env, capture_output=True,
                              text=True, timeout=30)
        if done.returncode != 0:
            raise AssertionError(f"versitygw admin {args[0]} failed (is the S3 server of `make up` started "
                                 f"with --iam-dir? restart it with this checkout): {done.stdout}{done.stderr}")

    def create(self, stem: str) -> tuple[str, str]:
        access, secret = f"{stem}{secrets.token_hex(4)}", secrets.token_hex(16)
        self._admin("create-user", "--access", access, "--secret", secret, "--role", "user")
        self.made.append(access)
        return access, secret

    def remove(self) -> None:
        for access in self.made:
            self._admin("delete-user", "--access", access)


@pytest.fixture
def locked_bucket(local_env):
    root = boto3.client("s3", endpoint_url=local_env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                        aws_access_key_id=local_env["S3_ACCESS_KEY_ID"],
                        aws_secret_access_key=local_env["S3_SECRET_ACCESS_KEY"],
                        config=Config(s3={"addressing_style": "path"}))
    accounts = Accounts(local_env)
    writer, retainer = accounts.create("pgopwriter"), accounts.create("pgopretainer")
    bucket = f"pgop-e2e-perm-{uuid.uuid4().hex[:8]}"
    root.create_bucket(Bucket=bucket)
    arn = f"arn:aws:s3:::{bucket}"
    root.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Pods", "Effect": "Allow", "Principal": {"AWS": [writer[0]]},
         "Action": ["s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
         "Resource": [arn, f"{arn}/*"]},
        {"Sid": "Retention", "Effect": "Allow", "Principal": {"AWS": [retainer[0]]},
         "Action": ["s3:ListBucket", "s3:GetObject", "s3:DeleteObject"], "Resource": [arn, f"{arn}/*"]},
    ]}))
    yield {"bucket": bucket, "root": root, "writer": writer, "retainer": retainer}
    for page in root.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents") or ():
            root.delete_object(Bucket=bucket, Key=item["Key"])
    root.delete_bucket_policy(Bucket=bucket)
    root.delete_bucket(Bucket=bucket)
    accounts.remove()


def _secret(kubectl, ns: str, name: str, account: tuple[str, str]) -> None:
    kubectl("-n", ns, "create", "secret", "generic", name, f"--from-literal=ACCESS_KEY_ID={account[0]}",
            f"--from-literal=ACCESS_SECRET_KEY={account[1]}")


# Run inside the Postgres container, with what it has: the mounted pods' keys, the PGOP_S3_*
# environment and the pod's ServiceAccount token.
IN_POD = """
import os, boto3
from botocore.config import Config
from kubernetes import client, config
keys = {n: open(os.path.join(os.environ["PGOP_S3_CREDENTIALS_DIR"], n)).read().strip()
        for n in ("ACCESS_KEY_ID", "ACCESS_SECRET_KEY")}
s3 = boto3.client("s3", endpoint_url=os.environ["PGOP_S3_ENDPOINT"], region_name="us-east-1",
                  aws_access_key_id=keys["ACCESS_KEY_ID"], aws_secret_access_key=keys["ACCESS_SECRET_KEY"],
                  config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
try:
    s3.delete_object(Bucket=os.environ["PGOP_S3_BUCKET"], Key=KEY)
    print("delete: ALLOWED")
except Exception as e:
    print("delete:", getattr(e, "response", {}).get("Error", {}).get("Code", repr(e)))
config.load_incluster_config()
try:
    client.CoreV1Api().read_namespaced_secret(SECRET, NAMESPACE)
    print("secret: ALLOWED")
except client.ApiException as e:
    print("secret:", e.status)
"""


def test_pods_cannot_delete_the_archive_and_retention_still_works(kubectl, namespace, operator, local_env,
                                                                  locked_bucket):
    ns, name, prefix, bucket = namespace, "locked", f"e2e-{uuid.uuid4().hex[:8]}", locked_bucket["bucket"]
    root = f"{prefix}/{ns}/{name}/"  # a new cluster's archive: the namespaced layout
    _secret(kubectl, ns, WRITER_SECRET, locked_bucket["writer"])
    _secret(kubectl, ns, RETENTION_SECRET, locked_bucket["retainer"])

    # the same Secret for both is refused by the API server, with the reason
    same = kubectl("apply", "-f", "-", check=False, input=manifest("same", ns, instances=1, sync=0, extra=f"""  backup:
    s3: {{bucket: {bucket}, credentialsSecret: {WRITER_SECRET}, retentionCredentialsSecret: {WRITER_SECRET}}}
"""))
    assert same.returncode != 0
    assert "spec.backup.s3.retentionCredentialsSecret must name another Secret" in same.stderr, same.stderr

    kubectl("apply", "-f", "-", input=manifest(name, ns, instances=1, sync=0, extra=f"""  backup:
    s3: {{bucket: {bucket}, path: {prefix}, endpoint: "{local_env['PGOP_S3_ENDPOINT_IN_CLUSTER']}",
          credentialsSecret: {WRITER_SECRET}, retentionCredentialsSecret: {RETENTION_SECRET}}}
    schedule: "* * * * *"
    retention: {{keepLast: 1}}
"""))
    wait_ready(kubectl, ns, name, 1)
    first_segment = switch_and_wait_archived(kubectl, ns, f"{name}-0")  # archived with the pods' keys
    eventually(lambda: condition(kubectl, ns, name, "ContinuousArchiving").get("status") == "True",
               "ContinuousArchiving", timeout=60)

    # Nothing in the namespace hands the retention Secret to a pod or to the agents.
    pods = kubectl.json("-n", ns, "get", "pods", "-l", f"pgop.io/cluster={name}")["items"]
    assert pods and all(RETENTION_SECRET not in json.dumps(p["spec"]) for p in pods)
    assert all(WRITER_SECRET in json.dumps(p["spec"]) for p in pods if p["metadata"]["name"] == f"{name}-0")
    role = kubectl.json("-n", ns, "get", "role", f"{name}-agent")
    assert RETENTION_SECRET not in json.dumps(role["rules"])
    assert RETENTION_SECRET not in json.dumps(kubectl.json("-n", ns, "get", "pginstances")["items"])

    # From inside the Postgres pod: its keys may not delete, its token may not read the other keys.
    wal_key = next(k for k in keys_in(locked_bucket, bucket, f"{root}wal/") if first_segment in k)
    script = (f"KEY = {wal_key!r}\nSECRET = {RETENTION_SECRET!r}\nNAMESPACE = {ns!r}\n") + IN_POD
    out = kubectl("-n", ns, "exec", f"{name}-0", "-c", "postgres", "--", "python3", "-c", script).stdout
    assert "delete: AccessDenied" in out and "secret: 403" in out, out
    assert wal_key in keys_in(locked_bucket, bucket, f"{root}wal/")

    # Scheduled base backups (uploaded by backup pods with the pods' keys); retention keeps one and
    # removes the other from S3 with the retention keys.
    def completed():
        items = kubectl.json("-n", ns, "get", "pgbackups")["items"]
        return sorted(b["metadata"]["name"] for b in items if (b.get("status") or {}).get("phase") == "Completed")
    first = eventually(completed, "a scheduled backup", timeout=150, interval=2)[0]
    assert keys_in(locked_bucket, bucket, f"{root}base/{first}/")
    first_wal = kubectl.json("-n", ns, "get", "pgbackup", first)["status"]["beginWal"]
    switch_and_wait_archived(kubectl, ns, f"{name}-0")

    def second_and_first_gone():
        names = completed()
        return names and first not in names and names
    kept = eventually(second_and_first_gone, "the second scheduled backup and the first one removed",
                      timeout=180, interval=2)
    assert keys_in(locked_bucket, bucket, f"{root}base/{first}/") == []
    assert keys_in(locked_bucket, bucket, f"{root}base/{kept[0]}/")
    kept_wal = kubectl.json("-n", ns, "get", "pgbackup", kept[0])["status"]["beginWal"]
    segments = sorted(k.rsplit("/", 1)[-1][:24] for k in keys_in(locked_bucket, bucket, f"{root}wal/")
                      if len(k.rsplit("/", 1)[-1]) == 28)  # <24 hex>.zst
    assert first_wal not in segments and segments[0] >= kept_wal  # only the kept backup's WAL onwards
    events = kubectl("-n", ns, "get", "events", "--field-selector", f"involvedObject.name={name}").stdout
    assert "DeletedPgBackup" in events and "RetentionFailed" not in events
    for account in (locked_bucket["writer"], locked_bucket["retainer"]):
        assert account[1] not in operator.log_text()
        assert account[1] not in kubectl("-n", ns, "get", "events,pgbackups,pgclusters", "-o", "yaml").stdout


def keys_in(locked_bucket, bucket: str, prefix: str) -> list[str]:
    """The keys under `prefix`, listed as the bucket's owner (root)."""
    found = []
    for page in locked_bucket["root"].get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [item["Key"] for item in page.get("Contents") or ()]
    return found
