"""Whether an instance is ready, as every controller judges it: the agent's `ready: true` is
believed only while its heartbeat is fresh, so a dead pod cannot take its last word back. Pure:
`now` is an argument."""
from __future__ import annotations

from datetime import datetime

from pgop.kernel.model import Instance

DEFAULT_HEARTBEAT_TIMEOUT = 15.0  # seconds: three missed beats of an agent that beats every 5 s


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
