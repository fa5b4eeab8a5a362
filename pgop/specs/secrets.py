"""The credentials Secrets of a cluster, created once and never regenerated.

Each holds username, password, host, port, dbname and uri. The password comes from a random
source passed in (secrets.SystemRandom() in the operator), so tests can make it repeatable.
"""
from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import quote

from pgop.kernel import names, pgconfig
from pgop.kernel.meta import cluster_labels, object_meta, owner_reference
from pgop.kernel.model import Cluster
from pgop.specs.services import service_host

# Letters and digits only: safe unquoted in a URI, a .pgpass line, a shell and a conninfo string.
PASSWORD_ALPHABET = string.ascii_letters + string.digits
PASSWORD_LENGTH = 32  # about 190 bits from 62 symbols


class RandomSource(Protocol):
    def choice(self, seq: Sequence[str]) -> str: ...


def generate_password(rng: RandomSource, length: int = PASSWORD_LENGTH) -> str:
    if length < 16:
        raise ValueError("a database password shorter than 16 characters is refused")
    return "".join(rng.choice(PASSWORD_ALPHABET) for _ in range(length))


def build_secret(cluster: Cluster, name: str, username: str, password: str, dbname: str,
                 ca_cert: str | None = None) -> dict[str, Any]:
    """`ca_cert`: the cluster's CA certificate, as `ca.crt` (a client that wants
    `sslmode=verify-full` checks the server with it); the uri asks for TLS (`sslmode=require`)."""
    host = service_host(cluster, names.rw_service(cluster.name))
    port = str(pgconfig.POSTGRES_PORT)
    uri = (f"postgresql://{quote(username, safe='')}:{quote(password, safe='')}@{host}:{port}/"
           f"{quote(dbname, safe='')}?sslmode=require")
    data = {"username": username, "password": password, "host": host, "port": port, "dbname": dbname, "uri": uri}
    if ca_cert:
        data["ca.crt"] = ca_cert
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_meta(name, cluster.namespace, cluster_labels(cluster.name),
                                owner=owner_reference("PgCluster", cluster.name, cluster.uid)),
        "type": "kubernetes.io/basic-auth",
        "stringData": data,
    }


def app_identity(cluster: Cluster) -> tuple[str, str]:
    """(owner role, database) of the application; a recovered cluster keeps its source's names."""
    initdb = cluster.spec.bootstrap.initdb
    return (initdb.owner, initdb.database) if initdb is not None else ("app", "app")


def build_cluster_secrets(cluster: Cluster, rng: RandomSource, ca_cert: str | None = None) -> list[dict[str, Any]]:
    owner, database = app_identity(cluster)
    return [
        build_secret(cluster, names.superuser_secret(cluster.name), pgconfig.SUPERUSER,
                     generate_password(rng), "postgres", ca_cert),
        build_secret(cluster, names.replication_secret(cluster.name), pgconfig.REPLICATION_USER,
                     generate_password(rng), "postgres", ca_cert),
        build_secret(cluster, names.app_secret(cluster.name), owner, generate_password(rng), database, ca_cert),
    ]
