"""The MysqlDb controller and the secret publishers against the real services of the local
environment: the moto server (RDS), a Vault dev server and a Consul dev agent.

Vault is used the way production uses it: the policies in deploy/vault/ are loaded with the root
token (test setup only) and the operator side runs with a token that has only pgop-operator.hcl.
Each test uses its own namespace/name, so tests share the servers without seeing each other.

botocore's Stubber replaces moto in two places only, because moto cannot behave like AWS there:
moto's instances are `available` the moment they are created (no `creating` phase), and moto
never throttles.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import boto3
import hvac
import pytest
from botocore.stub import ANY, Stubber

from e2e.harness.fixtures import create_test_namespace
from pgop.rds import policy
from pgop.rds.aws import Rds, client_config
from pgop.rds.controller import MysqlDbController
from pgop.rds.spec import MysqlDbObject
from pgop.runtime import publish as pub
from pgop.runtime.config import ConsulAddress

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parents[2]
OPERATOR_POLICY = REPO / "deploy" / "vault" / "pgop-operator.hcl"
APP_POLICY = REPO / "deploy" / "vault" / "app-read.hcl"


# --- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def boto_session(local_env):
    return boto3.session.Session(
        aws_access_key_id=local_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=local_env["AWS_SECRET_ACCESS_KEY"],
        region_name=local_env["AWS_DEFAULT_REGION"],
    )


@pytest.fixture(scope="session")
def rds(local_env, boto_session):
    return Rds.connect(region=local_env["AWS_DEFAULT_REGION"], endpoint_url=local_env["PGOP_RDS_ENDPOINT"],
                       session=boto_session)


@pytest.fixture(scope="session")
def vault_root(local_env):
    client = hvac.Client(url=local_env["VAULT_ADDR"], token=local_env["VAULT_TOKEN"])
    assert client.is_authenticated(), "the root token of the local Vault does not work"
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    if "secret/" not in mounts:
        client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    client.sys.create_or_update_policy("pgop-operator", OPERATOR_POLICY.read_text())
    return client


@pytest.fixture(scope="session")
def operator_token(vault_root):
    created = vault_root.auth.token.create(policies=["pgop-operator"], no_default_policy=True, ttl="2h")
    return created["auth"]["client_token"]


@pytest.fixture(scope="session")
def vault(local_env, operator_token):
    return pub.VaultKV.connect(local_env["VAULT_ADDR"], operator_token)


@pytest.fixture(scope="session")
def consul_kv(local_env):
    address = ConsulAddress.parse(local_env["CONSUL_HTTP_ADDR"])
    return pub.ConsulKV.connect(address.host, address.port, scheme=address.scheme)


@pytest.fixture
def controller(rds, vault, consul_kv):
    return MysqlDbController(rds, vault, consul_kv, poll_seconds=1, resync_seconds=30)


@pytest.fixture
def names(rds, vault_root, consul_kv):
    namespace = f"it-{uuid.uuid4().hex[:8]}"
    yield namespace, "orders-db"
    # Leave the shared servers as they were: this test's instances, secrets and config.
    for raw in rds.client.describe_db_instances()["DBInstances"]:
        tags = {t["Key"]: t["Value"] for t in raw.get("TagList") or []}
        if tags.get(policy.TAG_NAMESPACE) == namespace:
            if raw.get("DeletionProtection"):
                rds.modify(raw["DBInstanceIdentifier"], {"DeletionProtection": False, "ApplyImmediately": True})
            rds.delete(raw["DBInstanceIdentifier"], final_snapshot=None, delete_automated_backups=True)
    root = pub.VaultKV(vault_root)
    for name in ("orders-db", "other", "pw", "cas"):
        root.delete(f"secret/data/k8s/{namespace}/{name}/db")
    consul_kv.delete(f"config/k8s/{namespace}")


def make(names, spec=None, annotations=None, status=None, uid=None):
    namespace, name = names
    manifest = {"engineVersion": "8.0.35", "instanceSize": "small", "storageGB": 20,
                "databaseName": "orders", "deletionPolicy": "Delete"}
    manifest.update(spec or {})
    return MysqlDbObject.from_body({
        "metadata": {"namespace": namespace, "name": name, "uid": uid or str(uuid.uuid4()),
                     "generation": 1, "annotations": annotations or {}},
        "spec": manifest, "status": status or {},
    })


def advance(o: MysqlDbObject, outcome) -> MysqlDbObject:
    """The object as the API server would hold it after the handler's status patch."""
    status = {**o.status, **outcome.status}
    return dataclasses.replace(o, status={k: v for k, v in status.items() if v is not None})


