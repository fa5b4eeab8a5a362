"""What the MysqlDb controller does next. Pure: what is wanted + what is -> one step.

`next_step` is the heart of the controller: given the MysqlDb object and the RDS instance as
described (or None), it returns the one thing to do now. `deletion_step` does the same when the
object is being deleted. The controller (rds/controller.py) performs the step and asks again.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pgop.kernel import tenancy
from pgop.kernel.conditions import parse_rfc3339, rfc3339
from pgop.kernel.schedule import ScheduleError, due_run
from pgop.rds.diff import Changes, diff
from pgop.rds.identifier import db_instance_identifier, final_snapshot_identifier
from pgop.rds.instance import DbInstance
from pgop.rds.spec import ENGINE, MysqlDbObject, MysqlDbSpec

MASTER_USERNAME = "dbadmin"

TAG_MANAGED_BY = "pgop.io/managed-by"
TAG_NAMESPACE = "pgop.io/namespace"
TAG_NAME = "pgop.io/name"
TAG_UID = "pgop.io/uid"
OWNERSHIP_TAG_KEYS = (TAG_MANAGED_BY, TAG_NAMESPACE, TAG_NAME, TAG_UID)
# Set by an administrator on an instance pgop did not create: `<namespace>/<name>` of the one
# MysqlDb that may adopt it.
TAG_ADOPTABLE_BY = "pgop.io/adoptable-by"
ADOPT_NAMESPACES_SETTING = "PGOP_RDS_ADOPT_NAMESPACES"

# RDS instance states in which pgop may modify and publish.
USABLE_STATES = {"available", "storage-optimization"}
# States that will not end by waiting: a person has to look.
BROKEN_STATES = {
    "failed": "InstanceFailed",
    "incompatible-parameters": "InstanceIncompatibleParameters",
    "incompatible-network": "InstanceIncompatibleNetwork",
    "incompatible-option-group": "InstanceIncompatibleOptionGroup",
    "incompatible-restore": "InstanceIncompatibleRestore",
    "inaccessible-encryption-credentials": "InstanceEncryptionKeyInaccessible",
    "inaccessible-encryption-credentials-recoverable": "InstanceEncryptionKeyInaccessible",
    "restore-error": "InstanceRestoreError",
    "storage-full": "InstanceStorageFull",
    "stopped": "InstanceStopped",
    "stopping": "InstanceStopped",
}

# Phases of a MysqlDb (status.phase).
PENDING, CREATING, MODIFYING, READY, DEGRADED, FAILED, DELETING = (
    "Pending", "Creating", "Modifying", "Ready", "Degraded", "Failed", "Deleting")
SETTLED_PHASES = {READY, DEGRADED}
CHANGING_PHASES = {CREATING, MODIFYING}


# --- steps -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Create:
    request: Mapping[str, Any]  # CreateDBInstance arguments, without the password


@dataclass(frozen=True)
class Restore:
    """A new instance from spec.restoreFrom: `operation` is the RDS call, `request` its arguments."""
    operation: str  # restore_db_instance_from_db_snapshot | restore_db_instance_to_point_in_time
    request: Mapping[str, Any]
    source: str  # what is restored, for status and Events


@dataclass(frozen=True)
class SetRestoredPassword:
    """A restored instance still has its source's master password: give it its own (from Vault)."""


@dataclass(frozen=True)
class RotatePassword:
    """Store a new password in Vault as pendingPassword (CAS) unless one is pending, send it to RDS."""
    trigger: str  # Requested (pgop mysqldb rotate), Scheduled (spec.passwordRotation.schedule), Resumed
    request: str | None = None  # the pgop.io/rotate-password token being handled
    scheduled_at: str | None = None  # the due time of the schedule being handled


@dataclass(frozen=True)
class PromotePassword:
    """RDS took the pending password: make it Vault's `password` (applications pick it up)."""


@dataclass(frozen=True)
class Claim:
    """Adopt an instance pgop did not create: tag it as ours."""
    tags: Mapping[str, str]


@dataclass(frozen=True)
class ResetPassword:
    """Give an adopted instance a password pgop knows (only when the user asked)."""


@dataclass(frozen=True)
class Modify:
    changes: Changes
    # True when the spec was already applied (status.observedGeneration is this generation) and the
    # instance differs anyway: a change made outside pgop, put back and reported as drift.
    drift: bool = False


