"""The backup part of the cluster controller: schedule and retention (pgop.backup.plan, pure) applied,
the S3 side of retention carried out first, and what the PgCluster status says about backups.

Retention removes a dropped backup from S3 before its PgBackup object: were it the other way
round, an interruption would leave data in S3 that nothing lists for deletion any more. When S3
cannot be reached, the PgBackup objects stay and the next pass tries again.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pgop.backup.catalog import COMPLETED, FAILED
from pgop.backup.plan import plan_backups
from pgop.backup.retention import ConfirmedRetention, RetentionDecision, apply_retention, confirm_with_catalog
from pgop.backup.s3 import describe_error
from pgop.kernel.actions import DELETE, Plan
from pgop.kernel.conditions import parse_time, set_condition
from pgop.kernel.model import Cluster

log = logging.getLogger("pgop.backup")

Obj = Mapping[str, Any]
CONDITION = "LastBackupSucceeded"


def _finished_at(body: Obj) -> tuple:
    status = body.get("status") or {}
    meta = body.get("metadata") or {}
    return (status.get("completedAt") or status.get("startedAt") or meta.get("creationTimestamp") or "",
            meta.get("name", ""))


def backup_status(cluster: Cluster, pgbackups: Sequence[Obj]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(status.lastBackup, the LastBackupSucceeded condition) from the cluster's PgBackups: the most
    recent one, and the most recent that finished."""
    own = [b for b in pgbackups if (b.get("spec") or {}).get("cluster") == cluster.name
           and not (b.get("metadata") or {}).get("deletionTimestamp")]
    if not own:
        return None, None
    latest = max(own, key=lambda b: ((b.get("metadata") or {}).get("creationTimestamp") or "", _finished_at(b)))
    status = latest.get("status") or {}
    last = {"name": latest["metadata"]["name"], "phase": status.get("phase") or "Pending"}
    for key in ("startedAt", "completedAt", "endLSN", "sizeBytes", "s3Path", "error"):
        if status.get(key) is not None:
            last[key] = status[key]
    finished = [b for b in own if (b.get("status") or {}).get("phase") in (COMPLETED, FAILED)]
    if not finished:
        return last, None
    done = max(finished, key=_finished_at)
    done_status = done.get("status") or {}
    name = done["metadata"]["name"]
    if done_status.get("phase") == COMPLETED:
        condition = {"type": CONDITION, "status": "True", "reason": "BackupCompleted",
                     "message": f"base backup {name} completed at {done_status.get('completedAt')} "
                                f"({done_status.get('sizeBytes')} bytes in S3)"}
    else:
        condition = {"type": CONDITION, "status": "False", "reason": "BackupFailed",
                     "message": f"base backup {name} failed: {done_status.get('error') or 'see its status'}"}
    return last, condition


def merge_backup_status(cluster: Cluster, pgbackups: Sequence[Obj], plan: Plan, status: dict[str, Any],
                        now: datetime) -> None:
    """What the PgCluster status says of backups (the plan's status, lastBackup and the
    LastBackupSucceeded condition), merged into `status` in place."""
    status.update(plan.status)
    last, condition = backup_status(cluster, pgbackups)
    if last is not None:
        status["lastBackup"] = last
    if condition is not None:
        status["conditions"] = set_condition(status.get("conditions"), condition, now=now,
                                             generation=cluster.generation)


def reconcile_backups(kube: Any, cluster: Cluster, created_at: str | None, now: datetime,
                      apply: Callable[[Plan], None], warn: Callable[[str, str], None]) -> tuple[Plan, list[dict]]:
    """Plan the cluster's backups, prune S3 for what retention drops, apply. Returns the plan
    (its .status for the PgCluster) and the PgBackups as they were read."""
    pgbackups = kube.list("PgBackup", cluster.namespace)
    plan, retention = plan_backups(cluster, pgbackups, now, created_at=parse_time(created_at))
    dropped = [a for a in plan if a.verb == DELETE]
    if dropped:
        try:
            confirmed = _prune(kube, cluster, retention, now)
        except Exception as error:  # S3 down or credentials wrong: keep the objects, try again
            warn("RetentionFailed", f"retention could not remove {', '.join(a.name for a in dropped)} from "
                                    f"S3 ({describe_error(error)}); the PgBackups stay until it can")
            plan[:] = [a for a in plan if a not in dropped]  # the PgBackups stay for the next pass
        else:
            for name, why in confirmed.refused.items():
                warn("RetentionRefused", f"retention keeps backup {name}: {why}")
            keep = [a for a in dropped if a.name not in confirmed.pgbackup_deletes]
            plan[:] = [a for a in plan if a not in keep]
    apply(plan)
    return plan, pgbackups


def _prune(kube: Any, cluster: Cluster, retention: RetentionDecision | None, now: datetime) -> ConfirmedRetention:
    """Retention in S3, as far as the S3 catalog confirms what the PgBackup statuses say
    (pgop.backup.retention.confirm_with_catalog). Returns what was confirmed."""
    from pgop.backup import pruning
    from pgop.backup.access import archive_of, retention_storage_for
    from pgop.backup.basebackup import list_backups
    backup = cluster.spec.backup
    if backup is None or backup.s3 is None or retention is None:  # retention drops backups only of a cluster that has them
        raise ValueError(f"PgCluster {cluster.namespace}/{cluster.name} has no spec.backup.s3 and retention")
    s3 = backup.s3
    storage = retention_storage_for(kube, cluster.namespace, s3, max_attempts=2, connect_timeout=3, read_timeout=30)
    layout = archive_of(cluster.name, s3, cluster.namespace, cluster.archive_layout)
    catalog = list_backups(storage, layout.path, cluster.name, layout.namespace)
    confirmed = confirm_with_catalog(retention, apply_retention(catalog, backup.retention, now), catalog)
    pruning.prune(storage, layout, confirmed.s3_deletes, confirmed.oldest_wal_needed)
    return confirmed
