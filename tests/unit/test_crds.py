"""The CRDs in crds/, read as files: the API contract of DESIGN.md section 2 is there, at the right
paths, the schemas are structural, and the examples fit them. No server needed (the behaviour of
the CEL rules on a real kube-apiserver is in tests/integration/test_crd_validation.py).

These tests fail when a contract field is dropped or renamed: the lists below are the contract.
"""
from __future__ import annotations

import functools
import pathlib
import re

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
EXAMPLES = ROOT / "examples"

FILES = {"PgCluster": "pgclusters.yaml", "PgInstance": "pginstances.yaml", "PgBackup": "pgbackups.yaml",
         "MysqlDb": "mysqldbs.yaml"}
SHORT_NAMES = {"PgCluster": "pgc", "PgInstance": "pgi", "PgBackup": "pgb", "MysqlDb": "mydb"}

# DESIGN.md section 2 (plus what the issues add), as paths into the schema: "a.b" is a property,
# "a[].b" a property of the items of list a. Never remove an entry: the names are a contract.
CONTRACT = {
    "PgCluster": {
        "spec": ["instances", "postgresVersion", "image", "synchronousReplicas", "synchronousMode",
                 "storage", "storage.size", "storage.storageClassName", "storage.reclaimPolicy",
                 "resources", "resources.requests", "resources.limits", "parameters",
                 "bootstrap", "bootstrap.initdb", "bootstrap.initdb.database", "bootstrap.initdb.owner",
                 "bootstrap.recovery", "bootstrap.recovery.source", "bootstrap.recovery.backup",
                 "bootstrap.recovery.targetTime", "bootstrap.recovery.targetLSN",
                 "backup", "backup.s3", "backup.s3.bucket", "backup.s3.path", "backup.s3.endpoint",
                 "backup.s3.region", "backup.s3.credentialsSecret", "backup.schedule",
                 "backup.retention", "backup.retention.keepLast", "backup.retention.maxAge",
                 "backup.walArchiving", "publish", "publish.vaultPath", "publish.consulPrefix",
                 # issue 11
                 "affinity", "affinity.podAntiAffinityType", "affinity.topologyKey", "affinity.nodeSelector",
                 "affinity.tolerations", "affinity.nodeAffinity", "topologySpreadConstraints",
                 # issue 12
                 "allowUnsafeParameters"],
        "status": ["phase", "currentPrimary", "readyInstances", "instances", "instances[].name",
                   "instances[].role", "instances[].timeline", "instances[].lsn", "instances[].lagBytes",
                   "instances[].ready", "conditions", "lastBackup", "firstRecoverabilityPoint",
                   # docs/high-availability.md
                   "targetPrimary", "failover.phase", "failover.oldPrimary", "failover.since",
                   "instances[].fenced"],
    },
    "PgInstance": {
        "spec": ["cluster", "ordinal", "role", "bootstrap", "fenced", "primary",
                 # what the cluster controller hands down to each instance (pgop/specs/instance.py)
                 "postgresVersion", "image", "storage.size", "storage.storageClassName",
                 "storage.reclaimPolicy", "resources.requests", "resources.limits", "parameters",
                 "synchronousReplicas", "synchronousMode", "configHash", "initdb.database", "initdb.owner",
                 "recovery.source", "recovery.backup", "recovery.targetTime", "recovery.targetLSN",
                 "recovery.s3.bucket", "backup.s3.bucket", "backup.s3.credentialsSecret", "backup.walArchiving",
                 "affinity.podAntiAffinityType", "affinity.topologyKey", "affinity.nodeSelector",
                 "affinity.tolerations", "affinity.nodeAffinity", "topologySpreadConstraints"],
        "status": ["phase", "role", "timeline", "lsn", "ready", "lastHeartbeat", "pod", "pvc",
                   # docs/high-availability.md: the agent writes them, the schema must keep them
                   "receivedLSN", "replayLSN", "walReceiver", "systemIdentifier", "following"],
    },
    "PgBackup": {
        "spec": ["cluster", "method", "target"],
        "status": ["phase", "startedAt", "completedAt", "beginLSN", "endLSN", "timeline", "beginWal",
                   "endWal", "sizeBytes", "s3Path", "error"],
    },
    "MysqlDb": {
        "spec": ["engineVersion", "instanceSize", "instanceClass", "storageGB", "databaseName", "multiAZ",
                 "backupRetentionDays", "deletionPolicy", "deletionProtection", "applyImmediately", "tags",
                 "vaultPath", "consulPrefix",
                 # issue 16
                 "dbSubnetGroupName", "vpcSecurityGroupIds", "dbParameterGroupName", "storageEncrypted",
                 "kmsKeyId", "preferredBackupWindow", "preferredMaintenanceWindow", "publiclyAccessible",
                 "autoMinorVersionUpgrade", "allowMajorVersionUpgrade", "passwordRotation.schedule",
                 "restoreFrom.snapshotIdentifier", "restoreFrom.sourceDbInstanceIdentifier",
                 "restoreFrom.restoreTime", "restoreFrom.useLatestRestorableTime"],
        "status": ["phase", "dbInstanceIdentifier", "endpoint", "port", "conditions",
                   "finalSnapshotIdentifier", "instanceClass", "allocatedStorage", "lastError",
                   # what the rds controller keeps there (rds/controller.py, rds/policy.py)
                   "dbInstanceArn", "dbInstanceStatus", "engineVersion", "multiAZ", "backupRetentionDays",
                   "deletionProtection", "pendingModifications", "vaultPath", "consulPrefix", "adopted",
                   "appliedTags", "nextCheckAt", "checks", "faults", "observedGeneration",
                   # issue 16
                   "storageEncrypted", "kmsKeyId", "dbSubnetGroupName", "vpcSecurityGroupIds",
                   "dbParameterGroupName", "preferredBackupWindow", "preferredMaintenanceWindow",
                   "publiclyAccessible", "autoMinorVersionUpgrade", "restore.source", "restore.passwordSet",
                   "passwordRotation.lastRotatedAt", "passwordRotation.vaultVersion",
                   "passwordRotation.handledRequest", "passwordRotation.lastScheduledAt",
                   "passwordRotation.inProgress"],
    },
}

