"""What the controllers would do: (what is wanted, what is) -> an ordered list of actions.

Pure and idempotent: planning against the result of applying a plan yields no actions. The
kopf handlers read the objects, call plan_cluster / plan_instance, apply the actions in order
and write status; `pgop plan` prints the same actions without applying them.

Ordering decisions, top to bottom:
- Cluster: ServiceAccount, Role, RoleBinding (the agent needs them the moment a pod starts),
  Secrets (bootstrap reads the passwords), Services, PDB, then PgInstance creations, patches,
  deletions.
- Who is primary comes from pgop.cluster.failover (status.targetPrimary/currentPrimary, a
  failover or switchover in progress): every PgInstance's spec.role, spec.primary and spec.fenced
  follow it, patched first (the new primary before the others). While a failover or switchover
  runs, nothing is scaled down or rolled.
- A cluster that has had data never runs initdb again: every instance's spec.bootstrap becomes
  basebackup (a lost volume is rebuilt as a replica); with every instance gone, nothing is made.
- A new cluster's first primary (ordinal 0) by initdb comes with all its replicas: their
  volumes and bootstrap pods are made while it bootstraps, and each bootstrap clones once the
  operator has named the primary's pod (spec.primaryHost) and Postgres there accepts connections
  (pgop.agent.bootstrap.wait_for_source), so no pod start waits for the primary. A first primary
  by recovery (a restore, which may take hours) comes alone. Otherwise replicas are created only
  once the primary is ready, all missing ones at once, so their pg_basebackups run in parallel
  against a primary that exists.
- Scale up takes ordinals after the highest existing one; scale down removes the highest-ordinal
  replicas, never the primary.
- A change that a reload applies reaches every instance in one plan, replicas before the primary.
  A change that needs a restart rolls: one instance at a time, the next only when every instance
  already on the new spec is ready and has reported it (status.observedGeneration). Replicas go
  first (those not ready first, as restarting them costs nothing), the primary last, except when the
  change lowers a setting a hot standby needs at least as much of as its primary: then the primary
  goes first. A change that breaks the first replica thus never reaches the primary. The primary
  is not restarted in place when a replica on the new spec streams from it: a switchover
  (annotation pgop.io/switchover-to) makes that replica primary, and the old primary then
  restarts as a replica.
- Hibernation (pgop.kernel.hibernation): while a cluster hibernates, only spec.hibernated is
  planned for its PgInstances (replicas first, the primary last); nothing is created, scaled,
  rolled or drained, and a hibernated instance has no pod and no new volume.
- Instance: PVC, then the Postgres pod, whose agent fills the empty volume (initdb, basebackup)
  before it starts Postgres in the same container; once that container was ready the volume is
  marked initialised and the pod's permission to bootstrap (its annotation
  pgop.io/bootstrap-mode) removed. A restore runs in
  a bootstrap pod of its own first; once it succeeded the volume is marked, the bootstrap pod
  removed and the Postgres pod started. Two pods never share a data directory.
"""
from __future__ import annotations

import secrets as system_secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pgop.cluster.failover import ANNOTATION_SWITCHOVER, HaDecision, decide
from pgop.kernel import hibernation, names, pgconfig
from pgop.kernel.actions import CREATE, DELETE, NORMAL, PATCH, WARNING, Action, Event, Plan, merge_patch
from pgop.kernel.conditions import condition
from pgop.kernel.diagnose import bootstrap_in_pod
from pgop.kernel.lsn import parse_lsn
from pgop.kernel.meta import ANNOTATION_BOOTSTRAP_MODE, LABEL_INSTANCE, LABEL_ROLE, RESTART_FIELD
from pgop.kernel.model import (
    ANNOTATION_ARCHIVE_LAYOUT,
    ARCHIVE_LAYOUTS,
    BASEBACKUP,
    LEGACY_LAYOUT,
    NAMESPACED_LAYOUT,
    PRIMARY,
    REPLICA,
    Cluster,
    Instance,
    RecoverySpec,
    instance_name,
    parse_quantity,
)
from pgop.specs import ca_rotation, tls, user_tls
from pgop.specs.instance import (
    MANAGED_FIELDS,
    POD_FIELDS,
    build_instance,
    managed_instance_spec,
    restart_scope,
)
from pgop.specs.pdb import build_pdb, build_primary_pdb
from pgop.specs.pods import (
    ANNOTATION_POD_INPUTS,
    bootstraps_in_pod,
    build_bootstrap_pod,
    build_postgres_pod,
    pod_inputs_hash,
    pod_role_label,
)
from pgop.specs.pvc import (
    build_pvc,
    desired_owner_references,
    holds_foreign_data,
    is_initialized,
    mark_initialized_patch,
)
from pgop.specs.rbac import build_role, build_role_binding, build_service_account
from pgop.specs.secrets import RandomSource, build_cluster_secrets
from pgop.specs.services import build_services

Obj = Mapping[str, Any]


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _name(obj: Obj) -> str:
    return str(_meta(obj).get("name", ""))


def _deleting(obj: Obj) -> bool:
    return bool(_meta(obj).get("deletionTimestamp"))


def _phase(pod: Obj) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def bootstrap_phase(pod: Obj) -> str:
    """A bootstrap pod's phase, Succeeded as soon as its containers all exited 0: with restartPolicy
    OnFailure that is final, and the kubelet reports it about a second before it sets the pod's
    phase (one more status sync), a second on every step from apply to Ready."""
    phase = _phase(pod)
    if phase != "Running":
        return phase
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    exits = [((s.get("state") or {}).get("terminated") or {}).get("exitCode") for s in statuses]
    return "Succeeded" if exits and all(code == 0 for code in exits) else phase


# ---------------------------------------------------------------------------------- cluster

@dataclass
class ObservedCluster:
    """The objects of one cluster as they are (found by the label pgop.io/cluster or by name)."""

    instances: Sequence[Obj] = ()
    services: Sequence[Obj] = ()
    secrets: Sequence[Obj] = ()
    pdb: Obj | None = None  # the replicas' budget
    primary_pdb: Obj | None = None
    service_account: Obj | None = None
    role: Obj | None = None
    role_binding: Obj | None = None
    recovery_source: Obj | None = None  # the PgCluster named by spec.bootstrap.recovery.source
    # The Postgres pods and the PVCs of the instances; None: not observed (the failover rules
    # that need them are then not applied).
    pods: Sequence[Obj] | None = None
    volumes: Sequence[Obj] | None = None
    # Nodes marked unschedulable (cordoned, as a drain starts); None: not observed.
    cordoned_nodes: frozenset[str] | None = None
    # The Secrets spec.tls names, by name (None: not found); they carry no label of the cluster.
    user_secrets: Mapping[str, Obj | None] = field(default_factory=dict)


