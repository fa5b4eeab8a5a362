"""The agent's Kubernetes side against the real kube-apiserver of the local environment
(`make up`): read its PgInstance, list its cluster's, merge-patch the status subresource; then one
agent over a real postgres writing its heartbeat there."""
from __future__ import annotations

import os
import threading
import time

import pytest

from e2e.harness.cluster import OPERATOR_KUBECONFIG
from e2e.harness.pg import AgentHost
from pgop.agent import bootstrap, kube, loop
from pgop.kernel.model import Cluster, Instance
from pgop.specs.instance import build_instance

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


@pytest.fixture
def store(local_env, namespace, kubectl):
    from kubernetes import client, config
    if kubectl("get", "crd", "pginstances.pgop.io", check=False).returncode != 0:
        kubectl("apply", "--server-side", "-f", "crds/pginstances.yaml")
    configuration = client.Configuration()
    config.load_kube_config(config_file=local_env["KUBECONFIG"], client_configuration=configuration)
    return kube.KubeInstanceStore(namespace, configuration=configuration)


def create(store: kube.KubeInstanceStore, cluster: Cluster, ordinal: int, role: str, mode: str) -> dict:
    body = build_instance(cluster, ordinal, role, mode, primary=f"{cluster.name}-0")
    body["metadata"]["namespace"] = store.namespace
    body["metadata"].pop("ownerReferences", None)  # no PgCluster here: nothing else acts on it
    # Not through store.api: its client sends every body as a merge patch, which a create is not.
    # As the operator (group pgop:operators): the admission policy lets only it make a PgInstance
    # that names a primary (deploy/admission.yaml).
    from kubernetes import client, config
    configuration = client.Configuration()
    config.load_kube_config(config_file=os.environ.get("PGOP_OPERATOR_KUBECONFIG") or str(OPERATOR_KUBECONFIG),
                            client_configuration=configuration)
    api = client.CustomObjectsApi(client.ApiClient(configuration))
    return api.create_namespaced_custom_object("pgop.io", "v1", store.namespace, "pginstances", body)


def cluster_named(name: str, namespace: str) -> Cluster:
    return Cluster.from_object({"metadata": {"name": name, "namespace": namespace, "uid": "u"},
                                "spec": {"instances": 2, "storage": {"size": "1Gi"}}})


def test_store_reads_lists_and_merge_patches_status(store):
    cluster = cluster_named("kstore", store.namespace)
    create(store, cluster, 0, "primary", "initdb")
    create(store, cluster, 1, "replica", "basebackup")
    create(store, cluster_named("other", store.namespace), 0, "primary", "initdb")

    body = store.get_instance("kstore-0")
    assert body["spec"]["role"] == "primary"
    assert store.get_instance("nothing-here") is None
    assert sorted(b["metadata"]["name"] for b in store.list_instances("kstore")) == ["kstore-0", "kstore-1"]

    store.patch_status("kstore-0", {"ready": True, "message": "hello", "lsn": "0/3000060",
                                    "conditions": [{"type": "Ready", "status": "True"}]})
    store.patch_status("kstore-0", {"message": None, "timeline": 1})
    after = store.get_instance("kstore-0")
    assert after["status"]["ready"] is True and after["status"]["timeline"] == 1
    assert "message" not in after["status"]  # None removed it: a merge patch, not a JSON patch
    assert after["metadata"]["generation"] == body["metadata"]["generation"]  # status never bumps it
    with pytest.raises(LookupError):
        store.patch_status("nothing-here", {"ready": True})


@pytest.mark.skipif(not os.path.exists("/usr/lib/postgresql/15/bin/postgres"), reason="needs postgresql-15")
def test_agent_heartbeat_on_the_api_server(store):
    created = create(store, cluster_named("kbeat", store.namespace), 0, "primary", "initdb")
    host = AgentHost(cluster="kbeat", namespace=store.namespace)
    settings = host.settings("kbeat-0", interval=0.5)
    agent = loop.Agent(settings, store)
    thread = threading.Thread(target=agent.run, daemon=True)
    try:
        bootstrap.bootstrap(settings, "initdb", Instance.from_object(created).spec)
        thread.start()
        deadline = time.monotonic() + 60
        status = {}
        while time.monotonic() < deadline:
            status = (store.get_instance("kbeat-0") or {}).get("status") or {}
            if status.get("ready") and status.get("observedGeneration") == created["metadata"]["generation"]:
                break
            time.sleep(0.3)
        assert status.get("ready") is True, status
        assert status["role"] == "primary" and status["timeline"] == 1 and status["lsn"]
        assert status["lastHeartbeat"].endswith("Z") and status["systemIdentifier"]
        assert {c["type"] for c in status["conditions"]} >= {"Ready", "ConfigurationApplied"}
    finally:
        agent.stop()
        if thread.is_alive():
            thread.join(60)
        host.cleanup()
