"""The operator's instance pass against the real kube-apiserver (`make up`), with kopf's own index
structures fed a stale view, as kopf's watch handed it under load (issue 15: heartbeats ~90 s
behind): a live instance is never written Unavailable nor its pod relabelled `pending`
from that view; an instance whose agent is really silent is; a settled instance's pass sends no
request at all."""
from __future__ import annotations

import copy
import logging
import threading
from datetime import UTC, datetime, timedelta

import kopf
import pytest
from kopf._core.engines.indexing import OperatorIndexer

from pgop.cluster import handlers, indexes, observe
from pgop.kernel.meta import LABEL_ROLE
from pgop.kernel.model import Cluster, Instance
from pgop.runtime import apply
from pgop.runtime.kube import Kube
from pgop.specs.instance import build_instance
from pgop.specs.pods import build_postgres_pod
from pgop.specs.pvc import build_pvc, mark_initialized_patch
from pgop.specs.rbac import build_service_account

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

log = logging.getLogger("test")


class CountingKube(Kube):
    """The real client, counting the requests it sends."""

    def __init__(self, api):
        super().__init__(api)
        self.requests: list[tuple[str, str]] = []

    def _call(self, method, path, *args, **kwargs):
        self.requests.append((method, path))
        return super()._call(method, path, *args, **kwargs)


@pytest.fixture
def kube(local_env, kubectl, monkeypatch):
    from kubernetes import client, config
    if kubectl("get", "crd", "pginstances.pgop.io", check=False).returncode != 0:
        kubectl("apply", "--server-side", "-f", "crds/pginstances.yaml")
    configuration = client.Configuration()
    config.load_kube_config(config_file=local_env["KUBECONFIG"], client_configuration=configuration)
    k = CountingKube(client.ApiClient(configuration))
    monkeypatch.setattr(handlers, "kube", lambda: k)  # the handlers' client is this one
    monkeypatch.setattr(apply, "kube", lambda: k)
    monkeypatch.setattr(indexes, "_live", {})
    # kopf posts Events through its own running operator's queue; there is none in a test
    for name in ("info", "warn"):
        monkeypatch.setattr(kopf, name, lambda *args, **kwargs: None)
    return k


def stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def new_replica(kube: Kube, namespace: str) -> None:
    """A replica PgInstance whose pods no node accepts (spec.affinity.nodeSelector): nothing runs.
    (Only the operator may make a primary: an admission policy.)"""
    cluster = Cluster.from_object({"apiVersion": "pgop.io/v1", "kind": "PgCluster",
                                   "metadata": {"name": "orders", "namespace": namespace, "uid": "u-orders"},
                                   "spec": {"instances": 1, "storage": {"size": "1Gi"},
                                            "bootstrap": {"initdb": {"database": "app", "owner": "app"}},
                                            "affinity": {"nodeSelector": {"pgop.io/test": "nowhere"}}}})
    account = build_service_account(cluster)  # the pods' identity must exist
    account["metadata"].pop("ownerReferences", None)
    kube.create(account)
    body = build_instance(cluster, 0, "replica", "initdb")
    body["metadata"]["namespace"] = namespace
    body["metadata"].pop("ownerReferences", None)
    kube.create(body)


def running_replica(kube: Kube, namespace: str) -> dict:
    """A replica PgInstance whose agent reports now, its initialised volume and its pod (Pending)."""
    new_replica(kube, namespace)
    kube.merge_patch("PgInstance", namespace, "orders-0",
                     {"status": {"phase": "Running", "ready": True, "role": "replica",
                                 "lastHeartbeat": stamp(datetime.now(UTC)), "message": ""}}, "status")
    stored = kube.get("PgInstance", namespace, "orders-0")
    instance = Instance.from_object(stored)
    pvc = build_pvc(instance)
    pvc["metadata"]["annotations"] = {**(pvc["metadata"].get("annotations") or {}),
                                      **mark_initialized_patch(instance, "initdb")["metadata"]["annotations"]}
    kube.create(pvc)
    pod = build_postgres_pod(instance)
    assert pod["spec"]["nodeSelector"] == {"pgop.io/test": "nowhere"}
    kube.create(pod)
    assert pod["metadata"]["labels"][LABEL_ROLE] == "replica"
    return stored


