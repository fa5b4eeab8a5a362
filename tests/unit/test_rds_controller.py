"""The controller's loop with RDS from moto (in-process) and Vault/Consul as in-memory doubles that
keep the semantics pgop relies on (KV v2 versions and check-and-set; a key tree per prefix).
The same scenarios run against the real Vault and Consul in tests/integration/test_rds_mysqldb.py;
these run in milliseconds and need no services.
"""

from __future__ import annotations

import dataclasses
import importlib
import uuid

import boto3
import pytest
from moto import mock_aws

from pgop.rds import policy
from pgop.rds.aws import Rds
from pgop.rds.controller import MysqlDbController
from pgop.rds.spec import MysqlDbObject
from pgop.runtime import publish as pub


class MemoryVault:
    def __init__(self):
        self.store: dict[str, tuple[int, dict]] = {}
        self.down = False
        self.touched: list[str] = []  # every path read, written or deleted

    def _check(self, path):
        self.touched.append(path)
        if self.down:
            raise pub.VaultUnavailable(f"Vault read {path}: Vault is unreachable or sealed")

    def read(self, path):
        self._check(path)
        version, data = self.store.get(path, (0, None))
        return pub.SecretVersion(version, dict(data) if data is not None else None)

    def write(self, path, data, *, cas):
        self._check(path)
        version, _ = self.store.get(path, (0, None))
        if version != cas:
            raise pub.CasConflict(f"Vault write {path}: version changed since it was read")
        self.store[path] = (version + 1, dict(data))
        return version + 1

    def delete(self, path):
        self._check(path)
        self.store.pop(path, None)


class MemoryConsul:
    def __init__(self):
        self.keys: dict[str, str] = {}
        self.down = False
        self.touched: list[str] = []

    def read(self, prefix):
        self.touched.append(prefix)
        if self.down:
            raise pub.ConsulUnavailable(f"Consul read {prefix}: Consul is unreachable")
        return {k[len(prefix) + 1:]: v for k, v in self.keys.items() if k.startswith(prefix + "/")}

    def write(self, prefix, entries):
        self.touched.append(prefix)
        if self.down:
            raise pub.ConsulUnavailable(f"Consul write {prefix}: Consul is unreachable")
        for k in list(self.keys):
            if k.startswith(prefix + "/"):
                del self.keys[k]
        self.keys.update({f"{prefix}/{k}": v for k, v in entries.items()})

    def delete(self, prefix):
        self.touched.append(prefix)
        for k in list(self.keys):
            if k.startswith(prefix + "/"):
                del self.keys[k]


