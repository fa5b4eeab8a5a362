"""The services pgop talks to, on loopback (and the node address, for pods): S3, Vault, Consul,
the moto server for the RDS API, and PostgreSQL instances for the agent's integration tests."""
from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path

from . import build, paths, proc
from .log import step

VENV_BIN = paths.REPO / ".venv" / "bin"


def _http_status(url: str, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _xattrs_work(d: Path) -> bool:
    probe = d / ".xattr-probe"
    probe.write_text("")
    try:
        os.setxattr(probe, "user.pgop", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


def versitygw_binary() -> Path:
    return build.by_name()["versitygw"].bindir / "versitygw"


def start_s3() -> None:
    data = paths.STATE / "s3" / "data"
    data.mkdir(parents=True, exist_ok=True)
    # Internal IAM: tests add accounts with `versitygw admin create-user` and bucket policies that
    # refuse them deletes (docs/backup-permissions.md). The root account is unaffected.
    iam = paths.STATE / "s3" / "iam"
    iam.mkdir(parents=True, exist_ok=True)
    args = [str(versitygw_binary()), "--access", paths.S3_ACCESS_KEY, "--secret", paths.S3_SECRET_KEY,
            "--region", paths.AWS_REGION, "--port", f"127.0.0.1:{paths.S3_PORT}",
            "--port", f"{paths.NODE_IP}:{paths.S3_PORT}", "--health", "/health", "--quiet",
            "--iam-dir", str(iam), "posix"]
    if not _xattrs_work(data):
        sidecar = paths.STATE / "s3" / "meta"
        sidecar.mkdir(parents=True, exist_ok=True)
        args += ["--sidecar", str(sidecar)]
    with step("S3 server (versitygw)"):
        proc.start("s3", [*args, str(data)])
        proc.wait_for(lambda: _http_status(f"http://127.0.0.1:{paths.S3_PORT}/health") == 200,
                      "S3 health", 30, log_name="s3")


def start_vault() -> None:
    vault = build.by_name()["vault"].bindir / "vault"
    with step("Vault dev server"):
        # Dev mode: in memory, unsealed, KV v2 at secret/. Listens on all addresses because pods
        # log in with their service account token from inside the cluster.
        proc.start("vault", [str(vault), "server", "-dev",
                             f"-dev-root-token-id={paths.VAULT_DEV_ROOT_TOKEN}",
                             f"-dev-listen-address=0.0.0.0:{paths.VAULT_PORT}"],
                   # Vault 1.13 bundles a Snowflake driver whose embedded CA has a negative serial
                   # number, which Go >= 1.23 refuses at start-up unless told otherwise.
                   env={"HOME": str(paths.STATE), "VAULT_DISABLE_MLOCK": "true",
                        "GODEBUG": "x509negativeserial=1"})
        proc.wait_for(lambda: _http_status(f"http://127.0.0.1:{paths.VAULT_PORT}/v1/sys/health") == 200,
                      "Vault health", 30, log_name="vault")


def start_consul() -> None:
    consul = build.by_name()["consul"].bindir / "consul"
    with step("Consul dev agent"):
        proc.start("consul", [str(consul), "agent", "-dev", "-bind", "127.0.0.1",
                              "-client", f"127.0.0.1 {paths.NODE_IP}",
                              "-http-port", str(paths.CONSUL_HTTP_PORT), "-log-level", "warn"])
        proc.wait_for(lambda: _http_status(f"http://127.0.0.1:{paths.CONSUL_HTTP_PORT}/v1/status/leader") == 200
                      and _consul_leader(), "Consul leader", 30, log_name="consul")


def _consul_leader() -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{paths.CONSUL_HTTP_PORT}/v1/status/leader",
                                timeout=3) as r:
        return json.loads(r.read() or b'""') != ""


def start_moto() -> None:
    moto = VENV_BIN / "moto_server"
    if not moto.exists():
        raise RuntimeError(f"{moto} is missing: the Python environment is not installed")
    with step("moto server (AWS RDS API)"):
        proc.start("moto", [str(moto), "-H", "127.0.0.1", "-p", str(paths.MOTO_PORT)])
        proc.wait_for(lambda: _http_status(f"http://127.0.0.1:{paths.MOTO_PORT}/moto-api/") in (200, 404),
                      "moto server", 30, log_name="moto")


def vault_operator_token() -> str:
    """A token for the operator with only its policy (deploy/vault/pgop-operator.hcl), never root."""
    base = f"http://127.0.0.1:{paths.VAULT_PORT}/v1"
    headers = {"X-Vault-Token": paths.VAULT_DEV_ROOT_TOKEN, "Content-Type": "application/json"}
    policy = (paths.REPO / "deploy" / "vault" / "pgop-operator.hcl").read_text()

    def call(method: str, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"{base}/{path}", data=json.dumps(body).encode(),
                                     headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
        return json.loads(raw) if raw else {}

    call("PUT", "sys/policies/acl/pgop-operator", {"policy": policy})
    out = call("POST", "auth/token/create", {"policies": ["pgop-operator"], "no_default_policy": True,
                                             "period": "24h", "display_name": "pgop-operator"})
    return out["auth"]["client_token"]


NAMES = ["s3", "vault", "consul", "moto"]


def up() -> None:
    start_s3()
    start_vault()
    start_consul()
    start_moto()


def env() -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{paths.S3_PORT}",
        "PGOP_S3_ENDPOINT_IN_CLUSTER": f"http://{paths.NODE_IP}:{paths.S3_PORT}",
        "S3_ACCESS_KEY_ID": paths.S3_ACCESS_KEY,
        "S3_SECRET_ACCESS_KEY": paths.S3_SECRET_KEY,
        "VAULT_ADDR": f"http://127.0.0.1:{paths.VAULT_PORT}",
        "PGOP_VAULT_ADDR_IN_CLUSTER": f"http://{paths.NODE_IP}:{paths.VAULT_PORT}",
        "VAULT_TOKEN": paths.VAULT_DEV_ROOT_TOKEN,
        "CONSUL_HTTP_ADDR": f"127.0.0.1:{paths.CONSUL_HTTP_PORT}",
        "PGOP_RDS_ENDPOINT": f"http://127.0.0.1:{paths.MOTO_PORT}",
        "AWS_DEFAULT_REGION": paths.AWS_REGION,
        "AWS_ACCESS_KEY_ID": paths.MOTO_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": paths.MOTO_SECRET_KEY,
        "PG_BINDIR": pg_bindir(),
    }


def pg_bindir() -> str:
    from . import versions
    return f"/usr/lib/postgresql/{versions.POSTGRES_MAJOR}/bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
