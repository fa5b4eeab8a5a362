"""Publishing database credentials to Vault and connection config to Consul.

One contract for both engines (DESIGN.md section 2): Vault KV v2 holds `username, password, host,
port, dbname, engine`; Consul KV holds `host, port, dbname, engine, username` under a prefix, never
the password. Used by the MysqlDb controller and by PgCluster's `spec.publish`.

Vault writes are check-and-set: `cas=0` creates only if nothing is there, `cas=n` replaces only
version n. That is what lets the master password be stored *before* the database is created and
survive any crash: whoever comes second reads the first one's password instead of overwriting it.
"""

from __future__ import annotations

import base64
import logging
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import consul
import consul.exceptions
import hvac
import hvac.exceptions
import requests

log = logging.getLogger(__name__)

VAULT_KEYS = ("username", "password", "host", "port", "dbname", "engine")
CONSUL_KEYS = ("host", "port", "dbname", "engine", "username")
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"

# RDS MySQL master passwords: 8-41 printable ASCII, no '/', '"', '@' or space. Letters and digits
# are safe in every engine, URL and shell.
_PASSWORD_ALPHABET = string.ascii_letters + string.digits


def generate_password(length: int = 32) -> str:
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


class PublishError(Exception):
    """A Vault or Consul call failed. Text names the store and path, never a value."""

    reason = "PublishFailed"
    retryable = True


class VaultUnavailable(PublishError):
    reason = "VaultUnavailable"


class VaultForbidden(PublishError):
    reason = "VaultForbidden"


class CasConflict(PublishError):
    reason = "VaultWriteConflict"


class ConsulUnavailable(PublishError):
    reason = "ConsulUnavailable"


class ConsulForbidden(PublishError):
    reason = "ConsulForbidden"


class CredentialsUnavailable(PublishError):
    reason = "CredentialsUnavailable"


