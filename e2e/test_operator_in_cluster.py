"""The operator image, deployed with deploy/operator.yaml, runs in the cluster and does its job."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from e2e.harness import images, proc

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "operator.yaml"

# deploy/operator.yaml runs the operator on every namespace: not beside a lane's (e2e.harness.lanes)
pytestmark = pytest.mark.clusterwide


@pytest.fixture(scope="module")
def in_cluster_operator(kubectl):
    proc.stop("operator")  # one operator at a time
    images.operator_image()  # deploy/operator.yaml's image: this checkout at the package version
    kubectl("apply", "-f", str(DEPLOY))
    kubectl("-n", "pgop-system", "rollout", "status", "deployment/pgop-operator", "--timeout=120s")
    yield
    kubectl("delete", "-f", str(DEPLOY), "--wait=true", "--timeout=120s", check=False)


def test_operator_pod_creates_a_ready_cluster(kubectl, namespace, in_cluster_operator):
    kubectl("apply", "-f", "-", input=f"""
apiVersion: pgop.io/v1
kind: PgCluster
metadata: {{name: incluster, namespace: {namespace}}}
spec:
  instances: 1
  postgresVersion: 15
  storage: {{size: 1Gi}}
  bootstrap: {{initdb: {{database: app, owner: app}}}}
""")
    deadline = time.monotonic() + 180
    status = {}
    while time.monotonic() < deadline:
        status = kubectl.json("-n", namespace, "get", "pgcluster", "incluster").get("status") or {}
        if status.get("phase") == "Ready":
            break
        time.sleep(1)
    # Two replicas, both live; the one holding the Lease did the work, the other waited.
    holder = kubectl("-n", "pgop-system", "get", "lease", "pgop-operator", "-o",
                     "jsonpath={.spec.holderIdentity}").stdout.strip()
    pods = kubectl.json("-n", "pgop-system", "get", "pods", "-l", "app=pgop-operator")["items"]
    leader = next(p for p in pods if holder.startswith(p["metadata"]["name"] + "_"))
    logs = kubectl("-n", "pgop-system", "logs", leader["metadata"]["name"], check=False).stdout
    assert status.get("phase") == "Ready", f"{status}\n{logs[-3000:]}"
    assert f"{namespace}/incluster: create PgInstance incluster-0" in logs
    assert len(pods) == 2 and all(p["status"]["containerStatuses"][0]["ready"] for p in pods)
    assert all(p["spec"]["securityContext"]["runAsUser"] == 65532 for p in pods)
    [standby] = [p for p in pods if p is not leader]
    standby_log = kubectl("-n", "pgop-system", "logs", standby["metadata"]["name"], check=False).stdout
    assert "is a candidate" in standby_log and "incluster" not in standby_log
    kubectl("-n", namespace, "delete", "pgcluster", "incluster", "--timeout=120s")
