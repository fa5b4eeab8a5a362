"""The API client of the operator: one pooled connection for every thread that may call at once."""
from kubernetes import client

from pgop import operator
from pgop.runtime import kube


def test_every_handler_thread_keeps_its_connection(monkeypatch):
    # No cluster needed: the client is configured from a default configuration, as in a pod.
    monkeypatch.setattr(kube.config, "load_incluster_config", lambda: None)
    default = client.Configuration()
    default.host = "https://127.0.0.1:6443"
    monkeypatch.setattr(client.Configuration, "_default", default)
    api = kube.Kube().api
    assert api.configuration.connection_pool_maxsize == kube.CONNECTION_POOL_SIZE
    # more than the handler threads: the ones beyond the pool threw a TLS connection away per call
    assert kube.CONNECTION_POOL_SIZE > operator.HANDLER_THREADS
    assert api.rest_client.pool_manager.connection_pool_kw["maxsize"] == kube.CONNECTION_POOL_SIZE
