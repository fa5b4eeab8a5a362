"""Certificates the user brings (spec.tls, cert-manager's Secret layout) and the rotation of the
cluster's own CA without a failed connection (issue 12), checked from outside the pods."""
from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest

from e2e.test_pgcluster import exec_psql, manifest, pg_connect, secret, service_ip, wait_ready
from e2e.test_tls import served_certificate
from pgop.specs import ca_rotation, tls

pytestmark = pytest.mark.cluster

NAME = "bringdb"
ROTATED = "rotdb"


def _tls_secret_manifest(name: str, ns: str, cert: str, key: str, ca: str) -> str:
    """A Secret as cert-manager writes it."""
    def block(text: str) -> str:
        return "\n".join("    " + line for line in text.strip().splitlines())
    return f"""
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata: {{name: {name}, namespace: {ns}}}
stringData:
  tls.crt: |
{block(cert)}
  tls.key: |
{block(key)}
  ca.crt: |
{block(ca)}
"""


def _condition(kubectl, ns, name, type_):
    status = kubectl.json("-n", ns, "get", "pgcluster", name).get("status") or {}
    return next((c for c in status.get("conditions") or () if c.get("type") == type_), None)


def _app(kubectl, ns, name, ca_path, **kw):
    options = dict(host=f"{name}-rw.{ns}.svc", hostaddr=service_ip(kubectl, ns, f"{name}-rw"), port=5432,
                   dbname="app", user="app", password=secret(kubectl, ns, f"{name}-app", "password"),
                   sslmode="verify-full", sslrootcert=str(ca_path))
    options.update(kw)
    return options


def test_a_user_brought_server_certificate_is_served(kubectl, namespace, operator, tmp_path):
    ns, now = namespace, datetime.now(UTC)
    user_ca = tls.issue_ca("user CA (cert-manager style)", now)
    names = [f"{NAME}-{s}.{ns}.svc" for s in ("rw", "ro", "r")]
    leaf = tls.issue_leaf(user_ca, names[0], names, now, server=True)
    kubectl("apply", "-f", "-", input=_tls_secret_manifest(f"{NAME}-cert", ns, leaf.cert, leaf.key, user_ca.cert))
    kubectl("apply", "-f", "-", input=manifest(NAME, ns, instances=2, sync=1,
                                                extra=f"  tls: {{serverSecret: {NAME}-cert}}\n"))
    wait_ready(kubectl, ns, NAME, 2)
    ready = kubectl.wait_for(lambda: (c := _condition(kubectl, ns, NAME, "CertificatesReady")) and c,
                             "CertificatesReady", 60)
    assert ready["status"] == "True" and f"{NAME}-cert" in ready["message"]
    # The app Secret carries the user's CA: what checks the server now.
    assert secret(kubectl, ns, f"{NAME}-app", "ca.crt").strip() == user_ca.cert.strip()
    user_path, operator_path = tmp_path / "user-ca.crt", tmp_path / "operator-ca.crt"
    user_path.write_text(user_ca.cert)
    operator_path.write_text(secret(kubectl, ns, f"{NAME}-ca", "ca.crt"))
    with pg_connect(**_app(kubectl, ns, NAME, user_path)) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    with pytest.raises(psycopg.OperationalError) as failed:
        psycopg.connect(connect_timeout=5, **_app(kubectl, ns, NAME, operator_path))
    assert "certificate verify failed" in str(failed.value)
    # Replicas check the user's certificate with its issuer (server-ca.crt) and still stream on TLS.
    primary = kubectl.json("-n", ns, "get", "pgcluster", NAME)["status"]["currentPrimary"]
    rows = exec_psql(kubectl, ns, primary, "SELECT s.ssl, s.client_dn FROM pg_stat_replication r "
                                           "JOIN pg_stat_ssl s USING (pid)", db="postgres")
    assert rows.splitlines() == ["t|/CN=streaming_replica"]


def test_a_missing_or_wrong_user_secret_is_named_in_a_condition(kubectl, namespace, operator):
    ns, now = namespace, datetime.now(UTC)
    kubectl("apply", "-f", "-", input=manifest("nocert", ns, instances=1, sync=0,
                                                extra="  tls: {serverSecret: nocert-cert}\n"))
    missing = kubectl.wait_for(lambda: (c := _condition(kubectl, ns, "nocert", "CertificatesReady"))
                               and c["status"] == "False" and c, "CertificatesReady False", 60)
    assert missing["reason"] == "SecretNotFound"
    assert "spec.tls.serverSecret: Secret nocert-cert not found" in missing["message"]
    # A certificate for other names: the reason and the Services it misses.
    ca = tls.issue_ca("user CA", now)
    leaf = tls.issue_leaf(ca, "db.example.com", ["db.example.com"], now, server=True)
    kubectl("apply", "-f", "-", input=_tls_secret_manifest("nocert-cert", ns, leaf.cert, leaf.key, ca.cert))
    wrong = kubectl.wait_for(lambda: (c := _condition(kubectl, ns, "nocert", "CertificatesReady"))
                             and c["reason"] == "NamesMissing" and c, "CertificatesReady NamesMissing", 60)
    assert "nocert-rw" in wrong["message"] and "PRIVATE KEY" not in wrong["message"]


