import json

from typer.testing import CliRunner

from pgop.cli import app
from pgop.cli_ha import fenced_after, fenced_names, resolve_instance, writes_wait_warning

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


REQUIRED_ONE = {"instances": 3, "synchronousMode": "required", "synchronousReplicas": 1}


def test_fencing_the_last_replica_a_required_primary_needs_warns_that_writes_wait():
    # one of two replicas fenced: the other still acknowledges
    assert writes_wait_warning(REQUIRED_ONE, "orders-0", NAMES, {"orders-1"}) is None
    # both: every commit waits, and the warning says why and what to do
    warning = writes_wait_warning(REQUIRED_ONE, "orders-0", NAMES, {"orders-1", "orders-2"})
    assert "writes on the primary orders-0 will wait" in warning
    assert "synchronousReplicas 1" in warning and "0 replica(s) are left unfenced (none)" in warning
    # two required, one fenced
    two = {**REQUIRED_ONE, "synchronousReplicas": 2}
    assert "1 replica(s) are left unfenced (orders-2)" in writes_wait_warning(two, "orders-0", NAMES, {"orders-1"})


def test_no_warning_when_writes_go_on_or_nothing_takes_them():
    both = {"orders-1", "orders-2"}
    assert writes_wait_warning({**REQUIRED_ONE, "synchronousMode": "preferred"}, "orders-0", NAMES, both) is None
    assert writes_wait_warning({"instances": 3}, "orders-0", NAMES, both) is None
    assert writes_wait_warning(REQUIRED_ONE, "orders-0", NAMES, set(NAMES)) is None  # the primary fenced too
    assert writes_wait_warning(REQUIRED_ONE, None, NAMES, both) is None  # no primary yet


def test_the_fenced_names_of_an_annotation():
    assert fenced_names(None, NAMES) == set()
    assert fenced_names('["orders-1"]', NAMES) == {"orders-1"}
    assert fenced_names('["*"]', NAMES) == set(NAMES)
