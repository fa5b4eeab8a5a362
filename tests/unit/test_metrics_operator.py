"""The operator's metrics (pgop.runtime.metrics): handlers measured, objects and backups counted."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import kopf
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgop.kernel.actions import NORMAL, Event
from pgop.operator_metrics import listen_address
from pgop.runtime import metrics
from pgop.runtime.metrics import (
    REGISTRY,
    ObjectTracker,
    backup_outcome,
    cluster_health,
    heartbeat_delay,
    last_backups,
    measured,
    object_metrics,
    phase_counts,
)


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def samples(tracker: ObjectTracker) -> dict[tuple[str, tuple], float]:
    class Only:
        def collect(self):
            return tracker.collect()
    from prometheus_client import CollectorRegistry
    registry = CollectorRegistry()
    registry.register(Only())
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def cluster(name="orders", ns="shop", instances=3, primary="orders-0", ready=("orders-0", "orders-1"), phase="Ready"):
    return {"kind": "PgCluster", "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}"},
            "spec": {"instances": instances},
            "status": {"phase": phase, "currentPrimary": primary, "readyInstances": len(ready),
                       "instances": [{"name": f"{name}-{i}", "ready": f"{name}-{i}" in ready} for i in range(instances)]}}


def backup(name, phase=None, completed_at=None, size=None, cluster_name="orders", ns="shop"):
    status = {k: v for k, v in (("phase", phase), ("completedAt", completed_at), ("sizeBytes", size)) if v}
    return {"kind": "PgBackup", "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}"},
            "spec": {"cluster": cluster_name}, "status": status}


def test_a_measured_handler_counts_runs_errors_and_time_and_keeps_its_kopf_id():
    @measured("PgTest")
    def tick(body, **_):
        if body.get("fail") == "temporary":
            raise kopf.TemporaryError("later", delay=1)
        if body.get("fail"):
            raise KeyError("boom")
        return "done"

    assert kopf._core.intents.registries.get_callable_id(tick).endswith("tick")
    assert tick.__name__ == "tick"
    before = value("pgop_reconciles_total", kind="PgTest", handler="tick") or 0
    assert tick({}, logger=None) == "done"
    with pytest.raises(kopf.TemporaryError):
        tick({"fail": "temporary"})
    with pytest.raises(KeyError):
        tick({"fail": "other"})
    assert value("pgop_reconciles_total", kind="PgTest", handler="tick") == before + 3
    assert value("pgop_reconcile_errors_total", kind="PgTest", handler="tick", error="temporary") == 1
    assert value("pgop_reconcile_errors_total", kind="PgTest", handler="tick", error="unexpected") == 1
    assert value("pgop_reconcile_duration_seconds_count", kind="PgTest", handler="tick") == 3


def test_failovers_and_switchovers_are_counted_from_the_events_recorded():
    body = {"kind": "PgCluster", "metadata": {"name": "fo", "namespace": "ha"}}
    metrics.events_recorded(body, [Event(NORMAL, "FailoverDone", "orders-1 is the primary"),
                                   Event(NORMAL, "SwitchoverDone", "x"), Event(NORMAL, "Created", "y")])
    assert value("pgop_failovers_total", namespace="ha", cluster="fo") == 1
    assert value("pgop_switchovers_total", namespace="ha", cluster="fo") == 1
    assert value("pgop_events_total", kind="PgCluster", type=NORMAL, reason="Created") >= 1


def test_phases_are_counted_per_kind_and_namespace():
    counts = phase_counts([("PgCluster", cluster()), ("PgCluster", cluster("b")),
                           ("PgCluster", cluster("c", phase="Degraded")), ("PgBackup", backup("b1"))])
    assert counts == {("PgCluster", "shop", "Ready"): 2, ("PgCluster", "shop", "Degraded"): 1,
                      ("PgBackup", "shop", "Pending"): 1}


def test_a_cluster_whose_primary_is_not_ready_says_so():
    assert cluster_health(cluster()) == {"instances": 3, "ready": 2, "primary_ready": 1}
    assert cluster_health(cluster(ready=("orders-1",)))["primary_ready"] == 0
    assert cluster_health(cluster(primary=None))["primary_ready"] == 0


def test_a_backup_counts_once_when_seen_finishing_and_never_at_first_sight():
    assert backup_outcome(None, backup("b", "Completed")) is None  # operator start: old news
    assert backup_outcome(backup("b", "Running"), backup("b", "Completed")) == "Completed"
    assert backup_outcome(backup("b", "Completed"), backup("b", "Completed")) is None
    assert backup_outcome(backup("b"), backup("b", "Failed")) == "Failed"


def test_the_last_completed_backup_per_cluster():
    latest = last_backups([backup("a", "Completed", "2026-12-01T03:00:00Z", 100),
                           backup("b", "Completed", "2026-12-02T03:00:00Z", 200),
                           backup("c", "Failed", "2026-12-03T03:00:00Z"),
                           backup("d", "Completed", "2026-12-01T00:00:00Z", 5, cluster_name="other")])
    assert latest[("shop", "orders")] == (1796180400.0, 200.0)
    assert latest[("shop", "other")][1] == 5.0


def test_the_tracker_follows_objects_through_their_events():
    tracker = ObjectTracker()
    tracker.seen("PgCluster", cluster(), None)
    tracker.seen("PgBackup", backup("nightly", "Running"), "ADDED")
    tracker.seen("PgBackup", backup("nightly", "Completed", "2026-12-02T03:00:00Z", 4096), "MODIFIED")
    got = samples(tracker)
    assert got[("pgop_objects", (("kind", "PgCluster"), ("namespace", "shop"), ("phase", "Ready")))] == 1
    assert got[("pgop_cluster_primary_ready", (("cluster", "orders"), ("namespace", "shop")))] == 1
    assert got[("pgop_cluster_ready_instances", (("cluster", "orders"), ("namespace", "shop")))] == 2
    assert got[("pgop_backup_last_completed_size_bytes", (("cluster", "orders"), ("namespace", "shop")))] == 4096
    assert got[("pgop_backup_last_completed_timestamp_seconds",
                (("cluster", "orders"), ("namespace", "shop")))] == 1796180400.0
    assert value("pgop_backups_completed_total", namespace="shop", cluster="orders") >= 1
    tracker.seen("PgCluster", cluster(), "DELETED")
    assert not [k for k in samples(tracker) if k[0] == "pgop_cluster_primary_ready"]


def test_the_tracker_keeps_no_more_than_the_samples_need():
    body = cluster()
    body["spec"]["bootstrap"] = {"initdb": {"database": "app"}}
    body["status"]["conditions"] = [{"type": "Ready", "message": "x" * 1000}]
    tracker = ObjectTracker()
    tracker.seen("PgCluster", body, None)
    [(_, kept)] = tracker.objects.values()
    assert "bootstrap" not in kept["spec"] and "conditions" not in kept["status"]
    assert object_metrics(tracker.objects)  # still enough for every family


def instance(beat: str | None, phase="Running", name="orders-0"):
    status = {"phase": phase, **({"lastHeartbeat": beat} if beat else {})}
    return {"kind": "PgInstance", "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}"},
            "spec": {"cluster": "orders"}, "status": status}


def test_a_new_heartbeat_is_timed_from_its_write_to_its_delivery():
    now = datetime(2026, 12, 3, 12, 0, 10, tzinfo=UTC)
    assert heartbeat_delay(instance("2026-12-03T12:00:00Z"), instance("2026-12-03T12:00:07.5Z"), now) == 2.5
    # not new: first sight (an operator's start lists old heartbeats), the same beat, none, unreadable
    assert heartbeat_delay(None, instance("2026-12-03T12:00:07Z"), now) is None
    assert heartbeat_delay(instance("2026-12-03T12:00:07Z"), instance("2026-12-03T12:00:07Z", "Fenced"), now) is None
    assert heartbeat_delay(instance(None), instance(None), now) is None
    assert heartbeat_delay(instance("2026-12-03T12:00:00Z"), instance("yesterday"), now) is None
    # a node's clock ahead of the operator's is no negative delay
    assert heartbeat_delay(instance("2026-12-03T12:00:00Z"), instance("2026-12-03T12:00:11Z"), now) == 0.0


def test_the_tracker_times_each_new_heartbeat_it_is_shown():
    def count():
        return value("pgop_heartbeat_delivery_delay_seconds_count") or 0.0

    def late(seconds):
        return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    tracker = ObjectTracker()
    before, slow = count(), value("pgop_heartbeat_delivery_delay_seconds_bucket", le="10.0") or 0.0
    old = late(40)
    tracker.seen("PgInstance", instance(old), "ADDED")               # first sight: not timed
    tracker.seen("PgInstance", instance(old, "Fenced"), "MODIFIED")  # the same beat: not timed
    tracker.seen("PgInstance", instance(late(20)), "MODIFIED")       # a new beat, 20 s late
    assert count() == before + 1
    assert (value("pgop_heartbeat_delivery_delay_seconds_bucket", le="10.0") or 0.0) == slow  # above 10 s
    tracker.seen("PgInstance", instance(late(0.01)), "MODIFIED")
    assert count() == before + 2
    assert value("pgop_heartbeat_delivery_delay_seconds_bucket", le="0.25") >= 1


def test_the_metrics_address_is_an_http_url_with_a_port():
    assert listen_address("http://0.0.0.0:9090/metrics") == ("0.0.0.0", 9090)
    assert listen_address("127.0.0.1:9100") == ("127.0.0.1", 9100)
    with pytest.raises(ValueError, match="--metrics"):
        listen_address("http://0.0.0.0/metrics")
