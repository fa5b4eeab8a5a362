"""The rejoin of a former primary, with pg_rewind, pg_basebackup and the primary faked: what is
tried in which order, and when the volume is (never) emptied."""
from __future__ import annotations

from pathlib import Path

import pytest

from pgop.agent import bootstrap, ha, rejoin
from pgop.agent.commands import CommandError
from pgop.agent.settings import AgentSettings
from pgop.kernel.model import InstanceSpec

SPEC = InstanceSpec(cluster="orders", ordinal=0, role="replica", bootstrap="basebackup", primary="orders-1",
                    primary_host="10.244.0.11")


@pytest.fixture
def world(tmp_path, monkeypatch):
    settings = AgentSettings(cluster="orders", instance="orders-0", namespace="shop", pgdata=tmp_path / "pgdata",
                             secrets_dir=tmp_path / "secrets", run_dir=tmp_path / "run")
    settings.pgdata.mkdir()
    calls: list[str] = []
    state = {"sources": [], "rewind": "ok", "clone": "ok"}

    def probe(_settings, host):
        assert host == SPEC.primary_host  # the followed instance's pod, never -rw
        calls.append("probe")
        return state["sources"].pop(0) if state["sources"] else ha.Source(True, False, "7", 2)

    def rewind(_settings, _runner, host):
        assert host == SPEC.primary_host
        calls.append("rewind")
        if state["rewind"] != "ok":
            raise CommandError(["pg_rewind"], 1, state["rewind"])
        return "pg_rewind: Done!"

    def clone(_settings, _spec, _runner, attempts=5):
        calls.append("clone")
        if state["clone"] != "ok":
            raise bootstrap.BootstrapError(state["clone"])

    monkeypatch.setattr(rejoin, "probe_source", probe)
    monkeypatch.setattr(rejoin, "rewind", rewind)
    monkeypatch.setattr(rejoin, "local_system_identifier", lambda s, r: "7")
    monkeypatch.setattr(rejoin, "become_replica", lambda *a: calls.append("replica"))
    monkeypatch.setattr(bootstrap, "basebackup", clone)
    monkeypatch.setattr(bootstrap, "write_passfile", lambda s, r: None)
    return settings, calls, state


def run(settings) -> rejoin.Outcome:
    return rejoin.rejoin(settings, None, SPEC, {}, "")  # type: ignore[arg-type]


def test_rewind(world):
    settings, calls, _ = world
    outcome = run(settings)
    assert outcome.done and outcome.how == rejoin.REWOUND and calls == ["probe", "rewind", "replica"]


def test_no_primary_no_rewind_nothing_touched(world):
    settings, calls, state = world
    state["sources"] = [ha.Source(False, error="connection refused")]
    outcome = run(settings)
    assert not outcome.done and "not reachable" in outcome.message and calls == ["probe"]


def test_failed_rewind_clones(world):
    settings, calls, state = world
    state["rewind"] = "pg_rewind: fatal: could not open file global/pg_control"
    outcome = run(settings)
    assert outcome.done and outcome.how == rejoin.RECLONED and "pg_control" in outcome.message
    assert calls == ["probe", "rewind", "probe", "clone", "replica"]
    assert not rejoin.rewind_failed_marker(settings).exists()


def test_failed_rewind_with_the_primary_gone_clones_later_without_rewinding_again(world):
    settings, calls, state = world
    state["rewind"] = "pg_rewind: fatal: connection lost"
    state["sources"] = [ha.Source(True, False, "7", 2), ha.Source(False, error="refused")]
    outcome = run(settings)
    assert not outcome.done and "answers no more" in outcome.message
    assert calls == ["probe", "rewind", "probe"]  # PGDATA half rewritten, but not emptied yet
    assert rejoin.rewind_failed_marker(settings).exists()
    calls.clear()
    outcome = run(settings)  # the primary is back (even after a restart of the agent): clone
    assert outcome.done and outcome.how == rejoin.RECLONED and calls == ["probe", "clone", "replica"]
    assert not rejoin.rewind_failed_marker(settings).exists()


def test_another_database_is_never_rewound_or_cloned_over(world):
    settings, calls, state = world
    state["sources"] = [ha.Source(True, False, "8", 2)]
    outcome = run(settings)
    assert not outcome.done and "another database" in outcome.message and calls == ["probe"]


def test_source_conninfo_names_the_followed_host_as_superuser_without_tls():
    settings = AgentSettings(cluster="orders", instance="orders-0", namespace="shop", pgdata=Path("/d/pgdata"),
                             secrets_dir=Path("/s"))
    conninfo = rejoin.source_conninfo(settings, "10.244.0.12")
    assert "host='10.244.0.12'" in conninfo and "user='postgres'" in conninfo
    assert "passfile='/var/run/postgresql/pgpass'" in conninfo and "password" not in conninfo.replace("passfile", "")
