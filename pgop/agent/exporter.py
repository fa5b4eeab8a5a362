"""/metrics of the instance, on the named container port `metrics` (PGOP_METRICS_PORT, 9187).

A scrape runs in the HTTP server's own thread: it reads the agent's last observation (a reference
to an immutable PostgresState, set by the loop each turn) and asks Postgres on a separate short
session, with a statement timeout, for what the loop does not need. The loop never waits for a
scrape, and a Postgres that does not answer gives `pgop_postgres_up 0`, not an error.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.process_collector import ProcessCollector

from pgop.agent import local
from pgop.agent.metrics import Activity, Database, ReplicaLag, Scrape, Volume, instance_metrics
from pgop.agent.settings import AgentSettings

log = logging.getLogger(__name__)

SCRAPE_CONNECT_TIMEOUT = 2  # seconds
SCRAPE_STATEMENT_TIMEOUT_MS = 2000

CONNECTIONS_QUERY = (
    "SELECT coalesce(state, 'unknown'), count(*) FROM pg_stat_activity"
    " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1")
DATABASES_QUERY = (
    "SELECT datname, pg_database_size(oid), age(datfrozenxid) FROM pg_database"
    " WHERE datallowconn ORDER BY datname")
OLDEST_QUERY = (
    "SELECT coalesce(extract(epoch FROM max(now() - xact_start)"
    " FILTER (WHERE backend_type = 'client backend')), 0)::float8,"
    " coalesce(max(greatest(age(backend_xid), age(backend_xmin))), 0)::bigint"
    " FROM pg_stat_activity WHERE pid <> pg_backend_pid()")
REPLICA_LAGS_QUERY = (
    "SELECT application_name, extract(epoch FROM write_lag)::float8, extract(epoch FROM flush_lag)::float8,"
    " extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication ORDER BY application_name")
# Behind only while received WAL waits to be replayed: on an idle primary the last replayed
# transaction grows old without any lag.
REPLAY_DELAY_QUERY = (
    "SELECT CASE WHEN pg_last_wal_receive_lsn() IS NULL THEN NULL"
    " WHEN pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()"
    " THEN greatest(0, extract(epoch FROM now() - pg_last_xact_replay_timestamp()))::float8 ELSE 0 END")


def read_activity(conn: psycopg.Connection) -> Activity:
    conn.execute(f"SET statement_timeout = {SCRAPE_STATEMENT_TIMEOUT_MS}")
    connections = {str(state): int(count) for state, count in conn.execute(CONNECTIONS_QUERY).fetchall()}
    row = conn.execute("SELECT current_setting('max_connections')::int, pg_is_in_recovery()").fetchone()
    max_connections, in_recovery = row if row else (None, False)
    databases = tuple(Database(name, int(size), int(age)) for name, size, age in
                      conn.execute(DATABASES_QUERY).fetchall())
    oldest = conn.execute(OLDEST_QUERY).fetchone() or (0.0, 0)
    lags: tuple[ReplicaLag, ...] = ()
    delay = None
    if in_recovery:
        delay_row = conn.execute(REPLAY_DELAY_QUERY).fetchone()
        delay = delay_row[0] if delay_row else None
    else:
        lags = tuple(ReplicaLag(*row) for row in conn.execute(REPLICA_LAGS_QUERY).fetchall())
    return Activity(connections=connections, max_connections=max_connections, databases=databases,
                    oldest_transaction_seconds=float(oldest[0]), oldest_xid_age=int(oldest[1]),
                    replica_lags=lags, replay_delay_seconds=delay)


def wal_directory_bytes(pgdata: Path) -> int | None:
    """Bytes of the regular files in pg_wal (segments, history files; not archive_status)."""
    try:
        with os.scandir(pgdata / "pg_wal") as entries:
            return sum(e.stat(follow_symlinks=False).st_size for e in entries if e.is_file(follow_symlinks=False))
    except OSError:
        return None


def volume(pgdata: Path) -> Volume | None:
    try:
        stats = os.statvfs(pgdata)
    except OSError:
        return None
    return Volume(size_bytes=stats.f_blocks * stats.f_frsize, available_bytes=stats.f_bavail * stats.f_frsize)


class InstanceCollector:
    """The prometheus_client collector of one agent."""

    def __init__(self, agent: Any):  # pgop.agent.loop.Agent (which imports this module)
        self.agent = agent

    def scrape(self) -> Scrape:
        agent, settings = self.agent, self.agent.settings
        running = agent.postmaster.is_running()
        activity = None
        if running:
            try:
                with local.connect(settings, timeout=SCRAPE_CONNECT_TIMEOUT) as conn:
                    activity = read_activity(conn)
            except psycopg.OperationalError as error:  # starting, stopping, busy: up is 0 this time
                log.debug("metrics: postgres did not answer: %s", str(error).strip())
            except psycopg.Error as error:  # a query of ours postgres refuses: say so
                log.warning("metrics: %s", str(error).strip())
        instance = agent.instance
        return Scrape(
            namespace=settings.namespace, cluster=settings.cluster, instance=settings.instance,
            state=agent.last_state if running else None, activity=activity,
            wanted_role=instance.spec.role if instance is not None else None,
            fenced=bool(instance is not None and instance.spec.fenced),
            ready=agent.health.ready and agent.health.alive(), isolated=bool(agent.isolated),
            failed_starts=agent.failed_starts,
            wal_directory_bytes=wal_directory_bytes(settings.pgdata), volume=volume(settings.pgdata),
        )

    def collect(self) -> list[Metric]:
        return instance_metrics(self.scrape())


def serve(agent: Any, settings: AgentSettings) -> Any:
    """Starts the /metrics server in its own threads; None when PGOP_METRICS_PORT is 0."""
    if not settings.metrics_port:
        return None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InstanceCollector(agent))
    ProcessCollector(namespace="pgop_agent", registry=registry)
    try:
        server, _thread = start_http_server(settings.metrics_port, settings.agent_address, registry=registry)
    except OSError as error:  # metrics are not worth a database: the agent runs on without them
        log.error("cannot serve metrics on port %s: %s", settings.metrics_port, error)
        return None
    log.info("metrics on :%s/metrics", settings.metrics_port)
    return server
