"""`pgop mysqldb rotate|snapshots|restore`: day-2 commands of MysqlDb (issue 16).

- rotate goes through the operator, like `pgop restart` (docs/cli.md): it sets the annotation
  pgop.io/rotate-password to the time of the request; the operator stores the new password in Vault
  (check-and-set), sends it to RDS and promotes it. The CLI never sees a password.
- snapshots reads RDS with the caller's own AWS credentials (boto3's usual chain; PGOP_RDS_ENDPOINT
  and AWS_DEFAULT_REGION as for the operator): snapshots are RDS's, not the cluster's.
- restore creates a new MysqlDb with the source's spec and spec.restoreFrom; the operator restores
  it and gives it its own password in Vault and config in Consul.

The pure parts (`restored_manifest`, `snapshot_rows`) are tested without a cluster.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import typer

from pgop.rds.spec import ROTATE_PASSWORD_ANNOTATION

# What a restored copy does not inherit: where the source's secret and config live (the copy gets
# its own), the source's restore, and what only concerns the source object.
_NOT_COPIED = ("vaultPath", "consulPrefix", "restoreFrom", "passwordRotation", "deletionProtection")


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def request_token(now: datetime) -> str:
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def restored_manifest(source: Mapping[str, Any], new_name: str, *, snapshot: str | None = None,
                      time: str | None = None) -> dict[str, Any]:
    """The MysqlDb `new_name` restored from `source` (a MysqlDb object): its spec, less what is the
    source's own, plus spec.restoreFrom: a snapshot, a point in time, or (neither) the latest
    restorable time of the source's instance."""
    if snapshot and time:
        raise ValueError("give --snapshot or --time, not both")
    meta = source.get("metadata") or {}
    identifier = (source.get("status") or {}).get("dbInstanceIdentifier")
    spec = {k: copy.deepcopy(v) for k, v in (source.get("spec") or {}).items() if k not in _NOT_COPIED}
    if snapshot:
        spec["restoreFrom"] = {"snapshotIdentifier": snapshot}
    else:
        if not identifier:
            raise ValueError(f"MysqlDb {meta.get('namespace')}/{meta.get('name')} has no DB instance "
                             "yet (status.dbInstanceIdentifier): restore from a snapshot with --snapshot")
        spec["restoreFrom"] = ({"sourceDbInstanceIdentifier": identifier, "restoreTime": time} if time
                               else {"sourceDbInstanceIdentifier": identifier, "useLatestRestorableTime": True})
    return {
        "apiVersion": "pgop.io/v1",
        "kind": "MysqlDb",
        "metadata": {"name": new_name, "namespace": meta.get("namespace"),
                     "labels": {"pgop.io/restored-from": str(meta.get("name", ""))}},
        "spec": spec,
    }


def snapshot_rows(snapshots: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(identifier, type, status, created) of each snapshot, oldest first."""
    return [(str(s.get("DBSnapshotIdentifier")), str(s.get("SnapshotType", "")), str(s.get("Status", "")),
             str(s.get("SnapshotCreateTime", ""))) for s in snapshots]


def _source(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    body = kube.get("MysqlDb", namespace, name)
    if body is None:
        _fail(f"MysqlDb {namespace}/{name} not found", 1)
    return dict(body)


def rotate(name: str, namespace: str) -> None:
    from pgop.runtime.kube import Kube
    kube = Kube()
    _source(kube, namespace, name)
    token = request_token(datetime.now(UTC))
    kube.merge_patch("MysqlDb", namespace, name,
                     {"metadata": {"annotations": {ROTATE_PASSWORD_ANNOTATION: token}}})
    typer.echo(f"password rotation of MysqlDb {namespace}/{name} requested ({ROTATE_PASSWORD_ANNOTATION}={token}): "
               "the operator stores the new password in Vault, sends it to RDS, then makes it the "
               "`password` applications read; status.passwordRotation.handledRequest shows when it is done")


def snapshots(name: str, namespace: str) -> None:
    from pgop.rds.aws import Rds, RdsError
    from pgop.runtime.kube import Kube
    body = _source(Kube(), namespace, name)
    identifier = (body.get("status") or {}).get("dbInstanceIdentifier")
    if not identifier:
        _fail(f"MysqlDb {namespace}/{name} has no DB instance yet (status.dbInstanceIdentifier)")
    rds = Rds.connect(region=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
                      endpoint_url=os.environ.get("PGOP_RDS_ENDPOINT") or None)
    try:
        found = rds.snapshots(identifier)
        window = rds.restorable_window(identifier)
    except RdsError as error:
        _fail(f"RDS: {error}")
    rows = [("SNAPSHOT", "TYPE", "STATUS", "CREATED"), *snapshot_rows(found)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        typer.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    if window:
        typer.echo(f"point in time: {window[0] or '?'} .. {window[1]} "
                   f"(pgop mysqldb restore {name} --to NEW --time T)")


def restore(name: str, namespace: str, new_name: str, snapshot: str | None, time: str | None) -> None:
    from pgop.runtime.kube import Kube
    kube = Kube()
    body = _source(kube, namespace, name)
    if kube.get("MysqlDb", namespace, new_name) is not None:
        _fail(f"MysqlDb {namespace}/{new_name} exists already: pick another --to", 2)
    try:
        manifest = restored_manifest(body, new_name, snapshot=snapshot, time=time)
    except ValueError as error:
        _fail(str(error), 2)
    kube.create(manifest)
    source = manifest["spec"]["restoreFrom"]
    typer.echo(f"MysqlDb {namespace}/{new_name} created from {', '.join(f'{k}={v}' for k, v in source.items())}; "
               f"`pgop mysqldb status {new_name}` follows it")
