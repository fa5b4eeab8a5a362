"""A small HTTPS client of the local API server for the benchmarks: the admin certificate of the
local environment (e2e/harness/pki), pooled keep-alive connections shared by threads, JSON in and
out, and a count of every request it sends (so a benchmark can tell its own share of the API
server's traffic from everyone else's).

Lighter than the kubernetes client on purpose: a load generator that plays hundreds of agents must
not spend the machine's two cores on building model objects.
"""
from __future__ import annotations

import json
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import urllib3

from e2e.harness import paths

MERGE = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, text: str):
        super().__init__(f"{method} {path}: HTTP {status}: {text[:300]}")
        self.status = status


class Api:
    def __init__(self, base: str | None = None, pool: int = 16, timeout: float = 30.0):
        self.base = base or f"https://127.0.0.1:{paths.APISERVER_PORT}"
        self.http = urllib3.PoolManager(
            num_pools=4, maxsize=pool, block=True,
            cert_file=str(paths.PKI / "admin.crt"), key_file=str(paths.PKI / "admin.key"),
            ca_certs=str(paths.PKI / "ca.crt"), cert_reqs="CERT_REQUIRED", retries=False)
        self.timeout = timeout
        self.sent: Counter[str] = Counter()  # "VERB kind", e.g. "PATCH pginstances/status"
        self.lock = threading.Lock()

    def count(self, what: str) -> None:
        with self.lock:
            self.sent[what] += 1

    def sent_total(self) -> int:
        with self.lock:
            return sum(self.sent.values())

    def call(self, method: str, path: str, body: Any = None, *, query: dict[str, Any] | None = None,
             content_type: str = "application/json", label: str = "") -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        self.count(f"{method} {label or _kind(path)}")
        r = self.http.request(method, url, body=None if body is None else json.dumps(body).encode(),
                              headers={"Content-Type": content_type, "Accept": "application/json"},
                              timeout=self.timeout)
        if r.status >= 300:
            raise ApiError(r.status, method, path, r.data.decode(errors="replace"))
        return json.loads(r.data) if r.data else None

    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path, query=query or None)

    def get_or_none(self, path: str) -> Any:
        try:
            return self.get(path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def create(self, path: str, body: dict[str, Any]) -> Any:
        """POST; an object that already exists is no error (a bench run again after a crash)."""
        try:
            return self.call("POST", path, body)
        except ApiError as e:
            if e.status != 409:
                raise
            return None

    def merge_patch(self, path: str, body: dict[str, Any]) -> Any:
        return self.call("PATCH", path, body, content_type=MERGE)

    def delete(self, path: str, **query: Any) -> None:
        try:
            self.call("DELETE", path, query=query or None)
        except ApiError as e:
            if e.status != 404:
                raise

    def text(self, path: str) -> str:
        """A plain-text GET (e.g. /metrics)."""
        self.count(f"GET {path}")
        r = self.http.request("GET", self.base + path, timeout=self.timeout)
        if r.status >= 300:
            raise ApiError(r.status, "GET", path, r.data.decode(errors="replace"))
        return r.data.decode()

    def watch(self, path: str, on_event: Callable[[str, dict[str, Any]], None], stopping: threading.Event,
              **query: Any) -> None:
        """List, then watch from the list's resourceVersion; again from a fresh list whenever the
        watch ends or fails. Calls on_event("ADDED"|"MODIFIED"|"DELETED", object) for every object
        (the list's objects as ADDED). Blocks until `stopping` is set (checked between events and
        at least every WATCH_SECONDS)."""
        while not stopping.is_set():
            try:
                listed = self.call("GET", path, query=dict(query) or None, label=f"{_kind(path)} (list)")
                for item in listed.get("items") or []:
                    on_event("ADDED", item)
                version = listed["metadata"]["resourceVersion"]
                for kind, obj in self._stream(path, version, query, stopping):
                    if kind == "ERROR":
                        break
                    on_event(kind, obj)
            except (ApiError, urllib3.exceptions.HTTPError, OSError, ValueError):
                if stopping.wait(1.0):
                    return

    def _stream(self, path: str, version: str, query: dict[str, Any],
                stopping: threading.Event) -> Iterator[tuple[str, dict[str, Any]]]:
        while not stopping.is_set():
            q = {**query, "watch": "1", "resourceVersion": version, "timeoutSeconds": WATCH_SECONDS,
                 "allowWatchBookmarks": "true"}
            url = self.base + path + "?" + urllib.parse.urlencode(q)
            self.count(f"WATCH {_kind(path)}")
            r = self.http.request("GET", url, preload_content=False,
                                  timeout=urllib3.Timeout(connect=10, read=WATCH_SECONDS + 15))
            try:
                if r.status >= 300:
                    raise ApiError(r.status, "WATCH", path, r.read().decode(errors="replace"))
                for line in r:
                    if stopping.is_set():
                        return
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event.get("type") == "BOOKMARK":
                        continue
                    yield event.get("type", ""), obj
                    if event.get("type") == "ERROR":  # 410 Gone: the caller lists again
                        return
            finally:
                r.release_conn()


WATCH_SECONDS = 60


def _kind(path: str) -> str:
    """The resource of a path, for the request counts: /api/v1/namespaces/x/pods/y -> pods."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if parts and parts[0] == "apis":
        parts = parts[3:]
    elif parts and parts[0] == "api":
        parts = parts[2:]
    if len(parts) >= 2 and parts[0] == "namespaces":
        parts = parts[2:] if len(parts) > 2 else ["namespaces"]
    if not parts:
        return path
    sub = parts[2] if len(parts) >= 3 else ""
    return parts[0] + (f"/{sub}" if sub else "")
