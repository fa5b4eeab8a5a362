"""The backup controller's decisions (pgop.backup.pgbackup), the backup pod, the recovery bootstrap pod,
and what the cluster status says of backups."""
from datetime import UTC, datetime

from pgop.backup.catalog import Backup
from pgop.backup.cluster_backups import backup_status
from pgop.backup.pgbackup import plan_pgbackup
from pgop.backup.pod import ENV_BACKUP_OBJECT, LABEL_BACKUP
from pgop.kernel.model import Cluster, Instance
from pgop.specs.instance import build_instance
from pgop.specs.pods import build_bootstrap_pod, build_postgres_pod
from tests.unit.world import NOW, cluster_body, running_cluster

S3 = {"bucket": "pg-backups", "path": "shop", "endpoint": "http://s3.local:7070", "credentialsSecret": "s3-creds"}
T = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")


def pgbackup(phase=None, target="prefer-replica", **status):
    body = {"apiVersion": "pgop.io/v1", "kind": "PgBackup",
            "metadata": {"name": "orders-manual", "namespace": "shop", "uid": "b-uid"},
            "spec": {"cluster": "orders", "method": "basebackup", "target": target}}
    if phase or status:
        body["status"] = {"phase": phase, **status} if phase else dict(status)
    return body


def world_with_backups(instances=3):
    world, cluster = running_cluster(instances=instances, backup={"s3": S3})
    for name in world.instance_names():
        role = "primary" if name.endswith("-0") else "replica"
        world.report(name, role=role, syncState=None if role == "primary" else "async")
    pods = {name: {"metadata": {"name": name}, "status": {"podIP": f"10.244.0.{i + 10}"}}
            for i, name in enumerate(sorted(world.instance_names()))}
    return world, cluster_body(backup={"s3": S3}), world.all("PgInstance"), pods


