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

from pgop.cluster import leases, observe
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


def pgop_clusters(body, **kwargs):
    capture(kwargs)
    meta = body.get("metadata") or {}
    return {(meta.get("namespace"), meta.get("name")): observe.plain(body, "PgCluster")}


def pgop_instances(body, **kwargs):
    capture(kwargs)
    return observe.instance_keys(body)


def pgop_backups(body, **kwargs):
    capture(kwargs)
    return observe.backup_keys(body)


def pgop_pods(body, **kwargs):
    capture(kwargs)
    return observe.pod_keys(body)


def pgop_volumes(body, **kwargs):
    capture(kwargs)
    return observe.volume_keys(body)


def pgop_services(body, **kwargs):
    capture(kwargs)
    return observe.cluster_keys(body, "Service")


def pgop_secrets(body, **kwargs):
    capture(kwargs)
    return observe.cluster_keys(body, "Secret")


def pgop_pdbs(body, **kwargs):
    capture(kwargs)
    return observe.named_keys(body, "PodDisruptionBudget")


def pgop_service_accounts(body, **kwargs):
    capture(kwargs)
    return observe.named_keys(body, "ServiceAccount")


def pgop_roles(body, **kwargs):
    capture(kwargs)
    return observe.named_keys(body, "Role")


def pgop_role_bindings(body, **kwargs):
    capture(kwargs)
    return observe.named_keys(body, "RoleBinding")


def in_loop(fn):
    """`fn` (a pure index function) as a coroutine: kopf calls a sync handler in a thread of its
    pool (a hand-over per index per watch event, and every PgInstance beats every few seconds),
    an async one in its event loop. For what is cheap and never blocks."""
    async def run(**kwargs):
        return fn(**kwargs)
    run.__name__ = run.__qualname__ = fn.__name__
    return run


# The indexes, named after their functions (handlers receive them under these names): the kind
# each follows, and the label the API server narrows its watch to.
INDEXED = (
    (pgop_clusters, (API_GROUP, "v1", "pgclusters"), None),
    (pgop_instances, (API_GROUP, "v1", "pginstances"), None),
    (pgop_backups, (API_GROUP, "v1", "pgbackups"), None),
    (pgop_pods, ("", "v1", "pods"), CLUSTER_LABELLED),
    (pgop_volumes, ("", "v1", "persistentvolumeclaims"), CLUSTER_LABELLED),
    (pgop_services, ("", "v1", "services"), CLUSTER_LABELLED),
    (pgop_secrets, ("", "v1", "secrets"), CLUSTER_LABELLED),
    (pgop_pdbs, ("policy", "v1", "poddisruptionbudgets"), CLUSTER_LABELLED),
    (pgop_service_accounts, ("", "v1", "serviceaccounts"), CLUSTER_LABELLED),
    (pgop_roles, ("rbac.authorization.k8s.io", "v1", "roles"), CLUSTER_LABELLED),
    (pgop_role_bindings, ("rbac.authorization.k8s.io", "v1", "rolebindings"), CLUSTER_LABELLED),
)
for _fn, (_group, _version, _plural), _labels in INDEXED:
    kopf.index(_group, _version, _plural, labels=_labels, id=_fn.__name__)(in_loop(_fn))


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
        kopf.index("", "v1", "nodes", id="pgop_cordoned_nodes")(in_loop(pgop_cordoned_nodes))
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
        return observe.IndexReader(_live, _nodes_watched, kube, leases.TABLE.get)
    return observe.ApiReader(kube)


def acting_reader(kube: Kube) -> observe.ClusterReader:
    """What a cluster pass that acts plans from (observe.ActingReader); the API alone before kopf
    has handed the indexes over (and in tests)."""
    index = reader(kube)
    return observe.ActingReader(kube, index) if isinstance(index, observe.IndexReader) else observe.ApiReader(kube)


def indexed(index: str, namespace: str, name: str) -> dict | None:
    """A PgCluster (index pgop_clusters) or PgInstance (pgop_instances) as the watch last saw it;
    None when unknown or not indexed yet."""
    store = _live[index].get((namespace, name) if index == "pgop_clusters" else ("name", namespace, name)) \
        if index in _live else None
    found = list(store) if store is not None else []
    return found[0] if found else None
