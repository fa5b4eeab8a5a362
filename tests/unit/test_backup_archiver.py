from datetime import UTC, datetime
from pathlib import Path

from pgop.agent.settings import AgentSettings
from pgop.agent.state import Archiver, PostgresState
from pgop.agent.status import archiver_status, build_status

AT = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def test_pg_stat_archiver_becomes_the_instance_status_archiver():
    reported = archiver_status(Archiver(5, "000000010000000000000005", AT, 2, "000000010000000000000006", AT))
    assert reported == {"archivedCount": 5, "lastArchivedWal": "000000010000000000000005",
                        "lastArchivedTime": "2026-01-02T03:04:05Z", "failedCount": 2,
                        "lastFailedWal": "000000010000000000000006", "lastFailedTime": "2026-01-02T03:04:05Z",
                        "refusal": None}
    # never archived, never failed: the fields are cleared (merge patch), not left from before
    assert archiver_status(Archiver())["lastFailedWal"] is None


def test_the_heartbeat_carries_the_archiver_when_postgres_reported_it():
    settings = AgentSettings(cluster="orders", instance="orders-0", namespace="shop",
                             pgdata=Path("/x/pgdata"), secrets_dir=Path("/x/secrets"))
    state = PostgresState(accepting=True, role="primary", archiver=Archiver(archived_count=3))
    status = build_status(settings, now=AT, state=state, decision=None, ready=True, generation=1,
                          applied_generation=1)
    assert status["archiver"]["archivedCount"] == 3
    assert "archiver" not in build_status(settings, now=AT, state=None, decision=None, ready=False,
                                          generation=1, applied_generation=None)
