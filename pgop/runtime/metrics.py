"""The operator's Prometheus metrics (`pgop run --metrics http://0.0.0.0:9090/metrics`).

- Reconciles: `pgop_reconciles_total`, `pgop_reconcile_errors_total` and the histogram
  `pgop_reconcile_duration_seconds`, per kind and handler (`measured` wraps a kopf handler).
- Objects: `pgop_objects` per kind, namespace and phase; per PgCluster its wanted and ready
  instances and whether its primary is ready; per cluster the last completed base backup (time,
  size) and the backups that completed or failed while this operator ran; failovers and
  switchovers done (from the Events the cluster controller records).
- Watch delay: how old each new agent heartbeat was when the watch delivered it
  (`pgop_heartbeat_delivery_delay_seconds`).

`ObjectTracker` keeps the last body of each object it was shown (kopf event handlers in
pgop.operator_metrics show it every change); the samples are computed from those at scrape time
by pure functions.

Counters count what this process saw: they start at 0 when the operator starts, as Prometheus'
`rate()` and `increase()` expect.
"""
from __future__ import annotations

import functools
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from pgop.kernel.actions import Event
from pgop.kernel.conditions import parse_time

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter("pgop_reconciles", "Handler runs (reconciles) per kind and handler.",
                     ["kind", "handler"], registry=REGISTRY)
RECONCILE_ERRORS = Counter("pgop_reconcile_errors", "Handler runs that raised, per kind, handler and error "
                           "(temporary: kopf retries; permanent: kopf gives up; unexpected: any other).",
                           ["kind", "handler", "error"], registry=REGISTRY)
RECONCILE_DURATION = Histogram("pgop_reconcile_duration_seconds", "How long a handler run took.",
                               ["kind", "handler"], registry=REGISTRY,
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
EVENTS = Counter("pgop_events", "Kubernetes Events the operator recorded, per kind, type and reason.",
                 ["kind", "type", "reason"], registry=REGISTRY)
FAILOVERS = Counter("pgop_failovers", "Failovers done (a replica promoted after its primary was lost).",
                    ["namespace", "cluster"], registry=REGISTRY)
SWITCHOVERS = Counter("pgop_switchovers", "Switchovers done (the primary handed over on request).",
                      ["namespace", "cluster"], registry=REGISTRY)
BACKUPS_COMPLETED = Counter("pgop_backups_completed", "Base backups (PgBackups) seen completing.",
                            ["namespace", "cluster"], registry=REGISTRY)
BACKUPS_FAILED = Counter("pgop_backups_failed", "Base backups (PgBackups) seen failing.",
                         ["namespace", "cluster"], registry=REGISTRY)
HEARTBEAT_DELIVERY = Histogram(
    "pgop_heartbeat_delivery_delay_seconds",
    "How old an agent's new heartbeat (its PgInstance's status.lastHeartbeat, or its liveness "
    "Lease's renewTime) was when the operator's watch delivered it: the agent's write, the API "
    "server and the operator's event processing together. An operator (or API server) falling "
    "behind shows here first; failover reads heartbeats, so it grows slower too. lastHeartbeat has "
    "whole seconds (as Kubernetes times do), so a figure from it is up to 1 s above the true delay; "
    "it also holds the clock offset between the agent's node and the operator's.",
    registry=REGISTRY, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))

# Reasons of the cluster controller's Events (pgop.cluster.failover) that end a role change.
FAILOVER_DONE = "FailoverDone"
SWITCHOVER_DONE = "SwitchoverDone"
COMPLETED, FAILED = "Completed", "Failed"

F = TypeVar("F", bound=Callable[..., Any])


def error_kind(error: BaseException) -> str:
    """kopf's retry exceptions by what kopf does with them; anything else is unexpected."""
    name = type(error).__name__
    if name == "TemporaryError":
        return "temporary"
    if name == "PermanentError":
        return "permanent"
    return "unexpected"


