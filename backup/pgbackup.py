"""What the backup controller does about one PgBackup: (the PgBackup, its cluster, the instances,
the pods) -> actions and a status patch. Pure; pgop.backup.handlers reads, calls, applies.

Phases (the PgBackup's status.phase):
- Pending: not started. The controller picks the instance (pgop.backup.plan.choose_backup_target:
  a streaming replica, the primary if none is ready, per spec.target) and creates the backup
  pod against that instance's pod IP; the status becomes Running with the instance and startedAt
  in the same pass. With no ready instance it stays Pending and says so in status.message.
- Running: the pod streams to S3 and writes status.uploadedBytes as it goes (progress). When the
  pod Succeeded, its termination message is the catalog document it wrote to S3 last: its LSNs,
  WAL names, timeline and size become the status, phase Completed. When it Failed, the message
  (the error, or the tail of its log) becomes status.error, phase Failed. A pod that vanished
  before finishing fails the backup: a half-done upload is never counted as a backup.
- Completed and Failed are final: a new backup is a new PgBackup.

A PgBackup whose cluster does not exist, or has no spec.backup.s3, fails at once with the reason:
there is nothing to wait for that will come by itself.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pgop.backup.catalog import COMPLETED, FAILED, PENDING, RUNNING, Backup, CatalogError
from pgop.backup.plan import PREFER_REPLICA, choose_backup_target
from pgop.backup.pod import backup_pod_name, build_backup_pod
from pgop.kernel.actions import CREATE, NORMAL, WARNING, Action, Plan
from pgop.kernel.conditions import rfc3339 as timestamp
from pgop.kernel.diagnose import pod_problem
from pgop.kernel.model import PRIMARY, REASON_FOREIGN_ARCHIVE, Cluster, Instance

Obj = Mapping[str, Any]
ERROR_LIMIT = 2000  # status.error: the reason, not a whole log


METHOD_BASEBACKUP = "basebackup"


def requested(spec: Obj) -> tuple[str, str]:
    """(method, target) of a PgBackup's spec, with the CRD's defaults for what it leaves out."""
    return spec.get("method") or METHOD_BASEBACKUP, spec.get("target") or PREFER_REPLICA


def _finish(step: Plan, phase: str, reason: str, event_text: str, **fields: Any) -> Plan:
    """A final phase: the status fields, and the Event that says so."""
    step.status.update({"phase": phase, "message": None, **fields})
    step.event(NORMAL if phase == COMPLETED else WARNING, reason, event_text)
    return step


def _status(body: Obj) -> Obj:
    return body.get("status") or {}


def _container_terminated(pod: Obj) -> Obj:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated: Obj | None = (cs.get("state") or {}).get("terminated")
        if terminated:
            return terminated
    return {}


def _last_lines(text: str, limit: int = ERROR_LIMIT) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def completed_status(document: Backup) -> dict[str, Any]:
    """The PgBackup status fields of a finished backup (besides its phase), from its catalog document."""
    compressed = next((f.get("compressedBytes") for f in document.files if f.get("compressedBytes")), None)
    status = {
        "beginLSN": document.begin_lsn,
        "endLSN": document.end_lsn,
        "timeline": document.timeline,
        "beginWal": document.begin_wal,
        "endWal": document.end_wal,
        # What S3 holds (the CRD's meaning); the catalog's sizeBytes is the uncompressed tar.
        "sizeBytes": compressed if compressed is not None else document.size_bytes,
        "s3Path": document.s3_path,
        "completedAt": timestamp(document.completed_at) if document.completed_at else None,
        "error": None,
    }
    if document.started_at is not None:
        status["startedAt"] = timestamp(document.started_at)
    return status


def plan_pgbackup(backup: Obj, cluster: Obj | None, instances: Sequence[Obj], pod: Obj | None,
                  instance_pods: Mapping[str, Obj], now: datetime) -> Plan:
    """The step for one PgBackup. `pod` is its backup pod (or None); `instance_pods` the Postgres
    pods of the cluster by instance name (for their IPs)."""
    step = Plan()  # status: a merge patch of the PgBackup's status ({} = unchanged)
    meta = backup.get("metadata") or {}
    name = meta.get("name", "")
    status = _status(backup)
    phase = status.get("phase") or PENDING
    if phase in (COMPLETED, FAILED) or meta.get("deletionTimestamp"):
        return step
    if pod is not None:
        return _follow_pod(backup, pod, phase, step)
    if phase == RUNNING:
        return _finish(step, FAILED, "BackupPodGone", f"the backup pod {backup_pod_name(name)} is gone before it "
                           "finished; nothing of it counts as a backup", error="the backup pod disappeared "
                           "before it finished", completedAt=timestamp(now))
    return _start(backup, cluster, instances, instance_pods, now, step)


def _start(backup: Obj, cluster_body: Obj | None, instances: Sequence[Obj], instance_pods: Mapping[str, Obj],
           now: datetime, step: Plan) -> Plan:
    meta = backup.get("metadata") or {}
    spec = backup.get("spec") or {}
    cluster_name = spec.get("cluster", "")
    if cluster_body is None or (cluster_body.get("metadata") or {}).get("deletionTimestamp"):
        why = f"PgCluster {cluster_name} does not exist" if cluster_body is None else \
            f"PgCluster {cluster_name} is being deleted"
        return _finish(step, FAILED, "ClusterNotFound", why, error=why, completedAt=timestamp(now))
    cluster = Cluster.from_object(cluster_body)
    if cluster.spec.backup is None or cluster.spec.backup.s3 is None:
        why = f"PgCluster {cluster_name} has no spec.backup.s3: there is nowhere to store a backup"
        return _finish(step, FAILED, "NoBackupStorage", why, error=why, completedAt=timestamp(now))

    views = [Instance.from_object(i) for i in instances]
    _, where = requested(spec)
    target = choose_backup_target(views, where, now=now)
    if target is None:
        wanted = "primary" if where == "primary" else "instance"
        return _pending(step, backup, f"waiting for a ready {wanted} of PgCluster {cluster_name} to back up")
    pod = instance_pods.get(target.name)
    host = ((pod or {}).get("status") or {}).get("podIP")
    if not host:
        return _pending(step, backup, f"waiting for the pod of {target.name} to have an IP address")
    body = build_backup_pod(meta.get("name", ""), meta.get("uid", ""), target, host)
    role = "primary" if target.spec.role == PRIMARY else "replica"
    step.append(Action(CREATE, "Pod", body["metadata"]["name"], body["metadata"]["namespace"],
                       f"base backup {meta.get('name')} from {target.name} ({role})", body=body))
    step.status.update({"phase": RUNNING, "instance": target.name, "startedAt": timestamp(now),
                        "message": f"streaming a base backup of {target.name} ({role}) to S3", "error": None})
    step.event(NORMAL, "BackupStarted", f"base backup from {target.name} ({role})")
    return step


def _pending(step: Plan, backup: Obj, message: str) -> Plan:
    status = _status(backup)
    if status.get("phase") != PENDING or status.get("message") != message:
        step.status.update({"phase": PENDING, "message": message})
    return step


def _follow_pod(backup: Obj, pod: Obj, phase: str, step: Plan) -> Plan:
    status = _status(backup)
    pod_phase = (pod.get("status") or {}).get("phase")
    terminated = _container_terminated(pod)
    pod_name = (pod.get("metadata") or {}).get("name", "")
    if pod_phase == "Succeeded":
        try:
            document = Backup.from_json(terminated.get("message") or "")
        except CatalogError as error:
            why = f"the backup pod {pod_name} succeeded but its report cannot be read ({error}); see its log"
            return _finish(step, FAILED, "BackupReportUnreadable", why, error=why)
        final = completed_status(document)
        return _finish(step, COMPLETED, "BackupCompleted",
                           f"{final['sizeBytes']} bytes in S3 at {final['s3Path']}, consistent at "
                           f"{final['endLSN']} (timeline {final['timeline']})", **final)
    if pod_phase == "Failed":
        reason = _last_lines(terminated.get("message") or "") or \
            f"the backup pod {pod_name} failed ({terminated.get('reason') or 'see its log'})"
        why = REASON_FOREIGN_ARCHIVE if reason.startswith(REASON_FOREIGN_ARCHIVE + ":") else "BackupFailed"
        return _finish(step, FAILED, why, reason, error=reason,
                           completedAt=terminated.get("finishedAt"))
    if phase == PENDING:  # the pod exists but the status write that goes with it was lost
        step.status.update({"phase": RUNNING, "message": f"backup pod {pod_name} {pod_phase or 'created'}"})
    problem = pod_problem(pod)
    if problem and status.get("message") != problem:
        step.status["message"] = problem
    return step
