import random
from urllib.parse import urlparse

import pytest

from pgop.kernel import names
from pgop.kernel.model import DEFAULT_IMAGE, Instance
from pgop.specs.instance import build_instance, config_hash
from pgop.specs.pdb import build_pdb, build_primary_pdb, min_available
from pgop.specs.pods import (
    AGENT_PORT,
    ANNOTATION_POD_INPUTS,
    DATA_MOUNT,
    PGDATA,
    POSTGRES_UID,
    build_bootstrap_pod,
    build_postgres_pod,
    pod_inputs_hash,
    pod_role_label,
)
from pgop.specs.pvc import build_pvc, holds_foreign_data, is_initialized, mark_initialized_patch
from pgop.specs.rbac import build_role, build_role_binding, build_service_account
from pgop.specs.secrets import PASSWORD_ALPHABET, build_cluster_secrets, generate_password
from pgop.specs.services import build_services
from tests.unit.world import make_cluster

RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


def instance(ordinal=0, role="primary", bootstrap="initdb", status=None, cluster=None, uid="inst-uid"):
    cluster = cluster or make_cluster(resources=RESOURCES)
    body = build_instance(cluster, ordinal, role, bootstrap)
    body["metadata"]["uid"] = uid
    body["status"] = status or {}
    return Instance.from_object(body)


def matches(selector, labels):
    return all(labels.get(key) == value for key, value in selector.items())


def container(pod):
    [only] = pod["spec"]["containers"]
    return only


# ------------------------------------------------------------------------------- Services

def _pods():
    primary = build_postgres_pod(instance(0, "primary", status={"role": "primary"}))
    replica = build_postgres_pod(instance(1, "replica", "basebackup", status={"role": "replica"}))
    bootstrap = build_bootstrap_pod(instance(2, "replica", "basebackup"))
    promoting = build_postgres_pod(instance(3, "primary", status={"role": "replica"}))
    other = build_postgres_pod(instance(0, "primary", status={"role": "primary"}, cluster=make_cluster(name="billing")))
    return {name: pod["metadata"]["labels"] for name, pod in
            dict(primary=primary, replica=replica, bootstrap=bootstrap, promoting=promoting, other=other).items()}


def _reached(service):
    return {name for name, labels in _pods().items() if matches(service["spec"]["selector"], labels)}


def test_the_rw_service_reaches_only_the_primary_of_its_cluster():
    rw, _, _ = build_services(make_cluster())
    assert rw["metadata"]["name"] == "orders-rw"
    assert _reached(rw) == {"primary"}


def test_the_ro_service_reaches_only_replicas():
    _, ro, _ = build_services(make_cluster())
    assert ro["metadata"]["name"] == "orders-ro"
    assert _reached(ro) == {"replica"}


def test_the_r_service_reaches_every_postgres_pod_but_no_bootstrap_pod():
    _, _, r = build_services(make_cluster())
    assert r["metadata"]["name"] == "orders-r"
    assert _reached(r) == {"primary", "replica", "promoting"}


