"""/metrics of `pgop agent` over real PostgreSQL 15: a primary and a streaming replica scraped over
HTTP and read with Prometheus' own text-format parser, as a Prometheus server would."""
from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgop.agent import exporter
from tests.integration.test_agent_postgres import fleet_factory, host, pytestmark, wait_for  # noqa: F401

__all__ = ["pytestmark"]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            labels.pop("namespace", None), labels.pop("cluster", None), labels.pop("pginstance", None)
            out[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return out


@pytest.fixture
def served():
    servers = []

    def serve(agent, settings):
        server = exporter.serve(agent, settings)
        assert server is not None
        servers.append(server)
        return settings.metrics_port

    yield serve
    for server in servers:
        server.shutdown()


def test_a_primary_and_its_replica_as_prometheus_sees_them(fleet_factory, served):  # noqa: F811
    fleet = fleet_factory(instances=2, synchronousReplicas=1)
    primary = fleet.primary()
    replica = fleet.replica(1)
    primary_port = served(fleet.agents[primary], fleet.settings[primary])
    replica_port = served(fleet.agents[replica], fleet.settings[replica])
    fleet.sql(primary, "CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")

    # the primary: up, its role, the replica streaming in sync with no lag once it caught up
    def caught_up():
        got = scrape(primary_port)
        lag = got.get(("pgop_replication_lag_bytes", (("replica", replica), ("stage", "replay"))))
        synchronous = any(name == "pgop_replication_replica_streaming" and ("sync_state", "async") not in labels
                          for name, labels in got)
        return got if lag == 0 and synchronous else None
    got = wait_for(caught_up, "the replica synchronous, with everything replayed", timeout=30, interval=0.5)
    assert got[("pgop_postgres_up", ())] == 1
    assert got[("pgop_postgres_role", (("role", "primary"),))] == 1
    assert got[("pgop_postgres_role", (("role", "replica"),))] == 0
    assert got[("pgop_instance_wanted_primary", ())] == 1
    assert got[("pgop_postgres_timeline", ())] == 1
    streaming = {labels: v for (name, labels), v in got.items() if name == "pgop_replication_replica_streaming"}
    sync_state = fleet.sql(primary, "SELECT sync_state FROM pg_stat_replication")[0][0]
    assert sync_state in ("sync", "quorum")  # one synchronous replica of one: Postgres says either
    assert streaming == {(("replica", replica), ("sync_state", sync_state)): 1}
    assert got[("pgop_replication_replicas_streaming", ())] == 1
    assert ("pgop_replication_lag_seconds", (("replica", replica), ("stage", "replay"))) in got
    assert got[("pgop_replication_slot_active", (("slot", "pgop_" + replica.replace("-", "_")),))] == 1
    assert got[("pgop_postgres_database_size_bytes", (("database", "postgres"),))] > 1_000_000
    assert got[("pgop_postgres_max_connections", ())] >= 10
    assert got[("pgop_postgres_database_frozen_xid_age", (("database", "postgres"),))] > 0
    assert got[("pgop_postgres_wal_directory_bytes", ())] >= 16 * 1024 * 1024
    assert 0 < got[("pgop_volume_available_bytes", ())] <= got[("pgop_volume_size_bytes", ())]
    assert got[("pgop_archiver_failing", (("segment", ""),))] == 0
    assert got[("pgop_agent_process_resident_memory_bytes", ())] > 0

    # the replica: its role, its receiver streaming, nothing left to replay
    got = wait_for(lambda: (g := scrape(replica_port)).get(("pgop_replica_replay_lag_bytes", ())) == 0 and g,
                   "the replica's own view: nothing to replay", timeout=30, interval=0.5)
    assert got[("pgop_postgres_role", (("role", "replica"),))] == 1
    assert got[("pgop_instance_wanted_primary", ())] == 0
    assert got[("pgop_replica_wal_receiver_streaming", ())] == 1
    assert got[("pgop_replica_replay_delay_seconds", ())] == 0
    assert not any(name.startswith("pgop_replication_lag") for name, _ in got)


def test_a_failing_archive_command_shows_with_its_segment_and_a_stopped_postgres_is_down(fleet_factory,  # noqa: F811
                                                                                        served):
    fleet = fleet_factory(instances=1)
    primary = fleet.primary()
    port = served(fleet.agents[primary], fleet.settings[primary])
    # What a broken wal-push looks like to pg_stat_archiver (the operator's own archive_command
    # cannot be set through the spec; ALTER SYSTEM outranks the file).
    fleet.sql(primary, "ALTER SYSTEM SET archive_command = 'false'")
    fleet.sql(primary, "SELECT pg_reload_conf()")
    fleet.sql(primary, "CREATE TABLE t AS SELECT generate_series(1, 100) AS n")
    segment = fleet.sql(primary, "SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
    fleet.sql(primary, "SELECT pg_switch_wal()")

    def failing():
        got = scrape(port)
        return got if got.get(("pgop_archiver_failing", (("segment", segment),))) == 1 else None
    got = wait_for(failing, f"pgop_archiver_failing for {segment}", timeout=30, interval=0.5)
    assert got[("pgop_archiver_failed_total", ())] >= 1
    assert got[("pgop_archiver_last_failed_timestamp_seconds", ())] > 0

    # fenced: the agent stops postgres; the scrape still answers, with postgres down and no role
    fleet.store.update_spec(primary, fenced=True)
    got = wait_for(lambda: (g := scrape(port)).get(("pgop_postgres_up", ())) == 0 and g, "up 0 once fenced",
                   timeout=30, interval=0.5)
    assert got[("pgop_instance_fenced", ())] == 1
    assert got[("pgop_instance_wanted_primary", ())] == 1
    assert got[("pgop_postgres_role", (("role", "primary"),))] == 0
