"""kopf handlers of the backup controller: thin. Each PgBackup that is not finished is
reconciled on create, resume, a short timer and its pod's events, by backup.pgbackup (pure)."""
from __future__ import annotations

import logging
from datetime import UTC, datetime

import kopf

from pgop.backup.catalog import COMPLETED, FAILED
from pgop.backup.pgbackup import plan_pgbackup
from pgop.backup.pod import LABEL_BACKUP, backup_pod_name
from pgop.cluster.handlers import apply_plan, kube
from pgop.kernel.meta import COMPONENT_POSTGRES, LABEL_CLUSTER, LABEL_COMPONENT, LABEL_INSTANCE
from pgop.kernel.model import API_GROUP
from pgop.runtime.kube import NotFound

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
    step = plan_pgbackup(body, cluster, instances, pod, by_instance, datetime.now(UTC))
    apply_plan(body, step.plan, logger)
    if step.status:
        try:
            client.merge_patch("PgBackup", namespace, name, {"status": step.status}, "status")
        except NotFound:
            return
    if step.event:
        kind, reason, message = step.event
        (kopf.info if kind == "Normal" else kopf.warn)(body, reason=reason, message=message)
        log.info("%s/%s: %s: %s", namespace, name, reason, message)


@kopf.on.create(API_GROUP, VERSION, "pgbackups")
@kopf.on.resume(API_GROUP, VERSION, "pgbackups", when=_unfinished)
def backup_changed(body, logger, **_):
    reconcile_backup(body, logger)


@kopf.timer(API_GROUP, VERSION, "pgbackups", interval=INTERVAL, sharp=False, when=_unfinished)
def backup_tick(body, logger, **_):
    reconcile_backup(body, logger)


@kopf.on.event("", "v1", "pods", labels={LABEL_BACKUP: kopf.PRESENT})
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
