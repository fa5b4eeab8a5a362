"""A typed view of a MysqlDb object (DESIGN.md section 2), with the defaults the CRD documents."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pgop.kernel.tenancy import default_consul_prefix, default_vault_path
from pgop.rds.classes import instance_class_for

ENGINE = "mysql"
DEFAULT_PORT = 3306
DELETION_POLICIES = ("Snapshot", "Delete", "Retain")
DEFAULT_STORAGE_GB = 20
DEFAULT_BACKUP_RETENTION_DAYS = 7

ADOPT_ANNOTATION = "pgop.io/adopt"
RESET_PASSWORD_ANNOTATION = "pgop.io/reset-password"


class InvalidSpec(ValueError):
    """A spec the operator cannot act on; the message names the field."""


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
    def wants_password_reset(self) -> bool:
        return (self.annotations.get(RESET_PASSWORD_ANNOTATION) or "").lower() in ("true", "yes", "1")
