"""The pods of an instance, over its PVC and never two at the same time.

The Postgres pod runs `pgop agent run` as PID 1, which runs postgres. On a volume not yet marked
initialised the agent first fills it (initdb, or pg_basebackup from the primary) while the pod's
annotation pgop.io/bootstrap-mode permits it (build_postgres_pod(bootstrap=True)), then starts
Postgres in the same container: one pod and one container start per new instance. A restore (`--mode recovery`, which reads another
cluster's archive with that cluster's credentials and can take hours) runs in a pod of its own, the
bootstrap pod, which exits. All run as the image's non-root postgres user (uid 999,
images/postgres/Containerfile).
"""
from __future__ import annotations

from typing import Any

from pgop.kernel import names, pgconfig
from pgop.kernel.meta import (
    ANNOTATION_BOOTSTRAP_MODE,
    BOOTSTRAP_CONTAINER,
    COMPONENT_BOOTSTRAP,
    COMPONENT_POSTGRES,
    LABEL_CLUSTER,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_ROLE,
    POSTGRES_CONTAINER,
    cluster_labels,
    object_meta,
    owner_reference,
    stable_hash,
)
from pgop.kernel.model import (
    DEFAULT_TOPOLOGY_KEY,
    NAMESPACED_LAYOUT,
    PRIMARY,
    RECOVERY,
    REPLICA,
    REQUIRED,
    Instance,
    S3Spec,
    TlsSpec,
)
from pgop.kernel.podenv import (
    AGENT_PORT,
    DATA_MOUNT,
    ENV_BOOTSTRAP_PERMIT,
    METRICS_PORT,
    PGDATA,
    S3_CREDENTIALS_MOUNT,
    S3_ENCRYPTION_KEY_FILE,
    S3_ENCRYPTION_MOUNT,
    SECRETS_MOUNT,
    TLS_MOUNT,
    ArchiveEnv,
    PodEnv,
)
from pgop.specs.pvc import pvc_name

__all__ = ["AGENT_PORT", "DATA_MOUNT", "METRICS_PORT", "PGDATA", "S3_CREDENTIALS_MOUNT", "SECRETS_MOUNT"]

POSTGRES_UID = 999
READINESS_PATH = "/readyz"  # 200 when Postgres accepts connections in the role the spec asks for
LIVENESS_PATH = "/healthz"  # 200 while the agent's loop turns, whatever Postgres does

ROLE_PENDING = "pending"  # the label while the actual role has not caught up with the wanted one
ANNOTATION_POD_INPUTS = "pgop.io/pod-inputs-hash"


def pod_role_label(instance: Instance) -> str:
    """The role label the Services select on.

    `primary` only when the operator wants this instance to be primary *and* its agent reports it
    is one: -rw then never points at a replica being promoted, nor at a former primary that has
    not yet stepped down. Until then the label is `pending` and -rw has no endpoint, which fails
    writes cleanly instead of splitting them.
    """
    wanted, actual = instance.spec.role, instance.status.role
    if wanted == PRIMARY:
        return PRIMARY if actual == PRIMARY else ROLE_PENDING
    return REPLICA if actual in (None, REPLICA) else ROLE_PENDING


# The revision of the pod template this code builds. Raise it when a change to the pods built here
# (or to the agent in the image) must reach running pods: the cluster controller hands it to every
# PgInstance through the rolling restart (replicas first, the primary by switchover), so an
# operator upgrade leaves no database on the old template. A change that needs no restart keeps it.
# 1: before revisions existed. 2: no root init container (Pod Security "restricted").
POD_TEMPLATE_REVISION = 2


