"""The pod contract: what the operator's pods tell the program inside them (`pgop agent`, its
bootstrap, `wal-push`/`wal-fetch` run by PostgreSQL, the backup pod) through environment variables.

One class, both directions: the pod builders call `PodEnv.to_env()`, the programs in the pod call
`PodEnv.from_env(os.environ)`. The environment carries identity (which cluster, instance and
namespace; which pod, IP and node, from the downward API), fixed paths, and where the archive is
(PostgreSQL runs `archive_command` without an API client). Everything else, such as what to
bootstrap or restore, the program reads from its PgInstance, as the operator wrote it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pgop.kernel.meta import LABEL_CLUSTER, LABEL_INSTANCE

ENV_CLUSTER = "PGOP_CLUSTER"
ENV_INSTANCE = "PGOP_INSTANCE"
ENV_NAMESPACE = "PGOP_NAMESPACE"
ENV_POD_NAME = "PGOP_POD_NAME"
# Tells a pod from its namesake that replaced it (a force-deleted pod's containers may run on).
ENV_POD_UID = "PGOP_POD_UID"
ENV_POD_IP = "PGOP_POD_IP"
ENV_NODE_NAME = "PGOP_NODE_NAME"
ENV_PGDATA = "PGDATA"
ENV_AGENT_PORT = "PGOP_AGENT_PORT"
ENV_SECRETS_DIR = "PGOP_SECRETS_DIR"
# The certificates (server, CA, replication client): TLS on; unset, no TLS (an agent run by hand).
ENV_TLS_DIR = "PGOP_TLS_DIR"
# Where WAL is archived and read back (spec.backup.s3, or the source's archive for a restore).
ENV_S3_BUCKET = "PGOP_S3_BUCKET"
ENV_S3_PATH = "PGOP_S3_PATH"
ENV_S3_ENDPOINT = "PGOP_S3_ENDPOINT"
ENV_S3_REGION = "PGOP_S3_REGION"
ENV_S3_CREDENTIALS_DIR = "PGOP_S3_CREDENTIALS_DIR"
ENV_S3_CLUSTER = "PGOP_S3_CLUSTER"  # whose archive; default: the pod's cluster (a restore names the source)
# The namespace part of the archive's location (`<path>/<namespace>/<cluster>/`); unset or empty:
# the legacy layout `<path>/<cluster>/` of clusters that archived before namespaces were part of it.
ENV_S3_NAMESPACE = "PGOP_S3_NAMESPACE"
# The file of the archive's encryption key (spec.backup.s3.encryption.keySecret, mounted); unset:
# objects are written unencrypted (encrypted ones are still recognised, and refused for want of a key).
ENV_S3_ENCRYPTION_KEY_FILE = "PGOP_S3_ENCRYPTION_KEY_FILE"
# The PgBackup whose status.uploadedBytes a backup pod updates.
ENV_BACKUP_OBJECT = "PGOP_BACKUP_OBJECT"

DATA_MOUNT = "/var/lib/postgresql/data"
# A subdirectory, because initdb wants an empty directory and a volume's root may hold lost+found.
PGDATA = f"{DATA_MOUNT}/pgdata"
SECRETS_MOUNT = "/etc/pgop/secrets"
TLS_MOUNT = "/etc/pgop/tls"
# Files of the S3 credentials Secret: ACCESS_KEY_ID and ACCESS_SECRET_KEY (or AWS_ACCESS_KEY_ID
# and AWS_SECRET_ACCESS_KEY).
S3_CREDENTIALS_MOUNT = "/etc/pgop/s3"
# The encryption key, in its own read-only volume of the pods that read or write the archive.
S3_ENCRYPTION_MOUNT = "/etc/pgop/s3-encryption"
S3_ENCRYPTION_KEY_FILE = f"{S3_ENCRYPTION_MOUNT}/key"
AGENT_PORT = 8008
# /metrics of the instance (the named container port `metrics`); PGOP_METRICS_PORT=0 turns it off.
METRICS_PORT = 9187
ENV_METRICS_PORT = "PGOP_METRICS_PORT"
# A Postgres pod made for a volume not yet marked initialised: the pod's annotation
# pgop.io/bootstrap-mode (downward API, read again at each container start), the bootstrap its
# agent may run. The operator removes it once the volume is marked initialised, so a restarted
# agent never fills a volume whose data went missing.
ENV_BOOTSTRAP_PERMIT = "PGOP_BOOTSTRAP_PERMIT"

# Identity from the pod's own metadata (downward API) when the builder leaves the value empty.
_DOWNWARD = {
    ENV_CLUSTER: f"metadata.labels['{LABEL_CLUSTER}']",
    ENV_INSTANCE: f"metadata.labels['{LABEL_INSTANCE}']",
    ENV_NAMESPACE: "metadata.namespace",
    ENV_POD_NAME: "metadata.name",
    ENV_POD_UID: "metadata.uid",
    ENV_POD_IP: "status.podIP",
    ENV_NODE_NAME: "spec.nodeName",
}


class PodEnvError(RuntimeError):
    """The pod does not say what its program needs (names the variables)."""


@dataclass(frozen=True)
class ArchiveEnv:
    """Where the pod's WAL archive is: bucket, prefix, endpoint, region, mounted credentials."""

    bucket: str
    path: str = ""
    endpoint: str | None = None
    region: str | None = None
    credentials_dir: str | None = S3_CREDENTIALS_MOUNT
    cluster: str | None = None  # whose archive, when not the pod's own cluster
    namespace: str | None = None  # the namespace part of the archive's location; None: legacy layout
    encryption_key_file: str | None = None  # set: what is written is encrypted with this key

    def to_env(self) -> list[dict[str, Any]]:
        env: list[dict[str, Any]] = [{"name": ENV_S3_BUCKET, "value": self.bucket}]
        for name, value in ((ENV_S3_PATH, self.path), (ENV_S3_ENDPOINT, self.endpoint),
                            (ENV_S3_REGION, self.region), (ENV_S3_CLUSTER, self.cluster),
                            (ENV_S3_NAMESPACE, self.namespace),
                            (ENV_S3_ENCRYPTION_KEY_FILE, self.encryption_key_file)):
            if value:
                env.append({"name": name, "value": value})
        if self.credentials_dir:
            env.append({"name": ENV_S3_CREDENTIALS_DIR, "value": self.credentials_dir})
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ArchiveEnv | None:
        """None when the pod has no archive (no PGOP_S3_BUCKET)."""
        bucket = env.get(ENV_S3_BUCKET, "")
        if not bucket:
            return None
        return cls(bucket=bucket, path=env.get(ENV_S3_PATH, ""), endpoint=env.get(ENV_S3_ENDPOINT) or None,
                   region=env.get(ENV_S3_REGION) or None, credentials_dir=env.get(ENV_S3_CREDENTIALS_DIR) or None,
                   cluster=env.get(ENV_S3_CLUSTER) or None, namespace=env.get(ENV_S3_NAMESPACE) or None,
                   encryption_key_file=env.get(ENV_S3_ENCRYPTION_KEY_FILE) or None)


