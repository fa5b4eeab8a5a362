"""kopf handlers for PgCluster and PgInstance: thin. Each reconciles on create, update, resume, the
watch events that gate the next step, and timed passes at the pace pgop.cluster.pace sets
(level-triggered: whatever changed, the next pass sees it), by planning with the pure functions of
pgop.cluster.plan and applying the actions in order (pgop.runtime.apply)."""
from __future__ import annotations

import logging
import random
import threading
from collections import defaultdict
from datetime import UTC, datetime

import kopf
from kubernetes.client.rest import ApiException

from pgop.cluster import controller, indexes, observe, pace
from pgop.cluster import publish as cluster_publish
from pgop.cluster.failover import pod_state
from pgop.cluster.status import worth_writing
from pgop.kernel import names, tenancy
from pgop.kernel.actions import Event
from pgop.kernel.conditions import find_condition
from pgop.kernel.meta import COMPONENT_POSTGRES, LABEL_CLUSTER, LABEL_COMPONENT, LABEL_INSTANCE
from pgop.kernel.model import API_GROUP, Cluster
from pgop.kernel.readiness import pod_ready
from pgop.runtime import paced
from pgop.runtime.apply import (
    apply_plan,
    cluster_due,
    cluster_hooks,
    cluster_previews,
    forget,
    kube,
    record_events,
    remember,
)
from pgop.runtime.coalesce import Coalescer
from pgop.runtime.kube import NotFound
from pgop.runtime.metrics import measured
from pgop.runtime.publish import PublishError

VERSION = "v1"

log = logging.getLogger("pgop.cluster")


# ------------------------------------------------------------------------------------- PgCluster

# One reconcile of a cluster at a time in this process: the timed pass, the spec handler and the pod
# and PgInstance shortcuts all reconcile the same PgCluster, and two passes deciding a failover
# from slightly different views must not both act. (Across processes, the resourceVersion
# precondition of controller.persist_decision does the same.)
_cluster_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)

# Events that repeat while a failover waits: said once per distinct message.
_REPEATING = {"FailoverWaitingForQuorum"}


def reconcile_cluster(body, logger) -> dict | None:
    """Applies the plan; returns the status to write, or None when it is unchanged."""
    return _cluster_pass(body, logger)[0]


def _cluster_pass(body, logger) -> tuple[dict | None, float | pace.Steady]:
    """reconcile_cluster's pass, and the pace of the cluster's next timed pass (pgop.cluster.pace):
    steady only when the pass planned from the indexes found nothing to do. A pass that finds the
    cluster moving (whatever started it: an event, a spec change) brings the timed pass forward.

    A pass first plans from the indexes and `body` (as kopf's watch last saw it): when that finds
    nothing to do, it is done without a request, and when it finds only a status to show
    (controller.status_refresh), with one status PATCH. Otherwise (an action, an Event, a failover
    decision), or for a cluster whose hooks need the stored status (backups), it plans again from
    the PgCluster as stored and the API."""
    meta = body["metadata"]
    key = (meta.get("namespace", ""), meta["name"])
    status, wait = _cluster_pass_once(body, logger, key)
    if not isinstance(wait, pace.Steady):
        paced.hurry(("cluster", key), wait)
    return status, wait


def _cluster_pass_once(body, logger, key: tuple[str, str]) -> tuple[dict | None, float | pace.Steady]:
    namespace, name = key
    with _cluster_locks[(namespace, name)]:
        reader = indexes.reader(kube())
        if not reader.fresh:
            _passed[("cluster", key)] = _cluster_view(key, reader)  # before planning: later news is new
        if not reader.fresh and body.get("spec"):
            quiet, refresh, instances, cluster = _quiet(body, reader)
            if quiet:
                if refresh and not _refresh_status(body, refresh):
                    return None, pace.SHORTEST  # once the watch brought the status that won
                now = datetime.now(UTC)
                return None, pace.next_pass_in(pace.cluster_steady(body, instances), pace.heartbeats(instances),
                                               now, jitter=random.random(), due=cluster_due(cluster, now))
        # Plan from the stored status, not from kopf's copy, which may predate the last decision
        # another pass of this process wrote.
        fresh = kube().get("PgCluster", namespace, name)
        if fresh is None or fresh["metadata"].get("deletionTimestamp") and not body.get("spec"):
            return None, pace.FAST
        return _reconcile_cluster(fresh, logger), pace.FAST