def test_services_listen_on_5432_and_belong_to_the_cluster():
    for service in build_services(make_cluster()):
        assert service["spec"]["ports"] == [{"name": "postgres", "port": 5432, "targetPort": 5432, "protocol": "TCP"}]
        [owner] = service["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("PgCluster", "cluster-uid-orders", True)


# ------------------------------------------------------------------------------ role labels

def test_primary_label_needs_both_the_wish_and_the_fact():
    assert pod_role_label(instance(0, "primary", status={"role": "primary"})) == "primary"
    # Not yet promoted (or not yet reported): -rw must not send writes to it.
    assert pod_role_label(instance(0, "primary", status={})) == "pending"
    assert pod_role_label(instance(0, "primary", status={"role": "replica"})) == "pending"
    # A former primary that has not stepped down yet gets neither Service.
    assert pod_role_label(instance(1, "replica", status={"role": "primary"})) == "pending"
    assert pod_role_label(instance(1, "replica", status={})) == "replica"


# --------------------------------------------------------------------------------- Postgres pod

def test_postgres_pod_runs_the_agent_as_pid_1_without_root():
    pod = build_postgres_pod(instance())
    spec, main = pod["spec"], container(pod)
    assert main["command"] == ["pgop", "agent", "run"]
    assert "args" not in main  # no shell in between: the agent gets the signals
    security = spec["securityContext"]
    assert security["runAsUser"] == POSTGRES_UID == 999 and security["runAsNonRoot"] is True
    assert security["fsGroup"] == 999
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["restartPolicy"] == "Always"


def test_postgres_pod_keeps_its_data_on_the_instance_volume():
    pod = build_postgres_pod(instance(2, "replica", "basebackup"))
    [claim] = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"]["claimName"] == "orders-2"
    [mount] = [m for m in container(pod)["volumeMounts"] if m["name"] == claim["name"]]
    assert mount["mountPath"] == DATA_MOUNT == "/var/lib/postgresql/data"
    env = {e["name"]: e.get("value") for e in container(pod)["env"]}
    assert env["PGDATA"] == PGDATA
    assert PGDATA.startswith(DATA_MOUNT + "/")  # a subdirectory: initdb needs an empty directory


def test_readiness_asks_the_agent_on_a_declared_port():
    main = container(build_postgres_pod(instance()))
    probe = main["readinessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports[probe["port"]] == AGENT_PORT
    assert probe["path"] == "/readyz"
    assert ports["postgres"] == 5432


def test_pod_learns_cluster_instance_and_namespace_from_the_downward_api():
    env = {e["name"]: e for e in container(build_postgres_pod(instance(1, "replica")))["env"]}
    assert env["PGOP_CLUSTER"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['pgop.io/cluster']"
    assert env["PGOP_INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['pgop.io/instance']"
    assert env["PGOP_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_no_password_is_in_the_pod_spec():
    pod = build_postgres_pod(instance())
    assert not any("password" in e["name"].lower() or "secretKeyRef" in e.get("valueFrom", {})
                   for e in container(pod)["env"])
    [projected] = [v for v in pod["spec"]["volumes"] if v["name"] == "secrets"]
    secrets = [source["secret"]["name"] for source in projected["projected"]["sources"]]
    assert secrets == ["orders-superuser", "orders-replication", "orders-app"]


def test_pods_mount_the_server_and_replication_certificates_never_the_ca_key():
    pod = build_postgres_pod(instance())
    [tls] = [v for v in pod["spec"]["volumes"] if v["name"] == "tls"]
    sources = {source["secret"]["name"]: {item["key"]: item["path"] for item in source["secret"]["items"]}
               for source in tls["projected"]["sources"]}
    assert sources == {"orders-server": {"tls.crt": "server.crt", "tls.key": "server.key", "ca.crt": "ca.crt"},
                       "orders-replication-tls": {"tls.crt": "replication.crt", "tls.key": "replication.key"}}
    assert {"name": "PGOP_TLS_DIR", "value": "/etc/pgop/tls"} in container(pod)["env"]
    assert {"name": "tls", "mountPath": "/etc/pgop/tls", "readOnly": True} in container(pod)["volumeMounts"]


def test_pod_labels_resources_image_and_owner():
    pod = build_postgres_pod(instance(1, "replica", "basebackup", status={"role": "replica"}))
    assert pod["metadata"]["name"] == "orders-1"
    labels = pod["metadata"]["labels"]
    assert labels["pgop.io/cluster"] == "orders" and labels["pgop.io/instance"] == "orders-1"
    assert labels["pgop.io/role"] == "replica"
    assert container(pod)["resources"] == RESOURCES
    assert container(pod)["image"] == DEFAULT_IMAGE
    [owner] = pod["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("PgInstance", "orders-1", "inst-uid")
    assert pod["spec"]["serviceAccountName"] == "orders-agent"


def test_spec_image_reaches_the_pod():
    pod = build_postgres_pod(instance(cluster=make_cluster(image="registry.example/pg:15.9")))
    assert container(pod)["image"] == "registry.example/pg:15.9"


def test_pod_inputs_hash_changes_with_image_or_resources_only():
    base = instance()
    assert pod_inputs_hash(base) == pod_inputs_hash(instance())
    assert build_postgres_pod(base)["metadata"]["annotations"][ANNOTATION_POD_INPUTS] == pod_inputs_hash(base)
    assert pod_inputs_hash(instance(cluster=make_cluster(image="x/pg:15"))) != pod_inputs_hash(base)
    assert pod_inputs_hash(instance(cluster=make_cluster(resources={"limits": {"memory": "2Gi"}}))) != \
        pod_inputs_hash(base)
    tuned = instance(cluster=make_cluster(resources=RESOURCES, parameters={"work_mem": "64MB"}, synchronousReplicas=1))
    assert pod_inputs_hash(tuned) == pod_inputs_hash(base)  # config changes reload; no new pod


S3 = {"bucket": "pg-backups", "path": "shop/orders", "endpoint": "http://s3.local:7070",
      "region": "eu-west-1", "credentialsSecret": "s3-creds"}


def test_a_pod_of_a_cluster_with_backups_knows_where_to_archive():
    pod = build_postgres_pod(instance(cluster=make_cluster(resources=RESOURCES, backup={"s3": S3})))
    env = {e["name"]: e.get("value") for e in container(pod)["env"]}
    assert (env["PGOP_S3_BUCKET"], env["PGOP_S3_PATH"], env["PGOP_S3_ENDPOINT"], env["PGOP_S3_REGION"]) == \
        ("pg-backups", "shop/orders", "http://s3.local:7070", "eu-west-1")
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "s3-credentials"]
    [source] = volume["projected"]["sources"]
    # the whole Secret (keys ACCESS_KEY_ID, ACCESS_SECRET_KEY); optional, so a missing Secret
    # fails archiving (visible in status) rather than the database
    assert source["secret"] == {"name": "s3-creds", "optional": True}
    [mount] = [m for m in container(pod)["volumeMounts"] if m["name"] == "s3-credentials"]
    assert mount["readOnly"] is True and env["PGOP_S3_CREDENTIALS_DIR"] == mount["mountPath"]
    assert not any("valueFrom" in e and "secretKeyRef" in e["valueFrom"] for e in container(pod)["env"])
    bootstrap_env = {e["name"] for e in container(build_bootstrap_pod(
        instance(1, "replica", "basebackup", cluster=make_cluster(backup={"s3": S3}))))["env"]}
    assert "PGOP_S3_BUCKET" in bootstrap_env


def test_a_pod_without_backups_has_no_s3_settings_and_keeps_its_digest():
    pod = build_postgres_pod(instance())
    assert not [e for e in container(pod)["env"] if e["name"].startswith("PGOP_S3_")]
    assert "s3-credentials" not in {v["name"] for v in pod["spec"]["volumes"]}
    backed_up = instance(cluster=make_cluster(resources=RESOURCES, backup={"s3": S3}))
    # adding (or moving) the archive gives the pod its new settings: a new pod
    assert pod_inputs_hash(backed_up) != pod_inputs_hash(instance())
    moved = instance(cluster=make_cluster(resources=RESOURCES, backup={"s3": S3 | {"bucket": "other"}}))
    assert pod_inputs_hash(moved) != pod_inputs_hash(backed_up)


# -------------------------------------------------------------------------------- placement (issue 11)

AFFINITY = {"podAntiAffinityType": "required", "topologyKey": "topology.kubernetes.io/zone",
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "pg", "effect": "NoSchedule"}],
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["db"]}]}]}}}
SPREAD = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
           "labelSelector": {"matchLabels": {"pgop.io/cluster": "orders"}}}]


