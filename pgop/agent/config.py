"""postgresql.conf and pg_hba.conf on disk: what goes in them, reading and writing them.

The agent owns both files outright (pgop.pgconfig says what goes in them): a fully rendered
postgresql.conf, so the file on disk is the configuration, and the previous file tells what
changed (`config_change`, pure: what it costs to apply a new version, reload or restart).
postgresql.auto.conf (ALTER SYSTEM) is left to the administrator.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# The pure side, still reachable here under its old names.
from pgop.agent.config_change import WrittenConfig as WrittenConfig
from pgop.agent.config_change import change_cost as change_cost
from pgop.agent.config_change import parse_postgresql_conf as parse_postgresql_conf
from pgop.agent.credentials import write_private
from pgop.agent.settings import AgentSettings
from pgop.backup import prefetch
from pgop.kernel import pgconfig
from pgop.kernel.model import InstanceSpec


@dataclass(frozen=True)
class ConfigFiles:
    pgdata: Path

    @property
    def postgresql_conf(self) -> Path:
        return self.pgdata / "postgresql.conf"

    @property
    def pg_hba(self) -> Path:
        return self.pgdata / "pg_hba.conf"

    @property
    def standby_signal(self) -> Path:
        return self.pgdata / "standby.signal"


def desired_settings(
    settings: AgentSettings,
    spec: InstanceSpec,
    *,
    replica: bool,
    synchronous_standby_names: str = "",
    streaming: bool = True,
    env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Every setting this instance should run with (the primary and a replica differ only in
    where they stream from and in who confirms commits). A replica with `streaming` False (its
    spec.primary is "": a failover decides) streams from nobody: no primary_conninfo, no slot; a
    reload ends its WAL receiver.

    A streaming replica of a cluster that archives also reads the archive (`replica_restore_command`).
    `env` is the environment postgres runs with (the agent's): it names the prefetch spool."""
    archiving = WAL_ARCHIVING_AVAILABLE and spec.wal_archiving and spec.s3 is not None
    source = None
    if replica and streaming:
        source = pgconfig.ReplicationSource(
            host=settings.source_host(spec),
            port=settings.primary_port,
            application_name=settings.instance,
            slot_name=pgconfig.slot_name(settings.instance),
            passfile=str(settings.passfile),
            tls=settings.tls,
        )
    rendered = pgconfig.postgresql_settings(
        cluster_name=spec.cluster or settings.cluster,
        parameters=spec.parameters,
        synchronous_standby_names="" if replica else synchronous_standby_names,
        wal_archiving=archiving,
        replica_restore_command=replica_restore_command(
            os.environ if env is None else env) if replica and streaming and archiving else None,
        replication_source=source,
        tls=settings.tls,
    )
    # Where this instance listens; the pod's values are pgconfig's, a test machine's are its own.
    rendered["port"] = str(settings.pg_port)
    rendered["unix_socket_directories"] = str(settings.socket_dir)
    rendered["listen_addresses"] = settings.listen_addresses
    if replica and not streaming:
        rendered["primary_conninfo"] = ""
        rendered["primary_slot_name"] = ""
    return rendered


def replica_restore_command(env: Mapping[str, str]) -> str:
    """A replica's restore_command: its cluster's own archive (the pod's PGOP_S3_* environment, as
    wal-push uses), through the prefetcher a restore uses, a prefetched file taken by the shell.

    Only a replica that streams gets one (see desired_settings): while a failover decides (spec.primary
    "") a replica must not replay on from the archive past what the candidates reported. On a
    standby, wal-fetch answers "not there" (exit 1) for any failure, and PostgreSQL goes back to
    streaming."""
    return prefetch.shell_fast_path(env) + pgconfig.WAL_FETCH_COMMAND


# `pgop agent wal-push` exists (backup/wal.py): with spec.backup.s3 and walArchiving, the
# archive_command archives to S3. False would keep archiving off (archive_command ':').
WAL_ARCHIVING_AVAILABLE = True


def hba_text(settings: AgentSettings | None = None, spec: InstanceSpec | None = None) -> str:
    """pg_hba.conf of the instance: TLS-only network logins when the pod has certificates."""
    return pgconfig.render_pg_hba(pgconfig.hba_rules(
        tls=settings is not None and settings.tls is not None,
        superuser_over_network=bool(spec is not None and spec.enable_superuser_access)))


def read_written(files: ConfigFiles) -> WrittenConfig:
    try:
        settings = parse_postgresql_conf(files.postgresql_conf.read_text())
    except FileNotFoundError:
        settings = None
    try:
        hba = files.pg_hba.read_text()
    except FileNotFoundError:
        hba = None
    return WrittenConfig(settings, hba)


def write(files: ConfigFiles, settings: dict[str, str], hba: str, owner: tuple[int, int] | None = None) -> None:
    # Private like everything in PGDATA; atomic, so a postgres reading it never sees half a file.
    write_private(files.postgresql_conf, pgconfig.render_postgresql_conf(settings), owner)
    write_private(files.pg_hba, hba, owner)


def write_standby_signal(files: ConfigFiles, owner: tuple[int, int] | None = None) -> None:
    write_private(files.standby_signal, "", owner)


PENDING_RESTART_QUERY = "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name"
