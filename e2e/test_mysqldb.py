"""MysqlDb end to end: the operator process running against the real kube-apiserver, the moto
server (RDS), Vault and Consul; checked as a user would, through the Kubernetes API and kubectl.

The operator is started here as `kopf run -m rds.handlers` restricted to the test's namespace, with
a Vault token that carries only
deploy/vault/pgop-operator.hcl, and with a small TCP relay in front of Vault so the test can take
Vault away from the operator and give it back. Its log is kept and grepped for every password
that was ever published.

The test needs to own its operator (to kill it, and to take Vault away from it), so its namespace
is named `solo-*`: an operator started by the harness must leave those alone
(`pgop run -n '!solo-*'`). The first test fails with that message when another operator also
handles the namespace (its finalizer `pgop.io/finalizer` shows up on the objects).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import boto3
import hvac
import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from e2e.harness import proc as harness_proc
from e2e.harness.fixtures import create_test_namespace, delete_test_namespace
from e2e.relay import Relay
from pgop.rds import policy
from pgop.rds.aws import Rds
from pgop.rds.spec import MysqlDbObject
from pgop.runtime import publish as pub
from pgop.runtime.config import ConsulAddress

pytestmark = [pytest.mark.cluster, pytest.mark.services]

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "pgop.io", "v1", "mysqldbs"
SEEN_PASSWORDS: set[str] = set()


# --- the operator ----------------------------------------------------------------------------------

class Operator:
    def __init__(self, env: dict[str, str], namespace: str, log: Path):
        self.env, self.namespace, self.log = env, namespace, log
        self.proc: subprocess.Popen | None = None

    def start(self):
        # One operator at a time: the one `make up` started would act on the same objects.
        harness_proc.stop("operator")
        self.proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "pgop"), "run", "--verbose", "--namespace", self.namespace],
            cwd=REPO, env=self.env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def env(local_env):
    return local_env


@pytest.fixture(scope="module")
def vault_root(env):
    root = hvac.Client(url=env["VAULT_ADDR"], token=env["VAULT_TOKEN"])
    root.sys.create_or_update_policy("pgop-operator", (REPO / "deploy/vault/pgop-operator.hcl").read_text())
    return root


@pytest.fixture(scope="module")
def relay(env):
    addr = env["VAULT_ADDR"].split("://", 1)[-1].rstrip("/")
    host, port = addr.rsplit(":", 1)
    r = Relay((host, int(port)))
    yield r
    r.close()


@pytest.fixture(scope="module")
def ns(kubectl):
    name = f"solo-mysqldb-{uuid.uuid4().hex[:5]}"
    create_test_namespace(kubectl, name)
    yield name
    delete_test_namespace(kubectl, name)


@pytest.fixture(scope="module")
def operator(env, ns, vault_root, relay, tmp_path_factory, kubectl, kube_api):
    if kubectl("get", "crd", "mysqldbs.pgop.io", check=False).returncode != 0:
        kubectl("apply", "-f", str(REPO / "crds" / "mysqldbs.yaml"))
        kubectl("wait", "--for=condition=Established", "crd/mysqldbs.pgop.io", "--timeout=60s")
    token = vault_root.auth.token.create(policies=["pgop-operator"], no_default_policy=True,
                                         ttl="2h")["auth"]["client_token"]
    operator_env = {
        "PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
        "KUBECONFIG": env["KUBECONFIG"],
        "PGOP_RDS_ENDPOINT": env["PGOP_RDS_ENDPOINT"], "AWS_DEFAULT_REGION": env["AWS_DEFAULT_REGION"],
        "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
        "VAULT_ADDR": f"http://127.0.0.1:{relay.port}", "VAULT_TOKEN": token,
        "CONSUL_HTTP_ADDR": env["CONSUL_HTTP_ADDR"],
        "PGOP_RDS_POLL_SECONDS": "2", "PGOP_RDS_RESYNC_SECONDS": "4",
        "PYTHONPATH": str(REPO),
    }
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = Operator(operator_env, ns, log)
    op.start()
    yield op
    _delete_everything(kube_api, ns, op)
    op.stop()
    text = log.read_text(errors="replace")
    leaked = [p for p in SEEN_PASSWORDS if p in text]
    print(f"\noperator log: {log} ({len(text.splitlines())} lines), "
          f"{len(SEEN_PASSWORDS)} passwords checked")
    assert not leaked, "a password appeared in the operator log"


def _delete_everything(kube_api, ns, op):
    """Leave no MysqlDb (hence no finalizer) behind, so the namespace can go."""
    api = k8s.CustomObjectsApi(kube_api)
    if op.proc is None:
        op.start()
    for item in api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]:
        name = item["metadata"]["name"]
        api.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name,
                                           {"spec": {"deletionPolicy": "Delete", "deletionProtection": False}})
        api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    wait(lambda: not api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"],
         "every MysqlDb deleted", timeout=90)


@pytest.fixture(scope="module")
def api(kube_api):
    return k8s.CustomObjectsApi(kube_api)


@pytest.fixture(scope="module")
def core(kube_api):
    return k8s.CoreV1Api(kube_api)


@pytest.fixture(scope="module")
def rds(env):
    session = boto3.session.Session(aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                    aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                                    region_name=env["AWS_DEFAULT_REGION"])
    return Rds.connect(region=env["AWS_DEFAULT_REGION"], endpoint_url=env["PGOP_RDS_ENDPOINT"], session=session)


@pytest.fixture(scope="module")
def vault(env, vault_root):
    return pub.VaultKV(vault_root)


@pytest.fixture(scope="module")
def consul_kv(env):
    a = ConsulAddress.parse(env["CONSUL_HTTP_ADDR"])
    return pub.ConsulKV.connect(a.host, a.port, scheme=a.scheme)


# --- helpers ---------------------------------------------------------------------------------------

def manifest(name, **spec):
    body = {"engineVersion": "8.0.35", "instanceSize": "small", "storageGB": 20, "databaseName": "orders"}
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MysqlDb", "metadata": {"name": name}, "spec": body}


def get(api, ns, name):
    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def wait(predicate, what, timeout=60, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def condition(obj, type_):
    for c in (obj or {}).get("status", {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return {}


def wait_phase(api, ns, name, phase, timeout=60):
    return wait(lambda: (o := get(api, ns, name)) and o.get("status", {}).get("phase") == phase and o,
                f"{name} phase {phase}", timeout)


def remember_password(vault, path):
    data = vault.read(path).data or {}
    if data.get("password"):
        SEEN_PASSWORDS.add(data["password"])
    return data


def events_of(core, ns, name):
    return [(e.type, e.reason, e.message) for e in
            core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items]


def create(api, ns, body):
    return api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)


def patch_spec(api, ns, name, **spec):
    return api.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, {"spec": spec})


def delete(api, ns, name):
    api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def gone(api, ns, name, timeout=60):
    wait(lambda: get(api, ns, name) is None, f"{name} to be deleted", timeout)


# --- tests -----------------------------------------------------------------------------------------

def test_create_to_ready_and_kubectl_columns(operator, api, core, kubectl, ns, vault, consul_kv, rds):
    started = time.monotonic()
    create(api, ns, manifest("orders-db", tags={"team": "shop"}))
    obj = wait_phase(api, ns, "orders-db", "Ready")
    print(f"\napply -> Ready: {time.monotonic() - started:.2f}s")
    # deletion waits for the operator: RDS, Vault and Consul are cleaned up first
    assert obj["metadata"].get("finalizers") == ["pgop.io/finalizer"]
    status = obj["status"]
    assert status["endpoint"] and status["port"] == 3306 and condition(obj, "Ready")["status"] == "True"
    secret = remember_password(vault, f"secret/data/k8s/{ns}/orders-db/db")
    assert set(secret) == set(pub.VAULT_KEYS) and secret["host"] == status["endpoint"]
    config = consul_kv.read(f"config/k8s/{ns}/orders-db/db")
    assert set(config) == set(pub.CONSUL_KEYS)
    assert secret["password"] not in repr(obj) and secret["password"] not in repr(events_of(core, ns, "orders-db"))
    assert rds.describe(status["dbInstanceIdentifier"]).tags[policy.TAG_NAMESPACE] == ns
    table = kubectl("-n", ns, "get", "mysqldbs").stdout
    assert "orders-db" in table and "small" in table and status["endpoint"] in table and "Ready" in table


def test_modify_shows_new_values_in_status(operator, api, ns):
    patch_spec(api, ns, "orders-db", instanceSize="medium", storageGB=40, backupRetentionDays=14,
               applyImmediately=True)
    obj = wait(lambda: (o := get(api, ns, "orders-db"))["status"].get("instanceClass") == "db.m6g.large"
               and o["status"].get("allocatedStorage") == 40 and o, "modified status")
    assert obj["status"]["backupRetentionDays"] == 14 and obj["status"]["phase"] == "Ready"


def test_immutable_fields_are_refused_by_the_api(operator, api, ns):
    with pytest.raises(ApiException) as refused:
        patch_spec(api, ns, "orders-db", databaseName="billing")
    assert refused.value.status == 422 and "databaseName" in refused.value.body
    with pytest.raises(ApiException) as shrink:
        patch_spec(api, ns, "orders-db", storageGB=20)
    assert "storageGB" in shrink.value.body
    with pytest.raises(ApiException) as downgrade:
        patch_spec(api, ns, "orders-db", engineVersion="5.7.44")
    assert "engineVersion" in downgrade.value.body


def test_external_deletion_is_degraded_not_recreated(operator, api, ns, rds):
    create(api, ns, manifest("doomed", deletionPolicy="Delete"))
    identifier = wait_phase(api, ns, "doomed", "Ready")["status"]["dbInstanceIdentifier"]
    rds.delete(identifier, final_snapshot=None, delete_automated_backups=True)
    obj = wait_phase(api, ns, "doomed", "Degraded", timeout=30)
    assert condition(obj, "Degraded")["reason"] == "InstanceNotFound"
    time.sleep(6)  # more than one resync: still not recreated
    assert rds.describe(identifier) is None
    delete(api, ns, "doomed")
    gone(api, ns, "doomed")


@pytest.mark.parametrize("deletion_policy", ["Snapshot", "Delete", "Retain"])
def test_deletion_policies(operator, api, core, ns, rds, vault, consul_kv, deletion_policy, env):
    name = f"del-{deletion_policy.lower()}"
    create(api, ns, manifest(name, deletionPolicy=deletion_policy))
    identifier = wait_phase(api, ns, name, "Ready")["status"]["dbInstanceIdentifier"]
    path, prefix = f"secret/data/k8s/{ns}/{name}/db", f"config/k8s/{ns}/{name}/db"
    remember_password(vault, path)
    delete(api, ns, name)
    gone(api, ns, name)
    client = rds.client
    snapshots = [s["DBSnapshotIdentifier"] for s in client.describe_db_snapshots()["DBSnapshots"]]
    if deletion_policy == "Retain":
        kept = rds.describe(identifier)
        assert kept and not set(kept.tags) & set(policy.OWNERSHIP_TAG_KEYS)
        assert vault.read(path).exists and consul_kv.read(prefix)
        rds.delete(identifier, final_snapshot=None, delete_automated_backups=True)
        return
    assert rds.describe(identifier) is None
    assert not vault.read(path).exists and not consul_kv.read(prefix)
    ours = [s for s in snapshots if s.startswith(identifier + "-final-")]
    if deletion_policy == "Snapshot":
        assert len(ours) == 1
        assert any(ours[0] in (m or "") for _, reason, m in events_of(core, ns, name) if reason == "FinalSnapshot")
    else:
        assert ours == []


def test_deletion_protection_blocks_until_turned_off(operator, api, ns, rds):
    create(api, ns, manifest("guarded", deletionProtection=True, deletionPolicy="Delete"))
    identifier = wait_phase(api, ns, "guarded", "Ready")["status"]["dbInstanceIdentifier"]
    delete(api, ns, "guarded")
    obj = wait(lambda: condition(get(api, ns, "guarded"), "DeletionBlocked").get("status") == "True"
               and get(api, ns, "guarded"), "DeletionBlocked condition")
    assert "deletionProtection" in condition(obj, "DeletionBlocked")["message"]
    time.sleep(3)
    assert get(api, ns, "guarded") is not None and rds.describe(identifier) is not None
    patch_spec(api, ns, "guarded", deletionProtection=False)
    gone(api, ns, "guarded", timeout=90)
    assert rds.describe(identifier) is None


def legacy_instance(rds, prefix, password, **tags):
    """An RDS instance pgop did not create (tags: what an administrator put on it)."""
    identifier = f"{prefix}-{uuid.uuid4().hex[:6]}"
    rds.create({"DBInstanceIdentifier": identifier, "Engine": "mysql", "EngineVersion": "8.0.35",
                "DBInstanceClass": "db.t4g.small", "AllocatedStorage": 20, "DBName": "orders",
                "MasterUsername": "legacyadmin", "BackupRetentionPeriod": 7,
                # encrypted, as the spec's default storageEncrypted: true wants (an unencrypted
                # instance is refused: encryption cannot change in place)
                "StorageEncrypted": True,
                "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}, password)
    SEEN_PASSWORDS.add(password)
    return identifier


def test_adoption_takes_over_without_replacing_the_password(operator, api, ns, rds, vault):
    # the administrator's consent: the instance names the one MysqlDb that may adopt it
    legacy = legacy_instance(rds, "legacy", "LegacyPassword123", **{policy.TAG_ADOPTABLE_BY: f"{ns}/adopted"})
    body = manifest("adopted", deletionPolicy="Retain")
    body["metadata"]["annotations"] = {"pgop.io/adopt": legacy}
    create(api, ns, body)
    obj = wait_phase(api, ns, "adopted", "Ready")
    assert obj["status"]["dbInstanceIdentifier"] == legacy
    assert rds.describe(legacy).tags[policy.TAG_UID] == obj["metadata"]["uid"]
    assert "password" not in vault.read(f"secret/data/k8s/{ns}/adopted/db").data
    delete(api, ns, "adopted")
    gone(api, ns, "adopted")
    assert rds.describe(legacy) is not None  # Retain
    rds.delete(legacy, final_snapshot=None, delete_automated_backups=True)


def test_adopting_an_untagged_instance_is_refused_until_an_administrator_allows_it(operator, api, core, ns, rds,
                                                                                   vault):
    """The attack (issue 12): a tenant annotates pgop.io/adopt with an instance of the account that
    pgop did not create, asks for a new password, and deletes the MysqlDb with deletionPolicy
    Delete. Nothing of it may happen: no tag, no password, no deletion."""
    legacy = legacy_instance(rds, "untagged", "UntaggedPassword123", team="billing")
    before = rds.describe(legacy)
    grab = manifest("grabber", deletionPolicy="Delete")
    grab["metadata"]["annotations"] = {"pgop.io/adopt": legacy, "pgop.io/reset-password": "true"}
    create(api, ns, grab)
    obj = wait_phase(api, ns, "grabber", "Degraded")
    degraded = condition(obj, "Degraded")
    assert degraded["reason"] == "AdoptionNotAllowed"
    assert f"pgop.io/adoptable-by={ns}/grabber" in degraded["message"]
    assert "PGOP_RDS_ADOPT_NAMESPACES" in degraded["message"]
    assert ("Warning", "AdoptionNotAllowed") in [(t, r) for t, r, _ in events_of(core, ns, "grabber")]
    time.sleep(6)  # more than one resync: still nothing
    after = rds.describe(legacy)
    assert after.tags == before.tags and after.pending == before.pending and after.status == "available"
    assert not vault.read(f"secret/data/k8s/{ns}/grabber/db").exists
    delete(api, ns, "grabber")
    gone(api, ns, "grabber")
    assert rds.describe(legacy).tags == before.tags  # deletionPolicy Delete did not reach it

    # An administrator names the namespace in the operator's configuration: now it may.
    configured = operator.env
    operator.stop()
    operator.env = {**configured, "PGOP_RDS_ADOPT_NAMESPACES": f"elsewhere,{ns}"}
    operator.start()
    try:
        welcome = manifest("welcome", deletionPolicy="Retain")
        welcome["metadata"]["annotations"] = {"pgop.io/adopt": legacy}
        create(api, ns, welcome)
        adopted = wait_phase(api, ns, "welcome", "Ready", timeout=90)
        assert rds.describe(legacy).tags[policy.TAG_UID] == adopted["metadata"]["uid"]
        delete(api, ns, "welcome")
        gone(api, ns, "welcome")
    finally:
        operator.stop()
        operator.env = configured
        operator.start()
    assert rds.describe(legacy) is not None  # Retain
    rds.delete(legacy, final_snapshot=None, delete_automated_backups=True)


def test_operator_restart_mid_create(operator, api, ns, rds, vault):
    """The operator dies after storing the password and calling CreateDBInstance, before it wrote
    status: the restarted operator must find that instance and that password, and create nothing."""
    operator.stop(signal.SIGKILL)
    create(api, ns, manifest("restarted", deletionPolicy="Delete"))
    o = MysqlDbObject.from_body(get(api, ns, "restarted"))
    identifier = policy.target_identifier(o)
    stored = pub.ensure_master_password(vault, o.spec.vault_path, username=policy.MASTER_USERNAME,
                                        engine="mysql", dbname="orders")
    SEEN_PASSWORDS.add(stored.password)
    rds.create(policy.create_request(o, identifier), stored.password)
    operator.start()
    ready = wait_phase(api, ns, "restarted", "Ready", timeout=90)
    assert ready["status"]["dbInstanceIdentifier"] == identifier
    assert vault.read(o.spec.vault_path).data["password"] == stored.password
    same = [i for i in rds.client.describe_db_instances()["DBInstances"]
            if i["DBInstanceIdentifier"] == identifier]
    assert len(same) == 1


def test_vault_down_then_back(operator, api, core, ns, relay, rds, vault):
    relay.down()
    try:
        create(api, ns, manifest("vaultless", deletionPolicy="Delete"))
        obj = wait(lambda: condition(get(api, ns, "vaultless"), "Progressing").get("reason") == "VaultUnavailable"
                   and get(api, ns, "vaultless"), "VaultUnavailable condition", timeout=60)
        identifier = policy.target_identifier(MysqlDbObject.from_body(obj))
        assert rds.describe(identifier) is None  # no password stored, so no database created
    finally:
        relay.up()
    wait_phase(api, ns, "vaultless", "Ready", timeout=120)
    remember_password(vault, f"secret/data/k8s/{ns}/vaultless/db")


APP_IMAGE = "localhost/pgop-postgres:dev"  # any image with python3 will do

APP_SCRIPT = r"""
import hashlib, json, os, urllib.request
vault = os.environ["VAULT_ADDR"]
jwt = open("/var/run/secrets/kubernetes.io/serviceaccount/token").read()
def call(method, path, body=None, token=None):
    req = urllib.request.Request(vault + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"X-Vault-Token": token} if token else {})
    return json.load(urllib.request.urlopen(req, timeout=10))
