"""Operator configuration, read once from the operator process's environment.

| variable | meaning |
|---|---|
| `PGOP_RDS_ENDPOINT` | RDS endpoint URL (the moto server in tests); unset means real AWS |
| `AWS_DEFAULT_REGION` (or `AWS_REGION`) | region of the RDS calls |
| `PGOP_AWS_RETRY_MODE`, `PGOP_AWS_MAX_ATTEMPTS` | botocore retry mode (`standard`/`adaptive`) and attempts |
| `VAULT_ADDR`, `VAULT_TOKEN` | Vault address and token |
| `PGOP_VAULT_TOKEN_FILE` | a file holding the Vault token (a mounted Secret, a Vault agent sink); read again on every Vault call, so a rotated token is used without a restart; wins over `VAULT_TOKEN` |
| `PGOP_VAULT_K8S_ROLE`, `PGOP_VAULT_K8S_MOUNT` | log in with the Kubernetes auth method instead of a token |
| `CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN` | Consul agent (`host:port` or URL) and ACL token |
| `CONSUL_HTTP_TOKEN_FILE` | a file holding the Consul ACL token (Consul's own name for it); read again on every Consul call; wins over `CONSUL_HTTP_TOKEN` |
| `PGOP_WATCH_NAMESPACES` | comma-separated namespaces the operator watches (namespaced mode, `deploy/operator-namespaced.yaml`); unset: every namespace. `pgop run -n` wins over it |
| `PGOP_CLUSTER_NAME` | optional; hashed into RDS identifiers when clusters share an AWS account |
| `PGOP_RDS_POLL_SECONDS`, `PGOP_RDS_RESYNC_SECONDS` | how often a changing / a settled MysqlDb is checked |
| `PGOP_RDS_ADOPT_NAMESPACES` | comma-separated namespaces whose MysqlDbs may adopt (`pgop.io/adopt`) any RDS instance pgop did not create; unset: none (an instance tagged `pgop.io/adoptable-by: <namespace>/<name>` can still be adopted by that one MysqlDb) |

AWS credentials are not read here: boto3 finds them as usual (environment, the shared credentials
file `AWS_SHARED_CREDENTIALS_FILE`, IRSA's `AWS_WEB_IDENTITY_TOKEN_FILE`).
Secret fields are excluded from repr() so a logged config never shows them.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ConsulAddress:
    host: str
    port: int
    scheme: str

    @classmethod
    def parse(cls, addr: str) -> ConsulAddress:
        parsed = urllib.parse.urlparse(addr if "//" in addr else f"//{addr}")
        return cls(parsed.hostname or "127.0.0.1", parsed.port or 8500, parsed.scheme or "http")


WATCH_NAMESPACES = "PGOP_WATCH_NAMESPACES"

# A namespace name (an RFC 1123 label), or a kopf pattern of one: '*' and '?' globs, '!' to exclude.
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_PATTERN = re.compile(r"!?[a-z0-9*?][-a-z0-9*?]{0,62}")


def is_pattern(namespace: str) -> bool:
    return not _NAMESPACE.fullmatch(namespace)


def parse_namespaces(text: str, source: str = WATCH_NAMESPACES) -> tuple[str, ...]:
    """'shop, billing' -> ('billing', 'shop'). Raises ValueError naming `source` and the bad entry.

    Exact names are what namespaced mode needs: with a pattern kopf must list and watch every
    Namespace to match it, a cluster-wide read only deploy/operator.yaml's ClusterRole grants."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if not _PATTERN.fullmatch(name):
            raise ValueError(f"{source}: {name!r} is neither a namespace name (lower-case letters, digits and "
                             "'-', at most 63) nor a pattern of one ('*', '?', a leading '!')")
    return tuple(sorted(set(names)))


def watch_scope(cli_namespaces: Sequence[str], all_namespaces: bool, env: Mapping[str, str]) -> tuple[str, ...]:
    """The namespaces the operator watches; () means every namespace (cluster-wide).

    `pgop run -n NS` (repeatable) wins over PGOP_WATCH_NAMESPACES, `-A` over both; `-A` together with
    `-n` is a contradiction and refused."""
    if all_namespaces and cli_namespaces:
        raise ValueError("--all-namespaces and --namespace exclude each other")
    if all_namespaces:
        return ()
    if cli_namespaces:
        return parse_namespaces(",".join(cli_namespaces), "--namespace")
    return parse_namespaces(env.get(WATCH_NAMESPACES, ""))


@dataclass(frozen=True)
class OperatorConfig:
    aws_region: str
    rds_endpoint: str | None = None
    aws_retry_mode: str = "standard"
    aws_max_attempts: int = 5
    vault_addr: str = "http://127.0.0.1:8200"
    vault_token: str | None = field(default=None, repr=False)
    vault_token_file: str | None = None
    vault_k8s_role: str | None = None
    vault_k8s_mount: str = "kubernetes"
    consul_addr: str = "127.0.0.1:8500"
    consul_token: str | None = field(default=None, repr=False)
    consul_token_file: str | None = None
    cluster_name: str = ""
    rds_poll_seconds: float = 15.0
    rds_resync_seconds: float = 60.0
    rds_adopt_namespaces: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        return cls(
            aws_region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1",
            rds_endpoint=env.get("PGOP_RDS_ENDPOINT") or None,
            aws_retry_mode=env.get("PGOP_AWS_RETRY_MODE", "standard"),
            aws_max_attempts=int(env.get("PGOP_AWS_MAX_ATTEMPTS", "5")),
            vault_addr=env.get("VAULT_ADDR", "http://127.0.0.1:8200"),
            vault_token=env.get("VAULT_TOKEN") or None,
            vault_token_file=env.get("PGOP_VAULT_TOKEN_FILE") or None,
            vault_k8s_role=env.get("PGOP_VAULT_K8S_ROLE") or None,
            vault_k8s_mount=env.get("PGOP_VAULT_K8S_MOUNT", "kubernetes"),
            consul_addr=env.get("CONSUL_HTTP_ADDR", "127.0.0.1:8500"),
            consul_token=env.get("CONSUL_HTTP_TOKEN") or None,
            consul_token_file=env.get("CONSUL_HTTP_TOKEN_FILE") or None,
            cluster_name=env.get("PGOP_CLUSTER_NAME", ""),
            rds_poll_seconds=float(env.get("PGOP_RDS_POLL_SECONDS", "15")),
            rds_resync_seconds=float(env.get("PGOP_RDS_RESYNC_SECONDS", "60")),
            rds_adopt_namespaces=frozenset(
                ns.strip() for ns in env.get("PGOP_RDS_ADOPT_NAMESPACES", "").split(",") if ns.strip()),
        )

    @property
    def consul_address(self) -> ConsulAddress:
        return ConsulAddress.parse(self.consul_addr)
