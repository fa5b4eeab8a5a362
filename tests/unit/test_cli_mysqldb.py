"""The pure parts of `pgop mysqldb restore|snapshots` (pgop/cli_mysqldb.py)."""

from __future__ import annotations

import pytest

from pgop.cli_mysqldb import restored_manifest, snapshot_rows
from pgop.rds.spec import MysqlDbSpec

SOURCE = {
    "apiVersion": "pgop.io/v1", "kind": "MysqlDb",
    "metadata": {"name": "orders-db", "namespace": "shop", "uid": "u1", "annotations": {"x": "y"}},
    "spec": {"engineVersion": "8.0.35", "databaseName": "orders", "instanceSize": "medium",
             "vaultPath": "secret/data/k8s/shop/orders-db/db", "consulPrefix": "config/k8s/shop/orders-db/db",
             "dbSubnetGroupName": "private", "vpcSecurityGroupIds": ["sg-0123abcd"], "deletionProtection": True,
             "passwordRotation": {"schedule": "@monthly"}},
    "status": {"dbInstanceIdentifier": "shop-orders-db-1a2b"},
}


def test_restore_from_a_snapshot_copies_the_spec_but_not_the_paths():
    made = restored_manifest(SOURCE, "orders-copy", snapshot="orders-snap")
    spec = made["spec"]
    assert made["metadata"] == {"name": "orders-copy", "namespace": "shop",
                                "labels": {"pgop.io/restored-from": "orders-db"}}
    assert spec["restoreFrom"] == {"snapshotIdentifier": "orders-snap"}
    assert spec["dbSubnetGroupName"] == "private" and spec["instanceSize"] == "medium"
    for own in ("vaultPath", "consulPrefix", "passwordRotation", "deletionProtection"):
        assert own not in spec
    parsed = MysqlDbSpec.from_manifest("shop", "orders-copy", spec)  # its own Vault and Consul paths
    assert parsed.vault_path == "secret/data/k8s/shop/orders-copy/db"
    assert parsed.consul_prefix == "config/k8s/shop/orders-copy/db"


def test_restore_to_a_time_or_the_latest():
    at = restored_manifest(SOURCE, "c", time="2026-11-30T14:05:00Z")["spec"]["restoreFrom"]
    assert at == {"sourceDbInstanceIdentifier": "shop-orders-db-1a2b", "restoreTime": "2026-11-30T14:05:00Z"}
    latest = restored_manifest(SOURCE, "c")["spec"]["restoreFrom"]
    assert latest == {"sourceDbInstanceIdentifier": "shop-orders-db-1a2b", "useLatestRestorableTime": True}


def test_restore_refuses_both_or_no_instance():
    with pytest.raises(ValueError, match="not both"):
        restored_manifest(SOURCE, "c", snapshot="s", time="2026-11-30T14:05:00Z")
    with pytest.raises(ValueError, match="--snapshot"):
        restored_manifest({**SOURCE, "status": {}}, "c")


def test_snapshot_rows():
    assert snapshot_rows([{"DBSnapshotIdentifier": "s1", "SnapshotType": "manual", "Status": "available",
                           "SnapshotCreateTime": "2026-12-01"}]) == [("s1", "manual", "available", "2026-12-01")]
