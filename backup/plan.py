"""What the cluster controller does about backups: (PgCluster, its PgBackups, now) -> actions.

Pure, like pgop.cluster.plan: the handler lists the PgBackups of the cluster (label pgop.io/cluster),
calls plan_backups, applies the actions in order, then merges `plan.status` into the PgCluster
status. Planning again against the result yields no actions and no status change.

Decisions:
- A scheduled PgBackup is named after the due time (`<cluster>-<YYYYMMDDHHMM>`) and carries the
  due time in the annotation pgop.io/scheduled-at. The last scheduled due time is the later of
  status.lastScheduledBackupTime and those annotations, so neither a lost status write nor a
  retried creation makes a second backup for one due time.
- A due time that arrives while a backup of the cluster is Pending or Running waits for it (two
  base backups of one cluster at once only slow each other and the database); it is not lost:
  the backup is created once the other one ends, still for the latest due time.
- On first sight of a schedule nothing is backed up at once: the latest past due time is
  remembered and the next one fires (see backup.schedule). Pass `created_at` (the PgCluster's
  creationTimestamp) so a due time missed between creation and the first reconcile still fires.
- A schedule cron refuses creates nothing; `plan.permanent` names the field, for a condition.
- Retention counts every PgBackup of the cluster (scheduled or made by hand) and deletes the
  PgBackup objects it drops, with a uid precondition; removing their data and the WAL before
  the retention decision's `oldest_wal_needed` from S3 is the backup controller's business.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pgop.backup.catalog import PENDING, RUNNING, Backup
from pgop.backup.retention import RetentionDecision, apply_retention, first_recoverability_point
from pgop.kernel import hibernation
from pgop.kernel.actions import CREATE, DELETE, Action, Plan
from pgop.kernel.conditions import parse_time
from pgop.kernel.conditions import rfc3339 as timestamp
from pgop.kernel.lsn import lag_bytes
from pgop.kernel.meta import cluster_labels, object_meta, owner_reference
from pgop.kernel.model import API_VERSION, PRIMARY, REPLICA, Cluster, Instance, with_sync_states_from_primary
from pgop.kernel.readiness import is_ready
from pgop.kernel.schedule import arm, due_run, scheduled_backup_name, validate_schedule

KIND = "PgBackup"
LABEL_ORIGIN = "pgop.io/backup-origin"
ORIGIN_SCHEDULE = "schedule"
ANNOTATION_SCHEDULED_AT = "pgop.io/scheduled-at"
STATUS_LAST_SCHEDULED = "lastScheduledBackupTime"
STATUS_FIRST_RECOVERABILITY_POINT = "firstRecoverabilityPoint"
PREFER_REPLICA = "prefer-replica"
TARGET_PRIMARY = "primary"

Obj = Mapping[str, Any]


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _scheduled_at(obj: Obj) -> datetime | None:
    try:
        return parse_time((_meta(obj).get("annotations") or {}).get(ANNOTATION_SCHEDULED_AT))
    except ValueError:
        return None


def build_scheduled_backup(cluster: Cluster, due: datetime) -> dict[str, Any]:
    """The PgBackup for one due time of the cluster's schedule."""
    backup = cluster.spec.backup
    name = scheduled_backup_name(cluster.name, due)
    labels = cluster_labels(cluster.name) | {LABEL_ORIGIN: ORIGIN_SCHEDULE}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": object_meta(name, cluster.namespace, labels,
                                owner=owner_reference("PgCluster", cluster.name, cluster.uid),
                                annotations={ANNOTATION_SCHEDULED_AT: timestamp(due)}),
        "spec": {
            "cluster": cluster.name,
            "method": "basebackup",
            "target": backup.target if backup else PREFER_REPLICA,
            "deletionPolicy": backup.deletion_policy if backup else "Retain",
        },
    }


def plan_backups(
    cluster: Cluster, pgbackups: Sequence[Obj], now: datetime, *, created_at: datetime | None = None
) -> tuple[Plan, RetentionDecision | None]:
    """Create the PgBackup of a due schedule and delete the PgBackups retention drops. Returns the
    plan (its status: what to merge into PgCluster.status once it is applied; `permanent`: a
    schedule that cannot run) and the retention decision (None without spec.backup.retention)."""
    plan = Plan()
    retention: RetentionDecision | None = None
    backup = cluster.spec.backup
    if cluster.deleting or backup is None or backup.s3 is None:
        return plan, retention
    own = [b for b in pgbackups
           if (b.get("spec") or {}).get("cluster") == cluster.name
           and _meta(b).get("namespace", cluster.namespace) == cluster.namespace]
    live = [b for b in own if not _meta(b).get("deletionTimestamp")]

    if backup.schedule:
        _plan_schedule(cluster, backup.schedule, own, live, now, created_at, plan)

    backups = [Backup.from_pgbackup(body) for body in live]
    if backup.retention is not None:
        decision = retention = apply_retention(backups, backup.retention, now)
        by_name = {_meta(body).get("name"): body for body in live}
        for dropped in decision.delete:
            body = by_name[dropped.backup_name]
            plan.append(Action(DELETE, KIND, dropped.backup_name, cluster.namespace,
                               decision.reasons[dropped.backup_name], uid=_meta(body).get("uid") or None))
        kept = decision.keep
    else:
        kept = backups
    first = first_recoverability_point(kept)
    wanted = timestamp(first) if first is not None else None  # None: removed by the merge patch
    if cluster.status.get(STATUS_FIRST_RECOVERABILITY_POINT) != wanted:
        plan.status[STATUS_FIRST_RECOVERABILITY_POINT] = wanted
    return plan, retention