@dataclass(frozen=True)
class Publish:
    password_managed: bool


@dataclass(frozen=True)
class Wait:
    phase: str
    reason: str
    message: str


@dataclass(frozen=True)
class Degrade:
    """Something outside the spec is wrong; pgop keeps watching but will not act on its own."""
    reason: str
    message: str


@dataclass(frozen=True)
class Refuse:
    """The spec asks for something RDS cannot do; nothing happens until the spec changes."""
    reason: str
    message: str


# Deletion steps.
@dataclass(frozen=True)
class BlockDeletion:
    reason: str
    message: str


@dataclass(frozen=True)
class DisableDeletionProtection:
    pass


@dataclass(frozen=True)
class DeleteInstance:
    final_snapshot: str | None
    delete_automated_backups: bool


@dataclass(frozen=True)
class WaitForDeletion:
    message: str


@dataclass(frozen=True)
class ReleaseInstance:
    """deletionPolicy Retain: leave the instance, remove the tags that say pgop owns it."""
    tag_keys: Sequence[str]


@dataclass(frozen=True)
class Unpublish:
    pass


@dataclass(frozen=True)
class LeaveUnpublished:
    """The spec's Vault or Consul path is outside the namespace: deletion removes nothing there."""
    reason: str
    message: str


@dataclass(frozen=True)
class Finished:
    pass


# What next_step and deletion_step return.
Step = (Create | Restore | SetRestoredPassword | Claim | ResetPassword | RotatePassword | PromotePassword
        | Modify | Publish | Wait | Degrade | Refuse)
DeletionStep = (BlockDeletion | DisableDeletionProtection | DeleteInstance | WaitForDeletion | ReleaseInstance
                | Unpublish | LeaveUnpublished | Finished)


# --- identity and ownership ----------------------------------------------------------------------

def ownership_tags(obj: MysqlDbObject) -> dict[str, str]:
    return {TAG_MANAGED_BY: "pgop", TAG_NAMESPACE: obj.namespace, TAG_NAME: obj.name, TAG_UID: obj.uid}


def is_ours(obj: MysqlDbObject, instance: DbInstance) -> bool:
    return bool(obj.uid) and instance.tags.get(TAG_UID) == obj.uid


def target_identifier(obj: MysqlDbObject, *, scope: str = "") -> str:
    """The instance this MysqlDb is about: the one it recorded, the one to adopt, or its own."""
    return (obj.status.get("dbInstanceIdentifier")
            or obj.adopt_identifier
            or db_instance_identifier(obj.namespace, obj.name, scope=scope))


def path_refusal(obj: MysqlDbObject) -> Refuse | None:
    """spec.vaultPath and spec.consulPrefix must stay below the namespace's own prefix
    (pgop.kernel.tenancy); otherwise pgop neither reads, writes nor deletes them."""
    refused = tenancy.refused_paths(obj.namespace, vault=("spec.vaultPath", obj.spec.vault_path),
                                    consul=("spec.consulPrefix", obj.spec.consul_prefix))
    return Refuse(tenancy.REASON, tenancy.refusal_message(refused)) if refused else None


def adoption_refusal(obj: MysqlDbObject, instance: DbInstance, adopt_namespaces: Collection[str]) -> Degrade | None:
    """Adopting hands a database pgop did not create, with its data, to a namespace, and lets it
    reset the password and delete the instance. Only an administrator can allow that: by naming
    the namespace in the operator's configuration, or by tagging the instance with the one
    MysqlDb that may adopt it. Never by default."""
    claimant = f"{obj.namespace}/{obj.name}"
    if obj.namespace in adopt_namespaces or instance.tags.get(TAG_ADOPTABLE_BY, "").strip() == claimant:
        return None
    return Degrade("AdoptionNotAllowed",
                   f"DB instance {instance.identifier} may not be adopted by MysqlDb {claimant}: an "
                   f"administrator allows it by tagging the instance {TAG_ADOPTABLE_BY}={claimant}, or "
                   f"by adding {obj.namespace} to the operator's {ADOPT_NAMESPACES_SETTING}; "
                   f"nothing on the instance was changed")


