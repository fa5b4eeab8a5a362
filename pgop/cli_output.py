"""`-o table|json|yaml` of the listing commands: stable documents made by pure functions from the
data the tables show, and a console that never cuts a row when stdout is not a terminal.

The documents (docs/cli.md describes each field) carry `kind` and `apiVersion: pgop.io/cli/v1`;
fields are added, never renamed or dropped, within that version. Absent values are null.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import IO, Any

from pgop.kernel.actions import Action
from pgop.kernel.conditions import rfc3339

API_VERSION = "pgop.io/cli/v1"
# Wide enough for any row; rich pads a table only to its content, not to the console's width.
PIPED_WIDTH = 100_000


class Output(str, Enum):
    table = "table"
    json = "json"
    yaml = "yaml"


OUTPUT_HELP = "Output format: table (for people), json or yaml (for scripts; a stable shape, docs/cli.md)."


def console(file: IO[str] | None = None) -> Any:
    """A rich console for tables: the terminal's width on a terminal; piped or redirected, full
    rows (no wrapping, no ellipsis of instance names or LSNs) and no colour codes."""
    from rich.console import Console
    out = file or sys.stdout
    if out.isatty():
        return Console(file=out)
    return Console(file=out, width=PIPED_WIDTH, no_color=True, highlight=False, soft_wrap=False)


def dump(document: Any, output: Output) -> str:
    """The document as JSON or YAML text, ending in a newline."""
    if output == Output.yaml:
        import yaml
        return str(yaml.safe_dump(document, sort_keys=False, default_flow_style=False))
    return json.dumps(document, indent=2) + "\n"


def _header(kind: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind}


def conditions(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"type": c.get("type"), "status": c.get("status"), "reason": c.get("reason"),
             "message": c.get("message"), "lastTransitionTime": c.get("lastTransitionTime")}
            for c in (obj.get("status") or {}).get("conditions") or []]


def cluster_document(cluster: Mapping[str, Any], instances: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """`pgop status -o json|yaml`: kind ClusterStatus."""
    from pgop.cli_views import instance_rows  # rich: not loaded by `pgop agent`
    meta, spec, status = cluster.get("metadata") or {}, cluster.get("spec") or {}, cluster.get("status") or {}
    return {
        **_header("ClusterStatus"),
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "phase": status.get("phase"),
        "instances": spec.get("instances"),
        "readyInstances": status.get("readyInstances", 0),
        "currentPrimary": status.get("currentPrimary"),
        "targetPrimary": status.get("targetPrimary"),
        "lastBackup": status.get("lastBackup"),
        "firstRecoverabilityPoint": status.get("firstRecoverabilityPoint"),
        "hibernation": status.get("hibernation"),
        "members": instance_rows(dict(cluster), [dict(i) for i in instances]),
        "conditions": conditions(cluster),
    }


def plan_document(namespace: str, name: str, exists: bool, actions: Sequence[Action],
                  waiting: Sequence[str]) -> dict[str, Any]:
    """`pgop plan -o json|yaml`: kind ClusterPlan, one per PgCluster of the manifest."""
    return {
        **_header("ClusterPlan"),
        "namespace": namespace,
        "name": name,
        "exists": exists,
        "actions": [{"verb": a.verb, "kind": a.kind, "namespace": a.namespace, "name": a.name, "reason": a.reason}
                    for a in actions],
        "waiting": list(waiting),
    }


def plans_document(plans: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several ClusterPlans (a manifest of several PgClusters) as one document: kind List."""
    return {**_header("List"), "items": list(plans)}


def _moment(moment: datetime | None) -> str | None:
    return rfc3339(moment) if moment else None


def backups_document(cluster: str, location: str, backups: Iterable[Any], first: datetime | None,
                     last_wal: str | None) -> dict[str, Any]:
    """`pgop backups -o json|yaml`: kind BackupCatalog; `backups` are pgop.backup.catalog.Backup,
    oldest first."""
    items = []
    for b in backups:
        compressed = next((f.get("compressedBytes") for f in b.files if f.get("compressedBytes")), None)
        items.append({"name": b.backup_name, "phase": b.phase, "startedAt": _moment(b.started_at),
                      "completedAt": _moment(b.completed_at), "sizeBytes": b.size_bytes,
                      "compressedBytes": compressed, "timeline": b.timeline, "beginLSN": b.begin_lsn,
                      "endLSN": b.end_lsn, "beginWal": b.begin_wal, "endWal": b.end_wal, "s3Path": b.s3_path})
        if getattr(b, "key_id", None):  # encrypted: the id of the key a restore needs
            items[-1]["encryptionKeyId"] = b.key_id
    return {**_header("BackupCatalog"), "cluster": cluster, "location": location, "backups": items,
            "firstRecoverabilityPoint": _moment(first), "lastArchivedWal": last_wal}
