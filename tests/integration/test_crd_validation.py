"""The CRDs on a real kube-apiserver: valid manifests are accepted, bad ones refused with a message
that names the field, as a person running `kubectl apply` would read it.

Needs the `kube_api` fixture (a session-scoped `kubernetes.client.ApiClient` from the local
kubeconfig, provided by tests/conftest.py). The CRDs are installed with server-side apply, exactly
as `kubectl apply --server-side -f crds/` does. Creates use dry-run where the object need not be
stored; transition rules need a stored object, so those tests create one and update it in dry-run.
"""
from __future__ import annotations

import copy
import json
import pathlib
import time
import uuid

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
EXAMPLES = ROOT / "examples"
GROUP, VERSION = "pgop.io", "v1"
FIELD_MANAGER = "pgop-crd-tests"
PLURALS = {"PgCluster": "pgclusters", "PgInstance": "pginstances", "PgBackup": "pgbackups",
           "MysqlDb": "mysqldbs"}


# --------------------------------------------------------------------------- fixtures


def _apply(api: client.ApiClient, path: str, body: dict) -> dict:
    """Server-side apply (PATCH application/apply-patch+yaml; JSON is YAML)."""
    return api.call_api(
        path, "PATCH",
        query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
        body=body, auth_settings=["BearerToken"], response_type="object",
        _return_http_data_only=True)


@pytest.fixture(scope="session")
def crds_installed(kube_api):
    """Apply every crds/*.yaml with server-side apply and wait until each is Established and served."""
    ext = client.ApiextensionsV1Api(kube_api)
    names, changed = [], False
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        name = crd["metadata"]["name"]
        try:
            before = ext.read_custom_resource_definition(name).metadata.resource_version
        except ApiException as e:
            if e.status != 404:
                raise
            before = None
        after = _apply(kube_api, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}", crd)
        changed |= after["metadata"]["resourceVersion"] != before
        names.append(name)
    assert len(names) == 4, names
    deadline = time.monotonic() + 60
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            conds = {c.type: c.status for c in (ext.read_custom_resource_definition(name).status.conditions or [])}
            if conds.get("Established") == "True" and conds.get("NamesAccepted") == "True":
                pending.discard(name)
        time.sleep(0.2)
    assert not pending, f"CRDs not Established after 60 s: {sorted(pending)}"
    if changed:
        # An updated CRD stays Established while the apiserver swaps in the new schema and CEL
        # programs (asynchronously, from its informer); give it a moment.
        time.sleep(2)
    # Established can precede the moment the new resource is served (and its CEL rules compiled).
    objs = client.CustomObjectsApi(kube_api)
    for plural in PLURALS.values():
        while True:
            try:
                objs.list_cluster_custom_object(GROUP, VERSION, plural, limit=1)
                break
            except ApiException as e:
                if e.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    return names


@pytest.fixture(scope="session")
def crd_namespace(kube_api, crds_installed):
    core = client.CoreV1Api(kube_api)
    name = f"pgop-crd-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=name, labels={"app.kubernetes.io/part-of": "pgop-tests"})))
    yield name
    try:
        core.delete_namespace(name)
    except ApiException:
        pass


@pytest.fixture()
def objs(kube_api):
    return client.CustomObjectsApi(kube_api)


# --------------------------------------------------------------------------- helpers


def _example(filename: str) -> dict:
    return yaml.safe_load((EXAMPLES / filename).read_text())


def _manifest(kind: str, spec: dict, name: str | None = None) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
            "metadata": {"name": name or f"t-{uuid.uuid4().hex[:10]}"}, "spec": spec}


def _create(objs, namespace: str, body: dict, dry_run: bool = True) -> dict:
    body = copy.deepcopy(body)
    body["metadata"]["namespace"] = namespace
    kwargs = {"dry_run": "All"} if dry_run else {}
    return objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[body["kind"]], body,
                                                **kwargs)


def _refusal(call) -> str:
    """Run `call`, which must be refused as Invalid (422); return the message the user sees."""
    with pytest.raises(ApiException) as info:
        call()
    assert info.value.status == 422, f"expected 422 Invalid, got {info.value.status}: {info.value.body}"
    return json.loads(info.value.body)["message"]


