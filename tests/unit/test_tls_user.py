"""Certificates the user brings (spec.tls): the checks (pgop.specs.user_tls), the condition, the
Secrets the pods mount and what the operator stops making."""
from __future__ import annotations

import base64
from dataclasses import replace
from datetime import timedelta

from pgop.cluster.plan import plan_cluster
from pgop.kernel import pgconfig
from pgop.kernel.model import Cluster, Instance
from pgop.specs import tls, user_tls
from pgop.specs.pods import pod_inputs_hash, tls_volume
from tests.unit.world import NOW, World, cluster_body, converge, make_cluster

SERVICE_NAMES = ["orders-rw.shop.svc", "orders-ro.shop.svc", "orders-r.shop.svc"]


def tls_secret(name="orders-cert", ca=None, dns=SERVICE_NAMES, issued=NOW, drop=()):
    """A Secret as cert-manager writes it (type kubernetes.io/tls, data base64)."""
    ca = ca or tls.issue_ca("user CA", NOW - timedelta(days=1))
    leaf = tls.issue_leaf(ca, "orders", list(dns), issued, server=True)
    data = {"tls.crt": leaf.cert, "tls.key": leaf.key, "ca.crt": ca.cert}
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": "shop"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items() if k not in drop}}


def check(secret, now=NOW):
    return user_tls.check_server_secret(make_cluster(), "orders-cert", secret, now)


def reasons(problems):
    return [reason for reason, _ in problems]


def test_a_good_cert_manager_secret_passes():
    assert check(tls_secret()) == []
    assert check(tls_secret(dns=["*.shop.svc"])) == []  # a wildcard covers every Service


def test_a_missing_secret_or_key_is_named():
    [(reason, message)] = check(None)
    assert reason == "SecretNotFound"
    assert message == "spec.tls.serverSecret: Secret orders-cert not found in namespace shop"
    [(reason, message)] = check(tls_secret(drop=("ca.crt", "tls.key")))
    assert reason == "SecretKeyMissing" and "has no tls.key, ca.crt" in message


def test_a_certificate_that_does_not_name_the_services_is_refused():
    [(reason, message)] = check(tls_secret(dns=["orders-rw.shop.svc", "db.example.com"]))
    assert reason == "NamesMissing"
    assert "orders-ro, orders-r" in message and "db.example.com" in message
    assert message.startswith("spec.tls.serverSecret: Secret orders-cert")
    # a wildcard of another namespace covers nothing here
    assert reasons(check(tls_secret(dns=["*.other.svc"]))) == ["NamesMissing"]


def test_an_expired_certificate_is_refused_with_its_date():
    [(reason, message)] = check(tls_secret(issued=NOW - timedelta(days=100)))
    assert reason == "CertificateExpired" and "expired 2026-" in message


def test_a_certificate_of_another_ca_or_another_key_is_refused():
    other = tls_secret()
    mixed = tls_secret()
    mixed["data"]["ca.crt"] = other["data"]["ca.crt"]
    assert reasons(check(mixed)) == ["NotSignedByCA"]
    mixed = tls_secret()
    mixed["data"]["tls.key"] = other["data"]["tls.key"]
    [(reason, message)] = check(mixed)
    assert reason == "KeyMismatch"
    assert "PRIVATE KEY" not in message and base64.b64decode(other["data"]["tls.key"]).decode() not in message


def test_unreadable_material_never_lands_in_the_message():
    broken = tls_secret()
    key = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n"
    broken["data"]["tls.key"] = base64.b64encode(key.encode()).decode()
    [(reason, message)] = check(broken)
    assert reason == "CertificateUnreadable" and "c2VjcmV0" not in message and "tls.key" in message


def test_a_client_ca_secret_is_checked():
    cluster = make_cluster()
    assert user_tls.check_client_ca_secret(cluster, "clients", tls_secret(), NOW) == []
    [(reason, message)] = user_tls.check_client_ca_secret(cluster, "clients", None, NOW)
    assert reason == "SecretNotFound" and message.startswith("spec.tls.clientCASecret: Secret clients")
    assert reasons(user_tls.check_client_ca_secret(cluster, "clients", tls_secret(drop=("ca.crt",)), NOW)) \
        == ["SecretKeyMissing"]


# ------------------------------------------------------------------------------ in the plan

