"""spec.backup.s3.retentionCredentialsSecret: the keys that may delete the archive stay with the
operator. No pod, PgInstance, recovery source or agent Role names that Secret; retention deletes
with it; without it everything is as before."""
import base64
import json

import pytest

from pgop.backup.access import retention_storage_for, storage_for
from pgop.backup.pod import build_backup_pod
from pgop.backup.s3 import CredentialsError
from pgop.cluster.plan import resolve_recovery
from pgop.kernel.model import Cluster, ClusterSpec, Instance, S3Spec
from pgop.specs.instance import build_instance, config_hash
from pgop.specs.pods import build_bootstrap_pod, build_postgres_pod
from pgop.specs.rbac import build_role, readable_secrets
from tests.unit.world import cluster_body, make_cluster

WRITER = "s3-writer"
RETENTION = "s3-retention"
S3 = {"bucket": "pg-backups", "path": "shop/orders", "credentialsSecret": WRITER}
SPLIT = dict(S3, retentionCredentialsSecret=RETENTION)


def _instances(cluster: Cluster) -> list[Instance]:
    made = [build_instance(cluster, 0, "primary", "initdb"), build_instance(cluster, 1, "replica", "basebackup")]
    return [Instance.from_object(body | {"metadata": {**body["metadata"], "uid": f"u{i}"}, "status": {}})
            for i, body in enumerate(made)]


def _pods(cluster: Cluster) -> list[dict]:
    pods = []
    for instance in _instances(cluster):
        pods += [build_postgres_pod(instance), build_bootstrap_pod(instance)]
        pods.append(build_backup_pod("orders-202611220300", "backup-uid", instance, "10.244.0.7"))
    return pods


def _mounted_secrets(pod: dict) -> set[str]:
    names = set()
    for volume in pod["spec"]["volumes"]:
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
        for source in (volume.get("projected") or {}).get("sources") or ():
            if "secret" in source:
                names.add(source["secret"]["name"])
    return names


# ------------------------------------------------------------------------------------ model

def test_the_retention_secret_is_read_and_written_back():
    s3 = S3Spec.from_dict(SPLIT)
    assert s3.retention_credentials_secret == RETENTION and s3.deleting_credentials_secret == RETENTION
    assert s3.to_dict()["retentionCredentialsSecret"] == RETENTION
    assert S3Spec.from_dict(S3).deleting_credentials_secret == WRITER  # without it: as before
    assert "retentionCredentialsSecret" not in S3Spec.from_dict(S3).to_dict()


def test_pods_get_the_location_without_it():
    s3 = S3Spec.from_dict(SPLIT).for_pods()
    assert s3.retention_credentials_secret is None and s3.credentials_secret == WRITER
    assert s3.to_dict() == S3


def test_the_same_secret_for_both_is_refused_naming_the_field():
    spec = ClusterSpec.from_dict({"storage": {"size": "1Gi"},
                                  "backup": {"s3": dict(S3, retentionCredentialsSecret=WRITER)}})
    [(path, reason)] = [e for e in spec.validate() if "retention" in e[0]]
    assert path == "spec.backup.s3.retentionCredentialsSecret"
    assert "another Secret than spec.backup.s3.credentialsSecret" in reason
    assert not [e for e in ClusterSpec.from_dict({"storage": {"size": "1Gi"},
                                                  "backup": {"s3": SPLIT}}).validate() if "s3" in e[0]]


# ------------------------------------------------------------------------------------ pods

def test_no_pod_mounts_or_names_the_retention_secret():
    pods = _pods(make_cluster(backup={"s3": SPLIT}))
    assert len(pods) == 6
    for pod in pods:
        assert WRITER in _mounted_secrets(pod), pod["metadata"]["name"]
        assert RETENTION not in json.dumps(pod), pod["metadata"]["name"]


def test_no_pginstance_names_it_and_adding_it_restarts_nothing():
    split, plain = make_cluster(backup={"s3": SPLIT}), make_cluster(backup={"s3": S3})
    for ordinal, role, mode in ((0, "primary", "initdb"), (1, "replica", "basebackup")):
        body = build_instance(split, ordinal, role, mode)
        assert RETENTION not in json.dumps(body)
        assert body["spec"] == build_instance(plain, ordinal, role, mode)["spec"]
    assert config_hash(split.spec) == config_hash(plain.spec)