def _by_instance(objects: Sequence[Obj] | None) -> dict[str, Obj] | None:
    if objects is None:
        return None
    out: dict[str, Obj] = {}
    for obj in objects:
        instance = (_meta(obj).get("labels") or {}).get(LABEL_INSTANCE)
        if instance and (obj.get("kind") != "Pod" or _name(obj) == names.postgres_pod(instance)):
            out[instance] = obj
    return out


def postgres_pods(observed: ObservedCluster) -> dict[str, Obj] | None:
    """Each instance's Postgres pod by instance name; None when the pods were not observed."""
    return _by_instance(observed.pods)


def decide_ha(cluster: Cluster, observed: ObservedCluster, now: datetime) -> HaDecision:
    return decide(cluster, observed.instances, now=now, pods=_by_instance(observed.pods),
                  volumes=_by_instance(observed.volumes))


def plan_cluster(cluster: Cluster, observed: ObservedCluster, *, rng: RandomSource | None = None,
                 now: datetime | None = None) -> Plan:
    """Actions that bring the objects of a PgCluster to its spec.

    `rng` only feeds passwords of Secrets that do not exist yet; pass a seeded one for repeatable
    output. `now` judges heartbeats and delays (default: the clock). A cluster being deleted gets
    no actions: owner references let the garbage collector remove what it owns.

    Plan.status holds what pgop.cluster.failover decided (targetPrimary, currentPrimary,
    failover, ...): the handler writes it before it applies the actions.
    """
    plan = Plan()
    if cluster.deleting:
        return plan
    ha = decide_ha(cluster, observed, now or datetime.now(UTC))
    if ANNOTATION_ARCHIVE_LAYOUT not in cluster.annotations:
        # First, before any PgInstance is made from it: a failed patch stops the pass (apply_plan),
        # so no instance archives to a location the annotation does not pin.
        cluster = pin_archive_layout(cluster, observed)
        layout = cluster.archive_layout
        plan.append(Action(PATCH, "PgCluster", cluster.name, cluster.namespace,
                           f"pin the archive layout: {layout} ("
                           + (f"<path>/{cluster.namespace}/{cluster.name}/" if layout == NAMESPACED_LAYOUT else
                              f"<path>/{cluster.name}/, where this cluster archived before namespaces were "
                              "part of the location") + ")",
                           patch={"metadata": {"annotations": {ANNOTATION_ARCHIVE_LAYOUT: layout}}}))
    plan.status.update(ha.status)
    plan.events += ha.events
    plan.waiting += ha.waiting
    _plan_rbac(cluster, observed, plan)
    ca_cert = _plan_certificates(cluster, observed, plan, now or datetime.now(UTC))
    _plan_secrets(cluster, observed, plan, rng or system_secrets.SystemRandom(), ca_cert)
    _plan_services(cluster, observed, plan)
    _plan_pdb(cluster, observed, plan)
    if not _plan_hibernation(cluster, observed, plan, ha, now or datetime.now(UTC)):
        _plan_instances(cluster, observed, plan, ha)
        _plan_drain(cluster, observed, plan, ha)
    if ha.clear_switchover and ANNOTATION_SWITCHOVER in cluster.annotations:
        plan.append(Action(PATCH, "PgCluster", cluster.name, cluster.namespace,
                           "the switchover request is answered (status.lastSwitchover)",
                           patch={"metadata": {"annotations": {ANNOTATION_SWITCHOVER: None}}}))
    return plan


def _plan_hibernation(cluster: Cluster, observed: ObservedCluster, plan: Plan, ha: HaDecision,
                      now: datetime) -> bool:
    """`pgop hibernate on|off` (pgop.kernel.hibernation): the PgInstances to stop or start, and
    status.hibernation. True while the instances are hibernating: nothing else is planned for them."""
    live = [Instance.from_object(body) for body in observed.instances]
    live = [i for i in live if not i.deleting]
    step = hibernation.plan_hibernation(cluster, live, _by_instance(observed.pods),
                                        target_primary=ha.target_primary, busy=ha.busy, now=now)
    if step.status is not None or cluster.status.get(hibernation.STATUS_FIELD):
        plan.status[hibernation.STATUS_FIELD] = step.status
    plan.events += step.events
    plan.waiting += step.waiting
    for name, value in [(n, True) for n in step.stop] + [(n, False) for n in step.start]:
        plan.append(Action(PATCH, "PgInstance", name, cluster.namespace, step.reasons.get(name, "hibernation"),
                           patch={"spec": {hibernation.INSTANCE_FIELD: value}}))
    return step.frozen


def pin_archive_layout(cluster: Cluster, observed: ObservedCluster) -> Cluster:
    """The cluster with its archive layout decided, for a cluster whose PgCluster does not pin one
    yet (ANNOTATION_ARCHIVE_LAYOUT): a cluster this operator sees for the first time, with nothing
    made yet, gets the namespaced layout; one that already has instances, volumes, a primary or
    backups was created by an earlier version and keeps archiving where it did (legacy): moving
    it would orphan its backups and WAL. A pinned cluster is returned as it is."""
    if ANNOTATION_ARCHIVE_LAYOUT in cluster.annotations:
        return cluster
    status = cluster.status
    existed = bool(observed.instances) or bool(observed.volumes) or any(
        status.get(key) for key in ("currentPrimary", "targetPrimary", "lastBackup", "firstRecoverabilityPoint"))
    layout = LEGACY_LAYOUT if existed else NAMESPACED_LAYOUT
    return replace(cluster, annotations={**cluster.annotations, ANNOTATION_ARCHIVE_LAYOUT: layout})


def resolve_recovery(recovery: RecoverySpec, source: Obj | None) -> RecoverySpec:
    """spec.bootstrap.recovery with the S3 location of the source's archive: its own s3 when set
    (the source may be long gone), else the source PgCluster's spec.backup.s3 and its pinned
    archive layout. Without the source, the layout stays unknown: the restore looks in this
    namespace's location first, then in the legacy one."""
    if source is not None and recovery.archive_layout is None:
        source_cluster = Cluster.from_object(source)
        if ANNOTATION_ARCHIVE_LAYOUT in source_cluster.annotations and source_cluster.archive_layout in ARCHIVE_LAYOUTS:
            recovery = replace(recovery, archive_layout=source_cluster.archive_layout)
    if recovery.s3 is not None or source is None:
        return recovery
    backup = Cluster.from_object(source).spec.backup
    if backup is None or backup.s3 is None:
        return recovery
    return replace(recovery, s3=backup.s3.for_pods())  # the restore reads; it never deletes


def _create(plan: Plan, body: dict[str, Any], reason: str) -> None:
    meta = body["metadata"]
    plan.append(Action(CREATE, body["kind"], meta["name"], meta.get("namespace", ""), reason, body=body))


