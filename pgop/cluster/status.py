"""PgCluster status from its PgInstances: what a person sees in `kubectl get` and `pgop status`.

Pure: `now` is an argument, so a heartbeat is judged against the same clock in tests as in the
operator. An agent's `ready: true` is believed only while its heartbeat is fresh: a dead pod
cannot take its last word back.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pgop.kernel import hibernation
from pgop.kernel.actions import apply_merge_patch
from pgop.kernel.conditions import (
    REASON_ENCRYPTION_KEY_MISMATCH,
    condition,
    find_condition,
    parse_time,
    rfc3339,
    set_condition,
    set_conditions,
)
from pgop.kernel.lsn import lag_bytes
from pgop.kernel.model import PRIMARY, REQUIRED, Cluster, Instance, with_sync_states_from_primary
from pgop.kernel.readiness import (
    DEFAULT_HEARTBEAT_TIMEOUT,
    is_ready,
    is_stale,
    pod_catching_up,
    pod_ready,
    why_not_ready,
    why_pod_not_ready,
)
from pgop.kernel.tenancy import REASON as REASON_PATH_REFUSED
from pgop.kernel.tenancy import refusal_message

__all__ = ["DEFAULT_HEARTBEAT_TIMEOUT", "cluster_status", "worth_writing"]

READY = "Ready"
PROGRESSING = "Progressing"

# Per instance entry, the fields that move on every agent report (WAL positions, lag, heartbeat).
MOVING = ("lsn", "receivedLSN", "replayLSN", "lagBytes", "lastHeartbeat")
# How old they may get in the PgCluster status when nothing else changed (the PgInstances have
# them live, and `pgop status` reads them there): 5 minutes, as the kubelet reports a Node's status
# when nothing changed. Each refresh is a PATCH and an event for every watcher of the PgCluster
# (this operator first): at 30 s it was the operator's own idle traffic (1.3 patches/s at 40
# clusters, 33/s at 1000).
MOVING_REFRESH = 300.0
DEGRADED = "Degraded"


def _designated_primary(live: list[Instance]) -> Instance | None:
    marked = [i for i in live if i.is_primary]
    # Two marked primaries only happen mid-failover; the one Postgres agrees with is the primary.
    marked.sort(key=lambda i: (i.status.role != PRIMARY, i.ordinal))
    return marked[0] if marked else None


def _entry(instance: Instance, ready: bool, primary: Instance | None) -> dict[str, Any]:
    status = instance.status
    entry: dict[str, Any] = {
        "name": instance.name,
        "ordinal": instance.ordinal,
        "role": status.role or instance.spec.role,
        "ready": ready,
        "fenced": instance.spec.fenced,
    }
    optional = {
        "phase": status.phase,
        "timeline": status.timeline,
        "lsn": status.lsn,
        "receivedLSN": status.received_lsn,
        "replayLSN": status.replay_lsn,
        "walReceiver": status.wal_receiver,
        "syncState": status.sync_state,
        # the newest sign of life: a status write or a Lease renewal (pgop.kernel.liveness)
        "lastHeartbeat": rfc3339(status.alive_at) if status.alive_at else None,
        "pod": status.pod,
        "node": status.node,
    }
    if primary is not None and instance is not primary:
        optional["lagBytes"] = lag_bytes(primary.status.lsn, status.lsn)
    # The CRD's item fields are not nullable: leave out what is unknown.
    entry.update({key: value for key, value in optional.items() if value is not None})
    return entry


def cluster_status(
    cluster: Cluster,
    instances: Sequence[Instance | Mapping[str, Any]],
    *,
    now: datetime,
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
    waiting: Sequence[str] = (),
    ha: Mapping[str, Any] | None = None,
    pods: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The status to write on a PgCluster (a merge patch body for its status subresource).

    `pods` takes each instance's Postgres pod by instance name (None: not observed). An instance
    is ready when its agent says so (with a fresh heartbeat) and, when the pods are observed, its
    pod is Ready too: a client that connects through the Services once the cluster is Ready is
    then routed (the kubelet's readiness probe lags the agent by up to a second).

    `waiting` takes Plan.waiting, so Progressing says what the operator is waiting for. `ha` takes
    Plan.status, what pgop.cluster.failover decided (targetPrimary, currentPrimary, failover, ...):
    it is written as it is, and the primary is its currentPrimary.
    """
    views = with_sync_states_from_primary([i if isinstance(i, Instance) else Instance.from_object(i)
                                           for i in instances])
    live = sorted((i for i in views if not i.deleting), key=lambda i: i.ordinal)
    # Instances on their way out (scale down, or deleted by hand to be made again): not counted,
    # but the cluster is not settled until they are gone (their pods stop, their slots go).
    leaving = sorted((i for i in views if i.deleting), key=lambda i: i.ordinal)
    wanted = cluster.spec.instances
    if ha is not None:
        current = ha.get("currentPrimary")
        primary = next((i for i in live if i.name == current), None)
        if not current and ha.get("failover") is None and not cluster.status.get("failover"):
            # The first primary coming up (currentPrimary is set once it reports): a cluster being
            # created, not one that lost its primary (Degraded/NoPrimary said so while it bootstrapped).
            primary = next((i for i in live if i.name == ha.get("targetPrimary")), None)
        merged = (apply_merge_patch(cluster.status.get("failover"), ha["failover"])
                  if ha.get("failover") is not None else None)
    else:
        primary = _designated_primary(live)
        merged = cluster.status.get("failover")
    failover: dict[str, Any] = dict(merged or {})
    failover_phase = failover.get("phase")
    agent_ready = {i.name: is_ready(i, now, heartbeat_timeout) for i in live}
    routed = {i.name: pods is None or pod_ready(pods.get(i.name)) for i in live}
    ready = {name: agent_ready[name] and routed[name] for name in agent_ready}
    ready_count = sum(ready.values())
    primary_ready = primary is not None and ready[primary.name]
    never_reported = [i for i in live if i.status.last_heartbeat is None]
    first_time = cluster.status.get("phase") in (None, "", "Creating")
    # Agents ready whose pods the kubelet has not marked Ready yet: coming up, not missing, unless
    # the cluster was Ready before (then a pod that is not Ready is one the Services left).
    catching_up = [i for i in live if agent_ready[i.name] and not routed[i.name] and pod_catching_up(i, now)
                   and cluster.status.get("phase") != "Ready"]

    def why(instance: Instance) -> str:
        if agent_ready[instance.name] and not routed[instance.name]:
            return why_pod_not_ready(instance)
        return why_not_ready(instance, now, heartbeat_timeout)

    # An instance that reported once and is not ready now is a problem; one still coming up is not.
    unavailable = [i for i in live if not ready[i.name] and i.status.last_heartbeat is not None
                   and i not in catching_up]
    stale = [i for i in live if is_stale(i, now, heartbeat_timeout)]
    rolling = [i for i in live if i.status.observed_generation not in (None, i.generation)]
    reported_primaries = [i for i in live if ready[i.name] and i.status.role == PRIMARY]
    replicas_ready = sum(1 for i in live if ready[i.name] and i is not primary)

    problems: list[tuple[str, str]] = []  # most severe first: the first one is the reason
    if failover_phase == "Pending":
        problems.append(("PrimaryFailed", f"the primary {failover.get('oldPrimary')} failed "
                         f"({failover.get('reason')}); failover after spec.failoverDelay unless it comes back"))
    elif failover_phase and failover.get("kind") == "Failover":
        problems.append((failover.get("waitingReason") or "FailoverInProgress",
                         f"failover from {failover.get('oldPrimary')} ({failover.get('reason')}), "
                         f"{failover_phase}: " + str(failover.get("waitingFor") or "")))
    if live and primary is None and not failover_phase:
        problems.append(("NoPrimary", "no instance is marked primary"))
    elif primary is not None and primary in unavailable:
        problems.append(("PrimaryUnavailable", why(primary)))
    if len(reported_primaries) > 1:
        problems.append(("MultiplePrimaries", "Postgres runs as primary on "
                         + ", ".join(i.name for i in reported_primaries)))
    sync = cluster.spec.synchronous_replicas
    # Replicas still bootstrapping or not yet created are on their way, not missing.
    coming = sum(1 for i in never_reported if i is not primary) + max(0, wanted - len(live))
    if primary_ready and replicas_ready + coming < sync and cluster.spec.synchronous_mode == REQUIRED:
        problems.append(("SynchronousQuorumLost",
                         f"{replicas_ready} of the {sync} synchronous replicas required are ready: "
                         "commits wait until enough are back"))
    down_replicas = [i for i in unavailable if i is not primary]
    if down_replicas:
        problems.append(("InstancesUnavailable",
                         "; ".join(why(i) for i in down_replicas)))
    if primary_ready and replicas_ready + coming < sync and cluster.spec.synchronous_mode != REQUIRED:
        problems.append(("SynchronousReplicasMissing",
                         f"{replicas_ready} of {sync} synchronous replicas are ready: commits "
                         "continue without waiting for the missing ones"))
    failed_restores = [i for i in live if i.status.restore_phase == "Failed"]
    if failed_restores:  # the bootstrap gave up: nothing more happens without the user
        messages = [i.status.restore_message or "" for i in failed_restores]
        reason = (REASON_ENCRYPTION_KEY_MISMATCH if any(REASON_ENCRYPTION_KEY_MISMATCH + ":" in m for m in messages)
                  else "RestoreFailed")
        # First: the cause, not its consequence (no primary while the restore never finished).
        problems.insert(0, (reason, "; ".join(f"{i.name}: {i.status.restore_message or 'restore failed'}"
                                              for i in failed_restores)))
    refused = cluster.refused_publish_paths()
    if refused:  # the database works; what spec.publish asks is not done
        problems.append((REASON_PATH_REFUSED, refusal_message(refused)))

    progress: list[tuple[str, str]] = []
    if len(live) != wanted:
        what = "Creating" if first_time else ("ScalingUp" if len(live) < wanted else "ScalingDown")
        progress.append((what, f"{len(live)} of {wanted} instances exist"))
    if leaving and not cluster.deleting:
        progress.append(("RemovingInstances", "removing " + ", ".join(i.name for i in leaving)))
    if never_reported:
        progress.append(("Bootstrapping", "starting: " + ", ".join(
            i.name + (f" ({i.status.restore_summary or i.status.message})"
                      if i.status.restore_summary or i.status.message else "") for i in never_reported)))
    if catching_up:
        progress.append(("PodsNotReadyYet", "agent ready, pod not Ready yet: " + ", ".join(i.name for i in catching_up)))
    if rolling:
        progress.append(("RollingUpdate", "applying a new spec: " + ", ".join(i.name for i in rolling)))
    if waiting and not progress:
        progress.append(("Waiting", ""))

    if failover_phase and failover_phase != "Pending" and not cluster.deleting:
        progress.insert(0, (str(failover.get("kind")), f"{failover.get('kind')} {failover_phase}: "
                            + str(failover.get("waitingFor") or "")))
    if cluster.deleting:
        phase = "Deleting"
    elif failover_phase and failover_phase != "Pending":
        phase = str(failover.get("kind"))
    elif failed_restores:  # nothing more happens without the user: not "Creating"
        phase = "Degraded"
    elif not live or (primary is not None and not primary_ready and primary.status.last_heartbeat is None):
        phase = "Creating"
    elif problems:
        phase = "Degraded"
    elif len(live) != wanted or never_reported or leaving:
        phase = "Creating" if first_time else "Scaling"
    elif catching_up:  # the second until the kubelet agrees: the phase it had (Creating, Scaling, ...)
        phase = "Creating" if first_time else str(cluster.status.get("phase"))
    elif rolling:
        phase = "Updating"
    else:
        phase = "Ready"

    all_ready = primary_ready and ready_count == wanted and len(live) == wanted
    if all_ready:
        ready_condition = condition(READY, True, "AllInstancesReady", f"{ready_count} of {wanted} instances ready")
    elif primary is None:
        ready_condition = condition(READY, False, "NoPrimary", "no primary instance yet" if not live
                                     else "no instance is marked primary")
    elif not primary_ready:
        reason = "PrimaryHeartbeatStale" if primary in stale else "PrimaryNotReady"
        ready_condition = condition(READY, False, reason, why(primary))
    elif stale:
        ready_condition = condition(READY, False, "HeartbeatStale",
                                     "; ".join(why_not_ready(i, now, heartbeat_timeout) for i in stale))
    elif ready_count < len(live):
        not_ready = [i for i in live if not ready[i.name]]
        ready_condition = condition(READY, False, "InstancesNotReady", "; ".join(why(i) for i in not_ready))
    else:
        ready_condition = condition(READY, False, "Scaling", f"{len(live)} of {wanted} instances exist")

    messages = [message for _, message in progress if message] + list(waiting)
    progressing = (condition(PROGRESSING, True, progress[0][0], "; ".join(messages)) if progress
                   else condition(PROGRESSING, False, "Stable", "nothing to do"))
    degraded = (condition(DEGRADED, True, problems[0][0], "; ".join(message for _, message in problems))
                if problems else condition(DEGRADED, False, "Healthy", "no instance is missing"))

    status: dict[str, Any] = {
        "observedGeneration": cluster.generation,
        "phase": phase,
        "currentPrimary": primary.name if primary is not None else None,
        "readyInstances": ready_count,
        "instances": [_entry(i, ready[i.name], primary) for i in live],
        "conditions": set_conditions(cluster.status.get("conditions"), [ready_condition, progressing, degraded],
                                     now=now, generation=cluster.generation),
    }
    if ha is not None:
        status.update(ha)  # targetPrimary, currentPrimary (also when not live now), failover, ...
    _hibernation(cluster, status, ha, now)
    if primary is not None and primary.status.timeline is not None:
        status["timeline"] = primary.status.timeline
    return status