def no_secret_in(outcome, password):
    text = repr(outcome.status) + repr(outcome.events) + repr(outcome.permanent)
    assert password not in text


def vault_password(vault, o):
    return vault.read(o.spec.vault_path).data["password"]


# --- publishers ------------------------------------------------------------------------------------

def test_vault_cas_create_only_once(vault, names):
    path = f"secret/data/k8s/{names[0]}/cas/db"
    assert vault.read(path).version == 0
    assert vault.write(path, {"password": "first"}, cas=0) == 1
    with pytest.raises(pub.CasConflict):
        vault.write(path, {"password": "second"}, cas=0)
    assert vault.read(path).data == {"password": "first"}
    vault.delete(path)
    assert not vault.read(path).exists


def test_ensure_master_password_is_generated_once(vault, names):
    path = f"secret/data/k8s/{names[0]}/pw/db"
    first = pub.ensure_master_password(vault, path, username="dbadmin", engine="mysql", dbname="orders")
    again = pub.ensure_master_password(vault, path, username="dbadmin", engine="mysql", dbname="orders",
                                       generate=lambda: pytest.fail("must not generate a second password"))
    assert first.created and not again.created and first.password == again.password
    assert len(first.password) == 32
    vault.delete(path)


def test_operator_policy_is_limited_to_its_prefix(vault):
    with pytest.raises(pub.VaultForbidden):
        vault.write("secret/data/elsewhere/db", {"x": "y"}, cas=0)
    with pytest.raises(pub.VaultForbidden):
        vault.read("secret/data/elsewhere/db")


def test_app_policy_reads_its_own_path_only(local_env, vault_root, vault, names):
    namespace, name = names
    own = f"secret/data/k8s/{namespace}/{name}/db"
    other = f"secret/data/k8s/{namespace}/other/db"
    vault.write(own, {"password": "p"}, cas=0)
    vault.write(other, {"password": "q"}, cas=0)
    rendered = APP_POLICY.read_text().replace("NAMESPACE", namespace).replace("NAME", name)
    vault_root.sys.create_or_update_policy(f"app-{namespace}-{name}", rendered)
    token = vault_root.auth.token.create(policies=[f"app-{namespace}-{name}"], no_default_policy=True,
                                         ttl="10m")["auth"]["client_token"]
    app = pub.VaultKV.connect(local_env["VAULT_ADDR"], token)
    assert app.read(own).data == {"password": "p"}
    with pytest.raises(pub.VaultForbidden):
        app.read(other)
    with pytest.raises(pub.VaultForbidden):
        app.write(own, {"password": "mine"}, cas=1)
    vault.delete(own)
    vault.delete(other)


def test_consul_tree_is_replaced_atomically(consul_kv, names):
    prefix = f"config/k8s/{names[0]}/tree/db"
    consul_kv.write(prefix, {"host": "a", "port": "1", "stale": "x"})
    consul_kv.write(prefix, {"host": "b", "port": "2"})
    assert consul_kv.read(prefix) == {"host": "b", "port": "2"}
    consul_kv.delete(prefix)
    assert consul_kv.read(prefix) == {}


# --- the controller against moto, Vault, Consul ------------------------------------------------------

