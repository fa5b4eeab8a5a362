"""The agents' liveness Leases as the operator sees them (pgop.kernel.liveness): one LIST, then one
watch per scope (every namespace, or each namespace the operator watches), outside kopf.

A renewal is an agent's heartbeat: at a few per second per hundred instances, kopf's per-event
work (its diff base, indexes, handler matching) would cost the operator more than everything else
it does at idle. Here an event costs a JSON decode and a dict update, and starts no pass: the
timed passes read the newest renewal when they judge a heartbeat (pgop.cluster.pace), and every
pass that acts reads the Leases again through the API (pgop.cluster.observe.ApiReader), so a
watch that fell behind never makes a live agent look silent to a decision.

`start` lists before it returns (the operator's start-up, before kopf runs a handler): a pass never
judges heartbeats on an empty table.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pgop.kernel import liveness
from pgop.kernel.meta import LABEL_COMPONENT
from pgop.runtime import metrics
from pgop.runtime.config import is_pattern
from pgop.runtime.kube import RESOURCES, Kube

log = logging.getLogger("pgop.cluster")

SELECTOR = f"{LABEL_COMPONENT}={liveness.COMPONENT_LIVENESS}"
WATCH_SECONDS = 300  # one watch request; then a new one from the last resourceVersion
BACKOFF = (0.5, 10.0)  # first and longest wait before a failed LIST or watch is tried again

Key = tuple[str, str]  # (namespace, instance)


class LeaseTable:
    """(namespace, instance) -> {holder, renewTime} of each agent's Lease, as last listed or watched."""

    def __init__(self) -> None:
        self.seen: dict[Key, dict[str, str]] = {}
        self.started = False

    def get(self, namespace: str, instance: str) -> Mapping[str, str] | None:
        return self.seen.get((namespace, instance))

    def fill(self, namespace: str | None, leases: Sequence[Mapping[str, Any]]) -> None:
        """A LIST's answer replaces what was known in its scope (None: every namespace)."""
        fresh = dict(kept for kept in map(liveness.seen, leases) if kept is not None)
        for key in [k for k in self.seen if namespace is None or k[0] == namespace]:
            if key not in fresh:
                self.seen.pop(key, None)
        self.seen.update(fresh)

    def event(self, kind: str, lease: Mapping[str, Any], now: datetime) -> None:
        kept = liveness.seen(lease)
        if kept is None:
            return
        key, value = kept
        if kind == "DELETED":
            self.seen.pop(key, None)
            return
        before = self.seen.get(key)
        self.seen[key] = value
        delay = metrics.beat_delay(before.get("renewTime") if before else None, value["renewTime"], now)
        if delay is not None:
            metrics.HEARTBEAT_DELIVERY.observe(delay)


TABLE = LeaseTable()


def start(kube: Kube, namespaces: Sequence[str]) -> None:
    """Lists every scope's Leases (here, so the table is filled before the first pass), then keeps
    each scope watched in a thread of its own. `namespaces`: exact names, or () for every one (a
    pattern watches every namespace too: what it matches can change)."""
    scopes: list[str | None] = list(namespaces) if namespaces and not any(map(is_pattern, namespaces)) else [None]
    for scope in scopes:
        version = _list(kube, scope)
        threading.Thread(target=_keep_watching, args=(kube, scope, version), daemon=True,
                         name=f"leases-{scope or 'all'}").start()
    TABLE.started = True


def _path(scope: str | None) -> str:
    return RESOURCES["Lease"].path(scope)


def _list(kube: Kube, scope: str | None) -> str | None:
    answer = kube._call("GET", _path(scope), query=[("labelSelector", SELECTOR)])
    TABLE.fill(scope, answer.get("items") or [])
    return (answer.get("metadata") or {}).get("resourceVersion") or None


def _keep_watching(kube: Kube, scope: str | None, version: str | None) -> None:
    backoff = BACKOFF[0]
    while True:
        try:
            if version is None:
                version = _list(kube, scope)
            version = _watch(kube, scope, version)
            backoff = BACKOFF[0]
        except Exception as error:  # noqa: BLE001 - the watch must outlive any failure
            log.warning("watch of the agents' Leases%s failed (%s); again in %.1fs",
                        f" in {scope}" if scope else "", error, backoff)
            version = None
            time.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF[1])


def _watch(kube: Kube, scope: str | None, version: str | None) -> str | None:
    """One watch request until the server ends it; the resourceVersion to go on from (None: list
    again, the version is too old)."""
    from kubernetes.watch.watch import iter_resp_lines
    query = [("labelSelector", SELECTOR), ("watch", "true"), ("allowWatchBookmarks", "true"),
             ("timeoutSeconds", str(WATCH_SECONDS))]
    if version:
        query.append(("resourceVersion", version))
    response = kube.api.call_api(_path(scope), "GET", query_params=query,
                                 header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
                                 _preload_content=False, _return_http_data_only=True,
                                 _request_timeout=(5.0, WATCH_SECONDS + 30))
    try:
        for line in iter_resp_lines(response):
            event = json.loads(line)
            kind, lease = event.get("type"), event.get("object") or {}
            if kind == "ERROR":  # 410 Gone: the version is compacted away
                return None
            version = (lease.get("metadata") or {}).get("resourceVersion") or version
            if kind != "BOOKMARK":
                TABLE.event(kind, lease, datetime.now(UTC))
    finally:
        response.release_conn()
    return version