def _patch(plan: Plan, kind: str, obj: Obj, patch: dict[str, Any], reason: str) -> None:
    meta = _meta(obj)
    plan.append(Action(PATCH, kind, meta.get("name", ""), meta.get("namespace", ""), reason, patch=patch))


def _plan_rbac(cluster: Cluster, observed: ObservedCluster, plan: Plan) -> None:
    if observed.service_account is None:
        _create(plan, build_service_account(cluster), "identity of the agents in this cluster's pods")
    role = build_role(cluster)
    if observed.role is None:
        _create(plan, role, "what the agents may do: read their PgInstances and Secrets, write status")
    elif observed.role.get("rules") != role["rules"]:
        _patch(plan, "Role", observed.role, {"rules": role["rules"]},
               "the agents' permissions follow the spec (e.g. a new S3 credentials Secret)")
    binding = build_role_binding(cluster)
    if observed.role_binding is None:
        _create(plan, binding, "grant the Role to the agents' ServiceAccount")
    elif observed.role_binding.get("subjects") != binding["subjects"]:
        _patch(plan, "RoleBinding", observed.role_binding, {"subjects": binding["subjects"]},
               "the Role is granted to the agents' ServiceAccount only")


def _plan_secrets(cluster: Cluster, observed: ObservedCluster, plan: Plan, rng: RandomSource,
                  ca_cert: str | None = None) -> None:
    existing = {_name(secret): secret for secret in observed.secrets}
    for secret in build_cluster_secrets(cluster, rng, ca_cert):
        name = secret["metadata"]["name"]
        user = secret["stringData"]["username"]
        current = existing.get(name)
        if current is None:
            _create(plan, secret, f"credentials of the {user!r} role, with a generated password")
        elif ca_cert and tls.secret_text(current, tls.CA_CERT) != ca_cert:
            # Only ca.crt: the password is already in the database, the uri is the user's.
            _patch(plan, "Secret", current, {"stringData": {tls.CA_CERT: ca_cert}},
                   f"the CAs that check the server ({user!r} credentials' ca.crt): the CA bundle changed")


def _plan_certificates(cluster: Cluster, observed: ObservedCluster, plan: Plan, now: datetime) -> str | None:
    """The cluster's CA (made once, rotated in phases: pgop.specs.ca_rotation), the server and
    replication certificates it signs, issued again before they expire (pgop.specs.tls), and the
    check of the Secrets the user brings (spec.tls: pgop.specs.user_tls), as the condition
    CertificatesReady. Returns what checks the server (the credentials Secrets' `ca.crt`): the
    issuer of the user's server certificate, else the CA bundle; None when unknown."""
    existing = {_name(secret): secret for secret in observed.secrets}
    ca_name = names.ca_secret(cluster.name)
    ca_secret = existing.get(ca_name)
    if ca_secret is None:
        ca = tls.issue_ca(f"{cluster.name}.{cluster.namespace} (pgop CA)", now)
        _create(plan, tls.build_ca_secret(cluster, ca),
                "the cluster's own CA: it signs the server and replication certificates (TLS)")
        state = ca_rotation.CaState(ca)
    else:
        found = ca_rotation.ca_state(ca_secret)
        if found is None:
            plan.waiting.append(f"Secret {ca_name} lacks {tls.CA_CERT} or {tls.CA_KEY}: no certificate can be "
                                "issued until it holds both (delete it and the operator makes a new CA)")
            plan.conditions.append(condition("CertificatesReady", False, "CAUnusable",
                                             f"Secret {ca_name} lacks {tls.CA_CERT} or {tls.CA_KEY}"))
            return None
        state = _plan_ca_rotation(cluster, observed, plan, ca_secret, found, now)
    user = cluster.spec.tls
    user_server = user.server_secret if user is not None else None
    problems = _check_user_secrets(cluster, observed, now)
    client_ca = tls.secret_text(observed.user_secrets.get(user.client_ca_secret or ""), tls.CA_CERT) \
        if user is not None and user.client_ca_secret else None
    client_bundle = state.bundle + (client_ca if client_ca is None or client_ca.endswith("\n") else client_ca + "\n") \
        if client_ca else state.bundle
    ca = state.current
    for name, common_name, dns_names, server in tls.leaf_secrets(cluster):
        if server and user_server:
            continue  # the user's certificate serves; the pods mount its Secret
        bundle = state.bundle if server else client_bundle
        current = existing.get(name)
        why = tls.renewal_reason(tls.secret_text(current, tls.TLS_CERT), ca.cert, now, dns_names, common_name)
        what = "server certificate (names: the cluster's Services)" if server else \
            f"client certificate of the {common_name!r} role (replication, clones, rewinds, backups)"
        if not why:
            if tls.secret_text(current, tls.CA_CERT) != bundle and current is not None:
                _patch(plan, "Secret", current, {"stringData": {tls.CA_CERT: bundle}},
                       f"the CAs trusted beside the {what} changed (CA rotation or spec.tls.clientCASecret); "
                       "the agents reload Postgres, no restart")
            continue
        body = tls.build_leaf_secret(cluster, name, ca, tls.issue_leaf(ca, common_name, dns_names, now, server),
                                     bundle)
        if current is None:
            _create(plan, body, f"the {what}, signed by the cluster's CA")
        else:
            _patch(plan, "Secret", current, {"stringData": body["stringData"]},
                   f"the {what} is issued again: {why}; the agents reload Postgres, no restart")
    rotating = f"; CA rotation in phase {state.phase}" if state.phase != ca_rotation.STEADY else ""
    if problems:
        plan.conditions.append(condition("CertificatesReady", False, problems[0][0],
                                         "; ".join(message for _, message in problems)))
    else:
        served = f"the server certificate of Secret {user_server}" if user_server else \
            "the server certificate signed by the cluster's CA"
        plan.conditions.append(condition("CertificatesReady", True, "Valid", served + rotating))
    if user_server:
        return tls.secret_text(observed.user_secrets.get(user_server), tls.CA_CERT)
    return state.bundle


def _check_user_secrets(cluster: Cluster, observed: ObservedCluster, now: datetime) -> list[user_tls.Problem]:
    user = cluster.spec.tls
    if user is None:
        return []
    problems = []
    if user.server_secret:
        problems += user_tls.check_server_secret(cluster, user.server_secret,
                                                 observed.user_secrets.get(user.server_secret), now)
    if user.client_ca_secret:
        problems += user_tls.check_client_ca_secret(cluster, user.client_ca_secret,
                                                    observed.user_secrets.get(user.client_ca_secret), now)
    return problems


