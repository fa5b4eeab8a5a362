"""Where a reconcile reads the objects of a cluster from: the API (`pgop plan`, and every pass
that is about to act), or the operator's watch-fed indexes (pgop.cluster.indexes), which answer
"is there anything to do?" without a request.

A reader answers one question per concern; what it returns are plain object bodies, as a LIST or
GET of the API would.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from kubernetes.client.rest import ApiException

from pgop.kernel import liveness
from pgop.kernel.meta import COMPONENT_POSTGRES, LABEL_CLUSTER, LABEL_COMPONENT, LABEL_INSTANCE
from pgop.runtime.kube import Kube

Obj = dict[str, Any]

# The kinds read by name (the PDBs, the agents' ServiceAccount, Role and RoleBinding): their index.
NAMED_INDEXES = {"PodDisruptionBudget": "pgop_pdbs", "ServiceAccount": "pgop_service_accounts",
                 "Role": "pgop_roles", "RoleBinding": "pgop_role_bindings"}


class ClusterReader(Protocol):
    fresh: bool  # True: read through the API just now (what a pass that acts must plan from)
    kube: Kube  # for the few objects no index holds (read by name, rarely)

    def instances(self, namespace: str, cluster: str) -> list[Obj]: ...
    # A PgInstance body with its agent's Lease renewal beside it (pgop.kernel.liveness).
    def with_liveness(self, body: Obj) -> Obj: ...
    def services(self, namespace: str, cluster: str) -> list[Obj]: ...
    def secrets(self, namespace: str, cluster: str) -> list[Obj]: ...
    def postgres_pods(self, namespace: str, cluster: str) -> list[Obj]: ...
    def volumes(self, namespace: str, cluster: str) -> list[Obj]: ...
    def named(self, kind: str, namespace: str, name: str) -> Obj | None: ...
    def cordoned_nodes(self) -> frozenset[str] | None: ...
    # One instance's own objects.
    def volume(self, namespace: str, name: str) -> Obj | None: ...
    def instance_pods(self, namespace: str, instance: str) -> list[Obj]: ...
    # The PgBackups of a namespace (schedule and retention: pgop.backup).
    def backups(self, namespace: str) -> list[Obj]: ...


class ApiReader:
    """Reads through the API server: a LIST or GET per question."""
    fresh = True

    def __init__(self, kube: Kube):
        self.kube = kube

    def instances(self, namespace: str, cluster: str) -> list[Obj]:
        bodies = self.kube.list("PgInstance", namespace, {LABEL_CLUSTER: cluster})
        return self._with_leases(namespace, {LABEL_CLUSTER: cluster}, bodies) if bodies else bodies

    def with_liveness(self, body: Obj) -> Obj:
        meta = _meta(body)
        return self._with_leases(meta.get("namespace", ""), {LABEL_INSTANCE: meta.get("name", "")}, [body])[0]

    def _with_leases(self, namespace: str, selector: dict[str, str], bodies: list[Obj]) -> list[Obj]:
        """`bodies` with the renewals of the agents' liveness Leases the selector picks (one LIST);
        unchanged where the operator may not read Leases (an install whose RBAC predates them)."""
        try:
            leases = self.kube.list("Lease", namespace, {**selector, LABEL_COMPONENT: liveness.COMPONENT_LIVENESS})
        except ApiException as e:
            if e.status == 403:
                return bodies
            raise
        renewals = dict(kept for kept in map(liveness.seen, leases) if kept is not None)
        return [liveness.with_liveness(b, renewals.get((namespace, _meta(b).get("name", "")))) for b in bodies]

    def services(self, namespace: str, cluster: str) -> list[Obj]:
        return self.kube.list("Service", namespace, {LABEL_CLUSTER: cluster})

    def secrets(self, namespace: str, cluster: str) -> list[Obj]:
        return self.kube.list("Secret", namespace, {LABEL_CLUSTER: cluster})

    def postgres_pods(self, namespace: str, cluster: str) -> list[Obj]:
        return self.kube.list("Pod", namespace, {LABEL_CLUSTER: cluster, LABEL_COMPONENT: COMPONENT_POSTGRES})

    def volumes(self, namespace: str, cluster: str) -> list[Obj]:
        return self.kube.list("PersistentVolumeClaim", namespace, {LABEL_CLUSTER: cluster})

    def named(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.kube.get(kind, namespace, name)

    def cordoned_nodes(self) -> frozenset[str] | None:
        """None when nodes cannot be read (an operator without the RBAC for it then does not
        switch over ahead of drains)."""
        try:
            nodes = self.kube.list("Node", "", fields={"spec.unschedulable": "true"})
        except ApiException as e:
            if e.status == 403:
                return None
            raise
        return frozenset(n["metadata"]["name"] for n in nodes)

    def volume(self, namespace: str, name: str) -> Obj | None:
        return self.kube.get("PersistentVolumeClaim", namespace, name)

    def instance_pods(self, namespace: str, instance: str) -> list[Obj]:
        return self.kube.list("Pod", namespace, {LABEL_INSTANCE: instance})

    def backups(self, namespace: str) -> list[Obj]:
        return self.kube.list("PgBackup", namespace)


# An index as kopf hands it to handlers: key -> a collection of values (kopf.Index of kopf.Store).
Index = Mapping[Any, Any]


class IndexReader:
    """Reads from the operator's indexes: no request. `indexes` maps an index name
    (pgop.cluster.indexes) to the index; `nodes_watched` is False for an operator that may not
    read Nodes (cordoned_nodes is then None, as the API reader says on a 403)."""
    fresh = False

    def __init__(self, indexes: Mapping[str, Index], nodes_watched: bool, kube: Kube,
                 leases: Callable[[str, str], Mapping[str, str] | None] = lambda namespace, name: None):
        self.indexes = indexes
        self.nodes_watched = nodes_watched
        self.kube = kube
        self.leases = leases  # (namespace, instance) -> the Lease renewal last watched (pgop.cluster.leases)

    def _all(self, index: str, key: Any) -> list[Obj]:
        store = self.indexes[index].get(key)
        # list() copies in one C call: kopf's event loop may update the store meanwhile.
        return list(store) if store is not None else []

    def _one(self, index: str, key: Any) -> Obj | None:
        found = self._all(index, key)
        return found[0] if found else None

    def instances(self, namespace: str, cluster: str) -> list[Obj]:
        return [self.with_liveness(b) for b in self._all("pgop_instances", ("cluster", namespace, cluster))]

    def instance(self, namespace: str, name: str) -> Obj | None:
        body = self._one("pgop_instances", ("name", namespace, name))
        return self.with_liveness(body) if body is not None else None

    def with_liveness(self, body: Obj) -> Obj:
        meta = _meta(body)
        return liveness.with_liveness(body, self.leases(meta.get("namespace", ""), meta.get("name", "")))

    def services(self, namespace: str, cluster: str) -> list[Obj]:
        return self._all("pgop_services", (namespace, cluster))

    def secrets(self, namespace: str, cluster: str) -> list[Obj]:
        return self._all("pgop_secrets", (namespace, cluster))

    def postgres_pods(self, namespace: str, cluster: str) -> list[Obj]:
        return self._all("pgop_pods", ("cluster", namespace, cluster))

    def volumes(self, namespace: str, cluster: str) -> list[Obj]:
        return self._all("pgop_volumes", ("cluster", namespace, cluster))

    def named(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self._one(NAMED_INDEXES[kind], (namespace, name))

    def cordoned_nodes(self) -> frozenset[str] | None:
        if not self.nodes_watched:
            return None
        return frozenset(str(node) for node in self._all("pgop_cordoned_nodes", None))

    def volume(self, namespace: str, name: str) -> Obj | None:
        return self._one("pgop_volumes", ("name", namespace, name))

    def instance_pods(self, namespace: str, instance: str) -> list[Obj]:
        return self._all("pgop_pods", ("instance", namespace, instance))

    def backups(self, namespace: str) -> list[Obj]:
        return self._all("pgop_backups", namespace)


class ActingReader(ApiReader):
    """What a pass that acts plans from: the API, but for the objects a cluster's plan only creates
    or brings to their spec (the Services, the PDBs, the agents' ServiceAccount, Role and
    RoleBinding), which come from the indexes: six requests fewer a pass. Nothing failover, a
    switchover or a certificate rotation decides from comes from the indexes (PgInstances and
    their Leases, pods, volumes, Secrets, Nodes are read here); an index that lags costs at most
    a create that finds the object there (409: idempotent) or a patch that changes nothing."""

    def __init__(self, kube: Kube, index: IndexReader):
        super().__init__(kube)
        self.index = index

    def services(self, namespace: str, cluster: str) -> list[Obj]:
        return self.index.services(namespace, cluster)

    def named(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.index.named(kind, namespace, name)


# ----------------------------------------------------------------- what the indexes hold (pure)

def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return body.get("metadata") or {}


def _labels(body: Mapping[str, Any]) -> Mapping[str, str]:
    return _meta(body).get("labels") or {}


def plain(body: Mapping[str, Any], kind: str) -> Obj:
    """The body as a LIST item would carry it, with its kind, without metadata.managedFields: no
    pass reads them, and they are 20-50% of an object's size (a pod's 5 of 12 KB in JSON), kept for
    every object of every cluster the indexes hold. `body` itself is left as it is."""
    out = dict(body)
    out.setdefault("kind", kind)
    meta = out.get("metadata")
    if isinstance(meta, Mapping) and "managedFields" in meta:
        out["metadata"] = {key: value for key, value in meta.items() if key != "managedFields"}
    return out


def instance_keys(body: Mapping[str, Any]) -> dict[Any, Obj]:
    meta = _meta(body)
    ns, cluster = meta.get("namespace"), _labels(body).get(LABEL_CLUSTER)
    obj = plain(body, "PgInstance")
    keys: dict[Any, Obj] = {("name", ns, meta.get("name")): obj}
    if cluster:
        keys[("cluster", ns, cluster)] = obj
    return keys


def pod_keys(body: Mapping[str, Any]) -> dict[Any, Obj]:
    labels, ns = _labels(body), _meta(body).get("namespace")
    obj = plain(body, "Pod")
    keys: dict[Any, Obj] = {}
    if labels.get(LABEL_INSTANCE):
        keys[("instance", ns, labels[LABEL_INSTANCE])] = obj
    if labels.get(LABEL_CLUSTER) and labels.get(LABEL_COMPONENT) == COMPONENT_POSTGRES:
        keys[("cluster", ns, labels[LABEL_CLUSTER])] = obj
    return keys


def volume_keys(body: Mapping[str, Any]) -> dict[Any, Obj]:
    meta, ns = _meta(body), _meta(body).get("namespace")
    obj = plain(body, "PersistentVolumeClaim")
    keys: dict[Any, Obj] = {("name", ns, meta.get("name")): obj}
    if _labels(body).get(LABEL_CLUSTER):
        keys[("cluster", ns, _labels(body)[LABEL_CLUSTER])] = obj
    return keys


def cluster_keys(body: Mapping[str, Any], kind: str) -> dict[Any, Obj]:
    """Services and Secrets: by the cluster they are labelled with."""
    cluster = _labels(body).get(LABEL_CLUSTER)
    return {(_meta(body).get("namespace"), cluster): plain(body, kind)} if cluster else {}


def named_keys(body: Mapping[str, Any], kind: str) -> dict[Any, Obj]:
    """A cluster's PDBs and agent identity, by name; only those labelled with a cluster."""
    if not _labels(body).get(LABEL_CLUSTER):
        return {}
    meta = _meta(body)
    return {(meta.get("namespace"), meta.get("name")): plain(body, kind)}


def backup_keys(body: Mapping[str, Any]) -> dict[Any, Obj]:
    """PgBackups: by namespace (a cluster's schedule and retention read its namespace's)."""
    return {_meta(body).get("namespace"): plain(body, "PgBackup")}


def cordoned_keys(body: Mapping[str, Any]) -> dict[Any, str]:
    """A node marked unschedulable (a drain cordons first), under the key None; {} once it is
    schedulable again (kopf then drops what was indexed for it)."""
    if (body.get("spec") or {}).get("unschedulable"):
        return {None: _meta(body).get("name", "")}
    return {}

