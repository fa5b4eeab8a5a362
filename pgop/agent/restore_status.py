"""A restore's progress in its PgInstance's status.restore, and its attempts on the volume.

The bootstrap pod writes status.restore (pgop.backup.recovery_progress.RestoreProgress) every
few seconds while it unpacks and replays, and at once when the phase changes; `pgop restore`
and `pgop status` show it. A failed write costs a progress figure, never the restore.

Attempts are counted in a file next to PGDATA (like the bootstrap marker, outside it), keyed by
spec.recovery: a restore that failed MAX_ATTEMPTS times is not tried again (nothing is wiped any
more), and status.restore says Failed with the last error. Changing spec.recovery (another
backup, target or timeline) or giving the instance a new volume starts counting anew.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pgop.backup.recovery_progress import Attempts, RestoreProgress

log = logging.getLogger(__name__)

REPORT_INTERVAL = 2.0
STATUS_KEYS = ("phase", "backup", "bytesTotal", "bytesRestored", "walFilesRestored", "lastWal", "consistentAt",
               "replayLSN", "target", "attempt", "message")


class RestoreReporter:
    """`store`: the PgInstance store, or a function that makes one (called at the first report;
    a store that cannot be made, e.g. no API server outside a pod, costs the reports only)."""

    def __init__(self, store: Any, instance: str, interval: float = REPORT_INTERVAL):
        self.store, self.instance, self.interval = store, instance, interval
        self._last = float("-inf")
        self._phase: str | None = None
        self._warned = False

    def __call__(self, progress: RestoreProgress) -> None:
        now = time.monotonic()
        if progress.phase == self._phase and now - self._last < self.interval:
            return
        self._last, self._phase = now, progress.phase
        shown = progress.to_status()
        # A merge patch: keys this report has not are removed (None), not left from an earlier one.
        status = {"restore": {key: shown.get(key) for key in STATUS_KEYS}}
        try:
            if callable(self.store) and not hasattr(self.store, "patch_status"):
                self.store = self.store()
            self.store.patch_status(self.instance, status)
        except Exception as error:  # progress is a courtesy
            if not self._warned:
                log.warning("cannot report restore progress on PgInstance %s: %s", self.instance, error)
                self._warned = True


def attempts_file(pgdata: Path) -> Path:
    return pgdata.parent / f".{pgdata.name}.pgop-restore-attempts.json"


def load_attempts(pgdata: Path) -> Attempts | None:
    try:
        data = json.loads(attempts_file(pgdata).read_text())
        return Attempts(str(data["spec"]), int(data["count"]), data.get("last_error"), bool(data.get("final", False)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_attempts(pgdata: Path, attempts: Attempts, owner: tuple[int, int] | None = None) -> None:
    from pgop.agent.credentials import write_private
    write_private(attempts_file(pgdata), json.dumps(asdict(attempts)) + "\n", owner)
