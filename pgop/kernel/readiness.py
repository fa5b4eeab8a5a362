"""Whether an instance is ready, as every controller judges it: the agent's `ready: true` is
believed only while its heartbeat is fresh, so a dead pod cannot take its last word back. Pure:
`now` is an argument."""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pgop.kernel.conditions import find_condition
from pgop.kernel.model import Instance

DEFAULT_HEARTBEAT_TIMEOUT = 15.0  # seconds: three missed beats of an agent that beats every 5 s
# How long after its agent says ready an instance's pod may still be not Ready and the instance be
# taken as coming up: the kubelet probes /readyz every second (pgop.specs.pods), and the pod's
# Ready condition follows the first probe that passes. A pod not Ready longer than that, or one that
# lost its readiness under a ready agent (a node whose kubelet stopped), is unavailable.
POD_READY_GRACE = 10.0


def heartbeat_age(instance: Instance, now: datetime) -> float | None:
    """Seconds since the agent's newest sign of life: a status write or a renewal of its Lease
    (pgop.kernel.liveness); None when it never gave one."""
    beat = instance.status.alive_at
    return None if beat is None else (now - beat).total_seconds()


def is_ready(instance: Instance, now: datetime, heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT) -> bool:
    age = heartbeat_age(instance, now)
    return instance.status.ready and age is not None and age <= heartbeat_timeout


def is_stale(instance: Instance, now: datetime, heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT) -> bool:
    """It did beat, but not for longer than the timeout."""
    age = heartbeat_age(instance, now)
    return age is not None and age > heartbeat_timeout


def why_not_ready(instance: Instance, now: datetime, heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT) -> str:
    age = heartbeat_age(instance, now)
    if age is None:
        detail = instance.status.phase or "starting"
        if instance.status.message:
            detail += f": {instance.status.message}"
        return f"{instance.name}: no heartbeat yet ({detail})"
    if age > heartbeat_timeout:
        return f"{instance.name}: last heartbeat {age:.0f}s ago (limit {heartbeat_timeout:.0f}s)"
    return f"{instance.name}: not ready ({instance.status.phase or 'no phase reported'})"


def pod_ready(pod: Mapping[str, Any] | None) -> bool:
    """Whether the kubelet marks the pod Ready and it is not being deleted: only then do its
    Services (-rw, -ro, -r) route to it."""
    if not pod or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    ready = find_condition((pod.get("status") or {}).get("conditions"), "Ready")
    return ready is not None and ready.get("status") == "True"


def pod_catching_up(instance: Instance, now: datetime) -> bool:
    """Its agent became ready within POD_READY_GRACE: a pod not yet Ready is still coming up."""
    since = instance.status.ready_since
    return since is not None and (now - since).total_seconds() <= POD_READY_GRACE


def why_pod_not_ready(instance: Instance) -> str:
    pod = f"its pod {instance.status.pod}" if instance.status.pod else "its pod"
    return (f"{instance.name}: its agent is ready, {pod} is not Ready (the Services route to it once the "
            "kubelet's readiness probe passes)")
