"""What `pgop mysqldb status` / `pgop status` shows of a MysqlDb. Pure; never a password.

A MysqlDb object holds no password anywhere (spec, status, annotations), so showing it is safe by
construction; this module only picks and orders what a person needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pgop.kernel.tenancy import default_consul_prefix, default_vault_path


def status_rows(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    endpoint = status.get("endpoint")
    rows = [
        ("MysqlDb", f"{namespace}/{name}"),
        ("Phase", status.get("phase") or "Pending"),
        ("Instance", status.get("dbInstanceIdentifier") or "-"),
        ("RDS status", status.get("dbInstanceStatus") or "-"),
        ("Endpoint", f"{endpoint}:{status.get('port')}" if endpoint else "-"),
        ("Engine", f"mysql {status.get('engineVersion') or spec.get('engineVersion', '?')}"),
        ("Class", status.get("instanceClass") or spec.get("instanceClass") or spec.get("instanceSize") or "-"),
        ("Storage", f"{status.get('allocatedStorage') or spec.get('storageGB', '?')} GB"),
        ("Secret (Vault)", status.get("vaultPath") or spec.get("vaultPath") or default_vault_path(namespace, name)),
        ("Config (Consul)", status.get("consulPrefix") or spec.get("consulPrefix")
         or default_consul_prefix(namespace, name)),
        ("Deletion", f"{spec.get('deletionPolicy', 'Snapshot')}"
                     f"{', protected' if spec.get('deletionProtection') else ''}"),
    ]
    if status.get("pendingModifications"):
        pending = ", ".join(f"{k}={v}" for k, v in sorted(status["pendingModifications"].items()))
        rows.append(("Pending", pending))
    if status.get("finalSnapshotIdentifier"):
        rows.append(("Final snapshot", status["finalSnapshotIdentifier"]))
    for c in status.get("conditions") or []:
        if c.get("status") == "True" and c.get("type") != "Ready" or c.get("type") == "Ready":
            rows.append((f"{c['type']}", f"{c.get('status')} {c.get('reason', '')}: {c.get('message', '')}".strip()))
    rows.append(("Last error", status.get("lastError") or "-"))
    return rows


def render(body: Mapping[str, Any]) -> str:
    rows = status_rows(body)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def status_document(body: Mapping[str, Any]) -> dict[str, Any]:
    """`pgop mysqldb status -o json|yaml`: kind MysqlDbStatus (docs/cli.md), the same facts as
    `status_rows`; never a password (the object holds none)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    return {
        "apiVersion": "pgop.io/cli/v1",
        "kind": "MysqlDbStatus",
        "namespace": namespace,
        "name": name,
        "phase": status.get("phase") or "Pending",
        "dbInstanceIdentifier": status.get("dbInstanceIdentifier"),
        "dbInstanceStatus": status.get("dbInstanceStatus"),
        "endpoint": status.get("endpoint"),
        "port": status.get("port"),
        "engineVersion": status.get("engineVersion") or spec.get("engineVersion"),
        "instanceClass": status.get("instanceClass") or spec.get("instanceClass"),
        "instanceSize": spec.get("instanceSize"),
        "storageGB": status.get("allocatedStorage") or spec.get("storageGB"),
        "vaultPath": status.get("vaultPath") or spec.get("vaultPath") or default_vault_path(namespace, name),
        "consulPrefix": status.get("consulPrefix") or spec.get("consulPrefix")
        or default_consul_prefix(namespace, name),
        "deletionPolicy": spec.get("deletionPolicy", "Snapshot"),
        "deletionProtection": bool(spec.get("deletionProtection")),
        "pendingModifications": status.get("pendingModifications") or {},
        "finalSnapshotIdentifier": status.get("finalSnapshotIdentifier"),
        "conditions": [{"type": c.get("type"), "status": c.get("status"), "reason": c.get("reason"),
                        "message": c.get("message")} for c in status.get("conditions") or []],
        "lastError": status.get("lastError"),
    }
