"""A typed view of a MysqlDb object (DESIGN.md section 2), with the defaults the CRD documents."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pgop.kernel.schedule import validate_schedule
from pgop.kernel.tenancy import default_consul_prefix, default_vault_path
from pgop.rds.classes import instance_class_for

ENGINE = "mysql"
DEFAULT_PORT = 3306
DELETION_POLICIES = ("Snapshot", "Delete", "Retain")
DEFAULT_STORAGE_GB = 20
DEFAULT_BACKUP_RETENTION_DAYS = 7

ADOPT_ANNOTATION = "pgop.io/adopt"
RESET_PASSWORD_ANNOTATION = "pgop.io/reset-password"
# Set by `pgop mysqldb rotate` to the time of the request; a value not yet handled asks for a rotation.
ROTATE_PASSWORD_ANNOTATION = "pgop.io/rotate-password"

# The formats RDS takes (and the CRD checks): hh24:mi-hh24:mi and ddd:hh24:mi-ddd:hh24:mi, UTC.
_HHMM = r"([01][0-9]|2[0-3]):[0-5][0-9]"
_DAY = r"(mon|tue|wed|thu|fri|sat|sun)"
BACKUP_WINDOW = re.compile(rf"^{_HHMM}-{_HHMM}$")
MAINTENANCE_WINDOW = re.compile(rf"^{_DAY}:{_HHMM}-{_DAY}:{_HHMM}$", re.IGNORECASE)
SECURITY_GROUP_ID = re.compile(r"^sg-[0-9a-f]{8,17}$")
RESTORE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


class InvalidSpec(ValueError):
    """A spec the operator cannot act on; the message names the field."""


@dataclass(frozen=True)
class RestoreFrom:
    """spec.restoreFrom: an RDS snapshot, or a point in time of another DB instance."""

    snapshot_identifier: str | None = None
    source_db_instance_identifier: str | None = None
    restore_time: datetime | None = None
    use_latest_restorable_time: bool = False

    @classmethod
    def from_manifest(cls, raw: Mapping[str, Any]) -> RestoreFrom:
        snapshot = (raw.get("snapshotIdentifier") or "").strip() or None
        source = (raw.get("sourceDbInstanceIdentifier") or "").strip() or None
        latest = bool(raw.get("useLatestRestorableTime", False))
        time_text = raw.get("restoreTime")
        if bool(snapshot) == bool(source):
            raise InvalidSpec("spec.restoreFrom needs exactly one of snapshotIdentifier and "
                              "sourceDbInstanceIdentifier")
        if snapshot and (latest or time_text):
            raise InvalidSpec("spec.restoreFrom.restoreTime and useLatestRestorableTime go with "
                              "sourceDbInstanceIdentifier, not with snapshotIdentifier")
        if source and bool(latest) == bool(time_text):
            raise InvalidSpec("spec.restoreFrom with sourceDbInstanceIdentifier needs exactly one of "
                              "restoreTime and useLatestRestorableTime: true")
        restore_time = None
        if time_text:
            text = str(time_text)
            if not RESTORE_TIME.match(text):
                raise InvalidSpec(f"spec.restoreFrom.restoreTime {text!r} must be an RFC 3339 time "
                                  "with a zone, e.g. 2026-11-30T14:05:00Z")
            restore_time = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return cls(snapshot, source, restore_time, latest)

    def describe(self) -> str:
        if self.snapshot_identifier:
            return f"snapshot {self.snapshot_identifier}"
        at = "its latest restorable time" if self.use_latest_restorable_time else (
            self.restore_time.isoformat() if self.restore_time else "?")
        return f"DB instance {self.source_db_instance_identifier} at {at}"


def _optional_text(spec: Mapping[str, Any], key: str) -> str | None:
    value = spec.get(key)
    return str(value).strip() or None if value is not None else None


def _optional_bool(spec: Mapping[str, Any], key: str) -> bool | None:
    value = spec.get(key)
    return None if value is None else bool(value)


def _check_format(key: str, value: str | None, pattern: re.Pattern[str], example: str) -> None:
    if value is not None and not pattern.match(value):
        raise InvalidSpec(f"spec.{key} {value!r} must look like {example} (UTC)")


@dataclass(frozen=True)
class MysqlDbSpec:
    engine_version: str
    instance_class: str
    storage_gb: int
    database_name: str
    multi_az: bool
    backup_retention_days: int
    deletion_policy: str
    deletion_protection: bool
    apply_immediately: bool
    tags: Mapping[str, str]
    vault_path: str
    consul_prefix: str
    instance_size: str | None = None
    # Networking, encryption and maintenance (issue 16). None: the spec does not own the field,
    # so pgop neither sets it on create (RDS's default) nor puts it back when it changes.
    db_subnet_group_name: str | None = None
    vpc_security_group_ids: tuple[str, ...] | None = None
    db_parameter_group_name: str | None = None
    storage_encrypted: bool = True
    kms_key_id: str | None = None
    preferred_backup_window: str | None = None
    preferred_maintenance_window: str | None = None
    publicly_accessible: bool = False
    auto_minor_version_upgrade: bool | None = None
    allow_major_version_upgrade: bool = False
    password_rotation_schedule: str | None = None
    restore_from: RestoreFrom | None = None

    @classmethod
    def from_manifest(cls, namespace: str, name: str, spec: Mapping[str, Any]) -> MysqlDbSpec:
        try:
            engine_version = str(spec["engineVersion"])
            database_name = str(spec["databaseName"])
        except KeyError as missing:
            raise InvalidSpec(f"spec.{missing.args[0]} is required") from None
        policy = spec.get("deletionPolicy") or "Snapshot"
        if policy not in DELETION_POLICIES:
            raise InvalidSpec(f"spec.deletionPolicy must be one of {', '.join(DELETION_POLICIES)}")
        try:
            instance_class = instance_class_for(spec.get("instanceSize"), spec.get("instanceClass"))
        except ValueError as error:
            raise InvalidSpec(f"spec: {error}") from None
        storage_gb = int(spec.get("storageGB") or DEFAULT_STORAGE_GB)
        if storage_gb < 20:
            raise InvalidSpec("spec.storageGB must be at least 20 (the RDS MySQL minimum)")
        retention = spec.get("backupRetentionDays")
        backup_window = _optional_text(spec, "preferredBackupWindow")
        _check_format("preferredBackupWindow", backup_window, BACKUP_WINDOW, "'03:00-04:00' (hh24:mi-hh24:mi)")
        maintenance_window = _optional_text(spec, "preferredMaintenanceWindow")
        _check_format("preferredMaintenanceWindow", maintenance_window, MAINTENANCE_WINDOW,
                      "'sun:05:00-sun:06:00' (ddd:hh24:mi-ddd:hh24:mi)")
        groups = spec.get("vpcSecurityGroupIds")
        security_groups = None if groups is None else tuple(sorted({str(g) for g in groups}))
        for group in security_groups or ():
            if not SECURITY_GROUP_ID.match(group):
                raise InvalidSpec(f"spec.vpcSecurityGroupIds: {group!r} is not a security group id such as sg-0123abcd")
        encrypted = spec.get("storageEncrypted")
        kms_key_id = _optional_text(spec, "kmsKeyId")
        if kms_key_id and encrypted is False:
            raise InvalidSpec("spec.kmsKeyId needs spec.storageEncrypted: true")
        rotation = (spec.get("passwordRotation") or {}).get("schedule")
        if rotation is not None:
            problem = validate_schedule(str(rotation))
            if problem:
                raise InvalidSpec(problem.replace("spec.backup.schedule", "spec.passwordRotation.schedule"))
        restore = spec.get("restoreFrom")
        return cls(
            engine_version=engine_version,
            instance_class=instance_class,
            instance_size=spec.get("instanceSize"),
            storage_gb=storage_gb,
            database_name=database_name,
            multi_az=bool(spec.get("multiAZ", False)),
            backup_retention_days=int(DEFAULT_BACKUP_RETENTION_DAYS if retention is None else retention),
            deletion_policy=policy,
            deletion_protection=bool(spec.get("deletionProtection", False)),
            apply_immediately=bool(spec.get("applyImmediately", False)),
            tags={str(k): str(v) for k, v in (spec.get("tags") or {}).items()},
            vault_path=spec.get("vaultPath") or default_vault_path(namespace, name),
            consul_prefix=spec.get("consulPrefix") or default_consul_prefix(namespace, name),
            db_subnet_group_name=_optional_text(spec, "dbSubnetGroupName"),
            vpc_security_group_ids=security_groups,
            db_parameter_group_name=_optional_text(spec, "dbParameterGroupName"),
            storage_encrypted=True if encrypted is None else bool(encrypted),
            kms_key_id=kms_key_id,
            preferred_backup_window=backup_window,
            preferred_maintenance_window=maintenance_window.lower() if maintenance_window else None,
            publicly_accessible=bool(spec.get("publiclyAccessible", False)),
            auto_minor_version_upgrade=_optional_bool(spec, "autoMinorVersionUpgrade"),
            allow_major_version_upgrade=bool(spec.get("allowMajorVersionUpgrade", False)),
            password_rotation_schedule=" ".join(str(rotation).split()) if rotation is not None else None,
            restore_from=RestoreFrom.from_manifest(restore) if restore else None,
        )


@dataclass(frozen=True)
class MysqlDbObject:
    """What the controller needs of one MysqlDb object: identity, wishes, memory."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: MysqlDbSpec
    annotations: Mapping[str, str] = field(default_factory=dict)
    status: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> MysqlDbObject:
        meta = body.get("metadata", {})
        namespace, name = meta["namespace"], meta["name"]
        return cls(
            namespace=namespace,
            name=name,
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 0),
            spec=MysqlDbSpec.from_manifest(namespace, name, body.get("spec") or {}),
            annotations=dict(meta.get("annotations") or {}),
            status=dict(body.get("status") or {}),
        )

    @property
    def adopt_identifier(self) -> str | None:
        return (self.annotations.get(ADOPT_ANNOTATION) or "").strip() or None

    @property
    def rotation_request(self) -> str | None:
        """The token of `pgop mysqldb rotate` (pgop.io/rotate-password), if any."""
        return (self.annotations.get(ROTATE_PASSWORD_ANNOTATION) or "").strip() or None

    @property
    def wants_password_reset(self) -> bool:
        return (self.annotations.get(RESET_PASSWORD_ANNOTATION) or "").lower() in ("true", "yes", "1")