# (kind, path, schema type, enum or None, default or None)
TYPED = [
    ("PgCluster", "spec.instances", "integer", None, 1),
    ("PgCluster", "spec.postgresVersion", "integer", None, 15),
    ("PgCluster", "spec.synchronousReplicas", "integer", None, 0),
    ("PgCluster", "spec.synchronousMode", "string", ["required", "preferred"], "preferred"),
    ("PgCluster", "spec.storage.reclaimPolicy", "string", ["Delete", "Retain"], "Retain"),
    ("PgCluster", "spec.backup.walArchiving", "boolean", None, True),
    ("PgCluster", "spec.backup.schedule", "string", None, None),
    ("PgCluster", "spec.parameters", "object", None, None),
    ("PgCluster", "spec.allowUnsafeParameters", "boolean", None, False),
    ("PgCluster", "status.readyInstances", "integer", None, None),
    ("PgCluster", "status.instances", "array", None, None),
    ("PgCluster", "status.instances[].lagBytes", "integer", None, None),
    ("PgCluster", "status.instances[].ready", "boolean", None, None),
    ("PgInstance", "spec.role", "string", ["primary", "replica"], None),
    ("PgInstance", "spec.bootstrap", "string", ["initdb", "basebackup", "recovery"], None),
    ("PgInstance", "spec.ordinal", "integer", None, None),
    ("PgInstance", "spec.fenced", "boolean", None, False),
    ("PgInstance", "status.ready", "boolean", None, None),
    ("PgBackup", "spec.method", "string", ["basebackup"], "basebackup"),
    ("PgBackup", "spec.target", "string", ["prefer-replica", "primary"], "prefer-replica"),
    ("PgBackup", "status.phase", "string", ["Pending", "Running", "Completed", "Failed"], None),
    ("PgBackup", "status.sizeBytes", "integer", None, None),
    ("MysqlDb", "spec.instanceSize", "string", ["small", "medium", "large", "huge"], "small"),
    ("MysqlDb", "spec.deletionPolicy", "string", ["Snapshot", "Delete", "Retain"], "Snapshot"),
    ("MysqlDb", "spec.storageGB", "integer", None, 20),
    ("MysqlDb", "spec.multiAZ", "boolean", None, False),
    ("MysqlDb", "spec.deletionProtection", "boolean", None, False),
    ("MysqlDb", "spec.tags", "object", None, None),
    ("MysqlDb", "status.port", "integer", None, None),
    ("MysqlDb", "spec.storageEncrypted", "boolean", None, True),
    ("MysqlDb", "spec.publiclyAccessible", "boolean", None, False),
    ("MysqlDb", "spec.allowMajorVersionUpgrade", "boolean", None, False),
    ("MysqlDb", "spec.autoMinorVersionUpgrade", "boolean", None, None),
    ("MysqlDb", "spec.vpcSecurityGroupIds", "array", None, None),
]