def pod_inputs_hash(instance: Instance) -> str:
    """Digest of the instance fields that shape the Postgres pod.

    Built from the instance spec rather than the rendered pod, so a pod is replaced only when its
    PgInstance says so: on a change a user asked for, or on a new POD_TEMPLATE_REVISION, both
    handed down one instance at a time by the rolling restart. Never all pods at once.
    """
    spec = instance.spec
    inputs: dict[str, Any] = {"image": spec.image, "resources": spec.resources,
                              "postgresVersion": spec.postgres_version}
    if spec.s3 is not None:
        # The S3 settings are environment variables and a volume of the pod; absent, the digest
        # stays what it was before backups existed.
        inputs["s3"] = spec.s3.to_dict()
        if spec.archive_layout == NAMESPACED_LAYOUT:  # legacy: the digest of before the layouts
            inputs["archiveLayout"] = spec.archive_layout
    # Likewise the placement: absent, existing pods keep their digest through the upgrade that
    # brought spec.affinity; setting or changing it moves the pods (one at a time, by the rollout).
    if spec.affinity is not None:
        inputs["affinity"] = spec.affinity.to_dict()
    if spec.topology_spread_constraints:
        inputs["topologySpreadConstraints"] = spec.topology_spread_constraints
    if spec.tls is not None:  # which Secrets the pod mounts
        inputs["tls"] = spec.tls.to_dict()
    if spec.pod_template:
        inputs["podTemplate"] = spec.pod_template
    return stable_hash(inputs)


def _affinity(instance: Instance) -> dict[str, Any]:
    """Keeps the instances of one cluster apart: the term selects the Postgres *and* bootstrap pods
    of the cluster's other instances, and both carry it, since with WaitForFirstConsumer storage the bootstrap pod is what decides the
    node (the zone) of an instance's volume."""
    placement = instance.spec.affinity
    term = {
        "topologyKey": placement.topology_key if placement is not None else DEFAULT_TOPOLOGY_KEY,
        "labelSelector": {
            "matchLabels": {LABEL_CLUSTER: instance.spec.cluster},
            "matchExpressions": [
                {"key": LABEL_COMPONENT, "operator": "In", "values": [COMPONENT_POSTGRES, COMPONENT_BOOTSTRAP]},
                # Not its own pods: a new pod of an instance whose volume is bound to a node must be
                # able to go there while the previous one (the finished bootstrap pod, the pod a
                # rollout replaces) is still terminating.
                {"key": LABEL_INSTANCE, "operator": "NotIn", "values": [instance.name]},
            ],
        },
    }
    anti: dict[str, Any]
    if placement is not None and placement.pod_anti_affinity_type == REQUIRED:
        anti = {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
    else:
        anti = {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]}
    affinity: dict[str, Any] = {"podAntiAffinity": anti}
    if placement is not None and placement.node_affinity:
        affinity["nodeAffinity"] = placement.node_affinity
    return affinity


def _placement(instance: Instance) -> dict[str, Any]:
    """The pod spec fields that decide where the pod runs."""
    out: dict[str, Any] = {"affinity": _affinity(instance)}
    placement = instance.spec.affinity
    if placement is not None and placement.node_selector:
        out["nodeSelector"] = dict(placement.node_selector)
    if placement is not None and placement.tolerations:
        out["tolerations"] = placement.tolerations
    if instance.spec.topology_spread_constraints:
        out["topologySpreadConstraints"] = instance.spec.topology_spread_constraints
    return out


def archive_env(s3: S3Spec | None, namespace: str = "") -> ArchiveEnv | None:
    """Where a pod's WAL archive is, from an S3 spec (credentials mounted at S3_CREDENTIALS_MOUNT);
    `namespace`: the namespace part of the namespaced layout, "" for the legacy one."""
    if s3 is None:
        return None
    return ArchiveEnv(bucket=s3.bucket, path=s3.path or "", endpoint=s3.endpoint, region=s3.region,
                      namespace=namespace or None,
                      encryption_key_file=S3_ENCRYPTION_KEY_FILE if s3.encryption_key_secret else None)


def archive_namespace(instance: Instance) -> str:
    """The namespace part of the instance's own archive location ("" in the legacy layout)."""
    return instance.namespace if instance.spec.archive_layout == NAMESPACED_LAYOUT else ""


