"""The three Services of a cluster; which pods they reach is all in the role label.

<name>-rw: the primary (reads and writes). <name>-ro: the replicas (reads, may lag).
<name>-r: any Postgres instance. Endpoints only ever hold ready pods, and bootstrap pods carry
no Postgres component label, so no Service routes to an instance that is still being made.
"""
from __future__ import annotations

from typing import Any

from pgop.kernel import names, pgconfig
from pgop.kernel.meta import (
    COMPONENT_POSTGRES,
    LABEL_CLUSTER,
    LABEL_COMPONENT,
    LABEL_ROLE,
    cluster_labels,
    object_meta,
    owner_reference,
)
from pgop.kernel.model import PRIMARY, REPLICA, Cluster


def selector(cluster: str, role: str | None) -> dict[str, str]:
    chosen = {LABEL_CLUSTER: cluster, LABEL_COMPONENT: COMPONENT_POSTGRES}
    if role is not None:
        chosen[LABEL_ROLE] = role
    return chosen


def _service(cluster: Cluster, name: str, role: str | None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(name, cluster.namespace, cluster_labels(cluster.name),
                                owner=owner_reference("PgCluster", cluster.name, cluster.uid)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(cluster.name, role),
            "ports": [{"name": "postgres", "port": pgconfig.POSTGRES_PORT,
                       "targetPort": pgconfig.POSTGRES_PORT, "protocol": "TCP"}],
        },
    }


def build_services(cluster: Cluster) -> list[dict[str, Any]]:
    return [
        _service(cluster, names.rw_service(cluster.name), PRIMARY),
        _service(cluster, names.ro_service(cluster.name), REPLICA),
        _service(cluster, names.r_service(cluster.name), None),
    ]


def service_host(cluster: Cluster, service: str) -> str:
    """The DNS name a client anywhere in the cluster reaches the Service by."""
    return f"{service}.{cluster.namespace}.svc"
