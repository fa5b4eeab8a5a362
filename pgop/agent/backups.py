"""What `pgop agent backup` and `pgop agent bootstrap --mode recovery` run in a pod: the
base backup and the restore with the pod's settings (AgentSettings and the PGOP_S3_* environment
of the pod contract, pgop.kernel.podenv).

What a restore restores comes from the PgInstance's spec.recovery, as the operator resolved it:
`source` (the source cluster, in this cluster's namespace; its archive is
`<path>/<namespace>/<source>/`, or `<path>/<source>/` in the legacy layout, in the bucket of the
pod's PGOP_S3_* environment, which reaches the source's archive), `s3.path` (default
PGOP_S3_PATH), `archiveLayout` (the source's pinned layout; unknown when the source PgCluster is
gone: the namespaced location is looked at first, then the legacy one), `backup` (default: the
latest one fitting the target), `targetTime` or `targetLSN` (at most one; default: the end of the
archive).

Before a base backup is uploaded, the archive's marker is checked (pgop.backup.marker): a root
that another database system archives to is refused, the backup fails with reason
ArchiveBelongsToAnotherCluster.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pgop.backup import basebackup, marker, restore
from pgop.backup.commands import archive_layout
from pgop.backup.layout import ArchiveLayout
from pgop.backup.s3 import S3Settings, S3Storage
from pgop.kernel import pgconfig
from pgop.kernel.model import API_GROUP, LEGACY_LAYOUT, NAMESPACED_LAYOUT, RecoverySpec
from pgop.runtime.incluster import InCluster

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 2.0


def _prefix(settings) -> list[str]:
    return ["runuser", "-u", settings.run_as, "--"] if settings.run_as and os.geteuid() == 0 else []


def backup_local(name: str, env: Mapping[str, str] | None = None) -> Any:
    """A base backup of this pod's Postgres (over its socket, as the postgres user) to its archive."""
    from pgop.agent.settings import AgentSettings
    env = os.environ if env is None else env
    settings = AgentSettings.from_env(env)
    s3 = S3Settings.from_env(env)
    storage = S3Storage.from_settings(s3)
    layout = archive_layout({**env, "PGOP_S3_CLUSTER": settings.cluster})
    control = (settings.pgdata / "global" / "pg_control").read_bytes()
    _check_owner(storage, layout, basebackup.system_identifier(control), settings, name)
    source = basebackup.Source(host=settings.local_host, port=settings.pg_port, user="postgres",
                               bindir=settings.bindir, prefix=_prefix(settings),
                               env={"PGPASSFILE": str(settings.passfile)} if settings.passfile.exists() else {})
    return basebackup.take_base_backup(storage, layout, name, source)


def run_backup(name: str, host: str | None = None, verbose: bool = False) -> int:
    """`pgop agent backup`: the backup, its catalog document on stdout and, in a backup pod, as
    the termination message the backup controller reads; the exit code. pgop.entry calls it
    without the command line framework (a backup pod's memory), pgop.cli with it."""
    import sys

    from pgop.backup.pod import ENV_BACKUP_OBJECT, TERMINATION_LOG
    from pgop.backup.s3 import describe_error
    from pgop.runtime import logs
    try:
        logs.configure(verbose, logs.pod_fields(os.environ))
    except ValueError as error:
        print(f"pgop agent: {error}", file=sys.stderr)
        return 2
    report = os.environ.get(ENV_BACKUP_OBJECT)
    progress = ProgressReporter(os.environ.get("PGOP_NAMESPACE", ""), report) if report else None
    try:
        backup = backup_remote(name, host, progress=progress) if host else backup_local(name)
    except Exception as error:  # S3, pg_basebackup, settings: one line saying which
        _termination_message(TERMINATION_LOG, describe_error(error), enabled=bool(report))
        print(f"pgop agent backup: {describe_error(error)}", file=sys.stderr)
        return 1
    _termination_message(TERMINATION_LOG, backup.to_json(), enabled=bool(report))
    sys.stdout.write(backup.to_json())
    sys.stdout.flush()
    return 0


