"""What pgop reads of an RDS DB instance: the parts of DescribeDBInstances it decides on. Pure.

Kept apart from the boto3 adapter (rds/aws.py) so that the decisions (rds/policy.py, rds/diff.py)
import no I/O library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DbInstance:
    """The parts of DescribeDBInstances pgop reads."""

    identifier: str
    arn: str
    status: str
    engine: str
    engine_version: str
    instance_class: str
    storage_gb: int
    multi_az: bool
    backup_retention_days: int
    deletion_protection: bool
    db_name: str | None
    master_username: str
    host: str | None
    port: int | None
    tags: Mapping[str, str] = field(default_factory=dict)
    pending: Mapping[str, Any] = field(default_factory=dict)
    db_subnet_group_name: str | None = None
    vpc_security_group_ids: tuple[str, ...] = ()
    db_parameter_group_names: tuple[str, ...] = ()
    storage_encrypted: bool = False
    kms_key_id: str | None = None
    preferred_backup_window: str | None = None
    preferred_maintenance_window: str | None = None
    publicly_accessible: bool = False
    auto_minor_version_upgrade: bool = True

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> DbInstance:
        """One element of DescribeDBInstances' `DBInstances` (or CreateDBInstance's `DBInstance`)."""
        endpoint = raw.get("Endpoint") or {}
        return cls(
            identifier=raw["DBInstanceIdentifier"],
            arn=raw.get("DBInstanceArn", ""),
            status=raw.get("DBInstanceStatus", "unknown"),
            engine=raw.get("Engine", ""),
            engine_version=str(raw.get("EngineVersion", "")),
            instance_class=raw.get("DBInstanceClass", ""),
            storage_gb=int(raw.get("AllocatedStorage") or 0),
            multi_az=bool(raw.get("MultiAZ", False)),
            backup_retention_days=int(raw.get("BackupRetentionPeriod") or 0),
            deletion_protection=bool(raw.get("DeletionProtection", False)),
            db_name=raw.get("DBName"),
            master_username=raw.get("MasterUsername", ""),
            host=endpoint.get("Address"),
            port=endpoint.get("Port"),
            tags={t["Key"]: t["Value"] for t in raw.get("TagList") or []},
            pending=dict(raw.get("PendingModifiedValues") or {}),
            db_subnet_group_name=(raw.get("DBSubnetGroup") or {}).get("DBSubnetGroupName"),
            # "removing" groups are on their way out: they no longer count as the instance's.
            vpc_security_group_ids=tuple(sorted(
                g["VpcSecurityGroupId"] for g in raw.get("VpcSecurityGroups") or []
                if g.get("VpcSecurityGroupId") and g.get("Status") not in ("removing", "inactive"))),
            db_parameter_group_names=tuple(
                g["DBParameterGroupName"] for g in raw.get("DBParameterGroups") or [] if g.get("DBParameterGroupName")),
            storage_encrypted=bool(raw.get("StorageEncrypted", False)),
            kms_key_id=raw.get("KmsKeyId"),
            preferred_backup_window=raw.get("PreferredBackupWindow"),
            preferred_maintenance_window=(raw.get("PreferredMaintenanceWindow") or "").lower() or None,
            publicly_accessible=bool(raw.get("PubliclyAccessible", False)),
            auto_minor_version_upgrade=bool(raw.get("AutoMinorVersionUpgrade", True)),
        )
