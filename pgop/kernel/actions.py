"""What a controller decided: the one result type of every "decide, then act" step.

A pure planner returns a Plan: the changes to API objects in order (Actions), what holds the rest
back (`waiting`, in words), a merge patch for the object's status, the Events to record and when to
look again. A thin handler applies it. `pgop plan` prints the same Plan without applying it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pgop.kernel.model import API_VERSION

CREATE = "create"
PATCH = "patch"
DELETE = "delete"

NORMAL = "Normal"
WARNING = "Warning"

API_VERSIONS = {
    "PgCluster": API_VERSION,
    "PgInstance": API_VERSION,
    "PgBackup": API_VERSION,
    "MysqlDb": API_VERSION,
    "Service": "v1",
    "Secret": "v1",
    "ServiceAccount": "v1",
    "PersistentVolumeClaim": "v1",
    "Pod": "v1",
    "PodDisruptionBudget": "policy/v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
}

Obj = Mapping[str, Any]


@dataclass
class Action:
    """One change to one object. `patch` is a JSON merge patch (RFC 7386, application/merge-patch+json)."""

    verb: str
    kind: str
    name: str
    namespace: str
    reason: str  # for a person: Events, `pgop plan`, logs
    body: dict[str, Any] | None = field(default=None, repr=False)  # may hold a password
    patch: dict[str, Any] | None = field(default=None, repr=False)
    uid: str | None = None  # delete precondition: this incarnation only, not a namesake made since

    @property
    def api_version(self) -> str:
        return API_VERSIONS[self.kind]

    def describe(self) -> str:
        """One line for people; never the body, which may hold a password."""
        return f"{self.verb} {self.kind} {self.name}: {self.reason}"


@dataclass(frozen=True)
class Event:
    """An Event to record on the object the plan is about. Never a secret in the message."""

    type: str  # Normal | Warning
    reason: str
    message: str


class Plan(list[Action]):
    """The actions in order, and beside them:

    - `waiting`: what holds the rest back, in words (the Progressing condition, `pgop plan`);
    - `status`: a merge patch for the object's status ({} = unchanged);
    - `events`: Events to record once the actions are applied;
    - `requeue_after`: seconds until the object should be looked at again (None: no hurry);
    - `permanent`: a failure only a person can fix (no retry until the object changes);
    - `finished`: on deletion, the outside world is cleaned up and the finalizer may go;
    - `conditions`: status conditions the planner judged (e.g. CertificatesReady), without times.

    Compares equal to a plain list of the same actions.
    """

    def __init__(self, actions: Sequence[Action] = (), waiting: Sequence[str] = (), *,
                 status: dict[str, Any] | None = None, events: Sequence[Event] = (),
                 requeue_after: float | None = None, permanent: str | None = None,
                 finished: bool = False) -> None:
        super().__init__(actions)
        self.waiting: list[str] = list(waiting)
        self.status: dict[str, Any] = dict(status or {})
        self.events: list[Event] = list(events)
        self.requeue_after = requeue_after
        self.permanent = permanent
        self.finished = finished
        self.conditions: list[dict[str, Any]] = []

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def extend_plan(self, other: Plan) -> None:
        """Another plan's actions after these, its status over this one's, its events after these."""
        self.extend(other)
        self.waiting += other.waiting
        self.status.update(other.status)
        self.events += other.events
        self.conditions += other.conditions
        if other.requeue_after is not None:
            self.requeue_after = (other.requeue_after if self.requeue_after is None
                                  else min(self.requeue_after, other.requeue_after))
        self.permanent = self.permanent or other.permanent


# ------------------------------------------------------------------------------ merge patches

def merge_patch(current: Obj, desired: Obj) -> dict[str, Any]:
    """The smallest JSON merge patch turning `current` into `desired` ({} when they are equal)."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        if key not in current:
            patch[key] = value
        elif isinstance(value, Mapping) and isinstance(current[key], Mapping):
            nested = merge_patch(current[key], value)
            if nested:
                patch[key] = nested
        elif current[key] != value:
            patch[key] = value
    for key in current:
        if key not in desired:
            patch[key] = None
    return patch


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: what the API server makes of `target` after a merge patch (returns a new value)."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result
