"""One read of what runs: the `actual` side of the agent's decision (the data is in `observed`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import psycopg
from psycopg.abc import Query

from pgop.agent import replication
from pgop.agent.config import PENDING_RESTART_QUERY

# The data, still reachable here under its old names.
from pgop.agent.observed import Archiver as Archiver
from pgop.agent.observed import PostgresState as PostgresState
from pgop.kernel.model import PRIMARY, REPLICA

ARCHIVER_QUERY = ("SELECT archived_count, last_archived_wal, last_archived_time,"
                  " failed_count, last_failed_wal, last_failed_time FROM pg_stat_archiver")


def one_row(conn: psycopg.Connection, query: Query) -> tuple[Any, ...]:
    """The row of a query that always returns exactly one (a view of one row, function calls)."""
    row = conn.execute(query).fetchone()
    if row is None:
        raise RuntimeError(f"no row from {query!r}")
    return row


def read_archiver(conn: psycopg.Connection) -> Archiver:
    return Archiver(*one_row(conn, ARCHIVER_QUERY))


def with_archive_refusal(state: PostgresState, pgdata: Path) -> PostgresState:
    """The state with the reason wal-push last refused the archive (another database system's
    marker), which pg_stat_archiver cannot say: archive_command left it in PGDATA."""
    if state.archiver is None or state.role != PRIMARY:
        return state
    from pgop.backup.marker import last_refusal
    refusal = last_refusal(pgdata)
    if refusal is None:
        return state
    return dataclasses.replace(state, archiver=dataclasses.replace(state.archiver, refusal=refusal))


def read_state(conn: psycopg.Connection) -> PostgresState:
    in_recovery, start_time, system_identifier, sync_names = one_row(
        conn, "SELECT pg_is_in_recovery(), pg_postmaster_start_time()::text,"
        " (SELECT system_identifier::text FROM pg_control_system()),"
        " current_setting('synchronous_standby_names')")
    pending = frozenset(row[0] for row in conn.execute(PENDING_RESTART_QUERY).fetchall())
    # pg_file_settings parses the files anew: what postgres refuses of them (a bad value). A
    # restart-only setting waiting for its restart shows there too; pending_restart covers it.
    config_errors = tuple(
        f"{name or 'line ' + str(line)}: {error}" for name, line, error in conn.execute(
            "SELECT name, sourceline, error FROM pg_file_settings WHERE error IS NOT NULL AND"
            " (name IS NULL OR name NOT IN (SELECT name FROM pg_settings WHERE pending_restart))"
            " ORDER BY sourceline").fetchall())
    slots = tuple(replication.read_slots(conn))
    archiver = read_archiver(conn)
    if not in_recovery:
        lsn, walfile = one_row(
            conn, "SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())")
        # The WAL file name starts with the timeline it is written on: exact right after a
        # promotion, when pg_control_checkpoint() still shows the old one.
        return PostgresState(
            accepting=True, role=PRIMARY, timeline=int(walfile[:8], 16), lsn=lsn,
            start_time=start_time, system_identifier=system_identifier, pending_restart=pending,
            synchronous_standby_names=sync_names, standbys=tuple(replication.read_standbys(conn)),
            slots=slots, config_errors=config_errors, archiver=archiver,
        )
    received, replayed, checkpoint_tli, recovery_tli, conninfo = one_row(
        conn, "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,"
        " (SELECT timeline_id FROM pg_control_checkpoint()),"
        " (SELECT min_recovery_end_timeline FROM pg_control_recovery()), current_setting('primary_conninfo')")
    receiver = replication.read_receiver(conn)
    # Without a receiver, pg_control's timelines (they lag behind a switch until a restartpoint).
    return PostgresState(
        accepting=True, role=REPLICA, timeline=receiver.received_tli or max(checkpoint_tli, recovery_tli or 0),
        lsn=replayed, received_lsn=received, primary_conninfo=conninfo, start_time=start_time,
        system_identifier=system_identifier, pending_restart=pending,
        synchronous_standby_names=sync_names, slots=slots, receiver=receiver, config_errors=config_errors,
        archiver=archiver,
    )