def read_token_file(path: str, what: str) -> str | None:
    """The token in `path`, read now, or None when there is no such file (an optional Secret without
    that key). A mounted Secret's file changes in place when the Secret does (the kubelet swaps it
    atomically), so reading it on every call picks up a rotated token. The error names the file and
    the reason, never its content."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CredentialsUnavailable(f"{what} token file {path}: {error.strerror or type(error).__name__}") from None
    if not token:
        raise CredentialsUnavailable(f"{what} token file {path} is empty")
    return token


def split_kv2_path(path: str) -> tuple[str, str]:
    """'secret/data/k8s/shop/orders/db' -> ('secret', 'k8s/shop/orders/db').

    The first segment is the KV v2 mount; a following 'data/' (the API path form the contract uses)
    is optional.
    """
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) < 2:
        raise ValueError(f"Vault path {path!r} needs a mount and a key, e.g. secret/data/app/db")
    mount, rest = parts[0], parts[1:]
    if rest[0] in ("data", "metadata") and len(rest) > 1:
        rest = rest[1:]
    return mount, "/".join(rest)


@dataclass(frozen=True)
class SecretVersion:
    """One read of a KV v2 secret: version 0 means nothing was ever written (or it was destroyed)."""

    version: int
    data: Mapping[str, Any] | None = field(default=None, repr=False)

    @property
    def exists(self) -> bool:
        return self.data is not None


class VaultKV:
    """KV v2 reads and check-and-set writes, with a token or a Kubernetes auth login."""

    def __init__(self, client: hvac.Client, *, login: Callable[[hvac.Client], None] | None = None,
                 token_file: str | None = None):
        self._client = client
        self._login = login
        self._token_file = token_file
        self._token = client.token  # used while the token file does not exist

    @classmethod
    def connect(
        cls,
        addr: str,
        token: str | None = None,
        *,
        kubernetes_role: str | None = None,
        kubernetes_mount: str = "kubernetes",
        jwt_path: str = SERVICE_ACCOUNT_TOKEN,
        timeout: float = 5.0,
        verify: bool | str = True,
        token_file: str | None = None,
    ) -> VaultKV:
        """`token_file` (read on every call) wins over `token` while it exists; a Kubernetes auth role
        wins over both."""
        client = hvac.Client(url=addr, token=token, timeout=timeout, verify=verify)
        login = None
        if kubernetes_role:
            token_file = None

            def login(c: hvac.Client) -> None:
                with open(jwt_path) as f:
                    jwt = f.read().strip()
                c.auth.kubernetes.login(role=kubernetes_role, jwt=jwt, mount_point=kubernetes_mount)
        return cls(client, login=login, token_file=token_file)

    def _do(self, what: str, path: str, call: Callable[[], Any]) -> Any:
        for attempt in (1, 2):
            if self._token_file:
                self._client.token = read_token_file(self._token_file, "Vault") or self._token
            try:
                if self._login and not self._client.token:
                    self._login(self._client)
                return call()
            except hvac.exceptions.Forbidden:
                if self._login and attempt == 1:
                    self._client.token = None  # token expired or revoked: log in again once
                    continue
                if not self._client.token and not self._login:
                    raise VaultForbidden(f"Vault {what} {path}: permission denied: no Vault token "
                                         "configured (set PGOP_VAULT_TOKEN_FILE, VAULT_TOKEN or "
                                         "PGOP_VAULT_K8S_ROLE)") from None
                raise VaultForbidden(f"Vault {what} {path}: permission denied") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    hvac.exceptions.VaultDown, hvac.exceptions.InternalServerError,
                    hvac.exceptions.BadGateway):
                raise VaultUnavailable(f"Vault {what} {path}: Vault is unreachable or sealed") from None
            except hvac.exceptions.VaultError as error:
                raise PublishError(f"Vault {what} {path}: {type(error).__name__}") from None

    def read(self, path: str) -> SecretVersion:
        mount, key = split_kv2_path(path)

        def call() -> SecretVersion:
            try:
                found = self._client.secrets.kv.v2.read_secret_version(
                    path=key, mount_point=mount, raise_on_deleted_version=False)
            except hvac.exceptions.InvalidPath:
                return SecretVersion(0, None)
            body = found.get("data") or {}
            version = int((body.get("metadata") or {}).get("version") or 0)
            return SecretVersion(version, body.get("data"))

        return self._do("read", path, call)

    def write(self, path: str, data: Mapping[str, Any], *, cas: int) -> int:
        """Write a new version if the current one is `cas` (0: if none). Returns the new version."""
        mount, key = split_kv2_path(path)

        def call() -> int:
            try:
                written = self._client.secrets.kv.v2.create_or_update_secret(
                    path=key, secret=dict(data), cas=cas, mount_point=mount)
            except hvac.exceptions.InvalidRequest as error:
                if "check-and-set" in str(error):
                    raise CasConflict(f"Vault write {path}: version changed since it was read") from None
                raise PublishError(f"Vault write {path}: invalid request") from None
            return int(written["data"]["version"])

        return self._do("write", path, call)

    def delete(self, path: str) -> None:
        """Delete every version and the metadata (the app's secret is gone for good)."""
        mount, key = split_kv2_path(path)

        def call() -> None:
            try:
                self._client.secrets.kv.v2.delete_metadata_and_all_versions(path=key, mount_point=mount)
            except hvac.exceptions.InvalidPath:
                pass

        self._do("delete", path, call)


class ConsulKV:
    """A set of keys under a prefix, written and removed as one transaction."""

    def __init__(self, client: consul.Consul, *, token_file: str | None = None):
        self._client = client
        self._token_file = token_file
        self._token = client.token  # used while the token file does not exist

    @classmethod
    def connect(cls, host: str, port: int, *, scheme: str = "http", token: str | None = None,
                timeout: float = 5.0, token_file: str | None = None) -> ConsulKV:
        """`token_file` (read on every call) wins over `token` while it exists."""
        return cls(consul.Consul(host=host, port=port, scheme=scheme, token=token,
                                 connections_timeout=timeout), token_file=token_file)

    def _do(self, what: str, prefix: str, call: Callable[[], Any]) -> Any:
        if self._token_file:
            self._client.token = read_token_file(self._token_file, "Consul") or self._token
        try:
            return call()
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, consul.exceptions.Timeout):
            raise ConsulUnavailable(f"Consul {what} {prefix}: Consul is unreachable") from None
        except consul.exceptions.ACLPermissionDenied:
            raise ConsulForbidden(f"Consul {what} {prefix}: permission denied") from None
        except consul.exceptions.ConsulException as error:
            raise PublishError(f"Consul {what} {prefix}: {type(error).__name__}") from None

    def read(self, prefix: str) -> dict[str, str]:
        prefix = prefix.strip("/")

        def call() -> dict[str, str]:
            _, items = self._client.kv.get(prefix + "/", recurse=True)
            out = {}
            for item in items or []:
                key = item["Key"][len(prefix) + 1:]
                value = item.get("Value")
                out[key] = value.decode("utf-8") if isinstance(value, bytes) else (value or "")
            return out

        return self._do("read", prefix, call)

    def write(self, prefix: str, entries: Mapping[str, str]) -> None:
        """Make the keys under `prefix` exactly `entries` (stale keys of ours are removed)."""
        prefix = prefix.strip("/")

        def call() -> None:
            existing = self.read(prefix)
            ops = [
                {"KV": {"Verb": "set", "Key": f"{prefix}/{k}",
                        "Value": base64.b64encode(str(v).encode("utf-8")).decode("ascii")}}
                for k, v in sorted(entries.items())
            ]
            ops += [{"KV": {"Verb": "delete", "Key": f"{prefix}/{k}"}}
                    for k in sorted(existing) if k not in entries]
            self._client.txn.put(ops)

        self._do("write", prefix, call)

    def delete(self, prefix: str) -> None:
        prefix = prefix.strip("/")
        self._do("delete", prefix, lambda: self._client.kv.delete(prefix + "/", recurse=True))


