"""What every kopf handler shares: the API client, applying a Plan, recording its Events, and the
hooks through which one feature adds to another's reconcile without importing it.

Handlers are thin: they read, call a pure planner, and hand the Plan to `apply_plan`.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

import kopf
from kubernetes.client.rest import ApiException

from pgop.kernel.actions import NORMAL, Event, Plan
from pgop.runtime import metrics
from pgop.runtime.kube import Kube, NotFound

log = logging.getLogger("pgop.runtime")

_REASON = {"create": "Created", "patch": "Updated", "delete": "Deleted"}


@functools.cache
def kube() -> Kube:
    return Kube()


def apply_plan(body: Any, plan: Iterable[Any], logger: Any) -> None:
    """Applies the actions in order, an Event per action that changed something (a create that
    found the object there, from a view that lagged, says nothing). A 4xx/5xx of the API becomes a
    kopf retry naming the action and the API's reason (never the body, which may hold a password)."""
    for action in plan:
        try:
            if not kube().apply(action):
                logger.debug("already done: %s", action.describe())
                continue
        except NotFound:
            logger.info("skipped %s: the object is gone", action.describe())
            continue
        except ApiException as e:
            if e.status == 403 and "being terminated" in str(e.body or ""):
                logger.info("namespace is being deleted: %s skipped", action.describe())
                return
            raise kopf.TemporaryError(f"{action.verb} {action.kind} {action.name} failed: "
                                      f"{e.status} {e.reason}", delay=5) from None
        kopf.info(body, reason=_REASON[action.verb] + action.kind, message=action.describe())
        log.info("%s/%s: %s", body["metadata"].get("namespace"), body["metadata"]["name"],
                 action.describe())


def record_events(body: Any, events: Iterable[Event]) -> None:
    events = list(events)
    metrics.events_recorded(body, events)
    for event in events:
        (kopf.info if event.type == NORMAL else kopf.warn)(body, reason=event.reason, message=event.message)
        log.info("%s/%s: %s: %s", body["metadata"].get("namespace"), body["metadata"]["name"],
                 event.reason, event.message)


# A cluster hook runs inside each PgCluster reconcile, after the cluster's own plan is applied:
# hook(body, cluster, status, logger) may apply plans of its own and add to `status` (the dict the
# reconcile is about to write). Features register theirs when the operator loads their handlers.
ClusterHook = Callable[[Any, Any, dict[str, Any], Any], None]
_F = TypeVar("_F")
_cluster_hooks: list[ClusterHook] = []


def _register(registry: list[_F], fn: _F) -> _F:
    """Adds `fn` once (a module imported twice registers nothing twice)."""
    if fn not in registry:
        registry.append(fn)
    return fn


def on_cluster_reconcile(hook: ClusterHook) -> ClusterHook:
    return _register(_cluster_hooks, hook)


def cluster_hooks() -> list[ClusterHook]:
    return list(_cluster_hooks)


# A cluster preview is a hook's dry run on the operator's indexes, for a pass that would otherwise
# read nothing: preview(body, cluster, status, reader) adds to `status` what the hook would and
# says whether the hook has nothing to do (False: the pass is made again from the API, hooks and all).
ClusterPreview = Callable[[Any, Any, dict[str, Any], Any], bool]
_cluster_previews: list[ClusterPreview] = []


def on_cluster_preview(preview: ClusterPreview) -> ClusterPreview:
    return _register(_cluster_previews, preview)


def cluster_previews() -> list[ClusterPreview]:
    return list(_cluster_previews)


# A cluster due time says when a hook's dry run may next answer differently with nothing else
# changed: due(cluster, now) -> the time (e.g. the next scheduled backup), or None. A steady
# cluster's next full pass comes no later (pgop.cluster.pace).
ClusterDue = Callable[[Any, datetime], datetime | None]
_cluster_due: list[ClusterDue] = []


def on_cluster_due(due: ClusterDue) -> ClusterDue:
    return _register(_cluster_due, due)


def cluster_due(cluster: Any, now: datetime) -> datetime | None:
    """The earliest due time of the registered hooks for `cluster`, None when none has one."""
    times = [moment for moment in (due(cluster, now) for due in _cluster_due) if moment is not None]
    return min(times) if times else None


_warned: dict[tuple[str, str, str], str] = {}


def warn_once(body: Any, reason: str, message: str) -> None:
    """An Event per distinct problem, not one per 2-second pass."""
    meta = body["metadata"]
    key = (meta.get("namespace"), meta["name"], reason)
    if _warned.get(key) != message:
        _warned[key] = message
        kopf.warn(body, reason=reason, message=message)


def remember(body: Any, topic: str, mark: str | None = None) -> str | None:
    """The last mark remembered for (object, topic); stores `mark` when given. For Events that say
    a thing once per change, not once per pass."""
    meta = body["metadata"]
    key = (meta.get("namespace"), meta["name"], topic)
    before = _warned.get(key)
    if mark is not None:
        _warned[key] = mark
    return before


# What a feature keeps of an object it drops when the object is deleted: forgetter(namespace, name)
# (e.g. the outcome of a deleted cluster's retention work, pgop.backup.handlers).
Forgetter = Callable[[str | None, str], None]
_forgetters: list[Forgetter] = []


def on_forget(forgetter: Forgetter) -> Forgetter:
    return _register(_forgetters, forgetter)


def forget(namespace: str | None, name: str) -> None:
    """Drops what was remembered of an object (warn_once, remember, and what the registered
    features keep) once it is deleted: an operator that outlives many clusters must not keep
    every one of them in memory."""
    for key in [key for key in _warned if key[0] == namespace and key[1] == name]:
        _warned.pop(key, None)
    for forgetter in _forgetters:
        forgetter(namespace, name)


__all__ = ["forget", "Plan", "apply_plan", "cluster_due", "cluster_hooks", "cluster_previews", "kube",
           "on_cluster_due", "on_cluster_preview", "on_forget", "on_cluster_reconcile", "record_events",
           "remember", "warn_once"]
