"""PgCluster `spec.publish`: the app credentials in Vault and the connection config in Consul,
with the same keys as MysqlDb (pgop.publish is the one writer), so applications read both engines
the same way."""
from __future__ import annotations

import base64

from pgop.kernel import names, tenancy
from pgop.kernel.model import Cluster
from pgop.kernel.pgconfig import POSTGRES_PORT
from pgop.runtime import publish as pub
from pgop.runtime.config import OperatorConfig


def targets(cluster: Cluster) -> tuple[str, str]:
    """Where to publish: the spec's paths, or the same defaults as MysqlDb's; never a path outside
    the cluster's namespace (ValueError), so no caller can read, write or delete one."""
    paths = cluster.publish_paths()
    if paths is None:
        raise ValueError(f"PgCluster {cluster.namespace}/{cluster.name} has no spec.publish")
    if cluster.refused_publish_paths():
        raise ValueError(namespace_problem(cluster))
    return paths


def connection(cluster: Cluster) -> pub.Connection:
    initdb = cluster.spec.bootstrap.initdb
    return pub.Connection(
        engine="postgresql",
        host=f"{names.rw_service(cluster.name)}.{cluster.namespace}.svc",
        port=POSTGRES_PORT,
        dbname=initdb.database if initdb else "app",
        username=initdb.owner if initdb else "app",
    )


def namespace_problem(cluster: Cluster) -> str | None:
    """A cluster publishes only below its own namespace's prefix, compared segment by segment
    (pgop.kernel.tenancy); deploy/admission.yaml refuses such a spec at admission already."""
    refused = cluster.refused_publish_paths()
    return tenancy.refusal_message(refused) if refused else None


def publish_cluster(cluster: Cluster, app_secret: dict) -> tuple[str, str]:
    """Writes Vault (CAS on the version read) and Consul when they differ from what they should hold."""
    password = base64.b64decode(app_secret["data"]["password"]).decode()
    vault, consul_kv = pub.connect_from_config(OperatorConfig.from_env())
    vault_path, consul_prefix = targets(cluster)
    conn = connection(cluster)
    wanted = pub.vault_document(conn, password)
    for _ in range(3):
        current = vault.read(vault_path)
        if dict(current.data or {}) == wanted:
            break
        try:
            vault.write(vault_path, wanted, cas=current.version)
            break
        except pub.CasConflict:
            continue
    entries = pub.consul_entries(conn)
    if consul_kv.read(consul_prefix) != entries:
        consul_kv.write(consul_prefix, entries)
    return vault_path, consul_prefix


def unpublish_cluster(cluster: Cluster) -> None:
    vault, consul_kv = pub.connect_from_config(OperatorConfig.from_env())
    vault_path, consul_prefix = targets(cluster)
    pub.unpublish(vault, consul_kv, vault_path=vault_path, consul_prefix=consul_prefix)
