"""The operator's in-memory view of what the clusters are made of, fed by kopf's watches
(`@kopf.index`): a reconcile that has nothing to do reads nothing through the API.

kopf starts the handlers only once every indexed kind was listed, and hands the indexes to each
handler as keyword arguments; `capture` keeps them for the passes that run outside a handler's
call (the coalesced shortcuts). What each index holds is decided by the pure functions of
pgop.cluster.observe.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import kopf

from pgop.cluster import observe
from pgop.kernel.meta import LABEL_CLUSTER
from pgop.kernel.model import API_GROUP
from pgop.runtime.kube import Kube

log = logging.getLogger("pgop.cluster")

CLUSTER_LABELLED = {LABEL_CLUSTER: kopf.PRESENT}

# Every index a reconcile reads; the nodes' only where the operator may watch Nodes.
NAMES = ("pgop_clusters", "pgop_instances", "pgop_pods", "pgop_volumes", "pgop_services", "pgop_secrets",
         "pgop_backups", *observe.NAMED_INDEXES.values())
NODES = "pgop_cordoned_nodes"

# Filtered by the API server, not in this process: the operator receives only the objects of its
# clusters (never another application's Secrets or pods), and only the cordoned Nodes (an uncordoned
# one leaves the watch as a deletion, and the index drops it).
LABEL_SELECTORS = {plural: LABEL_CLUSTER for plural in (
    "pods", "persistentvolumeclaims", "services", "secrets", "poddisruptionbudgets", "serviceaccounts",
    "roles", "rolebindings")}
FIELD_SELECTORS = {"nodes": "spec.unschedulable=true"}

_live: dict[str, Any] = {}
_guard = threading.Lock()
_nodes_watched = False


@kopf.on.startup()
def narrow_watches(settings: kopf.OperatorSettings, **_) -> None:
    for plural, selector in LABEL_SELECTORS.items():
        settings.watching.label_selectors[plural] = selector
    for plural, selector in FIELD_SELECTORS.items():
        settings.watching.field_selectors[plural] = selector


@kopf.index(API_GROUP, "v1", "pgclusters")
def pgop_clusters(body, **kwargs):
    capture(kwargs)
    meta = body.get("metadata") or {}
    return {(meta.get("namespace"), meta.get("name")): observe.plain(body, "PgCluster")}


@kopf.index(API_GROUP, "v1", "pginstances")
def pgop_instances(body, **kwargs):
    capture(kwargs)
    return observe.instance_keys(body)


@kopf.index(API_GROUP, "v1", "pgbackups")
def pgop_backups(body, **kwargs):
    capture(kwargs)
    return observe.backup_keys(body)


@kopf.index("", "v1", "pods", labels=CLUSTER_LABELLED)
def pgop_pods(body, **kwargs):
    capture(kwargs)
    return observe.pod_keys(body)


@kopf.index("", "v1", "persistentvolumeclaims", labels=CLUSTER_LABELLED)
def pgop_volumes(body, **kwargs):
    capture(kwargs)
    return observe.volume_keys(body)


@kopf.index("", "v1", "services", labels=CLUSTER_LABELLED)
def pgop_services(body, **kwargs):
    capture(kwargs)
    return observe.cluster_keys(body, "Service")


@kopf.index("", "v1", "secrets", labels=CLUSTER_LABELLED)
def pgop_secrets(body, **kwargs):
    capture(kwargs)
    return observe.cluster_keys(body, "Secret")


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=CLUSTER_LABELLED)
def pgop_pdbs(body, **kwargs):
    capture(kwargs)
    return observe.named_keys(body, "PodDisruptionBudget")


@kopf.index("", "v1", "serviceaccounts", labels=CLUSTER_LABELLED)
def pgop_service_accounts(body, **kwargs):
    capture(kwargs)
    return observe.named_keys(body, "ServiceAccount")


@kopf.index("rbac.authorization.k8s.io", "v1", "roles", labels=CLUSTER_LABELLED)
def pgop_roles(body, **kwargs):
    capture(kwargs)
    return observe.named_keys(body, "Role")


@kopf.index("rbac.authorization.k8s.io", "v1", "rolebindings", labels=CLUSTER_LABELLED)
def pgop_role_bindings(body, **kwargs):
    capture(kwargs)
    return observe.named_keys(body, "RoleBinding")


def pgop_cordoned_nodes(body, **kwargs):
    capture(kwargs)
    return observe.cordoned_keys(body)


def watch_nodes() -> None:
    """Indexes the cordoned Nodes. Only for an operator that may list and watch Nodes: kopf holds
    every handler until each indexed kind was listed once, so an index it cannot fill would stop
    the operator (deploy/operator-namespaced.yaml grants no Node access: drains are then not
    seen, as before)."""
    global _nodes_watched
    if not _nodes_watched:
        kopf.index("", "v1", "nodes")(pgop_cordoned_nodes)
        _nodes_watched = True


def may_watch_nodes(kube: Kube) -> bool:
    """Whether this operator's identity may list and watch Nodes (SelfSubjectAccessReview)."""
    for verb in ("list", "watch"):
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": {"verb": verb, "resource": "nodes"}}}
        try:
            answer = kube._call("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review)
        except Exception as e:  # noqa: BLE001 - unknown means no: the operator must start
            log.warning("cannot tell whether Nodes may be watched (%s); cordoned nodes are not watched", e)
            return False
        if not ((answer or {}).get("status") or {}).get("allowed"):
            return False
    return True


def capture(kwargs: Mapping[str, Any]) -> None:
    """Keeps the indexes kopf passes to a handler (the same objects for the operator's life)."""
    if len(_live) < len(NAMES) + _nodes_watched:
        with _guard:
            for name in (*NAMES, NODES):
                if name in kwargs:
                    _live[name] = kwargs[name]


def reader(kube: Kube) -> observe.ClusterReader:
    """The index reader once kopf has handed the indexes over; the API before (and in tests)."""
    if all(name in _live for name in NAMES) and (not _nodes_watched or NODES in _live):
        return observe.IndexReader(_live, _nodes_watched, kube)
    return observe.ApiReader(kube)


def indexed(index: str, namespace: str, name: str) -> dict | None:
    """A PgCluster (index pgop_clusters) or PgInstance (pgop_instances) as the watch last saw it;
    None when unknown or not indexed yet."""
    store = _live[index].get((namespace, name) if index == "pgop_clusters" else ("name", namespace, name)) \
        if index in _live else None
    found = list(store) if store is not None else []
    return found[0] if found else None