def _plan_ca_rotation(cluster: Cluster, observed: ObservedCluster, plan: Plan, ca_secret: Obj,
                      state: ca_rotation.CaState, now: datetime) -> ca_rotation.CaState:
    """The next phase of a rotation of the cluster's CA, when its time has come; returns the CA
    state once this plan is applied (what signs the leaves and what the bundle holds)."""
    forced = ca_rotation.ANNOTATION_ROTATE_CA in cluster.annotations
    existing = {_name(secret): secret for secret in observed.secrets}
    user = cluster.spec.tls
    leaves, signed_by_current = [], True
    for name, common_name, dns_names, server in tls.leaf_secrets(cluster):
        if server and user is not None and user.server_secret:
            continue
        pem = tls.secret_text(existing.get(name), tls.TLS_CERT) or ""
        leaves.append(("server" if server else "replication", pem))
        signed_by_current = signed_by_current and not tls.renewal_reason(pem, state.current.cert, now,
                                                                         dns_names, common_name)
    reports = {_name(i): ca_rotation.InstanceCertificates.from_instance(i)
               for i in observed.instances if not _deleting(i)}
    step = ca_rotation.rotation_step(state, now, forced=forced, instances=reports,
                                     leaves=ca_rotation.leaves_of(leaves), leaves_signed_by_current=signed_by_current)
    if forced and (step.action == ca_rotation.START or state.phase != ca_rotation.STEADY):
        plan.append(Action(PATCH, "PgCluster", cluster.name, cluster.namespace,
                           "the CA rotation it asks for " + ("starts" if step.action else "already runs"),
                           patch={"metadata": {"annotations": {ca_rotation.ANNOTATION_ROTATE_CA: None}}}))
    if not step.action:
        if step.reason:
            plan.waiting.append(step.reason)
        return state
    new_ca = None
    if step.action == ca_rotation.START:
        # the date first: a long name is cut at the end, and the new CA's name still differs
        new_ca = tls.issue_ca(f"pgop CA {now:%Y-%m-%d %H:%M} {cluster.name}.{cluster.namespace}", now)
        patch = ca_rotation.start_patch(new_ca, now)
        what = f"CA rotation starts ({step.reason}): a new CA, trusted next to the old one"
    elif step.action == ca_rotation.PROMOTE:
        patch = ca_rotation.promote_patch(state)
        what = f"CA rotation: the new CA signs from now on ({step.reason})"
    else:
        patch = ca_rotation.finish_patch()
        what = f"CA rotation ends: {step.reason}"
    _patch(plan, "Secret", ca_secret, patch, what)
    plan.events.append(Event(NORMAL, "CARotation", what))
    return ca_rotation.after(state, step.action, new_ca, now)


def _ports_match(current: Sequence[Obj], desired: Sequence[Obj]) -> bool:
    # The API server adds fields of its own (e.g. nodePort elsewhere); compare only ours.
    return len(current) == len(desired) and all(
        all(have.get(key) == value for key, value in want.items()) for have, want in zip(current, desired)
    )


def _plan_services(cluster: Cluster, observed: ObservedCluster, plan: Plan) -> None:
    existing = {_name(service): service for service in observed.services}
    purposes = {"rw": "the primary (reads and writes)", "ro": "the replicas (reads)", "r": "any instance"}
    for service in build_services(cluster):
        name = service["metadata"]["name"]
        purpose = purposes[name.rsplit("-", 1)[1]]
        current = existing.get(name)
        if current is None:
            _create(plan, service, f"route port 5432 to {purpose}")
            continue
        spec = current.get("spec") or {}
        patch: dict[str, Any] = {}
        selector = merge_patch(spec.get("selector") or {}, service["spec"]["selector"])
        if selector:
            patch["selector"] = selector
        if not _ports_match(spec.get("ports") or [], service["spec"]["ports"]):
            patch["ports"] = service["spec"]["ports"]
        if patch:
            _patch(plan, "Service", current, {"spec": patch}, f"must select {purpose} on port 5432")


def _plan_pdb(cluster: Cluster, observed: ObservedCluster, plan: Plan) -> None:
    for pdb, current, purpose in (
            (build_primary_pdb(cluster), observed.primary_pdb, "node drains never evict the primary (a switchover "
                                                               "comes first)"),
            (build_pdb(cluster), observed.pdb, "node drains evict one replica at a time")):
        if current is None:
            _create(plan, pdb, purpose)
            continue
        spec = current.get("spec") or {}
        if spec.get("minAvailable") != pdb["spec"]["minAvailable"] or spec.get("selector") != pdb["spec"]["selector"]:
            _patch(plan, "PodDisruptionBudget", current, {"spec": pdb["spec"]},
                   f"{cluster.spec.instances} instance(s) wanted: {purpose}")


def _plan_drain(cluster: Cluster, observed: ObservedCluster, plan: Plan, ha: HaDecision) -> None:
    """A drain of the primary's node: switchover to a replica on a schedulable node first.

    `kubectl drain` cordons the node, then evicts its pods; the primary's PDB refuses the primary's
    eviction (pgop.specs.pdb), and this asks for a switchover the moment the node is cordoned. Once
    the old primary is a replica, its pod loses the primary label and the drain evicts it.
    """
    cordoned = observed.cordoned_nodes
    primary = ha.current_primary
    if not cordoned or ha.busy or not primary or primary != ha.target_primary \
            or cluster.annotations.get(ANNOTATION_SWITCHOVER) \
            or any(a.kind == "PgCluster" and ANNOTATION_SWITCHOVER in
                   ((a.patch or {}).get("metadata") or {}).get("annotations", {}) for a in plan):
        return
    pods = _by_instance(observed.pods) or {}
    node = _pod_node(pods.get(primary))
    if node not in cordoned:
        return
    instances = [Instance.from_object(body) for body in observed.instances]
    current = next((i for i in instances if i.name == primary), None)
    if current is None:
        return
    elsewhere = [i for i in instances if _pod_node(pods.get(i.name)) not in cordoned | {""}]
    successor = _switchover_candidate(current, elsewhere)
    if successor is None:
        plan.waiting.append(f"the primary's node {node} is cordoned (a drain?) and no ready replica streaming "
                            f"from {primary} runs on another node: the primary's PodDisruptionBudget holds "
                            "it until one does")
        return
    plan.append(Action(PATCH, "PgCluster", cluster.name, cluster.namespace,
                       f"the primary {primary}'s node {node} is cordoned (a drain?): switchover to "
                       f"{successor.name} on {_pod_node(pods.get(successor.name))} before its pod is evicted",
                       patch={"metadata": {"annotations": {ANNOTATION_SWITCHOVER: successor.name}}}))
    plan.events.append(Event(NORMAL, "NodeDrain", f"the primary {primary}'s node {node} is cordoned: "
                                                  f"switchover to {successor.name} first"))


def _pod_node(pod: Obj | None) -> str:
    return str(((pod or {}).get("spec") or {}).get("nodeName") or "")


