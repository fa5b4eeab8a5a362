"""Backups end to end on the local cluster, checked as a user would: kubectl, psql, `pgop backup`,
`pgop backups`, `pgop restore`, and what is in S3.

The clusters archive WAL and store base backups in the local S3 server (versitygw), reached from
the pods at the node address; every test uses its own bucket prefix.
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from datetime import UTC, datetime

import boto3
import pytest
from botocore.config import Config

from e2e.harness import paths
from e2e.relay import Relay
from e2e.test_pgcluster import connect, eventually, exec_psql, manifest, wait_ready

BUCKET = "pgop-e2e-backups"
TIMEOUT = 300


@pytest.fixture(scope="module")
def s3(local_env):
    client = boto3.client("s3", endpoint_url=local_env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                          aws_access_key_id=local_env["S3_ACCESS_KEY_ID"],
                          aws_secret_access_key=local_env["S3_SECRET_ACCESS_KEY"],
                          config=Config(s3={"addressing_style": "path"}))
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return client


def keys(s3, prefix):
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        found += [item["Key"] for item in page.get("Contents") or ()]
    return found


def s3_secret(kubectl, ns, local_env):
    kubectl("-n", ns, "create", "secret", "generic", "s3-creds",
            f"--from-literal=ACCESS_KEY_ID={local_env['S3_ACCESS_KEY_ID']}",
            f"--from-literal=ACCESS_SECRET_KEY={local_env['S3_SECRET_ACCESS_KEY']}")


def cluster_manifest(name, ns, prefix, endpoint, instances=2, backup_extra=""):
    return manifest(name, ns, instances=instances, sync=0, extra=f"""  backup:
    s3: {{bucket: {BUCKET}, path: {prefix}, endpoint: "{endpoint}", credentialsSecret: s3-creds}}
{backup_extra}""")


def pgop(local_env, *args, check=True, timeout=600):
    result = subprocess.run([str(paths.REPO / ".venv" / "bin" / "pgop"), *args], capture_output=True, text=True,
                            env={**os.environ, **local_env}, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"pgop {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def condition(kubectl, ns, name, kind):
    status = kubectl.json("-n", ns, "get", "pgcluster", name).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def switch_and_wait_archived(kubectl, ns, pod, timeout=120):
    """Close the current WAL segment and wait until the archiver has it in S3."""
    segment = exec_psql(kubectl, ns, pod, "select pg_walfile_name(pg_switch_wal())", db="postgres")

    def archived():
        last = exec_psql(kubectl, ns, pod, "select coalesce(last_archived_wal, '') from pg_stat_archiver",
                         db="postgres")
        return last >= segment and last
    eventually(archived, f"WAL {segment} archived", timeout=timeout)
    return segment


def rows(kubectl, ns, name):
    with connect(kubectl, ns, f"{name}-rw", name) as conn:
        return conn.execute("select count(*), coalesce(max(id), 0) from orders").fetchone()


def test_backup_from_a_replica_and_point_in_time_restore(kubectl, namespace, operator, s3, local_env):
    ns, name, prefix = namespace, "shop", f"e2e-{uuid.uuid4().hex[:8]}"
    s3_secret(kubectl, ns, local_env)
    kubectl("apply", "-f", "-", input=cluster_manifest(name, ns, prefix, local_env["PGOP_S3_ENDPOINT_IN_CLUSTER"]))
    wait_ready(kubectl, ns, name, 2)
    with connect(kubectl, ns, f"{name}-rw", name) as conn:
        conn.execute("create table orders (id int primary key, at timestamptz default now())")
        conn.execute("insert into orders (id) select g from generate_series(1, 100) g")

    # pgop backup --wait: a PgBackup, taken from the replica (once the primary sees it streaming),
    # streamed to S3
    eventually(lambda: ((kubectl.json("-n", ns, "get", "pginstance", f"{name}-0").get("status") or {})
                        .get("replicaSyncStates") or {}).get(f"{name}-1"),
               "the replica streaming (as the primary reports it)", timeout=30)
    # One instance's agent token cannot write another instance's status (failover reads it).
    forged = status_patch_from_pod(kubectl, ns, f"{name}-0", f"{name}-1", "pginstances")
    assert forged.startswith("403") and f"only its own pods ({name}-1, {name}-1-bootstrap)" in forged, forged
    t0 = time.monotonic()
    out = pgop(local_env, "backup", name, "-n", ns, "--name", "shop-first", "--wait").stdout
    print(f"backup of a fresh cluster: {time.monotonic() - t0:.1f}s")
    assert "Completed" in out
    backup = kubectl.json("-n", ns, "get", "pgbackup", "shop-first")
    st = backup["status"]
    assert st["phase"] == "Completed" and st["instance"] == f"{name}-1"  # the replica, not the primary
    assert st["sizeBytes"] > 0 and st["timeline"] == 1
    # the backup pod's progress, patched without the kubernetes client (pgop.runtime.incluster)
    assert 0 < st.get("uploadedBytes", 0) <= st["sizeBytes"], st
    assert st["beginLSN"] and st["endLSN"] and st["beginWal"] <= st["endWal"]
    assert st["s3Path"] == f"s3://{BUCKET}/{prefix}/{ns}/{name}/base/shop-first/"
    assert set(keys(s3, f"{prefix}/{ns}/{name}/base/shop-first/")) == {
        f"{prefix}/{ns}/{name}/base/shop-first/base.tar.zst", f"{prefix}/{ns}/{name}/base/shop-first/backup.json"}
    row = kubectl("-n", ns, "get", "pgbackup", "shop-first", "--no-headers").stdout.split()
    assert row[:3] == ["shop-first", name, "Completed"]
    # the cluster says so too
    eventually(lambda: condition(kubectl, ns, name, "LastBackupSucceeded").get("status") == "True",
               "LastBackupSucceeded", timeout=30)
    status = kubectl.json("-n", ns, "get", "pgcluster", name)["status"]
    assert status["lastBackup"]["name"] == "shop-first" and status["firstRecoverabilityPoint"]
    assert condition(kubectl, ns, name, "ContinuousArchiving")["status"] == "True"

    # more rows, the moment T, more rows; all of it archived
    with connect(kubectl, ns, f"{name}-rw", name) as conn:
        conn.execute("insert into orders (id) select g from generate_series(101, 200) g")
        target = conn.execute("select now()").fetchone()[0]
        time.sleep(1.5)
        conn.execute("insert into orders (id) select g from generate_series(201, 300) g")
    switch_and_wait_archived(kubectl, ns, f"{name}-0")
    target_text = target.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    # the catalog from S3
    listing = pgop(local_env, "backups", name, "-n", ns).stdout
    assert "shop-first" in listing and "first recoverability point: 20" in listing

    # refused: into its own name, and before the first backup (with the range)
    own = pgop(local_env, "restore", name, "--to", name, "-n", ns, check=False)
    assert own.returncode == 2 and "into itself" in own.stderr
    early = pgop(local_env, "restore", name, "--to", "shop-early", "-n", ns, "--time", "2020-01-01T00:00:00Z",
                 check=False)
    assert early.returncode == 2 and "shop-first" in early.stderr, early.stderr
    assert kubectl.json("-n", ns, "get", "pgclusters")["items"].__len__() == 1

    # restore to T into a new cluster: exactly the rows committed before T, on a new timeline
    t0 = time.monotonic()
    pgop(local_env, "restore", name, "--to", "shop-pitr", "-n", ns, "--time", target_text, "--timeout", str(TIMEOUT))
    print(f"restore to a point in time, 2 instances Ready: {time.monotonic() - t0:.1f}s")
    wait_ready(kubectl, ns, "shop-pitr", 2)
    assert rows(kubectl, ns, "shop-pitr") == (200, 200)
    assert exec_psql(kubectl, ns, "shop-pitr-0", "select timeline_id from pg_control_checkpoint()",
                     db="postgres") == "2"
    with connect(kubectl, ns, "shop-pitr-ro", "shop-pitr") as conn:  # its replica was cloned from it
        assert eventually(lambda: conn.execute("select count(*) from orders").fetchone()[0] == 200,
                          "rows on the restored cluster's replica")
    restored = kubectl.json("-n", ns, "get", "pgcluster", "shop-pitr")
    assert restored["spec"]["bootstrap"]["recovery"] == {"source": name, "targetTime": target_text}
    # the restored cluster archives into its own place, not into the source's
    eventually(lambda: keys(s3, f"{prefix}/{ns}/shop-pitr/wal/"), "the restored cluster's own archive", timeout=120)
    assert rows(kubectl, ns, name) == (300, 300)
    # the S3 keys went nowhere they should not
    secret_key = local_env["S3_SECRET_ACCESS_KEY"]
    assert secret_key not in operator.log_text()
    assert secret_key not in kubectl("-n", ns, "logs", "shop-first-backup").stdout
    assert secret_key not in kubectl("-n", ns, "get", "events,pgbackups,pgclusters", "-o", "yaml").stdout


def test_a_restore_target_before_the_first_backup_is_reported(kubectl, namespace, operator, s3, local_env):
    """Applied by hand (not through `pgop restore`, which refuses it earlier): the instance says why."""
    ns, name, prefix = namespace, "early", f"e2e-{uuid.uuid4().hex[:8]}"
    s3_secret(kubectl, ns, local_env)
    kubectl("apply", "-f", "-", input=cluster_manifest(name, ns, prefix, local_env["PGOP_S3_ENDPOINT_IN_CLUSTER"],
                                                       instances=1))
    wait_ready(kubectl, ns, name, 1)
    pgop(local_env, "backup", name, "-n", ns, "--name", "early-b1", "--wait")
    kubectl("apply", "-f", "-", input=f"""
