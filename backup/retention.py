"""Which base backups to keep, which to delete, and the oldest WAL still needed.

Rules (spec.backup.retention), over completed backups only:
- `keepLast: N` keeps the N newest completed backups.
- `maxAge: 30d` is a recovery window: every point of the last 30 days stays restorable. It keeps
  the backups completed within the window, plus the newest one completed before it (a restore to
  the window's first minute starts from that one).
- With both, a backup either rule keeps is kept (keepLast is "at least the last N").
- The newest completed backup is never deleted, whatever the rules say: without it nothing can
  be restored.
- Pending and Running backups are neither counted nor deleted. Failed ones never count as kept;
  they are deleted once older than the oldest kept backup (newer failures stay, to be read).
- Without any completed backup nothing is deleted, and no WAL either.

WAL: a restore from a kept backup replays from that backup's beginLSN onwards, and positions only
grow across timelines (a new timeline continues from its branch point). So every segment whose
position is before the oldest kept backup's beginWal is needed by no kept backup, on whatever
timeline it was written; timeline history files are always kept (tiny, and a restore follows them).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pgop.backup.catalog import COMPLETED, FAILED, Backup
from pgop.backup.catalog import first_recoverability_point as _first_point
from pgop.kernel.conditions import rfc3339
from pgop.kernel.lsn import is_segment_name, segment_position, wal_file_name
from pgop.kernel.model import RetentionSpec

_MAX_AGE = re.compile(r"^([1-9][0-9]*)([hdw])$")
_UNIT = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
# A segment (possibly .partial, a .backup label, or compressed: anything after a '.');
# history files ('00000002.history') do not match.


def parse_max_age(text: str) -> timedelta:
    """'12h', '30d', '4w' (the CRD's maxAge format) -> a timedelta."""
    match = _MAX_AGE.match(str(text).strip())
    if match is None:
        raise ValueError(f"spec.backup.retention.maxAge: not a number followed by h, d or w: {text!r}")
    return int(match.group(1)) * _UNIT[match.group(2)]


@dataclass
class RetentionDecision:
    keep: list[Backup] = field(default_factory=list)  # completed, oldest first
    delete: list[Backup] = field(default_factory=list)  # oldest first
    in_progress: list[Backup] = field(default_factory=list)  # Pending/Running: left alone
    oldest_wal_needed: str | None = None  # None: delete no WAL
    reasons: dict[str, str] = field(default_factory=dict)  # backup name -> why it goes

    @property
    def first_recoverability_point(self) -> datetime | None:
        return first_recoverability_point(self.keep)


def first_recoverability_point(kept: Iterable[Backup]) -> datetime | None:
    """The earliest time a restore can target once retention ran: the end of the oldest kept."""
    return _first_point(kept)


def _begin_segment(backup: Backup) -> str | None:
    if backup.begin_wal and is_segment_name(backup.begin_wal):
        return backup.begin_wal.upper()
    if backup.begin_lsn and backup.timeline:
        return wal_file_name(backup.timeline, backup.begin_lsn)
    return None


def _position(segment: str) -> tuple[int, int]:
    position = segment_position(segment)
    if position is None:
        raise ValueError(f"{segment!r} is not a WAL segment name")
    return position


def oldest_wal_needed(kept: Iterable[Backup]) -> str | None:
    """The first segment of the oldest kept backup (by position); None when any kept backup
    does not say where it began (then no WAL may be deleted)."""
    segments = []
    for backup in kept:
        segment = _begin_segment(backup)
        if segment is None:
            return None
        segments.append(segment)
    return min(segments, key=_position) if segments else None


def wal_deletable(name: str, oldest_needed: str | None) -> bool:
    """Whether the archived WAL file `name` (a segment, .partial, .backup label, compressed or not)
    lies before `oldest_needed` on any timeline. History files and unknown names are never."""
    if oldest_needed is None:
        return False
    position = segment_position(name.rsplit("/", 1)[-1])
    if position is None:
        return False
    return position < _position(oldest_needed)


def _age_key(backup: Backup) -> tuple[datetime, int, str]:
    return (backup.end_time, backup.end_position, backup.backup_name)


def apply_retention(backups: Iterable[Backup], retention: RetentionSpec | None, now: datetime) -> RetentionDecision:
    """Split `backups` (any phase) into kept and deleted ones under `retention` at `now`."""
    everything = list(backups)
    decision = RetentionDecision()
    completed = sorted((b for b in everything if b.completed), key=_age_key, reverse=True)  # newest first
    decision.in_progress = [b for b in everything if not b.completed and b.phase != FAILED
                            and b.phase != COMPLETED]
    # A Completed phase without the end it needs is not restorable: treat it like a failure.
    failed = [b for b in everything if b.phase == FAILED or (b.phase == COMPLETED and not b.completed)]
    if not completed:
        return decision

    keep_last = retention.keep_last if retention else None
    max_age = parse_max_age(retention.max_age) if retention and retention.max_age else None
    if keep_last is None and max_age is None:
        kept = set(range(len(completed)))
    else:
        kept = {0}  # the newest completed backup, always
        if keep_last is not None:
            kept.update(range(min(keep_last, len(completed))))
        if max_age is not None:
            window_start = now - max_age
            inside = [i for i, b in enumerate(completed) if b.end_time >= window_start]
            kept.update(inside)
            before = [i for i, b in enumerate(completed) if b.end_time < window_start]
            if before:
                kept.add(before[0])  # the newest before the window: its start stays restorable

    rules = []
    if keep_last is not None:
        rules.append(f"keepLast {keep_last}")
    if max_age is not None and retention is not None:
        rules.append(f"maxAge {retention.max_age}")
    rule_text = " and ".join(rules)
    for index, backup in enumerate(completed):
        if index in kept:
            decision.keep.append(backup)
        else:
            decision.delete.append(backup)
            decision.reasons[backup.backup_name] = (
                f"retention {rule_text}: {index} newer completed backup(s), completed "
                f"{rfc3339(backup.end_time)}")
    decision.keep.reverse()
    decision.delete.reverse()

    oldest_kept = decision.keep[0].end_time
    for backup in failed:
        moment = backup.started_at or backup.completed_at
        if moment is not None and moment < oldest_kept:
            decision.delete.append(backup)
            decision.reasons[backup.backup_name] = (
                f"{'failed' if backup.phase == FAILED else 'unusable'} backup older than the oldest kept backup {decision.keep[0].backup_name}")
    decision.delete.sort(key=lambda b: (b.completed_at or b.started_at, b.backup_name))
    decision.oldest_wal_needed = oldest_wal_needed(decision.keep)
    return decision


# ------------------------------------------------------------------ the S3 catalog has the last word

@dataclass
class ConfirmedRetention:
    """What retention may do once the S3 catalog agrees (see confirm_with_catalog)."""
    s3_deletes: list[str] = field(default_factory=list)  # backup prefixes to remove from S3
    pgbackup_deletes: list[str] = field(default_factory=list)  # PgBackup objects to remove
    oldest_wal_needed: str | None = None  # None: delete no WAL
    refused: dict[str, str] = field(default_factory=dict)  # PgBackup -> why it stays


def _earlier(a: str | None, b: str | None) -> str | None:
    """The earlier of two oldest-needed segments (keeping more); None if either is None."""
    if a is None or b is None:
        return None
    return min(a, b, key=_position)


def confirm_with_catalog(by_status: RetentionDecision, by_catalog: RetentionDecision,
                         catalog: Iterable[Backup]) -> ConfirmedRetention:
    """Retention acts only on what the S3 catalog confirms. PgBackup statuses can be written by
    pods (and were forged in the review of issue 12: a fake newer "Completed" pushes real backups
    out of keepLast; a fake "Failed" marks a real one for deletion); the catalog documents are
    what a restore reads. So:

    - a backup the catalog holds as completed is removed only if retention over the catalog drops
      it too (whatever its PgBackup says); otherwise its PgBackup stays, with the reason;
    - a PgBackup retention drops that has no completed catalog document (a failed or unfinished
      backup) is removed, with whatever partial objects it left;
    - a backup only in the catalog (taken before the cluster was re-created, or whose PgBackup was
      deleted by hand) counts like any other and is removed when the catalog's retention drops it:
      nothing `pgop backups` lists is ever left without the WAL it needs;
    - WAL is pruned only before the earlier of the two decisions' oldest needed segments.
    """
    in_catalog = {b.backup_name for b in catalog if b.completed}
    dropped_by_catalog = {b.backup_name for b in by_catalog.delete}
    out = ConfirmedRetention()
    for backup in by_status.delete:
        name = backup.backup_name
        if name in in_catalog and name not in dropped_by_catalog:
            out.refused[name] = (f"its PgBackup status says {backup.phase}, but the S3 catalog holds it "
                                 "as a completed backup that retention keeps")
            continue
        out.s3_deletes.append(name)
        out.pgbackup_deletes.append(name)
    # Dropped by the catalog only: a backup without a PgBackup, or one whose PgBackup its status
    # keeps. Its S3 data goes (the catalog is what restores read); a PgBackup of it stays, to show
    # what happened, until its own status lets retention drop it.
    out.s3_deletes += sorted(dropped_by_catalog - set(out.s3_deletes))
    out.oldest_wal_needed = _earlier(by_status.oldest_wal_needed, by_catalog.oldest_wal_needed)
    return out
