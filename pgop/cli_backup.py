"""`pgop backup`, `pgop backups` and `pgop restore`: base backups and point-in-time restores from
the command line. The decisions are the operator's (PgBackup, bootstrap.recovery); these commands
write the objects, read the catalog from S3, and follow progress."""
from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn

import typer

from pgop.kernel import hibernation
from pgop.kernel.conditions import rfc3339
from pgop.kernel.model import S3Spec

FOLLOW_INTERVAL = 1.0


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _get_cluster(kube, namespace: str, name: str) -> dict[str, Any]:
    body = kube.get("PgCluster", namespace, name)
    if body is None:
        _fail(f"PgCluster {namespace}/{name} not found")
    return body


def manual_backup_name(cluster: str, now: datetime) -> str:
    """`<cluster>-<YYYYMMDDHHMMSS>`: scheduled backups use minutes, so the two never collide."""
    return f"{cluster}-{now.astimezone(UTC):%Y%m%d%H%M%S}"


def backup_manifest(cluster: str, namespace: str, name: str, target: str,
                    deletion_policy: str = "Retain") -> dict[str, Any]:
    """`deletion_policy`: the cluster's spec.backup.deletionPolicy."""
    from pgop.kernel.meta import cluster_labels
    from pgop.kernel.model import API_VERSION
    return {"apiVersion": API_VERSION, "kind": "PgBackup",
            "metadata": {"name": name, "namespace": namespace, "labels": cluster_labels(cluster)},
            "spec": {"cluster": cluster, "method": "basebackup", "target": target,
                     "deletionPolicy": deletion_policy}}


def start_backup(cluster: str, namespace: str, name: str | None, target: str, wait: bool) -> None:
    from pgop.runtime.kube import Kube
    kube = Kube()
    body = _get_cluster(kube, namespace, cluster)
    if not (body.get("spec") or {}).get("backup", {}).get("s3"):
        _fail(f"PgCluster {namespace}/{cluster} has no spec.backup.s3: there is nowhere to store a backup", 2)
    if hibernation.phase_of(body.get("status") or {}) or \
            hibernation.requested((body.get("metadata") or {}).get("annotations") or {}):
        _fail(f"PgCluster {namespace}/{cluster} is hibernated: no Postgres runs to back up "
              f"(`pgop hibernate off {cluster}` first)")
    name = name or manual_backup_name(cluster, datetime.now(UTC))
    policy = ((body.get("spec") or {}).get("backup") or {}).get("deletionPolicy") or "Retain"
    created = kube.create(backup_manifest(cluster, namespace, name, target, policy))
    if created is None:
        _fail(f"PgBackup {namespace}/{name} already exists")
    typer.echo(f"PgBackup {namespace}/{name} created")
    if wait:
        final = follow_backup(kube, namespace, name)
        if final.get("phase") != "Completed":
            _fail(f"backup {name} failed: {final.get('error') or final.get('phase')}")