def test_a_new_backup_starts_a_pod_against_a_replica_and_says_so():
    world, cluster, instances, pods = world_with_backups()
    step = plan_pgbackup(pgbackup(), cluster, instances, None, pods, NOW)
    [create] = step
    assert (create.verb, create.kind, create.name) == ("create", "Pod", "orders-manual-backup")
    assert step.status == {"phase": "Running", "instance": "orders-1", "startedAt": T, "error": None,
                           "message": "streaming a base backup of orders-1 (replica) to S3"}
    pod = create.body
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["pgop", "agent", "backup", "--name", "orders-manual", "--host", "10.244.0.11"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PGOP_INSTANCE"] == "orders-1" and env[ENV_BACKUP_OBJECT] == "orders-manual"
    assert env["PGOP_S3_BUCKET"] == "pg-backups" and env["PGOP_S3_ENDPOINT"] == "http://s3.local:7070"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "PgBackup"
    assert pod["metadata"]["labels"][LABEL_BACKUP] == "orders-manual"
    assert "pgop.io/instance" not in pod["metadata"]["labels"]  # not one of the instance's own pods
    assert pod["spec"]["restartPolicy"] == "Never"
    assert not any("persistentVolumeClaim" in v for v in pod["spec"]["volumes"])  # no data directory
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert step.events[0].reason == "BackupStarted"


def test_target_primary_backs_up_the_primary():
    _, cluster, instances, pods = world_with_backups()
    step = plan_pgbackup(pgbackup(target="primary"), cluster, instances, None, pods, NOW)
    assert step.status["instance"] == "orders-0" and "(primary)" in step.status["message"]


def test_without_a_ready_instance_the_backup_waits_and_says_why():
    world, cluster, instances, pods = world_with_backups(instances=1)
    world.report("orders-0", ready=False)
    step = plan_pgbackup(pgbackup(), cluster, world.all("PgInstance"), None, pods, NOW)
    assert list(step) == []
    assert step.status == {"phase": "Pending", "message": "waiting for a ready instance of PgCluster orders to back up"}
    again = plan_pgbackup(pgbackup("Pending", message=step.status["message"]), cluster, world.all("PgInstance"),
                          None, pods, NOW)
    assert again.status == {}  # nothing new to say


def test_a_missing_cluster_or_one_without_s3_fails_the_backup_with_the_reason():
    step = plan_pgbackup(pgbackup(), None, [], None, {}, NOW)
    assert step.status["phase"] == "Failed" and step.status["error"] == "PgCluster orders does not exist"
    step = plan_pgbackup(pgbackup(), cluster_body(), [], None, {}, NOW)
    assert step.status["phase"] == "Failed" and "no spec.backup.s3" in step.status["error"]
    assert step.events[0].type == "Warning"


def backup_pod(phase, message="", reason="Completed"):
    return {"metadata": {"name": "orders-manual-backup"},
            "status": {"phase": phase, "containerStatuses": [{"name": "backup", "state": {"terminated": {
                "exitCode": 0 if phase == "Succeeded" else 1, "reason": reason, "message": message,
                "finishedAt": T}}}]}}


def test_a_succeeded_pod_completes_the_backup_from_its_catalog_document():
    document = Backup(cluster="orders", backup_name="orders-manual", timeline=1, begin_lsn="0/2000028",
                      end_lsn="0/2000100", begin_wal="000000010000000000000002", end_wal="000000010000000000000002",
                      started_at=datetime(2026, 11, 22, 11, 59, tzinfo=UTC), completed_at=NOW,
                      size_bytes=40_000_000, s3_path="s3://pg-backups/shop/orders/base/orders-manual/",
                      files=({"name": "base.tar.zst", "compressedBytes": 5_000_000},))
    step = plan_pgbackup(pgbackup("Running", instance="orders-1"), cluster_body(backup={"s3": S3}), [],
                         backup_pod("Succeeded", document.to_json()), {}, NOW)
    assert step.status == {
        "phase": "Completed", "beginLSN": "0/2000028", "endLSN": "0/2000100", "timeline": 1,
        "beginWal": "000000010000000000000002", "endWal": "000000010000000000000002",
        "sizeBytes": 5_000_000, "s3Path": "s3://pg-backups/shop/orders/base/orders-manual/",
        "startedAt": "2026-11-22T11:59:00Z", "completedAt": T, "message": None, "error": None}
    assert (step.events[0].type, step.events[0].reason) == ("Normal", "BackupCompleted")


def test_a_failed_pod_fails_the_backup_with_its_message():
    step = plan_pgbackup(pgbackup("Running"), cluster_body(backup={"s3": S3}), [],
                         backup_pod("Failed", "S3 unreachable: Could not connect to the endpoint URL", "Error"), {}, NOW)
    assert step.status["phase"] == "Failed"
    assert step.status["error"] == "S3 unreachable: Could not connect to the endpoint URL"
    unreadable = plan_pgbackup(pgbackup("Running"), cluster_body(backup={"s3": S3}), [],
                               backup_pod("Succeeded", "not json"), {}, NOW)
    assert unreadable.status["phase"] == "Failed" and "cannot be read" in unreadable.status["error"]


def test_a_running_backup_whose_pod_vanished_fails_and_finished_ones_are_left_alone():
    gone = plan_pgbackup(pgbackup("Running"), cluster_body(backup={"s3": S3}), [], None, {}, NOW)
    assert gone.status["phase"] == "Failed" and "disappeared" in gone.status["error"]
    for phase in ("Completed", "Failed"):
        step = plan_pgbackup(pgbackup(phase), None, [], None, {}, NOW)
        assert list(step) == [] and step.status == {} and step.events == []


def test_a_recovery_bootstrap_pod_reads_the_sources_archive_and_is_told_what_to_restore():
    own = dict(S3, path="new", credentialsSecret="own-creds")
    source_s3 = dict(S3, credentialsSecret="old-creds")
    cluster = Cluster.from_object(cluster_body(name="copy", backup={"s3": own}, bootstrap={
        "recovery": {"source": "orders", "targetTime": "2026-11-22T03:00:00Z", "s3": source_s3}}))
    instance = Instance.from_object(build_instance(cluster, 0, "primary", "recovery") | {"status": {}})
    pod = build_bootstrap_pod(instance)
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # what to restore is in the PgInstance the bootstrap reads; the pod's environment names the archive
    recovery = instance.spec.recovery
    assert recovery.source == "orders" and recovery.target_time == "2026-11-22T03:00:00Z"
    assert recovery.s3.path == "shop" and env["PGOP_S3_PATH"] == "shop"
    assert not [name for name in env if name.startswith("PGOP_RECOVERY")]
    secrets = [s["secret"]["name"] for v in pod["spec"]["volumes"] if v["name"] == "s3-credentials"
               for s in v["projected"]["sources"]]
    assert secrets == ["old-creds"]  # the source's credentials, not the new cluster's
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # the Postgres pod that follows archives into the new cluster's own place
    postgres = build_postgres_pod(instance)
    env = {e["name"]: e.get("value") for e in postgres["spec"]["containers"][0]["env"]}
    assert env["PGOP_S3_PATH"] == "new" and "PGOP_RECOVERY_SOURCE" not in env


def test_the_cluster_status_names_the_last_backup_and_whether_it_succeeded():
    cluster = Cluster.from_object(cluster_body(backup={"s3": S3}))

    def body(name, created, phase, **status):
        return {"metadata": {"name": name, "creationTimestamp": created},
                "spec": {"cluster": "orders"}, "status": {"phase": phase, **status}}
    ok = body("b1", "2026-11-22T01:00:00Z", "Completed", completedAt="2026-11-22T01:05:00Z", sizeBytes=10)
    bad = body("b2", "2026-11-22T02:00:00Z", "Failed", error="S3 AccessDenied: no")
    running = body("b3", "2026-11-22T03:00:00Z", "Running")
    assert backup_status(cluster, []) == (None, None)
    last, condition = backup_status(cluster, [ok])
    assert last["name"] == "b1" and condition["status"] == "True"
    last, condition = backup_status(cluster, [ok, bad, running])
    assert last == {"name": "b3", "phase": "Running"}
    assert condition["status"] == "False" and "b2 failed: S3 AccessDenied: no" in condition["message"]
