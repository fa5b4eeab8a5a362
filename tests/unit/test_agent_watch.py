"""The agent reacts to a change of its PgInstance at once: each store's watch wakes the loop on a
new generation (a spec change), never on the status patches the agent writes itself; a watch that
fails retries with a bounded backoff while the loop polls."""
from __future__ import annotations

import json
import threading
import time

from pgop.agent import kube
from pgop.agent.loop import Agent
from pgop.agent.settings import AgentSettings
from tests.unit.test_agent_parts import POD_ENV


def collect(store, name: str):
    woken: list[float] = []
    stopping = threading.Event()
    thread = threading.Thread(target=store.watch, args=(name, lambda: woken.append(time.monotonic()), stopping),
                              daemon=True)
    thread.start()
    return woken, stopping, thread


def wait_until(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def test_memory_store_wakes_on_a_spec_change_not_on_a_status_patch():
    store = kube.MemoryInstanceStore()
    store.put("orders-0", {"cluster": "orders", "role": "primary"})
    woken, stopping, thread = collect(store, "orders-0")
    assert wait_until(lambda: store.watchers.get("orders-0"))
    store.patch_status("orders-0", {"ready": True})
    store.update_spec("orders-0", role="primary")  # no change: no new generation
    store.put("orders-1", {"cluster": "orders", "role": "replica"})  # another instance
    assert woken == []
    store.update_spec("orders-0", role="replica")
    assert len(woken) == 1
    stopping.set()
    thread.join(2)
    assert not thread.is_alive() and store.watchers["orders-0"] == []


def test_file_store_wakes_on_a_new_generation(tmp_path):
    store = kube.FileInstanceStore(str(tmp_path))
    path = tmp_path / "orders-0.json"
    body = {"metadata": {"name": "orders-0", "generation": 1}, "spec": {"role": "primary"}, "status": {}}
    path.write_text(json.dumps(body))
    woken, stopping, thread = collect(store, "orders-0")
    time.sleep(0.2)
    store.patch_status("orders-0", {"ready": True})
    time.sleep(0.2)
    assert woken == []
    body = json.loads(path.read_text())
    body["metadata"]["generation"] = 2
    body["spec"]["role"] = "replica"
    changed = time.monotonic()
    path.write_text(json.dumps(body))
    assert wait_until(lambda: woken)
    assert woken[0] - changed < 0.5
    stopping.set()
    thread.join(2)


class FakeWatch:
    """kubernetes.watch.Watch, playing scripted connections: a list of events, or an exception."""
    script: list = []
    calls: list = []

    def stream(self, func, *args, **kwargs):
        FakeWatch.calls.append(kwargs)
        step = FakeWatch.script.pop(0) if FakeWatch.script else []
        if isinstance(step, Exception):
            raise step
        yield from step
        if not FakeWatch.script:
            FakeWatch.done.set()
            time.sleep(0.05)

    def stop(self):
        pass


def event(kind: str, generation: int, version: str) -> dict:
    return {"type": kind, "object": {"metadata": {"name": "orders-0", "generation": generation,
                                                  "resourceVersion": version}}}


def test_kube_store_watch_filters_by_name_wakes_on_generation_and_reconnects(monkeypatch):
    from kubernetes import client, watch
    monkeypatch.setattr(watch, "Watch", FakeWatch)
    monkeypatch.setattr(kube, "WATCH_BACKOFF", (0.01, 0.04))
    FakeWatch.calls = []
    FakeWatch.done = threading.Event()
    FakeWatch.script = [
        [event("ADDED", 1, "10"), event("MODIFIED", 1, "11"), event("MODIFIED", 2, "12")],  # 11: a status patch
        ConnectionError("apiserver gone"),
        ConnectionError("apiserver gone"),
        [event("ADDED", 2, "20"), {"type": "ERROR", "object": {"code": 410}}],
        [event("ADDED", 3, "30"), event("DELETED", 3, "31")],
    ]
    store = kube.KubeInstanceStore("shop", configuration=client.Configuration())
    woken, stopping, thread = collect(store, "orders-0")
    assert FakeWatch.done.wait(5)
    stopping.set()
    thread.join(2)
    assert len(woken) == 4  # generation 1, 2, 3, and the deletion; not the status patch, not 2 again
    assert all(c["field_selector"] == "metadata.name=orders-0" for c in FakeWatch.calls)
    assert FakeWatch.calls[1]["resource_version"] == "12"  # goes on from where it was
    assert "resource_version" not in FakeWatch.calls[2]  # after a failure: a fresh start
    assert "resource_version" not in FakeWatch.calls[4]  # after 410 Gone


def test_the_loop_turns_at_once_when_its_pginstance_changes():
    settings = AgentSettings.from_env({**POD_ENV, "PGOP_HEARTBEAT_INTERVAL": "30"})
    store = kube.MemoryInstanceStore()
    store.put("orders-1", {"cluster": "orders", "role": "replica"})
    agent = Agent(settings, store)
    turns: list[float] = []
    agent.turn = lambda: turns.append(time.monotonic()) or False  # type: ignore[method-assign]
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: turns and store.watchers.get("orders-1"))
        changed = time.monotonic()
        store.update_spec("orders-1", primary="")
        assert wait_until(lambda: len(turns) == 2, 2.0)
        assert turns[1] - changed < 0.1  # not the 30 s interval
    finally:
        agent.stop()
        thread.join(5)
    assert not thread.is_alive()