def index(kube: Kube, namespace: str, instance_body: dict) -> None:
    """kopf's indexers, holding `instance_body` and the instance's PVC and pod as they are."""
    indexers = {name: OperatorIndexer() for name in (*indexes.NAMES,)}

    def feed(name, body):
        meta = body["metadata"]
        indexers[name].replace((meta.get("namespace"), meta["name"], meta.get("uid")),
                               getattr(indexes, name)(body=body))
    feed("pgop_instances", instance_body)
    for pvc in kube.list("PersistentVolumeClaim", namespace, {"pgop.io/cluster": "orders"}):
        feed("pgop_volumes", pvc)
    for pod in kube.list("Pod", namespace, {"pgop.io/cluster": "orders"}):
        feed("pgop_pods", pod)
    indexes._live.clear()  # the operator's indexes are the same objects for its life; a test's are new
    indexes.capture({name: i.index for name, i in indexers.items()})


def test_a_stale_view_never_writes_a_live_instance_unavailable_nor_relabels_its_pod(kube, namespace):
    stored = running_replica(kube, namespace)
    stale = copy.deepcopy(stored)
    # as kopf's watch lagged: the heartbeat of 90 s ago, the role it reported before (which
    # would label its pod `pending`: out of -ro)
    stale["status"].update({"lastHeartbeat": stamp(datetime.now(UTC) - timedelta(seconds=90)), "role": "primary"})
    index(kube, namespace, stale)
    kube.requests.clear()

    handlers.reconcile_instance(stale, log)

    now = kube.get("PgInstance", namespace, "orders-0")["status"]
    assert (now["phase"], now["ready"]) == ("Running", True)
    assert kube.get("Pod", namespace, "orders-0")["metadata"]["labels"][LABEL_ROLE] == "replica"
    # it looked again before writing (the stale view asked for a report and a relabel)
    assert ("GET", f"/apis/pgop.io/v1/namespaces/{namespace}/pginstances/orders-0") in kube.requests
    assert not [r for r in kube.requests if r[0] == "PATCH"]


def test_a_really_silent_agent_is_reported_and_a_settled_instance_costs_no_request(kube, namespace):
    stored = running_replica(kube, namespace)
    index(kube, namespace, stored)
    kube.requests.clear()
    handlers.reconcile_instance(stored, log)
    assert kube.requests == []  # the indexes say all is well: nothing read, nothing written

    silent = stamp(datetime.now(UTC) - timedelta(seconds=90))
    kube.merge_patch("PgInstance", namespace, "orders-0", {"status": {"lastHeartbeat": silent}}, "status")
    stored = kube.get("PgInstance", namespace, "orders-0")
    index(kube, namespace, stored)
    handlers.reconcile_instance(stored, log)
    now = kube.get("PgInstance", namespace, "orders-0")["status"]
    assert now["phase"] == "Unavailable" and now["ready"] is False
    assert now["message"].startswith("no heartbeat for 9")


def test_passes_of_one_instance_at_once_create_its_volume_and_pod_once(kube, namespace):
    new_replica(kube, namespace)
    stored = kube.get("PgInstance", namespace, "orders-0")
    index(kube, namespace, stored)  # the indexes never see what the passes create: the worst lag
    kube.requests.clear()
    start = threading.Barrier(3)

    def one_pass():
        start.wait()
        handlers.reconcile_instance(stored, log)
    passes = [threading.Thread(target=one_pass) for _ in range(3)]
    for t in passes:
        t.start()
    for t in passes:
        t.join(60)

    creates = [path for method, path in kube.requests if method == "POST"]
    assert sorted(creates) == [f"/api/v1/namespaces/{namespace}/persistentvolumeclaims",
                               f"/api/v1/namespaces/{namespace}/pods"]
    assert [p["metadata"]["name"] for p in kube.list("Pod", namespace, {"pgop.io/instance": "orders-0"})] \
        == ["orders-0"]


