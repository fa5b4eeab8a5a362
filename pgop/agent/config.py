"""postgresql.conf and pg_hba.conf on disk, and what it costs to apply a new version of them.

The agent owns both files outright (pgop.pgconfig says what goes in them): a fully rendered
postgresql.conf, so the file on disk is the configuration, and the previous file tells what
changed. postgresql.auto.conf (ALTER SYSTEM) is left to the administrator.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pgop.agent.credentials import write_private
from pgop.agent.settings import AgentSettings
from pgop.kernel import pgconfig
from pgop.kernel.model import InstanceSpec

_SETTING_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*) = '((?:[^'\\]|''|\\.)*)'$")


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
) -> dict[str, str]:
    """Every setting this instance should run with (the primary and a replica differ only in
    where they stream from and in who confirms commits)."""
    source = None
    if replica:
        source = pgconfig.ReplicationSource(
            host=settings.replication_host,
            port=settings.primary_port,
            application_name=settings.instance,
            slot_name=pgconfig.slot_name(settings.instance),
            passfile=str(settings.passfile),
        )
    rendered = pgconfig.postgresql_settings(
        cluster_name=spec.cluster or settings.cluster,
        parameters=spec.parameters,
        synchronous_standby_names="" if replica else synchronous_standby_names,
        wal_archiving=WAL_ARCHIVING_AVAILABLE and spec.wal_archiving and spec.s3 is not None,
        replication_source=source,
    )
    # Where this instance listens; the pod's values are pgconfig's, a test machine's are its own.
    rendered["port"] = str(settings.pg_port)
    rendered["unix_socket_directories"] = str(settings.socket_dir)
    rendered["listen_addresses"] = settings.listen_addresses
    return rendered


# `pgop agent wal-push` exists (backup/wal.py): with spec.backup.s3 and walArchiving, the
# archive_command archives to S3. False would keep archiving off (archive_command ':').
WAL_ARCHIVING_AVAILABLE = True


def hba_text() -> str:
    return pgconfig.render_pg_hba(pgconfig.hba_rules())


def parse_postgresql_conf(text: str) -> dict[str, str] | None:
    """The settings of a file the agent rendered, or None for a file it did not write."""
    if not text.startswith("# Written by the pgop agent"):
        return None
    found: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        match = _SETTING_LINE.match(line)
        if match:
            key, value = match.groups()
            found[key] = re.sub(r"''|\\(.)", lambda m: m.group(1) if m.group(1) is not None else "'", value)
    return found


@dataclass(frozen=True)
class WrittenConfig:
    settings: dict[str, str] | None  # None: no file the agent wrote (a fresh initdb or clone)
    hba: str | None


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


def change_cost(written: WrittenConfig, settings: dict[str, str], hba: str,
                postgres_version: int) -> pgconfig.SettingsChange | None:
    """None when the files on disk already say this; otherwise which settings changed and which
    of those only a restart applies (an unknown previous file counts as needing a restart)."""
    if written.settings == settings and written.hba == hba:
        return None
    if written.settings is None:
        every = frozenset(settings)
        return pgconfig.SettingsChange(changed=every, needs_restart_for=every)
    change = pgconfig.classify_change(written.settings, settings, postgres_version)
    if not change.changed:
        # Only pg_hba.conf differs: a reload applies it.
        return pgconfig.SettingsChange(changed=frozenset({"pg_hba.conf"}), needs_restart_for=frozenset())
    return change


PENDING_RESTART_QUERY = "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name"