def test_create_to_ready_publishes_the_contract(controller, rds, vault, consul_kv, names):
    o = make(names, spec={"tags": {"team": "shop"}})
    outcome = controller.reconcile(o)
    assert outcome.permanent is None and outcome.requeue_after is None
    assert outcome.status["phase"] == "Ready"
    identifier = outcome.status["dbInstanceIdentifier"]
    assert identifier == policy.target_identifier(o)
    assert outcome.status["endpoint"] and outcome.status["port"] == 3306

    secret = vault.read(o.spec.vault_path).data
    assert set(secret) == set(pub.VAULT_KEYS)
    assert secret["host"] == outcome.status["endpoint"] and secret["dbname"] == "orders"
    assert secret["engine"] == "mysql" and secret["username"] == "dbadmin"
    config = consul_kv.read(o.spec.consul_prefix)
    assert config == {k: secret[k] for k in pub.CONSUL_KEYS}
    assert "password" not in config
    no_secret_in(outcome, secret["password"])

    instance = rds.describe(identifier)
    assert instance.tags[policy.TAG_UID] == o.uid and instance.tags["team"] == "shop"
    reasons = [e.reason for e in outcome.events]
    assert reasons.index("PasswordStored") < reasons.index("Creating") < reasons.index("Ready")

    # A second pass changes nothing: same Vault version, same instance.
    version = vault.read(o.spec.vault_path).version
    again = controller.reconcile(advance(o, outcome))
    assert again.status["phase"] == "Ready" and not again.events
    assert vault.read(o.spec.vault_path).version == version


def test_crash_after_password_stored_before_create(controller, rds, vault, names):
    o = make(names)
    stored = pub.ensure_master_password(vault, o.spec.vault_path, username="dbadmin", engine="mysql",
                                        dbname="orders")
    # ... the operator dies here; the next attempt must use the same password.
    outcome = controller.reconcile(o)
    assert outcome.status["phase"] == "Ready"
    assert vault_password(vault, o) == stored.password


def test_crash_after_create_before_status_finds_the_instance(controller, rds, vault, names, boto_session, local_env):
    o = make(names)
    identifier = policy.target_identifier(o)
    stored = pub.ensure_master_password(vault, o.spec.vault_path, username="dbadmin", engine="mysql",
                                        dbname="orders")
    rds.create(policy.create_request(o, identifier), stored.password)
    # ... the operator dies before writing status: no dbInstanceIdentifier recorded.
    outcome = controller.reconcile(o)
    assert outcome.status["phase"] == "Ready" and outcome.permanent is None
    assert "Creating" not in [e.reason for e in outcome.events]  # no second CreateDBInstance
    assert vault_password(vault, o) == stored.password
    client = boto_session.client("rds", endpoint_url=local_env["PGOP_RDS_ENDPOINT"])
    found = [i for i in client.describe_db_instances()["DBInstances"]
             if i["DBInstanceIdentifier"].startswith(identifier)]
    assert len(found) == 1


def test_modify_mutable_fields(controller, rds, names):
    o = make(names)
    o = advance(o, controller.reconcile(o))
    bigger = dataclasses.replace(o, spec=make(names, spec={"instanceSize": "medium", "storageGB": 40,
                                                           "multiAZ": True, "backupRetentionDays": 14,
                                                           "applyImmediately": True}).spec)
    outcome = controller.reconcile(bigger)
    assert outcome.status["phase"] == "Ready"
    assert outcome.status["instanceClass"] == "db.m6g.large"
    assert outcome.status["allocatedStorage"] == 40
    assert outcome.status["multiAZ"] is True and outcome.status["backupRetentionDays"] == 14
    modifying = [e for e in outcome.events if e.reason == "Modifying"]
    assert modifying and "ApplyImmediately=True" in modifying[0].message


def test_immutable_change_is_refused_with_the_field_name(controller, names):
    o = make(names)
    o = advance(o, controller.reconcile(o))
    renamed = dataclasses.replace(o, spec=make(names, spec={"databaseName": "billing"}).spec)
    outcome = controller.reconcile(renamed)
    assert outcome.permanent and "databaseName" in outcome.permanent
    assert outcome.status["phase"] == "Degraded"