def backup_arguments(args: list[str]) -> tuple[str, str | None, bool] | None:
    """(name, host, verbose) of `--name N [--host H] [-v|--verbose]` in any order; None for
    anything else (--help, a typo, `--name=N`), which the command line framework then answers."""
    found: dict[str, str] = {}
    verbose, rest = False, list(args)
    while rest:
        option = rest.pop(0)
        if option in ("-v", "--verbose"):
            verbose = True
        elif option in ("--name", "--host") and option not in found and rest and not rest[0].startswith("-"):
            found[option] = rest.pop(0)
        else:
            return None
    if "--name" not in found:
        return None
    return found["--name"], found.get("--host"), verbose


def _termination_message(path: str, text: str, enabled: bool) -> None:
    if not enabled:
        return
    try:
        with open(path, "w") as f:
            f.write(text[-4000:])  # the kubelet keeps at most 4096 bytes
    except OSError:
        pass  # then FallbackToLogsOnError, or the log, says it


class ProgressReporter:
    """Writes status.uploadedBytes of the PgBackup (env PGOP_BACKUP_OBJECT) every few seconds while
    a backup pod streams; a failed write costs a progress figure, never the backup."""

    def __init__(self, namespace: str, name: str, interval: float = PROGRESS_INTERVAL, kube: Any = None):
        self.namespace, self.name, self.interval = namespace, name, interval
        self._kube = kube
        self._last = float("-inf")
        self._warned = False

    def __call__(self, size: int) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        try:
            if self._kube is None:
                # In a pod, the standard library's one call (the kubernetes client would add
                # about 46 MB to the backup process); elsewhere pgop's client.
                self._kube = InCluster.from_env() or _kube_client()
            if isinstance(self._kube, InCluster):
                self._kube.merge_patch_status(API_GROUP, "v1", "pgbackups", self.namespace, self.name,
                                              {"uploadedBytes": size})
            else:
                self._kube.merge_patch("PgBackup", self.namespace, self.name,
                                       {"status": {"uploadedBytes": size}}, "status")
        except Exception as error:  # progress is a courtesy
            if not self._warned:
                log.warning("cannot report progress on PgBackup %s: %s", self.name, error)
                self._warned = True


def _kube_client() -> Any:
    from pgop.runtime.kube import Kube
    return Kube()


