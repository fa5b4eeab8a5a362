"""Typed views of PgCluster and PgInstance, read from the plain mappings kopf hands over.

Defaults are the CRD's (crds/pgclusters.yaml), repeated here because `pgop plan -f` reads
manifests that never went through the API server. `validate()` judges what the schema cannot:
what depends on the image, on cron semantics, on names the operator reserves.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

from pgop.kernel import pgconfig, tenancy
from pgop.kernel.conditions import find_condition, parse_time
from pgop.kernel.lsn import parse_lsn

API_GROUP = "pgop.io"
API_VERSION = "pgop.io/v1"
# The key the operator adds beside a PgInstance body it read (never stored): the renewal of the
# instance's liveness Lease (pgop.kernel.liveness.with_liveness).
LIVENESS_KEY = "pgop.io/liveness"

# The one place the Postgres image is named; spec.image overrides it.
DEFAULT_IMAGE = "localhost/pgop-postgres:dev"
DEFAULT_IMAGE_POSTGRES_VERSION = 15  # what images/postgres installs

PRIMARY: Final = "primary"
REPLICA: Final = "replica"
Role = Literal["primary", "replica"]

INITDB: Final = "initdb"
BASEBACKUP: Final = "basebackup"
RECOVERY: Final = "recovery"
BootstrapMode = Literal["initdb", "basebackup", "recovery"]

REQUIRED = "required"
PREFERRED = "preferred"
RETAIN = "Retain"
DELETE = "Delete"

# Where a cluster's archive lives in its bucket (pgop.backup.layout): `<path>/<namespace>/<cluster>/`
# for clusters created by this operator version on, `<path>/<cluster>/` (legacy) for those that
# archived before it. The operator pins the choice on the PgCluster once, when it first sees the
# cluster, so a cluster's archive never moves under it; docs/backup-layout.md.
ANNOTATION_ARCHIVE_LAYOUT = "pgop.io/archive-layout"
NAMESPACED_LAYOUT: Final = "namespaced"
LEGACY_LAYOUT: Final = "legacy"
ARCHIVE_LAYOUTS = (NAMESPACED_LAYOUT, LEGACY_LAYOUT)
# The reason archiving and backups are refused when the archive's marker names another database
# system (pgop.backup.marker): ContinuousArchiving False, a failed PgBackup.
REASON_FOREIGN_ARCHIVE = "ArchiveBelongsToAnotherCluster"

MAX_CLUSTER_NAME = 50  # leaves room for -rw, -replication, -<ordinal>-bootstrap in 63 chars

ValidationError = tuple[str, str]  # (field path, what is wrong, said to a person)

Body = Mapping[str, Any]


def instance_name(cluster: str, ordinal: int) -> str:
    return f"{cluster}-{ordinal}"


# ------------------------------------------------------------------------- quantities, durations

_QUANTITY = re.compile(
    r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$"
)
_QUANTITY_SUFFIX = {
    None: Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}


def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity ('1Gi', '500M', '100m', 3) as a number, so 1Gi == 1024Mi."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        raise ValueError(f"not a Kubernetes quantity (such as 1Gi, 500Mi, 100m): {value!r}")
    number, suffix = match.groups()
    try:
        if suffix and suffix[0] in "eE":
            return Decimal(number + suffix)
        return Decimal(number) * _QUANTITY_SUFFIX[suffix]
    except InvalidOperation as error:
        raise ValueError(f"not a Kubernetes quantity: {value!r}") from error


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> int:
    """'1m30s' -> 90 seconds (the failoverDelay format)."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"not a duration such as 30s, 2m or 1m30s: {text!r}")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def plain(value: Any) -> Any:
    """Deep copy of a kopf body (Mappings and sequences) into dicts and lists."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def _setting_text(value: Any) -> str:
    # YAML turns `on` into True and `200` into 200; Postgres wants its own spelling.
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


# -------------------------------------------------------------------------------- PgCluster spec

@dataclass(frozen=True)
class StorageSpec:
    size: str
    storage_class_name: str | None = None
    reclaim_policy: str = RETAIN

    @classmethod
    def from_dict(cls, data: Body | None) -> StorageSpec:
        data = data or {}
        return cls(
            size=str(data.get("size", "")),
            storage_class_name=data.get("storageClassName"),
            reclaim_policy=data.get("reclaimPolicy") or RETAIN,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"size": self.size, "reclaimPolicy": self.reclaim_policy}
        if self.storage_class_name:
            out["storageClassName"] = self.storage_class_name
        return out


@dataclass(frozen=True)
class InitdbSpec:
    database: str = "app"
    owner: str = "app"

    @classmethod
    def from_dict(cls, data: Body | None) -> InitdbSpec:
        data = data or {}
        return cls(database=data.get("database") or "app", owner=data.get("owner") or "app")

    def to_dict(self) -> dict[str, Any]:
        return {"database": self.database, "owner": self.owner}


DEFAULT_ENCRYPTION_KEY = "key"


@dataclass(frozen=True)
class S3Spec:
    bucket: str
    credentials_secret: str  # mounted in the pods: writes and reads, needs no delete right
    path: str | None = None
    endpoint: str | None = None
    region: str | None = None
    # Read by the operator only, for retention's deletes; never mounted in a pod.
    retention_credentials_secret: str | None = None
    # encryption.keySecret: the Secret and its key with the encryption key of what is written here
    # (mounted as a file in the pods that read or write the archive); None: not encrypted.
    encryption_key_secret: str | None = None
    encryption_key: str = DEFAULT_ENCRYPTION_KEY

    @classmethod
    def from_dict(cls, data: Body | None) -> S3Spec | None:
        if not data:
            return None
        key_secret = ((data.get("encryption") or {}).get("keySecret") or {})
        return cls(
            encryption_key_secret=key_secret.get("name") or None,
            encryption_key=key_secret.get("key") or DEFAULT_ENCRYPTION_KEY,
            bucket=data.get("bucket", ""),
            credentials_secret=data.get("credentialsSecret", ""),
            path=data.get("path"),
            endpoint=data.get("endpoint"),
            region=data.get("region"),
            retention_credentials_secret=data.get("retentionCredentialsSecret") or None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bucket": self.bucket, "credentialsSecret": self.credentials_secret}
        for key, value in (("path", self.path), ("endpoint", self.endpoint), ("region", self.region),
                           ("retentionCredentialsSecret", self.retention_credentials_secret)):
            if value:
                out[key] = value
        if self.encryption_key_secret:
            out["encryption"] = {"keySecret": {"name": self.encryption_key_secret, "key": self.encryption_key}}
        return out

    @property
    def deleting_credentials_secret(self) -> str:
        """The Secret whose keys retention deletes with: the retention Secret when there is one."""
        return self.retention_credentials_secret or self.credentials_secret

    def for_pods(self) -> S3Spec:
        """The location as instances and their pods get it: without the retention Secret, which
        only the operator reads (a PgInstance, a recovery source and a pod never name it)."""
        return dataclasses.replace(self, retention_credentials_secret=None)


@dataclass(frozen=True)
class RecoverySpec:
    source: str
    backup: str | None = None
    target_time: str | None = None
    target_lsn: str | None = None
    s3: S3Spec | None = None
    # Which timeline to follow: None (PostgreSQL's 'latest', the archive's newest: a restore to the
    # end reaches the end of the timeline a failover made), 'current' (the backup's), or a number.
    target_timeline: str | None = None
    # The source's archive layout, when the operator knows it (the source PgCluster exists); None:
    # the restore looks at the namespaced location first, then at the legacy one.
    archive_layout: str | None = None

    @classmethod
    def from_dict(cls, data: Body) -> RecoverySpec:
        return cls(
            source=data.get("source", ""),
            backup=data.get("backup"),
            target_time=data.get("targetTime"),
            target_lsn=data.get("targetLSN"),
            s3=S3Spec.from_dict(data.get("s3")),
            archive_layout=data.get("archiveLayout") or None,
            target_timeline=str(data["targetTimeline"]) if data.get("targetTimeline") not in (None, "") else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        for key, value in (("backup", self.backup), ("targetTime", self.target_time),
                           ("targetLSN", self.target_lsn)):
            if value:
                out[key] = value
        if self.s3:
            out["s3"] = self.s3.to_dict()
        if self.archive_layout:
            out["archiveLayout"] = self.archive_layout
        if self.target_timeline:
            out["targetTimeline"] = self.target_timeline
        return out


@dataclass(frozen=True)
class BootstrapSpec:
    initdb: InitdbSpec | None = None
    recovery: RecoverySpec | None = None

    @classmethod
    def from_dict(cls, data: Body | None) -> BootstrapSpec:
        data = data or {}
        recovery = RecoverySpec.from_dict(data["recovery"]) if data.get("recovery") else None
        has_initdb = "initdb" in data and data["initdb"] is not None
        # The CRD defaults bootstrap to {initdb: {}}; a manifest read offline may leave it out.
        initdb = InitdbSpec.from_dict(data.get("initdb")) if has_initdb or recovery is None else None
        return cls(initdb=initdb, recovery=recovery)

    @property
    def first_primary_mode(self) -> BootstrapMode:
        return RECOVERY if self.recovery is not None else INITDB


@dataclass(frozen=True)
class RetentionSpec:
    keep_last: int | None = None
    max_age: str | None = None


@dataclass(frozen=True)
class BackupSpec:
    s3: S3Spec | None
    schedule: str | None = None
    target: str = "prefer-replica"
    retention: RetentionSpec | None = None
    wal_archiving: bool = True
    # The deletionPolicy of the PgBackups made for this cluster (schedule, `pgop backup`).
    deletion_policy: str = "Retain"

    @classmethod
    def from_dict(cls, data: Body | None) -> BackupSpec | None:
        if not data:
            return None
        retention = data.get("retention")
        s3 = S3Spec.from_dict(data.get("s3"))
        archiving = data.get("walArchiving")
        return cls(
            s3=s3,
            schedule=data.get("schedule"),
            target=data.get("target") or "prefer-replica",
            retention=RetentionSpec(retention.get("keepLast"), retention.get("maxAge")) if retention else None,
            wal_archiving=(s3 is not None) if archiving is None else bool(archiving),
            deletion_policy=data.get("deletionPolicy") or "Retain",
        )


@dataclass(frozen=True)
class PublishSpec:
    vault_path: str | None = None
    consul_prefix: str | None = None


@dataclass(frozen=True)
class TlsSpec:
    """spec.tls: certificates the user brings (e.g. cert-manager's), each a Secret in the
    cluster's namespace. `server_secret` (kubernetes.io/tls: tls.crt, tls.key, ca.crt) replaces
    the operator's server certificate; `client_ca_secret` (ca.crt) is trusted for client
    certificates besides the cluster's own CA."""
    server_secret: str | None = None
    client_ca_secret: str | None = None

    @classmethod
    def from_dict(cls, data: Body | None) -> TlsSpec | None:
        if not data:
            return None
        spec = cls(server_secret=data.get("serverSecret") or None,
                   client_ca_secret=data.get("clientCASecret") or None)
        return spec if spec.server_secret or spec.client_ca_secret else None

    def to_dict(self) -> dict[str, str]:
        out = {}
        if self.server_secret:
            out["serverSecret"] = self.server_secret
        if self.client_ca_secret:
            out["clientCASecret"] = self.client_ca_secret
        return out


DEFAULT_TOPOLOGY_KEY = "kubernetes.io/hostname"


@dataclass(frozen=True)
class AffinitySpec:
    """Where the instances' pods may run (spec.affinity). The pod anti-affinity keeps the pods of
    one cluster (Postgres and bootstrap pods) apart across `topology_key`; `required` refuses to
    schedule a second instance into a domain that has one, `preferred` only tries not to."""
    pod_anti_affinity_type: str = PREFERRED
    topology_key: str = DEFAULT_TOPOLOGY_KEY
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)  # Kubernetes Tolerations
    node_affinity: dict[str, Any] = field(default_factory=dict)  # a Kubernetes NodeAffinity

    @classmethod
    def from_dict(cls, data: Body | None) -> AffinitySpec | None:
        if data is None:
            return None
        return cls(
            pod_anti_affinity_type=data.get("podAntiAffinityType") or PREFERRED,
            topology_key=data.get("topologyKey") or DEFAULT_TOPOLOGY_KEY,
            node_selector={str(k): str(v) for k, v in (data.get("nodeSelector") or {}).items()},
            tolerations=plain(list(data.get("tolerations") or [])),
            node_affinity=plain(data.get("nodeAffinity") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"podAntiAffinityType": self.pod_anti_affinity_type,
                               "topologyKey": self.topology_key}
        if self.node_selector:
            out["nodeSelector"] = dict(self.node_selector)
        if self.tolerations:
            out["tolerations"] = plain(self.tolerations)
        if self.node_affinity:
            out["nodeAffinity"] = plain(self.node_affinity)
        return out


@dataclass(frozen=True)
class ClusterSpec:
    instances: int = 1
    postgres_version: int = DEFAULT_IMAGE_POSTGRES_VERSION
    image: str | None = None
    synchronous_replicas: int = 0
    synchronous_mode: str = PREFERRED
    failover_delay: str = "0s"
    enable_superuser_access: bool = False  # the superuser over the network (pg_hba.conf)
    storage: StorageSpec = field(default_factory=lambda: StorageSpec(size="1Gi"))
    resources: dict[str, Any] = field(default_factory=dict)  # a Kubernetes ResourceRequirements
    parameters: dict[str, str] = field(default_factory=dict)
    bootstrap: BootstrapSpec = field(default_factory=lambda: BootstrapSpec(initdb=InitdbSpec()))
    backup: BackupSpec | None = None
    publish: PublishSpec | None = None
    affinity: AffinitySpec | None = None  # None: the built-in preferred anti-affinity by hostname
    topology_spread_constraints: list[dict[str, Any]] = field(default_factory=list)  # passed to the pods
    allow_unsafe_parameters: bool = False  # fsync off, synchronous_commit off with required sync
    tls: TlsSpec | None = None  # certificates the user brings

    @classmethod
    def from_dict(cls, data: Body | None) -> ClusterSpec:
        data = data or {}
        publish = data.get("publish")
        return cls(
            instances=int(data.get("instances", 1)),
            postgres_version=int(data.get("postgresVersion", DEFAULT_IMAGE_POSTGRES_VERSION)),
            image=data.get("image") or None,
            synchronous_replicas=int(data.get("synchronousReplicas", 0)),
            synchronous_mode=data.get("synchronousMode") or PREFERRED,
            failover_delay=data.get("failoverDelay") or "0s",
            enable_superuser_access=bool(data.get("enableSuperuserAccess", False)),
            storage=StorageSpec.from_dict(data.get("storage")),
            resources=plain(data.get("resources") or {}),
            parameters={str(k): _setting_text(v) for k, v in (data.get("parameters") or {}).items()},
            bootstrap=BootstrapSpec.from_dict(data.get("bootstrap")),
            backup=BackupSpec.from_dict(data.get("backup")),
            publish=(PublishSpec(publish.get("vaultPath"), publish.get("consulPrefix"))
                     if publish is not None else None),  # `publish: {}` publishes with the defaults
            affinity=AffinitySpec.from_dict(data.get("affinity")),
            topology_spread_constraints=plain(list(data.get("topologySpreadConstraints") or [])),
            allow_unsafe_parameters=bool(data.get("allowUnsafeParameters", False)),
            tls=TlsSpec.from_dict(data.get("tls")),
        )

    @property
    def effective_image(self) -> str:
        return self.image or DEFAULT_IMAGE

    @property
    def failover_delay_seconds(self) -> int:
        return parse_duration(self.failover_delay)

    def validate(self) -> list[ValidationError]:
        return _validate_spec(self)


# The owner role is created by initdb and the secrets are named after these roles.
_RESERVED_ROLES = {pgconfig.SUPERUSER, pgconfig.REPLICATION_USER}
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_MAX_AGE = re.compile(r"^[1-9][0-9]*[hdw]$")


def _validate_spec(spec: ClusterSpec) -> list[ValidationError]:
    errors: list[ValidationError] = []

    def refuse(path: str, reason: str) -> None:
        errors.append((path, reason))

    if spec.instances < 1:
        refuse("spec.instances", "must be at least 1")
    if not 0 <= spec.synchronous_replicas <= max(spec.instances - 1, 0):
        refuse("spec.synchronousReplicas",
               f"must be between 0 and instances - 1 ({spec.instances - 1}): only replicas can confirm commits")
    if spec.synchronous_mode not in (REQUIRED, PREFERRED):
        refuse("spec.synchronousMode", "must be required or preferred")
    elif spec.synchronous_mode == REQUIRED and spec.synchronous_replicas < 1:
        refuse("spec.synchronousMode", "required needs synchronousReplicas >= 1")
    if spec.image is None and spec.postgres_version != DEFAULT_IMAGE_POSTGRES_VERSION:
        refuse("spec.postgresVersion",
               f"the default image {DEFAULT_IMAGE} ships PostgreSQL {DEFAULT_IMAGE_POSTGRES_VERSION}; "
               f"set spec.image to an image with PostgreSQL {spec.postgres_version}")
    try:
        parse_duration(spec.failover_delay)
    except ValueError as error:
        refuse("spec.failoverDelay", str(error))

    try:
        if parse_quantity(spec.storage.size) <= 0:
            refuse("spec.storage.size", "must be a positive quantity such as 1Gi")
    except ValueError as error:
        refuse("spec.storage.size", str(error))
    if spec.storage.reclaim_policy not in (RETAIN, DELETE):
        refuse("spec.storage.reclaimPolicy", "must be Retain or Delete")
    for kind in ("requests", "limits"):
        for resource, amount in (spec.resources.get(kind) or {}).items():
            try:
                parse_quantity(amount)
            except ValueError as error:
                refuse(f"spec.resources.{kind}.{resource}", str(error))
    if spec.affinity is not None:
        if spec.affinity.pod_anti_affinity_type not in (REQUIRED, PREFERRED):
            refuse("spec.affinity.podAntiAffinityType", "must be required or preferred")
        if not spec.affinity.topology_key:
            refuse("spec.affinity.topologyKey", "must not be empty")

    for name, value in spec.parameters.items():
        path = f"spec.parameters.{name}"
        if not _PARAMETER_NAME.match(name):
            refuse(path, "is not a PostgreSQL setting name")
        elif pgconfig.is_owned(name):
            refuse(path, "is set by the operator and cannot be overridden")
        if any(ord(char) < 32 or ord(char) == 127 for char in value):
            refuse(path, "must not contain control characters such as newlines")
    if not spec.allow_unsafe_parameters:
        for name, why in pgconfig.unsafe_settings(spec.parameters, synchronous_mode=spec.synchronous_mode):
            refuse(f"spec.parameters.{name}", f"{why}; set spec.allowUnsafeParameters: true to accept that")

    bootstrap = spec.bootstrap
    if (bootstrap.initdb is None) == (bootstrap.recovery is None):
        refuse("spec.bootstrap", "must set exactly one of initdb or recovery")
    if bootstrap.initdb is not None:
        for key, value in (("database", bootstrap.initdb.database), ("owner", bootstrap.initdb.owner)):
            if not _IDENTIFIER.match(value):
                refuse(f"spec.bootstrap.initdb.{key}", "must be a lowercase identifier (letters, digits, '_')")
        if bootstrap.initdb.owner in _RESERVED_ROLES or bootstrap.initdb.owner.startswith("pg_"):
            refuse("spec.bootstrap.initdb.owner",
                   f"{bootstrap.initdb.owner!r} is a role the operator reserves; choose another owner")
    if bootstrap.recovery is not None:
        recovery = bootstrap.recovery
        if recovery.target_time and recovery.target_lsn:
            refuse("spec.bootstrap.recovery.targetLSN", "set at most one of targetTime and targetLSN")
        if recovery.target_lsn:
            try:
                parse_lsn(recovery.target_lsn)
            except ValueError as error:
                refuse("spec.bootstrap.recovery.targetLSN", str(error))
        if recovery.target_time:
            try:
                parse_time(recovery.target_time)
            except ValueError:
                refuse("spec.bootstrap.recovery.targetTime",
                       "must be an RFC 3339 time with a zone, such as 2026-11-22T03:00:00Z")

    if spec.backup is not None:
        backup = spec.backup
        if backup.s3 is None:
            refuse("spec.backup.s3", "is required when spec.backup is set")
        elif backup.s3.retention_credentials_secret == backup.s3.credentials_secret:
            refuse("spec.backup.s3.retentionCredentialsSecret",
                   "must name another Secret than spec.backup.s3.credentialsSecret: the pods mount "
                   "credentialsSecret, so its keys must not be the ones that may delete the archive")
        if backup.schedule:
            from pgop.kernel.schedule import validate_schedule  # only backups need croniter
            problem = validate_schedule(backup.schedule)
            if problem:
                refuse("spec.backup.schedule", problem.removeprefix("spec.backup.schedule: "))
        if backup.retention and backup.retention.max_age and not _MAX_AGE.match(backup.retention.max_age):
            refuse("spec.backup.retention.maxAge", "must be a number followed by h, d or w, e.g. 30d")
    return errors


# -------------------------------------------------------------------------------- PgCluster

@dataclass(frozen=True)
class Cluster:
    name: str
    namespace: str
    spec: ClusterSpec
    uid: str = ""
    generation: int = 0
    deleting: bool = False
    status: dict[str, Any] = field(default_factory=dict)  # as last written (conditions history)
    annotations: dict[str, str] = field(default_factory=dict)  # pgop.io/switchover-to, pgop.io/fenced-instances

    @classmethod
    def from_object(cls, body: Body) -> Cluster:
        meta = body.get("metadata") or {}
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 0),
            deleting=bool(meta.get("deletionTimestamp")),
            spec=ClusterSpec.from_dict(body.get("spec")),
            status=plain(body.get("status") or {}),
            annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
        )

    def publish_paths(self) -> tuple[str, str] | None:
        """Where spec.publish writes (Vault path, Consul prefix): the spec's, or the same defaults
        as MysqlDb's; None without spec.publish."""
        publish = self.spec.publish
        if publish is None:
            return None
        return (publish.vault_path or tenancy.default_vault_path(self.namespace, self.name),
                publish.consul_prefix or tenancy.default_consul_prefix(self.namespace, self.name))

    def refused_publish_paths(self) -> list[tenancy.RefusedPath]:
        """spec.publish paths outside this cluster's namespace: never read, written or deleted."""
        paths = self.publish_paths()
        if paths is None:
            return []
        return tenancy.refused_paths(self.namespace, vault=("spec.publish.vaultPath", paths[0]),
                                     consul=("spec.publish.consulPrefix", paths[1]))

    @property
    def archive_layout(self) -> str:
        """The pinned layout of this cluster's archive (ANNOTATION_ARCHIVE_LAYOUT). A cluster the
        operator has not pinned yet is one that predates the annotation: the legacy layout."""
        return self.annotations.get(ANNOTATION_ARCHIVE_LAYOUT) or LEGACY_LAYOUT

    @property
    def archive_namespace(self) -> str:
        """The namespace part of the archive's location: "" for the legacy layout."""
        return self.namespace if self.archive_layout == NAMESPACED_LAYOUT else ""

    def validate(self) -> list[ValidationError]:
        errors: list[ValidationError] = []
        layout = self.annotations.get(ANNOTATION_ARCHIVE_LAYOUT)
        if layout is not None and layout not in ARCHIVE_LAYOUTS:
            errors.append((f"metadata.annotations[{ANNOTATION_ARCHIVE_LAYOUT}]",
                           f"must be {' or '.join(ARCHIVE_LAYOUTS)}, not {layout!r}"))
        if len(self.name) > MAX_CLUSTER_NAME or not re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", self.name):
            errors.append(("metadata.name",
                           f"must be a DNS label of at most {MAX_CLUSTER_NAME} characters starting with a letter"))
        recovery = self.spec.bootstrap.recovery
        if recovery is not None and recovery.source == self.name:
            errors.append(("spec.bootstrap.recovery.source", "must name another cluster than this one"))
        return errors + self.spec.validate()