def test_vault_down_creates_nothing_then_recovers(rds, consul_kv, vault, names):
    down = pub.VaultKV.connect("http://127.0.0.1:1", "t", timeout=1)
    o = make(names)
    outcome = MysqlDbController(rds, down, consul_kv).reconcile(o)
    assert outcome.requeue_after and outcome.status["phase"] == "Pending"
    reasons = {c["type"]: c["reason"] for c in outcome.status["conditions"]}
    assert reasons["Progressing"] == "VaultUnavailable"
    assert rds.describe(policy.target_identifier(o)) is None  # no password stored => no database
    back = MysqlDbController(rds, vault, consul_kv).reconcile(advance(o, outcome), attempt=1)
    assert back.status["phase"] == "Ready"


def test_consul_down_keeps_the_password_and_retries(rds, vault, consul_kv, names):
    down = pub.ConsulKV.connect("127.0.0.1", 1, timeout=1)
    o = make(names)
    outcome = MysqlDbController(rds, vault, down).reconcile(o)
    assert outcome.requeue_after
    assert {c["type"]: c["reason"] for c in outcome.status["conditions"]}["Progressing"] == "ConsulUnavailable"
    password = vault_password(vault, o)
    o = advance(o, outcome)
    back = MysqlDbController(rds, vault, consul_kv).reconcile(o, attempt=1)
    assert back.status["phase"] == "Ready"
    assert vault_password(vault, o) == password
    assert consul_kv.read(o.spec.consul_prefix)["host"] == back.status["endpoint"]


def test_external_deletion_degrades_and_does_not_recreate(controller, rds, names):
    o = make(names)
    o = advance(o, controller.reconcile(o))
    identifier = o.status["dbInstanceIdentifier"]
    rds.delete(identifier, final_snapshot=None, delete_automated_backups=True)
    outcome = controller.reconcile(o)
    assert outcome.status["phase"] == "Degraded"
    assert {c["type"]: c["reason"] for c in outcome.status["conditions"]}["Degraded"] == "InstanceNotFound"
    assert [e.type for e in outcome.events] == ["Warning"]
    assert rds.describe(identifier) is None


def test_identifier_taken_by_something_else(controller, rds, vault, names):
    o = make(names)
    request = policy.create_request(o, policy.target_identifier(o))
    request["Tags"] = [{"Key": "owner", "Value": "someone-else"}]
    rds.create(request, "SomeoneElsesPassword1")
    outcome = controller.reconcile(o)
    assert outcome.status["phase"] == "Degraded"
    assert {c["type"]: c["reason"] for c in outcome.status["conditions"]}["Degraded"] == "IdentifierTaken"
    assert rds.describe(policy.target_identifier(o)).tags == {"owner": "someone-else"}  # untouched
    rds.delete(policy.target_identifier(o), final_snapshot=None, delete_automated_backups=True)


@pytest.mark.parametrize("policy_name", ["Snapshot", "Delete", "Retain"])
def test_deletion_policies(controller, rds, vault, consul_kv, names, policy_name, boto_session, local_env):
    o = make(names, spec={"deletionPolicy": policy_name})
    o = advance(o, controller.reconcile(o))
    identifier = o.status["dbInstanceIdentifier"]
    outcome = controller.finalize(o)
    assert outcome.finished
    client = boto_session.client("rds", endpoint_url=local_env["PGOP_RDS_ENDPOINT"])
    snapshots = [s["DBSnapshotIdentifier"] for s in client.describe_db_snapshots()["DBSnapshots"]]
    if policy_name == "Retain":
        kept = rds.describe(identifier)
        assert kept is not None and not set(kept.tags) & set(policy.OWNERSHIP_TAG_KEYS)
        assert vault.read(o.spec.vault_path).exists and consul_kv.read(o.spec.consul_prefix)
        rds.delete(identifier, final_snapshot=None, delete_automated_backups=True)
        return
    assert rds.describe(identifier) is None
    assert not vault.read(o.spec.vault_path).exists and consul_kv.read(o.spec.consul_prefix) == {}
    if policy_name == "Snapshot":
        snapshot = outcome.status["finalSnapshotIdentifier"]
        assert snapshot in snapshots
        assert any(snapshot in e.message for e in outcome.events if e.reason == "FinalSnapshot")
    else:
        assert not any(s.startswith(identifier) for s in snapshots)


