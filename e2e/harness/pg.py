"""PostgreSQL server processes from Debian's packages for integration tests, run as the
`postgres` OS user (PostgreSQL refuses to run as root)."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .services import free_port, pg_bindir

OS_USER = "postgres"


def _as_user(argv: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", OS_USER, "--", *argv]
    return subprocess.run(argv, text=True, capture_output=True, **kw)


@dataclass
class LocalPostgres:
    """One PostgreSQL server in a scratch directory, listening on loopback and a socket dir."""
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pgop-pg-", dir="/var/tmp")))
    port: int = field(default_factory=free_port)
    bindir: str = field(default_factory=pg_bindir)

    @property
    def pgdata(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    def _chown(self) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam(OS_USER)
            for p in (self.root, self.socket_dir):
                p.mkdir(exist_ok=True)
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def initdb(self, *extra: str) -> None:
        self._chown()
        p = _as_user([f"{self.bindir}/initdb", "-D", str(self.pgdata), "-U", "postgres",
                      "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8",
                      "--locale=C.UTF-8", *extra])
        if p.returncode != 0:
            raise RuntimeError(f"initdb failed: {p.stderr}")

    def start(self, timeout: float = 30) -> None:
        self._chown()
        opts = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
        p = _as_user([f"{self.bindir}/pg_ctl", "-D", str(self.pgdata), "-o", opts,
                      "-l", str(self.root / "postgres.log"), "-w", "-t", str(int(timeout)), "start"])
        if p.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {p.stderr}\n{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        if (self.pgdata / "postmaster.pid").exists():
            _as_user([f"{self.bindir}/pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop"])

    def psql(self, sql: str, db: str = "postgres") -> str:
        p = _as_user([f"{self.bindir}/psql", "-h", str(self.socket_dir), "-p", str(self.port),
                      "-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        if p.returncode != 0:
            raise RuntimeError(f"psql failed: {p.stderr}")
        return p.stdout.strip()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.root / "postgres.log").read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------ the pgop agent, without pods

@dataclass
class AgentHost:
    """A scratch machine for `pgop agent` instances: the secret files a pod would mount, and one
    directory per instance (PGDATA, socket, log), owned by the postgres OS user.

    The agents run in threads of the test process (root); their postgres children switch to the
    postgres user (AgentSettings.run_as), and talk to each other over loopback ports.
    """
    cluster: str = "orders"
    namespace: str = "test"
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pgop-agent-", dir="/var/tmp")))
    bindir: str = field(default_factory=pg_bindir)
    passwords: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        import secrets as random
        pw = pwd.getpwnam(OS_USER) if os.geteuid() == 0 else None
        self._ids = (pw.pw_uid, pw.pw_gid) if pw else None
        self._own(self.root)
        users = {"superuser": "postgres", "replication": "streaming_replica", "app": "app"}
        self.secrets_dir.mkdir(exist_ok=True)
        self._own(self.secrets_dir)
        for kind, username in users.items():
            directory = self.secrets_dir / kind
            directory.mkdir(parents=True, exist_ok=True)
            self._own(directory)
            password = random.token_hex(16)
            self.passwords[kind] = password
            for name, value in (("username", username), ("password", password)):
                (directory / name).write_text(value)
                (directory / name).chmod(0o440)
                self._own(directory / name)

    def _own(self, path: Path) -> None:
        if self._ids:
            os.chown(path, *self._ids)

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    def settings(self, instance: str, primary_port: int | None = None, interval: float = 0.5):
        from pgop.agent.settings import AgentSettings
        home = self.root / instance
        home.mkdir(exist_ok=True)
        self._own(home)
        return AgentSettings(
            cluster=self.cluster, instance=instance, namespace=self.namespace,
            pgdata=home / "pgdata", secrets_dir=self.secrets_dir, pod_name=instance,
            pod_ip="127.0.0.1", agent_port=free_port(), agent_address="127.0.0.1", metrics_port=free_port(),
            bindir=self.bindir, pg_port=free_port(), socket_dir=home / "run",
            listen_addresses="127.0.0.1", connect_host="127.0.0.1",
            primary_host="127.0.0.1", primary_port=primary_port or 5432, run_dir=home / "run",
            interval=interval, run_as=OS_USER if os.geteuid() == 0 else None,
            postgres_log=home / "postgres.log",
        )

    def env(self, settings, store_dir: Path | None = None) -> dict[str, str]:
        """The environment a pod gives `pgop agent`, plus this machine's ports and directories."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PGOP_CLUSTER": settings.cluster, "PGOP_INSTANCE": settings.instance,
            "PGOP_NAMESPACE": settings.namespace, "PGOP_POD_NAME": settings.pod_name,
            "PGOP_POD_IP": settings.pod_ip, "PGDATA": str(settings.pgdata),
            "PGOP_AGENT_PORT": str(settings.agent_port), "PGOP_AGENT_ADDRESS": settings.agent_address,
            "PGOP_METRICS_PORT": str(settings.metrics_port),
            "PGOP_SECRETS_DIR": str(settings.secrets_dir), "PGOP_PG_BINDIR": settings.bindir,
            "PGOP_PG_PORT": str(settings.pg_port), "PGOP_SOCKET_DIR": str(settings.socket_dir),
            "PGOP_LISTEN_ADDRESSES": settings.listen_addresses, "PGOP_CONNECT_HOST": settings.connect_host,
            "PGOP_PRIMARY_HOST": settings.primary_host, "PGOP_PRIMARY_PORT": str(settings.primary_port),
            "PGOP_RUN_DIR": str(settings.run_dir), "PGOP_HEARTBEAT_INTERVAL": str(settings.interval),
            "PGOP_POSTGRES_LOG": str(settings.postgres_log),
        }
        if settings.run_as:
            env["PGOP_RUN_AS"] = settings.run_as
        if store_dir is not None:
            env["PGOP_INSTANCE_STORE"] = str(store_dir)
        return env

    def connect(self, settings, user: str = "postgres", dbname: str = "postgres"):
        import psycopg
        kind = {"postgres": "superuser", "streaming_replica": "replication"}.get(user, "app")
        return psycopg.connect(host="127.0.0.1", port=settings.pg_port, user=user, dbname=dbname,
                               password=self.passwords[kind], autocommit=True, connect_timeout=5)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
