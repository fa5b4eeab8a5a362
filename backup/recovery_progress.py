"""How far a restore has come, and whether it still moves (pure).

A restore has no time limit: a big one replays for hours. What ends it early is the lack of
progress: no new WAL file restored and no replay position gained for STALL_SECONDS. Progress is
read from what the server says anyway: its log names every file restored from the archive
("restored log file ... from archive") and the point where it became consistent; once it accepts
connections, pg_last_wal_replay_lsn() (handed in by the caller) says where replay is.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from pgop.kernel.conditions import REASON_ENCRYPTION_KEY_MISMATCH

STALL_SECONDS = 600.0

# Phases of status.restore.phase (PgInstance)
UNPACKING = "Unpacking"  # the base backup streams into PGDATA
REPLAYING = "Replaying"  # postgres replays archived WAL
COMPLETED = "Completed"
RETRYING = "Retrying"  # an attempt failed; the bootstrap pod tries again
FAILED = "Failed"  # the attempts are used up; nothing is wiped any more

_RESTORED = re.compile(r'restored log file "([0-9A-F]{24})" from archive')
_CONSISTENT = re.compile(r"consistent recovery state reached at ([0-9A-F]+/[0-9A-F]+)")
_REDO_DONE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")


@dataclass(frozen=True)
class RestoreProgress:
    phase: str = UNPACKING
    backup: str | None = None
    bytes_total: int | None = None  # the base backup's tar (catalog sizeBytes)
    bytes_restored: int = 0
    wal_files_restored: int = 0
    last_wal: str | None = None
    consistent_at: str | None = None
    replay_lsn: str | None = None
    target: str | None = None  # what the restore replays to: a time, an LSN, or the end of the archive
    attempt: int = 1
    message: str | None = None

    def to_status(self) -> dict[str, Any]:
        """status.restore of the PgInstance."""
        out: dict[str, Any] = {"phase": self.phase, "bytesRestored": self.bytes_restored,
                               "walFilesRestored": self.wal_files_restored, "attempt": self.attempt}
        for key, value in (("backup", self.backup), ("bytesTotal", self.bytes_total),
                           ("lastWal", self.last_wal), ("consistentAt", self.consistent_at),
                           ("replayLSN", self.replay_lsn), ("target", self.target),
                           ("message", self.message)):
            if value is not None:
                out[key] = value
        return out


def read_server_log(text: str, progress: RestoreProgress) -> RestoreProgress:
    """What the server's log (the whole of it, or what was added since the last read) says."""
    restored = _RESTORED.findall(text)
    changes: dict[str, Any] = {}
    if restored:
        changes["wal_files_restored"] = progress.wal_files_restored + len(restored)
        changes["last_wal"] = restored[-1]
    consistent = _CONSISTENT.findall(text)
    if consistent:
        changes["consistent_at"] = consistent[-1]
    done = _REDO_DONE.findall(text)
    if done:
        changes["replay_lsn"] = done[-1]
    return replace(progress, **changes) if changes else progress


def position(progress: RestoreProgress) -> tuple[Any, ...]:
    """What must change for the restore to count as moving."""
    return (progress.phase, progress.bytes_restored, progress.wal_files_restored, progress.last_wal,
            progress.replay_lsn, progress.consistent_at)


@dataclass(frozen=True)
class Watch:
    """The last position seen and since when (monotonic seconds)."""
    seen: tuple[Any, ...] | None = None
    since: float = 0.0


def watch(previous: Watch, progress: RestoreProgress, now: float) -> Watch:
    current = position(progress)
    if current != previous.seen:
        return Watch(current, now)
    return previous


def stalled(state: Watch, now: float, window: float = STALL_SECONDS) -> bool:
    """True when nothing moved for `window` seconds: the restore is stuck (e.g. a WAL file the
    archive keeps failing to give), not slow."""
    return state.seen is not None and now - state.since >= window


def stall_message(progress: RestoreProgress, window: float) -> str:
    where = f"last WAL file restored {progress.last_wal}" if progress.last_wal else "no WAL file restored yet"
    if progress.replay_lsn:
        where += f", replay at {progress.replay_lsn}"
    return f"recovery made no progress for {window:.0f}s ({where})"


# -------------------------------------------------------------------------- bounded attempts

MAX_ATTEMPTS = 3
RETRY_DELAYS = (10.0, 60.0, 300.0)


@dataclass(frozen=True)
class Attempts:
    """Restore attempts on one volume, for one spec.recovery (a changed spec starts counting anew).
    `final`: the last error is one no further attempt can change (is_final)."""
    spec: str
    count: int = 0
    last_error: str | None = None
    final: bool = False


def is_final(error: str) -> bool:
    """Whether a restore that failed with `error` would fail again however often it is retried:
    the backup is encrypted with a key the restore was not given (the same spec reads the same
    Secret). Such a failure is reported at once, not after the pauses of MAX_ATTEMPTS attempts."""
    return f"{REASON_ENCRYPTION_KEY_MISMATCH}:" in error


def next_attempt(recorded: Attempts | None, spec: str, max_attempts: int = MAX_ATTEMPTS) -> tuple[str, int]:
    """(what to do, attempt number): 'restore' (wipe PGDATA and restore again) or 'give-up' (the
    attempts for this spec are used up: leave the volume alone and say why)."""
    if recorded is None or recorded.spec != spec:
        return "restore", 1
    if recorded.final or recorded.count >= max_attempts:
        return "give-up", recorded.count
    return "restore", recorded.count + 1


def retry_delay(attempt: int) -> float:
    """Seconds to wait before attempt `attempt` (1 = the first: none)."""
    if attempt <= 1:
        return 0.0
    return RETRY_DELAYS[min(attempt - 2, len(RETRY_DELAYS) - 1)]