def measured(kind: str) -> Callable[[F], F]:
    """Counts and times a (sync) kopf handler. Under the kopf decorators: functools.wraps keeps the
    name kopf derives the handler id from, so progress stored on objects stays valid."""
    def wrap(handler: F) -> F:
        name = handler.__name__

        @functools.wraps(handler)
        def run(*args: Any, **kwargs: Any) -> Any:
            RECONCILES.labels(kind, name).inc()
            started = time.perf_counter()
            try:
                return handler(*args, **kwargs)
            except Exception as error:
                RECONCILE_ERRORS.labels(kind, name, error_kind(error)).inc()
                raise
            finally:
                RECONCILE_DURATION.labels(kind, name).observe(time.perf_counter() - started)
        return run  # type: ignore[return-value]
    return wrap


def events_recorded(body: Mapping[str, Any], events: Iterable[Event]) -> None:
    meta = body.get("metadata") or {}
    kind = str(body.get("kind") or "")
    for event in events:
        EVENTS.labels(kind, event.type, event.reason).inc()
        if kind == "PgCluster" and event.reason == FAILOVER_DONE:
            FAILOVERS.labels(meta.get("namespace", ""), meta.get("name", "")).inc()
        elif kind == "PgCluster" and event.reason == SWITCHOVER_DONE:
            SWITCHOVERS.labels(meta.get("namespace", ""), meta.get("name", "")).inc()


# ------------------------------------------------------------------------------ objects (pure)