@pytest.fixture
def aws():
    with mock_aws():
        client = boto3.client("rds", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
        yield Rds(client)


@pytest.fixture
def vault():
    return MemoryVault()


@pytest.fixture
def consul_kv():
    return MemoryConsul()


@pytest.fixture
def controller(aws, vault, consul_kv):
    return MysqlDbController(aws, vault, consul_kv, poll_seconds=1, resync_seconds=30)


def make(spec=None, annotations=None, status=None):
    manifest = {"engineVersion": "8.0.35", "instanceSize": "small", "storageGB": 20,
                "databaseName": "orders", "deletionPolicy": "Delete"}
    manifest.update(spec or {})
    return MysqlDbObject.from_body({
        "metadata": {"namespace": "shop", "name": "orders-db", "uid": str(uuid.uuid4()), "generation": 1,
                     "annotations": annotations or {}},
        "spec": manifest, "status": status or {},
    })


def advance(o, outcome):
    status = {**o.status, **outcome.status}
    return dataclasses.replace(o, status={k: v for k, v in status.items() if v is not None})


def reason(outcome, type_):
    return {c["type"]: c["reason"] for c in outcome.status["conditions"]}[type_]


def test_create_to_ready(controller, aws, vault, consul_kv):
    o = make()
    outcome = controller.reconcile(o)
    assert outcome.status["phase"] == "Ready"
    secret = vault.read(o.spec.vault_path).data
    assert set(secret) == set(pub.VAULT_KEYS)
    assert consul_kv.read(o.spec.consul_prefix) == {k: secret[k] for k in pub.CONSUL_KEYS}
    assert secret["password"] not in repr(list(outcome)) + repr(vars(outcome))
    assert aws.describe(outcome.status["dbInstanceIdentifier"]).tags[policy.TAG_UID] == o.uid


def test_password_is_never_regenerated(controller, vault):
    o = make()
    first = pub.ensure_master_password(vault, o.spec.vault_path, username="dbadmin", engine="mysql", dbname="orders")
    controller.generate_password = lambda: pytest.fail("a second password was generated")
    assert controller.reconcile(o).status["phase"] == "Ready"
    assert vault.read(o.spec.vault_path).data["password"] == first.password


def test_vault_down_means_no_instance(controller, aws, vault):
    vault.down = True
    o = make()
    outcome = controller.reconcile(o)
    assert outcome.requeue_after and reason(outcome, "Progressing") == "VaultUnavailable"
    assert aws.describe(policy.target_identifier(o)) is None
    vault.down = False
    assert controller.reconcile(advance(o, outcome)).status["phase"] == "Ready"


def test_consul_down_then_back(controller, consul_kv):
    consul_kv.down = True
    o = make()
    outcome = controller.reconcile(o)
    assert outcome.requeue_after and reason(outcome, "Progressing") == "ConsulUnavailable"
    consul_kv.down = False
    assert controller.reconcile(advance(o, outcome)).status["phase"] == "Ready"


def test_ready_then_vault_down_is_degraded_then_ready(controller, vault):
    o = make()
    o = advance(o, controller.reconcile(o))
    vault.down = True
    down = controller.reconcile(o)
    assert down.status["phase"] == "Degraded" and reason(down, "Degraded") == "VaultUnavailable"
    vault.down = False
    assert controller.reconcile(advance(o, down)).status["phase"] == "Ready"


def test_external_deletion(controller, aws):
    o = make()
    o = advance(o, controller.reconcile(o))
    aws.delete(o.status["dbInstanceIdentifier"], final_snapshot=None, delete_automated_backups=True)
    outcome = controller.reconcile(o)
    assert outcome.status["phase"] == "Degraded" and reason(outcome, "Degraded") == "InstanceNotFound"
    assert aws.describe(o.status["dbInstanceIdentifier"]) is None


def test_modify(controller):
    o = make()
    o = advance(o, controller.reconcile(o))
    bigger = dataclasses.replace(o, spec=make(spec={"instanceSize": "large", "storageGB": 100}).spec)
    outcome = controller.reconcile(bigger)
    assert outcome.status["instanceClass"] == "db.m6g.2xlarge" and outcome.status["allocatedStorage"] == 100


@pytest.mark.parametrize("deletion_policy", ["Snapshot", "Delete", "Retain"])
def test_deletion(controller, aws, vault, consul_kv, deletion_policy):
    o = make(spec={"deletionPolicy": deletion_policy})
    o = advance(o, controller.reconcile(o))
    identifier = o.status["dbInstanceIdentifier"]
    done = controller.finalize(o)
    assert done.finished
    if deletion_policy == "Retain":
        assert aws.describe(identifier) and vault.read(o.spec.vault_path).exists
    else:
        assert aws.describe(identifier) is None and not vault.read(o.spec.vault_path).exists
        assert consul_kv.read(o.spec.consul_prefix) == {}
    assert ("finalSnapshotIdentifier" in done.status) == (deletion_policy == "Snapshot")


def test_deletion_protection(controller, aws):
    o = make(spec={"deletionProtection": True})
    o = advance(o, controller.reconcile(o))
    blocked = controller.finalize(o)
    assert not blocked.finished and [e.reason for e in blocked.events] == ["DeletionProtected"]
    off = dataclasses.replace(advance(o, blocked), spec=make().spec)
    assert controller.finalize(off).finished


LEGACY = {"DBInstanceIdentifier": "legacy", "Engine": "mysql", "EngineVersion": "8.0.35",
          "DBInstanceClass": "db.t4g.small", "AllocatedStorage": 20, "DBName": "orders",
          "MasterUsername": "legacyadmin", "BackupRetentionPeriod": 7, "StorageEncrypted": True}


def test_adoption_with_reset(controller, aws, vault):
    aws.create({**LEGACY, "Tags": [{"Key": policy.TAG_ADOPTABLE_BY, "Value": "shop/orders-db"}]},
               "Legacy-Password-1")
    o = make(annotations={"pgop.io/adopt": "legacy"})
    outcome = controller.reconcile(o)
    assert outcome.status["phase"] == "Ready" and "password" not in vault.read(o.spec.vault_path).data
    o = dataclasses.replace(advance(o, outcome),
                            annotations={"pgop.io/adopt": "legacy", "pgop.io/reset-password": "true"})
    reset = controller.reconcile(o)
    data = vault.read(o.spec.vault_path).data
    assert data["password"] and data["username"] == "legacyadmin" and "pendingPassword" not in data
    assert "PasswordReset" in [e.reason for e in reset.events]


def test_adoption_refused_touches_nothing_until_allowed(aws, vault, consul_kv):
    aws.create(LEGACY, "Legacy-Password-1")
    before = aws.describe("legacy")
    refusing = MysqlDbController(aws, vault, consul_kv, poll_seconds=1, resync_seconds=30)
    o = make(annotations={"pgop.io/adopt": "legacy", "pgop.io/reset-password": "true"})
    outcome = refusing.reconcile(o)
    assert outcome.status["phase"] == "Degraded" and reason(outcome, "Degraded") == "AdoptionNotAllowed"
    assert [e.reason for e in outcome.events] == ["AdoptionNotAllowed"] and outcome.permanent is None
    assert aws.describe("legacy") == before  # no tag, no password reset, no modification
    assert vault.touched == [] and consul_kv.touched == []
    gone = refusing.finalize(advance(o, outcome))
    assert gone.finished and aws.describe("legacy") == before
    # an administrator names the namespace in the operator's configuration: the next look adopts
    allowing = MysqlDbController(aws, vault, consul_kv, poll_seconds=1, resync_seconds=30,
                                 adopt_namespaces=frozenset({"shop"}))
    adopted = allowing.reconcile(advance(o, outcome))
    assert adopted.status["phase"] == "Ready" and adopted.status["adopted"] is True
    assert aws.describe("legacy").tags[policy.TAG_UID] == o.uid


def test_the_operator_configuration_names_the_namespaces_that_may_adopt():
    from pgop.runtime.config import OperatorConfig
    assert OperatorConfig.from_env({}).rds_adopt_namespaces == frozenset()
    config = OperatorConfig.from_env({"PGOP_RDS_ADOPT_NAMESPACES": " legacy-apps, shop ,,"})
    assert config.rds_adopt_namespaces == frozenset({"legacy-apps", "shop"})


def test_a_path_of_another_namespace_is_never_read_written_or_deleted(controller, aws, vault, consul_kv):
    """The attack: a MysqlDb in shop names billing's secret. Before, pgop reused billing's
    password, overwrote its host and deleted both on deletion."""
    theirs, their_config = "secret/data/k8s/billing/orders-db/db", "config/k8s/billing/orders-db/db"
    vault.store[theirs] = (1, {"username": "app", "password": "Billing-Secret-1"})
    consul_kv.keys[f"{their_config}/host"] = "billing.db"
    o = make(spec={"vaultPath": theirs, "consulPrefix": their_config})
    outcome = controller.reconcile(o)
    assert outcome.status["phase"] == "Failed" and reason(outcome, "Degraded") == "PathOutsideNamespace"
    message = outcome.status["lastError"]
    assert "spec.vaultPath" in message and "spec.consulPrefix" in message and "secret/data/k8s/shop/" in message
    assert outcome.permanent and [e.reason for e in outcome.events] == ["PathOutsideNamespace"]
    assert vault.touched == [] and consul_kv.touched == []
    assert aws.client.describe_db_instances()["DBInstances"] == []
    # deleted, even with a status that says it stored there (an object from before this check)
    recorded = advance(o, outcome)
    recorded = dataclasses.replace(recorded, status={**recorded.status, "vaultPath": theirs,
                                                     "consulPrefix": their_config})
    done = controller.finalize(recorded)
    assert done.finished and "PathOutsideNamespace" in [e.reason for e in done.events]
    assert vault.touched == [] and consul_kv.touched == []
    assert vault.store[theirs][1]["password"] == "Billing-Secret-1" and consul_kv.keys[f"{their_config}/host"]


def test_importing_the_handlers_builds_no_client(monkeypatch):
    import pgop.rds.handlers as handlers
    handlers = importlib.reload(handlers)
    assert handlers._controller is None
