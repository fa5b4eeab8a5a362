"""Log lines of pgop's programs (pgop.runtime.logs): JSON in pods, text on a terminal."""
import json
import logging
import sys

import pytest

from pgop.runtime import logs


@pytest.mark.parametrize("setting, terminal, chosen", [
    (None, False, "json"), (None, True, "text"), ("auto", False, "json"), ("AUTO", True, "text"),
    ("json", True, "json"), ("text", False, "text"),
])
def test_the_format_follows_the_setting_else_the_terminal(setting, terminal, chosen):
    assert logs.choose_format(setting, terminal) == chosen


def test_an_unknown_format_is_refused_by_name():
    with pytest.raises(ValueError, match=r"PGOP_LOG_FORMAT='xml': expected json, text or auto"):
        logs.choose_format("xml", False)


def _record(level=logging.WARNING, msg="replica %s is %d bytes behind", args=("orders-1", 4096), exc_info=None):
    return logging.LogRecord("pgop.agent.loop", level, __file__, 1, msg, args, exc_info)


def test_a_json_line_says_who_logged_what_and_how_bad():
    fields = logs.pod_fields({"PGOP_NAMESPACE": "shop", "PGOP_CLUSTER": "orders", "PGOP_INSTANCE": "orders-0",
                              "PGOP_POD_NAME": "orders-0"})
    line = json.loads(logs.JsonFormatter(fields).format(_record()))
    assert line["message"] == "replica orders-1 is 4096 bytes behind"
    assert line["severity"] == "warn" and line["logger"] == "pgop.agent.loop"
    assert (line["namespace"], line["cluster"], line["instance"], line["pod"]) == ("shop", "orders", "orders-0",
                                                                                   "orders-0")
    assert line["timestamp"].endswith("+00:00") and "T" in line["timestamp"]


def test_empty_fields_are_left_out_and_a_traceback_is_one_field_of_one_line():
    try:
        raise RuntimeError("pg_basebackup exited 1")
    except RuntimeError:
        record = _record(logging.ERROR, "bootstrap failed", (), sys.exc_info())
    text = logs.JsonFormatter(logs.pod_fields({"PGOP_NAMESPACE": "shop"})).format(record)
    assert "\n" not in text
    line = json.loads(text)
    assert "cluster" not in line and line["namespace"] == "shop"
    assert line["severity"] == "error" and "RuntimeError: pg_basebackup exited 1" in line["error"]


def test_configure_puts_one_handler_on_the_root_logger(capsys):
    root = logging.getLogger()
    before = root.handlers[:], root.level
    try:
        assert logs.configure(fields={"cluster": "orders"}, env={"PGOP_LOG_FORMAT": "json"}) == "json"
        assert len(root.handlers) == 1 and root.level == logging.INFO
        logging.getLogger("pgop.test").info("hello %s", "world")
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert line == {**line, "message": "hello world", "cluster": "orders", "severity": "info"}
    finally:
        root.handlers[:], _ = before
        root.setLevel(before[1])