# -------------------------------------------------------------------------------- PgInstance

@dataclass(frozen=True)
class InstanceSpec:
    cluster: str
    ordinal: int
    role: str
    bootstrap: str
    fenced: bool = False
    hibernated: bool = False  # no pod runs: the cluster is hibernated (pgop.kernel.hibernation)
    primary: str = ""  # the instance a replica follows ("" while a failover decides); see docs/high-availability.md
    primary_host: str = ""  # the pod IP of that instance, where the replica streams from
    # What the cluster controller hands down, so each instance can be rolled on its own turn.
    image: str = DEFAULT_IMAGE
    postgres_version: int = DEFAULT_IMAGE_POSTGRES_VERSION
    storage: StorageSpec = field(default_factory=lambda: StorageSpec(size="1Gi"))
    resources: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    synchronous_replicas: int = 0
    synchronous_mode: str = PREFERRED
    enable_superuser_access: bool = False
    config_hash: str = ""
    initdb: InitdbSpec | None = None  # for bootstrap initdb
    recovery: RecoverySpec | None = None  # for bootstrap recovery
    s3: S3Spec | None = None  # where WAL is archived to and fetched from
    wal_archiving: bool = False
    archive_layout: str = LEGACY_LAYOUT  # spec.backup.archiveLayout: the cluster's pinned layout
    affinity: AffinitySpec | None = None  # the cluster's spec.affinity, when set
    topology_spread_constraints: list[dict[str, Any]] = field(default_factory=list)
    tls: TlsSpec | None = None  # the cluster's spec.tls, when set: the pod mounts those Secrets
    pod_template: int = 0  # the pod template revision (pgop.specs.pods); 0: from before revisions

    @classmethod
    def from_dict(cls, data: Body | None) -> InstanceSpec:
        data = data or {}
        backup = data.get("backup") or {}
        return cls(
            cluster=data.get("cluster", ""),
            ordinal=int(data.get("ordinal", 0)),
            role=data.get("role", REPLICA),
            bootstrap=data.get("bootstrap", BASEBACKUP),
            fenced=bool(data.get("fenced", False)),
            hibernated=bool(data.get("hibernated", False)),
            primary=data.get("primary") or "",
            primary_host=data.get("primaryHost") or "",
            pod_template=int(data.get("podTemplate") or 0),
            image=data.get("image") or DEFAULT_IMAGE,
            postgres_version=int(data.get("postgresVersion", DEFAULT_IMAGE_POSTGRES_VERSION)),
            storage=StorageSpec.from_dict(data.get("storage") or {"size": "1Gi"}),
            resources=plain(data.get("resources") or {}),
            parameters={str(k): _setting_text(v) for k, v in (data.get("parameters") or {}).items()},
            synchronous_replicas=int(data.get("synchronousReplicas", 0)),
            synchronous_mode=data.get("synchronousMode") or PREFERRED,
            enable_superuser_access=bool(data.get("enableSuperuserAccess", False)),
            config_hash=data.get("configHash", ""),
            initdb=InitdbSpec.from_dict(data["initdb"]) if data.get("initdb") is not None else None,
            recovery=RecoverySpec.from_dict(data["recovery"]) if data.get("recovery") else None,
            s3=S3Spec.from_dict(backup.get("s3")),
            wal_archiving=bool(backup.get("walArchiving", False)),
            archive_layout=backup.get("archiveLayout") or LEGACY_LAYOUT,
            affinity=AffinitySpec.from_dict(data.get("affinity")),
            topology_spread_constraints=plain(list(data.get("topologySpreadConstraints") or [])),
            tls=TlsSpec.from_dict(data.get("tls")),
        )


