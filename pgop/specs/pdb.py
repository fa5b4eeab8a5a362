"""The PodDisruptionBudget: voluntary disruptions (node drains) take one instance at a time.

Only minAvailable as an integer is allowed for pods no scalable workload owns (ours are owned by
PgInstances), hence no maxUnavailable. A single instance keeps minAvailable 1: a drain then waits
for a person rather than silently taking the only copy of the data offline.
"""
from __future__ import annotations

from typing import Any

from pgop.kernel import names
from pgop.kernel.meta import (
    COMPONENT_POSTGRES,
    LABEL_CLUSTER,
    LABEL_COMPONENT,
    cluster_labels,
    object_meta,
    owner_reference,
)
from pgop.kernel.model import Cluster


def min_available(instances: int) -> int:
    return max(1, instances - 1)


def build_pdb(cluster: Cluster) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(names.pdb(cluster.name), cluster.namespace, cluster_labels(cluster.name),
                                owner=owner_reference("PgCluster", cluster.name, cluster.uid)),
        "spec": {
            "minAvailable": min_available(cluster.spec.instances),
            "selector": {"matchLabels": {LABEL_CLUSTER: cluster.name, LABEL_COMPONENT: COMPONENT_POSTGRES}},
        },
    }