def pod_env(instance: Instance, s3: S3Spec | None = None) -> PodEnv:
    """The pod contract of an instance's pods: identity from the pod's metadata, the archive of
    `s3` (a recovery reads its source's: the restore says the source's layout in its own
    restore_command) or of the cluster."""
    return PodEnv(archive=archive_env(s3 if s3 is not None else instance.spec.s3, archive_namespace(instance)),
                  tls_dir=TLS_MOUNT,
                  # The root filesystem is read-only; keep `kubectl exec ... psql` from complaining.
                  extra={"PSQL_HISTORY": "/tmp/.psql_history"})


def _recovering_from(instance: Instance) -> S3Spec | None:
    """Where a recovery bootstrap reads the source's archive (the cluster controller resolved it)."""
    recovery = instance.spec.recovery
    if instance.spec.bootstrap == RECOVERY and recovery is not None:
        return recovery.s3
    return None


def _secret_source(secret: str, directory: str) -> dict[str, Any]:
    return {"secret": {"name": secret, "items": [
        {"key": "username", "path": f"{directory}/username"},
        {"key": "password", "path": f"{directory}/password"},
    ]}}


def tls_volume(cluster: str, user: TlsSpec | None = None) -> dict[str, Any]:
    """The certificates at TLS_MOUNT (pgconfig.TlsFiles names the files). Read-only to the postgres
    group; Postgres and libpq accept a root-owned key readable by the group. The kubelet refreshes
    the files when a Secret changes (the operator renews its certificates, cert-manager the
    user's), and the agent reloads Postgres.

    Without spec.tls (`user` None): the server's certificate and the CA bundle from <cluster>-server,
    the replication role's from <cluster>-replication-tls (the layout of every cluster before
    spec.tls existed). With it: the server's certificate from spec.tls.serverSecret when set, its
    issuer as server-ca.crt (what replicas check the server with), and the CAs trusted for client
    certificates (the cluster's CA bundle and spec.tls.clientCASecret's, which the operator joins)
    from <cluster>-replication-tls as ca.crt."""
    def items(pairs: dict[str, str]) -> list[dict[str, str]]:
        return [{"key": key, "path": path} for key, path in pairs.items()]
    replication = names.replication_tls_secret(cluster)
    if user is None:
        sources = [
            {"secret": {"name": names.server_tls_secret(cluster),
                        "items": items({"tls.crt": "server.crt", "tls.key": "server.key", "ca.crt": "ca.crt"})}},
            {"secret": {"name": replication,
                        "items": items({"tls.crt": "replication.crt", "tls.key": "replication.key"})}},
        ]
    else:
        sources = [
            {"secret": {"name": user.server_secret or names.server_tls_secret(cluster),
                        "items": items({"tls.crt": "server.crt", "tls.key": "server.key",
                                        "ca.crt": "server-ca.crt"})}},
            {"secret": {"name": replication,
                        "items": items({"tls.crt": "replication.crt", "tls.key": "replication.key",
                                        "ca.crt": "ca.crt"})}},
        ]
    return {"name": "tls", "projected": {"defaultMode": 0o440, "sources": sources}}