token = call("POST", "/v1/auth/" + os.environ.get("AUTH_MOUNT", "kubernetes") + "/login",
             {"role": os.environ["ROLE"], "jwt": jwt})["auth"]["client_token"]
secret = call("GET", "/v1/" + os.environ["SECRET_PATH"], token=token)["data"]["data"]
print(json.dumps({"keys": sorted(secret), "host": secret["host"], "dbname": secret["dbname"],
                  "password_sha256": hashlib.sha256(secret["password"].encode()).hexdigest()}))
try:
    call("GET", "/v1/secret/data/k8s/" + os.environ["NAMESPACE"] + "/other/db", token=token)
    print("OTHER-READABLE")
except urllib.error.HTTPError as e:
    print("other path:", e.code)
"""


def test_application_reads_its_secret_with_kubernetes_auth(operator, api, ns, kubectl, vault_root, vault, env):
    """How users consume pgop: a pod logs in to Vault with its service account token (Kubernetes
    auth method, role bound to its namespace) and reads its database secret, and nothing else."""

    create(api, ns, manifest("app-db", deletionPolicy="Delete"))
    wait_phase(api, ns, "app-db", "Ready")
    secret = remember_password(vault, f"secret/data/k8s/{ns}/app-db/db")

    # Once per cluster: Vault checks service account tokens with the TokenReview API.
    kubectl("apply", "-f", "-", input=f"""
