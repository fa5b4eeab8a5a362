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


def test_pgop_restore_refuses_an_encrypted_backup_without_its_key_before_writing_anything():
    import base64

    from pgop.backup.catalog import Backup
    from pgop.backup.encryption import Key
    from pgop.cli_backup import restore_key_problem
    from pgop.kernel.model import S3Spec
    material = b"k" * 40
    backup = Backup(cluster="orders", backup_name="nightly",
                    encryption={"algorithm": "pgop-aes256gcm-stream-v1", "keyId": Key.from_bytes(material).key_id})
    s3 = S3Spec.from_dict({"bucket": "b", "credentialsSecret": "c",
                           "encryption": {"keySecret": {"name": "orders-key"}}})

    def secret(value: bytes):
        return {"metadata": {"name": "orders-key"}, "data": {"key": base64.b64encode(value).decode()}}
    assert restore_key_problem(backup, s3, secret(material + b"\n")) is None
    wrong = restore_key_problem(backup, s3, secret(b"w" * 40))
    assert wrong.startswith("EncryptionKeyMismatch: backup nightly is encrypted with the key of id")
    assert "kkkk" not in wrong and "wwww" not in wrong
    assert "has no key 'key'" in restore_key_problem(backup, s3, None)
    assert "keySecret" in restore_key_problem(backup, S3Spec.from_dict({"bucket": "b", "credentialsSecret": "c"}),
                                              None)
    assert restore_key_problem(Backup(cluster="orders", backup_name="plain"), s3, None) is None