def _ready_since(conditions: Any) -> datetime | None:
    ready = find_condition(conditions if isinstance(conditions, list) else None, "Ready")
    if not ready or ready.get("status") != "True":
        return None
    try:
        return parse_time(ready.get("lastTransitionTime"))
    except ValueError:
        return None


@dataclass(frozen=True)
class InstanceStatus:
    phase: str | None = None
    role: str | None = None
    ready: bool = False
    # Since when the agent says it is ready (its Ready condition's lastTransitionTime), if it does.
    ready_since: datetime | None = None
    timeline: int | None = None
    lsn: str | None = None
    received_lsn: str | None = None
    replay_lsn: str | None = None
    wal_receiver: str | None = None  # streaming | stopped (pg_stat_wal_receiver)
    system_identifier: str | None = None
    following: str | None = None  # the spec.primary the agent applied
    sync_state: str | None = None
    # On a primary: each streaming replica's sync state as it sees it (pg_stat_replication).
    replica_sync_states: dict[str, str] | None = None
    # When the agent last wrote its status (a report: what the failover's "since" checks read).
    last_heartbeat: datetime | None = None
    # When the agent last renewed its instance's Lease (pgop.kernel.liveness), as the operator saw
    # it beside the body; None when unknown (the agent, tools that read no Leases).
    lease_renewed: datetime | None = None
    observed_generation: int | None = None
    pod: str | None = None
    pod_uid: str | None = None  # the pod its agent runs in: a replaced pod has a new one
    pvc: str | None = None
    node: str | None = None
    pending_restart: bool = False
    message: str | None = None
    # status.restore of a recovery bootstrap: its phase and the message of a failed attempt
    restore_phase: str | None = None
    restore_message: str | None = None
    restore_wal_files: int | None = None

    @property
    def alive_at(self) -> datetime | None:
        """The agent's newest sign of life: its last status write or its Lease's last renewal."""
        return max((m for m in (self.last_heartbeat, self.lease_renewed) if m is not None), default=None)

    @property
    def restore_summary(self) -> str | None:
        """How far the restore is, in a few words (None when the instance is not restoring)."""
        if not self.restore_phase:
            return None
        text = f"restore {self.restore_phase}"
        if self.restore_wal_files:
            text += f", {self.restore_wal_files} WAL files restored"
        if self.restore_message and self.restore_phase in ("Retrying", "Failed"):
            text += f": {self.restore_message}"
        return text

    @classmethod
    def from_dict(cls, data: Body | None) -> InstanceStatus:
        data = data or {}
        observed = data.get("observedGeneration")
        timeline = data.get("timeline")
        return cls(
            phase=data.get("phase"),
            role=data.get("role"),
            ready=bool(data.get("ready", False)),
            ready_since=_ready_since(data.get("conditions")),
            timeline=int(timeline) if timeline is not None else None,
            lsn=data.get("lsn") or None,
            received_lsn=data.get("receivedLSN") or None,
            replay_lsn=data.get("replayLSN") or None,
            wal_receiver=data.get("walReceiver") or None,
            system_identifier=str(data["systemIdentifier"]) if data.get("systemIdentifier") else None,
            following=data.get("following"),
            sync_state=data.get("syncState"),
            replica_sync_states=({str(k): str(v) for k, v in data["replicaSyncStates"].items() if v}
                                 if isinstance(data.get("replicaSyncStates"), Mapping) else None),
            last_heartbeat=parse_time(data.get("lastHeartbeat")),
            observed_generation=int(observed) if observed is not None else None,
            pod=data.get("pod"),
            pod_uid=data.get("podUID"),
            pvc=data.get("pvc"),
            node=data.get("node"),
            pending_restart=bool(data.get("pendingRestart", False)),
            message=data.get("message") or None,
            **_restore_fields(data.get("restore")),
        )


