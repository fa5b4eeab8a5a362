"""Certificates (pgop.specs.tls), their renewal in the cluster plan, and the TLS side of
pg_hba.conf and postgresql.conf (pgop.kernel.pgconfig)."""
from __future__ import annotations

import base64
from datetime import timedelta

from cryptography import x509
from cryptography.x509.oid import NameOID

from pgop.kernel import pgconfig
from pgop.specs import tls
from tests.unit.world import NOW, make_cluster, plan, running_cluster


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_a_server_certificate_is_signed_by_the_cluster_ca_and_names_every_service():
    cluster = make_cluster()
    ca = tls.issue_ca("orders", NOW)
    names = tls.server_names(cluster)
    leaf = tls.issue_leaf(ca, "orders-rw", names, NOW, server=True)
    cert = _cert(leaf.cert)
    cert.verify_directly_issued_by(_cert(ca.cert))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert {"orders-rw", "orders-rw.shop.svc", "orders-ro.shop.svc.cluster.local", "orders-r.shop"} <= set(sans)
    assert tls.renewal_reason(leaf.cert, ca.cert, NOW, names, "orders-rw") == ""


def test_the_replication_certificate_names_the_replication_role():
    ca = tls.issue_ca("orders", NOW)
    leaf = tls.issue_leaf(ca, pgconfig.REPLICATION_USER, [], NOW, server=False)
    [cn] = _cert(leaf.cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn.value == "streaming_replica"  # pg_hba `cert` maps the CN to the role


def test_renewal_before_expiry_on_another_ca_or_other_names():
    cluster = make_cluster()
    ca = tls.issue_ca("orders", NOW)
    names = tls.server_names(cluster)
    leaf = tls.issue_leaf(ca, "orders-rw", names, NOW, server=True)
    assert tls.renewal_reason(None, ca.cert, NOW) == "no certificate yet"
    almost = NOW + tls.LEAF_VALIDITY - tls.RENEW_BEFORE + timedelta(days=1)
    assert "expires" in tls.renewal_reason(leaf.cert, ca.cert, almost, names, "orders-rw")
    assert tls.renewal_reason(leaf.cert, ca.cert, almost - timedelta(days=2), names, "orders-rw") == ""
    other = tls.issue_ca("orders", NOW)
    assert tls.renewal_reason(leaf.cert, other.cert, NOW, names) != ""
    assert "names differ" in tls.renewal_reason(leaf.cert, ca.cert, NOW, names[:4])


def _secret_cert(world, name):
    return base64.b64decode(world.get("Secret", name)["data"]["tls.crt"]).decode()


def test_the_plan_makes_the_ca_once_and_renews_leaves_a_month_before_they_expire():
    world, cluster = running_cluster(1)
    assert {"orders-ca", "orders-server", "orders-replication-tls"} <= {s["metadata"]["name"] for s in world.all("Secret")}
    first = _secret_cert(world, "orders-server")
    assert not [a for a in plan(world, cluster) if a.kind == "Secret"]  # nothing to do while valid
    later = NOW + tls.LEAF_VALIDITY - tls.RENEW_BEFORE + timedelta(hours=1)
    renewals = [a for a in plan(world, cluster, now=later) if a.kind == "Secret"]
    assert sorted(a.name for a in renewals) == ["orders-replication-tls", "orders-server"]
    assert all(a.verb == "patch" and "expires" in a.reason for a in renewals)
    world.apply(renewals)
    assert _secret_cert(world, "orders-server") != first
    assert not [a for a in plan(world, cluster, now=later) if a.kind == "Secret"]
    # The CA stays: the certificates clients trust do not change under them.
    assert [a for a in renewals if a.name == "orders-ca"] == []


def test_the_app_secret_asks_for_tls_and_carries_the_ca():
    world, cluster = running_cluster(1)
    app = world.get("Secret", "orders-app")["data"]
    uri = base64.b64decode(app["uri"]).decode()
    assert uri.endswith("?sslmode=require")
    ca = base64.b64decode(world.get("Secret", "orders-ca")["data"]["ca.crt"]).decode()
    assert base64.b64decode(app["ca.crt"]).decode() == ca


def test_with_tls_nothing_goes_in_plaintext_and_the_superuser_not_over_the_network():
    rules = pgconfig.hba_rules(tls=True)
    text = "\n".join(rules)
    first_host = next(i for i, r in enumerate(rules) if not r.startswith("local"))
    assert rules[first_host].startswith("hostnossl replication") and "reject" in rules[first_host]
    assert "hostnossl all           all                all      reject" in text
    assert not any(r.startswith("host ") for r in rules)  # every network line is hostssl/hostnossl
    replication = [r for r in rules if "streaming_replica" in r]
    assert replication and all(r.split()[-1] == "cert" for r in replication)
    superuser = [r for r in rules if r.split()[2] == "postgres" and not r.startswith("local")]
    assert [r.split()[-1] for r in superuser] == ["reject"]
    allowed = pgconfig.hba_rules(tls=True, superuser_over_network=True)
    assert not [r for r in allowed if r.split()[2] == "postgres" and r.split()[-1] == "reject"]


def test_a_replica_streams_over_tls_checking_the_primarys_name():
    files = pgconfig.TlsFiles("/etc/pgop/tls")
    source = pgconfig.ReplicationSource(host="orders-rw.shop.svc", application_name="orders-1",
                                        slot_name="pgop_orders_1", passfile="/run/pgpass", tls=files)
    conninfo = pgconfig.primary_conninfo(source)
    assert "sslmode=verify-full" in conninfo and "sslrootcert=/etc/pgop/tls/ca.crt" in conninfo
    assert "sslcert=/etc/pgop/tls/replication.crt" in conninfo and "sslkey=/etc/pgop/tls/replication.key" in conninfo
    by_ip = pgconfig.primary_conninfo(pgconfig.ReplicationSource(
        host="10.244.0.12", application_name="orders-1", slot_name="pgop_orders_1", passfile="/run/pgpass", tls=files))
    # no certificate names a pod IP: the server is checked against the cluster's own CA only
    assert "host=10.244.0.12" in by_ip and "sslmode=verify-ca" in by_ip and "sslrootcert=/etc/pgop/tls/ca.crt" in by_ip
    settings = pgconfig.postgresql_settings(cluster_name="orders", parameters={}, tls=files)
    assert (settings["ssl"], settings["ssl_cert_file"], settings["ssl_key_file"], settings["ssl_ca_file"]) == \
        ("on", "/etc/pgop/tls/server.crt", "/etc/pgop/tls/server.key", "/etc/pgop/tls/ca.crt")


def test_long_cluster_and_namespace_names_still_get_certificates_that_are_not_renewed_each_pass():
    from datetime import UTC, datetime

    from pgop.specs import tls as t
    now = datetime(2026, 12, 2, tzinfo=UTC)
    long_name = "n" * 63
    ca = t.issue_ca(f"pgop CA {now:%Y-%m-%d %H:%M} {long_name}.{long_name}", now)
    leaf = t.issue_leaf(ca, f"{long_name}-rw.{long_name}.svc", [f"{long_name}-rw"], now, True)
    assert t.renewal_reason(leaf.cert, ca.cert, now, [f"{long_name}-rw"], f"{long_name}-rw.{long_name}.svc") == ""
