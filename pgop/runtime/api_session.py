"""kopf's own HTTP client to the API server, with a bounded pool of connections.

kopf builds its aiohttp connector without a limit: every request made while the others are in
flight opens another TLS connection, kept afterwards. At 40-100 clusters the operator held 73-80
of them, each with its read buffer and OpenSSL's memory. Here kopf logs in as it would (the
kubernetes client's configuration: in-cluster, else the kubeconfig) and gets a session whose
connector holds at most `connection_limit` connections; a request beyond them waits for one.
Each watch stream holds a connection for as long as it runs, so the limit leaves room for every
stream kopf may open (one per watched kind, per namespace when namespaces are named) plus the
requests'.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import aiohttp
import kopf

from pgop.runtime.config import is_pattern

log = logging.getLogger(__name__)

REQUEST_CONNECTIONS = 16  # shared by every request that is not a watch stream
# Kinds kopf may watch in one namespace (PgCluster, PgInstance, PgBackup, MysqlDb, the kinds the
# indexes follow), with room to spare; and the cluster-wide streams (Namespaces, CRDs, Nodes).
WATCHED_KINDS = 12
CLUSTER_WIDE_STREAMS = 4


def connection_limit(namespaces: Sequence[str]) -> int | None:
    """Connections kopf's session may hold: a watch stream's for every kind in every namespace
    watched (all namespaces: one stream per kind), plus the requests'. None (no limit) when a
    namespace is a pattern: kopf then watches every matching namespace, however many (pure)."""
    if any(is_pattern(namespace) for namespace in namespaces):
        return None
    return WATCHED_KINDS * max(1, len(namespaces)) + CLUSTER_WIDE_STREAMS + REQUEST_CONNECTIONS


def register(namespaces: Sequence[str]) -> None:
    """Log kopf in through `login` (in place of kopf's own login handlers), unless the number of
    watch streams has no bound."""
    limit = connection_limit(namespaces)
    if limit is None:
        return

    @kopf.on.login()
    async def bounded_login(**kwargs: Any) -> kopf.AiohttpSession | None:
        return await login(limit, **kwargs)


async def login(limit: int, **kwargs: Any) -> kopf.AiohttpSession | None:
    info = kopf.login_via_client(**kwargs)
    if info is None:
        return None
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    log.debug("kopf's API session holds at most %d connections", limit)
    return kopf.AiohttpSession(aiohttp_session=session, server=info.server, priority=info.priority,
                               default_namespace=info.default_namespace, expiration=info.expiration)
