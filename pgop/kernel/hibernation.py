"""Hibernation of a PgCluster (`pgop hibernate on|off`): every Postgres pod stopped cleanly and
deleted, the volumes, Secrets, Services and PgInstances kept; woken, each instance comes back on
its own volume with the role it had.

The request is the PgCluster annotation pgop.io/hibernation ("on" | "off"; CloudNativePG users know
it as cnpg.io/hibernation). Where the cluster is on the way is PgCluster.status.hibernation
({phase, since}), written with the failover decision before any PgInstance changes, so an operator
restarted midway carries on from it. The state machine, pure (`now` is an argument):

    (running) --on--> Hibernating --every pod gone--> Hibernated --off--> Waking --primary back--> (running)

- Hibernating: the replicas stop first, each once it has received the primary's last reported LSN
  (or CATCH_UP_TIMEOUT after the request: a replica behind streams the rest from the primary's
  slot when woken, nothing is lost); the primary stops last, once no replica pod is left. A stop is
  PgInstance spec.hibernated: true; the instance controller deletes the pod, whose agent stops
  Postgres fast (a shutdown checkpoint, so the start after waking replays nothing).
- While Hibernating, Hibernated or Waking no failover starts (the pods are gone on purpose),
  nothing is scaled, rolled or drained, and no scheduled backup is made (a due one is skipped).
- Waking: spec.hibernated goes back to false on every instance at once; the roles in the
  PgInstances were never touched, so the former primary starts as primary and the replicas follow
  it. Waking ends when the primary reports again (a heartbeat after the wake began); from then on
  failover watches it as before.
- Hibernation waits for a failover or switchover in progress to end; "off" while Hibernating wakes
  the instances already stopped.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pgop.kernel.actions import NORMAL, WARNING, Event
from pgop.kernel.conditions import condition, parse_time, rfc3339
from pgop.kernel.lsn import parse_lsn
from pgop.kernel.model import PRIMARY, Cluster, Instance
from pgop.kernel.readiness import is_ready

ANNOTATION_HIBERNATION = "pgop.io/hibernation"
STATUS_FIELD = "hibernation"  # PgCluster.status.hibernation
INSTANCE_FIELD = "hibernated"  # PgInstance.spec.hibernated
ON, OFF = "on", "off"
HIBERNATING, HIBERNATED, WAKING = "Hibernating", "Hibernated", "Waking"
CONDITION = "Hibernated"
CATCH_UP_TIMEOUT = 60.0  # seconds a replica may take to receive the primary's last WAL before it stops


def requested(annotations: Mapping[str, str]) -> bool:
    """Whether the annotation asks for hibernation. Anything but "on" (case-insensitive) is off."""
    return str(annotations.get(ANNOTATION_HIBERNATION, "")).strip().lower() == ON


def annotation_problem(annotations: Mapping[str, str]) -> str:
    value = annotations.get(ANNOTATION_HIBERNATION)
    if value is None or str(value).strip().lower() in (ON, OFF):
        return ""
    return f"annotation {ANNOTATION_HIBERNATION}={value!r} is neither 'on' nor 'off': the cluster stays awake"


def phase_of(status: Mapping[str, Any]) -> str | None:
    return (status.get(STATUS_FIELD) or {}).get("phase") or None


def holds(cluster: Cluster) -> bool:
    """Whether failover, scaling, rollouts, drains and scheduled backups are held: hibernation is
    asked for, or the cluster is not yet fully awake again."""
    return requested(cluster.annotations) or phase_of(cluster.status) is not None


def is_hibernated(spec: Mapping[str, Any]) -> bool:
    """A PgInstance spec that says its pod must not run."""
    return bool(spec.get(INSTANCE_FIELD))


@dataclass
class HibernationStep:
    status: dict[str, Any] | None  # PgCluster.status.hibernation to write (None: awake, removed)
    stop: list[str] = field(default_factory=list)  # instances to set spec.hibernated: true, in order
    start: list[str] = field(default_factory=list)  # instances to set spec.hibernated: false
    waiting: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # why each stop/start, by instance
    # The cluster's instances are hibernating: plan nothing else for them (no creation, scaling,
    # rollout, role change or drain).
    frozen: bool = False

    @property
    def phase(self) -> str | None:
        return (self.status or {}).get("phase")


def _behind(replica: Instance, primary: Instance | None) -> int | None:
    """Bytes of the primary's last reported WAL position the replica has not received; None when
    unknown."""
    if primary is None:
        return None
    try:
        theirs = parse_lsn(primary.status.lsn or "")
        mine = parse_lsn(replica.status.received_lsn or replica.status.replay_lsn or replica.status.lsn or "")
    except ValueError:
        return None
    return max(0, theirs - mine)


def plan_hibernation(cluster: Cluster, instances: Sequence[Instance], pods: Mapping[str, Any] | None, *,
                     target_primary: str, busy: bool, now: datetime) -> HibernationStep:
    """The next step of hibernating or waking `cluster`.

    `instances`: its PgInstances not being deleted; `pods`: the Postgres pod of each instance by
    instance name (None: not observed, then no pod is taken as gone); `target_primary`: who is
    primary (status.targetPrimary); `busy`: a failover or switchover runs."""
    current = dict(cluster.status.get(STATUS_FIELD) or {})
    phase = current.get("phase") or None
    since = parse_time(current.get("since")) if current.get("since") else None
    stamp = rfc3339(now)
    problem = annotation_problem(cluster.annotations)
    if requested(cluster.annotations):
        return _hibernate(cluster, instances, pods, target_primary, busy, now, stamp, phase, since, current)
    step = HibernationStep(status=current or None)
    if problem:
        step.waiting.append(problem)
    step.start = [i.name for i in instances if is_hibernated(i.raw_spec)]
    for name in step.start:
        step.reasons[name] = "hibernation off: its pod starts again on its volume, with the role it had"
    if phase in (HIBERNATING, HIBERNATED):
        phase, since = WAKING, now
        step.status = {"phase": WAKING, "since": stamp}
        step.events.append(Event(NORMAL, "Waking", "hibernation off: every instance starts again on its volume; "
                                                   f"{target_primary or 'the primary'} stays primary"))
    if phase != WAKING:
        return step
    primary = next((i for i in instances if i.name == target_primary), None)
    back = (primary is not None and primary.status.role == PRIMARY and is_ready(primary, now)
            and since is not None and primary.status.last_heartbeat is not None
            and primary.status.last_heartbeat >= since)
    if back or not instances:
        step.status = None
        step.events.append(Event(NORMAL, "Awake", f"the primary {target_primary} is back after hibernation; "
                                                  "failover watches it again"))
    else:
        step.waiting.append(f"waking from hibernation: the primary {target_primary or '?'} starts on its volume "
                            "(no failover until it reports)")
    return step


def _hibernate(cluster: Cluster, instances: Sequence[Instance], pods: Mapping[str, Any] | None,
               target_primary: str, busy: bool, now: datetime, stamp: str, phase: str | None,
               since: datetime | None, current: dict[str, Any]) -> HibernationStep:
    if phase in (None, WAKING):
        if busy:
            step = HibernationStep(status=current or None)
            step.waiting.append("hibernation waits for the failover or switchover in progress to end")
            return step
        phase, since = HIBERNATING, now
        current = {"phase": HIBERNATING, "since": stamp}
        events = [Event(NORMAL, "Hibernating", "hibernation on: the replicas stop once they have the primary's "
                                               "last WAL, then the primary; volumes, Secrets and Services are kept")]
    else:
        events = []
    step = HibernationStep(status=current, events=events, frozen=True)
    primary = next((i for i in instances if i.name == target_primary), None)
    replicas = [i for i in instances if i is not primary]
    elapsed = (now - since).total_seconds() if since is not None else CATCH_UP_TIMEOUT

    def gone(instance: Instance) -> bool:
        return is_hibernated(instance.raw_spec) and pods is not None and instance.name not in pods

    catching_up = []
    for replica in replicas:
        if is_hibernated(replica.raw_spec):
            continue
        behind = _behind(replica, primary) if primary is not None and is_ready(primary, now) else None
        if behind and is_ready(replica, now) and elapsed < CATCH_UP_TIMEOUT:
            catching_up.append(f"{replica.name} ({behind} bytes behind)")
            continue
        step.stop.append(replica.name)
        if behind and is_ready(replica, now):
            step.reasons[replica.name] = (f"hibernation: stops {behind} bytes behind the primary after "
                                          f"{CATCH_UP_TIMEOUT:.0f}s; it streams the rest when woken")
            step.events.append(Event(WARNING, "HibernationCatchUpTimeout", step.reasons[replica.name]
                                     .replace("hibernation:", replica.name)))
        else:
            step.reasons[replica.name] = "hibernation: a replica stops first, caught up with the primary"
    if catching_up:
        step.waiting.append("hibernation: replicas stop once they have received the primary's last WAL: "
                            + ", ".join(catching_up))
    elif primary is not None and not is_hibernated(primary.raw_spec):
        left = [i.name for i in replicas if not gone(i)]
        if left:
            step.waiting.append("hibernation: the primary stops last, once these pods are gone: " + ", ".join(left))
        else:
            step.stop.append(primary.name)
            step.reasons[primary.name] = ("hibernation: the primary stops last (fast shutdown: a checkpoint, "
                                          "no replay when woken)")
    if all(gone(i) for i in instances) and not step.stop:
        if phase != HIBERNATED:
            step.status = {"phase": HIBERNATED, "since": stamp}
            step.events.append(Event(NORMAL, "Hibernated", f"every Postgres pod is gone; {len(instances)} volume(s) "
                                                           "kept; `pgop hibernate off` to wake the cluster"))
    elif not catching_up and not step.stop:
        step.waiting.append("hibernation: waiting for the pods to stop: "
                            + ", ".join(i.name for i in instances if not gone(i)))
    return step


def condition_for(phase: str | None, since: str | None) -> dict[str, Any] | None:
    """The Hibernated condition, or None for a cluster never hibernated (no condition to show)."""
    if phase == HIBERNATED:
        return condition(CONDITION, True, HIBERNATED, f"every Postgres pod is stopped since {since}; "
                                                      "volumes kept (`pgop hibernate off`)")
    if phase == HIBERNATING:
        return condition(CONDITION, False, HIBERNATING, f"stopping the Postgres pods since {since}")
    if phase == WAKING:
        return condition(CONDITION, False, WAKING, f"starting the Postgres pods since {since}")
    return None
