"""Two operator replicas, one active (issue 14): they elect a leader through a Lease; the other
acts on nothing until the leader dies (SIGKILL: it takes over once the Lease runs out) or stops
cleanly (SIGTERM: the Lease is released and taken over at once). Each process is a real
`pgop run --leader-elect`; the takeover is measured from the kill to the new leader's first
finished work, as a user sees it."""
from __future__ import annotations

import json
import time

import pytest

from e2e.operator import STANDBY_OPERATOR, TEST_OPERATOR, OperatorProcess
from e2e.test_pgcluster import manifest, wait_ready
from pgop.runtime import leader

pytestmark = pytest.mark.cluster


def _holder(kubectl, ns) -> str | None:
    lease = kubectl("-n", ns, "get", "lease", "pgop-operator", "-o", "jsonpath={.spec.holderIdentity}",
                    check=False)
    return lease.stdout.strip() or None if lease.returncode == 0 else None


def _took(op: OperatorProcess) -> str | None:
    """The identity with which this process took the Lease, from its log."""
    for line in op.log_text().splitlines():
        if "took the Lease" in line:
            return line.split("leader election: ", 1)[1].split(" ", 1)[0]
    return None


@pytest.fixture
def replicas(local_env, namespace, tmp_path):
    from e2e.harness.__main__ import operator_env
    env = operator_env(local_env)
    args = ("--leader-elect", "--lease-namespace", namespace)
    a = OperatorProcess(env, tmp_path / "a.log", args, TEST_OPERATOR)
    b = OperatorProcess(env, tmp_path / "b.log", args, STANDBY_OPERATOR)
    yield a, b
    for op in (a, b):
        op.stop()


def test_one_replica_acts_and_the_other_takes_over_when_it_dies_or_stops(kubectl, namespace, replicas):
    ns, (a, b) = namespace, replicas
    a.start()
    kubectl.wait_for(lambda: _took(a), "the first replica leads", 60)
    assert _holder(kubectl, ns) == _took(a)
    b.start(alone=False)
    kubectl.wait_for(lambda: "is a candidate" in b.log_text(), "the second replica waits as a candidate", 60)

    kubectl("apply", "-f", "-", input=manifest("ha-one", ns, instances=1, sync=0))
    wait_ready(kubectl, ns, "ha-one", 1)
    assert "ha-one" in a.log_text() and "ha-one" not in b.log_text()  # the candidate acted on nothing
    # Logs not on a terminal are JSON lines: the operator's (kopf's keys) and the agent's in its pod.
    for line in a.log_text().splitlines():
        if line.strip():
            assert {"timestamp", "severity", "message"} <= set(json.loads(line)), line
    # The agent may report Ready from its container before the kubelet has posted that
    # container's running state; the API server serves the log only after that.
    logs = kubectl.wait_for(lambda: (p := kubectl("-n", ns, "logs", "ha-one-0", "-c", "postgres", check=False))
                            .returncode == 0 and p, "the agent's log", 30)
    agent = [json.loads(line) for line in logs.stdout.splitlines() if line.startswith("{")]
    assert agent and all(entry["cluster"] == "ha-one" and entry["instance"] == "ha-one-0"
                         and entry["namespace"] == ns for entry in agent)

    # The leader dies: the candidate waits out the Lease, then acts (a new cluster made Ready).
    killed = time.monotonic()
    a.kill()
    kubectl("apply", "-f", "-", input=manifest("ha-two", ns, instances=1, sync=0))
    kubectl.wait_for(lambda: _took(b), "the second replica takes the Lease", leader.LEASE_DURATION + 30)
    took_over = time.monotonic() - killed
    wait_ready(kubectl, ns, "ha-two", 1)
    ready = time.monotonic() - killed
    assert _holder(kubectl, ns) == _took(b)
    assert took_over >= leader.LEASE_DURATION - 2  # never before the dead leader's Lease ran out
    spec = kubectl.json("-n", ns, "get", "lease", "pgop-operator")["spec"]
    assert spec["leaseTransitions"] == 1
    print(f"\nleader SIGKILLed: Lease taken after {took_over:.1f}s, new PgCluster Ready {ready:.1f}s after the kill")

    # A clean stop hands over at once: the other replica takes the released Lease and acts.
    a.log.write_text("")
    a.start(alone=False)
    kubectl.wait_for(lambda: "is a candidate" in a.log_text(), "the restarted replica waits as a candidate", 60)
    stopped = time.monotonic()
    b.stop()
    kubectl.wait_for(lambda: _took(a), "the restarted replica takes the released Lease", 30)
    handed_over = time.monotonic() - stopped
    assert "released the Lease" in b.log_text()
    kubectl("-n", ns, "delete", "pgcluster", "ha-one", "--wait=true", timeout=120)  # its finalizer needs a leader
    print(f"leader SIGTERMed: Lease taken {handed_over:.1f}s after the stop began (the stop itself included)")
