"""When the next timed pass of a PgCluster or a PgInstance is due (pure: `now` is an argument).

Watch events start a pass at once (pgop.cluster.handlers): a pod that stops, an agent's report, a
spec change. Timed passes are for what only time changes: a heartbeat that stops coming (a frozen
node or a cut network sends no event), a failover's delays, a backup's cron, certificates.

While anything moves (the last pass had something to do, the cluster is not Ready, an instance is
not ready), a pass every FAST seconds. A steady one (its last pass found nothing to do, every
heartbeat fresh) has a full pass every RESYNC seconds, or sooner when something of it is due (a
scheduled backup). Between those, it is looked at on the operator's indexes, with no request and no
thread (pgop.runtime.paced), every LOOK_EVERY seconds or when its first heartbeat would go stale if
that is sooner: an agent that stops beating is seen as soon as the readiness rule says it is silent
(pgop.kernel.readiness: older than the timeout), not one tick later, and a view changed since the
last pass (view_of) gets a pass too. A pass that an event started and that found the object moving
brings its timed pass forward (pgop.runtime.paced.hurry).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from pgop.cluster.failover import STREAMING
from pgop.cluster.status import MOVING
from pgop.kernel import liveness
from pgop.kernel.model import PRIMARY, REPLICA
from pgop.kernel.readiness import DEFAULT_HEARTBEAT_TIMEOUT

FAST = 2.0
# A steady object's full pass: for what changes with time alone and says nothing (a certificate
# ageing, retention by age, a CA rotation's next phase, the PgCluster's moving fields every
# pgop.cluster.status.MOVING_REFRESH); an earlier due time (a scheduled backup) brings it forward.
RESYNC = 60.0
# A steady object is looked at at least this often: a look that finds its view changed since its
# last pass (view_of: anything but the moving fields) asks for a pass, so what no event handler
# starts a pass for (an agent's report of its certificates, of archiving, of a pending restart)
# is still seen within this time, as when every steady object had a full pass this often.
LOOK_EVERY = 10.0
# Past the deadline, so the heartbeat is older than the timeout when the pass judges it.
MARGIN = 0.25
SHORTEST = 0.5  # never a busy loop, whatever the clocks say
JITTER = 0.1  # steady waits are shortened by up to this fraction: the passes of many clusters spread


class Steady(NamedTuple):
    """A steady object's pace (pgop.runtime.paced): a look in `look` seconds (on the indexes, in the
    event loop: look_again_in), the next full pass in `resync` seconds at the latest."""
    look: float
    resync: float


def heartbeats(instances: Iterable[Mapping[str, Any]]) -> list[datetime | None]:
    """The newest sign of life of each instance's agent (its status.lastHeartbeat, or its Lease's
    renewal beside the body: pgop.kernel.liveness), None where there is none."""
    return [liveness.alive_at(i) for i in instances]


def stale_in(beats: Iterable[datetime | None], now: datetime, *,
             timeout: float = DEFAULT_HEARTBEAT_TIMEOUT) -> float | None:
    """Seconds until the first of `beats` is older than the timeout (and MARGIN), at least
    SHORTEST; None when one is missing or already that old (a pass is due now); infinity when
    there are none."""
    left = math.inf
    for beat in beats:
        if beat is None:
            return None
        until = (beat - now).total_seconds() + timeout + MARGIN
        if until <= 0:
            return None
        left = min(left, until)
    return max(SHORTEST, left)


def next_pass_in(steady: bool, beats: Iterable[datetime | None], now: datetime, *,
                 timeout: float = DEFAULT_HEARTBEAT_TIMEOUT, jitter: float = 0.0,
                 due: datetime | None = None) -> float | Steady:
    """After a pass: FAST seconds until the next, or, for a steady object (the pass found nothing
    to do and the object says all is well) whose heartbeats are all fresh, its Steady pace.
    `beats`: the heartbeats that must stay fresh; `jitter` in [0, 1): the fraction of JITTER taken
    off the resync; `due`: the next time something of the object is due (a scheduled backup)."""
    if not steady:
        return FAST
    left = stale_in(beats, now, timeout=timeout)
    if left is None:
        return FAST
    resync = RESYNC * (1.0 - JITTER * jitter)
    if due is not None:
        resync = min(resync, (due - now).total_seconds() + MARGIN)
    resync = max(SHORTEST, resync)
    return Steady(look=min(left, resync, LOOK_EVERY), resync=resync)


def look_again_in(steady: bool, beats: Iterable[datetime | None], now: datetime, *,
                  timeout: float = DEFAULT_HEARTBEAT_TIMEOUT) -> float | None:
    """At a steady object's look: seconds until the next look (its first heartbeat going stale),
    or None when a pass is due now (it is not steady any more, or an agent went silent)."""
    left = stale_in(beats, now, timeout=timeout) if steady else None
    return None if left is None else min(left, LOOK_EVERY)


def view_of(*groups: Iterable[Mapping[str, Any]]) -> tuple:
    """What a look compares with what the object's last pass saw: for each object of each group
    (the PgCluster, its PgInstances, their pods, their volumes), its name, generation and status,
    less the moving fields an agent reports on every turn (pgop.cluster.status.MOVING: LSNs, lag,
    heartbeats), which change nothing a pass decides while the object is steady."""
    return tuple(tuple(sorted(_settled(obj) for obj in group)) for group in groups)


def _settled(obj: Mapping[str, Any]) -> tuple:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    kept = repr([(key, value) for key, value in status.items() if key not in MOVING])
    return meta.get("name") or "", meta.get("generation"), meta.get("deletionTimestamp"), kept


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
