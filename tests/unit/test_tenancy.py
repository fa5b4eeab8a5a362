"""Paths stay inside the tenant's namespace (pgop.kernel.tenancy), and the API server's rules
(the CRDs' path syntax plus deploy/admission.yaml's pgop-tenant-paths policy) draw the same line
as the operator does. The policy on a real kube-apiserver: e2e/test_tenancy.py."""
from __future__ import annotations

import pathlib
import re

import pytest
import yaml

from pgop.kernel import tenancy
from pgop.kernel.tenancy import CONSUL_ROOT, VAULT_ROOT, outside_namespace, refused_paths

ROOT = pathlib.Path(__file__).resolve().parents[2]

OWN, OTHER = "shop", "billing"

VAULT_INSIDE = [
    "secret/data/k8s/shop/orders/db",
    "secret/data/k8s/shop/db",
    "secret/data/k8s/shop/a/b/c/d",
    "secret/data/k8s/shop/orders.v2/db",
]
VAULT_OUTSIDE = [
    "secret/data/k8s/billing/orders/db",    # another namespace
    "secret/data/k8s/billing/k8s/shop/db",  # the substring attack: k8s/shop/ appears, but lower down
    "secret/data/k8s/shopx/orders/db",      # a string prefix, not a segment prefix
    "secret/data/k8s/sho/p/db",
    "secret/data/k8s/shop",                 # the namespace itself, nothing below it
    "secret/data/k8s/shop/../billing/db",   # '..'
    "secret/data/k8s/shop/./db",
    "secret/data/k8s/shop/orders/..",
    "secret/data/k8s/shop//db",             # empty segment
    "secret/data/k8s/shop/db/",
    "/secret/data/k8s/shop/db",
    "secret/k8s/shop/orders/db",            # KV v2 without data/: not the contract's form
    "secret/metadata/k8s/shop/orders/db",
    "kv/data/k8s/shop/orders/db",           # another mount
    "secret/data/shop/orders/db",
    "secret/data/k8s/SHOP/orders/db",
    "secret/data/k8s/shop/orders db",       # characters the CRDs refuse
    "secret/data/k8s/shop/%2e%2e/db",
    "secret/data/k8s/shop/..x/db",          # a leading dot, as the CRDs refuse it
    "",
]
CONSUL_INSIDE = ["config/k8s/shop/orders/db", "config/k8s/shop/x"]
CONSUL_OUTSIDE = [
    "config/k8s/billing/orders/db",
    "config/k8s/billing/k8s/shop/db",
    "config/k8s/shopx/db",
    "config/k8s/shop",
    "config/k8s/shop/",
    "config/k8s/shop/../billing/db",
    "config/k8s/shop//db",
    "/config/k8s/shop/db",
    "k8s/shop/db",
    "config/shop/db",
]


# store -> (its root, the MysqlDb field, the namespace's prefix)
STORES = {"vault": (VAULT_ROOT, "vaultPath", tenancy.vault_prefix),
          "consul": (CONSUL_ROOT, "consulPrefix", tenancy.consul_prefix)}
CASES = ([("vault", p, True) for p in VAULT_INSIDE] + [("vault", p, False) for p in VAULT_OUTSIDE]
         + [("consul", p, True) for p in CONSUL_INSIDE] + [("consul", p, False) for p in CONSUL_OUTSIDE])


@pytest.mark.parametrize("store,path,inside", CASES)
def test_only_a_path_below_the_own_namespace_is_inside(store, path, inside):
    assert (outside_namespace(path, STORES[store][0], OWN) is None) == inside


def test_the_reasons_say_what_is_wrong():
    assert "secret/data/k8s/shop/" in outside_namespace("secret/data/k8s/billing/k8s/shop/db", VAULT_ROOT, OWN)
    assert "'..'" in outside_namespace("secret/data/k8s/shop/../billing/db", VAULT_ROOT, OWN)
    assert "empty" in outside_namespace("config/k8s/shop//db", CONSUL_ROOT, OWN)
    assert "no namespace" in outside_namespace("config/k8s//db", CONSUL_ROOT, "")


def test_the_defaults_are_inside():
    assert tenancy.default_vault_path(OWN, "orders") == "secret/data/k8s/shop/orders/db"
    assert tenancy.default_consul_prefix(OWN, "orders") == "config/k8s/shop/orders/db"
    assert not refused_paths(OWN, vault=("v", tenancy.default_vault_path(OWN, "orders")),
                             consul=("c", tenancy.default_consul_prefix(OWN, "orders")))


