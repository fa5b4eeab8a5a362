"""What the agent in an instance's pods may do, and nothing more.

Read its cluster's PgInstances (the primary keeps a slot and a sync name for every replica),
write their status (heartbeat, role, LSN; deploy/admission.yaml narrows that to each pod's own
instance, and a backup's status to its own backup pod) and a backup's progress, read its cluster's Secrets (and the S3 credentials),
read pods, and record Events. It never touches the PgCluster, Services or other Secrets.
"""
from __future__ import annotations

from typing import Any

from pgop.kernel import names
from pgop.kernel.meta import cluster_labels, object_meta, owner_reference
from pgop.kernel.model import API_GROUP, Cluster


def _meta(cluster: Cluster) -> dict[str, Any]:
    return object_meta(names.agent_account(cluster.name), cluster.namespace, cluster_labels(cluster.name),
                       owner=owner_reference("PgCluster", cluster.name, cluster.uid))


def readable_secrets(cluster: Cluster) -> list[str]:
    wanted = {
        names.superuser_secret(cluster.name),
        names.replication_secret(cluster.name),
        names.app_secret(cluster.name),
    }
    backup = cluster.spec.backup
    if backup is not None and backup.s3 is not None:
        wanted.add(backup.s3.credentials_secret)
    recovery = cluster.spec.bootstrap.recovery
    if recovery is not None and recovery.s3 is not None:
        wanted.add(recovery.s3.credentials_secret)
    return sorted(wanted)


def agent_rules(cluster: Cluster) -> list[dict[str, Any]]:
    return [
        {"apiGroups": [API_GROUP], "resources": ["pginstances"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [API_GROUP], "resources": ["pginstances/status"], "verbs": ["get", "patch", "update"]},
        # Its liveness Lease (pgop.kernel.liveness): made on first use, then renewed.
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch"]},
        # A backup pod reports its progress (status.uploadedBytes) on its PgBackup.
        {"apiGroups": [API_GROUP], "resources": ["pgbackups/status"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": readable_secrets(cluster),
         "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ]


def build_service_account(cluster: Cluster) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(cluster)}


def build_role(cluster: Cluster) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(cluster),
        "rules": agent_rules(cluster),
    }


def build_role_binding(cluster: Cluster) -> dict[str, Any]:
    account = names.agent_account(cluster.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(cluster),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": cluster.namespace}],
    }