def _plan_schedule(cluster: Cluster, schedule: str, own: Sequence[Obj], live: Sequence[Obj], now: datetime,
                   created_at: datetime | None, plan: Plan) -> None:
    error = validate_schedule(schedule)
    if error is not None:
        plan.permanent = error
        plan.waiting.append(f"no scheduled backups: {error}")
        return
    try:
        remembered = parse_time(cluster.status.get(STATUS_LAST_SCHEDULED))
    except ValueError:
        remembered = None
    candidates = [t for t in [remembered, *(_scheduled_at(b) for b in own)] if t is not None]
    last = max(candidates) if candidates else None
    if last is not None and last != remembered:
        plan.status[STATUS_LAST_SCHEDULED] = timestamp(last)  # a status write that was lost
    if last is None:
        if created_at is None:
            plan.status[STATUS_LAST_SCHEDULED] = timestamp(arm(schedule, now))
            return
        last = created_at

    due = due_run(schedule, last, now)
    if due is None:
        return
    name = scheduled_backup_name(cluster.name, due)
    if any(_meta(b).get("name") == name for b in own):
        plan.status[STATUS_LAST_SCHEDULED] = timestamp(due)
        return
    if hibernation.holds(cluster):
        plan.status[STATUS_LAST_SCHEDULED] = timestamp(due)  # skipped, not made up for on waking
        plan.waiting.append(f"the backup due at {timestamp(due)} is skipped: the cluster is hibernated")
        return
    busy = [b for b in live if ((b.get("status") or {}).get("phase") or PENDING) in (PENDING, RUNNING)]
    if busy:
        names = ", ".join(sorted(_meta(b).get("name", "") for b in busy))
        plan.waiting.append(f"the backup due at {timestamp(due)} waits for {names} to finish")
        return
    body = build_scheduled_backup(cluster, due)
    plan.append(Action(CREATE, KIND, name, cluster.namespace,
                       f"scheduled base backup due at {timestamp(due)} ({schedule})", body=body))
    plan.status[STATUS_LAST_SCHEDULED] = timestamp(due)


# ------------------------------------------------------------------------ where a backup runs

def _fenced(instance: Instance) -> bool:
    return instance.spec.fenced or instance.status.phase == "Fenced"


def choose_backup_target(
    instances: Sequence[Instance], target: str = PREFER_REPLICA, *, now: datetime | None = None
) -> Instance | None:
    """The instance to take a base backup from, or None when none can serve it now.

    prefer-replica: the ready, streaming replica (seen by the primary: syncState set) on the
    primary's timeline with the least lag; on equal lag an async replica before a synchronous one
    (a backup's read load there does not slow commits), then the lowest ordinal. The primary when
    no replica qualifies. primary: the primary only. With `now`, ready also means a fresh heartbeat.
    """
    def ready(instance: Instance) -> bool:
        return is_ready(instance, now) if now is not None else instance.status.ready

    live = [i for i in with_sync_states_from_primary(instances) if not i.deleting and not _fenced(i) and ready(i)]
    primaries = [i for i in live if i.spec.role == PRIMARY and i.status.role == PRIMARY]
    primary = min(primaries, key=lambda i: i.ordinal) if primaries else None
    if target == TARGET_PRIMARY:
        return primary

    def streaming(instance: Instance) -> bool:
        if instance.spec.role != REPLICA or instance.status.role != REPLICA or not instance.status.sync_state:
            return False
        if primary is None:
            return True
        timelines = (primary.status.timeline, instance.status.timeline)
        return None in timelines or timelines[0] == timelines[1]

    replicas = [i for i in live if streaming(i)]
    if not replicas:
        return primary

    def preference(instance: Instance) -> tuple[Any, ...]:
        lag = lag_bytes(primary.status.lsn, instance.status.lsn) if primary is not None else None
        synchronous = instance.status.sync_state in ("sync", "quorum")
        return (lag is None, lag or 0, synchronous, instance.ordinal)

    return min(replicas, key=preference)