def _plan_instances(cluster: Cluster, observed: ObservedCluster, plan: Plan, ha: HaDecision) -> None:
    instances = [Instance.from_object(body) for body in observed.instances]
    live = sorted((i for i in instances if not i.deleting), key=lambda i: i.ordinal)
    wanted = cluster.spec.instances

    if not instances:
        if ha.had_data:
            plan.waiting.append(
                "every PgInstance of this cluster is gone, but it had data (currentPrimary "
                f"{cluster.status.get('currentPrimary') or '?'}, or a volume marked initialised): not "
                "guessing which data is the latest, and never running initdb again; restore into a new "
                "cluster (`pgop restore`), or recreate the PgInstances over their retained volumes")
            return
        _plan_first_primary(cluster, observed, plan, ha, with_replicas=True)
        return
    first = instance_name(cluster.name, 0)
    if not ha.had_data and first not in {i.name for i in instances} and not any(i.is_primary for i in live) \
            and not any(i.status.last_heartbeat for i in instances):
        # A new cluster's first primary went (deleted by hand) before it ever ran, while its replicas
        # wait to clone it: no instance ever ran or holds data, so it is made again.
        _plan_first_primary(cluster, observed, plan, ha, with_replicas=False)
        return
    if not live:
        plan.waiting.append("instances are being deleted: " + ", ".join(sorted(i.name for i in instances)))
        return

    pod_ips = _pod_ips(observed)
    _plan_roles(cluster, live, plan, ha, pod_ips, _rw_elsewhere(observed, ha, pod_ips))
    by_name = {i.name: i for i in live}
    primary = by_name.get(ha.target_primary) if ha.current_primary == ha.target_primary else None

    highest = max(i.ordinal for i in instances)  # terminating ones too: their names are still taken
    missing = wanted - len(live)
    if missing > 0:
        if primary is None:
            plan.waiting.append(f"{missing} replica(s) wait for the primary {ha.target_primary} to be ready"
                                if ha.target_primary and not ha.busy
                                else f"{missing} replica(s) wait for a primary to clone from")
        elif not primary.status.ready:
            plan.waiting.append(f"{missing} replica(s) wait for the primary {primary.name} to be ready")
        else:
            for ordinal in range(highest + 1, highest + 1 + missing):
                name = instance_name(cluster.name, ordinal)
                _create(plan, build_instance(cluster, ordinal, REPLICA, "basebackup", primary=ha.follow,
                                             primary_host=pod_ips.get(ha.follow, ""),
                                             fenced=ha.fenced is not None and name in ha.fenced),
                        f"{wanted} instance(s) wanted: replica cloned from {primary.name} by pg_basebackup")

    removed: list[Instance] = []
    if missing < 0 and ha.busy:
        plan.waiting.append("scaling down waits until the failover or switchover is done")
    elif missing < 0:
        replicas = sorted((i for i in live if i.name != ha.target_primary), key=lambda i: i.ordinal, reverse=True)
        removed = replicas[:-missing]
        if len(removed) < -missing:
            plan.waiting.append("only replicas are removed when scaling down, never the primary")

    leaving = {i.name for i in removed}
    if ha.busy:
        plan.waiting.append("configuration changes wait until the failover or switchover is done")
    else:
        _plan_rollout(cluster, [i for i in live if i.name not in leaving], plan)

    for instance in removed:
        plan.append(Action(
            DELETE, "PgInstance", instance.name, cluster.namespace,
            f"{wanted} instance(s) wanted: remove replica {instance.name} (highest ordinal); "
            f"the primary's agent drops its replication slot {pgconfig.slot_name(instance.name)} "
            "once the PgInstance is gone",
            uid=instance.uid or None,
        ))


def _plan_first_primary(cluster: Cluster, observed: ObservedCluster, plan: Plan, ha: HaDecision,
                        with_replicas: bool) -> None:
    wanted = cluster.spec.instances
    mode = cluster.spec.bootstrap.first_primary_mode
    recovery = cluster.spec.bootstrap.recovery
    if recovery is not None:
        recovery = resolve_recovery(recovery, observed.recovery_source)
        if recovery.s3 is None:
            plan.waiting.append(f"the recovery source PgCluster {recovery.source} does not exist or has no "
                                "spec.backup.s3, and spec.bootstrap.recovery.s3 is not set: nothing says "
                                "where its backups are")
            return
    how = (f"restore the backups of {recovery.source}" if recovery else "initdb a new database")
    first = instance_name(cluster.name, 0)
    _create(plan, build_instance(cluster, 0, PRIMARY, mode, recovery, primary=first,
                                 fenced=ha.fenced is not None and first in ha.fenced),
            f"first primary: {how} on its own volume" if with_replicas else
            f"first primary again: {how} on its own volume; it went before it ever ran, and no instance holds data")
    if not with_replicas:
        return
    if wanted > 1 and recovery is None:
        for ordinal in range(1, wanted):
            name = instance_name(cluster.name, ordinal)
            _create(plan, build_instance(cluster, ordinal, REPLICA, "basebackup", primary=first,
                                         fenced=ha.fenced is not None and name in ha.fenced),
                    f"{wanted} instance(s) wanted: replica cloned from {first} by pg_basebackup; its "
                    f"bootstrap pod starts now and clones once {first} is up")
    elif wanted > 1:
        plan.waiting.append(f"{wanted - 1} replica(s) are created once the primary "
                            f"{first} is ready")


def _pod_ips(observed: ObservedCluster) -> dict[str, str]:
    """The pod IP of each instance's Postgres pod that has one: where replicas stream from."""
    return {name: ip for name, pod in (_by_instance(observed.pods) or {}).items()
            if (ip := str((pod.get("status") or {}).get("podIP") or ""))}


def _rw_elsewhere(observed: ObservedCluster, ha: HaDecision, pod_ips: Mapping[str, str]) -> list[str]:
    """While the pod of the instance the replicas should follow has no IP yet, they would connect
    through -rw: the instances other than that one whose pod still carries the `primary` role
    label, where -rw may still route."""
    if not ha.follow or observed.pods is None or ha.follow in pod_ips:
        return []
    return sorted(name for name, pod in (_by_instance(observed.pods) or {}).items()
                  if name != ha.follow and (_meta(pod).get("labels") or {}).get(LABEL_ROLE) == PRIMARY)


