"""One observation of what runs, as plain data: the `actual` side of the agent's decision.

`state` fills it from Postgres; `ha` and `status` read it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pgop.agent.streaming import ReceiverState, Slot, Standby


@dataclass(frozen=True)
class Archiver:
    """pg_stat_archiver: how archive_command (wal-push) fares on this instance."""
    archived_count: int = 0
    last_archived_wal: str | None = None
    last_archived_time: datetime | None = None
    failed_count: int = 0
    last_failed_wal: str | None = None
    last_failed_time: datetime | None = None
    # Why wal-push last refused this archive (pgop.backup.marker: reason, message), if it did.
    refusal: tuple[str, str] | None = None


@dataclass(frozen=True)
class PostgresState:
    accepting: bool = False
    role: str | None = None  # primary | replica, from pg_is_in_recovery()
    timeline: int | None = None
    lsn: str | None = None  # current WAL (primary) or last replayed (replica)
    received_lsn: str | None = None  # pg_last_wal_receive_lsn() (replica; NULL before any streaming)
    primary_conninfo: str | None = None  # in effect now (replica): what the WAL receiver uses
    start_time: str | None = None  # pg_postmaster_start_time(), as text
    system_identifier: str | None = None
    pending_restart: frozenset[str] = frozenset()
    synchronous_standby_names: str = ""
    standbys: tuple[Standby, ...] = ()
    slots: tuple[Slot, ...] = ()
    receiver: ReceiverState | None = None
    config_errors: tuple[str, ...] = ()  # settings of the files postgres refused
    archiver: Archiver | None = None
    error: str | None = None
