"""Tenant isolation (issue 12), tried as a tenant would: a user allowed to edit pgop objects in
one namespace only (a Role there, nothing elsewhere), applying manifests with kubectl.

- A MysqlDb or a PgCluster whose Vault path or Consul prefix leaves the tenant's namespace is
  refused at admission (deploy/admission.yaml, policy pgop-tenant-paths) with a message naming the
  field, on create and on update; paths below the tenant's own prefix are accepted.
- Parameters that give up durability (fsync off, synchronous_commit off/local with
  synchronousMode required) are refused by the CRD unless spec.allowUnsafeParameters is true, and
  `pgop plan` says the same.

The rules of this checkout are installed first, the way `make up` installs them
(e2e.harness.cluster.install_crds: crds/ and deploy/admission.yaml, server-side). No operator is
needed: nothing refused here ever reaches one. RDS adoption: e2e/test_mysqldb.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from e2e.harness import cluster as harness_cluster
from e2e.harness import lanes, paths
from e2e.harness.fixtures import create_test_namespace, delete_test_namespace

pytestmark = [pytest.mark.cluster]

TENANT = "tenant-a"  # a user name only: the admin's kubeconfig impersonates it (kubectl --as)


@pytest.fixture(scope="module")
def rules(kubectl):
    """This checkout's CRDs and admission policies, installed as the harness installs them."""
    harness_cluster.install_crds()


@pytest.fixture
def tenancy(kubectl, namespace, rules):
    """The tenant's namespace (`namespace`) and another one it must not reach."""
    other = f"{lanes.namespace_prefix()}other-{uuid.uuid4().hex[:6]}"
    create_test_namespace(kubectl, other)
    kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pgop-tenant"},
             "rules": [{"apiGroups": ["pgop.io"], "resources": ["mysqldbs", "pgclusters"],
                        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "pgop-tenant"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pgop-tenant"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TENANT}]},
        ]}))
    wait_for_the_policy(kubectl, namespace, other)
    yield namespace, other
    delete_test_namespace(kubectl, other)


def as_tenant(kubectl, ns, *args, input=None):
    return kubectl("--as", TENANT, "-n", ns, *args, input=input, check=False)


def mysqldb(name, ns, **spec):
    return json.dumps({"apiVersion": "pgop.io/v1", "kind": "MysqlDb", "metadata": {"name": name, "namespace": ns},
                       "spec": {"engineVersion": "8.0.35", "instanceSize": "small", "storageGB": 20,
                                "databaseName": "orders", **spec}})


def pgcluster(name, ns, **spec):
    return json.dumps({"apiVersion": "pgop.io/v1", "kind": "PgCluster", "metadata": {"name": name, "namespace": ns},
                       "spec": {"instances": 3, "synchronousReplicas": 1, "storage": {"size": "1Gi"}, **spec}})


def wait_for_the_policy(kubectl, ns, other, timeout=30):
    """A new ValidatingAdmissionPolicy (and the tenant's new RoleBinding) take the API server a
    moment to load: wait for the policy's first refusal (a server-side dry run, so nothing is
    created meanwhile)."""
    probe = mysqldb("probe", ns, vaultPath=f"secret/data/k8s/{other}/probe/db")
    deadline = time.monotonic() + timeout
    while "pgop-tenant-paths" not in as_tenant(kubectl, ns, "apply", "--dry-run=server", "-f", "-",
                                               input=probe).stderr:
        assert time.monotonic() < deadline, "the pgop-tenant-paths admission policy never refused a path"
        time.sleep(0.5)


def refused(result, *words):
    assert result.returncode != 0, f"accepted:\n{result.stdout}"
    for word in words:
        assert word in result.stderr, result.stderr
    return result.stderr


def absent(kubectl, ns, kind, name):
    return kubectl("-n", ns, "get", kind, name, check=False).returncode != 0


# --------------------------------------------------------------------- Vault and Consul paths

def test_a_tenant_cannot_point_a_mysqldb_at_another_namespaces_secret_or_config(kubectl, tenancy):
    ns, other = tenancy
    message = refused(as_tenant(kubectl, ns, "apply", "-f", "-",
                                input=mysqldb("orders-db", ns, vaultPath=f"secret/data/k8s/{other}/orders-db/db")),
                      "spec.vaultPath must stay below", f"secret/data/k8s/{ns}/")
    assert "denied request" in message or "Forbidden" in message, message
    refused(as_tenant(kubectl, ns, "apply", "-f", "-",
                      input=mysqldb("orders-db", ns, consulPrefix=f"config/k8s/{other}/orders-db/db")),
            "spec.consulPrefix must stay below", f"config/k8s/{ns}/")
    assert absent(kubectl, ns, "mysqldb", "orders-db")
    # below its own prefix, any name the tenant likes is fine
    accepted = as_tenant(kubectl, ns, "apply", "--dry-run=server", "-f", "-", input=mysqldb(
        "orders-db", ns, vaultPath=f"secret/data/k8s/{ns}/shared/orders", consulPrefix=f"config/k8s/{ns}/shared/orders"))
    assert accepted.returncode == 0, accepted.stderr


