"""kopf handlers for MysqlDb (mysqldbs.pgop.io/v1). Thin: build the view, ask the controller, report.

Importing this module registers the handlers and does nothing else; the controller and its
clients are built on first use from the operator's environment (pgop/runtime/config.py).

- create / update / resume: one reconcile pass. Faults that heal (throttling, Vault or Consul down)
  raise kopf.TemporaryError, so kopf retries with backoff; spec problems raise kopf.PermanentError
  after the condition is written; a fix to the spec triggers the update handler.
- timer: while RDS works (creating, modifying) and, less often, once settled, the timer looks again
  when status.nextCheckAt is due. It never waits: RDS taking ten minutes costs nothing here.
- delete: follows deletionPolicy; kopf's finalizer keeps the object until it is done.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

import kopf

from pgop.kernel.actions import Plan
from pgop.kernel.conditions import condition, set_condition
from pgop.rds import policy
from pgop.rds.controller import MysqlDbController, build_controller
from pgop.rds.spec import InvalidSpec, MysqlDbObject
from pgop.runtime.config import OperatorConfig
from pgop.runtime.metrics import measured

GROUP, VERSION, PLURAL = "pgop.io", "v1", "mysqldbs"
TIMER_INTERVAL = 5.0  # a tick only compares status.nextCheckAt with the clock

# Loggers that would print request bodies (the master password among them) at DEBUG.
_REQUEST_BODY_LOGGERS = ("botocore", "boto3", "urllib3", "hvac", "s3transfer")

_lock = threading.Lock()
_controller: MysqlDbController | None = None


def controller() -> MysqlDbController:
    global _controller
    with _lock:
        if _controller is None:
            _controller = build_controller(OperatorConfig.from_env())
        return _controller


@kopf.on.startup()
def keep_secrets_out_of_debug_logs(**_: Any) -> None:
    for name in _REQUEST_BODY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _view(body: Any, patch: Any) -> MysqlDbObject:
    try:
        return MysqlDbObject.from_body(body)
    except InvalidSpec as error:
        patch.status["phase"] = policy.FAILED
        patch.status["lastError"] = str(error)
        patch.status["conditions"] = set_condition(
            (body.get("status") or {}).get("conditions"), condition("Ready", False, "InvalidSpec", str(error)),
            now=datetime.now(UTC), generation=body.get("metadata", {}).get("generation"))
        raise kopf.PermanentError(str(error)) from None


def _report(plan: Plan, body: Any, patch: Any, memo: Any) -> None:
    """The controller's Plan (a status patch and Events; it never holds Actions) onto kopf."""
    for key, value in plan.status.items():
        patch.status[key] = value
    for event in plan.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    # The timer's schedule also lives in kopf's per-object memory, so it works even where the
    # status schema prunes nextCheckAt; after a restart the first tick simply looks at once.
    memo["next_check"] = plan.status.get("nextCheckAt")
    memo["faults"] = (memo.get("faults") or 0) + 1 if plan.requeue_after is not None else 0


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@measured("MysqlDb")
def reconcile(body: Any, patch: Any, memo: Any, retry: int, **_: Any) -> None:
    obj = _view(body, patch)
    plan = controller().reconcile(obj, attempt=retry)
    _report(plan, body, patch, memo)
    if plan.permanent:
        raise kopf.PermanentError(plan.permanent)
    if plan.requeue_after is not None:
        raise kopf.TemporaryError(plan.status.get("lastError") or "retrying", delay=plan.requeue_after)


@kopf.timer(GROUP, VERSION, PLURAL, interval=TIMER_INTERVAL, initial_delay=TIMER_INTERVAL)
@measured("MysqlDb")
def look_again(body: Any, status: Any, patch: Any, memo: Any, **_: Any) -> None:
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    phase = status.get("phase")
    if phase not in policy.CHANGING_PHASES | policy.SETTLED_PHASES:
        return  # Pending and Failed belong to the handlers (kopf retries / a spec change)
    if not policy.due(memo.get("next_check") or status.get("nextCheckAt"), datetime.now(UTC)):
        return
    try:
        obj = MysqlDbObject.from_body(body)
    except InvalidSpec:
        return
    _report(controller().reconcile(obj, attempt=memo.get("faults") or 0), body, patch, memo)


@kopf.on.delete(GROUP, VERSION, PLURAL)
@measured("MysqlDb")
def delete(body: Any, patch: Any, memo: Any, retry: int, **_: Any) -> None:
    obj = _view(body, patch)
    plan = controller().finalize(obj, attempt=retry)
    _report(plan, body, patch, memo)
    if not plan.finished:
        reason = plan.status.get("lastError") or next(
            (c["message"] for c in plan.status.get("conditions", [])
             if c.get("type") in ("DeletionBlocked", "Progressing") and c.get("status") == "True"),
            "deletion in progress")
        raise kopf.TemporaryError(reason, delay=plan.requeue_after or 10.0)
