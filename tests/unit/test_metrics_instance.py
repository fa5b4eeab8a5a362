"""The instance's metrics (pgop.agent.metrics): observations -> samples, as Prometheus parses them."""
from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgop.agent.metrics import Activity, Database, ReplicaLag, Scrape, Volume, archiving_failing, instance_metrics
from pgop.agent.observed import Archiver, PostgresState
from pgop.agent.streaming import ReceiverState, Slot, Standby

ID = {"namespace": "shop", "cluster": "orders", "pginstance": "orders-0"}
T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
T1 = datetime(2026, 12, 1, 3, 5, tzinfo=UTC)


def exposed(scrape: Scrape) -> dict[tuple[str, tuple], float]:
    """The samples as a scraper reads them: rendered in the text format and parsed back."""
    class Fixed:
        def collect(self):
            return instance_metrics(scrape)
    registry = CollectorRegistry()
    registry.register(Fixed())
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            assert {k: sample.labels[k] for k in ID} == ID, sample
            extra = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ID))
            out[(sample.name, extra)] = sample.value
    return out


def primary_state(**overrides) -> PostgresState:
    values = dict(
        accepting=True, role="primary", timeline=3, lsn="0/5000000",
        standbys=(Standby("orders-1", "streaming", "quorum", "0/5000000", "0/4000000", "0/3000000"),
                  Standby("orders-2", "catchup", "async", "0/4F00000", None, None)),
        slots=(Slot("pgop_orders_1", True, "0/3000000"), Slot("pgop_orders_2", False, None)),
        archiver=Archiver(10, "000000030000000000000004", T0, 0, None, None),
    )
    values.update(overrides)
    return PostgresState(**values)


ACTIVITY = Activity(connections={"active": 2, "idle": 5}, max_connections=100,
                    databases=(Database("app", 8_000_000, 1200), Database("postgres", 7_000_000, 900)),
                    oldest_transaction_seconds=12.5, oldest_xid_age=42,
                    replica_lags=(ReplicaLag("orders-1", 0.001, 0.002, None),))


def test_a_primary_reports_its_role_position_replicas_and_slots():
    samples = exposed(Scrape(**{"namespace": "shop", "cluster": "orders", "instance": "orders-0"},
                             state=primary_state(), activity=ACTIVITY, wanted_role="primary", ready=True,
                             wal_directory_bytes=48 << 20, volume=Volume(10 << 30, 9 << 30)))
    assert samples[("pgop_postgres_up", ())] == 1
    assert samples[("pgop_postgres_role", (("role", "primary"),))] == 1
    assert samples[("pgop_postgres_role", (("role", "replica"),))] == 0
    assert samples[("pgop_instance_wanted_primary", ())] == 1
    assert samples[("pgop_instance_ready", ())] == 1
    assert samples[("pgop_postgres_timeline", ())] == 3
    assert samples[("pgop_postgres_wal_position_bytes", ())] == 0x5000000
    # per replica: sync state and lag behind the primary's position, by stage
    assert samples[("pgop_replication_replica_streaming", (("replica", "orders-1"), ("sync_state", "quorum")))] == 1
    assert samples[("pgop_replication_replica_streaming", (("replica", "orders-2"), ("sync_state", "async")))] == 0
    assert samples[("pgop_replication_lag_bytes", (("replica", "orders-1"), ("stage", "sent")))] == 0
    assert samples[("pgop_replication_lag_bytes", (("replica", "orders-1"), ("stage", "flush")))] == 0x1000000
    assert samples[("pgop_replication_lag_bytes", (("replica", "orders-1"), ("stage", "replay")))] == 0x2000000
    assert samples[("pgop_replication_lag_bytes", (("replica", "orders-2"), ("stage", "sent")))] == 0x100000
    assert ("pgop_replication_lag_bytes", (("replica", "orders-2"), ("stage", "replay"))) not in samples
    assert samples[("pgop_replication_replicas_streaming", ())] == 1
    assert samples[("pgop_replication_lag_seconds", (("replica", "orders-1"), ("stage", "flush")))] == 0.002
    assert samples[("pgop_replication_lag_seconds", (("replica", "orders-1"), ("stage", "replay")))] == 0
    assert samples[("pgop_replication_slot_retained_wal_bytes", (("slot", "pgop_orders_1"),))] == 0x2000000
    assert samples[("pgop_replication_slot_active", (("slot", "pgop_orders_2"),))] == 0
    assert ("pgop_replication_slot_retained_wal_bytes", (("slot", "pgop_orders_2"),)) not in samples
    # archiving works: counters and the last success, nothing failing
    assert samples[("pgop_archiver_archived_total", ())] == 10
    assert samples[("pgop_archiver_failed_total", ())] == 0
    assert samples[("pgop_archiver_last_archived_timestamp_seconds", ())] == T0.timestamp()
    assert samples[("pgop_archiver_failing", (("segment", ""),))] == 0
    # what the scrape read itself
    assert samples[("pgop_postgres_connections", (("state", "idle"),))] == 5
    assert samples[("pgop_postgres_max_connections", ())] == 100
    assert samples[("pgop_postgres_database_size_bytes", (("database", "app"),))] == 8_000_000
    assert samples[("pgop_postgres_database_frozen_xid_age", (("database", "postgres"),))] == 900
    assert samples[("pgop_postgres_oldest_transaction_seconds", ())] == 12.5
    assert samples[("pgop_postgres_oldest_xid_age", ())] == 42
    assert samples[("pgop_postgres_wal_directory_bytes", ())] == 48 << 20
    assert samples[("pgop_volume_size_bytes", ())] == 10 << 30
    assert samples[("pgop_volume_available_bytes", ())] == 9 << 30
    # a primary has no replica-side series
    assert not any(name.startswith("pgop_replica_") for name, _ in samples)


