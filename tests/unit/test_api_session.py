"""How many connections kopf's HTTP session may hold (pgop.runtime.api_session.connection_limit);
the session itself against the API server: tests/integration/test_api_session.py."""
from __future__ import annotations

from pgop.runtime import api_session


def test_the_limit_leaves_room_for_every_watch_stream():
    assert api_session.connection_limit([]) == (api_session.WATCHED_KINDS + api_session.CLUSTER_WIDE_STREAMS
                                                + api_session.REQUEST_CONNECTIONS)
    assert api_session.connection_limit(["a", "b", "c"]) - api_session.connection_limit(["a"]) == \
        2 * api_session.WATCHED_KINDS
    assert api_session.connection_limit(["!solo-*"]) is None  # as many streams as namespaces match