def _plan(world, cluster, user_secrets, now=NOW):
    observed = replace(world.observed_cluster(cluster.name), user_secrets=user_secrets)
    return plan_cluster(world.cluster(cluster), observed, now=now)


def _text(world, secret, key):
    return base64.b64decode(world.get("Secret", secret)["data"][key]).decode()


def _cluster(**tls_spec):
    return Cluster.from_object(cluster_body(instances=2, tls=tls_spec))


def test_with_a_server_secret_the_operator_makes_no_server_certificate_and_the_app_trusts_its_issuer():
    user = tls_secret()
    clients = tls_secret("clients")
    cluster = _cluster(serverSecret="orders-cert", clientCASecret="clients")
    world = World()
    secrets = {"orders-cert": user, "clients": clients}
    for _ in range(10):
        actions = _plan(world, cluster, secrets)
        if not actions:
            break
        world.apply(actions)
        world.settle_all()
    names = {s["metadata"]["name"] for s in world.all("Secret")}
    assert "orders-server" not in names and {"orders-ca", "orders-replication-tls"} <= names
    user_ca = base64.b64decode(user["data"]["ca.crt"]).decode()
    assert _text(world, "orders-app", "ca.crt") == user_ca
    # ssl_ca_file: the cluster's CA (replication certificates) and the user's client CA
    client_bundle = _text(world, "orders-replication-tls", "ca.crt")
    fps = pgconfig.certificate_fingerprints
    assert fps(client_bundle) == fps(_text(world, "orders-ca", "ca.crt")) + \
        fps(base64.b64decode(clients["data"]["ca.crt"]).decode())
    [ready] = [c for c in _plan(world, cluster, secrets).conditions if c["type"] == "CertificatesReady"]
    assert ready["status"] == "True" and "orders-cert" in ready["message"]

    # The pods mount the user's Secret; the instances carry spec.tls, so setting it moved the pods.
    instance = Instance.from_object(world.get("PgInstance", "orders-0"))
    assert instance.spec.tls is not None and instance.spec.tls.server_secret == "orders-cert"
    volume = tls_volume("orders", instance.spec.tls)
    sources = {s["secret"]["name"]: {i["path"] for i in s["secret"]["items"]} for s in volume["projected"]["sources"]}
    assert sources == {"orders-cert": {"server.crt", "server.key", "server-ca.crt"},
                       "orders-replication-tls": {"replication.crt", "replication.key", "ca.crt"}}
    plain = Instance.from_object({**world.get("PgInstance", "orders-0"),
                                  "spec": {k: v for k, v in world.get("PgInstance", "orders-0")["spec"].items()
                                           if k != "tls"}})
    assert pod_inputs_hash(plain) != pod_inputs_hash(instance)


def test_a_bad_user_secret_gives_the_condition_with_reason_and_field():
    cluster = _cluster(serverSecret="orders-cert")
    world = World()
    world.apply(_plan(world, cluster, {"orders-cert": None}))
    [ready] = [c for c in _plan(world, cluster, {"orders-cert": None}).conditions if c["type"] == "CertificatesReady"]
    assert ready["status"] == "False" and ready["reason"] == "SecretNotFound"
    assert "spec.tls.serverSecret: Secret orders-cert not found" in ready["message"]
    expired = tls_secret(issued=NOW - timedelta(days=95))
    [ready] = [c for c in _plan(world, cluster, {"orders-cert": expired}).conditions
               if c["type"] == "CertificatesReady"]
    assert ready["reason"] == "CertificateExpired"


def test_without_spec_tls_nothing_changes_for_existing_pods():
    world = World()
    cluster = make_cluster(instances=1)
    converge(world, cluster)
    instance = Instance.from_object(world.get("PgInstance", "orders-0"))
    assert "tls" not in world.get("PgInstance", "orders-0")["spec"]
    volume = tls_volume("orders", instance.spec.tls)
    paths = {i["path"] for s in volume["projected"]["sources"] for i in s["secret"]["items"]}
    assert "server-ca.crt" not in paths and "ca.crt" in paths
    files = pgconfig.TlsFiles("/etc/pgop/tls")
    assert files.server_ca == files.ca == "/etc/pgop/tls/ca.crt"
    assert pgconfig.TlsFiles("/t", True).client_options("10.0.0.1")["sslrootcert"] == "/t/server-ca.crt"