def _quiet(body, reader) -> tuple[bool, dict | None, list, Cluster]:
    """Whether the indexes say this cluster needs no pass through the API (a valid spec, nothing
    to act on, no decision), the status patch that is due, if any (controller.status_refresh), its
    PgInstances as the indexes hold them, and the cluster."""
    cluster, observed, plan = controller.plan_for_cluster(reader, body)
    instances = list(observed.instances)
    if cluster.validate():
        return False, None, instances, cluster
    status = controller.status_for_cluster(cluster, observed, plan)
    for preview in cluster_previews():  # e.g. the backup schedule and retention (pgop.backup.handlers)
        if not preview(body, cluster, status, reader):
            return False, None, instances, cluster
    if not controller.needs_fresh_pass(body, plan, status):
        return True, None, instances, cluster
    refresh = controller.status_refresh(body, plan, status)
    if refresh is not None and cluster.spec.backup is not None and cluster.spec.backup.s3 is not None:
        _announce_archiving(body, status)  # as a fresh pass would: its Events follow the condition
    return refresh is not None, refresh, instances, cluster


# What each object's last pass saw (pace.view_of), for its looks to compare with.
_passed: dict[tuple[str, tuple[str, str]], tuple] = {}


def _cluster_view(key: tuple[str, str], reader, body=None, instances=None) -> tuple:
    """pace.view_of the cluster, and the cordoned Nodes (a drain: a switchover off the node).
    `body` and `instances` when the caller read them already from the indexes."""
    body = body if body is not None else indexes.indexed("pgop_clusters", *key)
    instances = instances if instances is not None else reader.instances(*key)
    return (pace.view_of([body] if body else [], instances, reader.postgres_pods(*key),
                         reader.volumes(*key)), reader.cordoned_nodes())


def cluster_look(key: tuple[str, str]) -> float | None:
    """A steady cluster looked at between its passes (pgop.runtime.paced: in kopf's event loop, on
    the indexes and the Leases watched, no request): seconds until its next look, or None when a
    pass is due now (it is not steady any more, an agent went silent, or its view changed since
    its last pass: pace.view_of)."""
    body = indexes.indexed("pgop_clusters", *key)
    reader = indexes.reader(kube())
    if body is None or reader.fresh or body["metadata"].get("deletionTimestamp"):
        return None
    instances = reader.instances(*key)
    if _cluster_view(key, reader, body, instances) != _passed.get(("cluster", key)):
        return None
    return pace.look_again_in(pace.cluster_steady(body, instances), pace.heartbeats(instances), datetime.now(UTC))


def _refresh_status(body, status: dict) -> bool:
    """Write `status` (controller.status_refresh) over the status kopf's watch last saw, only if it is
    still the one stored (resourceVersion): a newer status (another pass's decision) is left as
    it is, and the next pass plans from it. False when it was newer: two passes close together
    (an agent's report and its pod's readiness) each computed a status, and the one that lost
    had the later news, so the caller asks for a pass soon, not at the timed pace."""
    meta = body["metadata"]
    if not meta.get("resourceVersion"):
        return True
    patch = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status}
    try:
        kube().merge_patch("PgCluster", meta.get("namespace", ""), meta["name"], patch, "status")
    except NotFound:
        pass
    except ApiException as error:
        if error.status != 409:
            raise
        return False
    return True


def _record(body, events: list[Event]) -> None:
    fresh = []
    for event in events:
        if event.reason in _REPEATING:
            if remember(body, "event:" + event.reason) == event.message:
                continue
            remember(body, "event:" + event.reason, event.message)
        fresh.append(event)
    record_events(body, fresh)


def _reconcile_cluster(body, logger) -> dict | None:
    cluster, observed, plan = controller.plan_for_cluster(indexes.acting_reader(kube()), body)  # it acts
    errors = cluster.validate()
    if errors:
        message = "; ".join(f"{path}: {reason}" for path, reason in errors)
        if body.get("status", {}).get("phase") != "Failed":
            kopf.warn(body, reason="InvalidSpec", message=message)
        return {"phase": "Failed",
                "conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec",
                                "message": message, "observedGeneration": cluster.generation}]}
    # What failover decided is stored before any PgInstance changes (an operator restarted
    # midway continues from it); on a conflict, the next pass plans from what is stored.
    if not controller.persist_decision(kube(), body, plan):
        logger.info("PgCluster status changed while planning; planning again on the next pass")
        return None
    apply_plan(body, plan, logger)
    _record(body, plan.events)
    status = controller.status_for_cluster(cluster, observed, plan)
    for hook in cluster_hooks():  # e.g. the backup schedule and retention (pgop.backup.handlers)
        hook(body, cluster, status, logger)
    if cluster.spec.backup is not None and cluster.spec.backup.s3 is not None:
        _announce_archiving(body, status)
    return status if worth_writing(body.get("status") or {}, status) else None