def _restore_fields(restore: Any) -> dict[str, Any]:
    if not isinstance(restore, Mapping):
        return {}
    files = restore.get("walFilesRestored")
    return {"restore_phase": restore.get("phase") or None, "restore_message": restore.get("message") or None,
            "restore_wal_files": int(files) if isinstance(files, int) else None}


@dataclass(frozen=True)
class Instance:
    name: str
    namespace: str
    spec: InstanceSpec
    status: InstanceStatus = field(default_factory=InstanceStatus)
    uid: str = ""
    generation: int = 0
    cluster_uid: str | None = None  # from the owner reference to the PgCluster
    deleting: bool = False
    raw_spec: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_object(cls, body: Body) -> Instance:
        meta = body.get("metadata") or {}
        owners = [ref for ref in meta.get("ownerReferences") or [] if ref.get("kind") == "PgCluster"]
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 0),
            cluster_uid=owners[0].get("uid") if owners else None,
            deleting=bool(meta.get("deletionTimestamp")),
            spec=InstanceSpec.from_dict(body.get("spec")),
            status=dataclasses.replace(InstanceStatus.from_dict(body.get("status")),
                                       lease_renewed=_lease_renewed(body.get(LIVENESS_KEY))),
            raw_spec=plain(body.get("spec") or {}),
        )

    @property
    def ordinal(self) -> int:
        return self.spec.ordinal

    @property
    def is_primary(self) -> bool:
        """Whether the operator wants this instance to be the primary (spec, not status)."""
        return self.spec.role == PRIMARY

    @property
    def settled(self) -> bool:
        """Ready, and its agent has applied the current spec (so a rollout may move on)."""
        return self.status.ready and self.status.observed_generation == self.generation


def _lease_renewed(seen: Any) -> datetime | None:
    if not isinstance(seen, Mapping):
        return None
    try:
        return parse_time(seen.get("renewTime"))
    except ValueError:
        return None


def with_sync_states_from_primary(instances: Sequence[Instance]) -> list[Instance]:
    """Each replica's syncState as its primary reports it: the primary's agent writes
    status.replicaSyncStates on its own PgInstance (an agent writes no other instance's status);
    a replica missing there is not streaming. Without one such primary (none yet, or an agent of
    an older version), what each instance's own status says."""
    primaries = [i for i in instances if i.spec.role == PRIMARY and i.status.role == PRIMARY
                 and i.status.replica_sync_states is not None]
    if len(primaries) != 1:
        return list(instances)
    primary = primaries[0]
    seen = primary.status.replica_sync_states or {}
    return [i if i is primary else dataclasses.replace(i, status=dataclasses.replace(i.status, sync_state=seen.get(i.name)))
            for i in instances]
