"""The Kubernetes side of the agent: read my PgInstance, list my cluster's, patch a status.

An interface, so the agent runs against the API server in a pod and against an in-memory fake
in the integration tests (real Postgres, no Kubernetes).
"""
from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from pgop.kernel import liveness
from pgop.kernel.meta import LABEL_CLUSTER
from pgop.kernel.model import API_GROUP

PLURAL = "pginstances"
VERSION = "v1"
REQUEST_TIMEOUT = 3.0  # seconds: a hung API server must not hold the loop (and isolation) up long
# One watch request; then a new one from the last resourceVersion. The server ends each after
# this long, and that end is what says the stream still works when nothing changes (the agents
# renew Leases, pgop.kernel.liveness: a steady cluster's PgInstances may not change for a minute).
WATCH_SECONDS = 15
WATCH_BACKOFF = (0.5, 10.0)  # first and longest wait before the watch connects again
# The cluster's PgInstances as the watch last delivered them are used instead of a GET and a LIST
# per turn while the watch was heard from (an event, or the server ending a watch request) this
# recently; after that (a stalled stream) every read goes to the API server again.
CACHE_FRESH_FOR = WATCH_SECONDS + 5.0

log = logging.getLogger(__name__)

Wake = Callable[[], None]


class InstanceStore(Protocol):
    def get_instance(self, name: str) -> dict[str, Any] | None:
        """The PgInstance object, or None when it does not exist."""

    def list_instances(self, cluster: str) -> list[dict[str, Any]]:
        """Every PgInstance of the cluster."""

    def patch_status(self, name: str, status: dict[str, Any]) -> None:
        """JSON merge patch of the status subresource (None values remove fields)."""


class LeaseRenewing(Protocol):
    def renew_lease(self, instance: dict[str, Any], holder: str, now: datetime) -> None:
        """Renew the liveness Lease of PgInstance `instance` (its body) as `holder`, making it on
        first use (pgop.kernel.liveness). Raises when it cannot: the caller writes its heartbeat
        into the status instead. Never renews a Lease of that name it did not make."""


class Watchable(Protocol):
    def watch(self, name: str, wake: Wake, stopping: threading.Event, cluster: str | None = None) -> None:
        """Call `wake` soon after the spec of PgInstance `name` changes (its generation moves) or
        it is deleted, until `stopping` is set. Blocks: the agent runs it in a thread. Never
        raises: a failing watch retries with a bounded backoff (the loop polls meanwhile). With
        `cluster`, a store may watch the whole cluster and answer reads from what it saw."""


def generation_of(body: dict[str, Any] | None) -> int | None:
    if not body:
        return None
    return int((body.get("metadata") or {}).get("generation") or 0)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


