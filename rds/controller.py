"""The MysqlDb controller's effects: ask rds.policy what to do, do it, report it.

Kept apart from kopf so the whole loop runs in integration tests against the moto server, Vault and
Consul without a Kubernetes API. A pass performs immediate steps (create, claim, modify, publish)
until it reaches one that needs time (RDS still creating) or a person (degraded, refused); it never
sleeps. What to report is returned as an Outcome; rds/handlers.py turns it into a status patch,
Events and kopf retries.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pgop.rds import policy
from pgop.rds.aws import DbInstance, Rds, RdsError
from pgop.rds.policy import (
    BlockDeletion,
    Claim,
    Create,
    Degrade,
    DeleteInstance,
    DisableDeletionProtection,
    Finished,
    Modify,
    Publish,
    Refuse,
    ReleaseInstance,
    ResetPassword,
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


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Outcome:
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    retry_after: float | None = None  # a fault that should heal: retry after this many seconds
    permanent: str | None = None  # a failure only a person can fix
    done: bool = False  # deletion finished: the finalizer may go

    @property
    def error(self) -> str | None:
        return self.permanent or (self.status.get("lastError") if self.retry_after else None)


class Report:
    """Accumulates status changes and events during one pass."""

    def __init__(self, obj: MysqlDbObject, now: datetime):
        self.obj = obj
        self.now = now
        self.stamp = policy.now_iso(now)
        self.out = Outcome()
        self._conditions = list(obj.status.get("conditions") or [])

    @property
    def status(self) -> dict[str, Any]:
        return {**self.obj.status, **self.out.status}

    def set(self, **fields: Any) -> None:
        self.out.status.update(fields)

    def condition(self, type_: str, status: bool, reason: str, message: str) -> None:
        self._conditions = policy.set_condition(
            self._conditions, type_, status, reason, message,
            now=self.stamp, generation=self.obj.generation)
        self.out.status["conditions"] = self._conditions

    def event(self, type_: str, reason: str, message: str) -> None:
        self.out.events.append(Event(type_, reason, message))

    def check_again_in(self, seconds: float) -> None:
        self.set(nextCheckAt=policy.now_iso(self.now + timedelta(seconds=seconds)))

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
    ):
        self.rds = rds
        self.vault = vault
        self.consul = consul_kv
        self.scope = scope
        self.poll_seconds = poll_seconds
        self.resync_seconds = resync_seconds
        self.clock = clock
        self.generate_password = generate_password

    # --- create / update / resume / timer --------------------------------------------------------

    def reconcile(self, obj: MysqlDbObject, *, attempt: int | None = None) -> Outcome:
        """One pass towards the spec. `attempt` counts consecutive faults (for the backoff)."""
        if attempt is None:
            attempt = int(obj.status.get("faults") or 0)
        report = Report(obj, self.clock())
        identifier = policy.target_identifier(obj, scope=self.scope)
        report.set(lastError=None)
        try:
            for _ in range(MAX_STEPS_PER_PASS):
                current = dataclasses.replace(obj, status=report.status)
                instance = self.rds.describe(identifier)
                password_in_vault = None
                if (instance is not None and instance.status in policy.USABLE_STATES
                        and (policy.is_ours(current, instance) or current.adopt_identifier)):
                    password_in_vault = pub.has_password(self.vault, obj.spec.vault_path)
                step = policy.next_step(current, instance, identifier=identifier,
                                        password_in_vault=password_in_vault)
                if not self._perform(step, current, instance, identifier, report):
                    break
            else:
                report.check_again_in(self.poll_seconds)
            report.set(faults=0)
        except RdsError as error:
            self._fault(report, error.reason, str(error), error.retryable, attempt)
        except pub.PublishError as error:
            self._fault(report, error.reason, str(error), error.retryable, attempt)
        return report.out

    def _perform(self, step: Any, obj: MysqlDbObject, instance: DbInstance | None,
                 identifier: str, report: Report) -> bool:
        """Do one step; True when the pass should go on with a fresh look at the instance."""
        spec = obj.spec
        if isinstance(step, Create):
            stored = pub.ensure_master_password(
                self.vault, spec.vault_path, username=policy.MASTER_USERNAME, engine=ENGINE,
                dbname=spec.database_name, generate=self.generate_password)
            # Recorded now, in the same status patch as whatever happens next, so that deletion
            # knows there is a secret to remove even if CreateDBInstance fails.
            report.set(vaultPath=spec.vault_path)
            if stored.created:
                report.event("Normal", "PasswordStored",
                             f"master password stored in Vault at {spec.vault_path} (version {stored.version})")
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
            report.event("Normal", "Creating",
                         f"CreateDBInstance {identifier}: {spec.instance_class}, {spec.storage_gb} GB, "
                         f"MySQL {spec.engine_version}")
            return True

        if isinstance(step, Claim):
            self.rds.add_tags(instance.arn, step.tags)
            report.set(dbInstanceIdentifier=instance.identifier, adopted=True,
                       vaultPath=spec.vault_path, consulPrefix=spec.consul_prefix)
            report.event("Normal", "Adopted", f"took over existing DB instance {instance.identifier}")
            return True

        if isinstance(step, ResetPassword):
            self._reset_password(obj, instance, report)
            return True

        if isinstance(step, Modify):
            changes = step.changes
            if changes.modify:
                self.rds.modify(instance.identifier, changes.modify)
                described = ", ".join(f"{k}={v}" for k, v in sorted(changes.modify.items()))
                report.event("Normal", "Modifying", f"ModifyDBInstance {instance.identifier}: {described}")
                report.condition("Progressing", True, "Modifying", described)
                if report.status.get("phase") == policy.READY:
                    report.phase(policy.MODIFYING)
            if changes.add_tags:
                self.rds.add_tags(instance.arn, changes.add_tags)
            if changes.remove_tags:
                self.rds.remove_tags(instance.arn, changes.remove_tags)
            report.set(appliedTags=dict(spec.tags))
            return True

        if isinstance(step, Publish):
            connection = pub.Connection(
                engine=ENGINE, host=instance.host or "", port=int(instance.port or 3306),
                dbname=instance.db_name or spec.database_name, username=instance.master_username)
            pub.publish(self.vault, self.consul, vault_path=spec.vault_path,
                        consul_prefix=spec.consul_prefix, connection=connection)
            was = obj.status.get("phase")
            report.set(**policy.instance_status(instance), vaultPath=spec.vault_path,
                       consulPrefix=spec.consul_prefix, observedGeneration=obj.generation, checks=0)
            report.phase(policy.READY)
            message = f"{instance.identifier} is available at {instance.host}:{instance.port}"
            if not step.password_managed:
                message += ("; its password is not managed by pgop (adopted): annotate "
                            "pgop.io/reset-password=true to have pgop set one")
            report.condition("Ready", True, "Available", message)
            report.condition("Progressing", False, "Available", "nothing to change")
            report.condition("Degraded", False, "Available", "")
            if was != policy.READY:
                report.event("Normal", "Ready", message)
            report.check_again_in(self.resync_seconds)
            return False

        if isinstance(step, Wait):
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

        if isinstance(step, (Degrade, Refuse)):
            failed = isinstance(step, Refuse) and not obj.status.get("dbInstanceIdentifier")
            previous = {c.get("type"): c for c in obj.status.get("conditions") or []}.get("Degraded", {})
            report.phase(policy.FAILED if failed else policy.DEGRADED)
            report.condition("Degraded", True, step.reason, step.message)
            report.condition("Ready", False, step.reason, step.message)
            report.condition("Progressing", False, step.reason, step.message)
            if instance is not None and policy.is_ours(obj, instance):
                report.set(**policy.instance_status(instance))
            if previous.get("reason") != step.reason or previous.get("status") != "True":
                report.event("Warning", step.reason, step.message)
            report.check_again_in(self.resync_seconds)
            if isinstance(step, Refuse):
                report.set(lastError=step.message)
                report.out.permanent = step.message
            return False

        raise AssertionError(f"unknown step {step!r}")

    def _reset_password(self, obj: MysqlDbObject, instance: DbInstance, report: Report) -> None:
        """Vault first (as pendingPassword), then RDS, then promote: no crash loses the password."""
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
        report.event("Normal", "PasswordReset",
                     f"new master password for {instance.identifier} stored in Vault at {path}")

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
            report.out.retry_after = delay
        else:
            report.phase(policy.DEGRADED if report.status.get("dbInstanceIdentifier") else policy.FAILED)
            report.condition("Ready", False, reason, message)
            report.condition("Degraded", True, reason, message)
            report.condition("Progressing", False, reason, message)
            report.event("Warning", reason, message)
            report.out.permanent = message

    # --- delete ------------------------------------------------------------------------------------

    def finalize(self, obj: MysqlDbObject, *, attempt: int = 0) -> Outcome:
        report = Report(obj, self.clock())
        identifier = policy.target_identifier(obj, scope=self.scope)
        spec = obj.spec
        try:
            for _ in range(MAX_STEPS_PER_PASS):
                instance = self.rds.describe(identifier)
                step = policy.deletion_step(obj, instance)
                if isinstance(step, BlockDeletion):
                    previous = {c.get("type"): c for c in obj.status.get("conditions") or []}
                    if previous.get("DeletionBlocked", {}).get("status") != "True":
                        report.event("Warning", step.reason, step.message)
                    report.condition("DeletionBlocked", True, step.reason, step.message)
                    report.out.retry_after = max(self.poll_seconds, 10.0)
                    return report.out
                report.condition("DeletionBlocked", False, "Deleting", "")
                report.phase(policy.DELETING)
                if isinstance(step, DisableDeletionProtection):
                    self.rds.modify(instance.identifier, {"DeletionProtection": False, "ApplyImmediately": True})
                    continue
                if isinstance(step, DeleteInstance):
                    self.rds.delete(instance.identifier, final_snapshot=step.final_snapshot,
                                    delete_automated_backups=step.delete_automated_backups)
                    if step.final_snapshot:
                        report.set(finalSnapshotIdentifier=step.final_snapshot)
                        report.event("Normal", "FinalSnapshot",
                                     f"deleting {instance.identifier} with final snapshot {step.final_snapshot}")
                    else:
                        report.event("Normal", "Deleting", f"deleting {instance.identifier} without snapshot")
                    continue
                if isinstance(step, WaitForDeletion):
                    report.condition("Progressing", True, "Deleting", step.message)
                    report.out.retry_after = policy.backoff(attempt, base=self.poll_seconds, cap=120.0)
                    return report.out
                if isinstance(step, ReleaseInstance):
                    self.rds.remove_tags(instance.arn, step.tag_keys)
                    report.event("Normal", "Retained",
                                 f"left DB instance {instance.identifier} in place (deletionPolicy Retain); "
                                 f"Vault {spec.vault_path} and Consul {spec.consul_prefix} kept")
                    report.out.done = True
                    return report.out
                if isinstance(step, Unpublish):
                    pub.unpublish(self.vault, self.consul, vault_path=spec.vault_path,
                                  consul_prefix=spec.consul_prefix)
                    report.event("Normal", "Unpublished",
                                  f"removed Vault {spec.vault_path} and Consul {spec.consul_prefix}")
                    report.out.done = True
                    return report.out
                if isinstance(step, Finished):
                    report.out.done = True
                    return report.out
                raise AssertionError(f"unknown deletion step {step!r}")
            report.out.retry_after = self.poll_seconds
        except RdsError as error:
            self._deletion_fault(report, error.reason, str(error), error.retryable, attempt)
        except pub.PublishError as error:
            self._deletion_fault(report, error.reason, str(error), error.retryable, attempt)
        return report.out

    def _deletion_fault(self, report: Report, reason: str, message: str, retryable: bool, attempt: int) -> None:
        # Deletion keeps trying either way: giving up would leave the object stuck with no signal.
        report.set(lastError=message)
        report.condition("Progressing", True, reason, message)
        if not retryable:
            report.event("Warning", reason, message)
        report.out.retry_after = policy.backoff(attempt, base=FAULT_BACKOFF_BASE,
                                                cap=FAULT_BACKOFF_CAP if retryable else 600.0)


def build_controller(config: OperatorConfig) -> MysqlDbController:
    """The controller wired to the services named in the operator's configuration."""
    rds = Rds.connect(region=config.aws_region, endpoint_url=config.rds_endpoint,
                      retry_mode=config.aws_retry_mode, max_attempts=config.aws_max_attempts)
    vault, consul_kv = pub.connect_from_config(config)
    return MysqlDbController(rds, vault, consul_kv, scope=config.cluster_name,
                             poll_seconds=config.rds_poll_seconds,
                             resync_seconds=config.rds_resync_seconds)
