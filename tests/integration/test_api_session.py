"""kopf's HTTP session to the real kube-apiserver (`make up`) as pgop logs kopf in
(pgop.runtime.api_session): it authenticates as kopf's own login would, and however many requests
are in flight at once, it holds no more connections than its limit (kopf's own opens one per
request in flight and keeps them)."""
from __future__ import annotations

import asyncio
import logging
import os

import kopf
import pytest

from e2e.harness import proc
from pgop.runtime import api_session

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


async def _burst(limit: int | None, requests: int) -> tuple[list[int], int]:
    settings = kopf.OperatorSettings()
    logger = logging.getLogger("test")
    if limit is None:  # kopf's own session, for comparison
        info = kopf.login_via_client(logger=logger, settings=settings)
        assert info is not None
        import aiohttp
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
                                        headers=info.as_http_headers())
        server = info.server
    else:
        context = await api_session.login(limit, logger=logger, settings=settings)
        assert context is not None
        session, server = context.aiohttp_session, context.server
    port = int(server.rsplit(":", 1)[1])
    try:
        async def get() -> int:
            async with session.get(f"{server}/api/v1/namespaces/default") as response:
                await response.read()
                return response.status
        statuses = await asyncio.gather(*(get() for _ in range(requests)))
        return list(statuses), proc.tcp_connections(os.getpid(), port)
    finally:
        await session.close()


def test_kopf_s_session_holds_no_more_connections_than_its_limit(local_env, monkeypatch):
    import kubernetes.config.kube_config  # reads $KUBECONFIG when imported, as the operator does at start
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", local_env["KUBECONFIG"])
    statuses, held = asyncio.run(_burst(4, 24))
    assert statuses == [200] * 24  # authenticated, and no request starved
    assert 1 <= held <= 4
    statuses, unbounded = asyncio.run(_burst(None, 24))  # what kopf's own connector does
    assert statuses == [200] * 24 and unbounded > 4