def follow_backup(kube, namespace: str, name: str, timeout: float = 24 * 3600) -> dict[str, Any]:
    """Show a progress bar of the bytes uploaded until the backup finishes; its final status."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeElapsedColumn()]
    deadline = time.monotonic() + timeout
    with Progress(*columns, transient=False, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(f"{name}: Pending", total=None)
        status: dict[str, Any] = {}
        last_phase = None
        while time.monotonic() < deadline:
            body = kube.get("PgBackup", namespace, name)
            if body is None:
                _fail(f"PgBackup {namespace}/{name} was deleted")
            status = body.get("status") or {}
            phase = status.get("phase") or "Pending"
            where = f" from {status['instance']}" if status.get("instance") else ""
            progress.update(task, description=f"{name}: {phase}{where}",
                            completed=status.get("uploadedBytes") or 0)
            if phase != last_phase and not sys.stderr.isatty():
                typer.echo(f"{name}: {phase}{where}" + (f" ({status['message']})" if status.get("message") else ""))
                last_phase = phase
            if phase in ("Completed", "Failed"):
                if phase == "Completed":
                    size = status.get("sizeBytes") or 0
                    progress.update(task, total=size, completed=size)
                break
            time.sleep(FOLLOW_INTERVAL)
    if status.get("phase") == "Completed":
        typer.echo(f"{name}: Completed, {status.get('sizeBytes')} bytes at {status.get('s3Path')}, "
                   f"LSN {status.get('beginLSN')} .. {status.get('endLSN')} on timeline {status.get('timeline')}")
    return status


# ------------------------------------------------------------------------------ the catalog

def s3_location(kube, namespace: str, cluster: str, bucket: str | None, path: str | None,
                endpoint: str | None, credentials_secret: str | None) -> S3Spec:
    """Where a cluster's archive is: the options, else the PgCluster's spec.backup.s3."""
    if bucket:
        if not credentials_secret:
            _fail("--s3-credentials-secret is needed with --s3-bucket", 2)
        return S3Spec(bucket=bucket, credentials_secret=credentials_secret, path=path or None,
                      endpoint=endpoint or None)
    body = kube.get("PgCluster", namespace, cluster)
    if body is None:
        _fail(f"PgCluster {namespace}/{cluster} not found: give its archive with --s3-bucket, --s3-path, "
              "--s3-endpoint and --s3-credentials-secret", 2)
    from pgop.kernel.model import Cluster
    spec = Cluster.from_object(body).spec
    if spec.backup is None or spec.backup.s3 is None:
        _fail(f"PgCluster {namespace}/{cluster} has no spec.backup.s3", 2)
    return spec.backup.s3


def read_catalog(kube, namespace: str, cluster: str, s3: S3Spec):
    """The catalog in the layout the PgCluster pins; for a cluster that is gone, the namespaced
    location if it has backups, else the legacy one (never another namespace's)."""
    from pgop.backup.access import archive_of, storage_for
    from pgop.backup.basebackup import list_backups
    from pgop.kernel.model import ARCHIVE_LAYOUTS, Cluster
    storage = storage_for(kube, namespace, s3, max_attempts=2, connect_timeout=5)
    body = kube.get("PgCluster", namespace, cluster)
    layouts = [Cluster.from_object(body).archive_layout] if body is not None else list(ARCHIVE_LAYOUTS)
    found = []
    for name in layouts:
        layout = archive_of(cluster, s3, namespace, name)
        found.append((layout, list_backups(storage, layout.path, cluster, layout.namespace)))
        if found[-1][1]:
            break
    layout, backups = next((f for f in found if f[1]), found[0])
    return storage, layout, backups


def last_archived_wal(storage, layout) -> str | None:
    last = None
    for item in storage.list(layout.wal_root):
        name = layout.name_of_key(item.key)
        if name is not None and len(name) == 24:
            last = max(last or name, name)
    return last


def list_catalog(cluster: str, namespace: str, s3: S3Spec, kube, output: str = "table") -> None:
    from pgop.backup.catalog import first_recoverability_point
    from pgop.cli_output import Output, backups_document, dump
    from pgop.cli_output import console as make_console
    from pgop.cli_views import backups_table
    storage, layout, backups = read_catalog(kube, namespace, cluster, s3)
    first = first_recoverability_point(backups)
    wal = last_archived_wal(storage, layout)
    location = f"s3://{storage.bucket}/{layout.root}"
    if output != Output.table:
        typer.echo(dump(backups_document(cluster, location, backups, first, wal), Output(output)), nl=False)
        return
    console = make_console()  # piped: whole rows, no ellipses
    console.print(backups_table(backups, f"Base backups of {cluster} in {location}"))
    console.print(f"first recoverability point: {rfc3339(first)}" if first else
                  "first recoverability point: none (no completed backup)")
    console.print(f"last archived WAL segment: {wal or 'none'}")


# ------------------------------------------------------------------------------ restore

def restore_manifest(source_name: str, source: dict[str, Any], new: str, namespace: str, *, target_time: str | None,
                     target_lsn: str | None, backup: str | None, s3: S3Spec | None,
                     instances: int | None, target_timeline: str | None = None) -> dict[str, Any]:
    """A PgCluster like `source` (the source PgCluster, {} when it is gone) that restores the
    backups of `source_name`."""
    spec: dict[str, Any] = {}
    if source:
        keep = ("instances", "postgresVersion", "image", "synchronousReplicas", "synchronousMode", "storage",
                "resources", "parameters", "backup")
        spec = {k: v for k, v in (source.get("spec") or {}).items() if k in keep}
    recovery: dict[str, Any] = {"source": source_name}
    if backup:
        recovery["backup"] = backup
    if target_time:
        recovery["targetTime"] = target_time
    if target_lsn:
        recovery["targetLSN"] = target_lsn
    if target_timeline:
        recovery["targetTimeline"] = int(target_timeline) if target_timeline.isdigit() else target_timeline
    if s3 is not None:
        recovery["s3"] = s3.to_dict()
    spec["bootstrap"] = {"recovery": recovery}
    if instances is not None:
        spec["instances"] = instances
    spec.setdefault("storage", {"size": "1Gi"})
    return {"apiVersion": "pgop.io/v1", "kind": "PgCluster",
            "metadata": {"name": new, "namespace": namespace}, "spec": spec}


def restore_key_problem(backup: Any, s3: S3Spec, secret: Mapping[str, Any] | None) -> str | None:
    """Why the key of `s3.encryption` (its Secret as the API returns it, None when not there)
    cannot decrypt `backup` (a catalog.Backup), or None (pure). A Secret that cannot be read is
    not judged here: the restore itself refuses a wrong key, with the same message."""
    import base64

    from pgop.backup.encryption import EncryptionError, Key, Keyring, key_mismatch
    if not backup.key_id:
        return None
    if not s3.encryption_key_secret:
        return key_mismatch(f"backup {backup.backup_name}", backup.key_id, None)
    value = ((secret or {}).get("data") or {}).get(s3.encryption_key)
    if secret is None or not value:
        return (f"backup {backup.backup_name} is encrypted (key id {backup.key_id}) and the Secret "
                f"{s3.encryption_key_secret} has no key {s3.encryption_key!r}")
    try:
        key = Key.from_bytes(base64.b64decode(value), f"the key {s3.encryption_key!r} of Secret "
                             f"{s3.encryption_key_secret}")
    except EncryptionError as error:
        return str(error)
    return key_mismatch(f"backup {backup.backup_name}", backup.key_id, Keyring((key,)))


def restore(cluster: str, new: str, namespace: str, *, target_time: str | None, target_lsn: str | None,
            backup: str | None, target_timeline: str | None = None, bucket: str | None, path: str | None, endpoint: str | None,
            credentials_secret: str | None, instances: int | None, dry_run: bool, wait: bool,
            timeout: float) -> None:
    import yaml

    from pgop.backup.catalog import RestoreTargetError, choose_backup
    from pgop.runtime.kube import Kube
    if new == cluster:
        _fail(f"refusing to restore {cluster} into itself: restore into a new cluster (--to another name), "
              "check it, then move the applications over", 2)
    if target_time and target_lsn:
        _fail("give at most one of --time and --lsn", 2)
    if target_timeline and not (target_timeline.isdigit() and int(target_timeline) >= 1) \
            and target_timeline not in ("latest", "current"):
        _fail(f"--timeline {target_timeline!r}: expected latest, current or a timeline number", 2)
    kube = Kube()
    if kube.get("PgCluster", namespace, new) is not None:
        _fail(f"PgCluster {namespace}/{new} already exists: restore into a new name", 2)
    source = kube.get("PgCluster", namespace, cluster) or {}
    s3 = s3_location(kube, namespace, cluster, bucket, path, endpoint, credentials_secret)
    explicit = s3 if bucket else None  # else the operator reads the source's spec.backup.s3
    # Refuse here what the restore would fail on, with the range that is there.
    try:
        _, _, backups = read_catalog(kube, namespace, cluster, s3)
        chosen = choose_backup(backups, target_time, target_lsn, name=backup, now=datetime.now(UTC))
    except RestoreTargetError as error:
        _fail(f"cannot restore {cluster}: {error}", 2)
    # An encrypted backup: is the key the new cluster gets (the source's spec.backup.s3.encryption)
    # the right one? (--s3-* names no key: the manifest is then for the user to complete.)
    if chosen.key_id and explicit is None:
        try:
            secret = kube.get("Secret", namespace, s3.encryption_key_secret) if s3.encryption_key_secret else None
            problem = restore_key_problem(chosen, s3, secret)
        except Exception:  # e.g. no right to read the Secret: the restore itself checks the key
            problem = None
        if problem:
            _fail(f"cannot restore {cluster}: {problem}", 2)
    manifest = restore_manifest(cluster, source, new, namespace, target_time=target_time, target_lsn=target_lsn,
                                backup=backup, s3=explicit, instances=instances, target_timeline=target_timeline)
    if dry_run:
        typer.echo(yaml.safe_dump(manifest, sort_keys=False), nl=False)
        return
    kube.create(manifest)
    typer.echo(f"PgCluster {namespace}/{new} created: restoring {cluster} from base backup {chosen.backup_name}"
               + (f" to {target_time or target_lsn}" if target_time or target_lsn else " to the end of its archive"))
    if wait:
        follow_cluster(kube, namespace, new, timeout)


def restore_progress_line(instance: str, restore: dict[str, Any] | None) -> str | None:
    """One line of a PgInstance's status.restore (pure): phase, bytes of the base backup, WAL
    restored, replay position, target; the message of a failed or retried attempt."""
    if not restore or not restore.get("phase"):
        return None
    parts = [f"{instance}: restore {restore['phase']}"]
    done, total = restore.get("bytesRestored"), restore.get("bytesTotal")
    if done is not None:
        size = f"{done / 2**20:,.0f} MiB"
        if total:
            size += f" of {total / 2**20:,.0f} MiB ({min(100.0, 100.0 * done / total):.0f}%)"
        parts.append(f"base backup {size}")
    if restore.get("walFilesRestored"):
        parts.append(f"{restore['walFilesRestored']} WAL files restored, last {restore.get('lastWal')}")
    if restore.get("replayLSN"):
        parts.append(f"replayed to {restore['replayLSN']}")
    if restore.get("consistentAt"):
        parts.append(f"consistent at {restore['consistentAt']}")
    if restore.get("target"):
        parts.append(f"target {restore['target']}")
    if (restore.get("attempt") or 1) > 1:
        parts.append(f"attempt {restore['attempt']}")
    line = ", ".join(parts)
    if restore.get("message") and restore["phase"] in ("Failed", "Retrying"):
        line += f": {restore['message']}"
    return line


def follow_cluster(kube, namespace: str, name: str, timeout: float) -> None:
    """Print what the restore is doing until the new cluster is Ready. `timeout` counts from the
    last change seen: a big restore that keeps making progress is followed to its end."""
    from pgop.kernel.meta import LABEL_CLUSTER
    deadline = time.monotonic() + timeout
    said = None
    while time.monotonic() < deadline:
        body = kube.get("PgCluster", namespace, name) or {}
        status = body.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        progressing = conditions.get("Progressing") or {}
        lines = [f"{name}: {status.get('phase') or 'Pending'}"]
        if progressing.get("status") == "True" and progressing.get("message"):
            lines[0] += f" ({progressing['message']})"
        try:
            instances = kube.list("PgInstance", namespace, {LABEL_CLUSTER: name})
        except Exception:  # progress is a courtesy
            instances = []
        for instance in instances:
            if ((instance.get("status") or {}).get("restore") or {}).get("phase") == "Completed" \
                    and status.get("phase") == "Ready":
                continue
            shown = restore_progress_line((instance.get("metadata") or {}).get("name", "?"),
                                          (instance.get("status") or {}).get("restore"))
            if shown:
                lines.append(shown)
        line = "\n".join(lines)
        if line != said:
            typer.echo(line)
            said = line
            deadline = time.monotonic() + timeout
        if status.get("phase") == "Ready" and status.get("readyInstances") == (body.get("spec") or {}).get("instances"):
            return
        time.sleep(FOLLOW_INTERVAL * 2)
    _fail(f"{name} is not Ready after {timeout:.0f}s; see `pgop status {name}`")