# Fields whose changes CEL transition rules (rules that use oldSelf) must police, and a word the
# message must contain.
TRANSITIONS = [
    ("PgCluster", "spec.postgresVersion", "immutable"),
    ("PgCluster", "spec.bootstrap", "immutable"),
    ("PgCluster", "spec.storage", "storageClassName is immutable"),
    ("PgCluster", "spec.storage.size", "not shrink"),
    ("PgInstance", "spec.cluster", "immutable"),
    ("PgInstance", "spec.ordinal", "immutable"),
    ("PgBackup", "spec", "immutable"),
    ("MysqlDb", "spec.databaseName", "immutable"),
    ("MysqlDb", "spec.storageGB", "not shrink"),
    ("MysqlDb", "spec.engineVersion", "not downgraded"),
    ("MysqlDb", "spec.storageEncrypted", "restore a snapshot into a new MysqlDb"),
    ("MysqlDb", "spec.kmsKeyId", "restore a snapshot into a new MysqlDb"),
    ("MysqlDb", "spec.restoreFrom", "create a new MysqlDb"),
]

PRINTER_COLUMNS = {
    "PgCluster": ["Instances", "Ready", "Primary", "Phase", "Age"],
    "PgInstance": ["Cluster", "Role", "Phase", "Ready", "LSN", "Age"],
    "PgBackup": ["Cluster", "Phase", "Started", "Size", "Age"],
    "MysqlDb": ["Size", "Engine", "Endpoint", "Phase", "Age"],
}

# Where a schema may keep fields it does not describe (nowhere in spec).
FREE_FORM = {("PgCluster", "status.kopf"), ("PgInstance", "status.kopf"), ("PgBackup", "status.kopf"),
             ("MysqlDb", "status.kopf"), ("MysqlDb", "status.pendingModifications"),
             # Kubernetes types passed to the pods as they are (issue 11); the API server validates
             # them when the pod is created, and their schemas follow Kubernetes releases.
             ("PgCluster", "spec.affinity.nodeAffinity"), ("PgInstance", "spec.affinity.nodeAffinity"),
             ("PgCluster", "spec.topologySpreadConstraints[]"),
             ("PgInstance", "spec.topologySpreadConstraints[]")}


# --------------------------------------------------------------------------- helpers


def _load(kind: str) -> dict:
    return _parse(CRD_DIR / FILES[kind])


@functools.cache
def _parse(path: pathlib.Path) -> dict:
    return yaml.safe_load(path.read_text())


def _version(kind: str) -> dict:
    versions = _load(kind)["spec"]["versions"]
    assert [v["name"] for v in versions] == ["v1"]
    return versions[0]


def _schema(kind: str) -> dict:
    return _version(kind)["schema"]["openAPIV3Schema"]


def _node(kind: str, path: str) -> dict:
    """The schema node at a dotted path ("spec.backup.s3.bucket", "status.instances[].lsn")."""
    node = _schema(kind)
    for part in path.split("."):
        is_list = part.endswith("[]")
        name = part[:-2] if is_list else part
        props = node.get("properties") or {}
        assert name in props, f"{kind}: {path}: no property {name!r} (has {sorted(props)})"
        node = props[name]
        if is_list:
            assert node.get("type") == "array", f"{kind}: {path}: {name} is not a list"
            node = node["items"]
    return node


def _walk(node: dict, path: str = ""):
    """Every schema node with its path."""
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    for i, alt in enumerate(node.get("anyOf") or []):
        yield from _walk(alt, f"{path}<anyOf{i}>")


def _rules(kind: str):
    """Every CEL rule with the path of the node that carries it."""
    for path, node in _walk(_schema(kind)):
        for rule in node.get("x-kubernetes-validations") or []:
            yield path, rule