def _placement(spec: MysqlDbSpec) -> dict[str, Any]:
    """The network, parameter group and maintenance settings the spec sets (RDS's defaults for the
    ones it leaves out), as CreateDBInstance and both restore calls take them."""
    request: dict[str, Any] = {"PubliclyAccessible": spec.publicly_accessible}
    if spec.db_subnet_group_name is not None:
        request["DBSubnetGroupName"] = spec.db_subnet_group_name
    if spec.vpc_security_group_ids is not None:
        request["VpcSecurityGroupIds"] = list(spec.vpc_security_group_ids)
    if spec.db_parameter_group_name is not None:
        request["DBParameterGroupName"] = spec.db_parameter_group_name
    if spec.preferred_backup_window is not None:
        request["PreferredBackupWindow"] = spec.preferred_backup_window
    if spec.auto_minor_version_upgrade is not None:
        request["AutoMinorVersionUpgrade"] = spec.auto_minor_version_upgrade
    return request


RESTORE_FROM_SNAPSHOT = "restore_db_instance_from_db_snapshot"
RESTORE_TO_POINT_IN_TIME = "restore_db_instance_to_point_in_time"


def restore_request(obj: MysqlDbObject, identifier: str) -> Restore:
    """The restore call of spec.restoreFrom. Encryption and its KMS key come from the snapshot or
    the source instance (RDS takes no choice there); the maintenance window, storage and engine
    version are set by the Modify that follows, like any other difference."""
    spec = obj.spec
    restore = spec.restore_from
    if restore is None:
        raise ValueError("restore_request without spec.restoreFrom")
    tags = {**spec.tags, **ownership_tags(obj)}
    common = {
        "DBInstanceClass": spec.instance_class,
        "MultiAZ": spec.multi_az,
        "BackupRetentionPeriod": spec.backup_retention_days,
        "DeletionProtection": spec.deletion_protection,
        "CopyTagsToSnapshot": True,
        **_placement(spec),
        "Tags": [{"Key": k, "Value": v} for k, v in sorted(tags.items())],
    }
    if restore.snapshot_identifier:
        return Restore(RESTORE_FROM_SNAPSHOT, {"DBInstanceIdentifier": identifier,
                                               "DBSnapshotIdentifier": restore.snapshot_identifier,
                                               **common}, restore.describe())
    request: dict[str, Any] = {"SourceDBInstanceIdentifier": restore.source_db_instance_identifier,
                               "TargetDBInstanceIdentifier": identifier, **common}
    if restore.use_latest_restorable_time:
        request["UseLatestRestorableTime"] = True
    else:
        request["RestoreTime"] = restore.restore_time
    return Restore(RESTORE_TO_POINT_IN_TIME, request, restore.describe())


def rotation_state(obj: MysqlDbObject) -> dict[str, Any]:
    return dict(obj.status.get("passwordRotation") or {})


def rotation_due(obj: MysqlDbObject, now: datetime | None) -> RotatePassword | None:
    """A rotation asked for by `pgop mysqldb rotate` (a pgop.io/rotate-password token not handled
    yet) or due by spec.passwordRotation.schedule (a due time after the last one handled; the first
    sight of a schedule only arms it, see `armed_schedule`)."""
    state = rotation_state(obj)
    token = obj.rotation_request
    if token and token != state.get("handledRequest"):
        return RotatePassword("Requested", request=token)
    schedule = obj.spec.password_rotation_schedule
    if schedule and now is not None:
        last = parse_rfc3339(state.get("lastScheduledAt")) if state.get("lastScheduledAt") else None
        try:
            due = due_run(schedule, last, now)
        except ScheduleError:
            return None  # spec.py refused it already
        if due is not None:
            return RotatePassword("Scheduled", scheduled_at=rfc3339(due))
    return None


