"""What must change on an RDS instance so that it matches a MysqlDb spec. Pure.

The comparison is against what the instance *will* be once its pending modifications are applied,
so a change waiting for the maintenance window (applyImmediately: false) is not asked for twice.
Changes RDS cannot make (rename the database, shrink storage, go back to an older engine, switch
engine) are refused with a message naming the field; nothing is modified while anything is refused,
so an adopted instance is never half-reshaped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pgop.rds.instance import DbInstance
from pgop.rds.spec import ENGINE, MysqlDbSpec

# PendingModifiedValues keys -> the attribute of DbInstance they will replace.
_PENDING = {
    "DBInstanceClass": "instance_class",
    "AllocatedStorage": "storage_gb",
    "MultiAZ": "multi_az",
    "EngineVersion": "engine_version",
    "BackupRetentionPeriod": "backup_retention_days",
    "DBSubnetGroupName": "db_subnet_group_name",
}

RESTORE_INSTEAD = ("to change it, restore a snapshot into a new MysqlDb (spec.restoreFrom, or "
                   "`pgop mysqldb restore`) and move the applications to it")


@dataclass(frozen=True)
class Refusal:
    field: str
    message: str
    reason: str = "ImmutableField"


@dataclass(frozen=True)
class Difference:
    """One field the spec owns whose value on the instance is not the spec's (spec field name)."""
    field: str
    actual: Any
    wanted: Any

    def describe(self) -> str:
        return f"spec.{self.field}: instance has {_shown(self.actual)}, spec says {_shown(self.wanted)}"


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Changes:
    modify: Mapping[str, Any] = field(default_factory=dict)
    add_tags: Mapping[str, str] = field(default_factory=dict)
    remove_tags: tuple[str, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    notes: tuple[str, ...] = ()
    differences: tuple[Difference, ...] = ()  # what `modify` puts back to the spec, for Events

    @property
    def empty(self) -> bool:
        return not (self.modify or self.add_tags or self.remove_tags)


VersionKey = tuple[tuple[int, int | str], ...]


def version_key(version: str) -> VersionKey:
    """'8.0.35' -> (8, 0, 35); non-numeric parts compare after numeric ones."""
    parts = re.split(r"[.\-_]", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def major_version(version: str) -> str:
    """MySQL's major version is the first two components: 5.7, 8.0, 8.4."""
    return ".".join(version.split(".")[:2])


def effective(instance: DbInstance) -> dict[str, Any]:
    values = {attr: getattr(instance, attr) for attr in _PENDING.values()}
    for key, attr in _PENDING.items():
        if key in instance.pending and instance.pending[key] is not None:
            values[attr] = instance.pending[key]
    values["storage_gb"] = int(values["storage_gb"])
    values["multi_az"] = _bool(values["multi_az"])
    values["backup_retention_days"] = int(values["backup_retention_days"])
    return values


def _bool(value: Any) -> bool:
    """PendingModifiedValues carries booleans; some clients render them as text."""
    return value.lower() == "true" if isinstance(value, str) else bool(value)


def kms_key_matches(wanted: str, actual: str | None) -> bool | None:
    """Whether the instance's KMS key (RDS reports its ARN) is the spec's: an ARN, a key id, or an
    alias. None when it cannot be told without KMS (an alias)."""
    if actual is None:
        return False
    if wanted == actual:
        return True
    if wanted.startswith("alias/") or ":alias/" in wanted:
        return None
    return actual.endswith(f"key/{wanted.rsplit('key/', 1)[-1]}")


def diff(
    spec: MysqlDbSpec,
    instance: DbInstance,
    *,
    ownership_tags: Mapping[str, str] = {},
    previously_applied_tags: Mapping[str, str] = {},
) -> Changes:
    refusals: list[Refusal] = []
    notes: list[str] = []
    modify: dict[str, Any] = {}
    will_be = effective(instance)

    if instance.engine and instance.engine != ENGINE:
        refusals.append(Refusal("engine", f"instance {instance.identifier} runs {instance.engine}, not {ENGINE}"))
    if instance.db_name is not None and instance.db_name != spec.database_name:
        refusals.append(Refusal(
            "databaseName",
            f"databaseName cannot change: instance {instance.identifier} has database "
            f"{instance.db_name!r}, spec asks for {spec.database_name!r}",
        ))

    differences: list[Difference] = []

    def want(spec_field: str, api_key: str, wanted: Any, actual: Any) -> None:
        if wanted != actual:
            modify[api_key] = list(wanted) if isinstance(wanted, tuple) else wanted
            differences.append(Difference(spec_field, actual, wanted))

    current_version = str(will_be["engine_version"])
    if version_key(spec.engine_version) > version_key(current_version):
        if major_version(spec.engine_version) != major_version(current_version):
            if spec.allow_major_version_upgrade:
                modify["EngineVersion"] = spec.engine_version
                modify["AllowMajorVersionUpgrade"] = True
            else:
                refusals.append(Refusal(
                    "engineVersion",
                    f"engineVersion {spec.engine_version} is a major version upgrade from {current_version} "
                    f"(instance {instance.identifier}): set spec.allowMajorVersionUpgrade: true to allow it "
                    f"(test the application on a restored copy first), or go back to a "
                    f"{major_version(current_version)} version",
                    "MajorVersionUpgradeNotAllowed"))
        else:
            # A minor upgrade: in the maintenance window, or now with applyImmediately.
            modify["EngineVersion"] = spec.engine_version
    elif version_key(spec.engine_version) < version_key(current_version):
        # RDS minor-version auto-upgrades move instances ahead of their spec; that is not an error.
        notes.append(f"engine is at {current_version}, ahead of spec.engineVersion {spec.engine_version}")

    want("instanceClass", "DBInstanceClass", spec.instance_class, will_be["instance_class"])

    if spec.storage_gb > will_be["storage_gb"]:
        modify["AllocatedStorage"] = spec.storage_gb
        differences.append(Difference("storageGB", will_be["storage_gb"], spec.storage_gb))
    elif spec.storage_gb < will_be["storage_gb"]:
        refusals.append(Refusal(
            "storageGB",
            f"storageGB cannot shrink: instance {instance.identifier} has {will_be['storage_gb']} GB, "
            f"spec asks for {spec.storage_gb} GB",
        ))

    # Encryption is fixed when an instance is created: nothing but a restore changes it.
    if spec.storage_encrypted != instance.storage_encrypted:
        refusals.append(Refusal(
            "storageEncrypted",
            f"storageEncrypted cannot change: instance {instance.identifier} is "
            f"{'' if instance.storage_encrypted else 'not '}encrypted, spec asks for storageEncrypted: "
            f"{str(spec.storage_encrypted).lower()}; {RESTORE_INSTEAD}"))
    elif spec.kms_key_id and instance.storage_encrypted:
        if kms_key_matches(spec.kms_key_id, instance.kms_key_id) is False:
            refusals.append(Refusal(
                "kmsKeyId",
                f"kmsKeyId cannot change: instance {instance.identifier} is encrypted with "
                f"{instance.kms_key_id}, spec asks for {spec.kms_key_id}; {RESTORE_INSTEAD}"))

    want("multiAZ", "MultiAZ", spec.multi_az, will_be["multi_az"])
    want("backupRetentionDays", "BackupRetentionPeriod", spec.backup_retention_days,
         will_be["backup_retention_days"])
    want("deletionProtection", "DeletionProtection", spec.deletion_protection, instance.deletion_protection)
    want("publiclyAccessible", "PubliclyAccessible", spec.publicly_accessible, instance.publicly_accessible)
    # Fields the spec may leave unset: then they are RDS's (or the account's) business, not pgop's.
    if spec.db_subnet_group_name is not None:
        want("dbSubnetGroupName", "DBSubnetGroupName", spec.db_subnet_group_name,
             will_be["db_subnet_group_name"])
    if spec.vpc_security_group_ids is not None:
        want("vpcSecurityGroupIds", "VpcSecurityGroupIds", spec.vpc_security_group_ids,
             instance.vpc_security_group_ids)
    if spec.db_parameter_group_name is not None and instance.db_parameter_group_names != (spec.db_parameter_group_name,):
        want("dbParameterGroupName", "DBParameterGroupName", spec.db_parameter_group_name,
             ",".join(instance.db_parameter_group_names) or None)
    if spec.preferred_backup_window is not None:
        want("preferredBackupWindow", "PreferredBackupWindow", spec.preferred_backup_window,
             instance.preferred_backup_window)
    if spec.preferred_maintenance_window is not None:
        want("preferredMaintenanceWindow", "PreferredMaintenanceWindow", spec.preferred_maintenance_window,
             instance.preferred_maintenance_window)
    if spec.auto_minor_version_upgrade is not None:
        want("autoMinorVersionUpgrade", "AutoMinorVersionUpgrade", spec.auto_minor_version_upgrade,
             instance.auto_minor_version_upgrade)

    if modify:
        modify["ApplyImmediately"] = spec.apply_immediately

    wanted_tags = {**spec.tags, **ownership_tags}
    add_tags = {k: v for k, v in wanted_tags.items() if instance.tags.get(k) != v}
    remove_tags = tuple(sorted(
        k for k in previously_applied_tags if k not in wanted_tags and k in instance.tags
    ))

    if refusals:
        return Changes(refusals=tuple(refusals), notes=tuple(notes))
    return Changes(modify=modify, add_tags=add_tags, remove_tags=remove_tags, notes=tuple(notes),
                   differences=tuple(differences))
