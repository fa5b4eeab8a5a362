"""Reconcilers: read what is, plan (pure), apply, and compute status. Used by the kopf handlers
and, without the apply step, by `pgop plan`."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.rest import ApiException

from pgop.cluster.observe import ApiReader, ClusterReader, IndexReader
from pgop.cluster.plan import ObservedCluster, pin_archive_layout, plan_cluster, plan_instance, postgres_pods
from pgop.cluster.status import DEFAULT_HEARTBEAT_TIMEOUT, cluster_status, worth_writing
from pgop.kernel import hibernation, names
from pgop.kernel.actions import Plan
from pgop.kernel.conditions import parse_time, set_condition
from pgop.kernel.diagnose import instance_report
from pgop.kernel.model import Cluster, Instance
from pgop.runtime.kube import Kube
from pgop.specs.pvc import pvc_name


def observe_cluster(reader: ClusterReader | Kube, namespace: str, name: str,
                    cluster: Cluster | None = None) -> ObservedCluster:
    """What is, read by `reader` (a Kube: through the API)."""
    if isinstance(reader, Kube):
        reader = ApiReader(reader)
    account = names.agent_account(name)
    instances = reader.instances(namespace, name)
    recovery = cluster.spec.bootstrap.recovery if cluster is not None else None
    # Only needed to create the first instance: where the source's backups are (unless the spec
    # says) and in which archive layout. Always of this namespace, and read through the API.
    source = _api(reader).get("PgCluster", namespace, recovery.source) \
        if recovery is not None and not instances else None
    return ObservedCluster(
        instances=instances,
        services=reader.services(namespace, name),
        secrets=reader.secrets(namespace, name),
        pdb=reader.named("PodDisruptionBudget", namespace, names.pdb(name)),
        primary_pdb=reader.named("PodDisruptionBudget", namespace, names.primary_pdb(name)),
        service_account=reader.named("ServiceAccount", namespace, account),
        role=reader.named("Role", namespace, account),
        role_binding=reader.named("RoleBinding", namespace, account),
        recovery_source=source,
        # What failover judges the primary by, besides its PgInstance.
        pods=reader.postgres_pods(namespace, name),
        volumes=reader.volumes(namespace, name),
        cordoned_nodes=reader.cordoned_nodes(),
        user_secrets=user_secrets(_api(reader), namespace, cluster),
    )


def _api(reader: ClusterReader) -> Kube:
    """What is read by name through the API whichever the reader (rarely: the recovery source of a
    first instance, the Secrets spec.tls names, which carry no label of the cluster)."""
    return reader.kube


def user_secrets(kube: Kube, namespace: str, cluster: Cluster | None) -> dict[str, Any]:
    """The Secrets spec.tls names (None for one that does not exist)."""
    spec = cluster.spec.tls if cluster is not None else None
    if spec is None:
        return {}
    return {name: kube.get("Secret", namespace, name)
            for name in (spec.server_secret, spec.client_ca_secret) if name}


class NoPasswords:
    """The random source of a plan that is never applied (a pass planned from the indexes, which
    only asks whether there is anything to do): drawing 32 characters from the system's source for
    every credentials Secret was a tenth of such a pass. Never hand it to a plan that is applied."""

    def choice(self, seq):
        return seq[0]


def plan_for_cluster(reader: ClusterReader | Kube, body: dict[str, Any]) -> tuple[Cluster, ObservedCluster, Plan]:
    cluster = Cluster.from_object(body)
    observed = observe_cluster(reader, cluster.namespace, cluster.name, cluster)
    rng = NoPasswords() if isinstance(reader, IndexReader) else None
    plan = plan_cluster(cluster, observed, rng=rng, now=datetime.now(UTC))
    # The layout the plan pins (its first action, when not pinned yet): the hooks that run after
    # it (retention) must use the same.
    return pin_archive_layout(cluster, observed), observed, plan


def decision_changed(body: Mapping[str, Any], plan: Plan) -> bool:
    """Whether what failover decided (Plan.status) differs from the PgCluster's status."""
    current = body.get("status") or {}
    return any(current.get(key) != value for key, value in plan.status.items())