def _rule_regex(kind: str, path: str, index: int = 0) -> re.Pattern:
    """The regex of the index-th `matches(r'...')` in the rules of the node at `path`."""
    found = []
    for p, rule in _rules(kind):
        if p == path:
            found += re.findall(r"matches\(r'([^']*)'\)", rule["rule"])
    assert len(found) > index, f"{kind}.{path}: no regex #{index} in its CEL rules"
    pattern = found[index]
    # RE2's $ (no multi-line flag) is the end of the text; Python's also matches before a final \n
    if pattern.endswith("$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


KINDS = list(FILES)


# --------------------------------------------------------------------------- the CRD objects


@pytest.mark.parametrize("kind", KINDS)
def test_crd_identity(kind):
    crd = _load(kind)
    plural = FILES[kind].removesuffix(".yaml")
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{plural}.pgop.io"
    spec = crd["spec"]
    assert spec["group"] == "pgop.io"
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert names["kind"] == kind
    assert names["plural"] == plural
    assert names["singular"] == kind.lower()
    assert names["listKind"] == f"{kind}List"
    assert names["shortNames"] == [SHORT_NAMES[kind]]
    assert "pgop" in names["categories"]
    v1 = _version(kind)
    assert v1["served"] is True and v1["storage"] is True
    assert v1["subresources"]["status"] == {}


def test_crd_directory_holds_exactly_the_four_crds():
    assert sorted(p.name for p in CRD_DIR.glob("*.yaml")) == sorted(FILES.values())


@pytest.mark.parametrize("kind", KINDS)
def test_contract_fields_are_at_their_paths(kind):
    for section, paths in CONTRACT[kind].items():
        for path in paths:
            _node(kind, f"{section}.{path}")


@pytest.mark.parametrize("kind,path,type_,enum,default", TYPED)
def test_contract_field_types_enums_and_defaults(kind, path, type_, enum, default):
    node = _node(kind, path)
    assert node.get("type") == type_
    if enum is not None:
        assert node["enum"] == enum
    if default is not None:
        assert node["default"] == default
    else:
        assert "default" not in node


def test_minimums_of_the_contract():
    assert _node("PgCluster", "spec.instances")["minimum"] == 1
    assert _node("PgCluster", "spec.synchronousReplicas")["minimum"] == 0
    assert _node("MysqlDb", "spec.storageGB")["minimum"] == 20
    assert _node("MysqlDb", "spec.storageGB")["maximum"] == 65536
    version = _node("PgCluster", "spec.postgresVersion")
    assert version["minimum"] <= 13 and 15 <= version["maximum"]


def test_required_fields():
    assert "storage" in _node("PgCluster", "spec")["required"]
    assert "size" in _node("PgCluster", "spec.storage")["required"]
    assert "source" in _node("PgCluster", "spec.bootstrap.recovery")["required"]
    assert set(_node("PgCluster", "spec.backup.s3")["required"]) == {"bucket", "credentialsSecret"}
    assert set(_node("PgInstance", "spec")["required"]) >= {"cluster", "ordinal", "role", "bootstrap"}
    assert _node("PgBackup", "spec")["required"] == ["cluster"]
    assert set(_node("MysqlDb", "spec")["required"]) >= {"engineVersion", "databaseName"}
    for kind in KINDS:
        assert _schema(kind)["required"] == ["spec"]


def test_resources_is_a_resource_requirements():
    for part in ("requests", "limits"):
        node = _node("PgCluster", f"spec.resources.{part}")
        assert node["type"] == "object"
        value = node["additionalProperties"]
        assert value["x-kubernetes-int-or-string"] is True
        assert {alt["type"] for alt in value["anyOf"]} == {"integer", "string"}
        assert re.fullmatch(value["pattern"], "500m") and re.fullmatch(value["pattern"], "1Gi")
        assert not re.fullmatch(value["pattern"], "lots")
    params = _node("PgCluster", "spec.parameters")
    assert params["additionalProperties"] == {"type": "string", "maxLength": 4096}


# --------------------------------------------------------------------------- structural schemas


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural(kind):
    schema = _schema(kind)
    assert schema["type"] == "object"
    assert schema["properties"]["metadata"] == {"type": "object"}, "metadata may not be constrained"
    for path, node in _walk(schema):
        if "<anyOf" in path:
            assert set(node) <= {"type"}, f"{kind}.{path}: anyOf branches may only carry a type"
            continue
        assert ("type" in node or node.get("x-kubernetes-int-or-string")
                or node.get("x-kubernetes-preserve-unknown-fields")), f"{kind}.{path}: no type"
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node and [a["type"] for a in node["anyOf"]] == ["integer", "string"]
        assert not ("properties" in node and "additionalProperties" in node), f"{kind}.{path}"
        assert "$ref" not in node and "oneOf" not in node and "not" not in node, f"{kind}.{path}"
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert (kind, path) in FREE_FORM, f"{kind}.{path}: free-form where it should be described"
        if node.get("type") == "object" and path not in ("", "metadata") and (kind, path) not in FREE_FORM:
            assert "properties" in node or "additionalProperties" in node, f"{kind}.{path}: shapeless object"
        if node.get("type") == "array":
            assert "items" in node, f"{kind}.{path}"


@pytest.mark.parametrize("kind", KINDS)
def test_spec_strings_lists_and_maps_are_bounded(kind):
    """CEL cost is estimated from the bounds: unbounded strings and maps blow the budget."""
    for path, node in _walk(_node(kind, "spec"), "spec"):
        if "<anyOf" in path:
            continue
        if node.get("type") == "string" and "enum" not in node and "format" not in node:
            assert "maxLength" in node, f"{kind}.{path}: string without maxLength"
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{kind}.{path}: map without maxProperties"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{kind}.{path}: list without maxItems"


@pytest.mark.parametrize("kind", KINDS)
def test_conditions_are_a_map_list_of_conditions(kind):
    node = _node(kind, "status.conditions")
    assert node["x-kubernetes-list-type"] == "map"
    assert node["x-kubernetes-list-map-keys"] == ["type"]
    item = node["items"]
    assert set(item["properties"]) == {"type", "status", "reason", "message", "lastTransitionTime",
                                       "observedGeneration"}
    assert set(item["required"]) >= {"type", "status"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"


def test_pgcluster_instances_status_is_keyed_by_name():
    node = _node("PgCluster", "status.instances")
    assert node["x-kubernetes-list-type"] == "map" and node["x-kubernetes-list-map-keys"] == ["name"]
    assert node["items"]["required"] == ["name"]


# --------------------------------------------------------------------------- CEL rules


@pytest.mark.parametrize("kind", KINDS)
def test_every_rule_has_a_message_naming_a_field(kind):
    for path, rule in _rules(kind):
        assert set(rule) <= {"rule", "message", "messageExpression", "fieldPath", "reason",
                             "optionalOldSelf"}, f"{kind}.{path}: {sorted(rule)}"
        message = rule.get("message", "")
        assert message, f"{kind}.{path}: rule without a static message: {rule['rule']}"
        assert re.search(r"\b(spec|metadata)\.[A-Za-z]", message) or "PgBackup spec" in message, \
            f"{kind}.{path}: the message names no field: {message}"
        if "reason" in rule:
            assert rule["reason"] in {"FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired",
                                      "FieldValueDuplicate"}


@pytest.mark.parametrize("kind,path,word", TRANSITIONS)
def test_transition_rules_guard_the_immutables(kind, path, word):
    node = _node(kind, path)
    transition = [r for r in node.get("x-kubernetes-validations") or [] if "oldSelf" in r["rule"]]
    assert transition, f"{kind}.{path}: no transition rule"
    assert any(word in r["message"] for r in transition), [r["message"] for r in transition]
    # a transition rule runs only when the field exists before and after: each guarded field is
    # required or defaulted (so it cannot be dodged by removing it), except whole objects
    leaf = path.rsplit(".", 1)
    if len(leaf) == 2:
        parent = _node(kind, leaf[0])
        # ... or the parent has a transition rule that keeps it from being added or removed
        guarded = any(f"has(self.{leaf[1]})" in r["rule"] and f"has(oldSelf.{leaf[1]})" in r["rule"]
                      for r in parent.get("x-kubernetes-validations") or [])
        assert leaf[1] in parent.get("required", []) or "default" in node or guarded, \
            f"{kind}.{path} can be removed"


def test_synchronous_replicas_rule():
    rules = [r for p, r in _rules("PgCluster") if p == "spec"]
    rule = next(r for r in rules if "synchronousReplicas" in r["rule"] and "instances" in r["rule"])
    assert rule["rule"].replace(" ", "") == "self.synchronousReplicas<=self.instances-1"
    assert rule["fieldPath"] == ".synchronousReplicas"


def test_owned_parameters_are_refused():
    text = " ".join(r["rule"] for p, r in _rules("PgCluster") if p == "spec.parameters")
    for name in ["port", "listen_addresses", "wal_level", "archive_", "restore_command", "primary_conninfo",
                 "primary_slot_name", "synchronous_standby_names", "hot_standby", "data_directory", "hba_file",
                 "ident_file", "unix_socket_directories", "max_wal_senders", "max_replication_slots",
                 "wal_log_hints", "recovery_target", "promote_trigger_file", "ssl_cert_file"]:
        assert f"'{name}'" in text, name
    assert "lowerAscii()" in text, "PostgreSQL setting names are case-insensitive"


def test_unsafe_parameters_are_refused_as_the_model_refuses_them():
    """The CEL rules and pgop.kernel.pgconfig.unsafe_settings (which `pgop plan` uses) agree."""
    from pgop.kernel.pgconfig import unsafe_settings
    rules = {r["message"].split()[0]: r for p, r in _rules("PgCluster")
             if p == "spec" and "allowUnsafeParameters" in r["rule"]}
    assert set(rules) == {"spec.parameters.fsync", "spec.parameters.synchronous_commit"}
    for rule in rules.values():
        assert rule["rule"].startswith("(has(self.allowUnsafeParameters) && self.allowUnsafeParameters) ||")
        assert "spec.allowUnsafeParameters: true" in rule["message"] and rule["fieldPath"] == ".parameters"
    assert "k.lowerAscii() != 'fsync'" in rules["spec.parameters.fsync"]["rule"]
    sync_rule = rules["spec.parameters.synchronous_commit"]["rule"]
    assert "self.synchronousMode != 'required'" in sync_rule and "k.lowerAscii() != 'synchronous_commit'" in sync_rule
    fsync, sync = _rule_regex("PgCluster", "spec", 0), _rule_regex("PgCluster", "spec", 1)
    for value in ["off", "OFF", "Of", "o", "f", "fa", "fal", "fals", "false", "falsey", "n", "no", "nope", "0",
                  "00", " off", "off ", "on", "true", "1", "yes", "local", "LOCAL", "remote_write",
                  "remote_apply", "loc", ""]:
        assert bool(fsync.search(value)) == bool(unsafe_settings({"fsync": value}, synchronous_mode="required")), value
        assert bool(sync.search(value)) == bool(
            unsafe_settings({"synchronous_commit": value}, synchronous_mode="required")), value
    # full_page_writes needs no rule of its own: the operator owns it (the owned-settings rule)
    assert "'full_page_writes'" in " ".join(r["rule"] for p, r in _rules("PgCluster") if p == "spec.parameters")


def test_bootstrap_rules():
    rules = {r["rule"]: r for p, r in _rules("PgCluster") if p.startswith("spec.bootstrap")}
    assert "has(self.initdb) != has(self.recovery)" in rules
    assert "!(has(self.targetTime) && has(self.targetLSN))" in rules
    assert _node("PgCluster", "spec.bootstrap.recovery.targetTime")["format"] == "date-time"
    assert _node("PgCluster", "spec.bootstrap")["default"] == {"initdb": {}}


def test_storage_size_is_checked_as_a_quantity():
    rules = [r["rule"] for p, r in _rules("PgCluster") if p == "spec.storage.size"]
    assert any("isQuantity(self)" in r and "oldSelf" not in r for r in rules)
    assert any("quantity(self).compareTo(quantity(oldSelf)) >= 0" in r for r in rules)


# The regexes inside the CEL rules are RE2; these simple ones mean the same in Python's re.
REGEX_CASES = [
    ("PgCluster", "spec.backup.schedule", 0,
     ["0 3 * * *", "*/15 0-6 1,15 JAN-JUN MON-FRI", "0  3 * * 0", "@daily", "@hourly", "@annually", "0 0 L * ?"],
     ["", "0 3 * *", "0 0 3 * * *", "every day", "@reboot", " 0 3 * * *", "0 3 * * *\n", "0\t3 * * *"]),
    ("PgCluster", "spec.bootstrap.recovery.targetLSN", 0,
     ["0/3000060", "16/B374D848", "ffffffff/ffffffff"], ["3000060", "0/", "0/xyz", "0/3000060/1"]),
    ("PgCluster", "spec.backup.s3.bucket", 0,
     ["pg-backups", "my.bucket.1", "abc"], ["ab", "My_Bucket", "-bucket", "bucket-", "b" * 64]),
    ("PgCluster", "spec.backup.retention.maxAge", 0, ["30d", "12h", "4w", "365d"], ["0d", "30", "30 d", "1m", "d"]),
    ("PgCluster", "spec.failoverDelay", 0, ["30s", "2m", "1m30s", "1h"], ["soon", "30", "1.5m", "30S"]),
    ("PgCluster", "spec.publish.vaultPath", 0,
     ["secret/data/k8s/shop/orders/db", "kv/data/x"],
     ["/secret/data/x", "secret/k8s/x", "secret/data/", "secret/data/../x", "secret/data/x/"]),
    ("PgCluster", "spec.publish.consulPrefix", 0,
     ["config/k8s/shop/orders/db", "x"], ["/config", "config/", "config//x", "config/../x"]),
    ("PgCluster", "spec.bootstrap.initdb.database", 0, ["app", "orders_2", "_x"], ["App", "2app", "my-db"]),
    ("MysqlDb", "spec.engineVersion", 0,
     ["8.0.35", "8.4.3", "5.7.44-rds.20240408", "8.0"], ["8", "latest", "v8.0.35", "8.0.35.1", "8.0-rds.1"]),
    ("MysqlDb", "spec.databaseName", 0, ["orders", "Orders_2"], ["1orders", "orders-db", "_x", ""]),
    ("MysqlDb", "spec.instanceClass", 0, ["db.t3.micro", "db.r6gd.2xlarge"], ["m5.large", "db.t3", "db.T3.micro"]),
    ("PgBackup", "spec.cluster", 0, ["orders", "a1-b"], ["Orders", "1orders", "orders-", ""]),
    ("MysqlDb", "spec.preferredBackupWindow", 0, ["03:00-04:00", "23:30-00:30"],
     ["3:00-04:00", "03:00", "24:00-01:00", "03:60-04:00", "03:00 - 04:00"]),
    ("MysqlDb", "spec.preferredMaintenanceWindow", 0, ["sun:05:00-sun:06:00", "mon:23:30-tue:00:30"],
     ["sun:5:00-sun:06:00", "sunday:05:00-sun:06:00", "05:00-06:00", "sun:05:00-sun:25:00"]),
    ("MysqlDb", "spec.vpcSecurityGroupIds[]", 0, ["sg-0123abcd", "sg-08cc42caeead4904c"],
     ["sg-", "0123abcd", "sg-XYZ12345", "sg-0123abcd0123abcd01"]),
    ("MysqlDb", "spec.kmsKeyId", 0,
     ["arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab", "alias/rds-orders",
      "1234abcd-12ab-34cd-56ef-1234567890ab", "arn:aws:kms:eu-west-1:123456789012:alias/orders"],
     ["key/abc", "arn:aws:s3:::bucket", "1234", ""]),
    ("MysqlDb", "spec.passwordRotation.schedule", 0, ["0 3 1 * *", "@monthly"], ["0 3 * *", "@reboot", ""]),
]


@pytest.mark.parametrize("kind,path,index,good,bad", REGEX_CASES, ids=[f"{c[0]}.{c[1]}" for c in REGEX_CASES])
def test_cel_regexes(kind, path, index, good, bad):
    regex = _rule_regex(kind, path, index)
    for value in good:
        assert regex.search(value), f"{path}: {value!r} should be accepted"
    for value in bad:
        assert not regex.search(value), f"{path}: {value!r} should be refused"


# --------------------------------------------------------------------------- printer columns


def _column_path_exists(kind: str, json_path: str) -> bool:
    assert json_path.startswith(".")
    if json_path in (".metadata.creationTimestamp", ".metadata.name"):
        return True
    try:
        _node(kind, json_path[1:])
        return True
    except AssertionError:
        return False


@pytest.mark.parametrize("kind", KINDS)
def test_printer_columns(kind):
    columns = _version(kind)["additionalPrinterColumns"]
    shown = [c["name"] for c in columns if c.get("priority", 0) == 0]
    assert shown == PRINTER_COLUMNS[kind]
    for column in columns:
        assert _column_path_exists(kind, column["jsonPath"]), f"{kind}: {column['name']} -> {column['jsonPath']}"
        if column["jsonPath"] != ".metadata.creationTimestamp":
            node = _node(kind, column["jsonPath"][1:])
            expected = {"integer": "integer", "boolean": "boolean", "string": "string"}[node["type"]]
            if column["type"] != "date":
                assert column["type"] == expected, f"{kind}: {column['name']} is {node['type']}"
            else:
                assert node.get("format") == "date-time"
    assert columns[-1] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


@pytest.mark.parametrize("kind", ["PgInstance", "PgBackup"])
def test_selectable_fields_exist(kind):
    for field in _version(kind).get("selectableFields", []):
        assert _node(kind, field["jsonPath"][1:])["type"] == "string"


# --------------------------------------------------------------------------- examples


def _validate(schema: dict, value, path: str) -> list[str]:
    """The subset of OpenAPI validation a manifest must pass before CEL: types, enums, bounds,
    required fields, patterns, and no unknown fields (kubectl validates fields strictly)."""
    errors = []
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, (int, str)) and not isinstance(value, bool)
        if not ok:
            errors.append(f"{path}: not an int or string")
        elif isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match the pattern")
        return errors
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        return errors
    kind = schema.get("type")
    python = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool}[kind]
    if not isinstance(value, python) or (kind == "integer" and isinstance(value, bool)):
        return [f"{path}: {value!r} is not of type {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if kind == "integer":
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > {schema['maximum']}")
    if kind == "string":
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: too long")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: too short")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if kind == "object":
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: required")
        props = schema.get("properties")
        for name, item in value.items():
            if props is not None and name in props:
                errors += _validate(props[name], item, f"{path}.{name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += _validate(schema["additionalProperties"], item, f"{path}.{name}")
            elif props is not None:
                errors.append(f"{path}.{name}: unknown field")
    if kind == "array":
        for i, item in enumerate(value):
            errors += _validate(schema["items"], item, f"{path}[{i}]")
    return errors


EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))


