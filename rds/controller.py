"""The MysqlDb controller's effects: ask rds.policy what to do, do it, report it.

Kept apart from kopf so the whole loop runs in integration tests against the moto server, Vault and
Consul without a Kubernetes API. A pass performs immediate steps (create, claim, modify, publish)
until it reaches one that needs time (RDS still creating) or a person (degraded, refused); it never
sleeps. What to report is returned as a kernel Plan (no Actions: its status merge patch, its
Events, when to look again, a permanent failure, a finished deletion); rds/handlers.py turns it into
the status patch, Events and kopf retries.

Each step of rds.policy has one method here, found by the step's type (`_STEPS`, `_DELETION_STEPS`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pgop.kernel.actions import NORMAL, WARNING, Plan
from pgop.kernel.conditions import condition, rfc3339, set_condition
from pgop.kernel.schedule import arm
from pgop.rds import policy
from pgop.rds.aws import ErrorClass, Rds, RdsError
from pgop.rds.instance import DbInstance
from pgop.rds.policy import (
    BlockDeletion,
    Claim,
    Create,
    Degrade,
    DeleteInstance,
    DeletionStep,
    DisableDeletionProtection,
    Finished,
    LeaveUnpublished,
    Modify,
    PromotePassword,
    Publish,
    Refuse,
    ReleaseInstance,
    ResetPassword,
    Restore,
    RotatePassword,
    SetRestoredPassword,
    Step,
    Unpublish,
    Wait,
    WaitForDeletion,
)
from pgop.rds.spec import ENGINE, MysqlDbObject
from pgop.runtime import publish as pub

if TYPE_CHECKING:
    from pgop.runtime.config import OperatorConfig

log = logging.getLogger(__name__)

MAX_STEPS_PER_PASS = 6
FAULT_BACKOFF_BASE = 5.0
FAULT_BACKOFF_CAP = 300.0


class Report:
    """Accumulates status changes and events during one pass, in `plan`.

    `plan.requeue_after` is set for a fault that should heal (kopf retries after that many
    seconds), `plan.permanent` for a failure only a person can fix, `plan.finished` when deletion
    is done and the finalizer may go.
    """

    def __init__(self, obj: MysqlDbObject, now: datetime):
        self.obj = obj
        self.now = now
        self.plan = Plan()
        self._conditions: list[dict[str, Any]] = list(obj.status.get("conditions") or [])

    @property
    def status(self) -> dict[str, Any]:
        return {**self.obj.status, **self.plan.status}

    def set(self, **fields: Any) -> None:
        self.plan.status.update(fields)

    def condition(self, type_: str, status: bool, reason: str, message: str) -> None:
        self._conditions = set_condition(self._conditions, condition(type_, status, reason, message),
                                         now=self.now, generation=self.obj.generation)
        self.plan.status["conditions"] = self._conditions

    def event(self, type_: str, reason: str, message: str) -> None:
        self.plan.event(type_, reason, message)

    def check_again_in(self, seconds: float) -> None:
        self.set(nextCheckAt=rfc3339(self.now + timedelta(seconds=seconds)))

    def phase(self, phase: str) -> None:
        self.set(phase=phase)


class MysqlDbController:
    def __init__(
        self,
        rds: Rds,
        vault: pub.VaultKV,
        consul_kv: pub.ConsulKV,
        *,
        scope: str = "",
        poll_seconds: float = 15.0,
        resync_seconds: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        generate_password: Callable[[], str] = pub.generate_password,
        adopt_namespaces: frozenset[str] = frozenset(),
    ):
        self.rds = rds
        self.vault = vault
        self.consul = consul_kv
        self.scope = scope
        self.poll_seconds = poll_seconds
        self.resync_seconds = resync_seconds
        self.clock = clock
        self.generate_password = generate_password
        self.adopt_namespaces = adopt_namespaces  # where pgop.io/adopt needs no tag on the instance

    # --- create / update / resume / timer --------------------------------------------------------

    def reconcile(self, obj: MysqlDbObject, *, attempt: int | None = None) -> Plan:
        """One pass towards the spec. `attempt` counts consecutive faults (for the backoff)."""
        if attempt is None:
            attempt = int(obj.status.get("faults") or 0)
        report = Report(obj, self.clock())
        identifier = policy.target_identifier(obj, scope=self.scope)
        report.set(lastError=None)
        refused = policy.path_refusal(obj)
        if refused is not None:  # before anything is read: the path may be another tenant's
            self._degrade(refused, obj, None, identifier, report)
            return report.plan
        try:
            for _ in range(MAX_STEPS_PER_PASS):
                current = dataclasses.replace(obj, status=report.status)
                instance = self.rds.describe(identifier)
                password_in_vault = None
                password_pending = False
                # Only for an instance already ours: an adoption is claimed (or refused) first.
                if (instance is not None and instance.status in policy.USABLE_STATES
                        and policy.is_ours(current, instance)):
                    stored = self.vault.read(obj.spec.vault_path).data or {}
                    password_in_vault = bool(stored.get("password"))
                    password_pending = bool(stored.get("pendingPassword"))
                step = policy.next_step(current, instance, identifier=identifier,
                                        password_in_vault=password_in_vault,
                                        password_pending=password_pending,
                                        adopt_namespaces=self.adopt_namespaces, now=report.now)
                if not self._perform(step, current, instance, identifier, report):
                    break
            else:
                report.check_again_in(self.poll_seconds)
            report.set(faults=0)
        except (RdsError, pub.PublishError) as error:
            self._fault(report, error.reason, str(error), error.retryable, attempt)
        return report.plan

    def _perform(self, step: Step, obj: MysqlDbObject, instance: DbInstance | None,
                 identifier: str, report: Report) -> bool:
        """Do one step; True when the pass should go on with a fresh look at the instance."""
        perform = _STEPS.get(type(step))
        if perform is None:
            raise AssertionError(f"unknown step {step!r}")
        return perform(self, step, obj, instance, identifier, report)

    def _stash_master_password(self, obj: MysqlDbObject, report: Report):
        """The new instance's master password, in Vault before RDS is asked (a crash anywhere
        leaves a password to give it). Recorded in the same status patch as whatever happens next,
        so that deletion knows there is a secret to remove even if the RDS call fails."""
        spec = obj.spec
        stored = pub.ensure_master_password(
            self.vault, spec.vault_path, username=policy.MASTER_USERNAME, engine=ENGINE,
            dbname=spec.database_name, generate=self.generate_password)
        report.set(vaultPath=spec.vault_path)
        if stored.created:
            report.event(NORMAL, "PasswordStored",
                         f"master password stored in Vault at {spec.vault_path} (version {stored.version})")
        return stored

    def _create(self, step: Create, obj: MysqlDbObject, instance: DbInstance | None,
                identifier: str, report: Report) -> bool:
        spec = obj.spec
        stored = self._stash_master_password(obj, report)
        try:
            self.rds.create(step.request, stored.password)
        except RdsError as error:
            if error.reason != "IdentifierTaken":
                raise
            # A previous attempt created it (or someone else did): the next look decides which.
            return True
        report.set(dbInstanceIdentifier=identifier, vaultPath=spec.vault_path,
                   consulPrefix=spec.consul_prefix, appliedTags=dict(spec.tags))
        report.phase(policy.CREATING)
        report.condition("Progressing", True, "Creating", f"CreateDBInstance accepted for {identifier}")
        report.event(NORMAL, "Creating",
                     f"CreateDBInstance {identifier}: {spec.instance_class}, {spec.storage_gb} GB, "
                     f"MySQL {spec.engine_version}")
        return True

    def _restore(self, step: Restore, obj: MysqlDbObject, instance: DbInstance | None,
                 identifier: str, report: Report) -> bool:
        """Like _create: the new instance's own password is in Vault before RDS is asked, so a
        crash anywhere leaves a password that SetRestoredPassword gives the instance."""
        spec = obj.spec
        self._stash_master_password(obj, report)
        try:
            self.rds.restore(step.operation, step.request)
        except RdsError as error:
            if error.reason == "IdentifierTaken":
                return True
            if error.reason == "InstanceNotFound":  # the source instance of a point-in-time restore
                raise RdsError(error.operation, error.code, error.aws_message,
                               ErrorClass(False, "RestoreSourceNotFound")) from None
            raise
        report.set(dbInstanceIdentifier=identifier, consulPrefix=spec.consul_prefix,
                   appliedTags=dict(spec.tags),
                   restore={"source": step.source, "startedAt": rfc3339(report.now), "passwordSet": False})
        report.phase(policy.CREATING)
        report.condition("Progressing", True, "Restoring", f"restoring {identifier} from {step.source}")
        report.event(NORMAL, "Restoring", f"restoring {identifier} from {step.source}")
        return True

    def _set_restored_password(self, step: SetRestoredPassword, obj: MysqlDbObject,
                               instance: DbInstance | None, identifier: str, report: Report) -> bool:
        instance = _existing(instance, step)
        spec = obj.spec
        stored = pub.ensure_master_password(
            self.vault, spec.vault_path, username=instance.master_username, engine=ENGINE,
            dbname=spec.database_name, generate=self.generate_password)
        self.rds.set_master_password(instance.identifier, stored.password)
        restored = dict(obj.status.get("restore") or {})
        source = restored.get("source") or (spec.restore_from.describe() if spec.restore_from else "?")
        report.set(dbInstanceIdentifier=instance.identifier, vaultPath=spec.vault_path,
                   consulPrefix=spec.consul_prefix,
                   restore={**restored, "source": source, "passwordSet": True})
        report.event(NORMAL, "PasswordSet",
                     f"restored {instance.identifier} from {source} has its own master password now "
                     f"(Vault {spec.vault_path}); the source's password no longer opens it")
        return True

    def _rotate_password(self, step: RotatePassword, obj: MysqlDbObject, instance: DbInstance | None,
                         identifier: str, report: Report) -> bool:
        """Vault first: the new password is stored as pendingPassword with check-and-set (a
        concurrent writer makes this pass fail and retry, never overwrite), then sent to RDS with
        ApplyImmediately. Applications keep reading `password` (the old one, which RDS still takes)
        until PromotePassword, once RDS shows no pending password change."""
        instance = _existing(instance, step)
        path = obj.spec.vault_path
        current = self.vault.read(path)
        data = dict(current.data or {})
        pending = data.get("pendingPassword")
        if not pending:
            pending = self.generate_password()
            self.vault.write(path, {**data, "pendingPassword": pending}, cas=current.version)
        self.rds.set_master_password(instance.identifier, pending)
        state = policy.rotation_state(obj)
        in_progress = dict(state.get("inProgress") or {})
        if step.trigger != "Resumed" or not in_progress:
            in_progress = {"trigger": step.trigger, "startedAt": rfc3339(report.now),
                           "request": step.request, "scheduledAt": step.scheduled_at}
        report.set(passwordRotation={**state, "inProgress": in_progress})
        report.condition("Progressing", True, "RotatingPassword",
                         f"new master password of {instance.identifier} sent to RDS ({in_progress['trigger']})")
        report.event(NORMAL, "RotatingPassword",
                     f"new master password for {instance.identifier} stored in Vault at {path} as "
                     f"pendingPassword and sent to RDS ({in_progress['trigger']})")
        return True

    def _promote_password(self, step: PromotePassword, obj: MysqlDbObject, instance: DbInstance | None,
                          identifier: str, report: Report) -> bool:
        instance = _existing(instance, step)
        path = obj.spec.vault_path
        current = self.vault.read(path)
        data = dict(current.data or {})
        pending = data.pop("pendingPassword", None)
        state = policy.rotation_state(obj)
        in_progress = dict(state.get("inProgress") or {})
        version = current.version
        if pending:
            version = self.vault.write(path, {**data, "username": instance.master_username, "password": pending},
                                       cas=current.version)
        rotation = {k: v for k, v in state.items() if k != "inProgress"}
        rotation.update(lastRotatedAt=rfc3339(report.now), vaultVersion=version, inProgress=None)
        if in_progress.get("request"):
            rotation["handledRequest"] = in_progress["request"]
        if in_progress.get("scheduledAt"):
            rotation["lastScheduledAt"] = in_progress["scheduledAt"]
        report.set(passwordRotation=rotation)
        report.event(NORMAL, "PasswordRotated",
                     f"master password of {instance.identifier} rotated: Vault {path} version {version} "
                     f"holds the new one")
        return True

    def _claim(self, step: Claim, obj: MysqlDbObject, instance: DbInstance | None,
               identifier: str, report: Report) -> bool:
        instance = _existing(instance, step)
        spec = obj.spec
        self.rds.add_tags(instance.arn, step.tags)
        report.set(dbInstanceIdentifier=instance.identifier, adopted=True,
                   vaultPath=spec.vault_path, consulPrefix=spec.consul_prefix)
        report.event(NORMAL, "Adopted", f"took over existing DB instance {instance.identifier}")
        return True

    def _modify(self, step: Modify, obj: MysqlDbObject, instance: DbInstance | None,
                identifier: str, report: Report) -> bool:
        instance = _existing(instance, step)
        changes = step.changes
        if changes.modify:
            self.rds.modify(instance.identifier, changes.modify)
            described = ", ".join(f"{k}={v}" for k, v in sorted(changes.modify.items()))
            if step.drift:
                # Changed outside pgop (console, CLI, another tool): put back, and say what and where.
                for difference in changes.differences:
                    report.event(WARNING, "DriftReverted",
                                 f"{difference.describe()}: changed outside pgop on {instance.identifier}, "
                                 f"put back to the spec")
            report.event(NORMAL, "Modifying", f"ModifyDBInstance {instance.identifier}: {described}")
            report.condition("Progressing", True, "Modifying", described)
            if report.status.get("phase") == policy.READY:
                report.phase(policy.MODIFYING)
        if changes.add_tags:
            self.rds.add_tags(instance.arn, changes.add_tags)
        if changes.remove_tags:
            self.rds.remove_tags(instance.arn, changes.remove_tags)
        report.set(appliedTags=dict(obj.spec.tags))
        return True

    def _publish(self, step: Publish, obj: MysqlDbObject, instance: DbInstance | None,
                 identifier: str, report: Report) -> bool:
        instance = _existing(instance, step)
        spec = obj.spec
        connection = pub.Connection(
            engine=ENGINE, host=instance.host or "", port=int(instance.port or 3306),
            dbname=instance.db_name or spec.database_name, username=instance.master_username)
        pub.publish(self.vault, self.consul, vault_path=spec.vault_path,
                    consul_prefix=spec.consul_prefix, connection=connection)
        was = obj.status.get("phase")
        report.set(**policy.instance_status(instance), vaultPath=spec.vault_path,
                   consulPrefix=spec.consul_prefix, observedGeneration=obj.generation, checks=0)
        rotation = policy.rotation_state(obj)
        if spec.password_rotation_schedule and not rotation.get("lastScheduledAt"):
            # First sight of a schedule: the next due time rotates, not one already past.
            rotation["lastScheduledAt"] = rfc3339(arm(spec.password_rotation_schedule, report.now))
            report.set(passwordRotation=rotation)
        report.phase(policy.READY)
        message = f"{instance.identifier} is available at {instance.host}:{instance.port}"
        if not step.password_managed:
            message += ("; its password is not managed by pgop (adopted): annotate "
                        "pgop.io/reset-password=true to have pgop set one")
        report.condition("Ready", True, "Available", message)
        report.condition("Progressing", False, "Available", "nothing to change")
        report.condition("Degraded", False, "Available", "")
        if was != policy.READY:
            report.event(NORMAL, "Ready", message)
        report.check_again_in(self.resync_seconds)
        return False

    def _wait(self, step: Wait, obj: MysqlDbObject, instance: DbInstance | None,
              identifier: str, report: Report) -> bool:
        instance = _existing(instance, step)
        checks = int(obj.status.get("checks") or 0)
        report.set(**policy.instance_status(instance), checks=checks + 1)
        report.phase(step.phase)
        report.condition("Progressing", True, step.reason, step.message)
        if step.phase == policy.CREATING:
            # A database being modified usually still serves; Ready keeps its last value then.
            report.condition("Ready", False, step.reason, step.message)
        report.check_again_in(policy.backoff(checks, base=self.poll_seconds,
                                             cap=max(self.poll_seconds * 8, 120.0)))
        return False

    def _degrade(self, step: Degrade | Refuse, obj: MysqlDbObject, instance: DbInstance | None,
                 identifier: str, report: Report) -> bool:
        """Degrade (something outside the spec) and Refuse (the spec itself): say so, do nothing."""
        failed = isinstance(step, Refuse) and not obj.status.get("dbInstanceIdentifier")
        previous = {c.get("type"): c for c in obj.status.get("conditions") or []}.get("Degraded", {})
        report.phase(policy.FAILED if failed else policy.DEGRADED)
        report.condition("Degraded", True, step.reason, step.message)
        report.condition("Ready", False, step.reason, step.message)
        report.condition("Progressing", False, step.reason, step.message)
        if instance is not None and policy.is_ours(obj, instance):
            report.set(**policy.instance_status(instance))
        if previous.get("reason") != step.reason or previous.get("status") != "True":
            report.event(WARNING, step.reason, step.message)
        report.check_again_in(self.resync_seconds)
        if isinstance(step, Refuse):
            report.set(lastError=step.message)
            report.plan.permanent = step.message
        return False

    def _reset_password(self, step: ResetPassword, obj: MysqlDbObject, instance: DbInstance | None,
                        identifier: str, report: Report) -> bool:
        """Vault first (as pendingPassword), then RDS, then promote: no crash loses the password."""
        instance = _existing(instance, step)
        path = obj.spec.vault_path
        current = self.vault.read(path)
        data = dict(current.data or {})
        version = current.version
        pending = data.get("pendingPassword")
        if not pending:
            pending = self.generate_password()
            version = self.vault.write(path, {**data, "pendingPassword": pending}, cas=version)
        self.rds.set_master_password(instance.identifier, pending)
        data.pop("pendingPassword", None)
        self.vault.write(path, {**data, "username": instance.master_username, "password": pending},
                         cas=version)
        report.event(NORMAL, "PasswordReset",
                     f"new master password for {instance.identifier} stored in Vault at {path}")
        return True

    def _fault(self, report: Report, reason: str, message: str, retryable: bool, attempt: int) -> None:
        report.set(lastError=message, faults=attempt + 1)
        if retryable:
            delay = policy.backoff(attempt, base=FAULT_BACKOFF_BASE, cap=FAULT_BACKOFF_CAP)
            report.condition("Progressing", True, reason, f"{message}; retrying in {delay:.0f}s")
            if report.status.get("phase") in (policy.READY, policy.DEGRADED):
                report.condition("Degraded", True, reason, message)
                report.phase(policy.DEGRADED)
            elif not report.status.get("phase"):
                report.phase(policy.PENDING)
            report.check_again_in(delay)
            report.plan.requeue_after = delay
        else:
            report.phase(policy.DEGRADED if report.status.get("dbInstanceIdentifier") else policy.FAILED)
            report.condition("Ready", False, reason, message)
            report.condition("Degraded", True, reason, message)
            report.condition("Progressing", False, reason, message)
            report.event(WARNING, reason, message)
            report.plan.permanent = message

    # --- delete ------------------------------------------------------------------------------------

    def finalize(self, obj: MysqlDbObject, *, attempt: int = 0) -> Plan:
        report = Report(obj, self.clock())
        identifier = policy.target_identifier(obj, scope=self.scope)
        try:
            for _ in range(MAX_STEPS_PER_PASS):
                instance = self.rds.describe(identifier)
                step = policy.deletion_step(obj, instance)
                if isinstance(step, BlockDeletion):
                    previous = {c.get("type"): c for c in obj.status.get("conditions") or []}
                    if previous.get("DeletionBlocked", {}).get("status") != "True":
                        report.event(WARNING, step.reason, step.message)
                    report.condition("DeletionBlocked", True, step.reason, step.message)
                    report.plan.requeue_after = max(self.poll_seconds, 10.0)
                    return report.plan
                report.condition("DeletionBlocked", False, "Deleting", "")
                report.phase(policy.DELETING)
                if not self._perform_deletion(step, obj, instance, report, attempt):
                    return report.plan
            report.plan.requeue_after = self.poll_seconds
        except (RdsError, pub.PublishError) as error:
            self._deletion_fault(report, error.reason, str(error), error.retryable, attempt)
        return report.plan

    def _perform_deletion(self, step: DeletionStep, obj: MysqlDbObject, instance: DbInstance | None,
                          report: Report, attempt: int) -> bool:
        """Do one deletion step; True when the pass should go on with a fresh look at the instance."""
        perform = _DELETION_STEPS.get(type(step))
        if perform is None:
            raise AssertionError(f"unknown deletion step {step!r}")
        return perform(self, step, obj, instance, report, attempt)

    def _disable_deletion_protection(self, step: DisableDeletionProtection, obj: MysqlDbObject,
                                     instance: DbInstance | None, report: Report, attempt: int) -> bool:
        instance = _existing(instance, step)
        self.rds.modify(instance.identifier, {"DeletionProtection": False, "ApplyImmediately": True})
        return True

    def _delete_instance(self, step: DeleteInstance, obj: MysqlDbObject, instance: DbInstance | None,
                         report: Report, attempt: int) -> bool:
        instance = _existing(instance, step)
        self.rds.delete(instance.identifier, final_snapshot=step.final_snapshot,
                        delete_automated_backups=step.delete_automated_backups)
        if step.final_snapshot:
            report.set(finalSnapshotIdentifier=step.final_snapshot)
            report.event(NORMAL, "FinalSnapshot",
                         f"deleting {instance.identifier} with final snapshot {step.final_snapshot}")
        else:
            report.event(NORMAL, "Deleting", f"deleting {instance.identifier} without snapshot")
        return True

    def _wait_for_deletion(self, step: WaitForDeletion, obj: MysqlDbObject, instance: DbInstance | None,
                           report: Report, attempt: int) -> bool:
        report.condition("Progressing", True, "Deleting", step.message)
        report.plan.requeue_after = policy.backoff(attempt, base=self.poll_seconds, cap=120.0)
        return False

    def _release_instance(self, step: ReleaseInstance, obj: MysqlDbObject, instance: DbInstance | None,
                          report: Report, attempt: int) -> bool:
        instance = _existing(instance, step)
        spec = obj.spec
        self.rds.remove_tags(instance.arn, step.tag_keys)
        report.event(NORMAL, "Retained",
                     f"left DB instance {instance.identifier} in place (deletionPolicy Retain); "
                     f"Vault {spec.vault_path} and Consul {spec.consul_prefix} kept")
        report.plan.finished = True
        return False

    def _unpublish(self, step: Unpublish, obj: MysqlDbObject, instance: DbInstance | None,
                   report: Report, attempt: int) -> bool:
        spec = obj.spec
        pub.unpublish(self.vault, self.consul, vault_path=spec.vault_path,
                      consul_prefix=spec.consul_prefix)
        report.event(NORMAL, "Unpublished",
                     f"removed Vault {spec.vault_path} and Consul {spec.consul_prefix}")
        report.plan.finished = True
        return False

    def _leave_unpublished(self, step: LeaveUnpublished, obj: MysqlDbObject, instance: DbInstance | None,
                           report: Report, attempt: int) -> bool:
        report.condition("Degraded", True, step.reason, step.message)
        report.event(WARNING, step.reason, step.message)
        report.plan.finished = True
        return False

    def _finished(self, step: Finished, obj: MysqlDbObject, instance: DbInstance | None,
                  report: Report, attempt: int) -> bool:
        report.plan.finished = True
        return False

    def _deletion_fault(self, report: Report, reason: str, message: str, retryable: bool, attempt: int) -> None:
        # Deletion keeps trying either way: giving up would leave the object stuck with no signal.
        report.set(lastError=message)
        report.condition("Progressing", True, reason, message)
        if not retryable:
            report.event(WARNING, reason, message)
        report.plan.requeue_after = policy.backoff(attempt, base=FAULT_BACKOFF_BASE,
                                                   cap=FAULT_BACKOFF_CAP if retryable else 600.0)


def _existing(instance: DbInstance | None, step: object) -> DbInstance:
    """The instance a step acts on: rds.policy returns such a step only for one that exists."""
    if instance is None:
        raise AssertionError(f"{step!r} without a DB instance")
    return instance


# Step type -> the method that performs it: (controller, step, obj, instance, identifier, report) -> go on?
_STEPS: Mapping[type, Callable[[MysqlDbController, Any, MysqlDbObject, DbInstance | None, str, Report], bool]] = {
    Create: MysqlDbController._create,
    Restore: MysqlDbController._restore,
    SetRestoredPassword: MysqlDbController._set_restored_password,
    RotatePassword: MysqlDbController._rotate_password,
    PromotePassword: MysqlDbController._promote_password,
    Claim: MysqlDbController._claim,
    ResetPassword: MysqlDbController._reset_password,
    Modify: MysqlDbController._modify,
    Publish: MysqlDbController._publish,
    Wait: MysqlDbController._wait,
    Degrade: MysqlDbController._degrade,
    Refuse: MysqlDbController._degrade,
}

# Deletion step type -> its method: (controller, step, obj, instance, report, attempt) -> go on?
# BlockDeletion is not here: finalize stops on it before anything is marked as deleting.
_DELETION_STEPS: Mapping[type, Callable[[MysqlDbController, Any, MysqlDbObject, DbInstance | None, Report, int],
                                        bool]] = {
    DisableDeletionProtection: MysqlDbController._disable_deletion_protection,
    DeleteInstance: MysqlDbController._delete_instance,
    WaitForDeletion: MysqlDbController._wait_for_deletion,
    ReleaseInstance: MysqlDbController._release_instance,
    Unpublish: MysqlDbController._unpublish,
    LeaveUnpublished: MysqlDbController._leave_unpublished,
    Finished: MysqlDbController._finished,
}


def build_controller(config: OperatorConfig) -> MysqlDbController:
    """The controller wired to the services named in the operator's configuration."""
    rds = Rds.connect(region=config.aws_region, endpoint_url=config.rds_endpoint,
                      retry_mode=config.aws_retry_mode, max_attempts=config.aws_max_attempts)
    vault, consul_kv = pub.connect_from_config(config)
    return MysqlDbController(rds, vault, consul_kv, scope=config.cluster_name,
                             poll_seconds=config.rds_poll_seconds,
                             resync_seconds=config.rds_resync_seconds,
                             adopt_namespaces=config.rds_adopt_namespaces)