def _plan_roles(cluster: Cluster, live: list[Instance], plan: Plan, ha: HaDecision,
                pod_ips: Mapping[str, str], rw_elsewhere: Sequence[str] = ()) -> None:
    """spec.role, spec.primary, spec.primaryHost, spec.fenced and spec.bootstrap of every
    instance, as decided by pgop.cluster.failover: the instance becoming primary first, then the
    one stepping down, then the rest. A replica streams from the pod IP of the instance it follows
    (spec.primaryHost), never through -rw, which may still route to a deposed primary. Only while
    that pod has no IP is a replica left on -rw, and then not pointed at a new primary while
    another instance's pod still has the `primary` label (the instance planner moves that label;
    the next pass points them)."""
    if rw_elsewhere:
        plan.waiting.append(f"the replicas follow {ha.follow} once the pod of {', '.join(rw_elsewhere)} "
                            "has left -rw (its role label)")
    def order(instance: Instance) -> tuple[int, int]:
        if instance.name == ha.target_primary:
            return 0, instance.ordinal
        return (1 if instance.is_primary else 2), instance.ordinal

    for instance in sorted(live, key=order):
        raw = instance.raw_spec
        role = PRIMARY if instance.name == ha.target_primary else REPLICA
        follows = ha.primary_of(instance.name)
        if rw_elsewhere and follows and follows != instance.name and follows != raw.get("primary", ""):
            follows = raw.get("primary", "")  # not pointed anywhere new yet
        host = ""
        if follows and follows != instance.name:
            # the last address known while the followed pod has none (recreated, not yet running)
            host = pod_ips.get(follows) or (raw.get("primaryHost") or "" if raw.get("primary") == follows else "")
        desired: dict[str, Any] = {"role": role, "primary": follows, "primaryHost": host}
        if ha.fenced is not None:
            desired["fenced"] = instance.name in ha.fenced
        if ha.had_data and raw.get("bootstrap") != BASEBACKUP:
            desired["bootstrap"] = BASEBACKUP
        current = {key: raw.get(key, "" if key in ("primary", "primaryHost") else None) for key in desired}
        if current.get("fenced") is None and "fenced" in desired:
            current["fenced"] = False
        patch = {key: value for key, value in desired.items() if current.get(key) != value}
        if not patch:
            continue
        reasons = []
        if "role" in patch:
            reasons.append(f"role {raw.get('role')} -> {role}"
                           + (" (the new primary: its agent promotes it)" if role == PRIMARY
                              else " (its agent stops Postgres as primary and rejoins as a replica)"
                              if raw.get("role") == PRIMARY else ""))
        if "primary" in patch:
            follows = patch["primary"]
            reasons.append("stop streaming: a failover decides who is primary" if follows == ""
                           else "is the primary" if follows == instance.name else f"follow {follows}")
        if "primaryHost" in patch and "primary" not in patch and follows:
            reasons.append(f"{follows} is at {patch['primaryHost'] or 'no pod IP'} now")
        if "fenced" in patch:
            reasons.append("fenced: Postgres stops, the pod stays" if patch["fenced"] else "unfenced: Postgres starts")
            plan.event(WARNING if patch["fenced"] else NORMAL, "Fenced" if patch["fenced"] else "Unfenced",
                       f"{instance.name} " + ("fenced: its Postgres is stopped, its pod and volume kept"
                                              if patch["fenced"] else "unfenced: its Postgres starts again"))
        if "bootstrap" in patch:
            reasons.append("bootstrap basebackup: the cluster has data, a lost volume is rebuilt as a replica, "
                           "never initialised")
            for born in ("initdb", "recovery"):
                if born in raw:
                    patch[born] = None
        plan.append(Action(PATCH, "PgInstance", instance.name, cluster.namespace, "; ".join(reasons),
                           patch={"spec": patch}))


def _managed(instance: Instance) -> dict[str, Any]:
    return {key: instance.raw_spec[key] for key in MANAGED_FIELDS if key in instance.raw_spec}


def _restart_needs(instance: Instance, desired: Mapping[str, Any], cluster: Cluster) -> list[str]:
    needs = [f"{key} changed" for key in POD_FIELDS if instance.raw_spec.get(key) != desired.get(key)]
    if desired.get(RESTART_FIELD) and instance.raw_spec.get(RESTART_FIELD) != desired.get(RESTART_FIELD):
        needs.append(f"restart requested at {desired[RESTART_FIELD]} (pgop restart)")
    change = pgconfig.classify_change(
        pgconfig.effective_parameters(instance.spec.parameters),
        pgconfig.effective_parameters(cluster.spec.parameters),
        cluster.spec.postgres_version,
    )
    if change.needs_restart:
        needs.append("restart-only settings " + ", ".join(sorted(change.needs_restart_for)))
    return needs


def _describe(instance: Instance, patch: Mapping[str, Any]) -> str:
    parts = []
    for key in sorted(patch):
        if key == "parameters":
            parts.append("parameters " + ", ".join(sorted(patch[key] or instance.spec.parameters)))
        elif key != "configHash":
            parts.append(key)
    return "; ".join(parts) or "configuration"


def _plan_rollout(cluster: Cluster, instances: list[Instance], plan: Plan) -> None:
    for instance in instances:
        if instance.spec.postgres_version != cluster.spec.postgres_version:
            plan.waiting.append(f"{instance.name} runs PostgreSQL {instance.spec.postgres_version}; "
                                "a major upgrade in place is not supported")
    wanted = {i.name: _desired_of(i, managed_instance_spec(cluster), restart_scope(cluster)) for i in instances}
    outdated = {i.name: merge_patch(_managed(i), wanted[i.name]) for i in instances}
    outdated = {name: patch for name, patch in outdated.items() if patch}
    if not outdated:
        return

    reloads: list[Instance] = []
    restarts: list[tuple[Instance, list[str]]] = []
    for instance in instances:
        if instance.name in outdated:
            needs = _restart_needs(instance, wanted[instance.name], cluster)
            if needs:
                restarts.append((instance, needs))
            else:
                reloads.append(instance)

    for instance in sorted(reloads, key=lambda i: (i.is_primary, i.ordinal)):
        _patch_instance(plan, cluster, instance, outdated[instance.name],
                        f"{_describe(instance, outdated[instance.name])} changed: "
                        "the agent reloads Postgres, no restart")
    if not restarts:
        return

    wanted_parameters = pgconfig.effective_parameters(cluster.spec.parameters)
    primary_first = any(
        pgconfig.lowers_standby_minimums(pgconfig.effective_parameters(i.spec.parameters), wanted_parameters)
        for i, _ in restarts
    )
    restarts.sort(key=lambda pair: (pair[0].is_primary != primary_first, pair[0].status.ready, pair[0].ordinal))
    in_flight = [i.name for i in instances if i.name not in outdated and not i.settled]
    if in_flight:
        plan.waiting.append("rolling restart waits for " + ", ".join(in_flight)
                            + " to be ready on the new spec")
        return
    instance, needs = restarts[0]
    if instance.is_primary and not primary_first and len(instances) > 1:
        successor = _switchover_candidate(instance, [i for i in instances if i.name not in outdated])
        if successor is not None:
            if cluster.annotations.get(ANNOTATION_SWITCHOVER) != successor.name:
                plan.append(Action(PATCH, "PgCluster", cluster.name, cluster.namespace,
                                   f"rolling restart: the replicas run the new spec; switchover to {successor.name} "
                                   f"instead of restarting the primary {instance.name} in place",
                                   patch={"metadata": {"annotations": {ANNOTATION_SWITCHOVER: successor.name}}}))
            plan.waiting.append(f"rolling restart: {instance.name} restarts as a replica after the switchover "
                                f"to {successor.name}")
            return
    order = ("primary first: a lowered setting must not exceed the primary's on any replica"
             if primary_first else "replicas first, primary last")
    _patch_instance(plan, cluster, instance, outdated[instance.name],
                    f"{_describe(instance, outdated[instance.name])} changed: restart needed ("
                    + "; ".join(needs) + f"); one instance at a time, {order}")
    if len(restarts) > 1:
        plan.waiting.append("rolling restart: next " + ", ".join(i.name for i, _ in restarts[1:])
                            + f", each once {instance.name} is ready again")


