"""How pgop's programs log: one JSON object per line in pods (what log collectors parse), plain
lines on a terminal (what people read).

`PGOP_LOG_FORMAT` = `json` | `text` | `auto` (the default: `text` when stderr is a terminal, else
`json`). Every JSON line carries `timestamp`, `severity`, `logger`, `message`, the error's
traceback as `error` when there is one, and the fields of the process (in a Postgres pod:
`namespace`, `cluster`, `instance`, `pod`). The keys match the operator's (kopf's JSON format), so
one parser reads both. A message is the same text in either format: what is kept out of logs
(passwords, keys, tokens) is kept out of the message itself, never filtered here.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime

ENV_LOG_FORMAT = "PGOP_LOG_FORMAT"
JSON, TEXT = "json", "text"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_SEVERITY = ((logging.DEBUG, "debug"), (logging.INFO, "info"), (logging.WARNING, "warn"),
             (logging.ERROR, "error"))


def choose_format(setting: str | None, is_terminal: bool) -> str:
    """`json` or `text` for a PGOP_LOG_FORMAT value; unknown values are refused by name."""
    value = (setting or "auto").strip().lower()
    if value == "auto":
        return TEXT if is_terminal else JSON
    if value not in (JSON, TEXT):
        raise ValueError(f"{ENV_LOG_FORMAT}={setting!r}: expected json, text or auto")
    return value


def severity(levelno: int) -> str:
    return next((name for level, name in _SEVERITY if levelno <= level), "fatal")


class JsonFormatter(logging.Formatter):
    def __init__(self, fields: Mapping[str, str] | None = None):
        super().__init__()
        self.fields = {k: v for k, v in (fields or {}).items() if v}

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "severity": severity(record.levelno),
            "logger": record.name,
            "message": record.getMessage(),
            **self.fields,
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def pod_fields(env: Mapping[str, str]) -> dict[str, str]:
    """Who is logging, from the pod's environment (pgop.kernel.podenv)."""
    from pgop.kernel import podenv
    return {"namespace": env.get(podenv.ENV_NAMESPACE, ""), "cluster": env.get(podenv.ENV_CLUSTER, ""),
            "instance": env.get(podenv.ENV_INSTANCE, ""), "pod": env.get(podenv.ENV_POD_NAME, "")}


def configure(verbose: bool = False, fields: Mapping[str, str] | None = None,
              env: Mapping[str, str] | None = None) -> str:
    """Logging of a pgop program in a pod (agent, bootstrap, backup); returns the format chosen."""
    env = os.environ if env is None else env
    chosen = choose_format(env.get(ENV_LOG_FORMAT), sys.stderr.isatty())
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(fields) if chosen == JSON else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return chosen
