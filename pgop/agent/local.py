"""Connections from the agent to its own Postgres.

In a pod: the socket directory and peer authentication as `postgres` (no password in play).
Elsewhere (PGOP_CONNECT_HOST set, e.g. 127.0.0.1 in the tests): TCP with the superuser's
password, which libpq reads from the agent's passfile.
"""
from __future__ import annotations

import time

import psycopg

from pgop.agent.settings import AgentSettings

CONNECT_TIMEOUT = 3


def connect(settings: AgentSettings, dbname: str = "postgres", user: str = "postgres",
            timeout: float = CONNECT_TIMEOUT) -> psycopg.Connection:
    return psycopg.connect(
        host=settings.local_host, port=settings.pg_port, user=user, dbname=dbname,
        passfile=str(settings.passfile), connect_timeout=max(1, int(timeout)),
        application_name="pgop-agent", autocommit=True,
    )


def accepts_connections(settings: AgentSettings, user: str = "postgres") -> bool:
    try:
        with connect(settings, user=user, timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def wait_until_accepting(settings: AgentSettings, timeout: float, alive=lambda: True,
                         user: str = "postgres") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        if accepts_connections(settings, user):
            return True
        time.sleep(0.1)
    return False
