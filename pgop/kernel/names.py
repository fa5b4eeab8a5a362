"""Names of the objects a PgCluster owns: one place, so builders, plans and the CLI agree."""
from __future__ import annotations


def rw_service(cluster: str) -> str:
    return f"{cluster}-rw"


def ro_service(cluster: str) -> str:
    return f"{cluster}-ro"


def r_service(cluster: str) -> str:
    return f"{cluster}-r"


def superuser_secret(cluster: str) -> str:
    return f"{cluster}-superuser"


def app_secret(cluster: str) -> str:
    return f"{cluster}-app"


def replication_secret(cluster: str) -> str:
    return f"{cluster}-replication"


def ca_secret(cluster: str) -> str:
    """The cluster's CA (certificate and key): read by the operator only."""
    return f"{cluster}-ca"


def server_tls_secret(cluster: str) -> str:
    return f"{cluster}-server"


def replication_tls_secret(cluster: str) -> str:
    return f"{cluster}-replication-tls"


def agent_account(cluster: str) -> str:
    """ServiceAccount, Role and RoleBinding of the agents of one cluster."""
    return f"{cluster}-agent"


def pdb(cluster: str) -> str:
    return cluster


def primary_pdb(cluster: str) -> str:
    return f"{cluster}-primary"


def postgres_pod(instance: str) -> str:
    return instance


def bootstrap_pod(instance: str) -> str:
    # A fixed name: the API server then refuses a second bootstrap pod of the same instance.
    return f"{instance}-bootstrap"