def phase_counts(objects: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[tuple[str, str, str], int]:
    """(kind, namespace, phase) -> how many objects; an object without a phase yet is `Pending`."""
    tally: Tally[tuple[str, str, str]] = Tally()
    for kind, body in objects:
        phase = (body.get("status") or {}).get("phase") or "Pending"
        tally[(kind, (body.get("metadata") or {}).get("namespace", ""), str(phase))] += 1
    return dict(tally)


def cluster_health(body: Mapping[str, Any]) -> dict[str, float]:
    """A PgCluster's instances wanted and ready, and whether its current primary is ready."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    primary = status.get("currentPrimary")
    primary_ready = any(entry.get("name") == primary and entry.get("ready") for entry in status.get("instances") or [])
    return {"instances": float(spec.get("instances") or 0), "ready": float(status.get("readyInstances") or 0),
            "primary_ready": float(bool(primary) and primary_ready)}


def backup_outcome(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> str | None:
    """Completed or Failed when a PgBackup this process saw unfinished has just finished."""
    if before is None:
        return None  # first sight (the operator's start): an old outcome, not a new one
    was = (before.get("status") or {}).get("phase")
    now = (after.get("status") or {}).get("phase")
    return now if now in (COMPLETED, FAILED) and was != now else None


def last_backups(backups: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], tuple[float, float]]:
    """(namespace, cluster) -> (completedAt as Unix time, sizeBytes) of its latest completed backup."""
    latest: dict[tuple[str, str], tuple[float, float]] = {}
    for body in backups:
        status = body.get("status") or {}
        if status.get("phase") != COMPLETED or not status.get("completedAt"):
            continue
        try:
            at = datetime.fromisoformat(str(status["completedAt"]).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
        key = ((body.get("metadata") or {}).get("namespace", ""), str((body.get("spec") or {}).get("cluster", "")))
        if key not in latest or at > latest[key][0]:
            latest[key] = (at, float(status.get("sizeBytes") or 0))
    return latest


def heartbeat_delay(before: Mapping[str, Any] | None, after: Mapping[str, Any], now: datetime) -> float | None:
    """Seconds from a PgInstance's new lastHeartbeat to `now` (when the watch delivered it); None
    when the heartbeat is not new: first sight (the operator's start lists old ones), no heartbeat,
    the same one as before (another field changed), or one that cannot be read. Never negative
    (a node's clock ahead of the operator's)."""
    if before is None:
        return None
    return beat_delay((before.get("status") or {}).get("lastHeartbeat"),
                      (after.get("status") or {}).get("lastHeartbeat"), now)


def beat_delay(before: str | None, beat: str | None, now: datetime) -> float | None:
    """Seconds from the time `beat` (a lastHeartbeat, or a Lease's renewTime) to `now`; None when
    there is none, it is the one seen `before`, or it cannot be read. Never negative."""
    if not beat or beat == before:
        return None
    try:
        at = parse_time(str(beat))
    except ValueError:
        return None
    if at is None:
        return None
    return max(0.0, (now - at).total_seconds())


def object_metrics(objects: Mapping[tuple[str, str], tuple[str, Mapping[str, Any]]]) -> list[Metric]:
    """The samples of the objects seen, by (uid, kind) -> (kind, last body)."""
    values = list(objects.values())
    phases = GaugeMetricFamily("pgop_objects", "Objects per kind, namespace and status.phase.",
                               labels=["kind", "namespace", "phase"])
    for (kind, namespace, phase), count in sorted(phase_counts(values).items()):
        phases.add_metric([kind, namespace, phase], count)
    wanted = GaugeMetricFamily("pgop_cluster_instances", "Instances a PgCluster asks for (spec.instances).",
                               labels=["namespace", "cluster"])
    ready = GaugeMetricFamily("pgop_cluster_ready_instances", "A PgCluster's ready instances.",
                              labels=["namespace", "cluster"])
    primary = GaugeMetricFamily("pgop_cluster_primary_ready", "1 when the PgCluster's current primary is "
                                "ready (accepts writes), else 0.", labels=["namespace", "cluster"])
    for kind, body in values:
        if kind != "PgCluster":
            continue
        meta = body.get("metadata") or {}
        key = [meta.get("namespace", ""), meta.get("name", "")]
        health = cluster_health(body)
        wanted.add_metric(key, health["instances"])
        ready.add_metric(key, health["ready"])
        primary.add_metric(key, health["primary_ready"])
    last = GaugeMetricFamily("pgop_backup_last_completed_timestamp_seconds", "When the latest completed base "
                             "backup of a cluster finished.", labels=["namespace", "cluster"])
    size = GaugeMetricFamily("pgop_backup_last_completed_size_bytes", "Size in S3 of the latest completed base "
                             "backup of a cluster.", labels=["namespace", "cluster"])
    for (namespace, cluster), (at, bytes_) in sorted(last_backups(b for k, b in values if k == "PgBackup").items()):
        last.add_metric([namespace, cluster], at)
        size.add_metric([namespace, cluster], bytes_)
    return [phases, wanted, ready, primary, last, size]


def kept_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the samples need of an object, no more (the tracker holds one per object)."""
    meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    return {
        "metadata": {"namespace": meta.get("namespace", ""), "name": meta.get("name", "")},
        "spec": {k: spec[k] for k in ("instances", "cluster") if k in spec},
        "status": {**{k: status[k] for k in ("phase", "currentPrimary", "readyInstances", "completedAt", "sizeBytes",
                                             "lastHeartbeat")
                      if k in status},
                   "instances": [{"name": i.get("name"), "ready": i.get("ready")}
                                 for i in status.get("instances") or [] if isinstance(i, Mapping)]},
    }


class ObjectTracker:
    """The last body of each pgop object, as kopf's event handlers show them (a collector)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[tuple[str, str], tuple[str, Mapping[str, Any]]] = {}

    def seen(self, kind: str, body: Mapping[str, Any], event_type: str | None) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"), kind)
        small = kept_fields(body)
        with self.lock:
            before = self.objects.get(key)
            if event_type == "DELETED":
                self.objects.pop(key, None)
            else:
                self.objects[key] = (kind, small)
        if kind == "PgInstance" and event_type != "DELETED":
            delay = heartbeat_delay(before[1] if before else None, small, datetime.now(UTC))
            if delay is not None:
                HEARTBEAT_DELIVERY.observe(delay)
        if kind == "PgBackup" and event_type != "DELETED":
            outcome = backup_outcome(before[1] if before else None, small)
            labels = (small["metadata"]["namespace"], str(small["spec"].get("cluster", "")))
            if outcome == COMPLETED:
                BACKUPS_COMPLETED.labels(*labels).inc()
            elif outcome == FAILED:
                BACKUPS_FAILED.labels(*labels).inc()

    def collect(self) -> list[Metric]:
        with self.lock:
            snapshot = dict(self.objects)
        return object_metrics(snapshot)


TRACKER = ObjectTracker()
REGISTRY.register(TRACKER)