def _announce_archiving(body, status: dict) -> None:
    """A Warning Event when WAL archiving starts failing (once per failing stretch), and a Normal
    one when it works again: pg_wal fills while it fails, so someone must hear of it."""
    archiving = find_condition(status.get("conditions"), "ContinuousArchiving")
    if archiving is None or archiving.get("status") == "Unknown":
        return
    failing = archiving.get("status") == "False"
    since = archiving.get("lastTransitionTime", "")
    if remember(body, "archiving") is None and not failing:
        remember(body, "archiving", f"ok {since}")  # first sight of a healthy archiver: nothing to say
        return
    mark = f"{'failing' if failing else 'ok'} {since}"
    if remember(body, "archiving") == mark:
        return
    remember(body, "archiving", mark)
    if failing:
        kopf.warn(body, reason="ArchivingFailing", message=archiving.get("message", ""))
    else:
        kopf.info(body, reason="ArchivingRecovered", message=archiving.get("message", ""))


@kopf.on.create(API_GROUP, VERSION, "pgclusters")
@kopf.on.update(API_GROUP, VERSION, "pgclusters", field="spec")
@kopf.on.resume(API_GROUP, VERSION, "pgclusters")
@measured("PgCluster")
def cluster_changed(body, patch, logger, **_):
    status = reconcile_cluster(body, logger)
    if status:
        patch.status.update(status)
    publish(body)


def publish(body) -> None:
    """spec.publish: the app credentials to Vault, the connection config to Consul. On create,
    update and resume only: the password never changes on its own, and the connection changes
    only with the spec."""
    cluster = Cluster.from_object(body)
    if cluster.spec.publish is None or cluster.validate():
        return
    problem = cluster_publish.namespace_problem(cluster)
    if problem:  # the Degraded condition says it too (pgop.cluster.status)
        kopf.warn(body, reason=tenancy.REASON, message=problem)
        return
    secret = kube().get("Secret", cluster.namespace, names.app_secret(cluster.name))
    if secret is None:
        raise kopf.TemporaryError("the app Secret is not there yet", delay=2)
    try:
        vault_path, consul_prefix = cluster_publish.publish_cluster(cluster, secret)
    except PublishError as e:  # its text never holds a secret
        kopf.warn(body, reason="PublishFailed", message=str(e))
        raise kopf.TemporaryError(f"publishing failed: {e}", delay=15) from None
    kopf.info(body, reason="Published",
              message=f"credentials in Vault at {vault_path}, config in Consul under {consul_prefix}")


@kopf.on.delete(API_GROUP, VERSION, "pgclusters")
@measured("PgCluster")
def cluster_deleted(body, **_):
    """Owner references remove the cluster's objects; what it published outside is removed here."""
    cluster = Cluster.from_object(body)
    if cluster.spec.publish is None:
        return  # nothing was published
    problem = cluster_publish.namespace_problem(cluster)
    if problem:  # never published there, and never removed: it may be another namespace's
        kopf.warn(body, reason=tenancy.REASON, message=problem)
        return
    try:
        cluster_publish.unpublish_cluster(cluster)
    except PublishError as e:
        raise kopf.TemporaryError(f"removing the published credentials failed: {e}", delay=15) from None


@kopf.on.event(API_GROUP, VERSION, "pgclusters")
async def cluster_event(body, event, **_):
    if event.get("type") == "DELETED":
        meta = body["metadata"]
        forget_cluster(meta.get("namespace", ""), meta["name"])


def forget_cluster(namespace: str, name: str) -> None:
    """What this process kept of a deleted PgCluster (its lock, what it said once)."""
    _cluster_locks.pop((namespace, name), None)
    _passed.pop(("cluster", (namespace, name)), None)
    forget(namespace, name)


