"""The operator image, deployed with deploy/operator.yaml, runs in the cluster and does its job."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from e2e.harness import proc

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "operator.yaml"


@pytest.fixture(scope="module")
def in_cluster_operator(kubectl):
    proc.stop("operator")  # one operator at a time
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
    logs = kubectl("-n", "pgop-system", "logs", "deployment/pgop-operator", check=False).stdout
    assert status.get("phase") == "Ready", f"{status}\n{logs[-3000:]}"
    assert f"{namespace}/incluster: create PgInstance incluster-0" in logs
    pod = kubectl.json("-n", "pgop-system", "get", "pods", "-l", "app=pgop-operator")["items"][0]
    assert pod["status"]["containerStatuses"][0]["ready"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 65532
    kubectl("-n", namespace, "delete", "pgcluster", "incluster", "--timeout=120s")
