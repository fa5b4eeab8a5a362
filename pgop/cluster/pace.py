"""When the next timed pass of a PgCluster or a PgInstance is due (pure: `now` is an argument).

Watch events start a pass at once (pgop.cluster.handlers): a pod that stops, an agent's report, a
spec change. Timed passes are for what only time changes: a heartbeat that stops coming (a frozen
node or a cut network sends no event), a failover's delays, a backup's cron, certificates.

While anything moves (the last pass had something to do, the cluster is not Ready, an instance is
not ready), a pass every FAST seconds. A steady one (its last pass found nothing to do, every
heartbeat fresh) waits until the first of its heartbeats would go stale, and at most STEADY
seconds: an agent that stops beating is seen as soon as the readiness rule says it is silent
(pgop.kernel.readiness: older than the timeout), not one tick later, while an idle cluster costs a
pass every STEADY seconds instead of every FAST.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pgop.cluster.failover import STREAMING
from pgop.kernel import liveness
from pgop.kernel.model import PRIMARY, REPLICA
from pgop.kernel.readiness import DEFAULT_HEARTBEAT_TIMEOUT

FAST = 2.0
STEADY = 10.0
# Past the deadline, so the heartbeat is older than the timeout when the pass judges it.
MARGIN = 0.25
SHORTEST = 0.5  # never a busy loop, whatever the clocks say
JITTER = 0.1  # steady waits are shortened by up to this fraction: the passes of many clusters spread


def heartbeats(instances: Iterable[Mapping[str, Any]]) -> list[datetime | None]:
    """The newest sign of life of each instance's agent (its status.lastHeartbeat, or its Lease's
    renewal beside the body: pgop.kernel.liveness), None where there is none."""
    return [liveness.alive_at(i) for i in instances]


def next_pass_in(steady: bool, beats: Iterable[datetime | None], now: datetime, *,
                 timeout: float = DEFAULT_HEARTBEAT_TIMEOUT, jitter: float = 0.0) -> float:
    """Seconds until the next timed pass. `steady`: the last pass found nothing to do and the
    object says all is well; `beats`: the heartbeats that must stay fresh; `jitter` in [0, 1):
    the fraction of JITTER taken off a steady wait."""
    if not steady:
        return FAST
    wait = STEADY * (1.0 - JITTER * jitter)
    for beat in beats:
        if beat is None:
            return FAST
        left = (beat - now).total_seconds() + timeout + MARGIN
        if left <= 0:
            return FAST
        wait = min(wait, left)
    return max(SHORTEST, wait)


def cluster_steady(body: Mapping[str, Any], instances: Iterable[Mapping[str, Any]]) -> bool:
    """A PgCluster with nothing under way: Ready (no failover, switchover, scaling, rollout,
    hibernation or bootstrap: each has its own phase) for its current generation, and every
    replica streaming. A replica that lost its WAL stream may be the second witness of a primary
    gone silent (pgop.cluster.failover.CORROBORATED_SILENCE: a failover 6 s after its last beat,
    before the heartbeat timeout), so the cluster is then looked at every FAST seconds."""
    status = body.get("status") or {}
    generation = (body.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if status.get("phase") != "Ready" or observed not in (None, generation):
        return False
    for instance in instances:
        st = instance.get("status") or {}
        if st.get("role") != PRIMARY and st.get("walReceiver") != STREAMING:
            return False
    return True


def instance_steady(body: Mapping[str, Any]) -> bool:
    """A PgInstance whose agent says it is ready, in the role it was given."""
    status, spec = body.get("status") or {}, body.get("spec") or {}
    return bool(status.get("ready")) and status.get("role") == spec.get("role", REPLICA)