@kopf.on.update(API_GROUP, VERSION, "pgclusters", field="metadata.annotations")
@measured("PgCluster")
def cluster_annotated(body, patch, logger, **_):
    """`pgop promote` (pgop.io/switchover-to) and `pgop fence` (pgop.io/fenced-instances) act at once."""
    status = reconcile_cluster(body, logger)
    if status:
        patch.status.update(status)


@kopf.daemon(API_GROUP, VERSION, "pgclusters")
async def cluster_timed(body, stopped, logger, **_):
    """The cluster's timed passes (pgop.runtime.paced), at the pace pgop.cluster.pace sets."""
    key = (body["metadata"].get("namespace", ""), body["metadata"]["name"])
    await paced.run(stopped, lambda: cluster_tick(key, logger), logger, key=("cluster", key),
                    look=lambda: cluster_look(key))


@measured("PgCluster")
def cluster_tick(key: tuple[str, str], logger) -> float | pace.Steady:
    return _reconcile_cluster_now(key, logger)


# The timed passes converge on their own; these shortcuts only cut the wait at the steps that gate
# the next one (a bootstrap pod finishing, an instance becoming ready), which is most of the time
# from apply to Ready.
_last_seen: dict[tuple[str, str], tuple] = {}


# Whether an event is news is judged in kopf's event loop (async handlers: most events are an
# agent's heartbeat, news to nobody); what it starts runs in the handler pool and is not waited
# for (pgop.runtime.paced.soon): kopf's worker of the object goes on with its next event at once.
@kopf.on.event(API_GROUP, VERSION, "pginstances")
async def instance_seen(body, event, logger, **_):
    meta = body["metadata"]
    key = (meta.get("namespace"), meta["name"])
    st = body.get("status") or {}
    spec = body.get("spec") or {}
    # What moves a failover or switchover on: a replica that stopped streaming, a new primary;
    # and a new spec (its generation), which the instance's pass carries out.
    state = (st.get("ready"), st.get("role"), st.get("phase"), st.get("following"), st.get("walReceiver"),
             spec.get("role"), spec.get("primary"), meta.get("generation"), event.get("type"))
    if _last_seen.get(key) == state:
        return
    before = _last_seen.get(key)
    _last_seen[key] = state
    if event.get("type") == "DELETED":
        _last_seen.pop(key, None)
        _passed.pop(("instance", key), None)
        paced.soon(("forget", key), lambda: forget(*key), logger)
    elif before is None or (before[1], before[5], before[7]) != (state[1], state[5], state[7]):
        # New, or a role reported or wanted anew, or a new spec: the instance's pass runs now, not
        # on its next tick: the pod's role label (what -rw and -ro select) follows a role at once
        # and a promoted primary takes writes a tick sooner.
        paced.soon(("instance", key), lambda: instance_event(key, logger), logger)
    else:  # news to the instance's timed pass (e.g. no longer ready), whose pace it may change
        paced.hurry(("instance", key), pace.FAST)
    _reconcile_cluster_soon(key[0], spec.get("cluster"), logger)


@measured("PgInstance")
def instance_event(key: tuple[str, str], logger) -> None:
    """The instance's pass an event asked for (reconcile_instance coalesces it with one under way)."""
    instance = indexes.indexed("pgop_instances", *key) or kube().get("PgInstance", key[0], key[1])
    if instance is not None and not instance["metadata"].get("deletionTimestamp"):
        reconcile_instance(instance, logger)


# The event shortcuts coalesce per cluster: while one runs, further events only ask it for one more
# pass (which re-reads everything), so a burst of pod and PgInstance events holds one thread per
# cluster, not one per event, and the pool stays free for the timed passes and the delete handlers.
_shortcuts = Coalescer()


def _reconcile_cluster_soon(namespace: str, cluster_name: str | None, logger) -> None:
    """From kopf's loop: a pass of the cluster in a handler thread, not waited for."""
    if cluster_name:
        key = (namespace, cluster_name)
        paced.soon(("cluster", key), lambda: cluster_event_pass(key, logger), logger)


@measured("PgCluster")
def cluster_event_pass(key: tuple[str, str], logger) -> None:
    _shortcuts.run(key, lambda: _reconcile_cluster_now(key, logger))