def test_a_replica_reports_what_it_received_and_has_not_replayed():
    state = PostgresState(accepting=True, role="replica", timeline=3, lsn="0/4000000", received_lsn="0/4800000",
                          receiver=ReceiverState("streaming", 3, "10.244.0.7"))
    samples = exposed(Scrape("shop", "orders", "orders-0", state=state,
                             activity=Activity(replay_delay_seconds=1.5), wanted_role="replica"))
    assert samples[("pgop_postgres_role", (("role", "replica"),))] == 1
    assert samples[("pgop_instance_wanted_primary", ())] == 0
    assert samples[("pgop_replica_wal_receiver_streaming", ())] == 1
    assert samples[("pgop_replica_received_position_bytes", ())] == 0x4800000
    assert samples[("pgop_replica_replay_lag_bytes", ())] == 0x800000
    assert samples[("pgop_replica_replay_delay_seconds", ())] == 1.5
    assert not any(name.startswith("pgop_replication_lag") for name, _ in samples)


def test_a_failing_archiver_names_the_segment():
    archiver = Archiver(10, "000000030000000000000004", T0, 7, "000000030000000000000005", T1)
    samples = exposed(Scrape("shop", "orders", "orders-0", state=primary_state(archiver=archiver), activity=ACTIVITY))
    assert samples[("pgop_archiver_failing", (("segment", "000000030000000000000005"),))] == 1
    assert samples[("pgop_archiver_failed_total", ())] == 7
    assert samples[("pgop_archiver_last_failed_timestamp_seconds", ())] == T1.timestamp()


def test_archiving_fails_only_while_the_last_failure_is_the_latest():
    assert not archiving_failing(None, None)
    assert not archiving_failing(T0, None)
    assert archiving_failing(None, T0)
    assert archiving_failing(T0, T1)
    assert not archiving_failing(T1, T0)  # it failed once, then caught up


def test_postgres_that_does_not_answer_is_down_with_no_role_and_no_guesses():
    samples = exposed(Scrape("shop", "orders", "orders-0", state=None, activity=None, wanted_role="primary",
                             fenced=True, failed_starts=2))
    assert samples[("pgop_postgres_up", ())] == 0
    assert samples[("pgop_postgres_role", (("role", "primary"),))] == 0
    assert samples[("pgop_postgres_role", (("role", "replica"),))] == 0
    assert samples[("pgop_instance_wanted_primary", ())] == 1
    assert samples[("pgop_instance_fenced", ())] == 1
    assert samples[("pgop_instance_failed_starts", ())] == 2
    for absent in ("pgop_postgres_connections", "pgop_replication_lag_bytes", "pgop_postgres_timeline",
                   "pgop_archiver_archived_total"):
        assert not any(name == absent for name, _ in samples), absent


def test_an_observation_without_an_answer_now_gives_no_role():
    """The loop saw a primary a moment ago, but this scrape got no answer: down, no role."""
    samples = exposed(Scrape("shop", "orders", "orders-0", state=primary_state(), activity=None))
    assert samples[("pgop_postgres_up", ())] == 0
    assert samples[("pgop_postgres_role", (("role", "primary"),))] == 0
    assert not any(name.startswith("pgop_replication_") for name, _ in samples)


def test_metric_names_follow_the_conventions():
    scrape = Scrape("shop", "orders", "orders-0", state=primary_state(), activity=ACTIVITY,
                    wal_directory_bytes=1, volume=Volume(2, 1))
    for metric in instance_metrics(scrape):
        assert metric.name.startswith("pgop_"), metric.name
        assert metric.documentation, metric.name
        if metric.type == "counter":
            assert not metric.name.endswith("_total")  # the client adds it
        for unit in ("bytes", "seconds"):
            assert not metric.name.endswith(f"_{unit}s")