def test_refused_paths_name_the_field_and_the_message_what_pgop_does():
    refused = refused_paths(OWN, vault=("spec.vaultPath", "secret/data/k8s/billing/k8s/shop/db"),
                            consul=("spec.consulPrefix", "config/k8s/shop/orders/db"))
    assert [r.field for r in refused] == ["spec.vaultPath"]
    message = tenancy.refusal_message(refused)
    assert message.startswith("spec.vaultPath 'secret/data/k8s/billing/k8s/shop/db' is not below secret/data/k8s/shop/")
    assert "reads, writes and deletes nothing there" in message
    both = refused_paths(OWN, vault=("a", "secret/data/k8s/billing/x"), consul=("b", "config/k8s/billing/x"))
    assert [r.field for r in both] == ["a", "b"]


# --------------------------------------------------------------- the API server draws the same line

def _admission_policy() -> dict:
    docs = yaml.safe_load_all((ROOT / "deploy" / "admission.yaml").read_text())
    return next(d for d in docs if d and d["kind"] == "ValidatingAdmissionPolicy"
                and d["metadata"]["name"] == "pgop-tenant-paths")


def _crd_path_regex(field: str) -> re.Pattern:
    """The CRD's syntax rule of MysqlDb spec.vaultPath / spec.consulPrefix (RE2 read as Python re)."""
    crd = yaml.safe_load((ROOT / "crds" / "mysqldbs.yaml").read_text())
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][field]
    pattern = re.search(r"matches\(r'([^']*)'\)", node["x-kubernetes-validations"][0]["rule"]).group(1)
    return re.compile(pattern.removesuffix("$") + r"\Z")


def _admitted(path: str, prefix: str) -> bool:
    """pgop-tenant-paths' rule for a path that is set and new, written in Python: what the policy's
    expression says, with the regex taken from the policy itself."""
    rule = _admission_policy()["spec"]["validations"][0]["expression"]
    dots = re.search(r"matches\('([^']*)'\)", rule).group(1)
    return path.startswith(prefix) and len(path) > len(prefix) and not re.search(dots, path)


def test_the_admission_policy_judges_both_kinds_from_the_request_namespace():
    policy = _admission_policy()
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rules == [{"apiGroups": ["pgop.io"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                      "resources": ["mysqldbs", "pgclusters"]}]
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert variables["vaultPrefix"] == "'secret/data/k8s/' + request.namespace + '/'"
    assert variables["consulPrefix"] == "'config/k8s/' + request.namespace + '/'"
    for field in ("spec.vaultPath", "spec.publish.vaultPath", "spec.consulPrefix", "spec.publish.consulPrefix"):
        assert f"'{field}'" in " ".join(variables.values())
    for validation in policy["spec"]["validations"]:
        assert validation["reason"] == "Forbidden"
        message = validation["messageExpression"]
        assert ("variables.vaultField" in message or "variables.consulField" in message) and "must stay below" in message
        # unchanged on an UPDATE: an object stored before the policy can still lose its finalizer
        assert "== variables.old" in validation["expression"]


@pytest.mark.parametrize("store,path,inside", CASES)
def test_the_api_server_and_the_operator_agree(store, path, inside):
    _, field, prefix = STORES[store]
    assert (bool(_crd_path_regex(field).match(path)) and _admitted(path, prefix(OWN))) == inside


def test_pgcluster_publishing_never_targets_a_refused_path():
    from pgop.cluster import publish
    from pgop.kernel.model import Cluster
    from tests.unit.world import cluster_body
    attack = Cluster.from_object(cluster_body(publish={"vaultPath": "secret/data/k8s/billing/k8s/shop/db"}))
    assert publish.namespace_problem(attack).startswith("spec.publish.vaultPath 'secret/data/k8s/billing/k8s/shop/db'")
    with pytest.raises(ValueError, match="spec.publish.vaultPath"):
        publish.targets(attack)  # what publish_cluster and unpublish_cluster write and delete
    own = Cluster.from_object(cluster_body(publish={"vaultPath": "secret/data/k8s/shop/orders-app/db"}))
    assert publish.namespace_problem(own) is None
    assert publish.targets(own) == ("secret/data/k8s/shop/orders-app/db", "config/k8s/shop/orders/db")
