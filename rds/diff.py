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
}


@dataclass(frozen=True)
class Refusal:
    field: str
    message: str


@dataclass(frozen=True)
class Changes:
    modify: Mapping[str, Any] = field(default_factory=dict)
    add_tags: Mapping[str, str] = field(default_factory=dict)
    remove_tags: tuple[str, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    notes: tuple[str, ...] = ()

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
    values["backup_retention_days"] = int(values["backup_retention_days"])
    return values


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

    current_version = str(will_be["engine_version"])
    if version_key(spec.engine_version) > version_key(current_version):
        modify["EngineVersion"] = spec.engine_version
        if major_version(spec.engine_version) != major_version(current_version):
            modify["AllowMajorVersionUpgrade"] = True
    elif version_key(spec.engine_version) < version_key(current_version):
        # RDS minor-version auto-upgrades move instances ahead of their spec; that is not an error.
        notes.append(f"engine is at {current_version}, ahead of spec.engineVersion {spec.engine_version}")

    if spec.instance_class != will_be["instance_class"]:
        modify["DBInstanceClass"] = spec.instance_class

    if spec.storage_gb > will_be["storage_gb"]:
        modify["AllocatedStorage"] = spec.storage_gb
    elif spec.storage_gb < will_be["storage_gb"]:
        refusals.append(Refusal(
            "storageGB",
            f"storageGB cannot shrink: instance {instance.identifier} has {will_be['storage_gb']} GB, "
            f"spec asks for {spec.storage_gb} GB",
        ))

    if spec.multi_az != bool(will_be["multi_az"]):
        modify["MultiAZ"] = spec.multi_az
    if spec.backup_retention_days != will_be["backup_retention_days"]:
        modify["BackupRetentionPeriod"] = spec.backup_retention_days
    if spec.deletion_protection != instance.deletion_protection:
        modify["DeletionProtection"] = spec.deletion_protection

    if modify:
        modify["ApplyImmediately"] = spec.apply_immediately

    wanted_tags = {**spec.tags, **ownership_tags}
    add_tags = {k: v for k, v in wanted_tags.items() if instance.tags.get(k) != v}
    remove_tags = tuple(sorted(
        k for k in previously_applied_tags if k not in wanted_tags and k in instance.tags
    ))

    if refusals:
        return Changes(refusals=tuple(refusals), notes=tuple(notes))
    return Changes(modify=modify, add_tags=add_tags, remove_tags=remove_tags, notes=tuple(notes))