def test_a_tenant_cannot_move_an_existing_mysqldb_to_another_namespaces_path(kubectl, tenancy):
    ns, other = tenancy
    created = as_tenant(kubectl, ns, "apply", "-f", "-", input=mysqldb("orders-db", ns))
    assert created.returncode == 0, created.stderr
    try:
        patch = json.dumps({"spec": {"vaultPath": f"secret/data/k8s/{other}/orders-db/db"}})
        refused(as_tenant(kubectl, ns, "patch", "mysqldb", "orders-db", "--type=merge", "-p", patch),
                "spec.vaultPath must stay below")
        stored = kubectl.json("-n", ns, "get", "mysqldb", "orders-db")["spec"]
        assert "vaultPath" not in stored
        # what does not touch the paths still goes through
        ok = as_tenant(kubectl, ns, "patch", "mysqldb", "orders-db", "--type=merge", "-p",
                       json.dumps({"spec": {"backupRetentionDays": 3}}))
        assert ok.returncode == 0, ok.stderr
    finally:
        kubectl("-n", ns, "delete", "mysqldb", "orders-db", "--wait=false", check=False)


@pytest.mark.parametrize("field,path", [
    # the substring attack the old check let through: k8s/<own>/ is in it, below another namespace
    ("vaultPath", "secret/data/k8s/{other}/k8s/{ns}/db"),
    ("vaultPath", "secret/data/k8s/{ns}x/db"),
    ("vaultPath", "secret/data/k8s/{ns}/../{other}/db"),
    ("consulPrefix", "config/k8s/{other}/k8s/{ns}/db"),
    ("consulPrefix", "config/k8s/{ns}/../{other}/db"),
], ids=["vault-substring", "vault-string-prefix", "vault-dotdot", "consul-substring", "consul-dotdot"])
def test_a_tenant_cannot_publish_a_pgcluster_into_another_namespace(kubectl, tenancy, field, path):
    ns, other = tenancy
    target = path.format(ns=ns, other=other)
    result = as_tenant(kubectl, ns, "apply", "-f", "-", input=pgcluster("orders", ns, publish={field: target}))
    # '..' is already refused by the CRD's path syntax, the rest by the admission policy: both name the field
    refused(result, f"spec.publish.{field}")
    assert absent(kubectl, ns, "pgcluster", "orders")
    own = {"vaultPath": f"secret/data/k8s/{ns}/orders/app", "consulPrefix": f"config/k8s/{ns}/orders/app"}[field]
    accepted = as_tenant(kubectl, ns, "apply", "--dry-run=server", "-f", "-",
                         input=pgcluster("orders", ns, publish={field: own}))
    assert accepted.returncode == 0, accepted.stderr


# --------------------------------------------------------------------- unsafe parameters

def pgop_plan(local_env, manifest: str, ns: str, tmp_path) -> subprocess.CompletedProcess:
    """`pgop plan -f` of this checkout against the cluster: what a person checks before applying."""
    path = tmp_path / "cluster.json"
    path.write_text(manifest)
    return subprocess.run([sys.executable, "-m", "pgop.cli", "plan", "-f", str(path), "-n", ns],
                          capture_output=True, text=True, cwd=str(paths.REPO), timeout=120,
                          env={**os.environ, "KUBECONFIG": local_env["KUBECONFIG"],
                               "PYTHONPATH": str(paths.REPO)})


@pytest.mark.parametrize("spec,setting", [
    ({"parameters": {"fsync": "off"}}, "spec.parameters.fsync"),
    ({"parameters": {"fsync": "false"}}, "spec.parameters.fsync"),
    ({"synchronousMode": "required", "parameters": {"synchronous_commit": "off"}},
     "spec.parameters.synchronous_commit"),
    ({"synchronousMode": "required", "parameters": {"synchronous_commit": "local"}},
     "spec.parameters.synchronous_commit"),
], ids=["fsync-off", "fsync-false", "sync-commit-off", "sync-commit-local"])
def test_unsafe_parameters_are_refused_unless_the_spec_allows_them(kubectl, tenancy, local_env, tmp_path,
                                                                   spec, setting):
    ns, _ = tenancy
    manifest = pgcluster("orders", ns, **spec)
    refused(as_tenant(kubectl, ns, "apply", "-f", "-", input=manifest), setting, "spec.allowUnsafeParameters: true")
    assert absent(kubectl, ns, "pgcluster", "orders")
    plan = pgop_plan(local_env, manifest, ns, tmp_path)
    assert plan.returncode == 2 and f"invalid {setting}" in plan.stdout, plan.stdout + plan.stderr
    # said explicitly, it is the tenant's choice
    allowed = pgcluster("orders", ns, allowUnsafeParameters=True, **spec)
    accepted = as_tenant(kubectl, ns, "apply", "--dry-run=server", "-f", "-", input=allowed)
    assert accepted.returncode == 0, accepted.stderr


def test_full_page_writes_stays_the_operators_even_with_the_opt_in(kubectl, tenancy):
    ns, _ = tenancy
    manifest = pgcluster("orders", ns, allowUnsafeParameters=True, parameters={"full_page_writes": "off"})
    refused(as_tenant(kubectl, ns, "apply", "-f", "-", input=manifest), "full_page_writes")


def test_synchronous_commit_off_is_the_tenants_business_without_required_sync(kubectl, tenancy):
    ns, _ = tenancy
    manifest = pgcluster("orders", ns, synchronousMode="preferred", parameters={"synchronous_commit": "off"})
    accepted = as_tenant(kubectl, ns, "apply", "--dry-run=server", "-f", "-", input=manifest)
    assert accepted.returncode == 0, accepted.stderr