def test_deletion_protection_blocks_until_turned_off(controller, rds, names):
    o = make(names, spec={"deletionProtection": True})
    o = advance(o, controller.reconcile(o))
    identifier = o.status["dbInstanceIdentifier"]
    assert rds.describe(identifier).deletion_protection  # RDS-level protection too
    blocked = controller.finalize(o)
    assert not blocked.finished and blocked.requeue_after
    assert {c["type"]: c["status"] for c in blocked.status["conditions"]}["DeletionBlocked"] == "True"
    assert rds.describe(identifier) is not None
    released = dataclasses.replace(advance(o, blocked), spec=make(names).spec)  # deletionProtection off
    done = controller.finalize(released)
    assert done.finished and rds.describe(identifier) is None


def test_adoption_keeps_the_password_unless_asked(controller, rds, vault, consul_kv, names):
    legacy = f"legacy-{uuid.uuid4().hex[:8]}"
    # an administrator allows this one MysqlDb to adopt it (issue 12: never by default)
    rds.create({"DBInstanceIdentifier": legacy, "Engine": "mysql", "EngineVersion": "8.0.35",
                "DBInstanceClass": "db.t4g.small", "AllocatedStorage": 20, "DBName": "orders",
                "MasterUsername": "legacyadmin", "BackupRetentionPeriod": 7, "StorageEncrypted": True,
                "Tags": [{"Key": policy.TAG_ADOPTABLE_BY, "Value": "/".join(names)}]}, "TheirOwnPassword1")
    o = make(names, annotations={"pgop.io/adopt": legacy})
    outcome = controller.reconcile(o)
    assert outcome.status["phase"] == "Ready" and outcome.status["dbInstanceIdentifier"] == legacy
    assert "Adopted" in [e.reason for e in outcome.events]
    assert rds.describe(legacy).tags[policy.TAG_UID] == o.uid
    secret = vault.read(o.spec.vault_path).data
    assert "password" not in secret and secret["username"] == "legacyadmin"
    assert "reset-password" in {c["type"]: c["message"] for c in outcome.status["conditions"]}["Ready"]

    asked = dataclasses.replace(advance(o, outcome), annotations={"pgop.io/adopt": legacy,
                                                                  "pgop.io/reset-password": "true"})
    reset = controller.reconcile(asked)
    assert "PasswordReset" in [e.reason for e in reset.events]
    secret = vault.read(o.spec.vault_path).data
    assert secret["password"] and "pendingPassword" not in secret
    no_secret_in(reset, secret["password"])
    controller.finalize(dataclasses.replace(asked, status={**asked.status, **reset.status}))


# --- where moto cannot play AWS: Stubber --------------------------------------------------------------

def _described(identifier, status, uid, namespace, name):
    return {"DBInstances": [{
        "DBInstanceIdentifier": identifier, "DBInstanceArn": f"arn:aws:rds:us-east-1:1:db:{identifier}",
        "DBInstanceStatus": status, "Engine": "mysql", "EngineVersion": "8.0.35",
        "DBInstanceClass": "db.t4g.small", "AllocatedStorage": 20, "MultiAZ": False,
        "BackupRetentionPeriod": 7, "DeletionProtection": False, "DBName": "orders", "StorageEncrypted": True, "PubliclyAccessible": False,
        "MasterUsername": "dbadmin",
        **({"Endpoint": {"Address": f"{identifier}.abc.us-east-1.rds.amazonaws.com", "Port": 3306}}
           if status == "available" else {}),
        "TagList": [{"Key": policy.TAG_MANAGED_BY, "Value": "pgop"}, {"Key": policy.TAG_NAMESPACE, "Value": namespace},
                    {"Key": policy.TAG_NAME, "Value": name}, {"Key": policy.TAG_UID, "Value": uid}],
    }]}


