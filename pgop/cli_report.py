"""`pgop report`: a support bundle (tar.gz) of one PgCluster, safe to attach to an issue.

What it holds: the PgCluster, its PgInstances and PgBackups, its pods, Services, PVCs,
PodDisruptionBudgets, Secrets (keys only), the Events about any of them, and the logs of every
container of its pods (current and previous), read from the API server like `kubectl logs`, so
the bundle does not depend on the operator running. `pgop status` as text on top.

Redaction (pure, `redact_object` / `redact_text`, tested): every value of a Secret's data and
stringData; the value of any field or env var whose name says password, passwd, secret, token,
credential, private key, uri, dsn or conninfo; the password of any URI with user information
(`scheme://user:PASSWORD@host`); `password=...` in connection strings; `PASSWORD '...'` in SQL; the
`last-applied-configuration` annotation (it may hold a whole Secret); managedFields are dropped.
"""
from __future__ import annotations

import io
import re
import sys
import tarfile
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import typer

from pgop.kernel.meta import LABEL_CLUSTER

REDACTED = "<redacted>"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
LOG_LIMIT_BYTES = 20 * 1024 * 1024  # per container log

_SENSITIVE_PARTS = ("password", "passwd", "secret", "token", "credential", "privatekey", "apikey", "conninfo")
_SENSITIVE_ENDS = ("pass", "pwd", "uri", "dsn")
# Names that say where a secret is, not what it is: kept (a Secret's name, a Vault path).
_REFERENCE_ENDS = ("secretname", "secretref", "secretkeyref", "credentialssecret", "vaultpath", "consulprefix")
_URI_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]*:)(?P<secret>[^@\s/]+)(?P<at>@)")
_KEYWORD = r"(?P<head>\b(password|passwd|pwd|PGPASSWORD)\s*[=:]\s*)"
_KEYWORD_QUOTED = re.compile(_KEYWORD + r"(?P<lit>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(_KEYWORD + r"(?P<secret>[^\s'\",;&<]+)", re.IGNORECASE)
_SQL_PASSWORD = re.compile(r"(?P<head>\bPASSWORD\s+)(?P<lit>'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")", re.IGNORECASE)
_JSON_PASSWORD = re.compile(r"(?P<head>\"[^\"]*(password|passwd|secret|token)[^\"]*\"\s*:\s*\")(?:[^\"\\]|\\.)*\"",
                            re.IGNORECASE)


def sensitive_name(name: str) -> bool:
    """A field or variable named like a secret value (not like a reference to one)."""
    plain = re.sub(r"[-_.\s]", "", name).lower()
    if not plain or plain.endswith(_REFERENCE_ENDS):
        return False
    return any(part in plain for part in _SENSITIVE_PARTS) or plain.endswith(_SENSITIVE_ENDS)


def redact_text(text: str) -> str:
    """A log line, an Event message, a setting: passwords in URIs, connection strings, SQL, JSON."""
    text = _URI_PASSWORD.sub(lambda m: m["head"] + REDACTED + m["at"], text)
    text = _SQL_PASSWORD.sub(lambda m: m["head"] + "'" + REDACTED + "'", text)
    text = _JSON_PASSWORD.sub(lambda m: m["head"] + REDACTED + '"', text)
    text = _KEYWORD_QUOTED.sub(lambda m: m["head"] + "'" + REDACTED + "'", text)
    return _KEYWORD_PASSWORD.sub(lambda m: m["head"] + REDACTED, text)


def _redact(value: Any, name: str = "") -> Any:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        env_like = isinstance(value.get("name"), str) and "value" in value and sensitive_name(value["name"])
        for key, item in value.items():
            key = str(key)
            if key == "managedFields":
                continue
            if key == LAST_APPLIED or (env_like and key == "value"):
                out[key] = REDACTED
            else:
                out[key] = _redact(item, key)
        return out
    if isinstance(value, list):
        return [_redact(item, name) for item in value]
    if isinstance(value, str):
        return REDACTED if value and sensitive_name(name) else redact_text(value)
    return value


def redact_object(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an API object that shows no secret value (see the module's docstring)."""
    redacted = _redact(obj)
    if obj.get("kind") == "Secret":
        for field in ("data", "stringData"):
            if isinstance(obj.get(field), Mapping):
                redacted[field] = {key: REDACTED for key in obj[field]}
    return dict(redacted)


def related_events(events: Iterable[Mapping[str, Any]], names: set[str]) -> list[dict[str, Any]]:
    """The Events about the objects in the bundle, oldest first."""
    def when(e: Mapping[str, Any]) -> str:
        return str(e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or "")
    return sorted((dict(e) for e in events if (e.get("involvedObject") or {}).get("name") in names), key=when)


def bundle_files(cluster: str, objects: Mapping[str, list[dict[str, Any]]], logs: Mapping[str, str],
                 summary: str, problems: Iterable[str]) -> dict[str, bytes]:
    """Path in the bundle -> content, everything redacted. `objects`: file stem -> API objects;
    `logs`: "<pod>/<container>[.previous]" -> log text."""
    import yaml
    files: dict[str, bytes] = {"summary.txt": redact_text(summary).encode()}
    for stem, items in objects.items():
        docs = [redact_object(item) for item in items]
        files[f"{stem}.yaml"] = yaml.safe_dump_all(docs, sort_keys=False).encode() if docs else b""
    for key, text in logs.items():
        files[f"logs/{key}.log"] = redact_text(text).encode()
    problems = list(problems)
    if problems:
        files["problems.txt"] = ("\n".join(redact_text(p) for p in problems) + "\n").encode()
    return files


def write_tar(files: Mapping[str, bytes], root: str, out: Any, now: datetime) -> None:
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for path, content in sorted(files.items()):
            info = tarfile.TarInfo(f"{root}/{path}")
            info.size = len(content)
            info.mtime = int(now.timestamp())
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(content))


# ------------------------------------------------------------------------------ collecting

KINDS = (("pgcluster", "PgCluster"), ("pginstances", "PgInstance"), ("pgbackups", "PgBackup"), ("pods", "Pod"),
         ("services", "Service"), ("pvcs", "PersistentVolumeClaim"), ("pdbs", "PodDisruptionBudget"),
         ("secrets", "Secret"))


def collect(kube: Any, namespace: str, cluster: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str], list[str]]:
    """(objects, logs, problems): what the API server gives; what it refuses is noted, not fatal."""
    from kubernetes import client
    objects: dict[str, list[dict[str, Any]]] = {}
    problems: list[str] = []
    for stem, kind in KINDS:
        try:
            if kind == "PgCluster":
                body = kube.get(kind, namespace, cluster)
                objects[stem] = [body] if body else []
            else:
                objects[stem] = kube.list(kind, namespace, {LABEL_CLUSTER: cluster})
        except Exception as error:  # forbidden, unknown kind: the rest of the bundle still helps
            problems.append(f"{kind}: {error}")
            objects[stem] = []
    names = {cluster} | {o["metadata"]["name"] for items in objects.values() for o in items}
    try:
        objects["events"] = related_events(kube.list("Event", namespace), names)
    except Exception as error:
        problems.append(f"Event: {error}")
        objects["events"] = []
    core = client.CoreV1Api(kube.api)
    logs: dict[str, str] = {}
    for pod in objects["pods"]:
        pod_name = pod["metadata"]["name"]
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        restarts = {c["name"]: c.get("restartCount", 0)
                    for c in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or [])}
        for container in [c["name"] for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])]:
            for previous in ((False, True) if restarts.get(container) else (False,)):
                key = f"{pod_name}/{container}" + (".previous" if previous else "")
                try:
                    logs[key] = core.read_namespaced_pod_log(pod_name, namespace, container=container,
                                                             previous=previous, limit_bytes=LOG_LIMIT_BYTES,
                                                             timestamps=True, _request_timeout=(5, 60))
                except Exception as error:
                    problems.append(f"logs of {key}: {getattr(error, 'reason', None) or error}")
    return objects, logs, problems


