"""Streaming replication, seen from both ends.

On the primary: one physical slot per other instance of the cluster (so a replica that falls
behind or restarts finds its WAL kept, and a former primary finds its slot after a failover), and
`synchronous_standby_names` as a quorum over the replicas. On a replica: how far it received and
replayed. Reads and writes here; what to do is decided in `ha`.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psycopg

from pgop.kernel import pgconfig
from pgop.kernel.model import Instance

log = logging.getLogger(__name__)

SLOT_PREFIX = "pgop_"


@dataclass(frozen=True)
class Standby:
    """A row of pg_stat_replication: one replica streaming from this primary."""
    application_name: str
    state: str
    sync_state: str
    sent_lsn: str | None = None
    flush_lsn: str | None = None
    replay_lsn: str | None = None


@dataclass(frozen=True)
class Slot:
    name: str
    active: bool
    restart_lsn: str | None = None


def is_managed_slot(name: str) -> bool:
    """Slots the agent made; any other (a user's logical slot, a backup tool's) is never touched."""
    return name.startswith(SLOT_PREFIX)


def cluster_members(me: str, instances: Iterable[Instance]) -> list[Instance]:
    """The other instances of the cluster that are not being deleted."""
    return [i for i in instances if i.name != me and not i.deleting]


def wanted_slots(me: str, instances: Iterable[Instance]) -> frozenset[str]:
    return frozenset(pgconfig.slot_name(i.name) for i in cluster_members(me, instances))


def slot_changes(wanted: frozenset[str], existing: Iterable[Slot]) -> tuple[list[str], list[str]]:
    """(slots to create, slots to drop): only managed slots are ever dropped."""
    have = {slot.name for slot in existing}
    create = sorted(wanted - have)
    drop = sorted(name for name in have - wanted if is_managed_slot(name))
    return create, drop


def synchronous_names(synchronous_replicas: int, mode: str, me: str, instances: Iterable[Instance],
                      standbys: Sequence[Standby]) -> str:
    replicas = [i.name for i in cluster_members(me, instances)]
    streaming = [s.application_name for s in standbys if s.state == "streaming"]
    return pgconfig.synchronous_standby_names(synchronous_replicas, mode, replicas, streaming)


# ---------------------------------------------------------------------------- reads and writes

def read_standbys(conn: psycopg.Connection) -> list[Standby]:
    rows = conn.execute(
        "SELECT application_name, state, sync_state, sent_lsn::text, flush_lsn::text, replay_lsn::text"
        " FROM pg_stat_replication ORDER BY application_name").fetchall()
    return [Standby(*row) for row in rows]


def read_slots(conn: psycopg.Connection) -> list[Slot]:
    rows = conn.execute(
        "SELECT slot_name, active, restart_lsn::text FROM pg_replication_slots"
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


@dataclass(frozen=True)
class ReceiverState:
    """pg_stat_wal_receiver on a replica: whom it streams from, and up to where."""
    status: str | None
    received_tli: int | None
    sender_host: str | None


def read_receiver(conn: psycopg.Connection) -> ReceiverState:
    row = conn.execute("SELECT status, received_tli, sender_host FROM pg_stat_wal_receiver").fetchone()
    return ReceiverState(*row) if row else ReceiverState(None, None, None)
