"""kopf handlers of the backup controller: thin. Each PgBackup that is not finished is
reconciled on create, resume, a short timer and its pod's events, by pgop.backup.pgbackup (pure).
The schedule and retention of a PgCluster's backups run inside the cluster's reconcile, as a
cluster hook (pgop.runtime.apply), so the PgCluster status is written once per pass."""
from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import kopf

from pgop.backup import deletion
from pgop.backup.catalog import COMPLETED, FAILED
from pgop.backup.cluster_backups import RETENTION, merge_backup_status, reconcile_backups
from pgop.backup.pgbackup import plan_pgbackup
from pgop.backup.plan import plan_backups
from pgop.backup.pod import LABEL_BACKUP, backup_pod_name
from pgop.kernel.conditions import parse_time
from pgop.kernel.meta import COMPONENT_POSTGRES, LABEL_CLUSTER, LABEL_COMPONENT, LABEL_INSTANCE
from pgop.kernel.model import API_GROUP, Cluster
from pgop.kernel.schedule import ScheduleError, next_due
from pgop.runtime.apply import (
    apply_plan,
    kube,
    on_cluster_due,
    on_cluster_preview,
    on_cluster_reconcile,
    on_forget,
    record_events,
    warn_once,
)
from pgop.runtime.kube import NotFound
from pgop.runtime.metrics import measured

VERSION = "v1"
INTERVAL = 2.0

log = logging.getLogger("pgop.backup")


def _unfinished(status, **_) -> bool:
    return (status or {}).get("phase") not in (COMPLETED, FAILED)


def reconcile_backup(body, logger) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    cluster_name = (body.get("spec") or {}).get("cluster", "")
    client = kube()
    cluster = client.get("PgCluster", namespace, cluster_name)
    instances = client.list("PgInstance", namespace, {LABEL_CLUSTER: cluster_name})
    pod = client.get("Pod", namespace, backup_pod_name(name))
    postgres_pods = client.list("Pod", namespace, {LABEL_CLUSTER: cluster_name, LABEL_COMPONENT: COMPONENT_POSTGRES})
    by_instance = {p["metadata"]["labels"].get(LABEL_INSTANCE): p for p in postgres_pods}
    plan = plan_pgbackup(body, cluster, instances, pod, by_instance, datetime.now(UTC))
    apply_plan(body, plan, logger)
    if plan.status:
        try:
            client.merge_patch("PgBackup", namespace, name, {"status": plan.status}, "status")
        except NotFound:
            return
    record_events(body, plan.events)


@on_cluster_reconcile
def cluster_backups(body: Any, cluster: Cluster, status: dict[str, Any], logger: Any) -> None:
    """Schedule and retention of one PgCluster's backups, and what its status says of them."""
    if cluster.spec.backup is None or cluster.spec.backup.s3 is None:
        return
    now = datetime.now(UTC)
    plan, pgbackups = reconcile_backups(
        kube(), cluster, body["metadata"].get("creationTimestamp"), now,
        apply=lambda actions: apply_plan(body, actions, logger),
        warn=lambda reason, message: warn_once(body, reason, message))
    merge_backup_status(cluster, pgbackups, plan, status, now)


@on_cluster_preview
def preview_backups(body: Any, cluster: Cluster, status: dict[str, Any], reader: Any) -> bool:
    """cluster_backups' dry run on the indexes: True (and `status` completed) when no backup is due
    and retention drops none, so the pass needs no request; False hands it to a pass from the API."""
    if cluster.spec.backup is None or cluster.spec.backup.s3 is None:
        return True
    now = datetime.now(UTC)
    pgbackups = reader.backups(cluster.namespace)
    plan, _ = plan_backups(cluster, pgbackups, now, created_at=parse_time(body["metadata"].get("creationTimestamp")))
    if len(plan) or plan.events:
        return False
    merge_backup_status(cluster, pgbackups, plan, status, now)
    return True


@on_forget
def forget_retention(namespace: str | None, name: str) -> None:
    """A deleted PgCluster's retention outcome (RetentionJobs), if any, is dropped."""
    RETENTION.forget((namespace or "", name))


