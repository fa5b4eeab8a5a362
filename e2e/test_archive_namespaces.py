"""One archive per cluster, end to end: two clusters of one name in two namespaces, archiving to
one bucket and path, stay apart (each its own root, backups and restore); and a cluster whose
archive root holds another database system's marker refuses to archive and says so in
ContinuousArchiving (reason ArchiveBelongsToAnotherCluster). docs/backup-layout.md.
"""
from __future__ import annotations

import json
import uuid

from e2e.harness.fixtures import create_test_namespace, delete_test_namespace
from e2e.test_backup import (
    BUCKET,
    TIMEOUT,
    cluster_manifest,
    condition,
    keys,
    pgop,
    rows,
    s3,  # noqa: F401  (the module's bucket fixture)
    s3_secret,
    switch_and_wait_archived,
)
from e2e.test_pgcluster import connect, eventually, exec_psql, wait_ready

ANNOTATION = "pgop.io/archive-layout"


def test_two_namespaces_one_cluster_name_one_bucket_path_archive_back_up_and_restore_apart(
        kubectl, namespace, operator, s3, local_env):  # noqa: F811
    other = f"{namespace[:50]}-b"
    create_test_namespace(kubectl, other)
    try:
        name, prefix = "orders", f"e2e-{uuid.uuid4().hex[:8]}"
        endpoint = local_env["PGOP_S3_ENDPOINT_IN_CLUSTER"]
        rows_of = {namespace: 10, other: 20}  # each namespace's database has its own content
        for ns in (namespace, other):
            s3_secret(kubectl, ns, local_env)
            kubectl("apply", "-f", "-", input=cluster_manifest(name, ns, prefix, endpoint, instances=1))
        for ns in (namespace, other):
            wait_ready(kubectl, ns, name, 1)
            # a new cluster is pinned to the namespaced layout
            annotations = kubectl.json("-n", ns, "get", "pgcluster", name)["metadata"].get("annotations") or {}
            assert annotations.get(ANNOTATION) == "namespaced", annotations
            with connect(kubectl, ns, f"{name}-rw", name) as conn:
                conn.execute("create table orders (id int primary key)")
                conn.execute(f"insert into orders select g from generate_series(1, {rows_of[ns]}) g")

        for ns in (namespace, other):
            segment = switch_and_wait_archived(kubectl, ns, f"{name}-0")
            root = f"{prefix}/{ns}/{name}/"
            assert any(k.startswith(f"{root}wal/00000001/{segment}") for k in keys(s3, f"{root}wal/"))
            marker = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{root}archive.json")["Body"].read())
            assert (marker["namespace"], marker["cluster"]) == (ns, name)
            eventually(lambda ns=ns: condition(kubectl, ns, name, "ContinuousArchiving").get("status") == "True",
                       f"ContinuousArchiving True in {ns}", timeout=60)
            pgop(local_env, "backup", name, "-n", ns, "--name", f"{name}-b1", "--wait")
            status = kubectl.json("-n", ns, "get", "pgbackup", f"{name}-b1")["status"]
            assert status["phase"] == "Completed" and status["s3Path"] == f"s3://{BUCKET}/{root}base/{name}-b1/"
        # nothing at the legacy location, and two different database systems in two roots
        assert not keys(s3, f"{prefix}/{name}/")
        markers = {json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/{ns}/{name}/archive.json")["Body"]
                              .read())["systemIdentifier"] for ns in (namespace, other)}
        assert len(markers) == 2
        # `pgop backups` lists each namespace's own
        for ns in (namespace, other):
            listing = pgop(local_env, "backups", name, "-n", ns).stdout
            assert f"s3://{BUCKET}/{prefix}/{ns}/{name}/" in listing and f"{name}-b1" in listing

        # each restores its own data
        for ns in (namespace, other):
            pgop(local_env, "restore", name, "--to", "restored", "-n", ns, "--instances", "1",
                 "--timeout", str(TIMEOUT))
            wait_ready(kubectl, ns, "restored", 1)
            assert rows(kubectl, ns, "restored") == (rows_of[ns], rows_of[ns])
    finally:
        delete_test_namespace(kubectl, other)


def test_a_foreign_marker_at_the_archive_root_stops_archiving_with_a_clear_condition(
        kubectl, namespace, operator, s3, local_env):  # noqa: F811
    """The archive root already belongs to another database system (as after a cluster deleted
    and created again from scratch under the same name, bucket and path): the marker is forged
    here before the cluster starts."""
    ns, name, prefix = namespace, "reborn", f"e2e-{uuid.uuid4().hex[:8]}"
    root = f"{prefix}/{ns}/{name}/"
    forged = {"format": "pgop.io/archive", "formatVersion": 1, "systemIdentifier": "1234567890123456789",
              "namespace": ns, "cluster": name, "createdAt": "2026-01-01T00:00:00Z"}
    s3.put_object(Bucket=BUCKET, Key=f"{root}archive.json", Body=json.dumps(forged).encode())
    s3_secret(kubectl, ns, local_env)
    kubectl("apply", "-f", "-", input=cluster_manifest(name, ns, prefix, local_env["PGOP_S3_ENDPOINT_IN_CLUSTER"],
                                                       instances=1))
    wait_ready(kubectl, ns, name, 1)
    with connect(kubectl, ns, f"{name}-rw", name) as conn:
        conn.execute("create table t (x int)")
        conn.execute("insert into t values (1)")
    exec_psql(kubectl, ns, f"{name}-0", "select pg_switch_wal()", db="postgres")

    def refused():
        found = condition(kubectl, ns, name, "ContinuousArchiving")
        return found.get("reason") == "ArchiveBelongsToAnotherCluster" and found
    found = eventually(refused, "ContinuousArchiving reason ArchiveBelongsToAnotherCluster", timeout=120)
    assert found["status"] == "False"
    message = found["message"]
    for part in (f"s3://{BUCKET}/{root}", "1234567890123456789", "spec.backup.s3.path"):
        assert part in message, message
    own = kubectl.json("-n", ns, "get", "pginstance", f"{name}-0")["status"]["systemIdentifier"]
    assert str(own) in message
    # nothing of this database went into the foreign archive; the WAL waits in pg_wal
    assert not keys(s3, f"{root}wal/")
    assert exec_psql(kubectl, ns, f"{name}-0", "select failed_count > 0 from pg_stat_archiver", db="postgres") == "t"
    # a backup is refused too, with the same reason
    result = pgop(local_env, "backup", name, "-n", ns, "--name", f"{name}-b1", "--wait", check=False)
    assert result.returncode != 0
    backup = kubectl.json("-n", ns, "get", "pgbackup", f"{name}-b1")["status"]
    assert backup["phase"] == "Failed" and backup["error"].startswith("ArchiveBelongsToAnotherCluster"), backup
    assert not keys(s3, f"{root}base/")

    # the user moves the old archive away: archiving resumes, the condition clears
    s3.delete_object(Bucket=BUCKET, Key=f"{root}archive.json")
    exec_psql(kubectl, ns, f"{name}-0", "select pg_switch_wal()", db="postgres")
    eventually(lambda: condition(kubectl, ns, name, "ContinuousArchiving").get("status") == "True",
               "ContinuousArchiving True once the foreign archive is gone", timeout=180)
    marker = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{root}archive.json")["Body"].read())
    assert marker["systemIdentifier"] == str(own)
    assert keys(s3, f"{root}wal/")
