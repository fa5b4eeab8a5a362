"""The instance's Prometheus metrics, pure: what the agent saw and what one scrape read -> samples.

Most of it is the agent's own last observation (role, timeline, LSNs, standbys, slots,
pg_stat_archiver: `observed.PostgresState`, at most one heartbeat old); what the HA loop does not
need (lag in seconds, connections, database sizes, transaction ID ages) is read at scrape time by
`exporter`, in the HTTP server's thread, never in the loop. Every sample carries `namespace`,
`cluster` and `pginstance` (a PgInstance name; Prometheus keeps `instance` for the target).

Names follow the Prometheus conventions: the `pgop_` prefix, base units (`_bytes`, `_seconds`),
`_total` for counters, `_timestamp_seconds` for points in time. Nothing here is a secret: names of
databases, replicas, slots and WAL segments, and numbers.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from pgop.agent.observed import PostgresState
from pgop.kernel.lsn import lag_bytes, parse_lsn
from pgop.kernel.model import PRIMARY, REPLICA

IDENTITY = ("namespace", "cluster", "pginstance")


@dataclass(frozen=True)
class ReplicaLag:
    """pg_stat_replication's write_lag, flush_lag and replay_lag of one replica, in seconds (None:
    not measured yet, or nothing to replay since the replica caught up)."""
    replica: str
    write_seconds: float | None = None
    flush_seconds: float | None = None
    replay_seconds: float | None = None


@dataclass(frozen=True)
class Database:
    name: str
    size_bytes: int
    frozen_xid_age: int  # age(datfrozenxid): transactions until VACUUM must freeze (wraparound)


@dataclass(frozen=True)
class Activity:
    """What one scrape read from Postgres itself (None when it could not connect)."""
    connections: dict[str, int] = field(default_factory=dict)  # state ('active', 'idle', ...) -> count
    max_connections: int | None = None
    databases: tuple[Database, ...] = ()
    oldest_transaction_seconds: float = 0.0  # the longest-running open transaction (0: none)
    oldest_xid_age: int = 0  # age of the oldest backend_xid/backend_xmin: what holds back VACUUM
    replica_lags: tuple[ReplicaLag, ...] = ()  # on a primary
    replay_delay_seconds: float | None = None  # on a replica: 0 when all it received is replayed


@dataclass(frozen=True)
class Volume:
    size_bytes: int
    available_bytes: int


@dataclass(frozen=True)
class Scrape:
    """Everything one scrape turns into samples."""
    namespace: str
    cluster: str
    instance: str
    state: PostgresState | None  # the agent's last observation (None before the first)
    activity: Activity | None  # None: postgres did not answer the scrape
    wanted_role: str | None = None  # the PgInstance's spec.role
    fenced: bool = False
    ready: bool = False
    isolated: bool = False
    failed_starts: int = 0
    wal_directory_bytes: int | None = None
    volume: Volume | None = None


def instance_metrics(scrape: Scrape) -> list[Metric]:
    """The samples of one scrape. A metric without a value this time (a replica's lag on a
    primary) is left out rather than written as 0, so an alert on it cannot fire on a wrong role."""
    out = _Builder((scrape.namespace, scrape.cluster, scrape.instance))
    state = scrape.state or PostgresState()
    up = scrape.activity is not None
    out.gauge("pgop_postgres_up", "1 when Postgres answered this scrape, else 0.", int(up))
    out.gauge("pgop_instance_ready", "1 when the agent reports the instance ready (what /readyz says).",
              int(scrape.ready))
    out.gauge("pgop_instance_wanted_primary", "1 when the operator wants this instance to be the primary "
              "(PgInstance spec.role).", int(scrape.wanted_role == PRIMARY))
    out.gauge("pgop_instance_fenced", "1 when the instance is fenced (Postgres kept stopped).", int(scrape.fenced))
    out.gauge("pgop_instance_isolated", "1 when this primary stopped itself: it reached neither the API server "
              "nor a replica.", int(scrape.isolated))
    out.gauge("pgop_instance_failed_starts", "Postgres starts that failed in a row.", scrape.failed_starts)

    running_role = state.role if up else None
    role = out.family("pgop_postgres_role", "The role Postgres runs in now: 1 for the current one.", ["role"])
    for name in (PRIMARY, REPLICA):
        role.add(name, value=int(running_role == name))
    if state.timeline is not None:
        out.gauge("pgop_postgres_timeline", "The timeline Postgres is on.", state.timeline)
    if state.lsn:
        out.gauge("pgop_postgres_wal_position_bytes", "The current WAL position (primary) or the last replayed "
                  "one (replica), as a byte offset.", parse_lsn(state.lsn))
    out.gauge("pgop_postgres_pending_restart_settings", "Settings that wait for a restart of Postgres.",
              len(state.pending_restart))

    if running_role == PRIMARY:
        _primary_replication(out, state, scrape.activity)
    elif running_role == REPLICA:
        _replica_replication(out, state, scrape.activity)
    if up:
        _slots(out, state)
    _archiver(out, state)
    if scrape.activity is not None:
        _activity(out, scrape.activity)
    if scrape.wal_directory_bytes is not None:
        out.gauge("pgop_postgres_wal_directory_bytes", "Bytes of the files in pg_wal.", scrape.wal_directory_bytes)
    if scrape.volume is not None:
        out.gauge("pgop_volume_size_bytes", "Size of the instance's data volume.", scrape.volume.size_bytes)
        out.gauge("pgop_volume_available_bytes", "Bytes of the data volume still available to Postgres.",
                  scrape.volume.available_bytes)
    return out.metrics


def _primary_replication(out: _Builder, state: PostgresState, activity: Activity | None) -> None:
    streaming = out.family("pgop_replication_replica_streaming", "1 for each replica streaming from this primary "
                           "(pg_stat_replication), with its sync state (sync, quorum, potential, async).",
                           ["replica", "sync_state"])
    lag = out.family("pgop_replication_lag_bytes", "How far each replica is behind this primary's current WAL "
                     "position, by stage: sent, flushed (on the replica's disk), replayed.", ["replica", "stage"])
    for standby in state.standbys:
        streaming.add(standby.application_name, standby.sync_state or "", value=int(standby.state == "streaming"))
        for stage, position in (("sent", standby.sent_lsn), ("flush", standby.flush_lsn),
                                ("replay", standby.replay_lsn)):
            behind = lag_bytes(state.lsn, position)
            if behind is not None:
                lag.add(standby.application_name, stage, value=behind)
    out.gauge("pgop_replication_replicas_streaming", "Replicas streaming from this primary.",
              sum(1 for s in state.standbys if s.state == "streaming"))
    if activity is None:
        return
    seconds = out.family("pgop_replication_lag_seconds", "pg_stat_replication's lag of each replica by stage "
                         "(write, flush, replay): the time a commit waited for it; 0 once nothing is pending.",
                         ["replica", "stage"])
    for replica in activity.replica_lags:
        for stage, value in (("write", replica.write_seconds), ("flush", replica.flush_seconds),
                             ("replay", replica.replay_seconds)):
            seconds.add(replica.replica, stage, value=value or 0.0)


def _replica_replication(out: _Builder, state: PostgresState, activity: Activity | None) -> None:
    receiving = state.receiver is not None and state.receiver.status == "streaming"
    out.gauge("pgop_replica_wal_receiver_streaming", "1 when this replica's WAL receiver streams.", int(receiving))
    if state.received_lsn:
        out.gauge("pgop_replica_received_position_bytes", "The last WAL position this replica received.",
                  parse_lsn(state.received_lsn))
        behind = lag_bytes(state.received_lsn, state.lsn)
        if behind is not None:
            out.gauge("pgop_replica_replay_lag_bytes", "WAL this replica received and has not replayed yet.",
                      behind)
    if activity is not None and activity.replay_delay_seconds is not None:
        out.gauge("pgop_replica_replay_delay_seconds", "Age of the last replayed transaction while WAL waits to be "
                  "replayed; 0 when all received WAL is replayed.", activity.replay_delay_seconds)


def _slots(out: _Builder, state: PostgresState) -> None:
    retained = out.family("pgop_replication_slot_retained_wal_bytes", "WAL a physical replication slot keeps in "
                          "pg_wal (current position minus its restart_lsn).", ["slot"])
    active = out.family("pgop_replication_slot_active", "1 while a replica uses the slot.", ["slot"])
    for slot in state.slots:
        active.add(slot.name, value=int(slot.active))
        kept = lag_bytes(state.lsn, slot.restart_lsn)
        if kept is not None:
            retained.add(slot.name, value=kept)


def _archiver(out: _Builder, state: PostgresState) -> None:
    archiver = state.archiver
    if archiver is None:
        return
    out.counter("pgop_archiver_archived", "WAL segments archive_command (wal-push) archived since the "
                "statistics were reset.", archiver.archived_count)
    out.counter("pgop_archiver_failed", "Failed attempts to archive a WAL segment.", archiver.failed_count)
    if archiver.last_archived_time is not None:
        out.gauge("pgop_archiver_last_archived_timestamp_seconds", "When the last WAL segment was archived.",
                  _epoch(archiver.last_archived_time))
    if archiver.last_failed_time is not None:
        out.gauge("pgop_archiver_last_failed_timestamp_seconds", "When archiving a WAL segment last failed.",
                  _epoch(archiver.last_failed_time))
    failing = archiving_failing(archiver.last_archived_time, archiver.last_failed_time)
    out.family("pgop_archiver_failing", "1 while the last archiving attempt failed (after the last success), "
               "with the segment that fails.", ["segment"]).add(
        (archiver.last_failed_wal or "") if failing else "", value=int(failing))


def archiving_failing(last_archived: datetime | None, last_failed: datetime | None) -> bool:
    """pg_stat_archiver fails now when its last failure is later than its last success."""
    if last_failed is None:
        return False
    return last_archived is None or last_failed > last_archived


def _activity(out: _Builder, activity: Activity) -> None:
    connections = out.family("pgop_postgres_connections", "Client connections by state (pg_stat_activity).",
                             ["state"])
    for state, count in sorted(activity.connections.items()):
        connections.add(state, value=count)
    if activity.max_connections is not None:
        out.gauge("pgop_postgres_max_connections", "The max_connections setting.", activity.max_connections)
    size = out.family("pgop_postgres_database_size_bytes", "Size of each database.", ["database"])
    age = out.family("pgop_postgres_database_frozen_xid_age", "Transactions since each database's oldest "
                     "unfrozen transaction ID (age(datfrozenxid)); wraparound comes at about 2 billion.", ["database"])
    for database in activity.databases:
        size.add(database.name, value=database.size_bytes)
        age.add(database.name, value=database.frozen_xid_age)
    out.gauge("pgop_postgres_oldest_transaction_seconds", "How long the oldest open transaction has run "
              "(0: none).", activity.oldest_transaction_seconds)
    out.gauge("pgop_postgres_oldest_xid_age", "Age in transactions of the oldest transaction ID or snapshot a "
              "session holds (what keeps VACUUM from cleaning up).", activity.oldest_xid_age)


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


class _Family:
    def __init__(self, metric: GaugeMetricFamily | CounterMetricFamily, identity: Sequence[str]):
        self.metric = metric
        self.identity = list(identity)

    def add(self, *labels: str, value: float) -> None:
        self.metric.add_metric([*self.identity, *labels], value)


class _Builder:
    """Families with the identity labels in front of their own."""

    def __init__(self, identity: Sequence[str]):
        self.identity = identity
        self.metrics: list[Metric] = []

    def family(self, name: str, documentation: str, labels: Iterable[str] = ()) -> _Family:
        metric = GaugeMetricFamily(name, documentation, labels=[*IDENTITY, *labels])
        self.metrics.append(metric)
        return _Family(metric, self.identity)

    def gauge(self, name: str, documentation: str, value: float) -> None:
        self.family(name, documentation).add(value=value)

    def counter(self, name: str, documentation: str, value: float) -> None:
        # prometheus_client appends `_total` to a counter's samples
        metric = CounterMetricFamily(name, documentation, labels=list(IDENTITY))
        metric.add_metric(list(self.identity), value)
        self.metrics.append(metric)