@on_cluster_due
def next_scheduled_backup(cluster: Cluster, now: datetime) -> datetime | None:
    """When the cluster's next scheduled backup is due: its steady passes wait no longer."""
    backup = cluster.spec.backup
    if backup is None or backup.s3 is None or not backup.schedule:
        return None
    try:
        return next_due(backup.schedule, now)
    except ScheduleError:
        return None  # the schedule is refused: the pass says so, with nothing to wait for


@kopf.on.create(API_GROUP, VERSION, "pgbackups")
@kopf.on.resume(API_GROUP, VERSION, "pgbackups", when=_unfinished)
@measured("PgBackup")
def backup_changed(body, logger, **_):
    reconcile_backup(body, logger)


@kopf.timer(API_GROUP, VERSION, "pgbackups", interval=INTERVAL, sharp=False, when=_unfinished)
@measured("PgBackup")
def backup_tick(body, logger, **_):
    reconcile_backup(body, logger)


@kopf.on.event("", "v1", "pods", labels={LABEL_BACKUP: kopf.PRESENT})
@measured("Pod")
def backup_pod_event(body, event, logger, **_):
    """Cuts the wait for the timer when a backup pod finishes."""
    if event.get("type") == "DELETED" or (body.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
        return
    owner = next((ref for ref in body["metadata"].get("ownerReferences") or [] if ref.get("kind") == "PgBackup"), None)
    if owner is None:
        return
    backup = kube().get("PgBackup", body["metadata"]["namespace"], owner["name"])
    if backup is not None and _unfinished(backup.get("status")):
        reconcile_backup(backup, logger)


def _deletes_from_s3(body, **_) -> bool:
    return deletion.deletes_from_s3(body)


def delete_backup_data(body, logger) -> None:
    """The finalizer of a PgBackup with deletionPolicy Delete (pgop.backup.deletion decides)."""
    from pgop.backup import pruning
    from pgop.backup.access import archive_of, retention_storage_for
    from pgop.backup.basebackup import list_backups
    from pgop.backup.s3 import describe_error
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    cluster_name = (body.get("spec") or {}).get("cluster", "")
    try:
        found = kube().get("PgCluster", namespace, cluster_name)
        present = found is not None and not (found.get("metadata") or {}).get("deletionTimestamp")
        cluster = Cluster.from_object(found) if present and found is not None else None
        s3 = cluster.spec.backup.s3 if cluster is not None and cluster.spec.backup is not None else None
        storage = layout = catalog = None
        if cluster is not None and s3 is not None:
            storage = retention_storage_for(kube(), namespace, s3, max_attempts=2, connect_timeout=3, read_timeout=30)
            layout = archive_of(cluster.name, s3, namespace, cluster.archive_layout)
            catalog = list_backups(storage, layout.path, cluster.name, layout.namespace)
        step = deletion.decide(name, cluster=cluster_name, cluster_present=present, catalog=catalog,
                               annotation=deletion.override(body), has_archive=not present or s3 is not None)
        if step.action == deletion.REMOVE and storage is not None and layout is not None:
            removed = pruning.Pruned()
            pruning.delete_backup(storage, layout, name, removed)
            step = deletion.Step(step.action, step.reason,
                                 f"{step.message}: {removed.objects} object(s), {removed.bytes} bytes")
    except Exception as error:  # S3 down, credentials wrong or gone: retry, but not forever
        problem = describe_error(error)
        if deletion.give_up(parse_time(meta.get("deletionTimestamp")), datetime.now(UTC)):
            kopf.warn(body, reason=deletion.REASON_GAVE_UP,
                      message=deletion.gave_up_message(name, (body.get("status") or {}).get("s3Path", ""), problem))
            return
        raise kopf.TemporaryError(f"removing backup {name} from S3: {problem}", delay=deletion.RETRY_DELAY) from None
    log.info("PgBackup %s/%s deleted: %s", namespace, name, step.message)
    (kopf.info if step.action == deletion.REMOVE else kopf.warn)(body, reason=step.reason, message=step.message)


@kopf.on.delete(API_GROUP, VERSION, "pgbackups", when=_deletes_from_s3)
@measured("PgBackup")
def backup_deleted(body, logger, **_):
    delete_backup_data(body, logger)