def _reconcile_cluster_now(key: tuple[str, str], logger) -> float | pace.Steady:
    """One pass of the cluster as the watch last saw it; the pace of its next timed pass."""
    cluster_name = key[1]
    # As the watch last saw it (a quiet pass then reads nothing), else just its name (read fresh).
    cluster = indexes.indexed("pgop_clusters", *key) or {"metadata": {"namespace": key[0], "name": cluster_name}}
    if cluster["metadata"].get("deletionTimestamp"):
        return pace.FAST
    try:
        status, wait = _cluster_pass(cluster, logger)
    except NotFound:
        return pace.FAST  # deleted meanwhile (its PgInstances and pods go with it): nothing to do
    if status:
        try:
            kube().merge_patch("PgCluster", key[0], cluster_name, {"status": status}, "status")
        except NotFound:
            pass
    return wait


def _container_news(pod) -> tuple:
    """What in a pod's containers is news before its phase says so: a container that exited (a
    bootstrap pod done: pgop.cluster.plan.bootstrap_phase), a container ready (a Postgres pod's
    bootstrap done: pgop.kernel.diagnose.bootstrap_in_pod), and the pod's Ready condition (its
    Services route to it: the cluster's readiness, pgop.cluster.status)."""
    status = pod.get("status") or {}
    return (pod_ready(pod),) + tuple(
        (((s.get("state") or {}).get("terminated") or {}).get("exitCode"), s.get("ready"))
        for s in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []))


@kopf.on.event("", "v1", "pods", labels={LABEL_INSTANCE: kopf.PRESENT})
async def pod_seen(body, event, logger, **_):
    meta = body["metadata"]
    key = ("pod", f"{meta.get('namespace')}/{meta['name']}")
    pod = pod_state(body) if event.get("type") != "DELETED" else pod_state(None)
    # podIP too: replicas stream from it (spec.primaryHost), a new one is handed down at once
    state = ((body.get("status") or {}).get("phase"), (body.get("status") or {}).get("podIP"), pod.running,
             pod.deleting, _container_news(body), event.get("type"))
    if _last_seen.get(key) == state:
        return
    _last_seen[key] = state
    if event.get("type") == "DELETED":
        _last_seen.pop(key, None)
    # A primary's pod gone or its container stopped starts a failover now, not on the next tick:
    # queued first, before the instance's own pass recreates the pod (the replicas stop streaming
    # sooner).
    if meta["labels"].get(LABEL_COMPONENT) == COMPONENT_POSTGRES:
        _reconcile_cluster_soon(meta.get("namespace"), meta["labels"].get(LABEL_CLUSTER), logger)
    instance = (meta.get("namespace"), meta["labels"][LABEL_INSTANCE])
    paced.soon(("instance", instance), lambda: instance_event(instance, logger), logger)


@kopf.on.event(API_GROUP, VERSION, "pgbackups")
async def backup_seen(body, event, logger, **_):
    """A PgBackup that appeared, changed phase or went is news to its cluster's pass (its status
    says the last backup; retention may now drop one), which runs now, not at the next resync."""
    meta = body["metadata"]
    key = ("backup", f"{meta.get('namespace')}/{meta['name']}")
    state = ((body.get("status") or {}).get("phase"), event.get("type"))
    if _last_seen.get(key) == state:
        return
    _last_seen[key] = state
    if event.get("type") == "DELETED":
        _last_seen.pop(key, None)
    _reconcile_cluster_soon(meta.get("namespace"), (body.get("spec") or {}).get("cluster"), logger)


async def part_deleted(body, event, logger, **_):
    """A cluster's Service, Secret, PDB, agents' RBAC object or volume deleted (by hand, or by a
    tool): the cluster's pass (and, for a volume, its instance's) runs now and makes it again,
    not at the cluster's next resync (pgop.cluster.pace.RESYNC)."""
    if event.get("type") != "DELETED":
        return
    meta = body["metadata"]
    labels = meta.get("labels") or {}
    _reconcile_cluster_soon(meta.get("namespace"), labels.get(LABEL_CLUSTER), logger)
    if labels.get(LABEL_INSTANCE):
        instance = (meta.get("namespace"), labels[LABEL_INSTANCE])
        paced.soon(("instance", instance), lambda: instance_event(instance, logger), logger)


# The same watches as the indexes (pgop.cluster.indexes): no new request.
for _group, _plural in (("", "services"), ("", "secrets"), ("policy", "poddisruptionbudgets"), ("", "serviceaccounts"),
                        ("rbac.authorization.k8s.io", "roles"), ("rbac.authorization.k8s.io", "rolebindings"),
                        ("", "persistentvolumeclaims")):
    kopf.on.event(_group, "v1", _plural, labels=indexes.CLUSTER_LABELLED, id=f"part_deleted_{_plural}")(part_deleted)


