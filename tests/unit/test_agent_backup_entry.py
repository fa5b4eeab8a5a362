"""`pgop agent backup` goes around the command line framework (a backup pod's memory) only for the
argument shapes it understands; anything else is typer's to answer."""
from __future__ import annotations

import pytest

from pgop.agent.backups import backup_arguments
from pgop.backup.pod import build_backup_pod


@pytest.mark.parametrize(("args", "parsed"), [
    (["--name", "b1"], ("b1", None, False)),
    (["--name", "b1", "--host", "10.0.0.7"], ("b1", "10.0.0.7", False)),
    (["--host", "10.0.0.7", "-v", "--name", "b1"], ("b1", "10.0.0.7", True)),
    (["--verbose", "--name", "b1"], ("b1", None, True)),
])
def test_the_shapes_it_runs_itself(args, parsed):
    assert backup_arguments(args) == parsed


@pytest.mark.parametrize("args", [
    [], ["--help"], ["--name"], ["--name=b1"], ["--host", "h"], ["--name", "b1", "--name", "b2"],
    ["--name", "b1", "--bogus"], ["--name", "-v"], ["b1"],
])
def test_anything_else_is_left_to_typer(args):
    assert backup_arguments(args) is None


def test_the_backup_pods_command_takes_the_short_way():
    from tests.unit.test_specs import instance
    command = build_backup_pod("nightly", "uid-1", instance(1, "replica", "basebackup"), "10.0.0.7")[
        "spec"]["containers"][0]["command"]
    assert command[:3] == ["pgop", "agent", "backup"]
    assert backup_arguments(command[3:]) == ("nightly", "10.0.0.7", False)