def _selects(selector, labels):
    if not matches(selector.get("matchLabels", {}), labels):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] in ("In", "NotIn")
        if (labels.get(expression["key"]) in expression["values"]) != (expression["operator"] == "In"):
            return False
    return True


def _avoids_exactly_the_other_instances(term, pod, pods):
    own = pod["metadata"]["labels"]["pgop.io/instance"]
    return all(_selects(term["labelSelector"], p["metadata"]["labels"]) ==
               (p["metadata"]["labels"]["pgop.io/instance"] != own) for p in pods)


def _all_pods(cluster):
    return [build_postgres_pod(instance(0, "primary", cluster=cluster)),
            build_postgres_pod(instance(1, "replica", "basebackup", cluster=cluster)),
            build_bootstrap_pod(instance(2, "replica", "basebackup", cluster=cluster))]


def _anti_terms(pod):
    anti = pod["spec"]["affinity"]["podAntiAffinity"]
    return ([("required", term) for term in anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])] +
            [("preferred", weighted["podAffinityTerm"])
             for weighted in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])])


def own_successor(pod):
    """The instance's other pod: its Postgres pod after its bootstrap pod, or the next one of a rollout."""
    name = pod["metadata"]["labels"]["pgop.io/instance"]
    return {"metadata": {"labels": dict(pod["metadata"]["labels"], **{"pgop.io/instance": name,
                                                                      "pgop.io/component": "postgres"})}}


