"""`pgop agent wal-push` and `wal-fetch` as PostgreSQL runs them: exit codes are the protocol.

archive_command: 0 means archived (PostgreSQL may recycle the segment), anything else means
retry later (PostgreSQL retries the same file, in order, and counts a failure in pg_stat_archiver).

restore_command: 0 means the file is in place; 1 means "no such file", which ends archive
recovery (or, on a standby, moves on to streaming). A failure that is not "no such file" (S3
unreachable after the retries, a checksum mismatch) must not be taken for the end of the archive:
outside standby mode the command exits with ABORT_RECOVERY (> 125), which makes PostgreSQL stop
recovery with an error instead of promoting early with WAL missing. A standby (standby.signal in
PGDATA, the working directory of the command) exits 1 and keeps streaming; PostgreSQL asks again.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pgop.backup import marker, wal
from pgop.backup.layout import ArchiveLayout
from pgop.backup.s3 import ENV_ARCHIVE_CLUSTER, S3Settings, S3Storage, describe_error
from pgop.kernel import podenv

log = logging.getLogger("pgop.wal")

OK = 0
FAILED = 1
NOT_FOUND = 1
ABORT_RECOVERY = 255

ENV_CLUSTER = podenv.ENV_CLUSTER

# PostgreSQL waits for the command: at most three tries of a few seconds each, so an unreachable
# S3 costs one archive attempt ~15 s, and a shutdown (which archives once more) fits in the pod's
# grace period. PostgreSQL itself retries the file later.
S3_ATTEMPTS = 3
S3_CONNECT_TIMEOUT = 3.0
S3_READ_TIMEOUT = 30.0


def archive_layout(env: Mapping[str, str]) -> ArchiveLayout:
    """The archive the pod's environment names (the pod contract, pgop.kernel.podenv): the
    cluster, spec.backup.s3.path and, in the namespaced layout, the namespace."""
    pod = podenv.PodEnv.from_env(env)
    if not pod.archive_cluster:
        raise wal.WalError(f"neither {ENV_ARCHIVE_CLUSTER} nor {ENV_CLUSTER} says whose archive this is")
    archive = pod.archive
    return ArchiveLayout(pod.archive_cluster, archive.path if archive else "",
                         (archive.namespace or "") if archive else "")


def _target(env: Mapping[str, str]) -> tuple[S3Storage, ArchiveLayout]:
    settings = S3Settings.from_env(env)
    layout = archive_layout(env)
    storage = S3Storage.from_settings(settings, max_attempts=S3_ATTEMPTS, connect_timeout=S3_CONNECT_TIMEOUT,
                                      read_timeout=S3_READ_TIMEOUT)
    return storage, layout


def _check_owner(storage: S3Storage, layout: ArchiveLayout, path: Path, env: Mapping[str, str]) -> None:
    """Refuses (marker.ForeignArchive) to archive into a root another database system owns. The
    file is pg_wal/<name> of a data directory (archive_command runs in PGDATA); a file elsewhere
    has no pg_control to tell its system by, and is not checked."""
    system_id = wal.system_identifier(path)
    if system_id is None:
        return
    pgdata = path.absolute().parent.parent
    marker.check_before_push(storage, layout, system_id, pgdata, namespace=env.get(podenv.ENV_NAMESPACE, ""),
                             created_by=env.get(podenv.ENV_INSTANCE, ""))


def _say(text: str) -> None:
    # One line on stderr: the postgres log (or the container log) shows it next to the failure.
    print(f"pgop wal: {text}", file=sys.stderr, flush=True)


def wal_push(path: str, env: Mapping[str, str] | None = None,
             target: Callable[[Mapping[str, str]], tuple[S3Storage, ArchiveLayout]] | None = None) -> int:
    """`target`: where to push (default: a new S3 client for the environment's archive; the
    pusher, pgop.backup.pusher, keeps one)."""
    env = os.environ if env is None else env
    started = time.monotonic()
    try:
        storage, layout = (target or _target)(env)
        _check_owner(storage, layout, Path(path), env)
        result = wal.push(storage, layout, path)
    except Exception as error:  # every failure is "retry later" for PostgreSQL; say which
        _say(f"wal-push {Path(path).name} failed: {describe_error(error).removeprefix(Path(path).name + ': ')}")
        return FAILED
    if result == wal.ALREADY_ARCHIVED:
        _say(f"wal-push {Path(path).name}: already archived with the same content")
    log.debug("wal-push %s: %s in %.2fs", path, result, time.monotonic() - started)
    return OK


def wal_fetch(name: str, target: str, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> int:
    env = os.environ if env is None else env
    try:
        storage, layout = _target(env)
        # %p is pg_wal/<name> in PGDATA, the command's working directory: pg_control says whose WAL
        # this server may replay.
        result = wal.fetch(storage, layout, name, target,
                           system_id=wal.system_identifier((cwd or Path.cwd()) / target))
    except Exception as error:
        standby = ((cwd or Path.cwd()) / "standby.signal").exists()
        code = NOT_FOUND if standby else ABORT_RECOVERY
        _say(f"wal-fetch {name} failed: {describe_error(error).removeprefix(name + ': ')}"
             + ("" if standby else "; stopping recovery rather than ending it early"))
        return code
    return OK if result == wal.FETCHED else NOT_FOUND