def _desired_of(instance: Instance, desired: dict[str, Any], scope: frozenset[str] | None) -> dict[str, Any]:
    """The managed spec of one instance: a restart asked for other instances (`pgop restart
    --instance`) leaves this one's restart token as it is."""
    if scope is None or instance.name in scope:
        return desired
    mine = {key: value for key, value in desired.items() if key != RESTART_FIELD}
    if RESTART_FIELD in instance.raw_spec:
        mine[RESTART_FIELD] = instance.raw_spec[RESTART_FIELD]
    return mine


def _switchover_candidate(primary: Instance, updated: list[Instance]) -> Instance | None:
    """The replica already on the new spec that a switchover would promote: ready, streaming from
    the primary, not fenced; the most advanced, then the lowest ordinal. None when there is none
    (then the primary restarts in place, as with a single instance)."""
    fit = [i for i in updated if not i.is_primary and i.settled and not i.spec.fenced
           and i.status.wal_receiver == "streaming" and i.status.following == primary.name]
    if not fit:
        return None

    def position(instance: Instance) -> int:
        try:
            return parse_lsn(instance.status.received_lsn or instance.status.lsn or "")
        except ValueError:
            return -1
    return max(fit, key=lambda i: (position(i), -i.ordinal))


def _patch_instance(plan: Plan, cluster: Cluster, instance: Instance, patch: dict[str, Any], reason: str) -> None:
    plan.append(Action(PATCH, "PgInstance", instance.name, cluster.namespace, reason, patch={"spec": patch}))


# --------------------------------------------------------------------------------- instance

def plan_instance(instance: Instance | Obj, observed_pvc: Obj | None, observed_pods: Sequence[Obj]) -> Plan:
    """Actions that give one PgInstance its volume, its bootstrap and its Postgres pod.

    Whether a volume holds a data directory is recorded on the volume (pvc.ANNOTATION_INITIALIZED),
    set here when the bootstrap pod succeeded: a volume so marked is never bootstrapped again,
    and a Postgres pod never starts on a volume that is not.
    """
    if not isinstance(instance, Instance):
        instance = Instance.from_object(instance)
    plan = Plan()
    if instance.deleting:
        return plan
    pods = {_name(pod): pod for pod in observed_pods}
    bootstrap = pods.get(names.bootstrap_pod(instance.name))
    postgres = pods.get(names.postgres_pod(instance.name))

    if hibernation.is_hibernated(instance.raw_spec):
        _plan_hibernated(instance, bootstrap, postgres, plan)
        return plan
    if observed_pvc is None:
        _create(plan, build_pvc(instance),
                f"volume of {instance.spec.storage.size} for the data directory of {instance.name}")
        initialized = False
    else:
        if _deleting(observed_pvc):
            plan.waiting.append(f"volume {_name(observed_pvc)} is being deleted; a new one follows once it is gone")
            return plan
        if holds_foreign_data(observed_pvc, instance):
            plan.waiting.append(
                f"volume {_name(observed_pvc)} holds the data directory of another PgCluster of the same "
                "name; delete the PVC, or remove its annotation pgop.io/cluster-uid to adopt that data")
            return plan
        _plan_volume_changes(instance, observed_pvc, plan)
        initialized = is_initialized(observed_pvc)

    if not initialized:
        _plan_bootstrap(instance, observed_pvc, bootstrap, postgres, plan)
    else:
        _plan_postgres(instance, bootstrap, postgres, plan)
    return plan


def _plan_hibernated(instance: Instance, bootstrap: Obj | None, postgres: Obj | None, plan: Plan) -> None:
    """spec.hibernated: no Postgres pod runs; the volume stays. Deleting the pod lets its agent stop
    Postgres fast (a shutdown checkpoint) within the pod's grace period; a pod whose agent still
    bootstraps goes too (a half-made data directory is emptied by the next attempt, a
    finished one found by its marker). A restore's bootstrap pod still running is left to finish
    (its volume is marked once the instance wakes)."""
    if postgres is not None and not _deleting(postgres):
        plan.append(Action(DELETE, "Pod", _name(postgres), instance.namespace,
                           f"hibernated: {instance.name}'s Postgres stops (fast shutdown) and its pod goes; "
                           "the volume is kept", uid=_meta(postgres).get("uid")))
    plan.waiting.append(f"{instance.name} is hibernated: no pod runs until `pgop hibernate off`")


