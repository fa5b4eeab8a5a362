from datetime import UTC, datetime

from pgop.cli_backup import backup_manifest, manual_backup_name, restore_manifest
from pgop.kernel.model import Cluster, S3Spec
from tests.unit.world import cluster_body

S3 = {"bucket": "pg-backups", "path": "shop", "credentialsSecret": "s3-creds"}


def test_a_manual_backup_is_named_after_the_second_and_never_like_a_scheduled_one():
    name = manual_backup_name("orders", datetime(2026, 11, 22, 3, 4, 5, tzinfo=UTC))
    assert name == "orders-20261122030405"
    body = backup_manifest("orders", "shop", name, "primary")
    assert body["spec"] == {"cluster": "orders", "method": "basebackup", "target": "primary",
                            "deletionPolicy": "Retain"}
    assert backup_manifest("orders", "shop", name, "primary", "Delete")["spec"]["deletionPolicy"] == "Delete"
    assert body["metadata"]["labels"]["pgop.io/cluster"] == "orders"


def test_the_restore_manifest_is_the_source_cluster_with_a_recovery_bootstrap():
    source = cluster_body(instances=3, synchronousReplicas=1, parameters={"work_mem": "8MB"},
                          backup={"s3": S3, "schedule": "0 3 * * *"}, publish={})
    source["status"] = {"phase": "Ready"}
    manifest = restore_manifest("orders", source, "orders-copy", "shop", target_time="2026-11-22T03:00:00Z",
                                target_lsn=None, backup=None, s3=None, instances=None)
    spec = manifest["spec"]
    assert manifest["metadata"] == {"name": "orders-copy", "namespace": "shop"}
    assert spec["bootstrap"] == {"recovery": {"source": "orders", "targetTime": "2026-11-22T03:00:00Z"}}
    assert spec["instances"] == 3 and spec["parameters"] == {"work_mem": "8MB"}
    assert spec["backup"]["s3"] == S3  # archives under <path>/orders-copy/, its own place
    assert "publish" not in spec  # the copy must not overwrite the source's published credentials
    cluster = Cluster.from_object(manifest | {"metadata": {"name": "orders-copy", "namespace": "shop"}})
    assert cluster.validate() == []


def test_a_restore_from_an_archive_whose_cluster_is_gone_names_the_archive():
    s3 = S3Spec(bucket="pg-backups", credentials_secret="old-creds", path="shop")
    manifest = restore_manifest("orders", {}, "orders-copy", "shop", target_time=None, target_lsn="0/3000060",
                                backup="orders-1", s3=s3, instances=1)
    recovery = manifest["spec"]["bootstrap"]["recovery"]
    assert recovery["s3"] == {"bucket": "pg-backups", "path": "shop", "credentialsSecret": "old-creds"}
    assert recovery["source"] == "orders" and recovery["targetLSN"] == "0/3000060" and recovery["backup"] == "orders-1"
    assert manifest["spec"]["instances"] == 1
