"""`pgop psql`, `pgop restart`, `pgop reload`: the pure parts (whom to connect to, the request,
when it is done). The order of a restart is the planner's (tests/unit/test_restart_reload.py)."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from pgop.cli import app
from pgop.cli_day2 import NoTarget, choose_instance, progress, psql_command, request_token, restart_annotations

CLUSTER = {"metadata": {"name": "orders"}, "status": {"currentPrimary": "orders-1"}}


def inst(ordinal, role, ready=True, lag=None, fenced=False, generation=1, observed=1, **spec):
    return {"metadata": {"name": f"orders-{ordinal}", "generation": generation},
            "spec": {"ordinal": ordinal, "role": role, "fenced": fenced, **spec},
            "status": {"role": role, "ready": ready, "pod": f"orders-{ordinal}", "lagBytes": lag,
                       "observedGeneration": observed}}


def test_psql_goes_to_the_current_primary():
    instances = [inst(0, "replica"), inst(1, "primary"), inst(2, "replica")]
    assert choose_instance(CLUSTER, instances, replica=False) == ("orders-1", "orders-1")


def test_psql_replica_takes_the_ready_unfenced_replica_with_least_lag():
    instances = [inst(0, "replica", lag=900), inst(1, "primary"), inst(2, "replica", lag=10),
                 inst(3, "replica", ready=False, lag=0), inst(4, "replica", lag=0, fenced=True)]
    assert choose_instance(CLUSTER, instances, replica=True) == ("orders-2", "orders-2")


def test_psql_says_why_there_is_no_target():
    with pytest.raises(NoTarget, match="no ready replica"):
        choose_instance(CLUSTER, [inst(1, "primary")], replica=True)
    with pytest.raises(NoTarget, match="no primary"):
        choose_instance({"metadata": {"name": "orders"}, "status": {}}, [inst(0, "replica")], replica=False)


def test_psql_command_gets_a_terminal_only_when_there_is_one():
    assert psql_command("shop", "orders-1", ["-d", "app"], interactive=True) == [
        "kubectl", "exec", "-i", "-t", "-n", "shop", "orders-1", "-c", "postgres", "--", "psql", "-d", "app"]
    assert "-t" not in psql_command("shop", "orders-1", [], interactive=False)


def test_a_restart_request_is_a_new_token_and_a_scope():
    token = request_token(datetime(2026, 11, 22, 12, 0, 0, 123000, tzinfo=UTC))
    assert token == "2026-11-22T12:00:00.123Z"
    assert restart_annotations(token, ["orders-2"]) == {"pgop.io/restart-requested-at": token,
                                                        "pgop.io/restart-instances": json.dumps(["orders-2"])}
    # the whole cluster: a list left by an earlier --instance request is removed
    assert restart_annotations(token, None)["pgop.io/restart-instances"] is None


def test_an_instance_is_done_once_its_agent_applied_the_token_and_is_ready():
    t = "2026-11-22T12:00:00.123Z"
    instances = [inst(0, "primary", restartRequestedAt=t, generation=3, observed=3),
                 inst(1, "replica", restartRequestedAt=t, generation=3, observed=2),  # not applied yet
                 inst(2, "replica", restartRequestedAt=t, ready=False, generation=2, observed=2),
                 inst(3, "replica")]  # not its turn yet
    assert progress("restartRequestedAt", t, instances) == (["orders-0"], ["orders-1", "orders-2", "orders-3"])
    assert progress("restartRequestedAt", t, instances, ["orders-0"]) == (["orders-0"], [])


def test_day2_commands_exist():
    runner = CliRunner()
    for command in ("psql", "restart", "reload", "report"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
