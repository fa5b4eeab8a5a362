"""What the CLI prints: pure functions from API objects to rich renderables (tested without a
cluster)."""
from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from pgop.kernel import liveness
from pgop.kernel.actions import Action
from pgop.kernel.conditions import parse_time, rfc3339
from pgop.kernel.lsn import lag_bytes


def _age(ts: str | None, now: datetime) -> str:
    moment = parse_time(ts) if ts else None
    if moment is None:
        return "-"
    seconds = int((now - moment).total_seconds())
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _bytes(n: Any) -> str:
    if n is None:
        return "-"
    n = int(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n} {unit}"
        n //= 1024
    return f"{n} TiB"


def _newest_beat(instance: dict[str, Any]) -> str | None:
    moment = liveness.alive_at(instance)
    return rfc3339(moment) if moment is not None else None


def instance_rows(cluster: dict[str, Any], instances: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per PgInstance, by ordinal: what `pgop status` shows as a table and as JSON/YAML."""
    entries = {e["name"]: e for e in (cluster.get("status") or {}).get("instances") or []}
    instances = list(instances)
    current = (cluster.get("status") or {}).get("currentPrimary")
    primary_lsn = next(((i.get("status") or {}).get("lsn") for i in instances
                        if i["metadata"]["name"] == current), None)
    rows = []
    for inst in sorted(instances, key=lambda i: i["spec"].get("ordinal", 0)):
        name = inst["metadata"]["name"]
        st = inst.get("status") or {}
        entry = entries.get(name, {})
        # lag from the agents' own reports (the cluster status does not follow WAL positions)
        lag = lag_bytes(primary_lsn, st.get("lsn")) if name != current and primary_lsn else None
        rows.append({
            "name": name,
            "role": st.get("role") or inst["spec"].get("role"),
            "ready": bool(entry.get("ready", st.get("ready"))),
            "phase": st.get("phase"),
            "timeline": st.get("timeline"),
            "lsn": st.get("lsn"),
            "lagBytes": lag,
            "syncState": entry.get("syncState") or st.get("syncState"),
            # the newest sign of life: a status write or a liveness Lease renewal (pgop.kernel.liveness)
            "lastHeartbeat": _newest_beat(inst),
            "pod": st.get("pod"),
            "fenced": bool(inst["spec"].get("fenced")),
        })
    return rows


def cluster_table(cluster: dict[str, Any], instances: Iterable[dict[str, Any]],
                  now: datetime | None = None) -> Table:
    now = now or datetime.now(UTC)
    status = cluster.get("status") or {}
    spec = cluster.get("spec") or {}
    title = (f"PgCluster {cluster['metadata']['namespace']}/{cluster['metadata']['name']}: "
             f"{status.get('phase', 'Unknown')}, {status.get('readyInstances', 0)}/"
             f"{spec.get('instances', '?')} ready, primary {status.get('currentPrimary') or '-'}")
    table = Table(title=title, title_justify="left")
    for col in ("INSTANCE", "ROLE", "READY", "TIMELINE", "LSN", "LAG", "SYNC", "HEARTBEAT", "POD"):
        table.add_column(col)
    for row in instance_rows(cluster, instances):
        table.add_row(
            row["name"], row["role"] or "-",
            Text("yes", style="green") if row["ready"] else Text("no", style="red"),
            str(row["timeline"] if row["timeline"] is not None else "-"), row["lsn"] or "-",
            _bytes(row["lagBytes"]), row["syncState"] or "-", _age(row["lastHeartbeat"], now), row["pod"] or "-")
    return table


def conditions_table(obj: dict[str, Any]) -> Table:
    table = Table(title="Conditions", title_justify="left")
    for col in ("TYPE", "STATUS", "REASON", "MESSAGE"):
        table.add_column(col)
    for c in (obj.get("status") or {}).get("conditions") or []:
        style = "green" if (c["status"] == "True") != (c["type"] == "Degraded") else "yellow"
        table.add_row(c["type"], Text(c["status"], style=style), c.get("reason", ""),
                      c.get("message", ""))
    return table


def plan_table(actions: Iterable[Action], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("#", "ACTION", "KIND", "NAME", "WHY"):
        table.add_column(col)
    style = {"create": "green", "patch": "yellow", "delete": "red"}
    for n, a in enumerate(actions, 1):
        table.add_row(str(n), Text(a.verb, style=style.get(a.verb, "")), a.kind, a.name, a.reason)
    return table


def backups_table(backups, title: str) -> Table:
    """The base backups of a catalog (backup.catalog.Backup), oldest first."""
    table = Table(title=title)
    backups = list(backups)
    encrypted = any(getattr(b, "key_id", None) for b in backups)  # the column only when there is one
    for column in ("name", "started", "completed", "size", "in S3", "timeline", "begin LSN", "end LSN",
                   "begin WAL", *(("key id",) if encrypted else ())):
        table.add_column(column)
    for b in backups:
        compressed = next((f.get("compressedBytes") for f in b.files if f.get("compressedBytes")), None)
        table.add_row(b.backup_name, _moment(b.started_at), _moment(b.completed_at), _bytes(b.size_bytes),
                      _bytes(compressed), str(b.timeline or "-"), b.begin_lsn or "-", b.end_lsn or "-",
                      b.begin_wal or "-", *((b.key_id or "plain",) if encrypted else ()))
    return table


def _moment(moment: datetime | None) -> str:
    return rfc3339(moment) if moment else "-"