def create_request(obj: MysqlDbObject, identifier: str) -> dict[str, Any]:
    spec = obj.spec
    tags = {**spec.tags, **ownership_tags(obj)}
    encryption: dict[str, Any] = {"StorageEncrypted": spec.storage_encrypted}
    if spec.kms_key_id:
        encryption["KmsKeyId"] = spec.kms_key_id
    maintenance: dict[str, Any] = {}
    if spec.preferred_maintenance_window is not None:
        maintenance["PreferredMaintenanceWindow"] = spec.preferred_maintenance_window
    return {
        "DBInstanceIdentifier": identifier,
        "Engine": ENGINE,
        "EngineVersion": spec.engine_version,
        "DBInstanceClass": spec.instance_class,
        "AllocatedStorage": spec.storage_gb,
        "DBName": spec.database_name,
        "MasterUsername": MASTER_USERNAME,
        "MultiAZ": spec.multi_az,
        "BackupRetentionPeriod": spec.backup_retention_days,
        "DeletionProtection": spec.deletion_protection,
        **encryption,
        "CopyTagsToSnapshot": True,
        **_placement(spec),
        **maintenance,
        "Tags": [{"Key": k, "Value": v} for k, v in sorted(tags.items())],
    }


# --- the decision --------------------------------------------------------------------------------

def next_step(
    obj: MysqlDbObject,
    instance: DbInstance | None,
    *,
    identifier: str,
    password_in_vault: bool | None = None,
    password_pending: bool = False,
    adopt_namespaces: Collection[str] = frozenset(),
    now: datetime | None = None,
) -> Step:
    refused = path_refusal(obj)
    if refused is not None:
        return refused
    recorded = obj.status.get("dbInstanceIdentifier")
    adopting = obj.adopt_identifier
    if recorded and adopting and adopting != recorded:
        return Refuse("AdoptionConflict",
                      f"this MysqlDb already manages {recorded}; it cannot adopt {adopting} too")

    if instance is None:
        if recorded:
            return Degrade("InstanceNotFound",
                           f"DB instance {recorded} no longer exists in RDS. pgop does not recreate it "
                           f"empty: restore it under the same identifier, or delete this MysqlDb")
        if adopting:
            return Degrade("AdoptionTargetNotFound", f"DB instance {adopting} to adopt does not exist")
        if obj.spec.restore_from is not None:
            return restore_request(obj, identifier)
        return Create(create_request(obj, identifier))

    if not is_ours(obj, instance):
        other = instance.tags.get(TAG_UID)
        if other:
            owner = f"{instance.tags.get(TAG_NAMESPACE, '?')}/{instance.tags.get(TAG_NAME, '?')}"
            return Degrade("OwnedByAnother",
                           f"DB instance {instance.identifier} is managed by MysqlDb {owner} (uid {other})")
        if adopting == instance.identifier:
            return adoption_refusal(obj, instance, adopt_namespaces) or Claim(ownership_tags(obj))
        return Degrade("IdentifierTaken",
                       f"DB instance {instance.identifier} exists and was not created for this MysqlDb; "
                       f"annotate pgop.io/adopt: {instance.identifier} to take it over, where an "
                       f"administrator allows it ({TAG_ADOPTABLE_BY} or {ADOPT_NAMESPACES_SETTING})")

    if instance.status == "deleting":
        return Degrade("InstanceDeleting", f"DB instance {instance.identifier} is being deleted outside pgop")
    if instance.status in BROKEN_STATES:
        return Degrade(BROKEN_STATES[instance.status],
                       f"DB instance {instance.identifier} is {instance.status}")
    if instance.status not in USABLE_STATES:
        phase = CREATING if obj.status.get("phase") in (None, "", PENDING, CREATING) else MODIFYING
        return Wait(phase, "InstanceNotAvailable",
                    f"DB instance {instance.identifier} is {instance.status}")

    if password_in_vault is False and obj.wants_password_reset:
        return ResetPassword()

    # A restored instance answers to its source's password until it is given its own.
    # (A MysqlDb that recorded an instance but no restore never restored: nothing to do here.)
    restored = obj.status.get("restore") or {}
    if (obj.spec.restore_from is not None and not restored.get("passwordSet")
            and (restored or not obj.status.get("dbInstanceIdentifier"))):
        return SetRestoredPassword()

    # Password rotation: Vault (pendingPassword) first, then RDS, then Vault's `password`.
    if password_pending:
        if any("password" in k.lower() for k in instance.pending):
            return Wait(MODIFYING, "PasswordChanging",
                        f"RDS is applying the new master password of {instance.identifier}")
        if rotation_state(obj).get("inProgress"):
            return PromotePassword()
        return RotatePassword("Resumed")  # the pending password may not have reached RDS
    rotation = rotation_due(obj, now)
    if rotation is not None:
        return rotation

    changes = diff(
        obj.spec, instance,
        ownership_tags=ownership_tags(obj),
        previously_applied_tags=obj.status.get("appliedTags") or {},
    )
    if changes.refusals:
        return Refuse(changes.refusals[0].reason, "; ".join(r.message for r in changes.refusals))
    if not changes.empty:
        settled = (obj.status.get("observedGeneration") == obj.generation
                   and obj.status.get("phase") in SETTLED_PHASES)
        return Modify(changes, drift=settled and bool(changes.differences))
    return Publish(password_managed=password_in_vault is not False)


