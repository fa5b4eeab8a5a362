"""TLS of a PgCluster, tried as a client and as an attacker would (issue 12): every connection over
the network is encrypted, a client can check the server with the CA the app Secret carries, a
wrong CA fails, plaintext and the superuser over the network are refused, replicas stream with
their certificate, and a renewed server certificate is served without a restart."""
from __future__ import annotations

import socket
import ssl
import struct
import time
from datetime import UTC, datetime

import psycopg
import pytest
from cryptography import x509

from e2e.test_pgcluster import exec_psql, manifest, pg_connect, secret, service_ip, wait_ready
from pgop.specs import tls

pytestmark = pytest.mark.cluster

NAME = "tlsdb"


@pytest.fixture
def tls_cluster(kubectl, namespace, operator, tmp_path):
    kubectl("apply", "-f", "-", input=manifest(NAME, namespace, instances=2, sync=1))
    wait_ready(kubectl, namespace, NAME, 2)
    # The cluster is Ready once its pods are Ready, so -rw has its endpoint; kube-proxy may still
    # take a moment to program it on this host. These tests look at what that connection says, so
    # they start once it is routed (as pg_connect retries for an application).
    rw = service_ip(kubectl, namespace, f"{NAME}-rw")
    kubectl.wait_for(lambda: _accepts(rw), "the -rw Service routing to the primary", 30)
    ca = tmp_path / "ca.crt"
    ca.write_text(secret(kubectl, namespace, f"{NAME}-app", "ca.crt"))
    return namespace, ca


def _accepts(host: str) -> bool:
    try:
        socket.create_connection((host, 5432), timeout=2).close()
        return True
    except OSError:
        return False


def _app(kubectl, ns, ca, **kw):
    """The app's connection by the Service's DNS name (checked against the certificate) at its
    ClusterIP (this host has no cluster DNS)."""
    options = dict(host=f"{NAME}-rw.{ns}.svc", hostaddr=service_ip(kubectl, ns, f"{NAME}-rw"), port=5432,
                   dbname="app", user="app", password=secret(kubectl, ns, f"{NAME}-app", "password"),
                   sslmode="verify-full", sslrootcert=str(ca))
    options.update(kw)
    return options


def test_clients_get_tls_checked_against_the_clusters_ca(kubectl, tls_cluster):
    ns, ca = tls_cluster
    uri = secret(kubectl, ns, f"{NAME}-app", "uri")
    assert uri.endswith("?sslmode=require")
    with pg_connect(**_app(kubectl, ns, ca)) as conn:
        ssl_on, version = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert ssl_on and version.startswith("TLSv1.")


def test_plaintext_is_refused(kubectl, tls_cluster):
    ns, ca = tls_cluster
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(connect_timeout=5, **_app(kubectl, ns, ca, sslmode="disable", sslrootcert=None))
    assert "no encryption" in str(refused.value) or "rejects connection" in str(refused.value)


def test_a_wrong_ca_fails(kubectl, tls_cluster, tmp_path):
    ns, ca = tls_cluster
    wrong = tmp_path / "wrong-ca.crt"
    wrong.write_text(tls.issue_ca(f"{NAME}.{ns} (pgop CA)", datetime.now(UTC)).cert)  # same name, other key
    with pytest.raises(psycopg.OperationalError) as failed:
        psycopg.connect(connect_timeout=5, **_app(kubectl, ns, ca, sslrootcert=str(wrong)))
    assert "certificate verify failed" in str(failed.value)


def test_the_superuser_cannot_log_in_over_the_network(kubectl, tls_cluster):
    ns, ca = tls_cluster
    password = secret(kubectl, ns, f"{NAME}-superuser", "password")
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(connect_timeout=5, **_app(kubectl, ns, ca, user="postgres", dbname="postgres",
                                                   password=password))
    assert "rejects connection" in str(refused.value) and '"postgres"' in str(refused.value)
    # Inside the pod, as the OS user postgres, it still works (local peer).
    assert exec_psql(kubectl, ns, f"{NAME}-0", "SELECT current_user", db="postgres") == "postgres"


def _primary(kubectl, ns) -> str:
    return kubectl.json("-n", ns, "get", "pgcluster", NAME)["status"]["currentPrimary"]


def test_replicas_stream_over_tls_with_their_certificate(kubectl, tls_cluster):
    ns, _ = tls_cluster
    rows = exec_psql(kubectl, ns, _primary(kubectl, ns),
                     "SELECT s.ssl, s.client_dn FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
                     db="postgres")
    assert rows.splitlines() == ["t|/CN=streaming_replica"]


def served_certificate(host: str) -> x509.Certificate:
    """The certificate the server at host:5432 presents (PostgreSQL's SSLRequest, then TLS)."""
    with socket.create_connection((host, 5432), timeout=5) as raw:
        raw.sendall(struct.pack("!ii", 8, 80877103))
        assert raw.recv(1) == b"S"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with context.wrap_socket(raw) as wrapped:
            der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _served_serial(host: str) -> int:
    return served_certificate(host).serial_number


def test_a_renewed_server_certificate_is_served_without_a_restart(kubectl, tls_cluster):
    ns, ca = tls_cluster
    primary = _primary(kubectl, ns)
    rw = service_ip(kubectl, ns, f"{NAME}-rw")
    before = _served_serial(rw)
    started = exec_psql(kubectl, ns, primary, "SELECT pg_postmaster_start_time()", db="postgres")
    # What a person does to rotate now: delete the Secret; the operator issues a new certificate.
    kubectl("-n", ns, "delete", "secret", f"{NAME}-server")
    deadline = time.monotonic() + 240  # the kubelet refreshes a mounted Secret within about a minute
    while _served_serial(rw) == before:
        assert time.monotonic() < deadline, "the new server certificate was not served within 240 s"
        time.sleep(2)
    assert exec_psql(kubectl, ns, primary, "SELECT pg_postmaster_start_time()", db="postgres") == started
    with pg_connect(**_app(kubectl, ns, ca)) as conn:  # the CA did not change: clients keep trusting
        assert conn.execute("SELECT 1").fetchone() == (1,)