apiVersion: pgop.io/v1
kind: PgCluster
metadata: {{name: too-early, namespace: {ns}}}
spec:
  instances: 1
  storage: {{size: 1Gi}}
  bootstrap: {{recovery: {{source: {name}, targetTime: "2020-01-01T00:00:00Z"}}}}
""")

    def reported():
        instance = kubectl.json("-n", ns, "get", "pginstance", "too-early-0").get("status") or {}
        message = instance.get("message") or ""
        return "early-b1" in message and "before" in message and message
    message = eventually(reported, "the refused target in the instance status", timeout=120)
    print(message)
    progressing = condition(kubectl, ns, "too-early", "Progressing")
    assert "early-b1" in progressing.get("message", ""), progressing


def status_patch_from_pod(kubectl, ns: str, pod: str, name: str, plural: str = "pgbackups") -> str:
    """What the API server answers when the pod's own ServiceAccount token (as any process in it
    could read) patches the status of the `plural` object `name`: "ALLOWED", or the status and
    body."""
    script = (
        "from kubernetes import client, config\n"
        "config.load_incluster_config()\n"
        "api = client.CustomObjectsApi()\n"
        "try:\n"
        f"    api.patch_namespaced_custom_object_status('pgop.io', 'v1', {ns!r}, {plural!r}, {name!r},"
        " {'status': {'phase': 'Failed'}})\n"
        "    print('ALLOWED')\n"
        "except client.ApiException as e:\n"
        "    print(e.status, e.body)\n")
    return kubectl("-n", ns, "exec", pod, "-c", "postgres", "--", "python3", "-c", script).stdout.strip()


def test_scheduled_backups_and_retention(kubectl, namespace, operator, s3, local_env):
    ns, name, prefix = namespace, "sched", f"e2e-{uuid.uuid4().hex[:8]}"
    s3_secret(kubectl, ns, local_env)
    kubectl("apply", "-f", "-", input=cluster_manifest(
        name, ns, prefix, local_env["PGOP_S3_ENDPOINT_IN_CLUSTER"], instances=1,
        backup_extra='    schedule: "* * * * *"\n    retention: {keepLast: 1}'))
    wait_ready(kubectl, ns, name, 1)

    def completed():
        items = kubectl.json("-n", ns, "get", "pgbackups")["items"]
        return sorted(b["metadata"]["name"] for b in items if (b.get("status") or {}).get("phase") == "Completed")
    first = eventually(completed, "a scheduled backup", timeout=150, interval=2)[0]
    body = kubectl.json("-n", ns, "get", "pgbackup", first)
    assert body["metadata"]["labels"]["pgop.io/backup-origin"] == "schedule"
    assert body["metadata"]["annotations"]["pgop.io/scheduled-at"].endswith(":00Z")
    assert first == f"{name}-{datetime.strptime(body['metadata']['annotations']['pgop.io/scheduled-at'], '%Y-%m-%dT%H:%M:%SZ'):%Y%m%d%H%M}"
    first_wal = body["status"]["beginWal"]
    # A Postgres pod's token (one ServiceAccount for the cluster's agents) cannot forge a backup's
    # status, which retention trusts: only the backup's own pod may write it.
    forged = status_patch_from_pod(kubectl, ns, f"{name}-0", first)
    assert forged.startswith("403") and f"only its backup pod {first}-backup" in forged, forged
    assert f"came from pod {name}-0" in forged
    assert kubectl.json("-n", ns, "get", "pgbackup", first)["status"]["phase"] == "Completed"
    switch_and_wait_archived(kubectl, ns, f"{name}-0")

    # the next minute's backup; retention keeps 1: the first goes, in S3 and as a PgBackup
    def second_and_first_gone():
        names = completed()
        return names and first not in names and names
    kept = eventually(second_and_first_gone, "the second scheduled backup and the first one removed",
                      timeout=180, interval=2)
    assert len(kept) == 1 and kept[0] > first
    assert keys(s3, f"{prefix}/{ns}/{name}/base/{first}/") == []
    assert keys(s3, f"{prefix}/{ns}/{name}/base/{kept[0]}/")
    kept_body = kubectl.json("-n", ns, "get", "pgbackup", kept[0])
    wal = [k.rsplit("/", 1)[-1] for k in keys(s3, f"{prefix}/{ns}/{name}/wal/")]
    segments = sorted(w[:24] for w in wal if len(w) == 28)  # <24 hex>.zst
    assert first_wal not in segments  # only the kept backup's WAL onwards remains
    assert segments[0] >= kept_body["status"]["beginWal"]  # one timeline: names sort in WAL order
    status = kubectl.json("-n", ns, "get", "pgcluster", name)["status"]
    assert status["lastScheduledBackupTime"]
    assert status["firstRecoverabilityPoint"] == kept_body["status"]["completedAt"]
    events = kubectl("-n", ns, "get", "events", "--field-selector", f"involvedObject.name={name}").stdout
    assert "DeletedPgBackup" in events


def test_archiving_survives_an_s3_outage(kubectl, namespace, operator, s3, local_env):
    """S3 gone for a minute while the database writes and switches WAL: archiving fails and says
    so, then catches up in order, and a restore to the end of the archive has every row."""
    ns, name, prefix = namespace, "flaky", f"e2e-{uuid.uuid4().hex[:8]}"
    host, port = local_env["AWS_ENDPOINT_URL_S3"].split("//")[1].split(":")
    relay = Relay((host, int(port)), bind=local_env["PGOP_NODE_IP"])
    try:
        s3_secret(kubectl, ns, local_env)
        endpoint = f"http://{local_env['PGOP_NODE_IP']}:{relay.port}"
        kubectl("apply", "-f", "-", input=cluster_manifest(name, ns, prefix, endpoint, instances=1))
        wait_ready(kubectl, ns, name, 1)
        with connect(kubectl, ns, f"{name}-rw", name) as conn:
            conn.execute("create table orders (id int primary key)")
        pgop(local_env, "backup", name, "-n", ns, "--name", "flaky-b1", "--wait")

        relay.down()
        outage = time.monotonic()
        switched = []
        with connect(kubectl, ns, f"{name}-rw", name) as conn:
            for batch in range(6):  # a minute of writes, one WAL segment closed every ~10 s
                conn.execute("insert into orders select g from generate_series(%s::int, %s::int) g",
                             (batch * 1000 + 1, batch * 1000 + 1000))
                switched.append(exec_psql(kubectl, ns, f"{name}-0", "select pg_walfile_name(pg_switch_wal())",
                                          db="postgres"))
                time.sleep(10)
        # a base backup while S3 is away fails with the reason, and nothing of it counts
        failed = pgop(local_env, "backup", name, "-n", ns, "--name", "flaky-down", "--wait", check=False)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        st = kubectl.json("-n", ns, "get", "pgbackup", "flaky-down")["status"]
        assert st["phase"] == "Failed" and "S3" in st["error"], st
        assert not [k for k in keys(s3, f"{prefix}/{ns}/{name}/base/flaky-down/") if k.endswith("backup.json")]
        archiving = eventually(lambda: condition(kubectl, ns, name, "ContinuousArchiving").get("status") == "False"
                               and condition(kubectl, ns, name, "ContinuousArchiving"), "ArchivingFailing", timeout=60)
        assert archiving["reason"] == "ArchivingFailing"
        print(f"S3 away for {time.monotonic() - outage:.0f}s; {archiving['message']}")
        relay.up()

        eventually(lambda: condition(kubectl, ns, name, "ContinuousArchiving").get("status") == "True",
                   "archiving to recover", timeout=180, interval=2)
        events = kubectl("-n", ns, "get", "events", "--field-selector", f"involvedObject.name={name}").stdout
        assert "ArchivingFailing" in events and "ArchivingRecovered" in events
        switch_and_wait_archived(kubectl, ns, f"{name}-0", timeout=180)
        archived = sorted(k.rsplit("/", 1)[-1][:24] for k in keys(s3, f"{prefix}/{ns}/{name}/wal/00000001/")
                          if k.endswith(".zst") and len(k.rsplit("/", 1)[-1]) == 28)
        for segment in switched:
            assert segment in archived, f"{segment} missing from the archive"
        numbers = [int(s[8:], 16) for s in archived]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "a gap in the archived WAL"

        pgop(local_env, "restore", name, "--to", "flaky-copy", "-n", ns, "--instances", "1",
             "--timeout", str(TIMEOUT))
        assert rows(kubectl, ns, "flaky-copy") == (6000, 6000)
    finally:
        relay.close()


def test_a_replica_away_longer_than_the_primary_keeps_wal_catches_up_from_the_archive(
        kubectl, namespace, operator, s3, local_env):
    """A fenced replica misses ~10 WAL segments; the primary keeps none of them (wal_keep_size 0)
    and its slot lets go (max_slot_wal_keep_size 16MB). Unfenced, the replica replays them from
    S3 (its restore_command), then streams again through a slot made anew: no re-clone."""
    ns, name, prefix = namespace, "away", f"e2e-{uuid.uuid4().hex[:8]}"
    s3_secret(kubectl, ns, local_env)
    endpoint = local_env["PGOP_S3_ENDPOINT_IN_CLUSTER"]
    parameters = '  parameters: {wal_keep_size: "0", max_slot_wal_keep_size: "16MB", max_wal_size: "64MB", ' \
                 'min_wal_size: "32MB"}\n'
    kubectl("apply", "-f", "-", input=manifest(name, ns, instances=2, sync=0, extra=parameters + f"""  backup:
    s3: {{bucket: {BUCKET}, path: {prefix}, endpoint: "{endpoint}", credentialsSecret: s3-creds}}