apiVersion: v1
kind: ServiceAccount
metadata: {{name: vault-token-reviewer, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {ns}-vault-token-reviewer}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:auth-delegator}}
subjects: [{{kind: ServiceAccount, name: vault-token-reviewer, namespace: {ns}}}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: orders-api, namespace: {ns}}}
""")
    reviewer = kubectl("-n", ns, "create", "token", "vault-token-reviewer", "--duration=1h").stdout.strip()
    kube_config = kubectl.json("config", "view", "--raw", "--minify")
    cluster = kube_config["clusters"][0]["cluster"]
    ca = cluster.get("certificate-authority-data")
    ca_pem = base64.b64decode(ca).decode() if ca else Path(cluster["certificate-authority"]).read_text()
    mount = f"kubernetes-{ns}"
    vault_root.sys.enable_auth_method("kubernetes", path=mount)
    try:
        vault_root.write_data(f"auth/{mount}/config", data={
            "kubernetes_host": cluster["server"], "kubernetes_ca_cert": ca_pem, "token_reviewer_jwt": reviewer})
        rendered = (REPO / "deploy/vault/app-read.hcl").read_text().replace("NAMESPACE", ns).replace("NAME", "app-db")
        vault_root.sys.create_or_update_policy(f"app-{ns}-app-db", rendered)
        vault_root.write_data(f"auth/{mount}/role/orders-api", data={
            "bound_service_account_names": ["orders-api"], "bound_service_account_namespaces": [ns],
            "policies": [f"app-{ns}-app-db"], "ttl": "10m"})
        vault_in_cluster = env.get("PGOP_VAULT_ADDR_IN_CLUSTER", env["VAULT_ADDR"])

        def run_app(pod: str) -> tuple[dict, str]:
            kubectl("-n", ns, "apply", "-f", "-", input=json.dumps({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod},
                "spec": {"serviceAccountName": "orders-api", "restartPolicy": "Never",
                         "containers": [{"name": "app", "image": APP_IMAGE, "command": ["python3", "-c", APP_SCRIPT],
                                         "env": [{"name": "VAULT_ADDR", "value": vault_in_cluster},
                                                 {"name": "ROLE", "value": "orders-api"},
                                                 {"name": "AUTH_MOUNT", "value": mount},
                                                 {"name": "NAMESPACE", "value": ns},
                                                 {"name": "SECRET_PATH", "value": f"secret/data/k8s/{ns}/app-db/db"}]}]}}))
            phase = kubectl.wait_for(
                lambda: kubectl.json("-n", ns, "get", "pod", pod)["status"].get("phase") in ("Succeeded", "Failed")
                and kubectl.json("-n", ns, "get", "pod", pod)["status"]["phase"], "app pod", timeout=120)
            logs = kubectl("-n", ns, "logs", pod).stdout
            assert phase == "Succeeded", logs
            first, second = logs.strip().splitlines()[-2:]
            return json.loads(first), second

        seen, other = run_app("orders-api")
        assert seen["keys"] == sorted(pub.VAULT_KEYS) and seen["host"] == secret["host"]
        assert seen["password_sha256"] == hashlib.sha256(secret["password"].encode()).hexdigest()
        assert other == "other path: 403"

        # The password rotates (pgop mysqldb rotate): the application, reading its secret again,
        # gets the new one, which is what RDS now has (Vault first, then RDS).
        _pgop(env, ns, "mysqldb", "rotate", "app-db")
        wait(lambda: not (get(api, ns, "app-db")["status"].get("passwordRotation") or {}).get("inProgress")
             and (get(api, ns, "app-db")["status"].get("passwordRotation") or {}).get("lastRotatedAt"),
             "the rotation done", timeout=90)
        rotated = remember_password(vault, f"secret/data/k8s/{ns}/app-db/db")
        assert rotated["password"] != secret["password"]
        again, _ = run_app("orders-api-again")
        assert again["password_sha256"] == hashlib.sha256(rotated["password"].encode()).hexdigest()
    finally:
        vault_root.sys.disable_auth_method(mount)
        kubectl("delete", "clusterrolebinding", f"{ns}-vault-token-reviewer", check=False)


# --- issue 16: drift, rotation and restore through kubectl and the pgop command (not run by the author)

def _pgop(env, ns, *args):
    cli_env = {**os.environ, "KUBECONFIG": env["KUBECONFIG"], "PGOP_RDS_ENDPOINT": env["PGOP_RDS_ENDPOINT"],
               "AWS_DEFAULT_REGION": env["AWS_DEFAULT_REGION"], "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
               "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"], "PYTHONPATH": str(REPO)}
    done = subprocess.run([str(REPO / ".venv" / "bin" / "pgop"), *args, "-n", ns], env=cli_env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_drift_made_with_the_aws_api_is_put_back_with_an_event(operator, api, core, ns, rds, vault):
    create(api, ns, manifest("drift-db", backupRetentionDays=7))
    obj = wait_phase(api, ns, "drift-db", "Ready")
    remember_password(vault, f"secret/data/k8s/{ns}/drift-db/db")
    identifier = obj["status"]["dbInstanceIdentifier"]
    rds.client.modify_db_instance(DBInstanceIdentifier=identifier, DBInstanceClass="db.m6g.large",
                                  BackupRetentionPeriod=1, ApplyImmediately=True)
    wait(lambda: any(r == "DriftReverted" and "spec.instanceClass" in m for _, r, m in events_of(core, ns, "drift-db")),
         "a DriftReverted event", timeout=60)
    instance = wait(lambda: (i := rds.describe(identifier)) and i.instance_class == "db.t4g.small" and i,
                    "the instance class put back", timeout=30)
    assert instance.backup_retention_days == 7
    delete(api, ns, "drift-db")
    gone(api, ns, "drift-db")


def test_rotate_with_the_cli_then_vault_has_a_new_version(operator, api, core, env, ns, vault):
    create(api, ns, manifest("rotate-db"))
    wait_phase(api, ns, "rotate-db", "Ready")
    path = f"secret/data/k8s/{ns}/rotate-db/db"
    before = vault.read(path)
    remember_password(vault, path)
    out = _pgop(env, ns, "mysqldb", "rotate", "rotate-db")
    assert "pgop.io/rotate-password" in out
    token = get(api, ns, "rotate-db")["metadata"]["annotations"]["pgop.io/rotate-password"]
    wait(lambda: (get(api, ns, "rotate-db")["status"].get("passwordRotation") or {}).get("handledRequest") == token,
         "the rotation handled", timeout=60)
    after = vault.read(path)
    remember_password(vault, path)
    assert after.version > before.version and after.data["password"] != before.data["password"]
    assert "pendingPassword" not in after.data
    obj = get(api, ns, "rotate-db")
    for password in (before.data["password"], after.data["password"]):
        assert password not in repr(obj) and password not in repr(events_of(core, ns, "rotate-db"))
    delete(api, ns, "rotate-db")
    gone(api, ns, "rotate-db")


def test_restore_with_the_cli_gets_its_own_secret_and_config(operator, api, core, env, ns, rds, vault, consul_kv):
    create(api, ns, manifest("source-db"))
    source = wait_phase(api, ns, "source-db", "Ready")
    source_secret = remember_password(vault, f"secret/data/k8s/{ns}/source-db/db")
    snap = f"e2e-{uuid.uuid4().hex[:8]}"
    rds.client.create_db_snapshot(DBSnapshotIdentifier=snap, DBInstanceIdentifier=source["status"]["dbInstanceIdentifier"])
    assert snap in _pgop(env, ns, "mysqldb", "snapshots", "source-db")
    _pgop(env, ns, "mysqldb", "restore", "source-db", "--to", "copy-db", "--snapshot", snap)
    copy = wait_phase(api, ns, "copy-db", "Ready", timeout=90)
    assert copy["spec"]["restoreFrom"] == {"snapshotIdentifier": snap}
    assert copy["status"]["restore"]["passwordSet"] is True
    secret = remember_password(vault, f"secret/data/k8s/{ns}/copy-db/db")
    assert secret["password"] != source_secret["password"] and secret["host"] == copy["status"]["endpoint"]
    assert consul_kv.read(f"config/k8s/{ns}/copy-db/db")["host"] == copy["status"]["endpoint"]
    reasons = [r for _, r, _ in events_of(core, ns, "copy-db")]
    assert "Restoring" in reasons and "PasswordSet" in reasons
    for name in ("copy-db", "source-db"):
        delete(api, ns, name)
        gone(api, ns, name)
