import json

from typer.testing import CliRunner

from pgop.cli import app
from pgop.cli_ha import fenced_after, resolve_instance

NAMES = ["orders-0", "orders-1", "orders-2"]


def test_fence_edits_the_annotation_list():
    assert fenced_after(None, True, "orders-1", NAMES) == json.dumps(["orders-1"])
    assert fenced_after('["orders-1"]', True, "orders-0", NAMES) == json.dumps(["orders-0", "orders-1"])
    assert fenced_after('["orders-1"]', False, "orders-1", NAMES) is None
    assert fenced_after('["orders-1"]', True, "all", NAMES) == json.dumps(["*"])
    assert fenced_after('["*"]', False, "all", NAMES) is None


def test_unfencing_one_of_all_keeps_the_others_fenced():
    assert fenced_after('["*"]', False, "orders-1", NAMES) == json.dumps(["orders-0", "orders-2"])
    assert fenced_after('["*"]', True, "orders-1", NAMES) == json.dumps(["*"])


def test_an_unreadable_annotation_is_replaced():
    assert fenced_after("orders-1", True, "orders-2", NAMES) == json.dumps(["orders-2"])


def test_an_ordinal_names_the_instance():
    assert resolve_instance("orders", "2") == "orders-2"
    assert resolve_instance("orders", "orders-2") == "orders-2"


def test_promote_and_fence_are_commands():
    runner = CliRunner()
    for command in ("promote", "fence"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["fence", "maybe", "orders"])
    assert result.exit_code == 2 and "on or off" in result.output
