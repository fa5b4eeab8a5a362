"""The PgInstance status the agent writes (pure: `now` is an argument).

Written at once when anything in it changes, and otherwise (replicas) every DEFAULT_STATUS_REFRESH
seconds only to renew `lastHeartbeat` (`worth_writing`, `refresh_for`): an idle replica costs the
API server one small write per refresh, not one per turn of the loop; a primary beats every turn. The operator trusts `ready` only while
`lastHeartbeat` is fresh (pgop.kernel.readiness: three missed refreshes); it rolls a restart on
only once `observedGeneration` equals the generation it wrote.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pgop.agent.ha import Decision, wal_receiver
from pgop.agent.observed import Archiver, PostgresState
from pgop.agent.settings import DEFAULT_STATUS_REFRESH, AgentSettings
from pgop.agent.streaming import Standby
from pgop.kernel.conditions import condition, rfc3339, set_conditions
from pgop.kernel.lsn import lag_bytes
from pgop.kernel.model import PRIMARY, Instance

# DEFAULT_STATUS_REFRESH (pgop.agent.settings): seconds between heartbeat-only writes;
# pgop.kernel.readiness.DEFAULT_HEARTBEAT_TIMEOUT is three of them. What failover reacts to (a
# receiver that stops, a role, readiness) changes the status and is written on the turn it is seen.
CONDITION_READY = "Ready"
CONDITION_CONFIG = "ConfigurationApplied"


def build_status(
    settings: AgentSettings,
    *,
    now: datetime,
    state: PostgresState | None,
    decision: Decision | None,
    ready: bool,
    generation: int,
    applied_generation: int | None,
    previous_conditions: Sequence[Mapping[str, Any]] = (),
    message: str | None = None,
    primary_lsn: str | None = None,
    not_ready: str | None = None,
    received_lsn: str | None = None,
    following: str | None = None,
    extra_conditions: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    state = state or PostgresState()
    phase = decision.phase if decision else "Starting"
    text = message or (decision.message if decision else None)
    status: dict[str, Any] = {
        "lastHeartbeat": rfc3339(now),
        "phase": phase,
        "ready": ready,
        "role": state.role,
        "timeline": state.timeline,
        "lsn": state.lsn,
        "receivedLSN": (received_lsn or state.received_lsn) if state.role == "replica" else None,
        "replayLSN": state.lsn if state.role == "replica" else None,
        "walReceiver": wal_receiver(state),
        "following": following,
        "pod": settings.pod_name or None,
        "podUID": settings.pod_uid or None,
        "podIP": settings.pod_ip or None,
        "node": settings.node_name or None,
        "pendingRestart": bool(state.pending_restart),
        "systemIdentifier": state.system_identifier,
        "fenced": phase == "Fenced",
        "message": text,  # None removes a message that no longer holds (merge patch)
    }
    if state.archiver is not None:
        status["archiver"] = archiver_status(state.archiver)
    if applied_generation is not None:
        status["observedGeneration"] = applied_generation
    if state.role == "replica":
        # Against the primary's last reported LSN (a few seconds old: never below zero).
        status["lagBytes"] = lag_bytes(primary_lsn, state.lsn)
    if ready:
        ready_condition = condition(CONDITION_READY, True, "Accepting", f"postgres accepts connections as {state.role}")
    else:
        ready_condition = condition(CONDITION_READY, False, phase, text or not_ready or "not ready")
    applied = decision is not None and decision.applied and applied_generation == generation
    pending = "; ".join(str(a) for a in decision.actions) if decision and decision.actions else "nothing"
    if applied:
        reason, why = "Applied", f"generation {generation} is in effect"
    elif decision is not None and decision.waiting and decision.message:
        reason, why = "NotApplied", decision.message
    else:
        reason, why = "Applying", f"pending: {pending}"
    config_condition = condition(CONDITION_CONFIG, applied, reason, why)
    # lastTransitionTime moves only when a status flips; the operator's own types stay (a merge
    # patch replaces a list whole).
    status["conditions"] = set_conditions(previous_conditions,
                                          [ready_condition, config_condition, *extra_conditions],
                                          now=now, generation=generation)
    return status


def archiver_status(archiver: Archiver) -> dict[str, Any]:
    """pg_stat_archiver as the PgInstance CRD's `archiver` (None clears a field in a merge patch)."""
    def when(moment: datetime | None) -> str | None:
        return rfc3339(moment) if moment is not None else None
    return {
        "archivedCount": archiver.archived_count,
        "lastArchivedWal": archiver.last_archived_wal,
        "lastArchivedTime": when(archiver.last_archived_time),
        "failedCount": archiver.failed_count,
        "lastFailedWal": archiver.last_failed_wal,
        "lastFailedTime": when(archiver.last_failed_time),
        "refusal": {"reason": archiver.refusal[0], "message": archiver.refusal[1]} if archiver.refusal else None,
    }