def _hibernation(cluster: Cluster, status: dict[str, Any], ha: Mapping[str, Any] | None, now: datetime) -> None:
    """A hibernating cluster's pods are gone on purpose: its phase says so (Hibernating,
    Hibernated), Ready is False for that reason and Degraded does not count the stopped instances;
    the condition Hibernated says since when (pgop.kernel.hibernation)."""
    state = (ha or {}).get(hibernation.STATUS_FIELD) if ha is not None and hibernation.STATUS_FIELD in ha \
        else cluster.status.get(hibernation.STATUS_FIELD)
    phase = (state or {}).get("phase")
    judged = hibernation.condition_for(phase, (state or {}).get("since"))
    if judged is None:
        if find_condition(cluster.status.get("conditions"), hibernation.CONDITION) is None:
            return
        judged = condition(hibernation.CONDITION, False, "Awake", "the cluster is not hibernated")
    updates = [judged]
    if phase in (hibernation.HIBERNATING, hibernation.HIBERNATED):
        status["phase"] = phase
        updates += [condition(READY, False, phase, judged["message"]),
                    condition(DEGRADED, False, phase, "the Postgres pods are stopped on purpose")]
        if phase == hibernation.HIBERNATED:
            updates.append(condition(PROGRESSING, False, phase, "nothing to do until `pgop hibernate off`"))
    elif phase == hibernation.WAKING and status.get("phase") != "Ready":
        status["phase"] = phase
    for update in updates:
        status["conditions"] = set_condition(status["conditions"], update, now=now, generation=cluster.generation)


