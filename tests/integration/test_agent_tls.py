"""Certificates the user brings (spec.tls), served by a real PostgreSQL 15 under `pgop agent`.

The TLS directory is laid out as the pod's projected volume is with spec.tls set
(pgop.specs.pods.tls_volume): server.crt/.key and server-ca.crt from the user's Secret, ca.crt
(ssl_ca_file) = the cluster's CA and the user's client CA, replication.crt/.key from the cluster's
CA. The files are replaced the way the kubelet replaces them (a new file renamed over the old).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from e2e.harness.pg import AgentHost
from pgop.agent import kube
from pgop.kernel import pgconfig
from pgop.specs import tls
from tests.integration.test_agent_postgres import Fleet, wait_for

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not shutil.which("runuser") or not os.path.exists("/usr/lib/postgresql/15/bin/postgres"),
                       reason="needs Debian's postgresql-15 and runuser"),
]

SERVICE = "orders-rw.test.svc"  # a name the user's certificate gives the -rw Service


def _write(host: AgentHost, path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.chmod(mode)
    host._own(tmp)
    tmp.rename(path)


@pytest.fixture
def world():
    host = AgentHost()
    now = datetime.now(UTC)
    certs = {
        "operator": tls.issue_ca("orders.test (pgop CA)", now),
        "user": tls.issue_ca("user CA (cert-manager)", now),
        "clients": tls.issue_ca("user client CA", now),
        "stranger": tls.issue_ca("some other CA", now),
    }
    directory = host.root / "tls"
    directory.mkdir()
    host._own(directory)
    server = tls.issue_leaf(certs["user"], SERVICE, [SERVICE, "orders-ro.test.svc", "orders-r.test.svc"], now,
                            server=True)
    replication = tls.issue_leaf(certs["operator"], pgconfig.REPLICATION_USER, [], now, server=False)
    for name, text in (("server.crt", server.cert), ("server.key", server.key),
                       ("server-ca.crt", certs["user"].cert),
                       ("ca.crt", certs["operator"].cert + certs["clients"].cert),
                       ("replication.crt", replication.cert), ("replication.key", replication.key)):
        _write(host, directory / name, text)
    for name in ("user", "operator", "clients"):  # what a client outside would hold
        (host.root / f"{name}-ca.crt").write_text(certs[name].cert)
    fleet = Fleet(host, kube.MemoryInstanceStore(host.namespace),
                  {"instances": 1, "enableSuperuserAccess": True,
                   "tls": {"serverSecret": "orders-cert", "clientCASecret": "clients"},
                   "bootstrap": {"initdb": {"database": "app", "owner": "app"}}})
    name = fleet.create(0, "primary", "initdb")
    fleet.settings[name] = dataclasses.replace(fleet.settings[name], tls_dir=directory)
    fleet.bootstrap(name, "initdb")
    fleet.start(name)
    fleet.wait_ready(name)
    yield host, fleet, name, certs, directory, now
    fleet.cleanup()
    host.cleanup()


def _connect(host, fleet, name, rootcert: str, **extra):
    settings = fleet.settings[name]
    options = {"user": "app", "dbname": "app", "password": host.passwords["app"], **extra}
    return psycopg.connect(host=SERVICE, hostaddr="127.0.0.1", port=settings.pg_port, sslmode="verify-full",
                           sslrootcert=str(host.root / rootcert), connect_timeout=5, autocommit=True, **options)


def test_the_users_certificate_is_served_and_its_client_ca_authenticates(world):
    host, fleet, name, certs, directory, now = world
    with _connect(host, fleet, name, "user-ca.crt") as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _connect(host, fleet, name, "operator-ca.crt")

    # A replication client certificate from the user's client CA logs in (`cert`, no password) ...
    client = tls.issue_leaf(certs["clients"], pgconfig.REPLICATION_USER, [], now, server=False)
    (host.root / "client.crt").write_text(client.cert)
    (host.root / "client.key").write_text(client.key)
    (host.root / "client.key").chmod(0o600)
    with _connect(host, fleet, name, "user-ca.crt", user=pgconfig.REPLICATION_USER, dbname="postgres",
                  password="", sslcert=str(host.root / "client.crt"), sslkey=str(host.root / "client.key")) as conn:
        dn = conn.execute("SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]
        assert dn == f"/CN={pgconfig.REPLICATION_USER}"
    # ... and one of a CA nobody trusts does not.
    stranger = tls.issue_leaf(certs["stranger"], pgconfig.REPLICATION_USER, [], now, server=False)
    (host.root / "client.crt").write_text(stranger.cert)
    (host.root / "client.key").write_text(stranger.key)
    with pytest.raises(psycopg.OperationalError):
        _connect(host, fleet, name, "user-ca.crt", user=pgconfig.REPLICATION_USER, dbname="postgres",
                 password="", sslcert=str(host.root / "client.crt"), sslkey=str(host.root / "client.key"))

    # The agent reports what it loaded (the operator's CA rotation reads it).
    report = fleet.status(name)["certificates"]
    assert set(pgconfig.certificate_fingerprints(certs["user"].cert)) <= set(report["trusted"])
    assert set(pgconfig.certificate_fingerprints(certs["clients"].cert)) <= set(report["trusted"])
    assert report["server"] == pgconfig.certificate_fingerprints((directory / "server.crt").read_text())[0]


def test_a_renewed_user_certificate_is_served_without_a_restart(world):
    host, fleet, name, certs, directory, now = world
    started = fleet.start_time(name)
    session = _connect(host, fleet, name, "user-ca.crt")
    # cert-manager renews from a new issuer: the Secret's tls.crt, tls.key and ca.crt change together
    renewed_ca = tls.issue_ca("user CA, renewed", now)
    renewed = tls.issue_leaf(renewed_ca, SERVICE, [SERVICE, "orders-ro.test.svc", "orders-r.test.svc"], now,
                             server=True)
    _write(host, directory / "server-ca.crt", renewed_ca.cert)
    _write(host, directory / "server.key", renewed.key)
    _write(host, directory / "server.crt", renewed.cert)
    (host.root / "renewed-ca.crt").write_text(renewed_ca.cert)

    def served() -> bool:
        try:
            with _connect(host, fleet, name, "renewed-ca.crt"):
                return True
        except psycopg.OperationalError:
            return False
    wait_for(served, "the renewed certificate to be served", timeout=30, interval=0.2)
    assert fleet.start_time(name) == started  # a reload, not a restart
    assert session.execute("SELECT 1").fetchone() == (1,)  # the session opened before stays
    session.close()
    wait_for(lambda: fleet.status(name)["certificates"]["server"]
             == pgconfig.certificate_fingerprints(renewed.cert)[0], "the new certificate reported")
