"""The pod that takes one base backup (PgBackup) of a running instance.

It runs `pgop agent backup` with the cluster's image and its agent identity: it connects to the
chosen instance over the network as the replication role (pg_basebackup runs against a replica as
well as against the primary), streams the backup to the instance's S3 archive, reports progress
on the PgBackup status and leaves the catalog document as its termination message, which the
backup controller turns into the PgBackup's final status. No volume of the instance is mounted:
a backup pod never touches a data directory.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from pgop.kernel import names, pgconfig
from pgop.kernel.meta import LABEL_COMPONENT, cluster_labels, object_meta, owner_reference
from pgop.kernel.model import Instance
from pgop.kernel.podenv import ENV_BACKUP_OBJECT, SECRETS_MOUNT
from pgop.specs.pods import (
    TLS_VOLUME_MOUNT,
    _container_security,
    _pod_security,
    _s3_volumes,
    _secret_source,
    pod_env,
    s3_volume_mounts,
    tls_volume,
)

COMPONENT_BACKUP = "backup"
LABEL_BACKUP = "pgop.io/backup"
__all__ = ["ENV_BACKUP_OBJECT", "LABEL_BACKUP", "TERMINATION_LOG", "backup_pod_name", "build_backup_pod"]
TERMINATION_LOG = "/dev/termination-log"


def backup_pod_name(backup: str) -> str:
    return f"{backup}-backup"[:253]


def build_backup_pod(backup: str, backup_uid: str, instance: Instance, host: str) -> dict[str, Any]:
    """The pod for PgBackup `backup`, taking it from `instance` at `host` (its pod IP)."""
    cluster = instance.spec.cluster
    labels = cluster_labels(cluster) | {LABEL_COMPONENT: COMPONENT_BACKUP, LABEL_BACKUP: backup[:63]}
    # The instance label would make this pod one of the instance's own; say the source plainly.
    env = dataclasses.replace(pod_env(instance), instance=instance.name, backup_object=backup).to_env()
    container: dict[str, Any] = {
        "name": "backup",
        "image": instance.spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["pgop", "agent", "backup", "--name", backup, "--host", host],
        "env": env,
        "volumeMounts": [
            {"name": "secrets", "mountPath": SECRETS_MOUNT, "readOnly": True},
            TLS_VOLUME_MOUNT,
            *s3_volume_mounts(instance.spec.s3),
            {"name": "run", "mountPath": pgconfig.SOCKET_DIRECTORY},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": _container_security(),
        "terminationMessagePath": TERMINATION_LOG,
        # On a crash before the agent wrote its message, the log's tail says why.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": object_meta(backup_pod_name(backup), instance.namespace, labels,
                                owner=owner_reference("PgBackup", backup, backup_uid)),
        "spec": {
            "serviceAccountName": names.agent_account(cluster),
            "automountServiceAccountToken": True,
            "enableServiceLinks": False,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 10,
            "securityContext": _pod_security(),
            "containers": [container],
            "volumes": [
                {"name": "secrets", "projected": {"defaultMode": 0o440, "sources": [
                    _secret_source(names.superuser_secret(cluster), "superuser"),
                    _secret_source(names.replication_secret(cluster), "replication"),
                ]}},
                tls_volume(cluster, instance.spec.tls),
                *_s3_volumes(instance.spec.s3),
                {"name": "run", "emptyDir": {}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    }
