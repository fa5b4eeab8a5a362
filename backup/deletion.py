"""What deleting a PgBackup by hand does to its base backup in S3 (spec.deletionPolicy). Pure: the
handler (pgop.backup.handlers) reads the cluster and the S3 catalog, asks here, then acts.

- Retain (the default): nothing. The backup stays in S3, `pgop backups` lists it, a restore can use
  it, and retention counts it (pgop.backup.retention.confirm_with_catalog) and removes it when its
  rules drop it. No finalizer is put on such a PgBackup.
- Delete: a finalizer removes the backup's own objects (its backup.json first, then its prefix:
  pgop.backup.pruning.delete_backup), and nothing else. Archived WAL is retention's: which segments
  a kept backup needs is decided over the whole catalog, where it already is.

Where Delete keeps the data all the same (an Event says why, the PgBackup goes):
- the cluster is gone or being deleted: PgBackups it owns go with it, and deleting a cluster must
  never take its backups along (restoring a deleted cluster is what they are for);
- the backup is the cluster's only completed backup in the catalog: without it the archive's WAL
  restores nothing. The annotation `pgop.io/backup-deletion: force` deletes it anyway;
- `pgop.io/backup-deletion: skip`: the PgBackup goes at once, S3 is not touched.
When S3 cannot be reached, the finalizer retries; after DELETE_PATIENCE since the deletion was asked
for it lets the PgBackup go and says what was left in S3, so a namespace never hangs on a gone S3.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pgop.backup.catalog import Backup

RETAIN = "Retain"
DELETE = "Delete"
POLICIES = (RETAIN, DELETE)

ANNOTATION = "pgop.io/backup-deletion"
FORCE = "force"
SKIP = "skip"

DELETE_PATIENCE = 600.0  # seconds of S3 errors before the PgBackup goes and its data stays
RETRY_DELAY = 30.0

# What the step does.
REMOVE = "remove"  # delete the backup's objects from S3
KEEP = "keep"  # leave S3 as it is; the PgBackup goes

# Event reasons.
REASON_DELETED = "BackupDeletedFromS3"
REASON_KEPT = "BackupKeptInS3"
REASON_GAVE_UP = "BackupDeletionGaveUp"


def deletion_policy(body: Mapping[str, Any]) -> str:
    """spec.deletionPolicy, with the CRD's default."""
    return (body.get("spec") or {}).get("deletionPolicy") or RETAIN


def deletes_from_s3(body: Mapping[str, Any]) -> bool:
    return deletion_policy(body) == DELETE


def override(body: Mapping[str, Any]) -> str | None:
    value = ((body.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
    return value.strip().lower() if isinstance(value, str) and value.strip() else None


@dataclass(frozen=True)
class Step:
    action: str  # REMOVE | KEEP
    reason: str  # the Event's
    message: str


def decide(name: str, *, cluster: str, cluster_present: bool, catalog: Iterable[Backup] | None,
           annotation: str | None, has_archive: bool = True) -> Step:
    """What the finalizer of PgBackup `name` (policy Delete) does. `catalog`: the cluster's backups
    as S3 lists them (None when the cluster is not present or has no archive: S3 is not read then)."""
    if annotation not in (None, FORCE, SKIP):
        return Step(KEEP, REASON_KEPT, f"the annotation {ANNOTATION}: {annotation!r} is neither {FORCE!r} nor "
                                       f"{SKIP!r}; backup {name} stays in S3 (remove it there by hand if need be)")
    if annotation == SKIP:
        return Step(KEEP, REASON_KEPT, f"{ANNOTATION}: {SKIP}: backup {name} stays in S3, not looked at")
    if not cluster_present:
        return Step(KEEP, REASON_KEPT, f"PgCluster {cluster} is gone or being deleted: backup {name} stays in S3, "
                                       "restorable into a new cluster (bootstrap.recovery); deleting a cluster "
                                       "never deletes its backups")
    if not has_archive:
        return Step(KEEP, REASON_KEPT, f"PgCluster {cluster} has no spec.backup.s3 (any more): where backup {name} "
                                       "is cannot be told; it stays in S3")
    completed = [b for b in catalog or () if b.completed]
    others = [b for b in completed if b.backup_name != name]
    mine = len(others) != len(completed)
    if mine and not others and annotation != FORCE:
        return Step(KEEP, REASON_KEPT, f"backup {name} is the only completed backup of {cluster} in S3: without it "
                                       "the archived WAL restores nothing, so it stays (annotate the PgBackup "
                                       f"{ANNOTATION}=force before deleting it to remove it all the same)")
    what = "the only completed backup, as forced" if mine and not others else \
        "a completed backup" if mine else "not a completed backup in the catalog: whatever objects it left"
    return Step(REMOVE, REASON_DELETED, f"deletionPolicy Delete: removing backup {name} from S3 ({what}); "
                                        "archived WAL is left to retention")


def give_up(deletion_timestamp: datetime | None, now: datetime, patience: float = DELETE_PATIENCE) -> bool:
    """After `patience` seconds of failing to reach S3, the finalizer lets the PgBackup go."""
    return deletion_timestamp is not None and (now - deletion_timestamp).total_seconds() >= patience


def gave_up_message(name: str, s3_path: str, error: str, patience: float = DELETE_PATIENCE) -> str:
    return (f"could not remove backup {name} from S3 for {patience / 60:.0f} minutes ({error}); the PgBackup goes, "
            f"its objects stay at {s3_path or 'its prefix in the archive'} (retention or a person removes them)")
