"""The operator's RBAC from deploy/ on the real kube-apiserver: what it may do and, above all, what
it may not, asked the way `kubectl auth can-i --as=system:serviceaccount:...` asks (a
SubjectAccessReview), and tried for real by impersonating its ServiceAccount.

The ClusterRoles are created from the manifests' rules under names of this test only, bound to
ServiceAccounts of this test only, so the test neither needs nor disturbs an installed operator.
"""
from __future__ import annotations

import copy
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from pgop.kernel.model import Cluster
from pgop.specs.rbac import build_role

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RBAC = "rbac.authorization.k8s.io"


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def _role(name: str, role: str) -> dict:
    return next(d for d in _docs(name) if d["kind"] == "ClusterRole" and d["metadata"]["name"] == role)


class Identity:
    def __init__(self, namespace: str, account: str):
        self.namespace, self.account = namespace, account
        self.user = f"system:serviceaccount:{namespace}:{account}"
        self.groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]


def can(kube_api, who: Identity, verb: str, resource: str, namespace: str = "", group: str = "",
        subresource: str = "") -> bool:
    resource, _, sub = resource.partition("/")  # "pods/exec": resource pods, subresource exec
    subresource = subresource or sub
    attributes = {"verb": verb, "resource": resource, "group": group}
    if namespace:
        attributes["namespace"] = namespace
    if subresource:
        attributes["subresource"] = subresource
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": who.user, "groups": who.groups, "resourceAttributes": attributes}}
    answer = client.AuthorizationV1Api(kube_api).create_subject_access_review(review)
    return bool(answer.status.allowed)


@pytest.fixture(scope="module")
def setup(kube_api):
    """Namespaces: the operator's, one it watches, one it does not. Two operators' identities: the
    namespaced one (deploy/operator-namespaced.yaml + a RoleBinding in the watched namespace) and the
    cluster-wide one (deploy/operator.yaml)."""
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    suffix = uuid.uuid4().hex[:6]
    home, watched, other = f"rbac-op-{suffix}", f"rbac-watched-{suffix}", f"rbac-other-{suffix}"
    for ns in (home, watched, other):
        core.create_namespace({"metadata": {"name": ns, "labels": {"app.kubernetes.io/part-of": "pgop-tests"}}})
    narrow, wide = Identity(home, "pgop-operator"), Identity(home, "pgop-wide")
    for who in (narrow, wide):
        core.create_namespaced_service_account(home, {"metadata": {"name": who.account}})
    made = []

    def cluster_role(source: str, role: str) -> str:
        body = copy.deepcopy(_role(source, role))
        body["metadata"] = {"name": f"{role}-{suffix}", "labels": {"app.kubernetes.io/part-of": "pgop-tests"}}
        rbac.create_cluster_role(body)
        made.append(body["metadata"]["name"])
        return body["metadata"]["name"]

    def subject(who: Identity) -> list[dict]:
        return [{"kind": "ServiceAccount", "name": who.account, "namespace": who.namespace}]

    for role, who in ((cluster_role("operator-namespaced.yaml", "pgop-operator-cluster"), narrow),
                      (cluster_role("operator.yaml", "pgop-operator"), wide)):
        rbac.create_cluster_role_binding({"metadata": {"name": role},
                                          "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
                                          "subjects": subject(who)})
    in_namespace = cluster_role("operator-namespaced.yaml", "pgop-operator-namespaced")
    binding = yaml.safe_load((DEPLOY / "operator-watch-namespace.yaml").read_text().replace("NAMESPACE", watched))
    binding["roleRef"]["name"] = in_namespace
    binding["subjects"] = subject(narrow)
    rbac.create_namespaced_role_binding(watched, binding)
    yield {"narrow": narrow, "wide": wide, "watched": watched, "other": other, "home": home}
    for name in made:
        for delete in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
            try:
                delete(name)
            except ApiException:
                pass
    for ns in (home, watched, other):
        try:
            core.delete_namespace(ns)
        except ApiException:
            pass


def test_the_namespaced_operator_may_do_its_work_in_a_watched_namespace(kube_api, setup):
    who, ns = setup["narrow"], setup["watched"]
    allowed = [
        ("watch", "pgclusters", "pgop.io", ""), ("patch", "pgclusters", "pgop.io", "status"),
        ("create", "pginstances", "pgop.io", ""), ("delete", "pgbackups", "pgop.io", ""),
        ("patch", "mysqldbs", "pgop.io", "status"),
        ("get", "secrets", "", ""), ("list", "secrets", "", ""), ("create", "secrets", "", ""),
        ("create", "pods", "", ""), ("delete", "pods", "", ""), ("watch", "pods", "", ""),
        ("patch", "services", "", ""), ("create", "persistentvolumeclaims", "", ""),
        ("create", "roles", RBAC, ""), ("create", "rolebindings", RBAC, ""),
        ("create", "poddisruptionbudgets", "policy", ""), ("create", "events", "", ""),
        # the operator's indexes (pgop/cluster/indexes.py) are fed by watches of these
        ("watch", "secrets", "", ""), ("watch", "services", "", ""), ("watch", "persistentvolumeclaims", "", ""),
        ("watch", "serviceaccounts", "", ""), ("watch", "poddisruptionbudgets", "policy", ""),
        ("watch", "roles", RBAC, ""), ("watch", "rolebindings", RBAC, ""),
    ]
    refused = [(verb, resource, group, sub) for verb, resource, group, sub in allowed
               if not can(kube_api, who, verb, resource, ns, group, sub)]
    assert refused == []
    # the two cluster-scoped reads
    assert can(kube_api, who, "list", "nodes") and can(kube_api, who, "watch", "nodes")
    assert can(kube_api, who, "get", "storageclasses", group="storage.k8s.io")