def _set(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    if value is _DELETE:
        d.pop(keys[-1], None)
    else:
        d[keys[-1]] = value


_DELETE = object()

CLUSTER = {"instances": 3, "postgresVersion": 15, "synchronousReplicas": 1, "storage": {"size": "1Gi"},
           "bootstrap": {"initdb": {"database": "app", "owner": "app"}}}
S3 = {"bucket": "pg-backups", "path": "shop/orders", "credentialsSecret": "s3-creds"}
INSTANCE = {"cluster": "orders", "ordinal": 1, "role": "replica", "bootstrap": "basebackup"}
BACKUP = {"cluster": "orders"}
MYSQL = {"engineVersion": "8.0.35", "instanceSize": "small", "storageGB": 20, "databaseName": "orders"}
BASES = {"PgCluster": CLUSTER, "PgInstance": INSTANCE, "PgBackup": BACKUP, "MysqlDb": MYSQL}


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("filename", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_examples_are_accepted(objs, crd_namespace, filename):
    body = _example(filename)
    own = body["metadata"].get("namespace")
    if own:  # published paths stay below the object's namespace (admission policy pgop-tenant-paths)
        body = yaml.safe_load(yaml.safe_dump(body).replace(f"k8s/{own}/", f"k8s/{crd_namespace}/"))
    created = _create(objs, crd_namespace, body)
    _assert_kept(body["spec"], created["spec"], "spec")


def _assert_kept(written, stored, path: str) -> None:
    """Everything the user wrote comes back unchanged: nothing pruned, nothing rewritten."""
    if isinstance(written, dict):
        for key, value in written.items():
            assert key in stored, f"{path}.{key} was pruned"
            _assert_kept(value, stored[key], f"{path}.{key}")
    else:
        assert stored == written, f"{path}: wrote {written!r}, stored {stored!r}"


def test_pgcluster_defaults(objs, crd_namespace):
    spec = {"storage": {"size": "1Gi"}}
    created = _create(objs, crd_namespace, _manifest("PgCluster", spec))["spec"]
    assert created["instances"] == 1
    assert created["postgresVersion"] == 15
    assert created["synchronousReplicas"] == 0
    assert created["synchronousMode"] == "preferred"
    assert created["failoverDelay"] == "0s"
    assert created["storage"]["reclaimPolicy"] == "Retain"
    assert created["bootstrap"] == {"initdb": {"database": "app", "owner": "app"}}
    with_backup = _create(objs, crd_namespace, _manifest("PgCluster", dict(spec, backup={"s3": S3})))["spec"]
    assert with_backup["backup"]["walArchiving"] is True
    assert with_backup["backup"]["target"] == "prefer-replica"


def test_other_defaults(objs, crd_namespace):
    mysql = _create(objs, crd_namespace, _manifest("MysqlDb", {"engineVersion": "8.0.35",
                                                            "databaseName": "orders"}))["spec"]
    assert mysql["deletionPolicy"] == "Snapshot"
    assert mysql["instanceSize"] == "small"
    assert mysql["storageGB"] == 20
    assert mysql["deletionProtection"] is False
    assert mysql["multiAZ"] is False
    backup = _create(objs, crd_namespace, _manifest("PgBackup", {"cluster": "orders"}))["spec"]
    assert backup == {"cluster": "orders", "method": "basebackup", "target": "prefer-replica", "deletionPolicy": "Retain"}
    inst = _create(objs, crd_namespace, _manifest("PgInstance", INSTANCE))["spec"]
    assert inst["fenced"] is False
    assert inst["hibernated"] is False
    hibernated = _create(objs, crd_namespace, _manifest("PgInstance", dict(INSTANCE, hibernated=True)))["spec"]
    assert hibernated["hibernated"] is True  # kept, not pruned


@pytest.mark.parametrize("kind,field,value", [
    ("PgCluster", "backup", {"s3": S3, "schedule": "*/15 0-6 1,15 JAN-JUN MON-FRI"}),
    ("PgCluster", "backup", {"s3": S3, "schedule": "@hourly", "retention": {"maxAge": "12h"}}),
    ("PgCluster", "backup", {"s3": dict(S3, retentionCredentialsSecret="s3-retention"), "retention": {"keepLast": 7}}),
    ("PgCluster", "backup", {"s3": dict(S3, encryption={"keySecret": {"name": "orders-backup-key"}})}),
    ("PgCluster", "backup", {"s3": dict(S3, encryption={"keySecret": {"name": "k", "key": "backup.key_2"}})}),
    ("PgCluster", "bootstrap", {"recovery": {"source": "orders", "s3": dict(
        S3, encryption={"keySecret": {"name": "orders-backup-key", "key": "key"}})}}),
    ("PgCluster", "backup", {"s3": dict(S3, endpoint="https://s3.eu-west-1.amazonaws.com",
                                        region="eu-west-1"), "schedule": "0  3 * * 0"}),
    ("PgCluster", "storage", {"size": "500Mi", "storageClassName": "fast", "reclaimPolicy": "Delete"}),
    ("PgCluster", "storage", {"size": "1.5Ti"}),
    ("PgCluster", "parameters", {"work_mem": "64MB", "pg_stat_statements.max": "10000",
                                 "synchronous_commit": "remote_apply", "max_connections": "300"}),
    ("PgCluster", "resources", {"requests": {"cpu": 1, "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}}),
    ("PgCluster", "bootstrap", {"recovery": {"source": "orders", "targetLSN": "0/3000060"}}),
    ("PgCluster", "bootstrap", {"recovery": {"source": "orders", "targetTimeline": 2}}),
    ("PgCluster", "bootstrap", {"recovery": {"source": "orders", "targetTimeline": "latest"}}),
    ("PgCluster", "bootstrap", {"recovery": {"source": "orders", "targetTimeline": "current"}}),
    ("PgCluster", "bootstrap", {"recovery": {"source": "orders", "backup": "orders-20261122030000",
                                             "s3": {"bucket": "old.backups", "credentialsSecret": "s3"}}}),
    ("PgCluster", "publish", {}),
    ("PgCluster", "failoverDelay", "1m30s"),
    ("MysqlDb", "engineVersion", "5.7.44-rds.20240408"),
    ("MysqlDb", "engineVersion", "8.4"),
    ("MysqlDb", "instanceClass", "db.r6gd.2xlarge"),
    ("MysqlDb", "storageGB", 65536),
    ("MysqlDb", "databaseName", "O" + "x" * 63),
    ("MysqlDb", "tags", {"team": "shop", "cost-center": "42"}),
    # below the test's namespace (NAMESPACE): deploy/admission.yaml refuses paths of others
    ("MysqlDb", "vaultPath", "secret/data/k8s/NAMESPACE/teams/orders"),
    ("MysqlDb", "consulPrefix", "config/k8s/NAMESPACE/orders-db/db"),
    # issue 16
    ("MysqlDb", "dbSubnetGroupName", "private-db"),
    ("MysqlDb", "vpcSecurityGroupIds", ["sg-0123456789abcdef0", "sg-0123abcd"]),
    ("MysqlDb", "dbParameterGroupName", "orders-mysql80"),
    ("MysqlDb", "kmsKeyId", "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
    ("MysqlDb", "kmsKeyId", "alias/rds-orders"),
    ("MysqlDb", "preferredBackupWindow", "03:00-04:00"),
    ("MysqlDb", "preferredMaintenanceWindow", "Sun:05:00-sun:06:00"),
    ("MysqlDb", "passwordRotation", {"schedule": "0 3 1 * *"}),
    ("MysqlDb", "restoreFrom", {"snapshotIdentifier": "orders-final-1"}),
    ("MysqlDb", "restoreFrom", {"sourceDbInstanceIdentifier": "shop-orders-db", "restoreTime": "2026-11-30T14:05:00Z"}),
    ("MysqlDb", "restoreFrom", {"sourceDbInstanceIdentifier": "shop-orders-db", "useLatestRestorableTime": True}),
])
def test_valid_variants_are_accepted(objs, crd_namespace, kind, field, value):
    spec = copy.deepcopy(BASES[kind])
    _set(spec, field, value.replace("NAMESPACE", crd_namespace) if isinstance(value, str) else value)
    _create(objs, crd_namespace, _manifest(kind, spec))


# --------------------------------------------------------------------------- refused on create

# (kind, dotted field in spec, value or _DELETE, substrings the user's message must contain)
REFUSED = [
    # PgCluster: sizes and counts
    ("PgCluster", "instances", 0, ["spec.instances", "greater than or equal to 1"]),
    ("PgCluster", "instances", 33, ["spec.instances", "less than or equal to 32"]),
    ("PgCluster", "synchronousReplicas", 3, ["spec.synchronousReplicas", "at most spec.instances - 1"]),
    ("PgCluster", "synchronousReplicas", -1, ["spec.synchronousReplicas", "greater than or equal to 0"]),
    ("PgCluster", "synchronousMode", "sometimes", ["spec.synchronousMode", "Unsupported value"]),
    ("PgCluster", "postgresVersion", 12, ["spec.postgresVersion", "greater than or equal to 13"]),
    ("PgCluster", "postgresVersion", 19, ["spec.postgresVersion", "less than or equal to 18"]),
    ("PgCluster", "image", "", ["spec.image"]),
    ("PgCluster", "failoverDelay", "soon", ["spec.failoverDelay must be a duration"]),
    # storage
    ("PgCluster", "storage", _DELETE, ["spec.storage", "Required value"]),
    ("PgCluster", "storage.size", "lots", ["spec.storage.size must be a positive Kubernetes quantity"]),
    ("PgCluster", "storage.size", "1Gigabyte", ["spec.storage.size must be a positive Kubernetes quantity"]),
    ("PgCluster", "storage.size", "0", ["spec.storage.size must be a positive Kubernetes quantity"]),
    ("PgCluster", "storage.size", "-1Gi", ["spec.storage.size must be a positive Kubernetes quantity"]),
    ("PgCluster", "storage.reclaimPolicy", "Recycle", ["spec.storage.reclaimPolicy", "Unsupported value"]),
    # resources
    ("PgCluster", "resources.requests", {"cpu": "lots"}, ["spec.resources.requests.cpu"]),
    ("PgCluster", "resources", {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}},
     ["spec.resources", "less than or equal to the limit"]),
    # parameters the operator owns, and malformed ones
    ("PgCluster", "parameters", {"port": "5433"}, ["spec.parameters must not set listen_addresses, port"]),
    ("PgCluster", "parameters", {"wal_level": "minimal"}, ["spec.parameters must not set wal_level", "owns replication"]),
    ("PgCluster", "parameters", {"WAL_LEVEL": "minimal"}, ["spec.parameters must not set wal_level"]),
    ("PgCluster", "parameters", {"archive_command": "/bin/true"}, ["spec.parameters must not set archive_*", "use spec.backup"]),
    ("PgCluster", "parameters", {"archive_timeout": "60"}, ["spec.parameters must not set archive_*"]),
    ("PgCluster", "parameters", {"recovery_target_time": "2026-01-01"}, ["spec.parameters must not set archive_*", "recovery_target*"]),
    ("PgCluster", "parameters", {"primary_conninfo": "host=evil"}, ["spec.parameters must not set wal_level", "primary_conninfo"]),
    ("PgCluster", "parameters", {"listen_addresses": "*"}, ["spec.parameters must not set listen_addresses"]),
    ("PgCluster", "parameters", {"synchronous_standby_names": "*"}, ["spec.parameters must not set wal_level", "spec.synchronousReplicas"]),
    ("PgCluster", "parameters", {"ssl_key_file": "/tmp/k"}, ["spec.parameters must not set data_directory", "ssl_*_file"]),
    ("PgCluster", "parameters", {"Port": "5433"}, ["spec.parameters must not set listen_addresses, port"]),
    ("PgCluster", "parameters", {"hba_file": "/tmp/hba"}, ["spec.parameters must not set data_directory"]),
    ("PgCluster", "parameters", {"include_dir": "/tmp"}, ["spec.parameters must not set data_directory"]),
    ("PgCluster", "parameters", {"restore_command": "cp x y"}, ["spec.parameters must not set archive_*"]),
    ("PgCluster", "parameters", {"work mem": "4MB"}, ["spec.parameters keys must be PostgreSQL setting names"]),
    ("PgCluster", "parameters", {"work_mem": "4MB\narchive_command = 'x'"},
     ["spec.parameters values must not contain control characters"]),
    ("PgCluster", "parameters", {"work_mem": 4}, ["spec.parameters.work_mem", "string"]),
    # durability given up (issue 12): only with spec.allowUnsafeParameters (e2e/test_tenancy.py)
    ("PgCluster", "parameters", {"fsync": "off"}, ["spec.parameters.fsync must not be off",
                                                   "spec.allowUnsafeParameters: true"]),
    ("PgCluster", "parameters", {"FSYNC": "False"}, ["spec.parameters.fsync must not be off"]),
    # bootstrap
    ("PgCluster", "bootstrap", {}, ["spec.bootstrap must set exactly one of initdb or recovery"]),
    ("PgCluster", "bootstrap", {"initdb": {}, "recovery": {"source": "orders"}},
     ["spec.bootstrap must set exactly one of initdb or recovery"]),
    ("PgCluster", "bootstrap", {"recovery": {}}, ["spec.bootstrap.recovery.source", "Required value"]),
    ("PgCluster", "bootstrap", {"recovery": {"source": "orders", "targetTime": "2026-11-22T03:00:00Z",
                                             "targetLSN": "0/3000060"}},
     ["spec.bootstrap.recovery.targetLSN", "mutually exclusive"]),
    ("PgCluster", "bootstrap", {"recovery": {"source": "orders", "targetLSN": "3000060"}},
     ["spec.bootstrap.recovery.targetLSN must be an LSN"]),
    ("PgCluster", "bootstrap", {"recovery": {"source": "orders", "targetTimeline": 0}},
     ["spec.bootstrap.recovery.targetTimeline must be latest, current or a timeline number"]),
    ("PgCluster", "bootstrap", {"recovery": {"source": "orders", "targetTimeline": "newest"}},
     ["spec.bootstrap.recovery.targetTimeline must be latest, current or a timeline number"]),
    ("PgCluster", "bootstrap", {"recovery": {"source": "orders", "targetTime": "yesterday"}},
     ["spec.bootstrap.recovery.targetTime", "date-time"]),
    ("PgCluster", "bootstrap", {"recovery": {"source": "Orders_1"}},
     ["spec.bootstrap.recovery.source must be the name of a PgCluster"]),
    ("PgCluster", "bootstrap", {"initdb": {"database": "postgres"}}, ["spec.bootstrap.initdb.database"]),
    ("PgCluster", "bootstrap", {"initdb": {"database": "App-DB"}}, ["spec.bootstrap.initdb.database"]),
    ("PgCluster", "bootstrap", {"initdb": {"owner": "postgres"}}, ["spec.bootstrap.initdb.owner"]),
    ("PgCluster", "bootstrap", {"recovery": {"source": "orders", "s3": {"bucket": "pg-backups",
                                                                       "path": "shop/orders",
                                                                       "credentialsSecret": "x"}}},
     ["spec.backup.s3", "must not point at the same bucket and path"]),
    # backup
    ("PgCluster", "backup", {"schedule": "0 3 * * *"}, ["spec.backup.s3", "Required value"]),
    ("PgCluster", "backup.s3", {"bucket": "pg-backups"}, ["spec.backup.s3.credentialsSecret", "Required value"]),
    ("PgCluster", "backup.s3", dict(S3, retentionCredentialsSecret="s3-creds"),
     ["spec.backup.s3.retentionCredentialsSecret must name another Secret than spec.backup.s3.credentialsSecret"]),
    ("PgCluster", "backup.s3.retentionCredentialsSecret", "S3_Admin",
     ["spec.backup.s3.retentionCredentialsSecret must be the name of a Secret"]),
    ("PgCluster", "backup.s3.encryption", {}, ["spec.backup.s3.encryption.keySecret", "Required value"]),
    ("PgCluster", "backup.s3.encryption", {"keySecret": {"key": "k"}},
     ["spec.backup.s3.encryption.keySecret.name", "Required value"]),
    ("PgCluster", "backup.s3.encryption", {"keySecret": {"name": "Backup_Key"}},
     ["spec.backup.s3.encryption.keySecret.name must be the name of a Secret"]),
    ("PgCluster", "backup.s3.encryption", {"keySecret": {"name": "k", "key": "a/b"}},
     ["spec.backup.s3.encryption.keySecret.key must be a Secret key"]),
    ("PgCluster", "bootstrap", {"recovery": {"source": "orders", "s3": dict(
        S3, encryption={"keySecret": {"name": "Backup_Key"}})}},
     ["spec.bootstrap.recovery.s3.encryption.keySecret.name must be the name of a Secret"]),
    ("PgCluster", "backup.s3.bucket", "My_Bucket", ["spec.backup.s3.bucket must be an S3 bucket name"]),
    ("PgCluster", "backup.s3.bucket", "ab", ["spec.backup.s3.bucket must be an S3 bucket name"]),
    ("PgCluster", "backup.s3.bucket", "192.168.1.10", ["spec.backup.s3.bucket must be an S3 bucket name"]),
    ("PgCluster", "backup.s3.bucket", "a..b", ["spec.backup.s3.bucket must be an S3 bucket name"]),
    ("PgCluster", "backup.s3.endpoint", "s3.example.com", ["spec.backup.s3.endpoint must be an http(s) URL"]),
    ("PgCluster", "backup.s3.endpoint", "ftp://s3.example.com", ["spec.backup.s3.endpoint must be an http(s) URL"]),
    ("PgCluster", "backup.s3.path", "/shop", ["spec.backup.s3.path"]),
    ("PgCluster", "backup.schedule", "", ["spec.backup.schedule must be a cron expression with exactly 5 fields"]),
    ("PgCluster", "backup.schedule", "0 3 * *", ["spec.backup.schedule must be a cron expression with exactly 5 fields"]),
    ("PgCluster", "backup.schedule", "0 0 3 * * *", ["spec.backup.schedule must be a cron expression with exactly 5 fields"]),
    ("PgCluster", "backup.schedule", "every day", ["spec.backup.schedule must be a cron expression with exactly 5 fields"]),
    ("PgCluster", "backup.schedule", "@reboot", ["spec.backup.schedule must be a cron expression with exactly 5 fields"]),
    ("PgCluster", "backup.schedule", " 0 3 * * *", ["spec.backup.schedule must be a cron expression with exactly 5 fields"]),
    ("PgCluster", "backup.retention", {}, ["spec.backup.retention must set keepLast, maxAge or both"]),
    ("PgCluster", "backup.retention", {"keepLast": 0}, ["spec.backup.retention.keepLast", "greater than or equal to 1"]),
    ("PgCluster", "backup.retention", {"maxAge": "30 days"}, ["spec.backup.retention.maxAge must be a positive number"]),
    ("PgCluster", "backup.retention", {"maxAge": "0d"}, ["spec.backup.retention.maxAge must be a positive number"]),
    ("PgCluster", "backup.target", "secondary", ["spec.backup.target", "Unsupported value"]),
    # publish
    ("PgCluster", "publish.vaultPath", "/etc/passwd", ["spec.publish.vaultPath must be a Vault KV v2 path"]),
    ("PgCluster", "publish.vaultPath", "secret/data/../other/db", ["spec.publish.vaultPath must be a Vault KV v2 path"]),
    ("PgCluster", "publish.consulPrefix", "/config/x/", ["spec.publish.consulPrefix must be a Consul key prefix"]),
    # PgInstance
    ("PgInstance", "role", "leader", ["spec.role", "Unsupported value"]),
    ("PgInstance", "bootstrap", "clone", ["spec.bootstrap", "Unsupported value"]),
    ("PgInstance", "cluster", _DELETE, ["spec.cluster", "Required value"]),
    ("PgInstance", "ordinal", -1, ["spec.ordinal", "greater than or equal to 0"]),
    # PgBackup
    ("PgBackup", "target", "secondary", ["spec.target", "Unsupported value"]),
    ("PgBackup", "method", "pg_dump", ["spec.method", "Unsupported value"]),
    ("PgBackup", "cluster", _DELETE, ["spec.cluster", "Required value"]),
    ("PgBackup", "cluster", "Orders!", ["spec.cluster must be the name of a PgCluster"]),
    # MysqlDb
    ("MysqlDb", "instanceSize", "tiny", ["spec.instanceSize", "Unsupported value"]),
    ("MysqlDb", "storageGB", 10, ["spec.storageGB", "greater than or equal to 20"]),
    ("MysqlDb", "storageGB", 70000, ["spec.storageGB", "less than or equal to 65536"]),
    ("MysqlDb", "deletionPolicy", "Destroy", ["spec.deletionPolicy", "Unsupported value"]),
    ("MysqlDb", "engineVersion", "latest", ["spec.engineVersion must be a MySQL version"]),
    ("MysqlDb", "engineVersion", "8", ["spec.engineVersion must be a MySQL version"]),
    ("MysqlDb", "engineVersion", _DELETE, ["spec.engineVersion", "Required value"]),
    ("MysqlDb", "databaseName", "1orders", ["spec.databaseName must start with a letter"]),
    ("MysqlDb", "databaseName", "orders-db", ["spec.databaseName must start with a letter"]),
    ("MysqlDb", "databaseName", "o" * 65, ["spec.databaseName", "may not be more than 64"]),
    ("MysqlDb", "instanceClass", "m5.large", ["spec.instanceClass must be an RDS instance class"]),
    ("MysqlDb", "backupRetentionDays", 36, ["spec.backupRetentionDays", "less than or equal to 35"]),
    ("MysqlDb", "tags", {"aws:team": "x"}, ["spec.tags keys", "aws:"]),
    ("MysqlDb", "tags", {"pgop.io/owner": "x"}, ["spec.tags keys"]),
    ("MysqlDb", "vaultPath", "secret/k8s/shop/db", ["spec.vaultPath must be a Vault KV v2 path"]),
    ("MysqlDb", "consulPrefix", "config//x", ["spec.consulPrefix must be a Consul key prefix"]),
    # issue 16
    ("MysqlDb", "preferredBackupWindow", "3:00-4:00", ["spec.preferredBackupWindow must be hh24:mi-hh24:mi"]),
    ("MysqlDb", "preferredMaintenanceWindow", "05:00-06:00",
     ["spec.preferredMaintenanceWindow must be ddd:hh24:mi-ddd:hh24:mi"]),
    ("MysqlDb", "vpcSecurityGroupIds", ["default"], ["spec.vpcSecurityGroupIds items must be security group ids"]),
    ("MysqlDb", "kmsKeyId", "my key", ["spec.kmsKeyId must be a KMS key ARN"]),
    ("MysqlDb", "passwordRotation", {"schedule": "monthly"}, ["spec.passwordRotation.schedule must be"]),
    ("MysqlDb", "restoreFrom", {}, ["spec.restoreFrom needs exactly one of"]),
    ("MysqlDb", "restoreFrom", {"snapshotIdentifier": "s", "sourceDbInstanceIdentifier": "i"},
     ["spec.restoreFrom needs exactly one of"]),
    ("MysqlDb", "restoreFrom", {"sourceDbInstanceIdentifier": "i"}, ["needs exactly one of restoreTime"]),
    ("MysqlDb", "restoreFrom", {"snapshotIdentifier": "s", "useLatestRestorableTime": True},
     ["go with sourceDbInstanceIdentifier"]),
]


def _refused_id(case):
    kind, field, value, _ = case
    return f"{kind}-{field}={'<deleted>' if value is _DELETE else json.dumps(value)[:40]}"


@pytest.mark.parametrize("kind,field,value,expected", REFUSED, ids=[_refused_id(c) for c in REFUSED])
def test_bad_input_is_refused_with_a_message_naming_the_field(objs, crd_namespace, kind, field, value, expected):
    spec = copy.deepcopy(BASES[kind])
    if field.startswith("backup.") and field != "backup.s3":
        spec["backup"] = {"s3": dict(S3)}
    if kind == "PgCluster" and field == "bootstrap" and "s3" in json.dumps(value):
        spec["backup"] = {"s3": dict(S3)}
    _set(spec, field, value)
    body = _manifest(kind, spec)
    message = _refusal(lambda: objs.create_namespaced_custom_object(
        GROUP, VERSION, crd_namespace, PLURALS[kind], dict(body, metadata=dict(body["metadata"], namespace=crd_namespace)),
        dry_run="All", field_validation="Strict"))
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"


@pytest.mark.parametrize("name,expected", [
    ("1orders", "metadata.name of a PgCluster must start with a lowercase letter"),
    ("o" * 51, "at most 50 characters"),
])
def test_pgcluster_name_must_fit_derived_names(objs, crd_namespace, name, expected):
    message = _refusal(lambda: _create(objs, crd_namespace, _manifest("PgCluster", CLUSTER, name=name)))
    assert expected in message


def test_a_misspelt_field_is_refused_not_pruned(objs, crd_namespace):
    """kubectl validates fields strictly: a typo must not vanish silently."""
    body = _manifest("PgCluster", dict(CLUSTER, synchronousReplica=1))
    body["metadata"]["namespace"] = crd_namespace
    with pytest.raises(ApiException) as info:
        objs.create_namespaced_custom_object(GROUP, VERSION, crd_namespace, "pgclusters", body,
                                             dry_run="All", field_validation="Strict")
    assert info.value.status == 400
    assert 'unknown field "spec.synchronousReplica"' in json.loads(info.value.body)["message"]


def test_restore_into_own_name_is_refused(objs, crd_namespace):
    spec = dict(CLUSTER, bootstrap={"recovery": {"source": "orders"}})
    message = _refusal(lambda: _create(objs, crd_namespace, _manifest("PgCluster", spec, name="orders")))
    assert "spec.bootstrap.recovery.source" in message and "own name" in message


# --------------------------------------------------------------------------- transition rules


def _update(objs, namespace: str, stored: dict, field: str, value, dry_run: bool = True) -> dict:
    # The latest version: an operator running meanwhile may have annotated the stored object (its
    # spec, which the transition rules compare with, only the test changes).
    plural = PLURALS[stored["kind"]]
    kwargs = {"dry_run": "All"} if dry_run else {}

    def put():
        body = objs.get_namespaced_custom_object(GROUP, VERSION, namespace, plural,
                                                 stored["metadata"]["name"])
        _set(body["spec"], field, value)
        return objs.replace_namespaced_custom_object(GROUP, VERSION, namespace, plural,
                                                     body["metadata"]["name"], body, **kwargs)
    return _retry_conflicts(put)


def _retry_conflicts(fn, attempts: int = 10):
    """Runs fn again when the object changed between its read and its write (409)."""
    for attempt in range(attempts):
        try:
            return fn()
        except ApiException as e:
            if e.status != 409 or attempt == attempts - 1:
                raise
            time.sleep(0.2)


@pytest.fixture()
def stored(objs, crd_namespace):
    """Create (for real) an object of `kind` whose spec is `base` updated by `overrides`; it is
    deleted after the test, so that an operator running meanwhile has little to act on."""
    made = []

    def make(kind: str, **overrides) -> dict:
        spec = copy.deepcopy(BASES[kind])
        for field, value in overrides.items():
            _set(spec, field.replace("__", "."), value)
        obj = _create(objs, crd_namespace, _manifest(kind, spec), dry_run=False)
        made.append(obj)
        return obj

    yield make
    for obj in made:
        try:
            objs.delete_namespaced_custom_object(GROUP, VERSION, crd_namespace, PLURALS[obj["kind"]],
                                                 obj["metadata"]["name"])
        except ApiException as e:
            if e.status != 404:
                raise


@pytest.mark.parametrize("field,value,expected", [
    ("postgresVersion", 16, "spec.postgresVersion is immutable"),
    ("postgresVersion", _DELETE, "spec.postgresVersion is immutable"),  # re-defaulted to 15
    ("bootstrap.initdb.database", "other", "spec.bootstrap is immutable"),
    ("bootstrap", {"recovery": {"source": "elsewhere"}}, "spec.bootstrap is immutable"),
    ("storage.storageClassName", "fast", "spec.storage.storageClassName is immutable"),
    ("storage.size", "500Mi", "spec.storage.size may grow but not shrink"),
    ("storage.size", "1G", "spec.storage.size may grow but not shrink"),  # 1G < 1Gi
])
def test_pgcluster_immutables(objs, crd_namespace, stored, field, value, expected):
    old = stored("PgCluster", postgresVersion=14)
    message = _refusal(lambda: _update(objs, crd_namespace, old, field, value))
    assert expected in message, message


@pytest.mark.parametrize("field,value", [
    ("storage.size", "2Gi"), ("storage.size", "1024Mi"), ("instances", 5), ("instances", 2),
    ("synchronousReplicas", 2), ("parameters", {"work_mem": "8MB"}), ("storage.reclaimPolicy", "Delete"),
    ("backup", {"s3": S3, "schedule": "0 3 * * *"}),
])
def test_pgcluster_allowed_changes(objs, crd_namespace, stored, field, value):
    old = stored("PgCluster", postgresVersion=14)
    _update(objs, crd_namespace, old, field, value)


@pytest.mark.parametrize("field,value,expected", [
    ("storageEncrypted", False, "spec.storageEncrypted is immutable"),
    ("kmsKeyId", "alias/other", "spec.kmsKeyId is immutable"),
    ("kmsKeyId", _DELETE, "spec.kmsKeyId is immutable"),
    ("restoreFrom", {"snapshotIdentifier": "later"}, "spec.restoreFrom can only be given when the MysqlDb is created"),
])
def test_mysqldb_encryption_and_restore_are_immutable(objs, crd_namespace, stored, field, value, expected):
    old = stored("MysqlDb", kmsKeyId="alias/rds-orders")
    message = _refusal(lambda: _update(objs, crd_namespace, old, field, value))
    assert expected in message and "restore" in message, message


@pytest.mark.parametrize("field,value", [
    ("vpcSecurityGroupIds", ["sg-0123abcd"]), ("dbParameterGroupName", "other"), ("publiclyAccessible", True),
    ("preferredMaintenanceWindow", "mon:01:00-mon:02:00"), ("allowMajorVersionUpgrade", True),
    ("passwordRotation", {"schedule": "@monthly"}),
])
def test_mysqldb_allowed_changes(objs, crd_namespace, stored, field, value):
    _update(objs, crd_namespace, stored("MysqlDb"), field, value)


def test_pgcluster_storage_class_cannot_be_removed(objs, crd_namespace, stored):
    old = stored("PgCluster", storage__storageClassName="fast")
    message = _refusal(lambda: _update(objs, crd_namespace, old, "storage.storageClassName", _DELETE))
    assert "spec.storage.storageClassName is immutable" in message


def test_pginstance_immutables_and_changes(objs, operator_objs, crd_namespace, stored):
    old = stored("PgInstance")
    assert "spec.cluster is immutable" in _refusal(lambda: _update(objs, crd_namespace, old, "cluster", "other"))
    assert "spec.ordinal is immutable" in _refusal(lambda: _update(objs, crd_namespace, old, "ordinal", 2))
    # As the operator: deploy/admission.yaml refuses these changes to anyone else.
    _update(operator_objs, crd_namespace, old, "role", "primary")
    _update(operator_objs, crd_namespace, old, "fenced", True)
    _update(operator_objs, crd_namespace, old, "primary", "orders-0")


def test_pgbackup_spec_is_immutable_and_status_is_writable(objs, crd_namespace, stored):
    old = stored("PgBackup")
    message = _refusal(lambda: _update(objs, crd_namespace, old, "target", "primary"))
    assert "PgBackup spec is immutable" in message
    # but for deletionPolicy, an enum defaulting to Retain
    assert old["spec"]["deletionPolicy"] == "Retain"
    assert "Unsupported value" in _refusal(lambda: _update(objs, crd_namespace, old, "deletionPolicy", "Purge"))
    assert _update(objs, crd_namespace, old, "deletionPolicy", "Delete")["spec"]["deletionPolicy"] == "Delete"
    # the status subresource takes the contract fields; phase is an enum
    body = copy.deepcopy(old)
    body["status"] = {"phase": "Completed", "startedAt": "2026-11-22T03:00:00Z",
                      "completedAt": "2026-11-22T03:01:00Z", "beginLSN": "0/2000028", "endLSN": "0/2000100",
                      "timeline": 1, "beginWal": "000000010000000000000002",
                      "endWal": "000000010000000000000002", "sizeBytes": 4242,
                      "s3Path": "s3://pg-backups/shop/orders/base/x", "error": ""}
    written = objs.replace_namespaced_custom_object_status(GROUP, VERSION, crd_namespace, "pgbackups",
                                                           old["metadata"]["name"], body)
    assert written["status"]["endLSN"] == "0/2000100" and written["status"]["sizeBytes"] == 4242
    body = copy.deepcopy(written)
    body["status"]["phase"] = "Done"
    message = _refusal(lambda: objs.replace_namespaced_custom_object_status(
        GROUP, VERSION, crd_namespace, "pgbackups", old["metadata"]["name"], body))
    assert "status.phase" in message


@pytest.mark.parametrize("old_version,new_version,allowed", [
    ("8.0.35", "8.0.36", True),
    ("8.0.35", "8.4.3", True),
    ("8.0.35", "10.0.1", True),      # a string comparison would call this a downgrade
    ("8.0.9", "8.0.35", True),       # and this one too
    ("5.7.44-rds.20240408", "8.0.35", True),
    ("8.0", "8.0.35", True),
    ("8.0.35", "8.0.35", True),
    ("8.0.35", "8.0.34", False),
    ("8.0.35", "8.0.4", False),      # a string comparison would allow this
    ("8.0.35", "5.7.44", False),
    ("8.4.3", "8.0.40", False),
    ("8.0.35", "8.0", False),        # 8.0 means 8.0.0 here
])
def test_mysqldb_engine_version_is_never_downgraded(objs, crd_namespace, stored, old_version, new_version, allowed):
    old = stored("MysqlDb", engineVersion=old_version)
    if allowed:
        _update(objs, crd_namespace, old, "engineVersion", new_version)
    else:
        message = _refusal(lambda: _update(objs, crd_namespace, old, "engineVersion", new_version))
        assert "spec.engineVersion may be upgraded but not downgraded" in message
        assert f"from {old_version} to {new_version}" in message


def test_mysqldb_immutables_and_changes(objs, crd_namespace, stored):
    old = stored("MysqlDb", storageGB=100)
    assert "spec.databaseName is immutable" in _refusal(
        lambda: _update(objs, crd_namespace, old, "databaseName", "other"))
    assert "spec.storageGB may grow but not shrink" in _refusal(
        lambda: _update(objs, crd_namespace, old, "storageGB", 50))
    for field, value in [("storageGB", 200), ("instanceSize", "large"), ("instanceClass", "db.m6g.large"),
                         ("multiAZ", True), ("backupRetentionDays", 14), ("deletionPolicy", "Retain"),
                         ("deletionProtection", True), ("applyImmediately", True)]:
        _update(objs, crd_namespace, old, field, value)


# --------------------------------------------------------------------------- what kubectl shows


def _table(kube_api, plural: str, namespace: str) -> dict:
    return kube_api.call_api(
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}", "GET",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"], response_type="object", _return_http_data_only=True)


@pytest.mark.parametrize("kind,columns", [
    ("PgCluster", ["Name", "Instances", "Ready", "Primary", "Phase", "Age"]),
    ("PgInstance", ["Name", "Cluster", "Role", "Phase", "Ready", "LSN", "Age"]),
    ("PgBackup", ["Name", "Cluster", "Phase", "Started", "Size", "Age"]),
    ("MysqlDb", ["Name", "Size", "Engine", "Endpoint", "Phase", "Age"]),
])
def test_kubectl_get_columns(kube_api, objs, crd_namespace, stored, kind, columns):
    made = stored(kind)
    table = _table(kube_api, PLURALS[kind], crd_namespace)
    shown = [c["name"] for c in table["columnDefinitions"] if c["priority"] == 0]
    assert shown == columns
    row = next(r for r in table["rows"] if r["cells"][0] == made["metadata"]["name"])
    if kind == "PgCluster":
        assert row["cells"][1] == 3
    if kind == "PgInstance":
        assert row["cells"][1] == "orders"
    if kind == "MysqlDb":
        assert row["cells"][1:3] == ["small", "8.0.35"]


def test_discovery_names_and_category(kube_api, crds_installed):
    found = kube_api.call_api(f"/apis/{GROUP}/{VERSION}", "GET", auth_settings=["BearerToken"],
                              response_type="object", _return_http_data_only=True)
    resources = {r["name"]: r for r in found["resources"] if "/" not in r["name"]}
    expected = {"pgclusters": ("PgCluster", "pgc"), "pginstances": ("PgInstance", "pgi"),
                "pgbackups": ("PgBackup", "pgb"), "mysqldbs": ("MysqlDb", "mydb")}
    assert set(resources) == set(expected)
    for plural, (kind, short) in expected.items():
        r = resources[plural]
        assert r["kind"] == kind and r["namespaced"] is True
        assert r["shortNames"] == [short]
        assert "pgop" in r["categories"]
    subresources = {r["name"] for r in found["resources"] if "/" in r["name"]}
    assert subresources == {f"{p}/status" for p in expected}


def test_instances_can_be_selected_by_cluster(objs, crd_namespace, stored):
    mine = stored("PgInstance", cluster="alpha")
    stored("PgInstance", cluster="beta")
    listed = objs.list_namespaced_custom_object(GROUP, VERSION, crd_namespace, "pginstances",
                                                field_selector="spec.cluster=alpha")
    names = [i["metadata"]["name"] for i in listed["items"]]
    assert mine["metadata"]["name"] in names
    assert all(i["spec"]["cluster"] == "alpha" for i in listed["items"])


def test_pgcluster_status_takes_the_contract_fields(objs, crd_namespace, stored):
    old = stored("PgCluster")
    status = {
        "phase": "Ready", "currentPrimary": f"{old['metadata']['name']}-0", "readyInstances": 3,
        "instances": [{"name": "x-0", "role": "primary", "timeline": 1, "lsn": "0/3000060", "lagBytes": 0,
                       "ready": True},
                      {"name": "x-1", "role": "replica", "timeline": 1, "lsn": "0/3000000", "lagBytes": 96,
                       "ready": True, "syncState": "quorum"}],
        "conditions": [{"type": t, "status": "True", "reason": "Test", "message": "",
                        "lastTransitionTime": "2026-11-22T03:00:00Z"}
                       for t in ("Ready", "Progressing", "Degraded", "ContinuousArchiving", "LastBackupSucceeded")],
        "lastBackup": {"name": "b1", "phase": "Completed", "completedAt": "2026-11-22T03:01:00Z"},
        "firstRecoverabilityPoint": "2026-11-22T03:00:00Z",
        "hibernation": {"phase": "Hibernated", "since": "2026-11-22T04:00:00Z"},
        "kopf": {"progress": {"anything": {"retries": 1}}},
    }

    def put():
        body = objs.get_namespaced_custom_object(GROUP, VERSION, crd_namespace, "pgclusters",
                                                 old["metadata"]["name"])
        body["status"] = status
        return objs.replace_namespaced_custom_object_status(GROUP, VERSION, crd_namespace, "pgclusters",
                                                            old["metadata"]["name"], body)["status"]
    written = _retry_conflicts(put)
    assert written["instances"][1]["lagBytes"] == 96
    assert len(written["conditions"]) == 5
    assert written["kopf"] == {"progress": {"anything": {"retries": 1}}}
    assert written["hibernation"] == {"phase": "Hibernated", "since": "2026-11-22T04:00:00Z"}
    def put_duplicate_conditions():
        body = objs.get_namespaced_custom_object(GROUP, VERSION, crd_namespace, "pgclusters",
                                                 old["metadata"]["name"])
        body["status"] = {"conditions": [{"type": "Ready", "status": "True"},
                                         {"type": "Ready", "status": "False"}]}
        return objs.replace_namespaced_custom_object_status(
            GROUP, VERSION, crd_namespace, "pgclusters", old["metadata"]["name"], body)
    message = _refusal(lambda: _retry_conflicts(put_duplicate_conditions))
    assert "status.conditions" in message and "Duplicate" in message


def test_pginstance_keeps_its_copy_of_the_cluster_spec(objs, crd_namespace):
    """The cluster controller hands each instance what it runs; none of it may be pruned."""
    s3 = dict(S3, endpoint="http://10.243.0.1:7070", region="us-east-1")
    spec = dict(INSTANCE, bootstrap="recovery", fenced=False, postgresVersion=15, image="pgop/postgres:15",
                storage={"size": "1Gi", "storageClassName": "standard", "reclaimPolicy": "Retain"},
                resources={"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": 1073741824}},
                parameters={"work_mem": "8MB"}, synchronousReplicas=1, synchronousMode="preferred",
                configHash="0123456789abcdef", initdb={"database": "app", "owner": "app"},
                recovery={"source": "orders", "backup": "b1", "targetLSN": "0/3000060", "s3": s3},
                backup={"s3": s3, "walArchiving": True})
    created = _create(objs, crd_namespace, _manifest("PgInstance", spec))
    _assert_kept(spec, created["spec"], "spec")


def test_mysqldb_status_keeps_the_controller_fields(objs, crd_namespace, stored):
    old = stored("MysqlDb")
    status = {"phase": "Ready", "dbInstanceIdentifier": "pgop-shop-orders-db-1a2b3c", "dbInstanceArn": "arn:x",
              "dbInstanceStatus": "available", "endpoint": "db.example", "port": 3306, "engineVersion": "8.0.35",
              "instanceClass": "db.t3.micro", "allocatedStorage": 20, "multiAZ": False, "backupRetentionDays": 7,
              "deletionProtection": False, "pendingModifications": {"AllocatedStorage": "40"},
              "finalSnapshotIdentifier": "final-x", "vaultPath": "secret/data/k8s/shop/orders-db/db",
              "consulPrefix": "config/k8s/shop/orders-db/db", "lastError": "Throttling",
              "adopted": True, "appliedTags": {"team": "shop"}, "nextCheckAt": "2026-11-22T03:00:00Z",
              "checks": 3, "faults": 1, "observedGeneration": 1,
              "conditions": [{"type": "Ready", "status": "True", "reason": "Available", "message": "",
                              "lastTransitionTime": "2026-11-22T03:00:00Z"}]}
    def put():
        body = objs.get_namespaced_custom_object(GROUP, VERSION, crd_namespace, "mysqldbs",
                                                 old["metadata"]["name"])
        body["status"] = status
        return objs.replace_namespaced_custom_object_status(GROUP, VERSION, crd_namespace, "mysqldbs",
                                                            old["metadata"]["name"], body)
    written = _retry_conflicts(put)
    _assert_kept(status, written["status"], "status")


# --------------------------------------------------------------------------- admission policy

ADMISSION = ROOT / "deploy" / "admission.yaml"
OPERATOR_GROUP = "pgop:operators"
ROLE_MESSAGE = "spec.role of a PgInstance is decided by the operator; use `pgop promote"


def _admission(policy_name: str) -> tuple[dict, dict]:
    """A policy of deploy/admission.yaml and its binding."""
    docs = [d for d in yaml.safe_load_all(ADMISSION.read_text()) if d]
    policy = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy" and d["metadata"]["name"] == policy_name)
    binding = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"
                   and d["spec"]["policyName"] == policy_name)
    return policy, binding


def _operator_objs(kube_api, namespace: str):
    """A client acting as a member of the group pgop:operators (by impersonation, which the admin
    of the local cluster may do), allowed to update PgInstances in `namespace`."""
    rbac = client.RbacAuthorizationV1Api(kube_api)
    name = "pgop-test-operators"
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": namespace},
            "rules": [{"apiGroups": [GROUP], "resources": ["pginstances"],
                       "verbs": ["get", "list", "update", "patch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": name, "namespace": namespace},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": OPERATOR_GROUP}]}
    for body, create in ((role, rbac.create_namespaced_role), (binding, rbac.create_namespaced_role_binding)):
        try:
            create(namespace, body)
        except ApiException as e:
            if e.status != 409:
                raise
    api = client.ApiClient(configuration=kube_api.configuration)
    api.set_default_header("Impersonate-User", "pgop-test-operator")
    api.set_default_header("Impersonate-Group", OPERATOR_GROUP)
    return client.CustomObjectsApi(api)


@pytest.fixture()
def operator_objs(kube_api, crd_namespace):
    return _operator_objs(kube_api, crd_namespace)


@pytest.fixture()
def policy_namespace(kube_api, crds_installed):
    """deploy/admission.yaml's policy, bound to a namespace of this test only (the cluster-wide
    binding would also refuse a host-run operator that has no identity of its own yet)."""
    core = client.CoreV1Api(kube_api)
    suffix = uuid.uuid4().hex[:8]
    namespace = f"pgop-vap-test-{suffix}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=namespace, labels={"app.kubernetes.io/part-of": "pgop-tests"})))
    policy, binding = _admission("pgop-pginstance-roles")
    policy["metadata"]["name"] = binding["spec"]["policyName"] = f"pgop-pginstance-roles-test-{suffix}"
    binding["metadata"]["name"] = f"pgop-pginstance-roles-test-{suffix}"
    binding["spec"]["matchResources"] = {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": namespace}}}
    base = "/apis/admissionregistration.k8s.io/v1"
    _apply(kube_api, f"{base}/validatingadmissionpolicies/{policy['metadata']['name']}", policy)
    _apply(kube_api, f"{base}/validatingadmissionpolicybindings/{binding['metadata']['name']}", binding)
    yield namespace
    for path in (f"{base}/validatingadmissionpolicybindings/{binding['metadata']['name']}",
                 f"{base}/validatingadmissionpolicies/{policy['metadata']['name']}"):
        try:
            kube_api.call_api(path, "DELETE", auth_settings=["BearerToken"], _return_http_data_only=True)
        except ApiException:
            pass
    try:
        core.delete_namespace(namespace)
    except ApiException:
        pass


def _forbidden(call) -> str:
    with pytest.raises(ApiException) as info:
        call()
    assert info.value.status == 403, f"expected 403 Forbidden, got {info.value.status}: {info.value.body}"
    return json.loads(info.value.body)["message"]


def test_the_admission_policy_is_valid_and_names_the_operator():
    policy, binding = _admission("pgop-pginstance-roles")
    assert (policy["kind"], binding["kind"]) == ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    operator = yaml.safe_load_all((ROOT / "deploy" / "operator.yaml").read_text())
    account = next(d for d in operator if d and d["kind"] == "ServiceAccount")["metadata"]
    assert f"system:serviceaccount:{account['namespace']}:{account['name']}" in policy["spec"]["variables"][0]["expression"]


def test_only_the_operator_changes_role_primary_or_fenced(kube_api, objs, policy_namespace):
    instance = _create(objs, policy_namespace, _manifest("PgInstance", copy.deepcopy(INSTANCE)), dry_run=False)
    stored = {**instance, "kind": "PgInstance"}
    # The policy takes a moment to be loaded by the API server: wait for its first refusal.
    deadline = time.monotonic() + 30
    while True:
        try:
            _update(objs, policy_namespace, stored, "role", "primary")
        except ApiException as e:
            assert e.status == 403, e.body
            break
        assert time.monotonic() < deadline, "the admission policy never refused a spec.role change"
        time.sleep(0.5)
    for field, value in (("role", "primary"), ("primary", "orders-2"), ("fenced", True)):
        message = _forbidden(lambda f=field, v=value: _update(objs, policy_namespace, stored, f, v))
        assert ROLE_MESSAGE in message and "pgop fence" in message, message
    # Everything else a person (or the cluster controller) changes is not the policy's business.
    _update(objs, policy_namespace, stored, "parameters", {"work_mem": "8MB"})
    # The operator's identity: a member of pgop:operators.
    operator = _operator_objs(kube_api, policy_namespace)
    for field, value in (("role", "primary"), ("primary", "orders-2"), ("fenced", True)):
        _update(operator, policy_namespace, stored, field, value, dry_run=False)
    # The agents write status (a subresource the policy does not match).
    body = objs.get_namespaced_custom_object(GROUP, VERSION, policy_namespace, "pginstances",
                                             stored["metadata"]["name"])
    body["status"] = {"role": "primary", "walReceiver": "stopped", "following": "", "replayLSN": "0/3000000"}
    stored_status = objs.replace_namespaced_custom_object_status(GROUP, VERSION, policy_namespace, "pginstances",
                                                                 stored["metadata"]["name"], body)["status"]
    assert (stored_status["walReceiver"], stored_status["following"], stored_status["replayLSN"]) == \
        ("stopped", "", "0/3000000")


CREATE_MESSAGE = "a PgInstance made by anyone but the operator may not set spec.role primary"


def test_only_the_operator_makes_a_pginstance_that_claims_a_primary(kube_api, objs, policy_namespace):
    """A second primary by CREATE: a PgInstance made by hand with role primary (or naming whom to
    follow, or fenced) in a running cluster would get a pod the -rw Service selects. Refused; the
    operator's identity may; a plain replica by hand is not the policy's business."""
    def create(client_objs, name: str, **fields):
        body = _manifest("PgInstance", dict(INSTANCE, **fields), name=name)
        return lambda: _create(client_objs, policy_namespace, body)
    deadline = time.monotonic() + 30
    while True:  # the policy takes a moment to be loaded by the API server
        try:
            create(objs, "hand-0", role="primary")()
        except ApiException as e:
            assert e.status == 403, e.body
            break
        assert time.monotonic() < deadline, "the admission policy never refused a PgInstance with role primary"
        time.sleep(0.5)
    for name, fields in (("hand-1", {"role": "primary"}), ("hand-2", {"primary": "orders-0"}),
                         ("hand-3", {"primaryHost": "10.0.0.9"}), ("hand-4", {"fenced": True})):
        message = _forbidden(create(objs, name, **fields))
        assert CREATE_MESSAGE in message and "spec.primaryHost" in message, message
    create(objs, "hand-5")()  # role replica, following nobody yet: allowed (dry run)
    operator = _operator_objs(kube_api, policy_namespace)
    _operator_may_create(kube_api, policy_namespace)
    create(operator, "by-operator", role="primary", primary="by-operator")()


def _operator_may_create(kube_api, namespace: str) -> None:
    """The test's operator Role (_operator_objs) with create, as the real operator has."""
    rbac = client.RbacAuthorizationV1Api(kube_api)
    rbac.patch_namespaced_role("pgop-test-operators", namespace, {"rules": [
        {"apiGroups": [GROUP], "resources": ["pginstances"], "verbs": ["get", "list", "create", "update", "patch"]}]})