"""))
    wait_ready(kubectl, ns, name, 2)
    primary, replica = f"{name}-0", f"{name}-1"
    with connect(kubectl, ns, f"{name}-rw", name) as conn:
        conn.execute("create table orders (id int primary key, note text)")
        conn.execute("insert into orders select g, 'before' from generate_series(1, 1000) g")
    eventually(lambda: exec_psql(kubectl, ns, replica, "select count(*) from orders") == "1000", "rows on the replica")
    uid = kubectl.json("-n", ns, "get", "pod", replica)["metadata"]["uid"]
    stopped_at = exec_psql(kubectl, ns, replica, "select pg_last_wal_replay_lsn()", db="postgres")
    pgop(local_env, "fence", "on", name, "1", "-n", ns)
    slot = f"pgop_{name}_1"
    eventually(lambda: exec_psql(kubectl, ns, primary, f"select active from pg_replication_slots "
                                                        f"where slot_name = '{slot}'", db="postgres") == "f",
               "the replica to stop streaming", timeout=120)

    with connect(kubectl, ns, f"{name}-rw", name) as conn:
        for batch in range(10):
            conn.execute("insert into orders select g, repeat('w', 400) from generate_series(%s::int, %s::int) g",
                         (2000 + batch * 20000, 2000 + batch * 20000 + 19999))
            exec_psql(kubectl, ns, primary, "select pg_switch_wal()", db="postgres")
    switch_and_wait_archived(kubectl, ns, primary, timeout=180)
    exec_psql(kubectl, ns, primary, "checkpoint", db="postgres")
    switch_and_wait_archived(kubectl, ns, primary, timeout=180)
    exec_psql(kubectl, ns, primary, "checkpoint", db="postgres")
    needed = exec_psql(kubectl, ns, primary, f"select pg_walfile_name('{stopped_at}')", db="postgres")
    oldest = exec_psql(kubectl, ns, primary, "select min(name) from pg_ls_waldir() where name ~ '^[0-9A-F]{24}$'",
                       db="postgres")
    assert oldest > needed, f"the primary still has {needed} (oldest: {oldest}): the test proves nothing"
    expected = exec_psql(kubectl, ns, primary, "select count(*) from orders")

    started = time.monotonic()
    pgop(local_env, "fence", "off", name, "1", "-n", ns)
    eventually(lambda: exec_psql(kubectl, ns, replica, "select count(*) from orders") == expected,
               "the replica to catch up from the archive", timeout=TIMEOUT, interval=2)
    caught_up = time.monotonic() - started
    eventually(lambda: exec_psql(kubectl, ns, replica, "select status from pg_stat_wal_receiver",
                                 db="postgres") == "streaming", "the replica to stream again", timeout=TIMEOUT)
    wait_ready(kubectl, ns, name, 2)
    assert kubectl.json("-n", ns, "get", "pod", replica)["metadata"]["uid"] == uid  # no new pod, no re-clone
    assert exec_psql(kubectl, ns, primary, f"select active from pg_replication_slots where slot_name = '{slot}'",
                     db="postgres") == "t"
    log = kubectl("-n", ns, "logs", replica, "-c", "postgres").stdout
    assert "restored log file" in log
    print(f"\nreplica fenced for ~10 WAL segments: caught up from S3 {caught_up:.1f}s after unfencing")


def test_a_hand_deleted_pgbackup_follows_its_deletion_policy(kubectl, namespace, operator, s3, local_env):
    """Retain (the default): deleting the PgBackup leaves its backup listed by `pgop backups` and
    restorable. Delete: its objects leave S3, WAL stays; the cluster's only backup is kept unless
    forced."""
    ns, name, prefix = namespace, "dropping", f"e2e-{uuid.uuid4().hex[:8]}"
    s3_secret(kubectl, ns, local_env)
    endpoint = local_env["PGOP_S3_ENDPOINT_IN_CLUSTER"]
    kubectl("apply", "-f", "-", input=cluster_manifest(name, ns, prefix, endpoint, instances=1))
    wait_ready(kubectl, ns, name, 1)
    with connect(kubectl, ns, f"{name}-rw", name) as conn:
        conn.execute("create table orders (id int primary key)")
        conn.execute("insert into orders select generate_series(1, 100)")
    base = f"{prefix}/{ns}/{name}/base"
    for backup in ("kept", "only", "gone"):
        pgop(local_env, "backup", name, "-n", ns, "--name", f"{name}-{backup}", "--wait")

    # Retain: the PgBackup goes, the backup stays listed and restorable.
    kubectl("-n", ns, "delete", "pgbackup", f"{name}-kept", "--wait=true", "--timeout=60s")
    assert f"{name}-kept" in pgop(local_env, "backups", name, "-n", ns).stdout
    assert keys(s3, f"{base}/{name}-kept/")

    # Delete: a finalizer removes that backup's objects, nothing else.
    wal_before = set(keys(s3, f"{prefix}/{ns}/{name}/wal/"))
    kubectl("-n", ns, "patch", "pgbackup", f"{name}-gone", "--type=merge", "-p", '{"spec":{"deletionPolicy":"Delete"}}')
    eventually(lambda: "pgop.io/finalizer" in (kubectl.json("-n", ns, "get", "pgbackup", f"{name}-gone")
                                               ["metadata"].get("finalizers") or []), "the finalizer")
    kubectl("-n", ns, "delete", "pgbackup", f"{name}-gone", "--wait=true", "--timeout=120s")
    assert not keys(s3, f"{base}/{name}-gone/")
    assert wal_before <= set(keys(s3, f"{prefix}/{ns}/{name}/wal/"))
    listed = pgop(local_env, "backups", name, "-n", ns).stdout
    assert f"{name}-gone" not in listed and f"{name}-only" in listed and f"{name}-kept" in listed
    events = kubectl("-n", ns, "get", "events", "--field-selector", f"involvedObject.name={name}-gone").stdout
    assert "BackupDeletedFromS3" in events

    # With the Retain one removed by hand from S3 too, "only" is the cluster's only backup: kept.
    for key in keys(s3, f"{base}/{name}-kept/"):
        s3.delete_object(Bucket=BUCKET, Key=key)
    kubectl("-n", ns, "patch", "pgbackup", f"{name}-only", "--type=merge", "-p", '{"spec":{"deletionPolicy":"Delete"}}')
    eventually(lambda: "pgop.io/finalizer" in (kubectl.json("-n", ns, "get", "pgbackup", f"{name}-only")
                                               ["metadata"].get("finalizers") or []), "the finalizer")
    kubectl("-n", ns, "delete", "pgbackup", f"{name}-only", "--wait=true", "--timeout=120s")
    assert keys(s3, f"{base}/{name}-only/")
    events = kubectl("-n", ns, "get", "events", "--field-selector", f"involvedObject.name={name}-only").stdout
    assert "BackupKeptInS3" in events
    pgop(local_env, "restore", name, "--to", f"{name}-copy", "-n", ns, "--instances", "1", "--timeout", str(TIMEOUT))
    assert rows(kubectl, ns, f"{name}-copy")[0] == 100