def member(name: str, generation: int, version: str, cluster: str = "orders") -> dict:
    return {"metadata": {"name": name, "generation": generation, "resourceVersion": version},
            "spec": {"cluster": cluster, "role": "replica"}, "status": {"phase": "Running"}}


def test_kube_store_with_a_cluster_answers_reads_from_its_watch_while_it_is_heard(monkeypatch):
    """One list, then a watch from its resourceVersion: GETs and LISTs of the cluster's PgInstances
    are answered from what it delivered (no request per turn), until it is silent for
    CACHE_FRESH_FOR seconds or fails; then every read goes to the API server again."""
    from kubernetes import client, watch
    monkeypatch.setattr(watch, "Watch", FakeWatch)
    monkeypatch.setattr(kube, "WATCH_BACKOFF", (5.0, 5.0))  # no second connection during the test
    FakeWatch.calls = []
    FakeWatch.done = threading.Event()
    FakeWatch.script = [[{"type": "MODIFIED", "object": member("orders-1", 2, "41")},
                         {"type": "ADDED", "object": member("orders-2", 1, "42")},
                         {"type": "DELETED", "object": member("orders-0", 1, "43")}]]
    store = kube.KubeInstanceStore("shop", configuration=client.Configuration())
    requests: list[str] = []

    def list_objects(*args, **kwargs):
        requests.append(f"list {kwargs.get('label_selector')}")
        return {"metadata": {"resourceVersion": "40"},
                "items": [member("orders-0", 1, "38"), member("orders-1", 1, "39")]}
    monkeypatch.setattr(store.api, "list_namespaced_custom_object", list_objects)
    monkeypatch.setattr(store.api, "get_namespaced_custom_object",
                        lambda *a, **k: requests.append("get") or member("orders-1", 2, "41"))
    woken: list[float] = []
    stopping = threading.Event()
    thread = threading.Thread(target=store.watch, args=("orders-1", lambda: woken.append(1), stopping, "orders"),
                              daemon=True)
    thread.start()
    try:
        assert FakeWatch.done.wait(5)
        assert FakeWatch.calls[0]["label_selector"] == "pgop.io/cluster=orders"
        assert FakeWatch.calls[0]["resource_version"] == "40"  # from the list
        assert len(woken) == 2  # the list (generation 1), then generation 2
        before = list(requests)
        assert store.get_instance("orders-1")["metadata"]["generation"] == 2
        assert sorted(i["metadata"]["name"] for i in store.list_instances("orders")) == ["orders-1", "orders-2"]
        assert requests == before  # both answered from the watch
        store.heard_at -= kube.CACHE_FRESH_FOR + 1  # silent too long
        store.get_instance("orders-1")
        assert requests == [*before, "get"]
    finally:
        stopping.set()
        thread.join(2)


def test_a_cached_read_does_not_count_as_an_answer_of_the_api_server():
    """Isolation: a primary whose API server stopped answering stops after isolationTimeout. A read
    from the watch's cache moves api_ok_at only to when the watch last delivered, never to now."""
    settings = AgentSettings.from_env(POD_ENV)
    store = kube.MemoryInstanceStore()
    store.put(settings.instance, {"cluster": settings.cluster, "role": "primary"})
    agent = Agent(settings, store)
    heard = time.monotonic() - 8
    store.contact_at = heard  # type: ignore[attr-defined]  # as the Kube store's watch cache says
    agent.api_ok_at = heard - 20
    agent.read_spec()
    assert agent.api_ok_at == heard
