"""The model's defaults are the CRD's.

The API server fills a CRD's `default:` values into every object it stores, but `pgop plan -f`
reads manifests that never went through it, and the per-instance copy of the spec is built from
the model: so the model repeats each default. This test reads every `default:` of every CRD and
checks that the model, given an object without the field, arrives at the same value; a default
added to a CRD without its counterpart here fails the completeness check.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgop.backup.deletion import deletion_policy
from pgop.backup.pgbackup import requested
from pgop.kernel.model import Cluster, Instance
from pgop.rds.classes import instance_class_for
from pgop.rds.spec import MysqlDbSpec

CRDS = Path(__file__).resolve().parents[2] / "crds"
S3 = {"bucket": "pg-backups", "credentialsSecret": "s3-creds"}


def crd_defaults() -> dict[str, Any]:
    found: dict[str, Any] = {}

    def walk(schema: dict[str, Any], path: str) -> None:
        if "default" in schema:
            found[path] = schema["default"]
        for key, sub in (schema.get("properties") or {}).items():
            walk(sub, f"{path}.{key}")
        if isinstance(schema.get("items"), dict):
            walk(schema["items"], f"{path}[]")

    for path in sorted(CRDS.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for version in doc["spec"]["versions"]:
            walk(version["schema"]["openAPIV3Schema"], doc["spec"]["names"]["kind"])
    return found


def cluster(spec: dict[str, Any] | None = None) -> Cluster:
    base = {"storage": {"size": "1Gi"}}
    return Cluster.from_object({"metadata": {"name": "orders", "namespace": "shop"}, "spec": base | (spec or {})})


def mysqldb(**spec: Any) -> MysqlDbSpec:
    return MysqlDbSpec.from_manifest("shop", "orders", {"engineVersion": "8.0", "databaseName": "app"} | spec)


# CRD path -> what the model makes of an object that leaves the field out
MODEL: dict[str, Callable[[], Any]] = {
    "PgCluster.spec.instances": lambda: cluster().spec.instances,
    "PgCluster.spec.postgresVersion": lambda: cluster().spec.postgres_version,
    "PgCluster.spec.synchronousReplicas": lambda: cluster().spec.synchronous_replicas,
    "PgCluster.spec.synchronousMode": lambda: cluster().spec.synchronous_mode,
    "PgCluster.spec.enableSuperuserAccess": lambda: cluster().spec.enable_superuser_access,
    "PgCluster.spec.failoverDelay": lambda: cluster().spec.failover_delay,
    "PgCluster.spec.allowUnsafeParameters": lambda: cluster().spec.allow_unsafe_parameters,
    "PgCluster.spec.storage.reclaimPolicy": lambda: cluster().spec.storage.reclaim_policy,
    "PgCluster.spec.bootstrap": lambda: {"initdb": {}} if cluster().spec.bootstrap.initdb is not None
                                        and cluster().spec.bootstrap.recovery is None else None,
    "PgCluster.spec.bootstrap.initdb.database": lambda: cluster({"bootstrap": {"initdb": {}}})
                                                        .spec.bootstrap.initdb.database,
    "PgCluster.spec.bootstrap.initdb.owner": lambda: cluster({"bootstrap": {"initdb": {}}}).spec.bootstrap.initdb.owner,
    "PgCluster.spec.affinity.podAntiAffinityType": lambda: cluster({"affinity": {}}).spec.affinity.pod_anti_affinity_type,
    "PgCluster.spec.affinity.topologyKey": lambda: cluster({"affinity": {}}).spec.affinity.topology_key,
    "PgCluster.spec.backup.target": lambda: cluster({"backup": {"s3": S3}}).spec.backup.target,
    "PgCluster.spec.backup.walArchiving": lambda: cluster({"backup": {"s3": S3}}).spec.backup.wal_archiving,
    "PgCluster.spec.backup.deletionPolicy": lambda: cluster({"backup": {"s3": S3}}).spec.backup.deletion_policy,
    "PgInstance.spec.fenced": lambda: Instance.from_object({"metadata": {"name": "orders-0"},
                                                            "spec": {"cluster": "orders"}}).spec.fenced,
    "PgInstance.spec.hibernated": lambda: Instance.from_object({"metadata": {"name": "orders-0"},
                                                                "spec": {"cluster": "orders"}}).spec.hibernated,
    "PgInstance.spec.enableSuperuserAccess": lambda: Instance.from_object(
        {"metadata": {"name": "orders-0"}, "spec": {"cluster": "orders"}}).spec.enable_superuser_access,
    "PgBackup.spec.method": lambda: requested({})[0],
    "PgBackup.spec.target": lambda: requested({})[1],
    "PgBackup.spec.deletionPolicy": lambda: deletion_policy({}),
    "MysqlDb.spec.instanceSize": lambda: "small" if instance_class_for(None, None) == instance_class_for("small", None)
                                         else mysqldb().instance_size,
    "MysqlDb.spec.storageGB": lambda: mysqldb().storage_gb,
    "MysqlDb.spec.multiAZ": lambda: mysqldb().multi_az,
    "MysqlDb.spec.backupRetentionDays": lambda: mysqldb().backup_retention_days,
    "MysqlDb.spec.deletionPolicy": lambda: mysqldb().deletion_policy,
    "MysqlDb.spec.deletionProtection": lambda: mysqldb().deletion_protection,
    "MysqlDb.spec.storageEncrypted": lambda: mysqldb().storage_encrypted,
    "MysqlDb.spec.publiclyAccessible": lambda: mysqldb().publicly_accessible,
    "MysqlDb.spec.allowMajorVersionUpgrade": lambda: mysqldb().allow_major_version_upgrade,
    "MysqlDb.spec.applyImmediately": lambda: mysqldb().apply_immediately,
}


def test_every_crd_default_has_its_model_counterpart():
    assert sorted(crd_defaults()) == sorted(MODEL)


@pytest.mark.parametrize("path", sorted(MODEL))
def test_the_model_default_equals_the_crds(path):
    assert MODEL[path]() == crd_defaults()[path]


def test_the_instance_copy_keeps_the_clusters_defaults():
    """The per-instance copy of the spec (PgInstance) carries the cluster's defaulted values."""
    from pgop.specs.instance import build_instance
    c = cluster()
    spec = Instance.from_object(build_instance(c, 0, "primary", "initdb")).spec
    assert (spec.postgres_version, spec.synchronous_replicas, spec.synchronous_mode, spec.fenced) == \
        (c.spec.postgres_version, c.spec.synchronous_replicas, c.spec.synchronous_mode, False)
    assert spec.initdb is not None and (spec.initdb.database, spec.initdb.owner) == ("app", "app")