def test_a_status_refresh_is_written_only_over_the_status_it_was_planned_from(kube, namespace):
    """A status planned from the indexes (pgop.cluster.controller.status_refresh: the periodic
    refresh of status.instances' LSNs and heartbeats, a new readiness or phase) is one status PATCH
    with the resourceVersion kopf's watch saw: over a newer status (another pass's decision) it is
    not written."""
    spec = {"instances": 1, "storage": {"size": "1Gi"}, "bootstrap": {"initdb": {"database": "app", "owner": "app"}}}
    kube.create({"apiVersion": "pgop.io/v1", "kind": "PgCluster", "metadata": {"name": "orders", "namespace": namespace},
                 "spec": spec})
    entry = {"name": "orders-0", "role": "primary", "timeline": 1, "lsn": "0/3000060",
             "lastHeartbeat": stamp(datetime.now(UTC) - timedelta(seconds=40))}
    seen = kube.merge_patch("PgCluster", namespace, "orders", {"status": {"phase": "Ready", "instances": [entry]}},
                            "status")
    moved = dict(entry, lsn="0/4000000", lastHeartbeat=stamp(datetime.now(UTC)))
    assert handlers._refresh_status(seen, {"instances": [moved]})
    stored = kube.get("PgCluster", namespace, "orders")
    assert stored["status"]["instances"] == [moved] and stored["status"]["phase"] == "Ready"
    # another pass wrote meanwhile: the refresh planned from the older view leaves its status alone
    kube.merge_patch("PgCluster", namespace, "orders", {"status": {"phase": "Degraded"}}, "status")
    # (and says so, so that its pass comes again soon with the status that won)
    assert not handlers._refresh_status(seen, {"instances": [entry], "phase": "Ready"})
    stored = kube.get("PgCluster", namespace, "orders")
    assert stored["status"]["instances"] == [moved] and stored["status"]["phase"] == "Degraded"


def test_an_acting_pass_on_lagging_indexes_creates_nothing_twice_and_tells_only_what_it_did(
        kube, kubectl, namespace, monkeypatch):
    """A cluster pass that acts reads the Services, PDBs and the agents' RBAC objects from the
    indexes (observe.ActingReader). Indexes that never saw what the first pass created (the worst
    lag): the second pass's creates find them there (409), change nothing, and post no Event."""
    if kubectl("get", "crd", "pgclusters.pgop.io", check=False).returncode != 0:
        kubectl("apply", "--server-side", "-f", "crds/pgclusters.yaml")
    told: list[tuple[str, str]] = []
    monkeypatch.setattr(kopf, "info", lambda body, reason, message: told.append((reason, message)))
    kube.create({"apiVersion": "pgop.io/v1", "kind": "PgCluster", "metadata": {"name": "orders", "namespace": namespace},
                 "spec": {"instances": 1, "storage": {"size": "1Gi"},
                          "bootstrap": {"initdb": {"database": "app", "owner": "app"}},
                          "affinity": {"nodeSelector": {"pgop.io/test": "nowhere"}}}})
    new_replica(kube, namespace)  # and its ServiceAccount (only the operator may make a primary)
    indexes._live.clear()
    indexes.capture({name: OperatorIndexer().index for name in indexes.NAMES})  # they see nothing
    assert isinstance(indexes.acting_reader(kube), observe.ActingReader)

    handlers._reconcile_cluster(kube.get("PgCluster", namespace, "orders"), log)
    first = {reason for reason, _ in told}
    assert {"CreatedService", "CreatedPodDisruptionBudget", "CreatedRole", "CreatedRoleBinding"} <= first
    assert "CreatedServiceAccount" not in first  # it was there: a create that found it says nothing
    services = {s["metadata"]["name"]: s["metadata"]["uid"] for s in kube.list("Service", namespace)}
    assert len(services) == 3
    told.clear()
    kube.requests.clear()

    handlers._reconcile_cluster(kube.get("PgCluster", namespace, "orders"), log)
    posts = [path for method, path in kube.requests if method == "POST"]
    assert len(posts) == 3 + 5  # the Services, the 2 PDBs, ServiceAccount, Role, RoleBinding: each 409
    assert {s["metadata"]["name"]: s["metadata"]["uid"] for s in kube.list("Service", namespace)} == services
    assert len(kube.list("PgInstance", namespace)) == 1
    assert told == []