# --- the contract --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Connection:
    """Where an application connects: everything but the password."""

    engine: str
    host: str
    port: int
    dbname: str
    username: str


def vault_document(connection: Connection, password: str) -> dict[str, str]:
    return {
        "username": connection.username,
        "password": password,
        "host": connection.host,
        "port": str(connection.port),
        "dbname": connection.dbname,
        "engine": connection.engine,
    }


def consul_entries(connection: Connection) -> dict[str, str]:
    return {
        "host": connection.host,
        "port": str(connection.port),
        "dbname": connection.dbname,
        "engine": connection.engine,
        "username": connection.username,
    }


@dataclass(frozen=True)
class StoredPassword:
    password: str = field(repr=False)
    version: int
    created: bool  # True when this call generated it


def ensure_master_password(
    vault: VaultKV,
    path: str,
    *,
    username: str,
    engine: str,
    dbname: str,
    generate: Callable[[], str] = generate_password,
) -> StoredPassword:
    """The password stored at `path`, generating and storing one (CAS create) if there is none.

    Call it before creating the database: if the operator dies right after, the next attempt
    finds the same password here.
    """
    current = vault.read(path)
    if current.data is not None and current.data.get("password"):
        return StoredPassword(current.data["password"], current.version, False)
    password = generate()
    document = {**(current.data or {}), "username": username, "password": password,
                "engine": engine, "dbname": dbname}
    try:
        version = vault.write(path, document, cas=current.version)
    except CasConflict:
        # Someone (another operator replica, a retry) stored one first: theirs wins.
        winner = vault.read(path)
        if winner.data is not None and winner.data.get("password"):
            return StoredPassword(winner.data["password"], winner.version, False)
        raise
    return StoredPassword(password, version, True)


def store_new_password(vault: VaultKV, path: str, password: str, *, username: str) -> int:
    """Replace the password (a reset asked for by the user). CAS on the version just read."""
    current = vault.read(path)
    document = {**(current.data or {}), "username": username, "password": password}
    return vault.write(path, document, cas=current.version)


@dataclass(frozen=True)
class Published:
    vault_version: int
    vault_changed: bool
    consul_changed: bool


def publish(
    vault: VaultKV,
    consul_kv: ConsulKV,
    *,
    vault_path: str,
    consul_prefix: str,
    connection: Connection,
) -> Published:
    """Make Vault and Consul hold the contract keys for `connection`.

    The password is the one already in Vault (stored before the database was created, or by a
    reset); publishing never invents one. Writes happen only when something differs, with CAS on
    the version read, so a concurrent password change is never overwritten.
    """
    for attempt in range(3):
        current = vault.read(vault_path)
        password = (current.data or {}).get("password") if current.exists else None
        if password:
            wanted = vault_document(connection, password)
        else:
            # An adopted database whose password pgop does not know: publish everything else.
            wanted = {k: v for k, v in vault_document(connection, "").items() if k != "password"}
        vault_changed = dict(current.data or {}) != wanted
        version = current.version
        if not vault_changed:
            break
        try:
            version = vault.write(vault_path, wanted, cas=current.version)
            break
        except CasConflict:
            # Someone wrote in between (another pass publishing the same, or a password reset):
            # read again and build on their version; never overwrite it blindly.
            if attempt == 2:
                raise

    entries = consul_entries(connection)
    consul_changed = consul_kv.read(consul_prefix) != entries
    if consul_changed:
        consul_kv.write(consul_prefix, entries)
    return Published(version, vault_changed, consul_changed)


def has_password(vault: VaultKV, vault_path: str) -> bool:
    current = vault.read(vault_path)
    return bool(current.data is not None and current.data.get("password"))


def unpublish(vault: VaultKV, consul_kv: ConsulKV, *, vault_path: str, consul_prefix: str) -> None:
    consul_kv.delete(consul_prefix)
    vault.delete(vault_path)


def connect_from_config(config) -> tuple[VaultKV, ConsulKV]:
    """Vault and Consul clients for the endpoints and credentials of an OperatorConfig."""
    vault = VaultKV.connect(config.vault_addr, config.vault_token,
                            kubernetes_role=config.vault_k8s_role,
                            kubernetes_mount=config.vault_k8s_mount,
                            token_file=config.vault_token_file)
    address = config.consul_address
    consul_kv = ConsulKV.connect(address.host, address.port, scheme=address.scheme,
                                 token=config.consul_token, token_file=config.consul_token_file)
    return vault, consul_kv