def needs_fresh_pass(body: Mapping[str, Any], plan: Plan, status: Mapping[str, Any]) -> bool:
    """Whether a pass planned from the indexes would do anything: an action, a failover decision, an
    Event, a status to write. Then it is planned again from the API (with the PgCluster's
    resourceVersion) and that plan is applied: the indexes may lag, nothing is decided from them."""
    return bool(len(plan) or plan.events or decision_changed(body, plan)
                or worth_writing(body.get("status") or {}, status))


def status_refresh(body: Mapping[str, Any], plan: Plan, status: Mapping[str, Any]) -> dict[str, Any] | None:
    """When a pass planned from the indexes finds nothing to do but a status to show (the
    instances' LSNs and heartbeats due for their periodic refresh: status.worth_writing; or a new
    phase, condition, readiness count, an instance's steady fields), the status patch for it: the
    keys that changed, written as they are with the PgCluster's resourceVersion as a precondition,
    instead of a pass through the API (a dozen reads; most of a new cluster's passes are such).
    None when there is an action, an Event or a failover decision: then a fresh pass decides. What
    it writes describes the cluster and decides nothing: the next pass corrects it, and a status
    another pass wrote meanwhile is never overwritten (the precondition fails)."""
    current = body.get("status") or {}
    if len(plan) or plan.events or decision_changed(body, plan) or not worth_writing(current, status):
        return None
    return {key: value for key, value in status.items() if current.get(key) != value}


def persist_decision(kube: Kube, body: Mapping[str, Any], plan: Plan) -> bool:
    """Writes what failover decided to PgCluster.status *before* any PgInstance is changed, with
    the resourceVersion read as a precondition: a reconcile that planned from an older status
    (another pass, another operator) gets a conflict instead of a second, different decision.
    False on a conflict: plan again from what is stored."""
    if not decision_changed(body, plan):
        return True
    meta = body.get("metadata") or {}
    patch: dict[str, Any] = {"status": plan.status}
    if meta.get("resourceVersion"):
        patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
    try:
        kube.merge_patch("PgCluster", meta.get("namespace", ""), meta.get("name", ""), patch, "status")
    except ApiException as e:
        if e.status == 409:
            return False
        raise
    return True


def status_for_cluster(cluster: Cluster, observed: ObservedCluster, plan: Plan) -> dict[str, Any]:
    now = datetime.now(UTC)
    instances = list(observed.instances)
    status = cluster_status(cluster, instances, now=now, waiting=plan.waiting, ha=plan.status or None,
                            pods=postgres_pods(observed))
    for judged in plan.conditions:  # e.g. CertificatesReady
        status["conditions"] = set_condition(status["conditions"], judged, now=now, generation=cluster.generation)
    if cluster.spec.backup is not None and cluster.spec.backup.wal_archiving:
        archiving = archiving_condition(instances) | {"observedGeneration": cluster.generation}
        status["conditions"] = set_condition(status["conditions"], archiving, now=now, generation=cluster.generation)
    return status