class MemoryInstanceStore:
    """PgInstances held in memory, with the API server's merge-patch and generation semantics."""

    def __init__(self, namespace: str = "default"):
        self.namespace = namespace
        self.objects: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.fail = False  # simulate an unreachable API server
        self.hang = 0.0  # ... whose requests time out after this many seconds
        self.watchers: dict[str, list[Wake]] = {}
        self.leases: dict[str, dict[str, Any]] = {}  # by Lease name
        self.renewals: list[tuple[str, str]] = []  # (instance, holder) of each renewal

    def renew_lease(self, instance: dict[str, Any], holder: str, now: datetime) -> None:
        self._check()
        meta = instance.get("metadata") or {}
        me, cluster = meta.get("name", ""), (instance.get("spec") or {}).get("cluster", "")
        name = liveness.lease_name(me)
        with self.lock:
            lease = self.leases.get(name)
            if lease is None:
                self.leases[name] = liveness.lease_body(self.namespace, me, cluster, meta.get("uid", ""), holder, now)
            elif not liveness.is_own(lease, me, cluster):
                raise PermissionError(f"Lease {name} exists and is not the liveness Lease of {me}")
            else:
                _merge(lease, liveness.renewal(holder, now))
            self.renewals.append((me, holder))

    def _changed(self, name: str) -> None:
        for wake in list(self.watchers.get(name, ())):
            wake()

    def watch(self, name: str, wake: Wake, stopping: threading.Event, cluster: str | None = None) -> None:
        with self.lock:
            self.watchers.setdefault(name, []).append(wake)
        try:
            stopping.wait()
        finally:
            with self.lock:
                self.watchers[name].remove(wake)

    def put(self, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
        """Create, or replace the spec (bumping metadata.generation as the API server does)."""
        with self.lock:
            body = self.objects.get(name)
            if body is None:
                body = {"apiVersion": f"{API_GROUP}/{VERSION}", "kind": "PgInstance",
                        "metadata": {"name": name, "namespace": self.namespace, "generation": 1,
                                     "uid": f"uid-{name}", "labels": dict(labels or {})},
                        "spec": copy.deepcopy(spec), "status": {}}
                body["metadata"]["labels"].setdefault(LABEL_CLUSTER, spec.get("cluster", ""))
                self.objects[name] = body
            elif body["spec"] != spec:
                body["spec"] = copy.deepcopy(spec)
                body["metadata"]["generation"] += 1
            else:
                return copy.deepcopy(body)
            self._changed(name)
            return copy.deepcopy(body)

    def update_spec(self, name: str, **changes: Any) -> int:
        with self.lock:
            spec = copy.deepcopy(self.objects[name]["spec"])
        spec.update(changes)
        return self.put(name, spec)["metadata"]["generation"]

    def delete(self, name: str) -> None:
        with self.lock:
            self.objects.pop(name, None)
            self._changed(name)

    def status(self, name: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.objects.get(name, {}).get("status") or {})

    def _check(self) -> None:
        if self.fail:
            if self.hang:
                import time
                time.sleep(self.hang)
            raise ConnectionError("the API server is unreachable (simulated)")

    def get_instance(self, name: str) -> dict[str, Any] | None:
        self._check()
        with self.lock:
            body = self.objects.get(name)
            return copy.deepcopy(body) if body else None

    def list_instances(self, cluster: str) -> list[dict[str, Any]]:
        self._check()
        with self.lock:
            return [copy.deepcopy(b) for b in self.objects.values() if b["spec"].get("cluster") == cluster]

    def patch_status(self, name: str, status: dict[str, Any]) -> None:
        self._check()
        with self.lock:
            body = self.objects.get(name)
            if body is None:
                raise LookupError(f"pginstances {name!r} not found")
            _merge(body.setdefault("status", {}), copy.deepcopy(status))
            self.patches.append((name, copy.deepcopy(status)))


class KubeInstanceStore:
    """The API server, through the kubernetes client (in-cluster config, or a kubeconfig)."""

    def __init__(self, namespace: str, configuration=None, request_timeout: float = REQUEST_TIMEOUT):
        from kubernetes import client, config

        if configuration is None:
            configuration = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                config.load_kube_config(client_configuration=configuration)
        # A client of its own, whose PATCH bodies are merge patches: status fields are set and
        # removed by a plain dict, never by a JSON-patch list. (Its own, so the header never leaks
        # into a client that sends other kinds of patches.)
        self.api_client = client.ApiClient(configuration)
        self.api_client.set_default_header("Content-Type", "application/merge-patch+json")
        self.lease_client = client.ApiClient(configuration)  # its requests say their own Content-Type
        self.api = client.CustomObjectsApi(self.api_client)
        self.namespace = namespace
        self.timeout = request_timeout
        # The watch's cache of the cluster's PgInstances (see CACHE_FRESH_FOR), and when the API
        # server was last heard from (monotonic): a request answered or a watch event.
        self.cache_lock = threading.Lock()
        self.cache: dict[str, dict[str, Any]] = {}
        self.cache_cluster: str | None = None
        self.heard_at = float("-inf")
        self.cache_reads = 0
        self.contact_at = float("-inf")
        self.lease_checked: str | None = None  # the Lease found to be this instance's own (or made)

    def get_instance(self, name: str) -> dict[str, Any] | None:
        cached = self._cached()
        if cached is not None:
            body = cached.get(name)
            return copy.deepcopy(body) if body else None
        from kubernetes.client.exceptions import ApiException
        try:
            body = self.api.get_namespaced_custom_object(API_GROUP, VERSION, self.namespace, PLURAL, name,
                                                         _request_timeout=self.timeout)
        except ApiException as error:
            if error.status == 404:
                self.contact_at = time.monotonic()
                return None
            raise
        self.contact_at = time.monotonic()
        return body

    def list_instances(self, cluster: str) -> list[dict[str, Any]]:
        cached = self._cached() if cluster == self.cache_cluster else None
        if cached is not None:
            items = [copy.deepcopy(b) for b in cached.values()]
        else:
            listed = self.api.list_namespaced_custom_object(API_GROUP, VERSION, self.namespace, PLURAL,
                                                            label_selector=f"{LABEL_CLUSTER}={cluster}",
                                                            _request_timeout=self.timeout)
            self.contact_at = time.monotonic()
            items = listed.get("items", [])
        # The label is the operator's; the spec field is the truth.
        return [item for item in items if (item.get("spec") or {}).get("cluster") == cluster]

    def _cached(self) -> dict[str, dict[str, Any]] | None:
        """The cluster's PgInstances as the watch delivered them, while it was heard from within
        CACHE_FRESH_FOR seconds; None: read through the API."""
        with self.cache_lock:
            if self.cache_cluster is None or time.monotonic() - self.heard_at > CACHE_FRESH_FOR:
                return None
            self.cache_reads += 1
            return dict(self.cache)

    def watch(self, name: str, wake: Wake, stopping: threading.Event, cluster: str | None = None) -> None:
        """A watch of this one PgInstance (fieldSelector metadata.name), or with `cluster` of the
        cluster's (its label; a list first, then a watch from the list's resourceVersion, the
        list's objects cached for reads), reconnecting with a bounded backoff; wakes on a new
        generation (a spec change) or a deletion of `name`, not on status patches."""
        from kubernetes import watch

        seen: int | None = None
        version: str | None = None
        backoff = WATCH_BACKOFF[0]
        selector = {"label_selector": f"{LABEL_CLUSTER}={cluster}"} if cluster \
            else {"field_selector": f"metadata.name={name}"}
        while not stopping.is_set():
            stream = watch.Watch()
            try:
                if cluster and not version:
                    listed = self.api.list_namespaced_custom_object(
                        API_GROUP, VERSION, self.namespace, PLURAL, _request_timeout=self.timeout, **selector)
                    version = (listed.get("metadata") or {}).get("resourceVersion") or None
                    items = {b["metadata"]["name"]: b for b in listed.get("items", [])}
                    self._fill(cluster, items, replace=True)
                    generation = generation_of(items.get(name))
                    if name not in items or generation != seen:
                        seen = generation
                        wake()
                kwargs: dict[str, Any] = {**selector, "timeout_seconds": WATCH_SECONDS,
                                          "_request_timeout": (self.timeout, WATCH_SECONDS + 10)}
                if version:
                    kwargs["resource_version"] = version
                for event in stream.stream(self.api.list_namespaced_custom_object, API_GROUP, VERSION,
                                           self.namespace, PLURAL, **kwargs):
                    if stopping.is_set():
                        stream.stop()
                        break
                    body = event.get("object") or {}
                    if event.get("type") == "ERROR":  # e.g. 410 Gone: start from a fresh list
                        version = None
                        self._forget()
                        break
                    backoff = WATCH_BACKOFF[0]
                    version = (body.get("metadata") or {}).get("resourceVersion") or version
                    event_name = str((body.get("metadata") or {}).get("name") or "")
                    if cluster:
                        self._fill(cluster, {event_name: None if event.get("type") == "DELETED" else body})
                    if event_name != name:
                        continue
                    generation = generation_of(body)
                    if event.get("type") == "DELETED" or generation != seen:
                        seen = generation
                        wake()
                else:
                    if cluster:
                        self._touch()  # the server ended the watch after WATCH_SECONDS: it answered
            except Exception as error:  # the loop polls meanwhile; try again, later each time
                log.debug("watch of PgInstance %s failed: %s", name, error)
                version = None
                self._forget()
                stopping.wait(backoff)
                backoff = min(backoff * 2, WATCH_BACKOFF[1])
        self._forget()

    def _fill(self, cluster: str, bodies: dict[str, dict[str, Any] | None], replace: bool = False) -> None:
        with self.cache_lock:
            if replace or self.cache_cluster != cluster:
                self.cache = {}
            self.cache_cluster = cluster
            for key, body in bodies.items():
                if body is None:
                    self.cache.pop(key, None)
                else:
                    self.cache[key] = body
            self.heard_at = self.contact_at = time.monotonic()

    def _touch(self) -> None:
        with self.cache_lock:
            self.heard_at = self.contact_at = time.monotonic()

    def _forget(self) -> None:
        with self.cache_lock:
            self.cache, self.cache_cluster, self.heard_at = {}, None, float("-inf")

    def renew_lease(self, instance: dict[str, Any], holder: str, now: datetime) -> None:
        """A merge patch of the Lease's renewal; on first use (and after a 404) a GET first: a
        Lease of that name someone else made is never renewed, a missing one is made."""
        import json

        from kubernetes.client.exceptions import ApiException
        meta, spec = instance.get("metadata") or {}, instance.get("spec") or {}
        me, cluster = meta.get("name", ""), spec.get("cluster", "")
        name = liveness.lease_name(me)
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
        if self.lease_checked != name:
            try:
                found = self._lease_call("GET", f"{path}/{name}")
            except ApiException as error:
                if error.status != 404:
                    raise
                body = liveness.lease_body(self.namespace, me, cluster, meta.get("uid", ""), holder, now)
                self._lease_call("POST", path, body)
                self.lease_checked = name
                self.contact_at = time.monotonic()
                return
            if not liveness.is_own(json.loads(found.data), me, cluster):
                raise PermissionError(f"Lease {self.namespace}/{name} exists and is not the liveness "
                                      f"Lease of {me}: not renewing it")
            self.lease_checked = name
        try:
            self._lease_call("PATCH", f"{path}/{name}", liveness.renewal(holder, now), "application/merge-patch+json")
        except ApiException as error:
            if error.status == 404:
                self.lease_checked = None  # deleted meanwhile: made again on the next renewal
            raise
        self.contact_at = time.monotonic()

    def _lease_call(self, method: str, path: str, body: Any = None, content_type: str = "application/json"):
        """A raw request of the Lease client (no default Content-Type: it creates with POST and
        renews with a merge patch); the urllib3 response, not decoded."""
        return self.lease_client.call_api(
            path, method, body=body, header_params={"Accept": "application/json", "Content-Type": content_type},
            auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
            _request_timeout=self.timeout)

    def patch_status(self, name: str, status: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException
        try:
            self.api.patch_namespaced_custom_object_status(API_GROUP, VERSION, self.namespace, PLURAL, name,
                                                           {"status": status}, _request_timeout=self.timeout)
            self.contact_at = time.monotonic()
        except ApiException as error:
            if error.status == 404:
                raise LookupError(f"pginstances {name!r} not found") from None
            raise


class FileInstanceStore:
    """PgInstances as JSON files in a directory (`<name>.json`): the agent outside Kubernetes.

    Selected by PGOP_INSTANCE_STORE=<directory>; used by the tests that run `pgop agent run` as a
    process, and handy to run an instance by hand. Writers lock the directory (fcntl).
    """

    def __init__(self, directory: str):
        from pathlib import Path
        self.directory = Path(directory)

    def _lock(self):
        import contextlib
        import fcntl

        @contextlib.contextmanager
        def locked():
            with open(self.directory / ".lock", "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        return locked()

    def _read(self, path) -> dict[str, Any] | None:
        import json
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    def get_instance(self, name: str) -> dict[str, Any] | None:
        with self._lock():
            return self._read(self.directory / f"{name}.json")

    def list_instances(self, cluster: str) -> list[dict[str, Any]]:
        with self._lock():
            bodies = [self._read(path) for path in sorted(self.directory.glob("*.json"))]
        return [b for b in bodies if b and (b.get("spec") or {}).get("cluster") == cluster]

    def watch(self, name: str, wake: Wake, stopping: threading.Event, cluster: str | None = None,
              every: float = 0.05) -> None:
        """Looks at the file every `every` seconds; wakes when its generation moves."""
        path = self.directory / f"{name}.json"
        seen: tuple[int | None, bool] | None = None
        stamp = None
        while not stopping.wait(every):
            try:
                current = path.stat().st_mtime_ns
            except FileNotFoundError:
                current = None
            if current == stamp:
                continue
            stamp = current
            try:
                generation = generation_of(self._read(path)) if current is not None else None
            except ValueError:  # written while read: look again next time
                stamp = None
                continue
            if seen is not None and (generation, current is None) != seen:
                wake()
            seen = (generation, current is None)

    def patch_status(self, name: str, status: dict[str, Any]) -> None:
        import json
        import os
        path = self.directory / f"{name}.json"
        with self._lock():
            body = self._read(path)
            if body is None:
                raise LookupError(f"pginstances {name!r} not found")
            _merge(body.setdefault("status", {}), copy.deepcopy(status))
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(body, indent=1))
            os.replace(temporary, path)


def store_from_env(namespace: str, env=None) -> InstanceStore:
    """The API server, unless PGOP_INSTANCE_STORE names a directory of PgInstance files."""
    import os
    directory = (os.environ if env is None else env).get("PGOP_INSTANCE_STORE")
    return FileInstanceStore(directory) if directory else KubeInstanceStore(namespace)