def test_the_examples_exist():
    assert set(EXAMPLE_FILES) >= {"pgcluster-orders.yaml", "pgcluster-backup.yaml", "pgcluster-restore.yaml",
                                  "mysqldb.yaml"}


@pytest.mark.parametrize("filename", EXAMPLE_FILES)
def test_examples_fit_the_schemas(filename):
    docs = [d for d in yaml.safe_load_all((EXAMPLES / filename).read_text()) if d]
    assert docs
    for doc in docs:
        assert doc["apiVersion"] == "pgop.io/v1"
        assert doc["kind"] in FILES
        assert doc["metadata"]["name"] and doc["metadata"]["namespace"]
        body = {k: v for k, v in doc.items() if k != "metadata"}
        assert _validate(_schema(doc["kind"]), body, "") == []


def test_example_pgcluster_orders_is_the_one_of_issue_3():
    doc = yaml.safe_load((EXAMPLES / "pgcluster-orders.yaml").read_text())
    assert doc["metadata"] == {"name": "orders", "namespace": "shop"}
    assert doc["spec"] == {"instances": 3, "postgresVersion": 15, "synchronousReplicas": 1,
                           "storage": {"size": "1Gi"}, "bootstrap": {"initdb": {"database": "app", "owner": "app"}}}


def test_examples_respect_the_cel_rules_checkable_here():
    for filename in EXAMPLE_FILES:
        doc = yaml.safe_load((EXAMPLES / filename).read_text())
        spec = doc["spec"]
        if doc["kind"] != "PgCluster":
            continue
        assert spec.get("synchronousReplicas", 0) <= spec.get("instances", 1) - 1, filename
        bootstrap = spec.get("bootstrap", {"initdb": {}})
        assert ("initdb" in bootstrap) != ("recovery" in bootstrap), filename
        if "recovery" in bootstrap:
            assert bootstrap["recovery"]["source"] != doc["metadata"]["name"], filename
            assert not ({"targetTime", "targetLSN"} <= set(bootstrap["recovery"])), filename
        if "schedule" in spec.get("backup", {}):
            assert _rule_regex("PgCluster", "spec.backup.schedule").search(spec["backup"]["schedule"])
        assert re.fullmatch(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?", spec["storage"]["size"])


def test_validator_catches_a_renamed_field():
    """The example check above is only worth something if it refuses what the server refuses."""
    schema = _schema("PgCluster")
    good = {"apiVersion": "pgop.io/v1", "kind": "PgCluster", "spec": {"storage": {"size": "1Gi"}}}
    assert _validate(schema, good, "") == []
    assert _validate(schema, {**good, "spec": {"storage": {"size": "1Gi"}, "instance": 3}}, "")
    assert _validate(schema, {**good, "spec": {"storage": {"size": "1Gi"}, "synchronousMode": "always"}}, "")
    assert _validate(schema, {**good, "spec": {"storage": {}}}, "")
    assert _validate(schema, {**good, "spec": {"storage": {"size": "1Gi"}, "instances": 0}}, "")