def archiving_condition(instances: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """ContinuousArchiving from the primary's pg_stat_archiver (its PgInstance status.archiver).

    True once a WAL file was archived and no failure came after that success; False with reason
    ArchivingFailing while the last attempt failed (S3 down, wrong credentials, a conflicting
    object): WAL then piles up in pg_wal until archiving succeeds again.
    """
    primary = next((i for i in instances if (i.get("spec") or {}).get("role") == "primary"
                    and (i.get("status") or {}).get("role") == "primary"), None)
    kind = {"type": "ContinuousArchiving"}
    if primary is None:
        return kind | {"status": "Unknown", "reason": "NoPrimary",
                       "message": "no running primary reports its WAL archiving"}
    name = (primary.get("metadata") or {}).get("name", "?")
    archiver = (primary.get("status") or {}).get("archiver")
    if not archiver:
        return kind | {"status": "Unknown", "reason": "NotReported",
                       "message": f"the primary {name} has not reported pg_stat_archiver yet"}
    archived_at = parse_time(archiver.get("lastArchivedTime"))
    failed_at = parse_time(archiver.get("lastFailedTime"))
    last_ok = (f"last archived {archiver.get('lastArchivedWal')} at {archiver.get('lastArchivedTime')}"
               if archived_at else "nothing archived yet")
    refusal = archiver.get("refusal") or {}
    if failed_at is not None and (archived_at is None or failed_at > archived_at) and refusal.get("reason"):
        # Refused on purpose (another database system's archive): the reason says what to do.
        return kind | {"status": "False", "reason": refusal["reason"],
                       "message": f"the primary {name} refuses to archive WAL ({archiver.get('lastFailedWal')} "
                                  f"waits in pg_wal, nothing is lost): {refusal.get('message', '')}"}
    if failed_at is not None and (archived_at is None or failed_at > archived_at):
        return kind | {"status": "False", "reason": "ArchivingFailing",
                       "message": f"the primary {name} fails to archive WAL: {archiver.get('failedCount', 0)} "
                                  f"failure(s), the last for {archiver.get('lastFailedWal')} at "
                                  f"{archiver.get('lastFailedTime')}; {last_ok}. WAL stays in pg_wal until "
                                  "archiving succeeds (see the postgres log for the wal-push error)"}
    if archived_at is None:
        return kind | {"status": "Unknown", "reason": "NoWalArchivedYet",
                       "message": f"the primary {name} has not archived a WAL file yet (one is archived "
                                  "when it fills or is switched)"}
    return kind | {"status": "True", "reason": "Archiving",
                   "message": f"the primary {name} archives WAL to S3: {archiver.get('archivedCount', 0)} "
                              f"archived, {last_ok}"}


def plan_for_instance(reader: ClusterReader | Kube, body: dict[str, Any]) -> tuple[Instance, Plan, dict | None]:
    """The plan for one instance and, when its agent does not report, a status patch saying why.
    `body` carries its Lease renewal beside it (the reader's `with_liveness`)."""
    if isinstance(reader, Kube):
        reader = ApiReader(reader)
    instance = Instance.from_object(body)
    pvc = reader.volume(instance.namespace, pvc_name(instance))
    pods = reader.instance_pods(instance.namespace, instance.name)
    plan = plan_instance(instance, pvc, pods)
    return instance, plan, _report_for_silent_agent(reader, instance, pvc, pods, plan)


def silent_agent(instance: Instance, now: datetime) -> bool:
    """Whether the agent has given no sign of life (a status write or a Lease renewal) within the
    heartbeat timeout (or never)."""
    beat = instance.status.alive_at
    return beat is None or (now - beat).total_seconds() > DEFAULT_HEARTBEAT_TIMEOUT


def _report_for_silent_agent(reader: ClusterReader, instance: Instance, pvc, pods, plan: Plan) -> dict | None:
    now = datetime.now(UTC)
    if not silent_agent(instance, now):
        return None  # the agent speaks for itself
    beat = instance.status.alive_at
    sc_exists = None
    if pvc is not None and (pvc.get("status") or {}).get("phase") in (None, "Pending"):
        sc = (pvc.get("spec") or {}).get("storageClassName")
        sc_exists = bool(sc and _api(reader).get("StorageClass", None, sc)) if reader.fresh else None
    phase, message = instance_report(pvc, pods, plan.waiting, sc_exists)
    if hibernation.is_hibernated(instance.raw_spec) and not pods:
        phase, message = "Hibernated", "no pod runs (the cluster is hibernated); its volume is kept"
    elif beat is not None:
        phase, message = "Unavailable", f"no heartbeat for {(now - beat).total_seconds():.0f}s; {message}"
    if instance.status.phase == phase and instance.status.message == message:
        return None
    return {"status": {"phase": phase, "message": message, "ready": False}}
