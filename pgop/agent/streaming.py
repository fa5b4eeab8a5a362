"""Streaming replication, pure: what a primary's slots and synchronous_standby_names should be.

One physical slot per other instance of the cluster (so a replica that falls behind or restarts
finds its WAL kept, and a former primary finds its slot after a failover), and
`synchronous_standby_names` as a quorum over the replicas. The rows read from Postgres are plain
data here; `replication` reads and writes them, `ha` decides with them.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pgop.kernel import pgconfig
from pgop.kernel.model import Instance

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
    wal_status: str | None = None  # pg_replication_slots.wal_status: 'lost' once invalidated


LOST = "lost"


@dataclass(frozen=True)
class ReceiverState:
    """pg_stat_wal_receiver on a replica: whom it streams from, and up to where."""
    status: str | None
    received_tli: int | None
    sender_host: str | None


def is_managed_slot(name: str) -> bool:
    """Slots the agent made; any other (a user's logical slot, a backup tool's) is never touched."""
    return name.startswith(SLOT_PREFIX)


def cluster_members(me: str, instances: Iterable[Instance]) -> list[Instance]:
    """The other instances of the cluster that are not being deleted."""
    return [i for i in instances if i.name != me and not i.deleting]


def wanted_slots(me: str, instances: Iterable[Instance]) -> frozenset[str]:
    return frozenset(pgconfig.slot_name(i.name) for i in cluster_members(me, instances))


def slot_changes(wanted: frozenset[str], existing: Iterable[Slot]) -> tuple[list[str], list[str]]:
    """(slots to create, slots to drop): only managed slots are ever dropped. A wanted slot that
    max_slot_wal_keep_size invalidated (wal_status 'lost') is dropped and made again: a replica
    refuses to stream through it, and it catches up from the archive (restore_command) instead,
    then streams through the new one."""
    existing = list(existing)
    have = {slot.name for slot in existing}
    lost = {slot.name for slot in existing if slot.name in wanted and slot.wal_status == LOST
            and not slot.active and is_managed_slot(slot.name)}
    create = sorted((wanted - have) | lost)
    drop = sorted({name for name in have - wanted if is_managed_slot(name)} | lost)
    return create, drop


def synchronous_names(synchronous_replicas: int, mode: str, me: str, instances: Iterable[Instance],
                      standbys: Sequence[Standby]) -> str:
    replicas = [i.name for i in cluster_members(me, instances)]
    streaming = [s.application_name for s in standbys if s.state == "streaming"]
    return pgconfig.synchronous_standby_names(synchronous_replicas, mode, replicas, streaming)