def _plan_volume_changes(instance: Instance, pvc: Obj, plan: Plan) -> None:
    patch: dict[str, Any] = {}
    requested = (((pvc.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
    wanted = instance.spec.storage.size
    if requested is not None and parse_quantity(wanted) > parse_quantity(requested):
        patch["spec"] = {"resources": {"requests": {"storage": wanted}}}
    elif requested is not None and parse_quantity(wanted) < parse_quantity(requested):
        plan.waiting.append(f"volume {_name(pvc)} stays at {requested}: volumes never shrink")
    owners = list(_meta(pvc).get("ownerReferences") or [])
    ours = [ref for ref in owners if ref.get("uid") == instance.uid]
    wanted_owners = desired_owner_references(instance)
    if bool(ours) != bool(wanted_owners):
        kept = [ref for ref in owners if ref.get("uid") != instance.uid] + wanted_owners
        patch["metadata"] = {"ownerReferences": kept or None}
    if patch:
        what = []
        if "spec" in patch:
            what.append(f"grow to {wanted}")
        if "metadata" in patch:
            what.append(f"reclaimPolicy {instance.spec.storage.reclaim_policy}: "
                        + ("deleted with its PgInstance" if wanted_owners else "kept when its PgInstance goes"))
        _patch(plan, "PersistentVolumeClaim", pvc, patch, "; ".join(what))


def _plan_bootstrap(instance: Instance, pvc: Obj | None, bootstrap: Obj | None, postgres: Obj | None,
                    plan: Plan) -> None:
    mode = instance.spec.bootstrap
    if postgres is not None:
        _plan_bootstrap_in_pod(instance, pvc, postgres, plan)
        return
    if bootstrap is None:
        if bootstraps_in_pod(instance):
            _create(plan, build_postgres_pod(instance, bootstrap=True),
                    f"bootstrap {instance.name}: {mode} into its empty volume, by the agent of its "
                    "Postgres pod, which then runs Postgres")
        else:
            _create(plan, build_bootstrap_pod(instance),
                    f"bootstrap {instance.name}: {mode} into its empty volume")
        return
    # A bootstrap pod: a restore's, or one an operator before one-pod bootstraps made.
    phase = bootstrap_phase(bootstrap)
    if _deleting(bootstrap):
        plan.waiting.append(f"bootstrap pod {_name(bootstrap)} is being deleted")
    elif phase == "Succeeded" and pvc is None:
        plan.append(Action(DELETE, "Pod", _name(bootstrap), instance.namespace,
                           f"{mode} filled a volume that is gone; bootstrap again on the new one",
                           uid=_meta(bootstrap).get("uid")))
    elif phase == "Succeeded" and pvc is not None:
        _patch(plan, "PersistentVolumeClaim", pvc, mark_initialized_patch(instance, mode),
               f"{mode} succeeded: the volume holds a data directory and is never bootstrapped again")
        plan.append(Action(DELETE, "Pod", _name(bootstrap), instance.namespace,
                           f"{mode} done", uid=_meta(bootstrap).get("uid")))
        _create(plan, build_postgres_pod(instance), f"run Postgres on the freshly made volume of {instance.name}")
    elif phase == "Failed":
        plan.append(Action(DELETE, "Pod", _name(bootstrap), instance.namespace,
                           f"{mode} failed (see the pod's log); a new bootstrap pod follows",
                           uid=_meta(bootstrap).get("uid")))
    else:
        plan.waiting.append(f"{mode} of {instance.name} runs in pod {_name(bootstrap)} ({phase})")


def _plan_bootstrap_in_pod(instance: Instance, pvc: Obj | None, postgres: Obj, plan: Plan) -> None:
    """A Postgres pod on a volume not marked initialised: its agent fills the volume, then runs
    Postgres; once the agent reported from the pod or the container was ready (Postgres ran on
    what the bootstrap made), the volume is marked (and, on the next pass, the pod's permission to bootstrap removed: _plan_postgres)."""
    name = _name(postgres)
    state = bootstrap_in_pod(postgres)
    if state is not None and instance.status.pod_uid and instance.status.pod_uid == _meta(postgres).get("uid"):
        # Its agent reported from this pod: it reports only once the bootstrap is done (usually a
        # moment before the kubelet's readiness probe says the container is ready).
        state = "Succeeded"
    if state is None:
        plan.waiting.append(f"pod {name} runs on volume {instance.name}, which is not marked "
                            "initialised; not bootstrapping under a running Postgres")
        return
    mode = (_meta(postgres).get("annotations") or {}).get(ANNOTATION_BOOTSTRAP_MODE) or instance.spec.bootstrap
    if _deleting(postgres):
        plan.waiting.append(f"pod {name} is being deleted; a new one bootstraps the volume")
    elif state == "Succeeded" and pvc is not None:
        _patch(plan, "PersistentVolumeClaim", pvc, mark_initialized_patch(instance, mode),
               f"{mode} succeeded in pod {name}: the volume holds a data directory and is never "
               "bootstrapped again")
    elif _phase(postgres) in ("Failed", "Succeeded"):
        plan.append(Action(DELETE, "Pod", name, instance.namespace,
                           f"pod ended ({_phase(postgres)}, e.g. evicted) before its volume was marked; "
                           "a new one bootstraps it", uid=_meta(postgres).get("uid")))
    elif state == "Succeeded":
        plan.waiting.append(f"pod {name} bootstrapped a volume that is gone")
    else:
        plan.waiting.append(f"{mode} of {instance.name} runs in pod {name} ({state})")


def _plan_postgres(instance: Instance, bootstrap: Obj | None, postgres: Obj | None, plan: Plan) -> None:
    if bootstrap is not None:
        if not _deleting(bootstrap):
            plan.append(Action(DELETE, "Pod", _name(bootstrap), instance.namespace,
                               "the volume is initialised; no bootstrap pod may run over it",
                               uid=_meta(bootstrap).get("uid")))
        if bootstrap_phase(bootstrap) not in ("Succeeded", "Failed"):
            plan.waiting.append(f"Postgres starts once bootstrap pod {_name(bootstrap)} is gone")
            return

    if postgres is None:
        again = instance.status.last_heartbeat is not None or instance.status.pod is not None
        _create(plan, build_postgres_pod(instance),
                f"recreate the Postgres pod of {instance.name} on the same volume; its data is kept"
                if again else f"run Postgres on the volume of {instance.name}")
        return
    if _deleting(postgres):
        plan.waiting.append(f"pod {_name(postgres)} is being deleted; it comes back on the same volume")
        return
    annotations = _meta(postgres).get("annotations") or {}
    if ANNOTATION_BOOTSTRAP_MODE in annotations:
        # Its agent may no longer fill the volume: started again (a crash, a new sandbox after a
        # node reboot) on a volume whose data went missing, it refuses rather than bring back an
        # empty instance (pgop.agent.bootstrap.refusal).
        _patch(plan, "Pod", postgres, {"metadata": {"annotations": {ANNOTATION_BOOTSTRAP_MODE: None}}},
               "the volume is marked initialised: the pod's agent may no longer bootstrap it")
    phase = _phase(postgres)
    if phase in ("Failed", "Succeeded"):
        plan.append(Action(DELETE, "Pod", _name(postgres), instance.namespace,
                           f"pod ended ({phase}, e.g. evicted); it comes back on the same volume",
                           uid=_meta(postgres).get("uid")))
        return
    if annotations.get(ANNOTATION_POD_INPUTS) != pod_inputs_hash(instance):
        plan.append(Action(DELETE, "Pod", _name(postgres), instance.namespace,
                           "image or resources changed: restart on a new pod, same volume",
                           uid=_meta(postgres).get("uid")))
        return
    labels = _meta(postgres).get("labels") or {}
    role = pod_role_label(instance)
    if labels.get(LABEL_ROLE) != role:
        _patch(plan, "Pod", postgres, {"metadata": {"labels": {LABEL_ROLE: role}}},
               f"role label {labels.get(LABEL_ROLE)!r} -> {role!r}: the Services follow the role")
