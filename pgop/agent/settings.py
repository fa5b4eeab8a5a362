"""What the pod tells the agent (the pod contract, pgop.kernel.podenv), plus local overrides.

The PGOP_PG_* / PGOP_SOCKET_DIR / PGOP_CONNECT_HOST / PGOP_PRIMARY_* / PGOP_RUN_AS variables are
not set by the operator's pods: their defaults are what a pod needs. They exist so the same agent
runs several Postgres instances side by side on one machine (the integration tests).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pgop.kernel import names, pgconfig
from pgop.kernel.model import InstanceSpec
from pgop.kernel.podenv import (
    AGENT_PORT,
    ENV_BOOTSTRAP_PERMIT,
    ENV_METRICS_PORT,
    METRICS_PORT,
    REQUIRED_BY_AGENT,
    PodEnv,
    PodEnvError,
)

DEFAULT_INTERVAL = 2.0
DEFAULT_STATUS_REFRESH = 5.0  # pgop.agent.status: the heartbeat when the status does not change
# While the agent's liveness Lease renews (pgop.kernel.liveness), the heartbeat goes there and an
# unchanged status is written again only this often.
DEFAULT_REPORT_REFRESH = 60.0
DEFAULT_ISOLATION_TIMEOUT = 10.0
DEFAULT_MAX_START_ATTEMPTS = 3


class SettingsError(RuntimeError):
    """The pod does not give the agent what it needs."""


def default_bindir(env: Mapping[str, str]) -> str:
    found = shutil.which("postgres", path=env.get("PATH"))
    if found:
        return str(Path(found).parent)
    return f"/usr/lib/postgresql/{env.get('PG_MAJOR', '15')}/bin"


@dataclass(frozen=True)
class AgentSettings:
    cluster: str
    instance: str
    namespace: str
    pgdata: Path
    secrets_dir: Path
    pod_name: str = ""
    pod_uid: str = ""
    pod_ip: str = ""
    node_name: str = ""
    agent_port: int = AGENT_PORT
    agent_address: str = "0.0.0.0"
    metrics_port: int = METRICS_PORT  # 0: no /metrics server (several agents on one test machine)
    bindir: str = "/usr/lib/postgresql/15/bin"
    pg_port: int = pgconfig.POSTGRES_PORT
    socket_dir: Path = Path(pgconfig.SOCKET_DIRECTORY)
    listen_addresses: str = "*"
    connect_host: str = ""  # how the agent reaches its own Postgres; default: the socket directory
    primary_host: str = ""  # where a replica clones and streams from, for all (a test machine's); see source_host
    primary_port: int = pgconfig.POSTGRES_PORT
    run_dir: Path | None = None  # writable, not on the volume: the passfile lives here
    interval: float = DEFAULT_INTERVAL
    status_refresh: float = DEFAULT_STATUS_REFRESH  # heartbeats (Lease renewals) of a replica whose status is unchanged
    report_refresh: float = DEFAULT_REPORT_REFRESH  # unchanged-status writes while the Lease renews
    isolation_timeout: float = DEFAULT_ISOLATION_TIMEOUT  # a primary alone this long stops (0: never)
    max_start_attempts: int = DEFAULT_MAX_START_ATTEMPTS
    run_as: str | None = None  # OS user for the PostgreSQL binaries when the agent runs as root
    postgres_log: Path | None = None  # postgres' stderr; default: the agent's (the container log)
    tls_dir: Path | None = None  # the pod's certificates (PGOP_TLS_DIR); None: no TLS
    # $PGOP_BOOTSTRAP_PERMIT: None where the pod does not pass it; on a Postgres pod made for an
    # unmarked volume, the mode its agent may bootstrap, "" once the operator marked the volume
    # (pgop.agent.bootstrap.refusal).
    bootstrap_permit: str | None = None

    @property
    def local_host(self) -> str:
        return self.connect_host or str(self.socket_dir)

    @property
    def tls(self) -> pgconfig.TlsFiles | None:
        if self.tls_dir is None:
            return None
        # server-ca.crt is mounted when spec.tls is set (the server's issuer may be the user's CA)
        return pgconfig.TlsFiles(str(self.tls_dir), (self.tls_dir / "server-ca.crt").exists())

    def client_options(self, host: str) -> dict[str, str]:
        """libpq options of the agent's network connections to another instance at `host`: with
        TLS, as the replication role by certificate, the server checked against the cluster's CA
        and (unless `host` is an IP address) its name; without TLS, nothing."""
        tls = self.tls
        return {} if tls is None else tls.client_options(host)

    def client_env(self, host: str) -> dict[str, str]:
        """The same, as libpq environment variables, for pg_basebackup."""
        env = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY"}
        return {env[key]: value for key, value in self.client_options(host).items()}

    @property
    def rw_host(self) -> str:
        """The -rw Service: whichever instance carries the primary label (for pg_switch_wal)."""
        return self.primary_host or f"{names.rw_service(self.cluster)}.{self.namespace}.svc"

    def source_host(self, spec: InstanceSpec) -> str:
        """Where this replica clones, streams and rewinds from: the instance it follows, at the
        pod IP the operator wrote into spec.primaryHost. Never through -rw while that is known: a
        Service may still route to a deposed primary (kube-proxy and conntrack lag behind the
        label), which could then acknowledge commits again. The -rw Service only for a spec written
        before spec.primaryHost existed, or while the followed pod has no IP."""
        return self.primary_host or spec.primary_host or self.rw_host

    @property
    def runtime_dir(self) -> Path:
        return self.run_dir or self.socket_dir

    @property
    def passfile(self) -> Path:
        return self.runtime_dir / "pgpass"

    @property
    def bootstrap_marker(self) -> Path:
        # Next to PGDATA, not in it: a base backup copies PGDATA, and a clone must not inherit it.
        return self.pgdata.parent / f".{self.pgdata.name}.pgop-bootstrap"

    def check_user(self, euid: int | None = None) -> None:
        """PostgreSQL refuses to run as root: say so before trying."""
        if (os.geteuid() if euid is None else euid) == 0 and not self.run_as:
            raise SettingsError("the agent runs as root: PostgreSQL refuses that; run the pod as the "
                                "postgres user (uid 999), or set PGOP_RUN_AS=postgres")

    def binary(self, name: str) -> str:
        return str(Path(self.bindir) / name)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentSettings:
        env = os.environ if env is None else env
        missing = [key for key in REQUIRED_BY_AGENT if not env.get(key)]
        if missing:
            raise SettingsError("the agent needs the environment variables " + ", ".join(missing)
                                + " (the Postgres and bootstrap pods set them)")
        try:
            pod = PodEnv.from_env(env)
        except PodEnvError as error:
            raise SettingsError(str(error)) from None

        def number(key: str, default: float, kind=int):
            try:
                return kind(env.get(key) or default)
            except ValueError as error:
                raise SettingsError(f"{key} must be a number, not {env.get(key)!r}") from error

        run_dir = env.get("PGOP_RUN_DIR")
        log = env.get("PGOP_POSTGRES_LOG")
        return cls(
            cluster=pod.cluster,
            instance=pod.instance,
            namespace=pod.namespace,
            pgdata=Path(pod.pgdata),
            secrets_dir=Path(pod.secrets_dir),
            pod_name=pod.pod_name,
            pod_uid=pod.pod_uid,
            pod_ip=pod.pod_ip,
            node_name=pod.node_name,
            agent_port=pod.agent_port,
            agent_address=env.get("PGOP_AGENT_ADDRESS") or "0.0.0.0",
            metrics_port=number(ENV_METRICS_PORT, METRICS_PORT),
            bindir=env.get("PGOP_PG_BINDIR") or default_bindir(env),
            pg_port=number("PGOP_PG_PORT", pgconfig.POSTGRES_PORT),
            socket_dir=Path(env.get("PGOP_SOCKET_DIR") or pgconfig.SOCKET_DIRECTORY),
            listen_addresses=env.get("PGOP_LISTEN_ADDRESSES") or "*",
            connect_host=env.get("PGOP_CONNECT_HOST", ""),
            primary_host=env.get("PGOP_PRIMARY_HOST", ""),
            primary_port=number("PGOP_PRIMARY_PORT", pgconfig.POSTGRES_PORT),
            run_dir=Path(run_dir) if run_dir else None,
            interval=number("PGOP_HEARTBEAT_INTERVAL", DEFAULT_INTERVAL, float),
            status_refresh=number("PGOP_STATUS_REFRESH", DEFAULT_STATUS_REFRESH, float),
            report_refresh=number("PGOP_REPORT_REFRESH", DEFAULT_REPORT_REFRESH, float),
            isolation_timeout=number("PGOP_ISOLATION_TIMEOUT", DEFAULT_ISOLATION_TIMEOUT, float),
            max_start_attempts=number("PGOP_MAX_START_ATTEMPTS", DEFAULT_MAX_START_ATTEMPTS),
            run_as=env.get("PGOP_RUN_AS") or None,
            postgres_log=Path(log) if log else None,
            tls_dir=Path(pod.tls_dir) if pod.tls_dir else None,
            bootstrap_permit=env.get(ENV_BOOTSTRAP_PERMIT),
        )
