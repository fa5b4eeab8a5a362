"""Agent liveness through a Lease per instance (coordination.k8s.io/v1), as node heartbeats moved
from Node status to Leases. Pure: `now` is an argument.

The agent renews its instance's Lease on every turn it has nothing new to report (a primary every
turn, a replica every status refresh), and writes its PgInstance status only when something in it
changes, or every pgop.agent.settings.DEFAULT_REPORT_REFRESH seconds. A renewal says "alive, and my
status as stored is still true" (the agent renews only after comparing the status it would write
with the stored one), so the operator takes an instance's liveness as the newest of
status.lastHeartbeat and the Lease's renewTime. What needs a *report* newer than a request (a
failover's "stopped streaming since") still reads status.lastHeartbeat alone: a Lease says alive,
not what the agent did.

The operator sees Leases through one raw watch outside kopf (pgop.cluster.leases): a renewal costs
it a JSON decode, not kopf's per-event work, and starts no pass; the timed passes read the newest
renewal when they judge a heartbeat (pgop.cluster.pace).

A Lease counts only while its holderIdentity is the pod UID the status reports: the renewals of a
replaced pod's agent (a force-deleted pod whose containers still run) never vouch for the new one.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pgop.kernel.conditions import parse_time
from pgop.kernel.meta import LABEL_CLUSTER, LABEL_COMPONENT, LABEL_INSTANCE, cluster_labels, owner_reference
from pgop.kernel.model import LIVENESS_KEY
from pgop.kernel.readiness import DEFAULT_HEARTBEAT_TIMEOUT

COMPONENT_LIVENESS = "liveness"
LEASE_SUFFIX = "-liveness"

Obj = Mapping[str, Any]


def lease_name(instance: str) -> str:
    return f"{instance}{LEASE_SUFFIX}"


def micro_time(moment: datetime) -> str:
    """`2026-12-01T16:04:05.123456Z`: a metav1.MicroTime, as Lease.spec.renewTime is."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(namespace: str, instance: str, cluster: str, instance_uid: str, holder: str,
               now: datetime, duration: float = DEFAULT_HEARTBEAT_TIMEOUT) -> dict[str, Any]:
    """The Lease an agent makes on its first renewal: owned by its PgInstance (deleted with it)."""
    labels = {**cluster_labels(cluster), LABEL_INSTANCE: instance, LABEL_COMPONENT: COMPONENT_LIVENESS}
    meta: dict[str, Any] = {"name": lease_name(instance), "namespace": namespace, "labels": labels}
    if instance_uid:
        reference = owner_reference("PgInstance", instance, instance_uid)
        meta["ownerReferences"] = [{**reference, "blockOwnerDeletion": False}]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {**renewal(holder, now)["spec"], "leaseDurationSeconds": int(duration),
                     "acquireTime": micro_time(now)}}


def renewal(holder: str, now: datetime) -> dict[str, Any]:
    """The merge patch of one renewal."""
    return {"spec": {"holderIdentity": holder, "renewTime": micro_time(now)}}


def is_own(lease: Obj, instance: str, cluster: str) -> bool:
    """Whether `lease` is the liveness Lease of this instance (its labels say so): an agent never
    renews a Lease of the same name that someone else made."""
    labels = (lease.get("metadata") or {}).get("labels") or {}
    return (labels.get(LABEL_INSTANCE) == instance and labels.get(LABEL_CLUSTER) == cluster
            and labels.get(LABEL_COMPONENT) == COMPONENT_LIVENESS)


def seen(lease: Obj) -> tuple[tuple[str, str], dict[str, str]] | None:
    """What the operator keeps of a Lease: ((namespace, instance), {holder, renewTime}); None
    for a Lease that is not an agent's (no instance label) or has never been renewed."""
    meta = lease.get("metadata") or {}
    labels = meta.get("labels") or {}
    spec = lease.get("spec") or {}
    instance, renewed = labels.get(LABEL_INSTANCE), spec.get("renewTime")
    if labels.get(LABEL_COMPONENT) != COMPONENT_LIVENESS or not instance or not renewed:
        return None
    return (meta.get("namespace", ""), instance), {"holder": spec.get("holderIdentity") or "",
                                                    "renewTime": renewed}


def with_liveness(body: dict[str, Any], lease: Mapping[str, str] | None) -> dict[str, Any]:
    """The PgInstance `body` with its Lease's renewal beside it (LIVENESS_KEY, read by
    pgop.kernel.model.Instance.from_object), when the Lease was renewed by the pod the status
    reports; `body` unchanged otherwise. Never changes `body` itself."""
    if not lease:
        return body
    pod_uid = (body.get("status") or {}).get("podUID")
    if not pod_uid or lease.get("holder") != pod_uid:
        return body
    return {**body, LIVENESS_KEY: {"renewTime": lease.get("renewTime")}}


def alive_at(body: Obj) -> datetime | None:
    """The newest sign of life of an instance's agent, from a body (`with_liveness`'s): its
    status.lastHeartbeat or its Lease's renewal, whichever is newer (None when neither, or
    unreadable)."""
    moments = []
    for text in ((body.get("status") or {}).get("lastHeartbeat"), (body.get(LIVENESS_KEY) or {}).get("renewTime")):
        try:
            moment = parse_time(text or None)
        except ValueError:
            moment = None
        if moment is not None:
            moments.append(moment)
    return max(moments, default=None)