@dataclass(frozen=True)
class PodEnv:
    """What one pod tells its program. An empty identity field is filled from the pod's own
    metadata by the downward API (to_env), and is what the pod said (from_env)."""

    cluster: str = ""
    instance: str = ""
    namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""
    pod_ip: str = ""
    node_name: str = ""
    pgdata: str = PGDATA
    agent_port: int = AGENT_PORT
    secrets_dir: str = SECRETS_MOUNT
    tls_dir: str = ""
    archive: ArchiveEnv | None = None
    backup_object: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)  # not read by pgop (e.g. PSQL_HISTORY)

    def to_env(self) -> list[dict[str, Any]]:
        """The container's `env`, in a stable order."""
        env: list[dict[str, Any]] = []
        for name, value in ((ENV_CLUSTER, self.cluster), (ENV_INSTANCE, self.instance),
                            (ENV_NAMESPACE, self.namespace), (ENV_POD_NAME, self.pod_name),
                            (ENV_POD_UID, self.pod_uid),
                            (ENV_POD_IP, self.pod_ip), (ENV_NODE_NAME, self.node_name)):
            env.append({"name": name, "value": value} if value else
                       {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": _DOWNWARD[name]}}})
        env += [{"name": ENV_PGDATA, "value": self.pgdata},
                {"name": ENV_AGENT_PORT, "value": str(self.agent_port)},
                {"name": ENV_SECRETS_DIR, "value": self.secrets_dir}]
        if self.tls_dir:
            env.append({"name": ENV_TLS_DIR, "value": self.tls_dir})
        env += [{"name": name, "value": value} for name, value in self.extra.items()]
        if self.archive is not None:
            env += self.archive.to_env()
        if self.backup_object:
            env.append({"name": ENV_BACKUP_OBJECT, "value": self.backup_object})
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, require: tuple[str, ...] = ()) -> PodEnv:
        """The pod's word; PodEnvError names every variable of `require` that is missing."""
        missing = [name for name in require if not env.get(name)]
        if missing:
            raise PodEnvError("the environment variables " + ", ".join(missing) + " are not set "
                              "(the operator's pods set them)")
        port = env.get(ENV_AGENT_PORT) or str(AGENT_PORT)
        try:
            agent_port = int(port)
        except ValueError:
            raise PodEnvError(f"{ENV_AGENT_PORT} must be a number, not {port!r}") from None
        return cls(
            cluster=env.get(ENV_CLUSTER, ""),
            instance=env.get(ENV_INSTANCE, ""),
            namespace=env.get(ENV_NAMESPACE, ""),
            pod_name=env.get(ENV_POD_NAME, ""),
            pod_uid=env.get(ENV_POD_UID, ""),
            pod_ip=env.get(ENV_POD_IP, ""),
            node_name=env.get(ENV_NODE_NAME, ""),
            pgdata=env.get(ENV_PGDATA) or PGDATA,
            agent_port=agent_port,
            secrets_dir=env.get(ENV_SECRETS_DIR) or SECRETS_MOUNT,
            tls_dir=env.get(ENV_TLS_DIR, ""),
            archive=ArchiveEnv.from_env(env),
            backup_object=env.get(ENV_BACKUP_OBJECT) or None,
        )

    @property
    def archive_cluster(self) -> str:
        """Whose archive `wal-push`/`wal-fetch` use: the named one, else the pod's cluster."""
        return (self.archive.cluster if self.archive and self.archive.cluster else None) or self.cluster


REQUIRED_BY_AGENT = (ENV_CLUSTER, ENV_INSTANCE, ENV_NAMESPACE, ENV_PGDATA)