def worth_writing(current: Mapping[str, Any], desired: Mapping[str, Any],
                  refresh_after: float = MOVING_REFRESH) -> bool:
    """Whether `desired` (cluster_status) should be written over the PgCluster's `current` status.

    Any change of phase, conditions, primary, readiness, role, timeline, ... is written at once.
    A change of the moving fields alone (an agent's new LSN or heartbeat) is written only when an
    instance's reported heartbeat is `refresh_after` seconds newer than the one the status shows:
    every agent reports every few seconds, and a status that followed each report would wake every
    watcher of the PgCluster (this operator first) and cost a write each time."""
    if any(current.get(key) != value for key, value in desired.items() if key != "instances"):
        return True
    if "instances" not in desired:
        return False
    old = {e.get("name"): e for e in current.get("instances") or []}
    new = desired["instances"] or []
    if list(old) != [e.get("name") for e in new]:
        return True
    for entry in new:
        before = old[entry.get("name")]
        if _steady(before) != _steady(entry):
            return True
    for entry in new:
        before, after = (parse_time(old[entry.get("name")].get("lastHeartbeat")),
                         parse_time(entry.get("lastHeartbeat")))
        if (before is None) != (after is None):
            return True
        if before is not None and after is not None and (after - before).total_seconds() >= refresh_after:
            return True
    return False


def _steady(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key not in MOVING}
