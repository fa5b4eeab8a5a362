"""Pod Security "restricted" (issue 12): every pod pgop makes (bootstrap, Postgres, backup, restore)
is admitted in a namespace that enforces the restricted profile, and nothing in them runs as root.
The volume is owned through the pod's fsGroup; there is no root init container."""
from __future__ import annotations

import uuid

import pytest

from e2e.harness.images import POSTGRES_IMAGE
from e2e.test_backup import cluster_manifest, pgop, rows, s3, s3_secret, switch_and_wait_archived  # noqa: F401 (s3: a fixture)
from e2e.test_pgcluster import connect, exec_psql, wait_ready

pytestmark = pytest.mark.cluster

ROOT_POD = f"""
apiVersion: v1
kind: Pod
metadata: {{name: root-shell}}
spec:
  containers:
  - name: shell
    image: {POSTGRES_IMAGE}
    command: [sleep, "60"]
    securityContext: {{runAsUser: 0}}
"""


def _enforce_restricted(kubectl, ns):
    kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest")
    # The namespace really enforces it: a pod that runs as root is refused at admission.
    refused = kubectl("-n", ns, "apply", "-f", "-", input=ROOT_POD, check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr


def test_a_cluster_backs_up_and_restores_under_pod_security_restricted(kubectl, namespace, operator, s3,
                                                                          local_env):
    ns, name, prefix = namespace, "locked", f"e2e-{uuid.uuid4().hex[:8]}"
    _enforce_restricted(kubectl, ns)
    s3_secret(kubectl, ns, local_env)
    kubectl("apply", "-f", "-", input=cluster_manifest(name, ns, prefix, local_env["PGOP_S3_ENDPOINT_IN_CLUSTER"]))
    wait_ready(kubectl, ns, name, 2)
    with connect(kubectl, ns, f"{name}-rw", name) as conn:
        conn.execute("create table orders (id int primary key)")
        conn.execute("insert into orders select generate_series(1, 50)")

    # No pod of the cluster runs anything as root, and none has an init container: the agent
    # bootstraps a new volume in the Postgres container, as the postgres user.
    pods = kubectl.json("-n", ns, "get", "pods", "-l", f"pgop.io/cluster={name}")["items"]
    assert pods
    for pod in pods:
        spec = pod["spec"]
        assert not spec.get("initContainers"), pod["metadata"]["name"]
        assert all((c.get("securityContext") or {}).get("runAsUser", spec["securityContext"]["runAsUser"]) != 0
                   for c in spec["containers"])
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
    # The volume root belongs to the postgres group through fsGroup; PGDATA to the postgres user.
    owner = exec_psql(kubectl, ns, f"{name}-0", "select current_setting('data_directory')", db="postgres")
    listing = kubectl("-n", ns, "exec", f"{name}-0", "-c", "postgres", "--",
                      "stat", "-c", "%u:%g %a %n", owner.rsplit("/", 1)[0], owner).stdout.splitlines()
    mount_line, pgdata_line = listing
    gid = str(pods[0]["spec"]["securityContext"]["fsGroup"])
    assert mount_line.split()[0].endswith(f":{gid}"), listing
    assert pgdata_line.split()[1] == "700" and not pgdata_line.startswith("0:"), listing

    # A backup pod is admitted too, and a restore into a new cluster (its bootstrap pod restores).
    pgop(local_env, "backup", name, "-n", ns, "--name", f"{name}-b1", "--wait")
    with connect(kubectl, ns, f"{name}-rw", name) as conn:
        conn.execute("insert into orders select generate_series(51, 80)")
    switch_and_wait_archived(kubectl, ns, f"{name}-0")
    pgop(local_env, "restore", name, "--to", f"{name}-copy", "-n", ns, "--instances", "1", "--timeout", "300")
    wait_ready(kubectl, ns, f"{name}-copy", 1)
    assert rows(kubectl, ns, f"{name}-copy") == (80, 80)
    events = kubectl("-n", ns, "get", "events", "-o", "jsonpath={.items[*].message}").stdout
    assert "violates PodSecurity" not in events