def test_the_agents_role_may_not_read_it():
    cluster = make_cluster(backup={"s3": SPLIT})
    assert WRITER in readable_secrets(cluster) and RETENTION not in readable_secrets(cluster)
    assert RETENTION not in json.dumps(build_role(cluster))


def test_a_restore_from_a_cluster_with_it_reads_with_the_writers_keys_only():
    source = cluster_body(name="orders", backup={"s3": SPLIT})
    copy = make_cluster(backup={"s3": dict(S3, path="shop/copy")},
                        bootstrap={"recovery": {"source": "orders"}})
    recovery = resolve_recovery(copy.spec.bootstrap.recovery, source)
    assert recovery.s3 is not None and recovery.s3.credentials_secret == WRITER
    assert recovery.s3.retention_credentials_secret is None
    restoring = Cluster.from_object(cluster_body(name="copy", backup={"s3": dict(S3, path="shop/copy")},
                                                 bootstrap={"recovery": recovery.to_dict()}))
    body = build_instance(restoring, 0, "primary", "recovery", recovery)
    instance = Instance.from_object(body | {"metadata": {**body["metadata"], "uid": "u"}, "status": {}})
    assert RETENTION not in json.dumps(build_bootstrap_pod(instance))


# ------------------------------------------------------------------------------ the operator

class Secrets:
    """Kubernetes' Secret reads, as the operator's client answers them."""

    def __init__(self, **keys: tuple[str, str]):
        self.read: list[str] = []
        self.secrets = {name.replace("_", "-"): {"metadata": {"name": name.replace("_", "-")}, "data": {
            "ACCESS_KEY_ID": base64.b64encode(access.encode()).decode(),
            "ACCESS_SECRET_KEY": base64.b64encode(secret.encode()).decode()}}
            for name, (access, secret) in keys.items()}

    def get(self, kind: str, namespace: str, name: str):
        assert (kind, namespace) == ("Secret", "shop")
        self.read.append(name)
        return self.secrets.get(name)


def _access_key(storage) -> str:
    return storage.client._request_signer._credentials.access_key


def test_retention_deletes_with_the_retention_keys_and_reads_with_the_writers():
    kube = Secrets(s3_writer=("WRITER", "w-secret"), s3_retention=("RETAINER", "r-secret"))
    s3 = S3Spec.from_dict(SPLIT)
    assert _access_key(retention_storage_for(kube, "shop", s3)) == "RETAINER"
    assert _access_key(storage_for(kube, "shop", s3)) == "WRITER"
    assert kube.read == [RETENTION, WRITER]


def test_without_it_retention_deletes_with_the_one_secret():
    kube = Secrets(s3_writer=("WRITER", "w-secret"))
    assert _access_key(retention_storage_for(kube, "shop", S3Spec.from_dict(S3))) == "WRITER"


def test_a_missing_retention_secret_is_named_in_the_error_without_keys():
    kube = Secrets(s3_writer=("WRITER", "w-secret"))
    with pytest.raises(CredentialsError, match="S3 retention credentials Secret shop/s3-retention does not exist"):
        retention_storage_for(kube, "shop", S3Spec.from_dict(SPLIT))


# ------------------------------------------------------------------------------------ the CRD

def test_the_crd_has_the_field_and_refuses_the_same_secret_twice():
    from tests.unit.test_crds import _node, _rule_regex
    node = _node("PgCluster", "spec.backup.s3.retentionCredentialsSecret")
    assert node["type"] == "string" and node["maxLength"] == 253
    assert "retentionCredentialsSecret" not in _node("PgCluster", "spec.backup.s3").get("required", [])
    regex = _rule_regex("PgCluster", "spec.backup.s3.retentionCredentialsSecret")
    assert regex.search("s3-retention") and not regex.search("S3_Retention")
    [rule] = [r for r in _node("PgCluster", "spec.backup.s3")["x-kubernetes-validations"]
              if "retentionCredentialsSecret" in r["rule"]]
    assert rule["rule"] == ("!has(self.retentionCredentialsSecret) || "
                            "self.retentionCredentialsSecret != self.credentialsSecret")
    assert rule["fieldPath"] == ".retentionCredentialsSecret"
    assert rule["message"].startswith("spec.backup.s3.retentionCredentialsSecret must name another Secret")
    # a restore never deletes from its source: the recovery location has no such field
    assert "retentionCredentialsSecret" not in _node("PgCluster", "spec.bootstrap.recovery.s3")["properties"]