def test_without_spec_affinity_every_pod_prefers_a_node_of_its_own():
    other = build_postgres_pod(instance(0, "primary", cluster=make_cluster(name="billing")))
    pods = _all_pods(make_cluster())
    for pod in pods:
        [(kind, term)] = _anti_terms(pod)
        assert (kind, term["topologyKey"]) == ("preferred", "kubernetes.io/hostname")
        # the term avoids the Postgres and bootstrap pods of the cluster's other instances, not
        # the instance's own (a replaced pod may still be terminating), nor other clusters' pods
        assert _avoids_exactly_the_other_instances(term, pod, pods + [own_successor(pod)])
        assert not _selects(term["labelSelector"], other["metadata"]["labels"])
        assert not {"nodeSelector", "tolerations", "topologySpreadConstraints"} & set(pod["spec"])
        assert "nodeAffinity" not in pod["spec"]["affinity"]


def test_required_anti_affinity_reaches_postgres_and_bootstrap_pods():
    cluster = make_cluster(affinity={"podAntiAffinityType": "required"})
    pods = _all_pods(cluster)
    for pod in pods:
        [(kind, term)] = _anti_terms(pod)
        assert (kind, term["topologyKey"]) == ("required", "kubernetes.io/hostname")
        # with WaitForFirstConsumer storage the bootstrap pod places the volume: it must avoid
        # (and be avoided by) the other instances' pods too
        assert _avoids_exactly_the_other_instances(term, pod, pods + [own_successor(pod)])
    assert cluster.spec.validate() == []


def test_placement_fields_pass_through_to_both_pods():
    cluster = make_cluster(affinity=AFFINITY, topologySpreadConstraints=SPREAD)
    for pod in _all_pods(cluster):
        spec = pod["spec"]
        [(kind, term)] = _anti_terms(pod)
        assert (kind, term["topologyKey"]) == ("required", "topology.kubernetes.io/zone")
        assert spec["nodeSelector"] == {"disk": "ssd"}
        assert spec["tolerations"] == AFFINITY["tolerations"]
        assert spec["affinity"]["nodeAffinity"] == AFFINITY["nodeAffinity"]
        assert spec["topologySpreadConstraints"] == SPREAD


def test_the_instance_carries_the_placement_only_when_set():
    plain_spec = build_instance(make_cluster(), 0, "primary", "initdb")["spec"]
    assert "affinity" not in plain_spec and "topologySpreadConstraints" not in plain_spec
    spec = build_instance(make_cluster(affinity={"nodeSelector": {"disk": "ssd"}}), 0, "primary", "initdb")["spec"]
    assert spec["affinity"] == {"podAntiAffinityType": "preferred", "topologyKey": "kubernetes.io/hostname",
                                "nodeSelector": {"disk": "ssd"}}
    assert "topologySpreadConstraints" not in spec


