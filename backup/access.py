"""The operator's and the CLI's way into a cluster's archive: the S3 location of spec.backup.s3 (or
of a recovery source) with the keys of its credentials Secret, read through the Kubernetes API.
The pods read the same Secret as mounted files (backup.s3.S3Settings.from_env).

Retention deletes with the keys of spec.backup.s3.retentionCredentialsSecret when it is set, a
Secret only the operator reads: then no pod holds keys that may delete the archive."""
from __future__ import annotations

from typing import Any

from pgop.backup.layout import ArchiveLayout
from pgop.backup.s3 import Credentials, CredentialsError, S3Storage
from pgop.kernel.model import NAMESPACED_LAYOUT, S3Spec


def storage_for(kube: Any, namespace: str, s3: S3Spec, **kwargs) -> S3Storage:
    """The archive with the keys the pods have: enough to list and read it."""
    return _storage(kube, namespace, s3, s3.credentials_secret, "S3 credentials Secret", **kwargs)


def retention_storage_for(kube: Any, namespace: str, s3: S3Spec, **kwargs) -> S3Storage:
    """The archive with the keys that may delete from it (retention)."""
    what = "S3 retention credentials Secret" if s3.retention_credentials_secret else "S3 credentials Secret"
    return _storage(kube, namespace, s3, s3.deleting_credentials_secret, what, **kwargs)


def _storage(kube: Any, namespace: str, s3: S3Spec, secret_name: str, what: str, **kwargs) -> S3Storage:
    secret = kube.get("Secret", namespace, secret_name)
    if secret is None:
        raise CredentialsError(f"the {what} {namespace}/{secret_name} does not exist")
    return S3Storage(s3.bucket, endpoint=s3.endpoint, region=s3.region,
                     credentials=Credentials.from_secret(secret), **kwargs)


def archive_of(cluster: str, s3: S3Spec, namespace: str = "", layout: str = NAMESPACED_LAYOUT) -> ArchiveLayout:
    """The archive of a cluster of `namespace` in the layout its PgCluster pins (Cluster.archive_layout)."""
    return ArchiveLayout(cluster, s3.path or "", namespace if layout == NAMESPACED_LAYOUT else "")
