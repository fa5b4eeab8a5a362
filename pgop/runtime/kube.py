"""A small generic client for the objects pgop manages: list/get/create/merge-patch/delete by kind.

The plan functions speak in (kind, name, body, merge patch); this is the one place that turns
them into API calls, shared by the handlers and by `pgop plan`.
"""
from __future__ import annotations

import builtins
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from pgop.kernel.actions import CREATE, DELETE, PATCH, Action


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base


RESOURCES = {
    "Pod": Resource("", "v1", "pods"),
    "Service": Resource("", "v1", "services"),
    "Secret": Resource("", "v1", "secrets"),
    "ServiceAccount": Resource("", "v1", "serviceaccounts"),
    "PersistentVolumeClaim": Resource("", "v1", "persistentvolumeclaims"),
    "Event": Resource("", "v1", "events"),
    "Node": Resource("", "v1", "nodes", namespaced=False),
    "StorageClass": Resource("storage.k8s.io", "v1", "storageclasses", namespaced=False),
    "PodDisruptionBudget": Resource("policy", "v1", "poddisruptionbudgets"),
    "Role": Resource("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": Resource("rbac.authorization.k8s.io", "v1", "rolebindings"),
    "PgCluster": Resource("pgop.io", "v1", "pgclusters"),
    "PgInstance": Resource("pgop.io", "v1", "pginstances"),
    "PgBackup": Resource("pgop.io", "v1", "pgbackups"),
    "MysqlDb": Resource("pgop.io", "v1", "mysqldbs"),
    "Lease": Resource("coordination.k8s.io", "v1", "leases"),
}


# (connect, read) seconds: a call to an API server that stopped answering fails instead of holding
# a handler thread, and with it the cluster's reconcile lock, for ever.
REQUEST_TIMEOUT = (5.0, 30.0)


CONNECTION_POOL_SIZE = 32  # more than pgop.operator.HANDLER_THREADS


class NotFound(Exception):
    pass


class Kube:
    def __init__(self, api: client.ApiClient | None = None):
        if api is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            settings = client.Configuration.get_default_copy()
            # One connection per thread that may call at once (the operator's handler threads and
            # their shortcuts): with the default pool (5 per CPU), the threads beyond it opened a
            # new TLS connection per request and threw it away ("Connection pool is full").
            settings.connection_pool_maxsize = CONNECTION_POOL_SIZE
            api = client.ApiClient(settings)
        self.api = api

    def _call(self, method: str, path: str, body: Any = None, query: list | None = None,
              content_type: str = "application/json") -> Any:
        data = self.api.call_api(path, method, query_params=query or [], body=body,
                                 header_params={"Accept": "application/json",
                                                "Content-Type": content_type},
                                 auth_settings=["BearerToken"], _preload_content=False,
                                 _return_http_data_only=True, _request_timeout=REQUEST_TIMEOUT)
        raw = data.data
        return json.loads(raw) if raw else None

    def list(self, kind: str, namespace: str, selector: dict[str, str] | None = None,
             fields: dict[str, str] | None = None) -> list[dict]:
        resource = RESOURCES[kind]
        if resource.namespaced and not namespace:
            # A list across every namespace needs a cluster-wide grant the namespaced operator does
            # not have (deploy/operator-namespaced.yaml), and nothing pgop does needs one.
            raise ValueError(f"listing {kind} needs a namespace: pgop never lists across namespaces")
        query = []
        if selector:
            query.append(("labelSelector", ",".join(f"{k}={v}" for k, v in selector.items())))
        if fields:
            query.append(("fieldSelector", ",".join(f"{k}={v}" for k, v in fields.items())))
        out = self._call("GET", resource.path(namespace), query=query)
        items = out.get("items", [])
        api_version = out.get("apiVersion", "")
        for item in items:  # list items come without kind/apiVersion
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", api_version)
        return items

    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        try:
            return self._call("GET", RESOURCES[kind].path(namespace, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def create(self, body: dict) -> dict | None:
        kind, ns = body["kind"], body["metadata"].get("namespace")
        try:
            return self._call("POST", RESOURCES[kind].path(ns), body=body)
        except ApiException as e:
            if e.status == 409:  # already there: creation is idempotent
                return None
            raise

    def replace(self, body: dict) -> dict:
        """PUT: the write fails with 409 when the object changed since `body` was read."""
        meta = body["metadata"]
        return self._call("PUT", RESOURCES[body["kind"]].path(meta.get("namespace"), meta["name"]), body=body)

    def merge_patch(self, kind: str, namespace: str, name: str, patch: dict,
                    subresource: str | None = None) -> dict | None:
        try:
            return self._call("PATCH", RESOURCES[kind].path(namespace, name, subresource),
                              body=patch, content_type="application/merge-patch+json")
        except ApiException as e:
            if e.status == 404:
                raise NotFound(f"{kind} {namespace}/{name}") from None
            raise

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> bool:
        """False when there was nothing to delete: gone already, or a namesake we must not touch."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._call("DELETE", RESOURCES[kind].path(namespace, name), body=body)
        except ApiException as e:
            if e.status in (404, 409):
                return False
            raise
        return True

    def apply(self, action: Action) -> bool:
        """False when the action found it done already: a create of an object that exists (409),
        a delete of one that is gone (or a namesake)."""
        if action.verb == CREATE:
            if action.body is None:
                raise ValueError(f"{action.describe()}: a create without a body")
            return self.create(action.body) is not None
        if action.verb == PATCH:
            if action.patch is None:
                raise ValueError(f"{action.describe()}: a patch without a merge patch")
            sub = "status" if set(action.patch) == {"status"} else None
            self.merge_patch(action.kind, action.namespace, action.name, action.patch, sub)
            return True
        if action.verb == DELETE:
            return self.delete(action.kind, action.namespace, action.name, action.uid)
        raise ValueError(f"unknown verb {action.verb}")

    def apply_all(self, actions: Iterable[Action]) -> builtins.list[Action]:
        done = []
        for action in actions:
            self.apply(action)
            done.append(action)
        return done