def test_placement_enters_the_pod_digest_only_when_set():
    base = instance()
    # an upgrade to an operator that knows spec.affinity restarts no pod of a cluster without it
    assert pod_inputs_hash(base) == pod_inputs_hash(instance(cluster=make_cluster(resources=RESOURCES)))
    placed = instance(cluster=make_cluster(resources=RESOURCES, affinity={"podAntiAffinityType": "required"}))
    assert pod_inputs_hash(placed) != pod_inputs_hash(base)
    assert pod_inputs_hash(instance(cluster=make_cluster(resources=RESOURCES, affinity=AFFINITY))) != \
        pod_inputs_hash(placed)
    spread = instance(cluster=make_cluster(resources=RESOURCES, topologySpreadConstraints=SPREAD))
    assert pod_inputs_hash(spread) != pod_inputs_hash(base)


def test_an_unknown_anti_affinity_type_is_refused():
    errors = make_cluster(affinity={"podAntiAffinityType": "sometimes"}).spec.validate()
    assert [path for path, _ in errors] == ["spec.affinity.podAntiAffinityType"]


def test_placed_pginstance_spec_fits_the_pginstance_crd():
    cluster = make_cluster(affinity=AFFINITY, topologySpreadConstraints=SPREAD)
    body = build_instance(cluster, 0, "primary", "initdb")
    assert pruned_paths(body["spec"], _crd_schema("pginstances.yaml")["properties"]["spec"], "spec") == []
    cluster_spec = {"storage": {"size": "1Gi"}, "affinity": AFFINITY, "topologySpreadConstraints": SPREAD}
    assert pruned_paths(cluster_spec, _crd_schema("pgclusters.yaml")["properties"]["spec"], "spec") == []


# -------------------------------------------------------------------------------- bootstrap pod

@pytest.mark.parametrize("mode", ["initdb", "basebackup", "recovery"])
def test_bootstrap_pod_runs_its_mode_once_over_the_same_volume(mode):
    pod = build_bootstrap_pod(instance(1, "replica", mode))
    assert pod["metadata"]["name"] == "orders-1-bootstrap"
    assert container(pod)["command"] == ["pgop", "agent", "bootstrap", "--mode", mode]
    assert pod["spec"]["restartPolicy"] == "OnFailure"
    [claim] = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"]["claimName"] == "orders-1"
    assert "pgop.io/role" not in pod["metadata"]["labels"]
    assert "readinessProbe" not in container(pod)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


# ---------------------------------------------------------------------------------------- PVC

def test_pvc_asks_for_the_spec_size_and_class():
    cluster = make_cluster(storage={"size": "5Gi", "storageClassName": "fast"})
    pvc = build_pvc(instance(1, "replica", cluster=cluster))
    assert pvc["metadata"]["name"] == "orders-1"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pvc["spec"]["storageClassName"] == "fast"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["metadata"]["annotations"]["pgop.io/cluster-uid"] == "cluster-uid-orders"
    assert "storageClassName" not in build_pvc(instance())["spec"]  # the default StorageClass


