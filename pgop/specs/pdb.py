"""The PodDisruptionBudgets: voluntary disruptions (node drains) never take the primary, and take
the replicas one at a time.

Two budgets, by the role label the Services also select on (pgop.specs.pods.pod_role_label):

- `<cluster>-primary` selects the pod labelled primary with minAvailable 1: its eviction is refused
  while it is the primary. A drain of its node is answered by a switchover instead
  (pgop.cluster.plan: the operator sees the node cordoned and promotes a replica on another node);
  the old primary's pod is then labelled replica and the drain evicts it like any replica. A
  single instance has no replica to switch to: the drain waits for a person, rather than silently
  taking the only copy of the data offline.
- `<cluster>` selects the replicas with minAvailable replicas - 1: one replica down at a time.

Only minAvailable as an integer is allowed for pods no scalable workload owns (ours are owned by
PgInstances), hence no maxUnavailable.
"""
from __future__ import annotations

from typing import Any

from pgop.kernel import names
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


def min_available(instances: int) -> int:
    """Replicas that must stay up during a drain: all but one."""
    return max(0, instances - 2)


def _pdb(cluster: Cluster, name: str, role: str, keep: int) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(name, cluster.namespace, cluster_labels(cluster.name),
                                owner=owner_reference("PgCluster", cluster.name, cluster.uid)),
        "spec": {
            "minAvailable": keep,
            "selector": {"matchLabels": {LABEL_CLUSTER: cluster.name, LABEL_COMPONENT: COMPONENT_POSTGRES,
                                         LABEL_ROLE: role}},
        },
    }


def build_pdb(cluster: Cluster) -> dict[str, Any]:
    """The replicas' budget."""
    return _pdb(cluster, names.pdb(cluster.name), REPLICA, min_available(cluster.spec.instances))


def build_primary_pdb(cluster: Cluster) -> dict[str, Any]:
    """The primary's budget: never evicted while it is the primary."""
    return _pdb(cluster, names.primary_pdb(cluster.name), PRIMARY, 1)