# ------------------------------------------------------------------------------------ PgInstance

# One pass per instance at a time: the timed pass, the pod event and the role shortcut all reconcile
# it, and two passes acting on the same view applied the same step twice.
_instance_runs = Coalescer()


def reconcile_instance(body, logger) -> float | pace.Steady:
    """One pass of the instance (or one more, asked of the pass under way in another thread);
    the pace of its next timed pass (pgop.cluster.pace: FAST unless this pass found it steady).
    A pass that finds it moving brings the timed pass forward."""
    meta = body["metadata"]
    key = (meta.get("namespace", ""), meta["name"])
    waits: list[float | pace.Steady] = []
    ran = _instance_runs.run(key, lambda: waits.append(_reconcile_instance(key, body, logger)))
    wait = waits[-1] if ran and waits else pace.FAST
    if not isinstance(wait, pace.Steady):
        paced.hurry(("instance", key), wait)
    return wait


def instance_look(key: tuple[str, str]) -> float | None:
    """A steady instance looked at between its passes (as cluster_look): seconds until its next
    look, or None when a pass is due now."""
    body = indexes.indexed("pgop_instances", *key)
    reader = indexes.reader(kube())
    if body is None or reader.fresh or body["metadata"].get("deletionTimestamp"):
        return None
    if _instance_view(key, body, reader) != _passed.get(("instance", key)):
        return None
    body = reader.with_liveness(body)
    return pace.look_again_in(pace.instance_steady(body), pace.heartbeats([body]), datetime.now(UTC))


def _instance_view(key: tuple[str, str], body, reader) -> tuple:
    volume = reader.volume(*key)  # named after its instance (pgop.specs.pvc.pvc_name)
    return pace.view_of([body], reader.instance_pods(*key), [volume] if volume else [])


def _reconcile_instance(key: tuple[str, str], body, logger) -> float | pace.Steady:
    # The latest the watch saw (a pass asked for again runs on what came in meanwhile).
    body = indexes.indexed("pgop_instances", *key) or body
    reader = indexes.reader(kube())
    if not reader.fresh:
        _passed[("instance", key)] = _instance_view(key, body, reader)  # before planning
    body = reader.with_liveness(body)
    instance, plan, report = controller.plan_for_instance(reader, body)
    if not reader.fresh and not len(plan) and not report:
        return pace.next_pass_in(pace.instance_steady(body), pace.heartbeats([body]), datetime.now(UTC),
                                 jitter=random.random())
    if not reader.fresh:
        # About to act, relabel a pod or say the agent is silent: on what is stored now. kopf's
        # view lagged the API by 90 s under load, and live instances were written Unavailable.
        body = kube().get("PgInstance", *key)
        if body is None:
            return pace.FAST
        body = observe.ApiReader(kube()).with_liveness(body)
        instance, plan, report = controller.plan_for_instance(kube(), body)
    apply_plan(body, plan, logger)
    if report:
        try:
            kube().merge_patch("PgInstance", instance.namespace, instance.name, report, "status")
        except NotFound:
            pass
    return pace.FAST


# No kopf create, resume or update handler for PgInstances: for those kopf copies and compares
# the whole object (and writes its own annotations) on every watch event, mostly an agent's
# heartbeat. The daemon's first pass runs as the object appears (created, or found at start),
# and a new spec generation is news to instance_seen, which runs a pass at once.
@kopf.daemon(API_GROUP, VERSION, "pginstances")
async def instance_timed(body, stopped, logger, **_):
    """The instance's timed passes (pgop.runtime.paced), at the pace pgop.cluster.pace sets; the
    first as soon as kopf sees the object."""
    key = (body["metadata"].get("namespace", ""), body["metadata"]["name"])
    await paced.run(stopped, lambda: instance_tick(key, body, logger), logger, key=("instance", key),
                    look=lambda: instance_look(key))


@measured("PgInstance")
def instance_tick(key: tuple[str, str], body, logger) -> float | pace.Steady:
    instance = indexes.indexed("pgop_instances", *key) or body
    if instance["metadata"].get("deletionTimestamp"):
        return pace.FAST
    return reconcile_instance(instance, logger)
