"""Status conditions with the semantics of apimachinery's meta.SetStatusCondition, and the one
timestamp format of every status field (RFC 3339, UTC, whole seconds).

A condition's lastTransitionTime moves only when its status flips; reason, message and
observedGeneration follow every write. Conditions of other types are kept as they are: a merge
patch replaces the whole list, and several writers (operator, agent) share it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"

# A restore refused because the backup is encrypted with another key than the one given (or none):
# the restore's error starts with it (pgop.backup.encryption.key_mismatch), the PgCluster's
# Degraded condition takes it as its reason.
REASON_ENCRYPTION_KEY_MISMATCH = "EncryptionKeyMismatch"


def rfc3339(moment: datetime) -> str:
    """`2026-12-01T16:04:05Z`: what Kubernetes writes in metav1.Time fields."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 timestamp as the API server writes it ('2026-01-02T03:04:05Z', any offset,
    fractions allowed); None for None or an empty text; ValueError without a time zone."""
    if not text:
        return None
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text!r}")
    return parsed


parse_rfc3339 = parse_time


def condition_status(value: bool | str) -> str:
    if isinstance(value, bool):
        return TRUE if value else FALSE
    if value not in (TRUE, FALSE, UNKNOWN):
        raise ValueError(f"a condition status is True, False or Unknown, not {value!r}")
    return value


def condition(type_: str, status: bool | str, reason: str, message: str) -> dict[str, Any]:
    """A condition without its times: what a decision says; set_condition stamps it."""
    return {"type": type_, "status": condition_status(status), "reason": reason, "message": message}


def find_condition(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or () if c.get("type") == type_), None)


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    update: Mapping[str, Any],
    *,
    now: datetime,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """`conditions` with `update` (type, status, reason, message) set; a new list, order kept."""
    wanted = condition_status(update["status"])
    out: list[dict[str, Any]] = []
    found = False
    for existing in conditions or ():
        current = dict(existing)
        if current.get("type") == update["type"]:
            found = True
            since = current.get("lastTransitionTime")
            if current.get("status") != wanted or not since:
                since = rfc3339(now)
            current = {**current, **update, "status": wanted, "lastTransitionTime": since}
            if generation is not None:
                current["observedGeneration"] = generation
        out.append(current)
    if not found:
        new = {**update, "status": wanted, "lastTransitionTime": rfc3339(now)}
        if generation is not None:
            new["observedGeneration"] = generation
        out.append(new)
    return out


def set_conditions(
    conditions: Sequence[Mapping[str, Any]] | None,
    updates: Iterable[Mapping[str, Any]],
    *,
    now: datetime,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """set_condition for each update in turn."""
    out = [dict(c) for c in conditions or ()]
    for update in updates:
        out = set_condition(out, update, now=now, generation=generation)
    return out
