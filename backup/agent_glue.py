"""What `pgop agent backup` and `pgop agent bootstrap --mode recovery` run in a pod: the
base backup and the restore with the pod's settings (AgentSettings and the PGOP_S3_* environment).

Restore contract (environment of the bootstrap pod, besides the usual PGOP_S3_* of the pod, whose
bucket, endpoint and credentials reach the source's archive):

| variable | meaning |
|---|---|
| `PGOP_RECOVERY_SOURCE` | the source cluster's name (its archive: `<path>/<source>/`); required |
| `PGOP_RECOVERY_S3_PATH` | the source's spec.backup.s3.path; default PGOP_S3_PATH |
| `PGOP_RECOVERY_BACKUP` | a backup name; default the latest one fitting the target |
| `PGOP_RECOVERY_TARGET_TIME` / `PGOP_RECOVERY_TARGET_LSN` | at most one; default the end of the archive |
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from backup import basebackup, restore
from backup.layout import ArchiveLayout
from backup.s3 import ENV_PATH, S3Settings, S3Storage

log = logging.getLogger(__name__)

ENV_SOURCE = "PGOP_RECOVERY_SOURCE"
ENV_SOURCE_PATH = "PGOP_RECOVERY_S3_PATH"
ENV_BACKUP = "PGOP_RECOVERY_BACKUP"
ENV_TARGET_TIME = "PGOP_RECOVERY_TARGET_TIME"
ENV_TARGET_LSN = "PGOP_RECOVERY_TARGET_LSN"


def _prefix(settings) -> list[str]:
    return ["runuser", "-u", settings.run_as, "--"] if settings.run_as and os.geteuid() == 0 else []


def backup_local(name: str, env: Mapping[str, str] | None = None) -> Any:
    """A base backup of this pod's Postgres (over its socket, as the postgres user) to its archive."""
    from pgop.agent.settings import AgentSettings
    env = os.environ if env is None else env
    settings = AgentSettings.from_env(env)
    s3 = S3Settings.from_env(env)
    storage = S3Storage.from_settings(s3)
    layout = ArchiveLayout(settings.cluster, s3.path)
    source = basebackup.Source(host=settings.local_host, port=settings.pg_port, user="postgres",
                               bindir=settings.bindir, prefix=_prefix(settings),
                               env={"PGPASSFILE": str(settings.passfile)} if settings.passfile.exists() else {})
    return basebackup.take_base_backup(storage, layout, name, source)


def recovery_request(env: Mapping[str, str]) -> dict[str, str | None]:
    source = env.get(ENV_SOURCE, "")
    if not source:
        raise restore.RestoreError(f"{ENV_SOURCE} names no source cluster to restore from")
    return {"source": source, "path": env.get(ENV_SOURCE_PATH, env.get(ENV_PATH, "")),
            "backup": env.get(ENV_BACKUP) or None, "targetTime": env.get(ENV_TARGET_TIME) or None,
            "targetLSN": env.get(ENV_TARGET_LSN) or None}


def restore_local(settings, env: Mapping[str, str] | None = None) -> restore.RestoreResult:
    """Restore into this pod's (empty) PGDATA, replaying the source's WAL to the target."""
    env = os.environ if env is None else env
    wanted = recovery_request(env)
    storage = S3Storage.from_settings(S3Settings.from_env(env))
    source = ArchiveLayout(wanted["source"], wanted["path"] or "")
    backups = basebackup.list_backups(storage, source.path, source.cluster)
    return restore.restore(
        storage, source, settings.pgdata, backups, name=wanted["backup"], target_time=wanted["targetTime"],
        target_lsn=wanted["targetLSN"], bindir=settings.bindir, prefix=_prefix(settings),
        options=f"-p {settings.pg_port} -k {settings.socket_dir} -c listen_addresses=''")
