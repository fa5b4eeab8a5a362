"""Node-level chaos on the three-node local cluster (`make up NODES=3`): a PgCluster spread one
instance per node, its primary on a node that may be faulted, a writer on the host node.

Used by e2e/test_failover_nodes.py (asserts) and bench/failover.py (the node-* scenarios). The
faults themselves are the harness's (`python -m e2e.harness node kill|freeze|partition ...`,
e2e/harness/fixtures.py ClusterNodes).
"""
from __future__ import annotations

from e2e.chaos import ChaosCluster, ChaosError, Writer, switchover
from e2e.harness import paths

HOST_NODE = paths.NODE_NAME  # carries the control plane: never faulted


def spread_manifest(name: str, ns: str, instances: int = 3, mode: str = "required") -> str:
    """A PgCluster with one instance per node (required anti-affinity) on node-local volumes."""
    return f"""
apiVersion: pgop.io/v1
kind: PgCluster
metadata: {{name: {name}, namespace: {ns}}}
spec:
  instances: {instances}
  postgresVersion: 15
  synchronousReplicas: 1
  synchronousMode: {mode}
  storage: {{size: 1Gi, storageClassName: pgop-local}}
  affinity: {{podAntiAffinityType: required}}
  bootstrap: {{initdb: {{database: app, owner: app}}}}
"""


class HostWriter(Writer):
    """The chaos writer, pinned to the host node: a faulted node never carries the client."""

    def manifest(self) -> dict:
        body = super().manifest()
        body["spec"]["nodeName"] = HOST_NODE
        return body


def node_of(cluster: ChaosCluster, pod: str) -> str:
    return cluster.pod(pod)["spec"].get("nodeName", "")


def primary_on_extra_node(cluster: ChaosCluster, extra: list[str], timeout: float = 300) -> tuple[str, str]:
    """(primary, its node), the node one of `extra` (the nodes that may be faulted): when the
    primary runs on the host node, `pgop promote` to an instance on an extra node first."""
    nodes = {name: node_of(cluster, name) for name in cluster.instance_names()}
    if len(set(nodes.values())) != len(nodes):
        raise ChaosError(f"not one instance per node: {nodes}")
    primary = cluster.primary()
    if nodes[primary] in extra:
        return primary, nodes[primary]
    target = next((name for name, node in sorted(nodes.items()) if node in extra), None)
    if target is None:
        raise ChaosError(f"no instance on an extra node {extra}: {nodes}")
    p = switchover(cluster, target)
    if p.returncode != 0:
        raise ChaosError(f"pgop promote {target}: {(p.stdout + p.stderr).strip()[-500:]}")
    cluster.kubectl.wait_for(lambda: cluster.status().get("currentPrimary") == target,
                             f"currentPrimary {target}", timeout)
    cluster.wait_converged(timeout)
    return target, nodes[target]