def _switch_wal_on_primary(settings, passfile: Path) -> None:
    """A backup taken from a replica ends in a segment only the primary archives, once it is
    full or switched; on a quiet database that is never. Switch it over the -rw Service, so the
    backup's last segment reaches the archive now."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    from pgop.agent import credentials
    tls = settings.client_options(settings.rw_host)
    # With TLS the replication role by certificate (granted pg_switch_wal): the superuser has no
    # network login then.
    user = pgconfig.REPLICATION_USER if tls else \
        credentials.read_credentials(settings.secrets_dir, credentials.SUPERUSER).username
    with psycopg.connect(make_conninfo("", **tls), host=settings.rw_host, port=settings.primary_port,
                         user=user, dbname="postgres", passfile=str(passfile), connect_timeout=10,
                         autocommit=True) as conn:
        conn.execute("SELECT pg_switch_wal()")


def backup_remote(name: str, host: str, env: Mapping[str, str] | None = None,
                  progress: Callable[[int], None] | None = None) -> Any:
    """A base backup of the instance at `host` (a backup pod's view: over the network, as the
    replication role whose password is in the pod's secrets) to the cluster's archive."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    from pgop.agent import credentials
    from pgop.agent.settings import AgentSettings
    from pgop.agent.state import one_row
    env = os.environ if env is None else env
    settings = AgentSettings.from_env(env)
    s3 = S3Settings.from_env(env)
    storage = S3Storage.from_settings(s3)
    layout = archive_layout({**env, "PGOP_S3_CLUSTER": settings.cluster})
    replication = credentials.read_credentials(settings.secrets_dir, credentials.REPLICATION)
    entries = [replication]
    try:
        entries.append(credentials.read_credentials(settings.secrets_dir, credentials.SUPERUSER))
    except credentials.CredentialsError:
        pass  # only needed to switch WAL after a backup from a replica
    credentials.write_private(settings.passfile, credentials.pgpass_text(entries))
    # `host` is the instance's pod IP, which no certificate names: the server is checked against
    # the cluster's CA only (verify-ca).
    tls = settings.client_options(host)
    with psycopg.connect(make_conninfo("", **tls), host=host, port=settings.pg_port, user=replication.username,
                         dbname="postgres", passfile=str(settings.passfile), connect_timeout=10) as conn:
        standby, system_id = one_row(conn, "SELECT pg_is_in_recovery(),"
                                           " (SELECT system_identifier::text FROM pg_control_system())")
    _check_owner(storage, layout, system_id, settings, name)
    source = basebackup.Source(host=host, port=settings.pg_port, user=replication.username,
                               bindir=settings.bindir, env={"PGPASSFILE": str(settings.passfile),
                                                            "PGAPPNAME": f"pgop-backup-{name}"[:63],
                                                            **settings.client_env(host)})
    before_wait = (lambda: _switch_wal_on_primary(settings, settings.passfile)) if standby else None
    log.info("base backup %s of %s (%s) to s3://%s/%s", name, host, "replica" if standby else "primary",
             s3.bucket, layout.root)
    return basebackup.take_base_backup(storage, layout, name, source, progress=progress,
                                       before_archive_wait=before_wait)


def _check_owner(storage: S3Storage, layout: ArchiveLayout, system_id: str, settings, name: str) -> None:
    """The archive must be this database system's (or nobody's yet): else ForeignArchive."""
    marker.ensure_ours(storage, layout, system_id, namespace=settings.namespace,
                       created_by=f"{settings.instance or settings.cluster} (backup {name})")


def source_candidates(wanted: RecoverySpec, namespace: str, path: str) -> list[ArchiveLayout]:
    """Where the source's archive may be, in the order to look (pure): its pinned layout when the
    operator knew it; else the namespaced location, then the legacy one. Never another namespace:
    the source is a cluster of this namespace (spec.recovery.s3.path reaches any other root,
    explicitly)."""
    namespaced = ArchiveLayout(wanted.source, path, namespace)
    legacy = ArchiveLayout(wanted.source, path)
    if wanted.archive_layout == NAMESPACED_LAYOUT:
        return [namespaced]
    if wanted.archive_layout == LEGACY_LAYOUT:
        return [legacy]
    return [namespaced, legacy]


def find_source(storage: S3Storage, candidates: list[ArchiveLayout]) -> tuple[ArchiveLayout, list]:
    """The first candidate with backups in its catalog, and those backups; the first candidate
    (with none) when no candidate has any: the restore then says there is nothing to restore."""
    for layout in candidates:
        backups = basebackup.list_backups(storage, layout.path, layout.cluster, layout.namespace)
        if backups:
            return layout, backups
    return candidates[0], []


def restore_local(settings, wanted: RecoverySpec, env: Mapping[str, str] | None = None,
                  progress: Callable[[Any], None] | None = None, attempt: int = 1) -> restore.RestoreResult:
    """Restore into this pod's (empty) PGDATA, replaying the source's WAL to the target (along
    the archive's latest timeline unless spec.recovery.targetTimeline pins one)."""
    env = os.environ if env is None else env
    if not wanted.source:
        raise restore.RestoreError("spec.recovery.source names no source cluster to restore from")
    settings_s3 = S3Settings.from_env(env)
    storage = S3Storage.from_settings(settings_s3)
    path = wanted.s3.path if wanted.s3 is not None and wanted.s3.path else settings_s3.path
    candidates = source_candidates(wanted, settings.namespace, path or "")
    source, backups = find_source(storage, candidates)
    if not backups:
        raise restore.RestoreError(
            f"no base backup of {wanted.source} in " + " nor in ".join(
                f"s3://{settings_s3.bucket}/{c.root}" for c in candidates) + ": nothing to restore from")
    log.info("restoring %s from s3://%s/%s", wanted.source, settings_s3.bucket, source.root)
    return restore.restore(
        storage, source, settings.pgdata, backups, name=wanted.backup, target_time=wanted.target_time,
        target_lsn=wanted.target_lsn, target_timeline=wanted.target_timeline, bindir=settings.bindir,
        prefix=_prefix(settings), progress=progress, attempt=attempt,
        options=f"-p {settings.pg_port} -k {settings.socket_dir} -c listen_addresses=''")