def test_creating_phase_waits_without_blocking_then_ready(vault, consul_kv, names):
    """Stubber: real RDS spends minutes in `creating`; moto never does."""
    client = boto3.client("rds", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y",
                          config=client_config("us-east-1", "standard", 1))
    stub = Stubber(client)
    o = make(names)
    identifier = policy.target_identifier(o)
    namespace, name = names
    stub.add_client_error("describe_db_instances", "DBInstanceNotFound", http_status_code=404)
    stub.add_response("create_db_instance", {"DBInstance": _described(identifier, "creating", o.uid, namespace, name)["DBInstances"][0]},
                      {**policy.create_request(o, identifier), "MasterUserPassword": ANY})
    stub.add_response("describe_db_instances", _described(identifier, "creating", o.uid, namespace, name))
    stub.add_response("describe_db_instances", _described(identifier, "backing-up", o.uid, namespace, name))
    stub.add_response("describe_db_instances", _described(identifier, "available", o.uid, namespace, name))
    controller = MysqlDbController(Rds(client), vault, consul_kv, poll_seconds=15)
    with stub:
        first = controller.reconcile(o)
        assert first.status["phase"] == "Creating" and first.requeue_after is None
        assert first.status["nextCheckAt"] and first.status["dbInstanceStatus"] == "creating"
        assert {c["type"]: c["status"] for c in first.status["conditions"]}["Progressing"] == "True"
        o = advance(o, first)
        second = controller.reconcile(o)
        assert second.status["phase"] == "Creating" and second.status["checks"] == 2
        o = advance(o, second)
        third = controller.reconcile(o)
        assert third.status["phase"] == "Ready"
        stub.assert_no_pending_responses()
    assert vault.read(o.spec.vault_path).data["host"].startswith(identifier)


def test_throttling_is_retried_with_backoff_and_creates_nothing(vault, consul_kv, names):
    """Stubber: moto never throttles. botocore's own retries are set to 1 attempt to see kopf's."""
    client = boto3.client("rds", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y",
                          config=client_config("us-east-1", "standard", 1))
    stub = Stubber(client)
    stub.add_client_error("describe_db_instances", "Throttling", "Rate exceeded", http_status_code=400)
    stub.add_client_error("describe_db_instances", "RequestLimitExceeded", "Request limit exceeded", http_status_code=400)
    o = make(names)
    controller = MysqlDbController(Rds(client), vault, consul_kv)
    with stub:
        first = controller.reconcile(o, attempt=0)
        second = controller.reconcile(advance(o, first), attempt=1)
    assert first.requeue_after == 5 and second.requeue_after == 10
    assert {c["type"]: c["reason"] for c in second.status["conditions"]}["Progressing"] == "Throttled"
    assert not vault.read(o.spec.vault_path).exists


@pytest.mark.parametrize("code,message,reason", [
    ("InvalidParameterCombination", "Cannot find version 8.0.99 for mysql", "InvalidEngineVersion"),
    ("InvalidParameterCombination", "RDS does not support creating a DB instance with the following "
     "combination: DBInstanceClass=db.t9.nano, Engine=mysql", "InvalidInstanceClass"),
    ("InstanceQuotaExceeded", "DB Instance quota exceeded", "QuotaExceeded"),
])
def test_permanent_create_errors_become_failed_with_a_reason(vault, consul_kv, names, code, message, reason):
    """Stubber: moto accepts any engine version and class and has no quota."""
    client = boto3.client("rds", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y",
                          config=client_config("us-east-1", "standard", 1))
    stub = Stubber(client)
    stub.add_client_error("describe_db_instances", "DBInstanceNotFound", http_status_code=404)
    stub.add_client_error("create_db_instance", code, message, http_status_code=400)
    o = make(names)
    with stub:
        outcome = MysqlDbController(Rds(client), vault, consul_kv).reconcile(o)
    assert outcome.status["phase"] == "Failed" and outcome.permanent
    assert {c["type"]: c["reason"] for c in outcome.status["conditions"]}["Ready"] == reason
    password = vault_password(vault, o)  # stored before the call, kept for the retry after a fix
    no_secret_in(outcome, password)
    vault.delete(o.spec.vault_path)


# --- the operator logging in with the Kubernetes auth method -----------------------------------------

