"""Streaming replication, seen from both ends: the reads and writes.

On the primary: pg_stat_replication, the physical slots, and creating and dropping them. On a
replica: pg_stat_wal_receiver. What the slots and synchronous_standby_names should be is pure
and lives in `streaming`; what to do is decided in `ha`.
"""
from __future__ import annotations

import logging

import psycopg

# The pure side, still reachable here under its old names.
from pgop.agent.streaming import SLOT_PREFIX as SLOT_PREFIX
from pgop.agent.streaming import ReceiverState as ReceiverState
from pgop.agent.streaming import Slot as Slot
from pgop.agent.streaming import Standby as Standby
from pgop.agent.streaming import cluster_members as cluster_members
from pgop.agent.streaming import is_managed_slot as is_managed_slot
from pgop.agent.streaming import slot_changes as slot_changes
from pgop.agent.streaming import synchronous_names as synchronous_names
from pgop.agent.streaming import wanted_slots as wanted_slots

log = logging.getLogger(__name__)


def read_standbys(conn: psycopg.Connection) -> list[Standby]:
    rows = conn.execute(
        "SELECT application_name, state, sync_state, sent_lsn::text, flush_lsn::text, replay_lsn::text"
        " FROM pg_stat_replication ORDER BY application_name").fetchall()
    return [Standby(*row) for row in rows]


def read_slots(conn: psycopg.Connection) -> list[Slot]:
    rows = conn.execute(
        "SELECT slot_name, active, restart_lsn::text, wal_status FROM pg_replication_slots"
        " WHERE slot_type = 'physical' ORDER BY slot_name").fetchall()
    return [Slot(*row) for row in rows]


def create_slot(conn: psycopg.Connection, name: str) -> None:
    # Reserve WAL at once: the replica that will use it may still be cloning.
    try:
        conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (name,))
        log.info("created replication slot %s", name)
    except psycopg.errors.DuplicateObject:
        pass


def drop_slot(conn: psycopg.Connection, name: str) -> None:
    try:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
        log.info("dropped replication slot %s", name)
    except psycopg.errors.UndefinedObject:
        pass


def read_receiver(conn: psycopg.Connection) -> ReceiverState:
    row = conn.execute("SELECT status, received_tli, sender_host FROM pg_stat_wal_receiver").fetchone()
    return ReceiverState(*row) if row else ReceiverState(None, None, None)


# What the replication role may do besides streaming, so that no network login needs the
# superuser: pg_rewind against the primary (read its files, its pg_control), the probe before it
# (a checkpoint), and the WAL switch after a backup taken from a replica.
REPLICATION_ROLE_FUNCTIONS = (
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
    "pg_catalog.pg_control_system()",
    "pg_catalog.pg_control_checkpoint()",
    "pg_catalog.pg_switch_wal()",
)


def grant_replication_role_rights(conn: psycopg.Connection, role: str) -> None:
    """Idempotent; run by the primary (a grant on a replica arrives with the WAL). Its commits do
    not wait for a synchronous standby: with synchronousMode required and none streaming, they
    would hold the agent's loop (and its heartbeat) until one does. A grant lost in a failover is
    made again by the next primary's agent, once per postmaster start."""
    from psycopg import sql
    conn.execute("SET synchronous_commit = local")  # this session only
    for function in REPLICATION_ROLE_FUNCTIONS:
        conn.execute(sql.SQL(f"GRANT EXECUTE ON FUNCTION {function} TO {{}}").format(sql.Identifier(role)))
    # CHECKPOINT without the superuser: the predefined role of PostgreSQL 15 and later.
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'pg_checkpoint'").fetchone():
        conn.execute(sql.SQL("GRANT pg_checkpoint TO {}").format(sql.Identifier(role)))