def replica_sync_states(standbys: Iterable[Standby], members: Iterable[Instance],
                        previous: Mapping[str, str] | None) -> dict[str, str | None]:
    """status.replicaSyncStates of a primary, as a merge patch value: the sync state of each
    member of the cluster that streams from it, as pg_stat_replication says; a member it had
    before and no longer sees is removed (None). On the primary's own status: an agent writes no
    other instance's status (pgop.kernel.model.with_sync_states_from_primary reads it)."""
    names = {i.name for i in members}
    seen = {s.application_name: s.sync_state for s in standbys if s.application_name in names and s.sync_state}
    return {**{name: None for name in previous or {} if name not in seen}, **seen}


def primary_system_identifier(instances: Iterable[Instance] | None, me: str) -> str | None:
    """The system identifier the primary (wanted and reported) last wrote into its status: an
    instance on another one is never ready."""
    for instance in instances or ():
        if instance.name != me and instance.spec.role == "primary" and instance.status.role == "primary":
            return instance.status.system_identifier
    return None


def primary_lsn(instances: Iterable[Instance] | None) -> str | None:
    """The LSN the instance that is primary (wanted and reported) last wrote into its status."""
    for instance in instances or ():
        if instance.spec.role == "primary" and instance.status.role == "primary":
            return instance.status.lsn
    return None


def changes(stored: Mapping[str, Any] | None, patch: Mapping[str, Any]) -> bool:
    """Whether the JSON merge patch `patch` would change `stored` (None removes a field)."""
    stored = stored or {}
    for key, value in patch.items():
        current = stored.get(key)
        if value is None:
            if current is not None:
                return True
        elif isinstance(value, Mapping):
            if current is not None and not isinstance(current, Mapping):
                return True
            if changes(current, value) or (current is None and _without_nulls(value)):
                return True
        elif current != value:
            return True
    return False


def _without_nulls(value: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if v is not None}


def refresh_for(instance: Instance, state: PostgresState, refresh: float) -> float:
    """How long an unchanged status may go unwritten. A primary (wanted or running) beats on every
    turn: failover reads its silence (pgop.cluster.failover.CORROBORATED_SILENCE, three turns) as
    one of two signs that its node is gone. Replicas write what changes at once (a receiver that
    stops is what the other sign is), and otherwise renew their heartbeat every `refresh`; a
    replica without a WAL stream beats on every turn too: its beat after the primary's last one
    is what confirms that sign (a primary whose agent outlived its Postgres by a beat is failed
    over a turn after, not up to `refresh` later)."""
    if PRIMARY in (instance.spec.role, state.role) or wal_receiver(state) not in (None, "streaming"):
        return 0.0
    return refresh


def worth_writing(stored: Mapping[str, Any] | None, patch: Mapping[str, Any],
                  since_written: float | None, refresh: float = DEFAULT_STATUS_REFRESH) -> bool:
    """Whether to send `patch` now: something in it differs from the status as stored (read this
    turn, so another writer's change is put right too), or the last write is `refresh` seconds old
    (the heartbeat), or nothing was written yet (None: also after a new spec generation was read,
    so the operator that changed it sees a report newer than its change). `lastHeartbeat` alone is
    no change."""
    if since_written is None or since_written >= refresh:
        return True
    return changes(stored, {k: v for k, v in patch.items() if k != "lastHeartbeat"})