def test_operator_logs_in_with_kubernetes_auth(local_env, vault_root, kubectl, names, tmp_path):
    """In a cluster the operator has no static token: it logs in with its service account token
    (PGOP_VAULT_K8S_ROLE). Vault checks the token with the real kube-apiserver's TokenReview."""
    import base64

    namespace = names[0]
    create_test_namespace(kubectl, namespace)
    mount = f"kubernetes-{namespace}"
    try:
        kubectl("-n", namespace, "create", "serviceaccount", "pgop-operator")
        kubectl("-n", namespace, "create", "serviceaccount", "reviewer")
        kubectl("create", "clusterrolebinding", f"{namespace}-reviewer", "--clusterrole=system:auth-delegator",
                f"--serviceaccount={namespace}:reviewer")
        reviewer = kubectl("-n", namespace, "create", "token", "reviewer", "--duration=1h").stdout.strip()
        cluster = kubectl.json("config", "view", "--raw", "--minify")["clusters"][0]["cluster"]
        ca = cluster.get("certificate-authority-data")
        ca_pem = base64.b64decode(ca).decode() if ca else Path(cluster["certificate-authority"]).read_text()
        vault_root.sys.enable_auth_method("kubernetes", path=mount)
        vault_root.write_data(f"auth/{mount}/config", data={
            "kubernetes_host": cluster["server"], "kubernetes_ca_cert": ca_pem, "token_reviewer_jwt": reviewer})
        vault_root.write_data(f"auth/{mount}/role/pgop-operator", data={
            "bound_service_account_names": ["pgop-operator"], "bound_service_account_namespaces": [namespace],
            "policies": ["pgop-operator"], "ttl": "10m"})
        jwt = tmp_path / "token"
        jwt.write_text(kubectl("-n", namespace, "create", "token", "pgop-operator", "--duration=1h").stdout.strip())

        vault = pub.VaultKV.connect(local_env["VAULT_ADDR"], kubernetes_role="pgop-operator",
                                    kubernetes_mount=mount, jwt_path=str(jwt))
        path = f"secret/data/k8s/{namespace}/orders-db/db"
        assert vault.write(path, {"username": "dbadmin"}, cas=0) == 1
        assert vault.read(path).data == {"username": "dbadmin"}
        with pytest.raises(pub.VaultForbidden):  # the policy still applies
            vault.read("secret/data/elsewhere/db")
    finally:
        vault_root.sys.disable_auth_method(mount)
        kubectl("delete", "clusterrolebinding", f"{namespace}-reviewer", check=False)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_two_operators_racing_create_one_instance_with_one_password(rds, vault, consul_kv, names):
    """Two passes at once (an old and a new operator, or a handler and the timer): CAS in Vault and
    the idempotent create leave one instance and one password, and both end Ready."""
    import threading

    o = make(names)
    barrier = threading.Barrier(2)
    outcomes = []

    def generate():
        barrier.wait(timeout=10)  # both have read "no password yet" before either writes
        return pub.generate_password()

    def run():
        controller = MysqlDbController(rds, vault, consul_kv, generate_password=generate)
        outcomes.append(controller.reconcile(o))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert [out.status["phase"] for out in outcomes] == ["Ready", "Ready"]
    stored = [e for out in outcomes for e in out.events if e.reason == "PasswordStored"]
    assert len(stored) == 1  # the loser of the CAS race used the winner's password
    identifier = policy.target_identifier(o)
    same = [i for i in rds.client.describe_db_instances()["DBInstances"] if i["DBInstanceIdentifier"] == identifier]
    assert len(same) == 1


def test_tags_follow_the_spec(controller, rds, names):
    o = make(names, spec={"tags": {"team": "shop", "cost-center": "42"}})
    o = advance(o, controller.reconcile(o))
    retagged = dataclasses.replace(o, spec=make(names, spec={"tags": {"team": "checkout"}}).spec)
    controller.reconcile(retagged)
    tags = rds.describe(o.status["dbInstanceIdentifier"]).tags
    assert tags["team"] == "checkout" and "cost-center" not in tags
    assert tags[policy.TAG_UID] == o.uid  # ownership tags are never dropped
