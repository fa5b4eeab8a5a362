"""The operator's own least privilege, without a cluster: the namespaces it watches, kopf's settings
for them, the manifests' RBAC (deploy/operator*.yaml), and credentials read from files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from pgop.kernel.model import Cluster
from pgop.operator import settings_for
from pgop.runtime import publish as pub
from pgop.runtime.config import OperatorConfig, parse_namespaces, watch_scope
from pgop.runtime.kube import Kube
from pgop.specs.rbac import agent_rules

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def one(name: str, kind: str, object_name: str | None = None) -> dict:
    return next(d for d in docs(name) if d["kind"] == kind
                and (object_name is None or d["metadata"]["name"] == object_name))


def grants(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


CLUSTER_SCOPED = {("", "nodes"), ("storage.k8s.io", "storageclasses"),
                  ("apiextensions.k8s.io", "customresourcedefinitions")}


# --- which namespaces -------------------------------------------------------------------------------

def test_watch_namespaces_parse_trim_sort_and_deduplicate():
    assert parse_namespaces(" shop, billing,,shop ") == ("billing", "shop")
    assert parse_namespaces("") == ()


@pytest.mark.parametrize("bad", ["Shop", "shop_1", "-shop", "a/b", "x" * 64])
def test_a_bad_namespace_is_refused_naming_the_variable(bad):
    with pytest.raises(ValueError) as info:
        parse_namespaces(f"ok,{bad}")
    assert "PGOP_WATCH_NAMESPACES" in str(info.value) and repr(bad) in str(info.value)


def test_watch_scope_cli_wins_over_the_environment_and_all_namespaces_over_both():
    env = {"PGOP_WATCH_NAMESPACES": "shop,billing"}
    assert watch_scope([], False, env) == ("billing", "shop")
    assert watch_scope(["orders"], False, env) == ("orders",)
    assert watch_scope([], True, env) == ()
    assert watch_scope([], False, {}) == ()  # nothing said: every namespace
    with pytest.raises(ValueError, match="exclude each other"):
        watch_scope(["orders"], True, env)
    with pytest.raises(ValueError, match="--namespace"):
        watch_scope(["Orders"], False, {})


def test_kopf_reads_no_namespaces_nor_crds_when_watching_exact_names():
    assert settings_for(("shop", "billing")).scanning.disabled is True
    assert settings_for(()).scanning.disabled is False  # cluster-wide: kopf watches CRDs (RBAC allows)
    assert settings_for(("!solo-*",)).scanning.disabled is False  # a pattern needs the Namespace watch


def test_the_api_client_never_lists_across_namespaces():
    kube = Kube(api=object())  # refused before any call
    for kind in ("Secret", "Pod", "PgInstance", "PgBackup"):
        with pytest.raises(ValueError, match="never lists across namespaces"):
            kube.list(kind, "")


# --- the manifests ------------------------------------------------------------------------------

def test_the_cluster_role_grants_no_wildcard_no_put_and_no_namespace_watch():
    rules = one("operator.yaml", "ClusterRole")["rules"]
    granted = grants(rules)
    assert not any("*" in (g, r, v) for g, r, v in granted)
    assert {(g, r) for g, r, v in granted if v == "update"} == {
        ("pgop.io", "pginstances/status"),  # granted to the agents
        ("pgop.io", "pgclusters/finalizers"), ("pgop.io", "pginstances/finalizers"),
        ("pgop.io", "pgbackups/finalizers")}
    assert not {(g, r) for g, r, _ in granted} & {("", "namespaces"), ("", "configmaps"),
                                                  ("apps", "deployments"), ("", "nodes/status")}
    secrets = {v for g, r, v in granted if r == "secrets"}
    # watched only with the label pgop.io/cluster (pgop.cluster.indexes.LABEL_SELECTORS)
    assert secrets == {"get", "list", "watch", "create", "patch"}
    assert {v for g, r, v in granted if r == "nodes"} == {"list", "watch"}
    assert {v for g, r, v in granted if r == "customresourcedefinitions"} == {"list", "watch"}
    assert not any(v == "delete" and r not in ("pods", "pginstances", "pgbackups") for g, r, v in granted)


def test_namespaced_mode_has_the_same_rules_inside_a_namespace_and_only_two_reads_outside():
    cluster_wide = grants(one("operator.yaml", "ClusterRole")["rules"])
    inside = grants(one("operator-namespaced.yaml", "ClusterRole", "pgop-operator-namespaced")["rules"])
    outside = grants(one("operator-namespaced.yaml", "ClusterRole", "pgop-operator-cluster")["rules"])
    assert inside == {g for g in cluster_wide if (g[0], g[1]) not in CLUSTER_SCOPED}
    assert outside == {("", "nodes", "list"), ("", "nodes", "watch"), ("storage.k8s.io", "storageclasses", "get")}
    # pgop-operator-namespaced is bound per namespace only
    crbs = [d for d in docs("operator-namespaced.yaml") if d["kind"] == "ClusterRoleBinding"]
    assert [b["roleRef"]["name"] for b in crbs] == ["pgop-operator-cluster"]
    binding = one("operator-watch-namespace.yaml", "RoleBinding")
    assert binding["metadata"]["namespace"] == "NAMESPACE"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "pgop-operator-namespaced"}
    account = one("operator-namespaced.yaml", "ServiceAccount")["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"],
                                    "namespace": account["namespace"]}]


def test_the_operator_holds_every_permission_it_grants_the_agents():
    """Kubernetes refuses to create a Role granting more than its creator holds (no `escalate`)."""
    cluster = Cluster.from_object({"apiVersion": "pgop.io/v1", "kind": "PgCluster",
                                   "metadata": {"name": "orders", "namespace": "shop", "uid": "u"},
                                   "spec": {"instances": 1, "postgresVersion": 15, "storage": {"size": "1Gi"},
                                            "bootstrap": {"initdb": {"database": "app", "owner": "app"}}}})
    inside = grants(one("operator-namespaced.yaml", "ClusterRole", "pgop-operator-namespaced")["rules"])
    assert grants(agent_rules(cluster)) <= inside


def _container(name: str) -> dict:
    return one(name, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_the_deployments_mount_credentials_as_files_and_differ_only_in_the_namespaces():
    for name in ("operator.yaml", "operator-namespaced.yaml"):
        container = _container(name)
        assert not any("secretRef" in source for source in container.get("envFrom", []))
        env = {e["name"]: e.get("value") for e in container["env"]}
        mount = next(m for m in container["volumeMounts"] if m["name"] == "credentials")
        assert mount["readOnly"] is True
        for variable in ("PGOP_VAULT_TOKEN_FILE", "CONSUL_HTTP_TOKEN_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            assert env[variable].startswith(mount["mountPath"] + "/")
        volume = next(v for v in one(name, "Deployment")["spec"]["template"]["spec"]["volumes"]
                      if v["name"] == "credentials")
        assert volume["secret"]["secretName"] == "pgop-operator-credentials"
    namespaced = {e["name"]: e for e in _container("operator-namespaced.yaml")["env"]}
    assert namespaced["PGOP_WATCH_NAMESPACES"]["valueFrom"]["configMapKeyRef"].get("optional") is not True
    plain, narrow = one("operator.yaml", "Deployment"), one("operator-namespaced.yaml", "Deployment")
    narrow["spec"]["template"]["spec"]["containers"][0]["env"] = [
        e for e in _container("operator-namespaced.yaml")["env"] if e["name"] != "PGOP_WATCH_NAMESPACES"]
    assert narrow == plain


# --- credentials from files ----------------------------------------------------------------------

def test_config_reads_the_token_file_variables():
    config = OperatorConfig.from_env({"PGOP_VAULT_TOKEN_FILE": "/run/v", "CONSUL_HTTP_TOKEN_FILE": "/run/c",
                                      "VAULT_TOKEN": "s.dev"})
    assert (config.vault_token_file, config.consul_token_file, config.vault_token) == ("/run/v", "/run/c", "s.dev")
    assert "s.dev" not in repr(config)


def test_a_token_file_is_read_on_every_use(tmp_path):
    path = tmp_path / "token"
    path.write_text("first\n")
    assert pub.read_token_file(str(path), "Vault") == "first"
    path.write_text("second")  # rotated in place, as the kubelet does
    assert pub.read_token_file(str(path), "Vault") == "second"
    assert pub.read_token_file(str(tmp_path / "absent"), "Vault") is None


def test_a_bad_token_file_names_the_file_never_the_content(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(pub.CredentialsUnavailable, match="Vault token file .*empty is empty"):
        pub.read_token_file(str(empty), "Vault")
    with pytest.raises(pub.CredentialsUnavailable) as info:
        pub.read_token_file(str(tmp_path), "Consul")  # a directory: not a token
    assert str(tmp_path) in str(info.value) and info.value.reason == "CredentialsUnavailable"
    if os.geteuid() != 0:  # root reads any file
        secret = tmp_path / "secret"
        secret.write_text("hvs.very-secret")
        secret.chmod(0)
        with pytest.raises(pub.CredentialsUnavailable) as info:
            pub.read_token_file(str(secret), "Vault")
        assert "very-secret" not in str(info.value)


def test_vault_and_consul_clients_take_the_token_from_the_file_each_call(tmp_path):
    path = tmp_path / "token"
    path.write_text("from-file")
    vault = pub.VaultKV.connect("http://127.0.0.1:1", "from-env", token_file=str(path))
    consul_kv = pub.ConsulKV.connect("127.0.0.1", 1, token="from-env", token_file=str(path))
    seen = lambda client: client._do("read", "x", lambda: client._client.token)  # noqa: E731
    assert seen(vault) == "from-file" and seen(consul_kv) == "from-file"
    path.write_text("rotated")
    assert seen(vault) == "rotated" and seen(consul_kv) == "rotated"
    path.unlink()  # an optional Secret without the key: the variable's token, if any
    assert seen(vault) == "from-env" and seen(consul_kv) == "from-env"


def test_two_replicas_elect_a_leader_through_a_lease_they_alone_may_write():
    for name in ("operator.yaml", "operator-namespaced.yaml"):
        deployment = one(name, "Deployment")
        assert deployment["spec"]["replicas"] == 2
        assert "--leader-elect" in _container(name)["args"]
        env = {e["name"]: e for e in _container(name)["env"]}
        assert env["PGOP_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
        role = one(name, "Role")
        assert role["metadata"]["namespace"] == deployment["metadata"]["namespace"]
        assert grants(role["rules"]) == {("coordination.k8s.io", "leases", v) for v in ("create", "get", "update")}
        assert all(r.get("resourceNames") == ["pgop-operator"] for r in role["rules"] if "create" not in r["verbs"])
        binding = one(name, "RoleBinding")
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