def test_the_namespaced_operator_may_not_reach_outside_its_namespaces(kube_api, setup):
    who, ns, other = setup["narrow"], setup["watched"], setup["other"]
    for namespace in (other, setup["home"]):  # another tenant's, and even its own
        for verb, resource, group in (("get", "secrets", ""), ("list", "secrets", ""), ("create", "pods", ""),
                                      ("list", "pgclusters", "pgop.io"), ("create", "roles", RBAC)):
            assert not can(kube_api, who, verb, resource, namespace, group), (verb, resource, namespace)
    # nothing across all namespaces, nothing cluster-wide it does not read
    for verb, resource, group in (("list", "secrets", ""), ("list", "pods", ""), ("watch", "pgclusters", "pgop.io"),
                                  ("list", "namespaces", ""), ("get", "nodes", ""), ("delete", "nodes", ""),
                                  ("patch", "nodes", ""), ("watch", "customresourcedefinitions", "apiextensions.k8s.io"),
                                  ("create", "clusterroles", RBAC), ("create", "clusterrolebindings", RBAC)):
        assert not can(kube_api, who, verb, resource, group=group), (verb, resource)
    # inside a watched namespace, only what the code uses
    for verb, resource, group in (("delete", "secrets", ""), ("update", "pgclusters", "pgop.io"),
                                  ("delete", "pgclusters", "pgop.io"), ("get", "configmaps", ""),
                                  ("delete", "persistentvolumeclaims", ""), ("create", "pods/exec", ""),
                                  ("escalate", "roles", RBAC), ("bind", "roles", RBAC), ("delete", "roles", RBAC)):
        assert not can(kube_api, who, verb, resource, ns, group), (verb, resource)


def test_the_cluster_wide_operator_has_no_more_than_its_work(kube_api, setup):
    who, ns = setup["wide"], setup["other"]
    assert can(kube_api, who, "list", "pgclusters", group="pgop.io")  # every namespace
    assert can(kube_api, who, "get", "secrets", ns)
    assert can(kube_api, who, "watch", "customresourcedefinitions", group="apiextensions.k8s.io")
    for verb, resource, group, namespace in (
            ("delete", "nodes", "", ""), ("get", "nodes", "", ""), ("list", "namespaces", "", ""),
            ("delete", "namespaces", "", ""), ("delete", "secrets", "", ns),
            ("update", "services", "", ns), ("delete", "services", "", ns), ("get", "configmaps", "", ns),
            ("create", "pods/exec", "", ns), ("create", "clusterrolebindings", RBAC, ""),
            ("escalate", "roles", RBAC, ns), ("bind", "clusterroles", RBAC, ""),
            ("create", "customresourcedefinitions", "apiextensions.k8s.io", ""),
            ("create", "pgclusters", "pgop.io", ns), ("delete", "mysqldbs", "pgop.io", ns)):
        assert not can(kube_api, who, verb, resource, namespace, group), (verb, resource, namespace)


def test_impersonated_the_namespaced_operator_grants_the_agents_role_only_where_it_works(kube_api, setup):
    """Creating the agents' Role is the escalation check for real: Kubernetes lets the operator grant
    only what it holds itself in that namespace."""
    who = setup["narrow"]
    api = client.ApiClient(configuration=kube_api.configuration)
    api.set_default_header("Impersonate-User", who.user)
    rbac, core = client.RbacAuthorizationV1Api(api), client.CoreV1Api(api)
    for ns in (setup["watched"], setup["other"]):
        cluster = Cluster.from_object({
            "apiVersion": "pgop.io/v1", "kind": "PgCluster",
            "metadata": {"name": "orders", "namespace": ns, "uid": str(uuid.uuid4())},
            "spec": {"instances": 1, "postgresVersion": 15, "storage": {"size": "1Gi"},
                     "backup": {"s3": {"bucket": "b", "credentialsSecret": "s3-creds"}},
                     "bootstrap": {"initdb": {"database": "app", "owner": "app"}}}})
        role = build_role(cluster)
        role["metadata"].pop("ownerReferences")  # no such PgCluster: the garbage collector would remove it
        if ns == setup["watched"]:
            rbac.create_namespaced_role(ns, role)
            assert core.list_namespaced_secret(ns).items == []
        else:
            for call in (lambda n=ns, r=role: rbac.create_namespaced_role(n, r),
                         lambda n=ns: core.list_namespaced_secret(n),
                         lambda: core.list_secret_for_all_namespaces()):
                with pytest.raises(ApiException) as info:
                    call()
                assert info.value.status == 403
