"""Why an instance is not running, from what Kubernetes shows of its volume and pods (pure).

The agent speaks for its instance while it runs (heartbeats, phase, message); before it starts,
or once its heartbeat is stale, the operator does, with what it can see from outside.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pgop.kernel.meta import ANNOTATION_BOOTSTRAP_MODE, POSTGRES_CONTAINER

Obj = Mapping[str, Any]

# Container waiting reasons that will not fix themselves without a person.
STUCK = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
         "CreateContainerConfigError", "CreateContainerError", "CrashLoopBackOff", "RunContainerError"}


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def volume_problem(pvc: Obj | None, storage_class_exists: bool | None) -> str | None:
    if pvc is None:
        return None
    if (pvc.get("status") or {}).get("phase") in (None, "Pending"):
        sc = (pvc.get("spec") or {}).get("storageClassName")
        if sc and storage_class_exists is False:
            return f"volume {_name(pvc)} is Pending: StorageClass {sc!r} does not exist"
        if not sc and storage_class_exists is False:
            return f"volume {_name(pvc)} is Pending: no storageClassName and no default StorageClass"
        return f"volume {_name(pvc)} is Pending: not bound to a volume yet"
    return None


def _last_line(text: str | None, limit: int = 500) -> str:
    """The last non-empty line of a termination message (the error, after the log it may carry)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][-limit:] if lines else ""


def pod_problem(pod: Obj) -> str | None:
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"pod {_name(pod)} cannot be scheduled: {cond.get('message') or cond.get('reason')}"
    statuses = list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or [])
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in STUCK:
            detail = waiting.get("message") or ""
            last = ((cs.get("lastState") or {}).get("terminated") or {})
            if reason == "CrashLoopBackOff" and last:
                detail = f"exited with {last.get('exitCode')} ({last.get('reason', '')})"
                said = _last_line(last.get("message"))
                if said:
                    detail += f": {said}"
            return f"pod {_name(pod)}: container {cs['name']}: {reason}" + (f": {detail}" if detail else "")
    if status.get("phase") == "Failed":
        return f"pod {_name(pod)} failed: {status.get('message') or status.get('reason') or 'see its logs'}"
    return None


def bootstrap_in_pod(pod: Obj) -> str | None:
    """The bootstrap a Postgres pod's agent runs before it starts Postgres (the pod carries the
    annotation pgop.io/bootstrap-mode): None when the pod has none to run, "Succeeded" once its
    Postgres container was ready (Postgres ran on the data directory the bootstrap made),
    otherwise what the container does now ("running", "waiting: CrashLoopBackOff",
    "exited 1, restarted 3 times (see its log)", ...)."""
    if ANNOTATION_BOOTSTRAP_MODE not in ((pod.get("metadata") or {}).get("annotations") or {}):
        return None
    statuses = [s for s in (pod.get("status") or {}).get("containerStatuses") or ()
                if s.get("name") == POSTGRES_CONTAINER]
    if not statuses:
        return "waiting to start"
    status = statuses[0]
    if status.get("ready"):
        return "Succeeded"
    state = status.get("state") or {}
    terminated = state.get("terminated")
    restarts = status.get("restartCount") or 0
    if terminated is not None:
        now = f"exited {terminated.get('exitCode')}"
    elif "running" in state:
        now = "running"
    else:
        now = "waiting: " + str((state.get("waiting") or {}).get("reason") or "to start")
    return now + (f", restarted {restarts} times (see its log)" if restarts else "")


def instance_report(pvc: Obj | None, pods: Sequence[Obj], waiting: Sequence[str],
                    storage_class_exists: bool | None) -> tuple[str, str]:
    """(phase, message) for an instance whose agent does not report."""
    problem = volume_problem(pvc, storage_class_exists)
    if problem:
        return "Pending", problem
    for pod in pods:
        problem = pod_problem(pod)
        if problem:
            return "Failed", problem
    if any(p["metadata"]["name"].endswith("-bootstrap") or bootstrap_in_pod(p) not in (None, "Succeeded") for p in pods):
        return "Bootstrapping", "; ".join(waiting) or "bootstrap running"
    return "Pending", "; ".join(waiting) or "waiting for the Postgres pod to start"