def test_retained_volumes_have_no_owner_and_deleted_ones_follow_their_instance():
    assert "ownerReferences" not in build_pvc(instance())["metadata"]
    deleting = instance(cluster=make_cluster(storage={"size": "1Gi", "reclaimPolicy": "Delete"}))
    [owner] = build_pvc(deleting)["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("PgInstance", "inst-uid")


def test_a_volume_knows_whether_and_for_whom_it_was_initialised():
    mine = instance()
    pvc = build_pvc(mine)
    assert not is_initialized(pvc)
    pvc["metadata"]["annotations"].update(mark_initialized_patch(mine, "initdb")["metadata"]["annotations"])
    assert is_initialized(pvc) and not holds_foreign_data(pvc, mine)
    pvc["metadata"]["annotations"]["pgop.io/cluster-uid"] = "an-older-cluster"
    assert holds_foreign_data(pvc, mine)
    del pvc["metadata"]["annotations"]["pgop.io/cluster-uid"]  # a person says: adopt it
    assert not holds_foreign_data(pvc, mine)


# ------------------------------------------------------------------------------------ Secrets

def test_each_secret_holds_what_a_client_needs_to_connect():
    secrets = {s["metadata"]["name"]: s["stringData"] for s in build_cluster_secrets(make_cluster(), random.Random(7))}
    assert set(secrets) == {"orders-superuser", "orders-app", "orders-replication"}
    for data in secrets.values():
        assert set(data) == {"username", "password", "host", "port", "dbname", "uri"}
        assert data["host"] == "orders-rw.shop.svc" and data["port"] == "5432"
        uri = urlparse(data["uri"])
        assert (uri.username, uri.password, uri.hostname, uri.port, uri.path) == \
            (data["username"], data["password"], data["host"], 5432, "/" + data["dbname"])
    assert (secrets["orders-app"]["username"], secrets["orders-app"]["dbname"]) == ("app", "app")
    assert secrets["orders-superuser"]["username"] == "postgres"
    assert secrets["orders-replication"]["username"] == "streaming_replica"


def test_app_secret_follows_the_initdb_owner_and_database():
    cluster = make_cluster(bootstrap={"initdb": {"database": "shop", "owner": "clerk"}})
    app = next(s for s in build_cluster_secrets(cluster, random.Random(1)) if s["metadata"]["name"] == "orders-app")
    assert (app["stringData"]["username"], app["stringData"]["dbname"]) == ("clerk", "shop")


def test_passwords_are_long_distinct_and_repeatable_from_a_seed():
    a = build_cluster_secrets(make_cluster(), random.Random(42))
    b = build_cluster_secrets(make_cluster(), random.Random(42))
    passwords = [s["stringData"]["password"] for s in a]
    assert passwords == [s["stringData"]["password"] for s in b]
    assert len(set(passwords)) == 3
    assert all(len(p) == 32 and set(p) <= set(PASSWORD_ALPHABET) for p in passwords)
    assert generate_password(random.Random(1)) != generate_password(random.Random(2))


def test_short_passwords_are_refused():
    with pytest.raises(ValueError):
        generate_password(random.Random(1), length=8)


# ---------------------------------------------------------------------------------------- PDB

@pytest.mark.parametrize("instances, kept", [(1, 0), (2, 0), (3, 1), (5, 3)])
def test_drains_take_one_replica_at_a_time(instances, kept):
    assert min_available(instances) == kept
    assert build_pdb(make_cluster(instances=instances))["spec"]["minAvailable"] == kept


@pytest.mark.parametrize("instances", [1, 3])
def test_drains_never_evict_the_primary(instances):
    pdb = build_primary_pdb(make_cluster(instances=instances))
    assert (pdb["metadata"]["name"], pdb["spec"]["minAvailable"]) == ("orders-primary", 1)


def test_the_budgets_split_the_postgres_pods_by_role():
    def covered(pdb):
        return {name for name, labels in _pods().items() if matches(pdb["spec"]["selector"]["matchLabels"], labels)}
    # A pod being promoted (label pending) is in neither: it is not yet the primary -rw reaches.
    assert covered(build_primary_pdb(make_cluster())) == {"primary"}
    assert covered(build_pdb(make_cluster())) == {"replica"}


# --------------------------------------------------------------------------------------- RBAC

def _rules():
    return build_role(make_cluster(backup={"s3": {"bucket": "b", "credentialsSecret": "s3-creds"}}))["rules"]


def _allowed(rules, group, resource, verb, name=None):
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               and (name is None or "resourceNames" not in r or name in r["resourceNames"]) for r in rules)


def test_agent_may_watch_instances_and_write_their_status():
    rules = _rules()
    assert _allowed(rules, "pgop.io", "pginstances", "get")
    assert _allowed(rules, "pgop.io", "pginstances", "watch")
    assert _allowed(rules, "pgop.io", "pginstances/status", "patch")
    assert not _allowed(rules, "pgop.io", "pginstances", "patch")  # the spec is the operator's
    assert _allowed(rules, "", "pods", "list")
    assert not _allowed(rules, "", "pods", "delete")


