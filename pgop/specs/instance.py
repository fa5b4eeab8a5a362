"""The PgInstance objects of a cluster: one per Postgres instance, named <cluster>-<ordinal>.

An instance carries its own copy of what it runs (image, parameters, sync settings), so the
cluster controller can roll a change out one instance at a time, replicas before the primary.
"""
from __future__ import annotations

import json
from typing import Any

from pgop.kernel import pgconfig
from pgop.kernel.meta import (
    LABEL_INSTANCE,
    RELOAD_FIELD,
    RESTART_FIELD,
    cluster_labels,
    object_meta,
    owner_reference,
    stable_hash,
)
from pgop.kernel.model import (
    API_VERSION,
    NAMESPACED_LAYOUT,
    BootstrapMode,
    Cluster,
    ClusterSpec,
    RecoverySpec,
    Role,
    instance_name,
)
from pgop.specs.pods import POD_TEMPLATE_REVISION

KIND = "PgInstance"

# What the cluster controller keeps in step with the PgCluster spec on existing instances. Not
# here: cluster and ordinal (identity, never patched), role, primary and fenced (the cluster
# planner derives them from status.targetPrimary/currentPrimary and the annotation
# pgop.io/fenced-instances: pgop.cluster.failover), bootstrap (becomes basebackup once the
# cluster has had data), postgresVersion (immutable: no in-place major upgrade).
MANAGED_FIELDS = (
    "image", "storage", "resources", "parameters",
    "synchronousReplicas", "synchronousMode", "enableSuperuserAccess", "backup", "configHash",
    "affinity", "topologySpreadConstraints", "restartRequestedAt", "reloadRequestedAt", "tls",
    "podTemplate",
)
# Fields whose change needs a new Postgres pod, not just a new config file. Scheduling fields
# (affinity, topologySpreadConstraints) count too: a pod is placed once, so the new placement
# rules reach a running instance only through a new pod.
POD_FIELDS = ("image", "resources", "affinity", "topologySpreadConstraints", "tls", "podTemplate")

# Day-2 requests of `pgop restart` and `pgop reload`, by annotation on the PgCluster (people ask
# the operator; only the operator patches a PgInstance's spec). The value is an opaque token (the
# CLI writes the time of the request). The planner copies it into each instance's
# spec.restartRequestedAt / spec.reloadRequestedAt, a restart rolled one instance at a time like
# any change that needs one; an agent restarts (reloads) Postgres once when the token it finds
# there differs from the one its running postmaster has honoured.
ANNOTATION_RESTART = "pgop.io/restart-requested-at"
# JSON list of the instance names a restart is for; absent: every instance.
ANNOTATION_RESTART_INSTANCES = "pgop.io/restart-instances"
ANNOTATION_RELOAD = "pgop.io/reload-requested-at"
TOKEN_MAX = 64


def config_hash(spec: ClusterSpec) -> str:
    """Digest of everything the agent renders into postgresql.conf; it changes iff the config does."""
    return stable_hash({
        "parameters": pgconfig.effective_parameters(spec.parameters),
        "synchronousReplicas": spec.synchronous_replicas,
        "synchronousMode": spec.synchronous_mode,
        "backup": _backup(spec),
    })


def _backup(spec: ClusterSpec) -> dict[str, Any] | None:
    if spec.backup is None or spec.backup.s3 is None:
        return None
    return {"s3": spec.backup.s3.for_pods().to_dict(), "walArchiving": spec.backup.wal_archiving}


def managed_instance_spec(cluster: Cluster) -> dict[str, Any]:
    """The part of every instance's spec that follows the PgCluster spec."""
    spec = cluster.spec
    managed: dict[str, Any] = {
        "image": spec.effective_image,
        "storage": spec.storage.to_dict(),
        "parameters": dict(spec.parameters),
        "synchronousReplicas": spec.synchronous_replicas,
        "synchronousMode": spec.synchronous_mode,
        "enableSuperuserAccess": spec.enable_superuser_access,
        "configHash": config_hash(spec),
        "podTemplate": POD_TEMPLATE_REVISION,
    }
    if spec.resources:
        managed["resources"] = spec.resources
    # Only when set: instances of a cluster without them keep the spec (and pods) they had.
    if spec.affinity is not None:
        managed["affinity"] = spec.affinity.to_dict()
    if spec.topology_spread_constraints:
        managed["topologySpreadConstraints"] = spec.topology_spread_constraints
    if spec.tls is not None:  # the pods mount the user's Secrets
        managed["tls"] = spec.tls.to_dict()
    backup = _backup(spec)
    if backup is not None:
        # Only the namespaced layout is said: instances of a cluster that keeps the legacy layout
        # keep the spec (and pods) they had.
        if cluster.archive_layout == NAMESPACED_LAYOUT:
            backup["archiveLayout"] = NAMESPACED_LAYOUT
        managed["backup"] = backup
    for annotation, field in ((ANNOTATION_RESTART, RESTART_FIELD), (ANNOTATION_RELOAD, RELOAD_FIELD)):
        token = cluster.annotations.get(annotation, "").strip()[:TOKEN_MAX]  # the CRD's maxLength
        if token:
            managed[field] = token
    return managed


def restart_scope(cluster: Cluster) -> frozenset[str] | None:
    """The instances the restart request is for (annotation pgop.io/restart-instances, a JSON
    list of names); None: every instance. An unreadable list counts as none, never as all."""
    text = cluster.annotations.get(ANNOTATION_RESTART_INSTANCES)
    if text is None:
        return None
    try:
        names = json.loads(text)
    except ValueError:
        return frozenset()
    if not isinstance(names, list):
        return frozenset()
    return frozenset(str(n) for n in names)


def instance_spec(cluster: Cluster, ordinal: int, role: Role, bootstrap: BootstrapMode,
                  recovery: RecoverySpec | None = None, *, primary: str = "", primary_host: str = "",
                  fenced: bool = False) -> dict[str, Any]:
    """`recovery`: spec.bootstrap.recovery with the source's S3 location filled in (the cluster
    controller looks it up), for the instance that restores. `primary_host`: the pod IP of
    `primary`, where a replica clones and streams from."""
    spec: dict[str, Any] = {
        "cluster": cluster.name,
        "ordinal": ordinal,
        "role": role,
        "bootstrap": bootstrap,
        "fenced": fenced,
        "primary": primary,
        **({"primaryHost": primary_host} if primary_host else {}),
        "postgresVersion": cluster.spec.postgres_version,
    }
    spec.update(managed_instance_spec(cluster))
    initdb = cluster.spec.bootstrap.initdb
    recovery = recovery or cluster.spec.bootstrap.recovery
    if bootstrap == "initdb" and initdb is not None:
        spec["initdb"] = initdb.to_dict()
    if bootstrap == "recovery" and recovery is not None:
        spec["recovery"] = recovery.to_dict()
    return spec


def build_instance(cluster: Cluster, ordinal: int, role: Role, bootstrap: BootstrapMode,
                   recovery: RecoverySpec | None = None, *, primary: str = "", primary_host: str = "",
                   fenced: bool = False) -> dict[str, Any]:
    name = instance_name(cluster.name, ordinal)
    labels = cluster_labels(cluster.name) | {LABEL_INSTANCE: name}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": object_meta(name, cluster.namespace, labels,
                                owner=owner_reference("PgCluster", cluster.name, cluster.uid)),
        "spec": instance_spec(cluster, ordinal, role, bootstrap, recovery, primary=primary,
                              primary_host=primary_host, fenced=fenced),
    }
