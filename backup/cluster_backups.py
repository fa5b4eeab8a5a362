"""The backup part of the cluster controller: schedule and retention (pgop.backup.plan, pure) applied,
the S3 side of retention carried out first, and what the PgCluster status says about backups.

Retention removes a dropped backup from S3 before its PgBackup object: were it the other way
round, an interruption would leave data in S3 that nothing lists for deletion any more. When S3
cannot be reached, the PgBackup objects stay and the next pass tries again.

The S3 side runs off the reconcile pass (RetentionJobs): a pass that finds backups to drop starts
the pruning in a small pool of its own and goes on; a later pass (every 2 s while retention has
work: the cluster is not quiet) takes the outcome and deletes the PgBackups S3 confirmed. A long
archive's pruning never holds a handler thread or the cluster's lock.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
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


class RetentionJobs:
    """Retention's S3 work per cluster, in a pool of its own (at most WORKERS clusters at once):
    `outcome` starts it, and hands back its result (a ConfirmedRetention, or the exception it
    raised) to the first pass that asks for the same dropped backups once it is done."""

    WORKERS = 2

    def __init__(self, workers: int = WORKERS) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="retention")
        self._lock = threading.Lock()
        self._running: set[tuple[str, str]] = set()
        self._done: dict[tuple[str, str], tuple[frozenset[str], ConfirmedRetention | Exception]] = {}
        self._forgotten: set[tuple[str, str]] = set()  # deleted while its work ran: keep no outcome

    def outcome(self, key: tuple[str, str], dropped: frozenset[str],
                work: Callable[[], ConfirmedRetention]) -> ConfirmedRetention | Exception | None:
        """The finished pruning of exactly `dropped` for cluster `key` (taken: it is handed out
        once), else None: `work` runs now unless it already does. A result for other backups
        (retention decided again meanwhile) is dropped and the work starts anew: what it removed
        is gone from the S3 catalog, and the next confirmation counts it so."""
        with self._lock:
            done = self._done.pop(key, None)
            if done is not None and done[0] == dropped:
                return done[1]
            if key in self._running:
                return None
            self._running.add(key)
            self._forgotten.discard(key)
        log.info("retention of %s/%s: removing %s from S3 in the background", *key, ", ".join(sorted(dropped)))
        self._pool.submit(self._run, key, dropped, work)
        return None

    def running(self, key: tuple[str, str]) -> bool:
        with self._lock:
            return key in self._running

    def forget(self, key: tuple[str, str]) -> None:
        """The cluster `key` is deleted: its outcome is dropped, now or when its work ends (an
        operator that outlives many clusters keeps none of theirs)."""
        with self._lock:
            self._done.pop(key, None)
            if key in self._running:
                self._forgotten.add(key)

    def kept(self) -> int:
        """How many clusters this holds anything of (running or an outcome not taken)."""
        with self._lock:
            return len(self._running | set(self._done))

    def _run(self, key: tuple[str, str], dropped: frozenset[str], work: Callable[[], ConfirmedRetention]) -> None:
        result: ConfirmedRetention | Exception
        try:
            result = work()
        except Exception as error:  # noqa: BLE001 - handed to the next pass, which warns
            result = error
        with self._lock:
            self._running.discard(key)
            if key in self._forgotten:
                self._forgotten.discard(key)
            else:
                self._done[key] = (dropped, result)


RETENTION = RetentionJobs()


def reconcile_backups(kube: Any, cluster: Cluster, created_at: str | None, now: datetime,
                      apply: Callable[[Plan], None], warn: Callable[[str, str], None],
                      jobs: RetentionJobs = RETENTION) -> tuple[Plan, list[dict]]:
    """Plan the cluster's backups, prune S3 for what retention drops (in `jobs`, off this pass),
    apply. Returns the plan (its .status for the PgCluster) and the PgBackups as they were read."""
    pgbackups = kube.list("PgBackup", cluster.namespace)
    plan, retention = plan_backups(cluster, pgbackups, now, created_at=parse_time(created_at))
    dropped = [a for a in plan if a.verb == DELETE]
    if dropped:
        outcome = jobs.outcome((cluster.namespace, cluster.name), frozenset(a.name for a in dropped),
                               lambda: _prune(kube, cluster, retention, now))
        if outcome is None:  # S3 pruning under way: the PgBackups stay until it is done
            plan[:] = [a for a in plan if a not in dropped]
        elif isinstance(outcome, Exception):  # S3 down or credentials wrong: keep the objects, try again
            warn("RetentionFailed", f"retention could not remove {', '.join(a.name for a in dropped)} from "
                                    f"S3 ({describe_error(outcome)}); the PgBackups stay until it can")
            plan[:] = [a for a in plan if a not in dropped]  # the PgBackups stay for the next pass
        else:
            for name, why in outcome.refused.items():
                warn("RetentionRefused", f"retention keeps backup {name}: {why}")
            keep = [a for a in dropped if a.name not in outcome.pgbackup_deletes]
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