def _issuer_cn(host: str) -> str:
    return served_certificate(host).issuer.rfc4514_string()


def _rotation_state(kubectl, ns: str) -> str:
    """What a stalled rotation waits for: the cluster's conditions and what each instance's agent
    reports of the certificates it trusts and presents (fingerprints, no secret)."""
    cluster = kubectl.json("-n", ns, "get", "pgcluster", ROTATED).get("status") or {}
    lines = [f"{c.get('type')}={c.get('status')} {c.get('reason')}: {c.get('message')}"
             for c in cluster.get("conditions") or []]
    for item in kubectl.json("-n", ns, "get", "pginstances")["items"]:
        status = item.get("status") or {}
        lines.append(f"{item['metadata']['name']}: heartbeat {status.get('lastHeartbeat')}, "
                     f"certificates {status.get('certificates')}")
    return "\n".join(lines)


def test_a_forced_ca_rotation_fails_no_connection_and_restarts_nothing(kubectl, namespace, operator, tmp_path):
    ns = namespace
    kubectl("apply", "-f", "-", input=manifest(ROTATED, ns, instances=2, sync=1))
    wait_ready(kubectl, ns, ROTATED, 2)
    primary = kubectl.json("-n", ns, "get", "pgcluster", ROTATED)["status"]["currentPrimary"]
    started = exec_psql(kubectl, ns, primary, "SELECT pg_postmaster_start_time()", db="postgres")
    old_ca = secret(kubectl, ns, f"{ROTATED}-ca", "ca.crt")
    rw = service_ip(kubectl, ns, f"{ROTATED}-rw")
    issuer_before = _issuer_cn(rw)
    first_ca = tmp_path / "first-ca.crt"
    first_ca.write_text(secret(kubectl, ns, f"{ROTATED}-app", "ca.crt"))
    session = pg_connect(**_app(kubectl, ns, ROTATED, first_ca))  # stays open throughout

    stop, attempts, failures = threading.Event(), [0], []

    def new_connections():
        """An application that re-reads the app Secret's ca.crt for every new connection."""
        path = tmp_path / "loop-ca.crt"
        while not stop.is_set():
            try:
                path.write_text(secret(kubectl, ns, f"{ROTATED}-app", "ca.crt"))
                with psycopg.connect(connect_timeout=5, autocommit=True, **_app(kubectl, ns, ROTATED, path)) as c:
                    c.execute("SELECT 1").fetchone()
                attempts[0] += 1
            except psycopg.Error as error:
                failures.append(f"{datetime.now(UTC):%H:%M:%S} {error}")
            time.sleep(0.3)
    loop = threading.Thread(target=new_connections, daemon=True)
    loop.start()
    try:
        time.sleep(3)
        kubectl("-n", ns, "annotate", "pgcluster", ROTATED, f"{ca_rotation.ANNOTATION_ROTATE_CA}=now")

        def rotated():
            data = kubectl.json("-n", ns, "get", "secret", f"{ROTATED}-ca")["data"]
            return (secret(kubectl, ns, f"{ROTATED}-ca", "ca.crt") != old_ca
                    and ca_rotation.OLD_CERT not in data and ca_rotation.NEXT_CERT not in data)
        # overlap (2 min) + the kubelet's refresh of the mounted Secrets, twice; under pytest's
        # 900 s so that a rotation that stalls says what it waits for
        try:
            kubectl.wait_for(rotated, "the CA rotation to finish", 600)
        except AssertionError:
            print(_rotation_state(kubectl, ns))
            raise
        new_ca = secret(kubectl, ns, f"{ROTATED}-ca", "ca.crt")
        kubectl.wait_for(lambda: secret(kubectl, ns, f"{ROTATED}-app", "ca.crt").strip() == new_ca.strip(),
                         "the app Secret to carry the new CA alone", 60)
        time.sleep(5)  # a few connections more with the new CA alone
    finally:
        stop.set()
        loop.join(30)
    assert failures == [], f"{len(failures)} of {attempts[0] + len(failures)} connections failed: {failures[:5]}"
    assert attempts[0] > 50
    assert session.execute("SELECT 1").fetchone() == (1,)  # the session opened before the rotation
    session.close()
    assert _issuer_cn(rw) != issuer_before  # the server's certificate now comes from the new CA
    assert exec_psql(kubectl, ns, primary, "SELECT pg_postmaster_start_time()", db="postgres") == started
    rows = exec_psql(kubectl, ns, primary, "SELECT s.ssl, s.client_dn FROM pg_stat_replication r "
                                           "JOIN pg_stat_ssl s USING (pid)", db="postgres")
    assert rows.splitlines() == ["t|/CN=streaming_replica"]
    annotations = kubectl.json("-n", ns, "get", "pgcluster", ROTATED)["metadata"].get("annotations") or {}
    assert ca_rotation.ANNOTATION_ROTATE_CA not in annotations
