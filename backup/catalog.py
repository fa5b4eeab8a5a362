"""The backup catalog: one metadata document (JSON) next to each base backup in S3, and the choice
of the base backup a point-in-time restore starts from.

The document is what `pgop backups <cluster>` lists and what a restore reads, so a cluster deleted
together with its PgBackup objects can still be restored; a person on a bad day reads it with
the AWS CLI. It is plain JSON with a `format` name and a `formatVersion`:

- a reader accepts fields it does not know (a newer pgop may add some) and refuses a document of
  a higher format version with a message saying so, instead of misreading it;
- `systemIdentifier` is a string: it is a 64-bit number, beyond what JSON readers keep exactly;
- times are RFC 3339 in UTC, LSNs as PostgreSQL prints them ('0/3000060'), WAL segments by name.

Restore semantics (`choose_backup`): a base backup is usable for a target once it is consistent,
i.e. at its end (endLSN, reached at completedAt). The recoverable range thus starts at the end of
the oldest completed backup (the first recoverability point) and runs to the end of the archived
WAL, which only the archive knows; a target before the range is refused with the range in the
message.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pgop.kernel.conditions import parse_time, rfc3339
from pgop.kernel.lsn import format_lsn, parse_lsn

FORMAT = "pgop.io/backup"
FORMAT_VERSION = 1

PENDING = "Pending"
RUNNING = "Running"
COMPLETED = "Completed"
FAILED = "Failed"


class CatalogError(ValueError):
    """A metadata document that cannot be read (says which field and why)."""


class RestoreTargetError(ValueError):
    """No base backup fits the restore target; the message gives the recoverable range."""


def _timestamp(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return rfc3339(moment)


@dataclass(frozen=True)
class Backup:
    """One base backup: the catalog document, or the status of a PgBackup read the same way."""

    cluster: str
    backup_name: str
    phase: str = COMPLETED
    system_identifier: str | None = None
    timeline: int | None = None
    begin_lsn: str | None = None
    end_lsn: str | None = None
    begin_wal: str | None = None
    end_wal: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    size_bytes: int | None = None
    compression: str | None = None
    pg_version: int | None = None
    files: tuple[Mapping[str, Any], ...] = field(default=(), compare=False)
    s3_path: str | None = None
    # {"algorithm": ..., "keyId": ...} when base.tar.zst is encrypted (pgop.backup.encryption); the
    # key id names the key without revealing it. None: not encrypted.
    encryption: Mapping[str, str] | None = field(default=None, compare=False)

    @property
    def key_id(self) -> str | None:
        """The id of the key the backup was encrypted with, None for an unencrypted one."""
        return str(self.encryption.get("keyId") or "") or None if self.encryption else None

    @property
    def name(self) -> str:
        return self.backup_name

    @property
    def completed(self) -> bool:
        """Usable for a restore: finished, with the end position a restore must reach."""
        return self.phase == COMPLETED and self.completed_at is not None and bool(self.end_lsn)

    @property
    def end_time(self) -> datetime:
        """When a completed backup became consistent (CatalogError for one that did not)."""
        if self.completed_at is None:
            raise CatalogError(f"backup {self.backup_name} has no completedAt")
        return self.completed_at

    @property
    def end_position(self) -> int:
        """The end LSN of a completed backup as a number (CatalogError for one without it)."""
        if not self.end_lsn:
            raise CatalogError(f"backup {self.backup_name} has no endLSN")
        return parse_lsn(self.end_lsn)

    # ---------------------------------------------------------------- the document in S3
    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "format": FORMAT,
            "formatVersion": FORMAT_VERSION,
            "cluster": self.cluster,
            "backupName": self.backup_name,
            "phase": self.phase,
            "systemIdentifier": None if self.system_identifier is None else str(self.system_identifier),
            "timeline": self.timeline,
            "beginLSN": self.begin_lsn,
            "endLSN": self.end_lsn,
            "beginWal": self.begin_wal,
            "endWal": self.end_wal,
            "startedAt": _timestamp(self.started_at),
            "completedAt": _timestamp(self.completed_at),
            "sizeBytes": self.size_bytes,
            "compression": self.compression,
            "pgVersion": self.pg_version,
            "files": [dict(entry) for entry in self.files],
        }
        if self.s3_path:
            document["s3Path"] = self.s3_path
        if self.encryption:
            document["encryption"] = dict(self.encryption)
        return document

    def to_json(self) -> str:
        """The document, stable byte for byte for equal backups (sorted keys, one per line)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Backup:
        if not isinstance(document, Mapping):
            raise CatalogError("a backup metadata document must be a JSON object")
        if document.get("format") != FORMAT:
            raise CatalogError(f"not a pgop backup metadata document (format {document.get('format')!r}, "
                               f"expected {FORMAT!r})")
        version = document.get("formatVersion")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CatalogError(f"formatVersion must be a positive integer, not {version!r}")
        if version > FORMAT_VERSION:
            raise CatalogError(f"written by a newer pgop (format version {version}); this pgop reads "
                               f"format version {FORMAT_VERSION}: upgrade pgop to read it")
        for key in ("cluster", "backupName"):
            if not isinstance(document.get(key), str) or not document[key]:
                raise CatalogError(f"{key} is missing")
        files = document.get("files") or []
        if not isinstance(files, list) or not all(isinstance(f, Mapping) and f.get("name") for f in files):
            raise CatalogError("files must be a list of objects with a name")
        return cls(
            cluster=document["cluster"],
            backup_name=document["backupName"],
            phase=document.get("phase") or COMPLETED,
            system_identifier=_text(document.get("systemIdentifier")),
            timeline=_integer(document, "timeline"),
            begin_lsn=_lsn(document, "beginLSN"),
            end_lsn=_lsn(document, "endLSN"),
            begin_wal=document.get("beginWal") or None,
            end_wal=document.get("endWal") or None,
            started_at=_time(document, "startedAt"),
            completed_at=_time(document, "completedAt"),
            size_bytes=_integer(document, "sizeBytes"),
            compression=document.get("compression") or None,
            pg_version=_integer(document, "pgVersion"),
            files=tuple(dict(entry) for entry in files),
            s3_path=document.get("s3Path") or None,
            encryption=_encryption(document.get("encryption")),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Backup:
        try:
            document = json.loads(text)
        except (ValueError, UnicodeDecodeError) as error:
            raise CatalogError(f"backup metadata is not JSON: {error}") from None
        return cls.from_dict(document)

    # ---------------------------------------------------------------- a PgBackup object
    @classmethod
    def from_pgbackup(cls, body: Mapping[str, Any]) -> Backup:
        """The same view of a PgBackup object (status fields as the CRD names them)."""
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        timeline = status.get("timeline")
        size = status.get("sizeBytes")
        return cls(
            cluster=spec.get("cluster", ""),
            backup_name=meta.get("name", ""),
            phase=status.get("phase") or PENDING,
            timeline=_lenient(int, timeline),
            begin_lsn=_lenient(_normal_lsn, status.get("beginLSN")),
            end_lsn=_lenient(_normal_lsn, status.get("endLSN")),
            begin_wal=status.get("beginWal") or None,
            end_wal=status.get("endWal") or None,
            started_at=_lenient(parse_time, status.get("startedAt")),
            completed_at=_lenient(parse_time, status.get("completedAt")),
            size_bytes=_lenient(int, size),
            s3_path=status.get("s3Path") or None,
        )


def _encryption(value: Any) -> dict[str, str] | None:
    if value in (None, {}):
        return None
    if not isinstance(value, Mapping) or not value.get("keyId") or not value.get("algorithm"):
        raise CatalogError("encryption must be an object with algorithm and keyId")
    return {"algorithm": str(value["algorithm"]), "keyId": str(value["keyId"])}


def _normal_lsn(text: str) -> str:
    return format_lsn(parse_lsn(text))


def _lenient(read: Callable[[Any], Any], value: Any) -> Any:
    # A status field that does not read as what it should is unknown, not a crash of the
    # controller: a backup without a readable end is simply not restorable.
    if value is None or value == "":
        return None
    try:
        return read(value)
    except (ValueError, TypeError, AttributeError):
        return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _integer(document: Mapping[str, Any], key: str) -> int | None:
    value = document.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise CatalogError(f"{key} must be an integer, not {value!r}")
    return value


def _lsn(document: Mapping[str, Any], key: str) -> str | None:
    value = document.get(key)
    if not value:
        return None
    try:
        return format_lsn(parse_lsn(value))
    except (ValueError, TypeError):
        raise CatalogError(f"{key} is not an LSN: {value!r}") from None


def _time(document: Mapping[str, Any], key: str) -> datetime | None:
    try:
        return parse_time(document.get(key))
    except (ValueError, TypeError, AttributeError):
        raise CatalogError(f"{key} is not an RFC 3339 time with a zone: {document.get(key)!r}") from None


# ------------------------------------------------------------------------ choosing a base backup

def completed_backups(backups: Iterable[Backup]) -> list[Backup]:
    """The backups a restore may start from, oldest first (by end, then end LSN, then name)."""
    done = [b for b in backups if b.completed]
    return sorted(done, key=lambda b: (b.end_time, b.end_position, b.backup_name))


def first_recoverability_point(backups: Iterable[Backup]) -> datetime | None:
    """The earliest time a point-in-time restore can target: the end of the oldest completed
    backup (None without one)."""
    done = completed_backups(backups)
    return done[0].completed_at if done else None


def _range_text(done: Sequence[Backup], by_lsn: bool) -> str:
    first, last = done[0], done[-1]
    if by_lsn:
        start = f"LSN {first.end_lsn} (end of {first.backup_name})"
    else:
        start = f"{_timestamp(first.completed_at)} (end of {first.backup_name})"
    return (f"available: {start} to the end of the archived WAL; {len(done)} completed backup(s), "
            f"the latest {last.backup_name} completed {_timestamp(last.completed_at)}")


def choose_backup(
    backups: Iterable[Backup],
    target_time: datetime | str | None = None,
    target_lsn: str | None = None,
    *,
    name: str | None = None,
    now: datetime | None = None,
) -> Backup:
    """The base backup a restore starts from: the latest completed one that ends at or before the
    target (targetTime or targetLSN), or the latest completed one without a target.

    `name` (spec.bootstrap.recovery.backup) picks a backup by name; it must be completed and end
    before the target. `now`, when given, refuses a targetTime in the future (PostgreSQL would stop
    with "recovery ended before configured recovery target was reached").
    Raises RestoreTargetError with the recoverable range.
    """
    if target_time is not None and target_lsn is not None:
        raise RestoreTargetError("set at most one of targetTime and targetLSN")
    everything = list(backups)
    done = completed_backups(everything)
    if not done:
        unfinished = [f"{b.backup_name} ({b.phase})" for b in everything]
        detail = f": {', '.join(unfinished)}" if unfinished else ""
        raise RestoreTargetError(f"no completed base backup to restore from{detail}")

    if isinstance(target_time, str):
        try:
            target_time = parse_time(target_time)
        except ValueError:
            raise RestoreTargetError(f"targetTime {target_time!r} is not an RFC 3339 time with a zone, "
                                     "such as 2026-11-22T03:00:00Z") from None
    if target_time is not None and target_time.tzinfo is None:
        raise RestoreTargetError(f"targetTime {target_time!r} has no time zone")
    target_position = None
    if target_lsn is not None:
        try:
            target_position = parse_lsn(target_lsn)
        except ValueError as error:
            raise RestoreTargetError(f"targetLSN: {error}") from None
    if target_time is not None and now is not None and target_time > now:
        raise RestoreTargetError(f"targetTime {_timestamp(target_time)} is in the future (now is "
                                 f"{_timestamp(now)}); {_range_text(done, False)}")

    def fits(backup: Backup) -> bool:
        if target_time is not None:
            return backup.end_time <= target_time
        if target_position is not None:
            return backup.end_position <= target_position
        return True

    if name is not None:
        chosen = [b for b in everything if b.backup_name == name]
        if not chosen:
            names = ", ".join(b.backup_name for b in done)
            raise RestoreTargetError(f"backup {name!r} is not in the catalog; completed backups: {names}")
        backup = chosen[0]
        if not backup.completed:
            raise RestoreTargetError(f"backup {name!r} is {backup.phase}, not Completed; "
                                     f"{_range_text(done, target_position is not None)}")
        if not fits(backup):
            target = (f"targetTime {_timestamp(target_time)}" if target_time is not None
                      else f"targetLSN {target_lsn}")
            end = (_timestamp(backup.completed_at) if target_time is not None else f"LSN {backup.end_lsn}")
            raise RestoreTargetError(f"{target} is before the end of backup {name!r} ({end}): a restore "
                                     f"can only move forward from a backup; choose an older backup or none")
        return backup

    candidates = [b for b in done if fits(b)]
    if candidates and target_position is not None:
        return max(candidates, key=lambda b: (b.end_position, b.end_time, b.backup_name))
    if candidates:
        return candidates[-1]
    if target_time is not None:
        raise RestoreTargetError(
            f"targetTime {_timestamp(target_time)} is before the first recoverability point "
            f"{_timestamp(done[0].completed_at)}; {_range_text(done, False)}")
    by_lsn = sorted(done, key=lambda b: (b.end_position, b.end_time, b.backup_name))
    raise RestoreTargetError(
        f"targetLSN {target_lsn} is before the first recoverability point LSN {by_lsn[0].end_lsn}; "
        f"{_range_text(by_lsn, True)}")
