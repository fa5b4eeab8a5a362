"""Node-level chaos (issues 10 and 11): the primary's *node* fails, not its pod.

A 3-instance PgCluster (`synchronousMode: required`, one synchronous replica) on the three-node
local cluster (`make up NODES=3`), one instance per node (`spec.affinity.podAntiAffinityType:
required`, node-local `pgop-local` volumes). The host node `pgop-node` carries the control plane
and cannot be faulted: when the primary runs there, the test first switches over to an instance on
an extra node. The writer pod is pinned to the host node, so the fault never takes the client.

Each scenario faults the primary's node, waits until a write is acknowledged on a newer timeline
(a replica on another node took over), ends the fault, and checks what a user checks
(e2e/test_failover.py): writes resumed, no acknowledged write lost, none acknowledged by the deposed
primary after the new primary's first that the final primary lacks, every instance Ready and streaming at the end, the old
primary a replica of the new one. No timing is asserted; the waits are generous bounds.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from e2e.chaos import ChaosCluster, Report, Writer
from e2e.chaos_nodes import HostWriter, node_of, primary_on_extra_node, spread_manifest

pytestmark = [pytest.mark.cluster, pytest.mark.nodes, pytest.mark.usefixtures("node_faults_alone")]

NAME = "hanodes"
INSTANCES = 3
RESUME = 120      # bound on waiting for a write acknowledged by a new primary after the fault
CONVERGE = 300    # bound on waiting for every instance to stream again after the fault ended


@pytest.fixture
def placed(kubectl, namespace, operator, cluster_nodes):
    """(cluster, primary, its node, writer): Ready and streaming, one instance per node, the primary
    on an extra node, a writer running on the host node. Afterwards every node is up again."""
    cluster_nodes.reset()
    c = ChaosCluster(kubectl, namespace, NAME)
    c.allow_chaos()
    kubectl("apply", "-f", "-", input=spread_manifest(NAME, namespace, INSTANCES))
    writer: Writer | None = None
    try:
        c.wait_ready(INSTANCES, 300)
        c.wait_converged(120)
        primary, node = primary_on_extra_node(c, cluster_nodes.extra, CONVERGE)
        print(f"primary {primary} on {node}")
        writer = HostWriter(c)
        writer.start()
        yield c, primary, node, writer
    finally:
        if writer is not None:
            writer.delete()
        cluster_nodes.reset()


def assert_user_checks(report: Report) -> None:
    print(report.summary())
    assert report.ok(), report.summary()


def node_fault(placed, what: str, inject: Callable[[str], None], end: Callable[[str], None]) -> None:
    """Faults the primary's node, waits for a write acknowledged on a newer timeline, ends the
    fault, waits until every instance streams again, and checks the outcome."""
    cluster, primary, node, writer = placed
    timeline = cluster.timeline(primary)
    at = time.time()
    inject(node)
    writer.fault(f"{what} {node} (primary {primary})", at)
    ack = writer.wait_for_ack(sent_after=at, timeout=RESUME, where=lambda a: a.tl > timeline)
    print(f"first write on timeline {ack.tl} acknowledged by {cluster.pod_by_ip(ack.server) or ack.server}")
    ended = time.time()
    end(node)
    cluster.wait_converged(CONVERGE, since=ended)
    report = writer.finish()
    assert_user_checks(report)
    assert cluster.primary() != primary
    assert cluster.in_recovery(primary)  # the old primary rejoined as a replica of the new one


def test_primary_node_killed_then_restarted(placed, cluster_nodes):
    """Power loss: kubelet, containerd and every container of the node die at once, its link goes
    down; later the machine boots again with its disk (the old primary's volume) intact."""
    node_fault(placed, "killed node", cluster_nodes.kill, cluster_nodes.restart)


def test_primary_node_cut_off_from_the_api_server_only(placed, cluster_nodes):
    """The node still reaches the other nodes and the clients, but not the API server (nor the API
    server its kubelet): the primary's agent cannot report, and the replicas still reach it."""
    node_fault(placed, "node cut off from the API server", lambda n: cluster_nodes.partition(n, apiserver_only=True),
               cluster_nodes.heal)


def test_drain_of_the_primary_node_switches_over_first(placed, cluster_nodes):
    """`kubectl drain` of the primary's node: the operator sees the node cordoned and switches over
    to a replica on another node while the primary's PodDisruptionBudget refuses its eviction; then
    the drain evicts the old primary as a replica. Writes fail only inside the switchover's gap."""
    cluster, primary, node, writer = placed
    at = time.time()
    writer.fault(f"kubectl drain {node} (primary {primary})", at)
    p = cluster_nodes.drain(node)
    drained = time.time()
    print(f"drain took {drained - at:.1f}s:\n{p.stdout[-2000:]}")
    assert p.returncode == 0, p.stdout + p.stderr
    new = cluster.primary()
    assert new != primary and node_of(cluster, new) != node
    last = cluster.status().get("lastSwitchover") or {}
    assert (last.get("target"), last.get("result")) == (new, "Done"), last
    # The old primary's pod was evicted as a replica: it waits (Pending) for its node-local volume.
    writer.wait_for_ack(sent_after=drained, timeout=RESUME)
    cluster_nodes.uncordon(node)
    cluster.wait_converged(CONVERGE, since=drained)
    report = writer.finish()
    assert_user_checks(report)
    gap, start, end = report.longest_gap
    print(f"switchover gap {gap:.1f}s; {len(report.failures)} failed write attempt(s)")
    outside = [f for f in report.failures if not start - 0.5 <= f.at <= end + 0.5]
    assert not outside, f"writes failed outside the switchover gap ({start:.1f}-{end:.1f}): {outside[:5]}"
    assert cluster.in_recovery(primary)


def test_primary_node_frozen_then_thawed(placed, cluster_nodes):
    node_fault(placed, "frozen node", cluster_nodes.freeze, cluster_nodes.thaw)


def test_primary_node_partitioned_then_healed(placed, cluster_nodes):
    node_fault(placed, "partitioned node", cluster_nodes.partition, cluster_nodes.heal)
