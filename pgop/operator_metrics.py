"""`pgop run --metrics URL`: the operator's /metrics (pgop.runtime.metrics), and the kopf event
handlers that show the tracker every PgCluster, PgInstance, PgBackup and MysqlDb as it changes
(kopf already watches these kinds: no extra watch, no API call per scrape)."""
from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import kopf
from prometheus_client.exposition import start_http_server

from pgop.kernel.model import API_GROUP
from pgop.runtime.metrics import REGISTRY, TRACKER

log = logging.getLogger("pgop.operator")

VERSION = "v1"
KINDS = {"pgclusters": "PgCluster", "pginstances": "PgInstance", "pgbackups": "PgBackup", "mysqldbs": "MysqlDb"}


def listen_address(url: str) -> tuple[str, int]:
    """http://0.0.0.0:9090/metrics -> ("0.0.0.0", 9090). The server answers on every path."""
    parts = urlsplit(url if "//" in url else f"http://{url}")
    if parts.scheme != "http" or parts.port is None:
        raise ValueError(f"--metrics wants http://HOST:PORT/metrics, not {url!r}")
    return parts.hostname or "0.0.0.0", parts.port


def serve(url: str) -> None:
    host, port = listen_address(url)
    start_http_server(port, host, registry=REGISTRY)
    log.info("metrics on http://%s:%s/metrics", host, port)


def _tracked(plural: str) -> None:
    kind = KINDS[plural]

    @kopf.on.event(API_GROUP, VERSION, plural, id=f"metrics-{plural}")
    async def seen(body: Any, event: Any, **_: Any) -> None:  # cheap: in kopf's loop, not a thread
        TRACKER.seen(kind, body, event.get("type"))


def register() -> None:
    for plural in KINDS:
        _tracked(plural)