def report(cluster: str, namespace: str, filename: str | None) -> None:
    from rich.console import Console

    from pgop.cli_views import cluster_table, conditions_table
    from pgop.runtime.kube import Kube
    kube = Kube()
    if kube.get("PgCluster", namespace, cluster) is None:
        typer.echo(f"PgCluster {namespace}/{cluster} not found; the bundle would be empty", err=True)
        raise typer.Exit(1)
    started = time.monotonic()
    objects, logs, problems = collect(kube, namespace, cluster)
    text = io.StringIO()
    summary = Console(file=text, width=200, no_color=True)
    summary.print(cluster_table(objects["pgcluster"][0], objects["pginstances"]))
    summary.print(conditions_table(objects["pgcluster"][0]))
    now = datetime.now(UTC)
    root = f"{cluster}-report-{now:%Y%m%dT%H%M%SZ}"
    files = bundle_files(cluster, objects, logs, text.getvalue(), problems)
    if filename == "-":
        write_tar(files, root, sys.stdout.buffer, now)
    else:
        path = filename or f"{root}.tar.gz"
        with open(path, "wb") as out:
            write_tar(files, root, out, now)
        typer.echo(f"{path}: {len(files)} files ({len(logs)} logs), Secrets and passwords redacted, "
                   f"in {time.monotonic() - started:.1f}s")
    for problem in problems:
        typer.echo(f"not in the bundle: {redact_text(problem)}", err=True)