def test_agent_reads_its_own_secrets_and_the_s3_credentials_only():
    rules = _rules()
    for secret in ("orders-superuser", "orders-app", "orders-replication", "s3-creds"):
        assert _allowed(rules, "", "secrets", "get", secret)
    assert not _allowed(rules, "", "secrets", "get", "billing-superuser")
    assert not _allowed(rules, "", "secrets", "list")
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in rules)


def test_binding_grants_the_role_to_the_agents_account():
    cluster = make_cluster()
    binding = build_role_binding(cluster)
    assert binding["roleRef"]["name"] == build_role(cluster)["metadata"]["name"] == "orders-agent"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "orders-agent", "namespace": "shop"}]
    assert build_service_account(cluster)["metadata"]["name"] == names.agent_account("orders")


# ---------------------------------------------------------------------------------- PgInstance

def test_instance_is_owned_by_its_cluster_and_named_by_ordinal():
    body = build_instance(make_cluster(), 2, "replica", "basebackup")
    assert body["metadata"]["name"] == "orders-2"
    assert body["metadata"]["labels"]["pgop.io/cluster"] == "orders"
    [owner] = body["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == \
        ("PgCluster", "orders", "cluster-uid-orders", True)
    spec = body["spec"]
    assert (spec["cluster"], spec["ordinal"], spec["role"], spec["bootstrap"], spec["fenced"]) == \
        ("orders", 2, "replica", "basebackup", False)
    assert "initdb" not in spec


def test_first_primary_carries_how_to_make_its_data():
    initdb = build_instance(make_cluster(), 0, "primary", "initdb")["spec"]
    assert initdb["initdb"] == {"database": "app", "owner": "app"}
    restored = make_cluster(bootstrap={"recovery": {"source": "orders-old", "targetTime": "2026-11-22T03:00:00Z"}})
    recovery = build_instance(restored, 0, "primary", "recovery")["spec"]
    assert recovery["recovery"] == {"source": "orders-old", "targetTime": "2026-11-22T03:00:00Z"}


def test_config_hash_follows_what_the_agent_renders_only():
    base = make_cluster().spec
    assert config_hash(base) == config_hash(make_cluster().spec)
    assert config_hash(make_cluster(parameters={"work_mem": "8MB"}).spec) != config_hash(base)
    assert config_hash(make_cluster(synchronousReplicas=1).spec) != config_hash(base)
    assert config_hash(make_cluster(instances=5).spec) == config_hash(base)
    # Spelling a default out changes nothing the agent renders.
    assert config_hash(make_cluster(parameters={"hot_standby_feedback": "on"}).spec) == config_hash(base)


# ------------------------------------------------------------------- objects fit their CRDs

def _crd_schema(file):
    from pathlib import Path

    import yaml
    crd = yaml.safe_load((Path(__file__).parents[2] / "crds" / file).read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def pruned_paths(value, schema, path=""):
    """Paths the API server would silently drop from `value` under a structural schema."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-int-or-string"):
        return []
    if isinstance(value, dict):
        properties, extra = schema.get("properties"), schema.get("additionalProperties")
        if properties is None and extra is None:
            return []
        dropped = []
        for key, item in value.items():
            sub = (properties or {}).get(key, extra if isinstance(extra, dict) else None)
            if sub is None:
                dropped.append(f"{path}.{key}")
            else:
                dropped += pruned_paths(item, sub, f"{path}.{key}")
        return dropped
    if isinstance(value, list) and "items" in schema:
        return [p for item in value for p in pruned_paths(item, schema["items"], f"{path}[]")]
    return []


def test_cluster_status_fits_the_pgcluster_crd():
    from pgop.cluster.status import cluster_status
    from tests.unit.world import NOW, running_cluster
    world, cluster = running_cluster(2)
    status = cluster_status(cluster, world.all("PgInstance"), now=NOW)
    assert pruned_paths(status, _crd_schema("pgclusters.yaml")["properties"]["status"], "status") == []


def test_pginstance_spec_fits_the_pginstance_crd():
    cluster = make_cluster(resources=RESOURCES, parameters={"work_mem": "8MB"}, synchronousReplicas=1,
                           backup={"s3": {"bucket": "b", "credentialsSecret": "s"}})
    body = build_instance(cluster, 0, "primary", "initdb")
    assert pruned_paths(body["spec"], _crd_schema("pginstances.yaml")["properties"]["spec"], "spec") == []


# ------------------------------------------------------------------------ Pod Security "restricted"

_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}


def _restricted_violations(pod) -> list[str]:
    """The rules of the Pod Security Standard "restricted" (kubernetes.io/docs/concepts/security/
    pod-security-standards). e2e/test_pod_security.py shows the real admission; this names the
    rule a change would break."""
    spec, found = pod["spec"], []
    pod_security = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            found.append(key)
    for volume in spec.get("volumes") or ():
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {kinds}")
    if (pod_security.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        found.append("seccompProfile")
    for c in [*(spec.get("initContainers") or ()), *spec["containers"]]:
        security = c.get("securityContext") or {}
        if security.get("privileged"):
            found.append(f"{c['name']}: privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            found.append(f"{c['name']}: allowPrivilegeEscalation")
        caps = security.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or ()) or set(caps.get("add") or ()) - {"NET_BIND_SERVICE"}:
            found.append(f"{c['name']}: capabilities")
        if not security.get("runAsNonRoot", pod_security.get("runAsNonRoot")):
            found.append(f"{c['name']}: runAsNonRoot")
        if security.get("runAsUser", pod_security.get("runAsUser")) == 0:
            found.append(f"{c['name']}: runAsUser 0")
    return found


@pytest.mark.parametrize("which", ["postgres", "postgres-bootstrapping", "bootstrap-initdb", "bootstrap-recovery",
                                   "backup"])
def test_every_pod_pgop_makes_meets_pod_security_restricted(which):
    from pgop.backup.pod import build_backup_pod
    if which == "postgres":
        pod = build_postgres_pod(instance())
    elif which == "postgres-bootstrapping":
        pod = build_postgres_pod(instance(1, "replica", "basebackup"), bootstrap=True)
        # no init container: the agent bootstraps in the Postgres container, as the same non-root user
        assert "initContainers" not in pod["spec"]
        assert _restricted_violations(pod) == []
        return
    elif which == "backup":
        pod = build_backup_pod("nightly", "uid-1", instance(1, "replica", "basebackup"), "10.0.0.7")
    else:
        pod = build_bootstrap_pod(instance(0, "primary", which.split("-")[1]))
    assert _restricted_violations(pod) == []
    # the volume is owned through fsGroup, not by a root init container
    assert "initContainers" not in pod["spec"]


def test_a_bootstrapping_postgres_pod_fills_its_volume_first_only_while_its_annotation_permits():
    pod = build_postgres_pod(instance(1, "replica", "basebackup"), bootstrap=True)
    [postgres] = pod["spec"]["containers"]
    assert postgres["command"] == ["pgop", "agent", "run"]
    [permit] = [e for e in postgres["env"] if e["name"] == "PGOP_BOOTSTRAP_PERMIT"]
    assert permit["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.annotations['pgop.io/bootstrap-mode']"
    assert pod["metadata"]["annotations"]["pgop.io/bootstrap-mode"] == "basebackup"
    # the pod for a marked volume has no permission to pass
    running = build_postgres_pod(instance(1, "replica", "basebackup"))
    assert "PGOP_BOOTSTRAP_PERMIT" not in {e["name"] for e in running["spec"]["containers"][0]["env"]}
    # a failed bootstrap says why in the pod status
    assert postgres["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # the same inputs as the pod that runs on a marked volume: marking it restarts nothing
    assert pod["metadata"]["annotations"]["pgop.io/pod-inputs-hash"] == \
        build_postgres_pod(instance(1, "replica", "basebackup"))["metadata"]["annotations"]["pgop.io/pod-inputs-hash"]


def test_a_restore_never_runs_in_the_postgres_pod():
    with pytest.raises(ValueError, match="recovery runs in a bootstrap pod"):
        build_postgres_pod(instance(0, "primary", "recovery"), bootstrap=True)