def deletion_step(obj: MysqlDbObject, instance: DbInstance | None) -> DeletionStep:
    spec = obj.spec
    if spec.deletion_protection:
        return BlockDeletion("DeletionProtected",
                             "spec.deletionProtection is true: set it to false to let this MysqlDb "
                             "and its database be deleted")
    if instance is not None and is_ours(obj, instance):
        if spec.deletion_policy == "Retain":
            present = [k for k in OWNERSHIP_TAG_KEYS if k in instance.tags]
            return ReleaseInstance(present) if present else Finished()
        if instance.status == "deleting":
            return WaitForDeletion(f"DB instance {instance.identifier} is deleting")
        if instance.deletion_protection:
            return DisableDeletionProtection()
        if spec.deletion_policy == "Snapshot":
            return DeleteInstance(final_snapshot_identifier(instance.identifier, obj.uid), False)
        return DeleteInstance(None, True)
    # The instance is gone, or was never ours: only our own published entries are left to remove.
    # A MysqlDb that never stored anything (status.vaultPath is recorded with the password) has
    # nothing to remove, so its deletion does not wait for Vault or Consul.
    stored = obj.status.get("vaultPath") or obj.status.get("consulPrefix")
    if spec.deletion_policy == "Retain" or not stored:
        return Finished()
    refused = path_refusal(obj)
    if refused is not None:
        return LeaveUnpublished(refused.reason, refused.message)
    return Unpublish()


# --- status helpers (conditions and timestamps: pgop.kernel.conditions) -------------------------

def backoff(attempt: int, *, base: float, cap: float) -> float:
    """Delay before check number `attempt` (0-based): base, 2*base, 4*base, ... up to cap."""
    return float(min(cap, base * (2 ** max(0, min(attempt, 16)))))


def instance_status(instance: DbInstance) -> dict[str, Any]:
    """What status shows of an instance: where to connect and what it runs."""
    # RDS shows a pending password change as "****"; status shows no trace of passwords at all.
    pending = {k: v for k, v in instance.pending.items()
               if v is not None and "password" not in k.lower()}
    return {
        "dbInstanceIdentifier": instance.identifier,
        "dbInstanceArn": instance.arn or None,
        "dbInstanceStatus": instance.status,
        "endpoint": instance.host,
        "port": instance.port,
        "engineVersion": instance.engine_version,
        "instanceClass": instance.instance_class,
        "allocatedStorage": instance.storage_gb,
        "multiAZ": instance.multi_az,
        "backupRetentionDays": instance.backup_retention_days,
        "deletionProtection": instance.deletion_protection,
        "pendingModifications": {k: str(v) for k, v in pending.items()} or None,
        "storageEncrypted": instance.storage_encrypted,
        "kmsKeyId": instance.kms_key_id,
        "dbSubnetGroupName": instance.db_subnet_group_name,
        "vpcSecurityGroupIds": list(instance.vpc_security_group_ids),
        "dbParameterGroupName": ",".join(instance.db_parameter_group_names) or None,
        "preferredBackupWindow": instance.preferred_backup_window,
        "preferredMaintenanceWindow": instance.preferred_maintenance_window,
        "publiclyAccessible": instance.publicly_accessible,
        "autoMinorVersionUpgrade": instance.auto_minor_version_upgrade,
    }


def due(next_check: str | None, now: datetime) -> bool:
    """Whether the timer should look at this MysqlDb now (`next_check` from status or memory)."""
    if not next_check:
        return True
    try:
        at = parse_rfc3339(next_check)
    except ValueError:
        return True
    return at is None or now >= at