TLS_VOLUME_MOUNT = {"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True}


def _volumes(instance: Instance, s3: S3Spec | None = None) -> list[dict[str, Any]]:
    cluster = instance.spec.cluster
    return [
        {"name": "pgdata", "persistentVolumeClaim": {"claimName": pvc_name(instance)}},
        # Files rather than env vars: not in `ps e`, and a rotated password reaches a running pod.
        {"name": "secrets", "projected": {"defaultMode": 0o440, "sources": [
            _secret_source(names.superuser_secret(cluster), "superuser"),
            _secret_source(names.replication_secret(cluster), "replication"),
            _secret_source(names.app_secret(cluster), "app"),
        ]}},
        tls_volume(cluster, instance.spec.tls),
        *_s3_volumes(s3 if s3 is not None else instance.spec.s3),
        {"name": "run", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        # Postgres' dynamic shared memory lives in /dev/shm, which container runtimes cap at 64MB.
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
    ]


def _s3_volumes(s3: S3Spec | None) -> list[dict[str, Any]]:
    if s3 is None:
        return []
    # Optional: a missing Secret (or key) must not keep Postgres from starting; archiving then
    # fails, and says why in pg_stat_archiver, the PgInstance status and ContinuousArchiving.
    volumes = [{"name": "s3-credentials", "projected": {"defaultMode": 0o440, "sources": [
        {"secret": {"name": s3.credentials_secret, "optional": True}},
    ]}}]
    if s3.encryption_key_secret:
        # Only the key, as the file `key`; optional like the credentials: without it Postgres still
        # starts, and archiving refuses to write anything unencrypted, saying the file is missing.
        volumes.append({"name": "s3-encryption", "secret": {
            "secretName": s3.encryption_key_secret, "optional": True, "defaultMode": 0o440,
            "items": [{"key": s3.encryption_key, "path": "key"}]}})
    return volumes


def s3_volume_mounts(s3: S3Spec | None) -> list[dict[str, Any]]:
    """The mounts of _s3_volumes(s3): the credentials and, when set, the encryption key."""
    if s3 is None:
        return []
    mounts = [{"name": "s3-credentials", "mountPath": S3_CREDENTIALS_MOUNT, "readOnly": True}]
    if s3.encryption_key_secret:
        mounts.append({"name": "s3-encryption", "mountPath": S3_ENCRYPTION_MOUNT, "readOnly": True})
    return mounts


def _volume_mounts(instance: Instance, s3_location: S3Spec | None = None) -> list[dict[str, Any]]:
    s3 = s3_volume_mounts(s3_location or instance.spec.s3)
    return [
        {"name": "pgdata", "mountPath": DATA_MOUNT},
        {"name": "secrets", "mountPath": SECRETS_MOUNT, "readOnly": True},
        TLS_VOLUME_MOUNT,
        *s3,
        {"name": "run", "mountPath": pgconfig.SOCKET_DIRECTORY},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }


def _pod_security() -> dict[str, Any]:
    """What Pod Security "restricted" asks for, and no more. The volume is handed to the postgres
    group by fsGroup (the kubelet does it for every volume type that supports ownership: CSI,
    local, emptyDir); there is no root init container to chown it."""
    return {
        "runAsUser": POSTGRES_UID,
        "runAsGroup": POSTGRES_UID,
        "runAsNonRoot": True,
        "fsGroup": POSTGRES_UID,
        # Walk the volume to fix ownership only when its root is wrong, not on every start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container(instance: Instance, container: dict[str, Any], s3: S3Spec | None = None) -> dict[str, Any]:
    """`container` with what every container of an instance's pods has: image, resources, the pod
    contract's environment, the volumes and the restricted security context."""
    if instance.spec.resources:
        container["resources"] = instance.spec.resources
    container.update({
        "image": instance.spec.image,
        "imagePullPolicy": "IfNotPresent",
        "env": pod_env(instance, s3).to_env(),
        "volumeMounts": _volume_mounts(instance, s3),
        "securityContext": _container_security(),
    })
    return container


def _pod(instance: Instance, name: str, labels: dict[str, str], annotations: dict[str, str],
         container: dict[str, Any], restart_policy: str, s3: S3Spec | None = None) -> dict[str, Any]:
    cluster = instance.spec.cluster
    container = _container(instance, container, s3)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": object_meta(name, instance.namespace, labels,
                                owner=owner_reference("PgInstance", instance.name, instance.uid),
                                annotations=annotations),
        "spec": {
            "serviceAccountName": names.agent_account(cluster),
            "automountServiceAccountToken": True,
            "enableServiceLinks": False,
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 30,
            "securityContext": _pod_security(),
            **_placement(instance),
            "containers": [container],
            "volumes": _volumes(instance, s3),
        },
    }


def _bootstrap_container(mode: str) -> dict[str, Any]:
    command = ["pgop", "agent", "bootstrap", "--mode", mode]
    return {"name": BOOTSTRAP_CONTAINER, "command": command,
            # A failed bootstrap says why (e.g. a restore's target before the first backup) in
            # the pod status, where the instance controller reads it.
            "terminationMessagePolicy": "FallbackToLogsOnError"}


def bootstraps_in_pod(instance: Instance) -> bool:
    """Whether a new volume of `instance` is filled by the agent of its Postgres pod: initdb and
    basebackup. A recovery keeps its own pod (it mounts the source's archive credentials)."""
    return instance.spec.bootstrap != RECOVERY


def build_postgres_pod(instance: Instance, bootstrap: bool = False) -> dict[str, Any]:
    """`bootstrap`: the volume is not marked initialised; the pod's agent fills it (or finds it
    filled: its marker next to PGDATA) before it starts Postgres, in the same container: no
    second container to start once the bootstrap is done."""
    labels = cluster_labels(instance.spec.cluster) | {
        LABEL_INSTANCE: instance.name,
        LABEL_COMPONENT: COMPONENT_POSTGRES,
        LABEL_ROLE: pod_role_label(instance),
    }
    container = {
        "name": POSTGRES_CONTAINER,
        "command": ["pgop", "agent", "run"],
        "ports": [
            {"name": "postgres", "containerPort": pgconfig.POSTGRES_PORT, "protocol": "TCP"},
            {"name": "agent", "containerPort": AGENT_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # Short period: readiness is what moves a Service endpoint, and time to Ready counts (a new
        # instance's first probes come while its agent still bootstraps; the one after it is
        # ready, at most a second later, puts it behind its Services). Still about 6 s of failed
        # probes before a pod leaves them.
        "readinessProbe": {"httpGet": {"path": READINESS_PATH, "port": "agent"},
                           "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 6},
        # Against the agent, not Postgres: a long crash recovery (or bootstrap) must not get the
        # pod killed.
        "livenessProbe": {"httpGet": {"path": LIVENESS_PATH, "port": "agent"},
                          "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
        # A failed bootstrap says why in the pod status, where the instance controller reads it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    annotations = {ANNOTATION_POD_INPUTS: pod_inputs_hash(instance)}
    if bootstrap:
        if not bootstraps_in_pod(instance):
            raise ValueError(f"{instance.spec.bootstrap} runs in a bootstrap pod, not in the Postgres pod")
        annotations[ANNOTATION_BOOTSTRAP_MODE] = instance.spec.bootstrap
    pod = _pod(instance, names.postgres_pod(instance.name), labels, annotations, container, "Always")
    if bootstrap:
        # Read at each start of the container: once the operator marked the volume and removed
        # the annotation, a restart (a crash, a new sandbox after a node reboot) finds "" and the
        # agent refuses to fill a volume whose data went missing (pgop.agent.bootstrap.refusal).
        # A failed bootstrap exits the agent; the kubelet restarts it with its back-off.
        pod["spec"]["containers"][0]["env"].append({"name": ENV_BOOTSTRAP_PERMIT, "valueFrom": {"fieldRef": {
            "apiVersion": "v1", "fieldPath": f"metadata.annotations['{ANNOTATION_BOOTSTRAP_MODE}']"}}})
    return pod


def build_bootstrap_pod(instance: Instance) -> dict[str, Any]:
    mode = instance.spec.bootstrap
    # No role label: no Service may route to a half-made data directory.
    labels = cluster_labels(instance.spec.cluster) | {
        LABEL_INSTANCE: instance.name,
        LABEL_COMPONENT: COMPONENT_BOOTSTRAP,
    }
    container = _bootstrap_container(mode)
    # OnFailure: the kubelet retries in place (the agent starts a retried basebackup afresh), and
    # the pod name stays taken, so there is never a second bootstrap pod. A recovery reads the
    # source's archive: its S3 location and credentials instead of this cluster's own; what to
    # restore (source, backup, target) it reads from its PgInstance's spec.recovery.
    return _pod(instance, names.bootstrap_pod(instance.name), labels,
                {ANNOTATION_BOOTSTRAP_MODE: mode}, container, "OnFailure",
                s3=_recovering_from(instance))
