"""Point-in-time restore from S3: a base backup unpacked into an empty PGDATA (streamed: S3 ->
zstd -> tar, no compressed copy on disk), recovery settings that fetch the SOURCE cluster's WAL,
and one run of postgres until it reaches the target and promotes onto a new timeline.

The settings for the restore_command carry the source archive in the command itself
(`PGOP_S3_CLUSTER=<source> PGOP_S3_PATH=<path> PGOP_S3_NAMESPACE=<namespace> pgop agent wal-fetch
%f %p`, the namespace empty for a source in the legacy layout), so the server needs only the pod's
usual PGOP_S3_* environment (bucket, endpoint, credentials).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import zstandard

from pgop.backup import layout as keys
from pgop.backup.catalog import Backup, choose_backup
from pgop.backup.layout import ArchiveLayout
from pgop.backup.s3 import ENV_ARCHIVE_CLUSTER, ENV_PATH, S3Storage
from pgop.kernel import pgconfig, podenv
from pgop.kernel.conditions import parse_time

log = logging.getLogger(__name__)

CHUNK = 1 << 20
RECOVERY_TIMEOUT = 3600.0
# Added to postgresql.auto.conf by the restore and removed again once it promoted.
MARK_BEGIN = "# pgop restore: begin (removed after promotion)"
MARK_END = "# pgop restore: end"


class RestoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class RestoreResult:
    backup: Backup
    seconds_unpack: float
    bytes_unpacked: int
    timeline: int | None = None


def choose(backups: Sequence[Backup], name: str | None = None, target_time: datetime | str | None = None,
           target_lsn: str | None = None) -> Backup:
    """The backup to start from (catalog.choose_backup; RestoreTargetError carries the range)."""
    return choose_backup(backups, target_time, target_lsn, name=name, now=datetime.now(UTC))


def unpack(storage: S3Storage, layout: ArchiveLayout, backup: Backup, pgdata: Path,
           prefix: Sequence[str] = ()) -> tuple[int, float]:
    """Stream base.tar.zst into `tar -x` in PGDATA (run with `prefix`, e.g. as the postgres
    user); check the sha256 of the tar against the catalog. (bytes unpacked, seconds)."""
    key = keys.base_archive_key(layout, backup.backup_name)
    got = storage.get(key)
    if got is None:
        raise RestoreError(f"s3://{storage.bucket}/{key} is missing: backup {backup.backup_name} is damaged")
    _, body = got
    expected = next((f.get("sha256") for f in backup.files if f.get("name") == keys.BASE_ARCHIVE), None)
    started = time.monotonic()
    tar = subprocess.Popen([*prefix, "tar", "-x", "-f", "-", "-C", str(pgdata)], stdin=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    assert tar.stdin is not None and tar.stderr is not None  # both are PIPEs
    digest = hashlib.sha256()
    total = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True, closefd=False) as reader:
            while chunk := reader.read(CHUNK):
                digest.update(chunk)
                total += len(chunk)
                tar.stdin.write(chunk)
        tar.stdin.close()
        code = tar.wait(timeout=300)
    except BaseException:
        tar.kill()
        tar.wait(10)
        raise
    finally:
        body.close()
    if code != 0:
        raise RestoreError(f"tar failed unpacking {key}: {tar.stderr.read().decode(errors='replace')[-1000:]}")
    if expected and digest.hexdigest() != expected:
        raise RestoreError(f"{key} does not match its checksum in backup.json: damaged in S3")
    return total, time.monotonic() - started


def restore_command(source: str, path: str = "", extra_env: Mapping[str, str] | None = None,
                    namespace: str = "") -> str:
    """wal-fetch from the source cluster's archive (bucket, endpoint, credentials: the pod's). The
    namespace is always said, empty for the legacy layout: the pod's own may differ."""
    env = {ENV_ARCHIVE_CLUSTER: source, ENV_PATH: path, podenv.ENV_S3_NAMESPACE: namespace, **(extra_env or {})}
    assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
    return f"{assignments} {pgconfig.WAL_FETCH_COMMAND}"


def recovery_settings(command: str, target_time: datetime | str | None = None,
                      target_lsn: str | None = None) -> dict[str, str]:
    settings = {"restore_command": command, "recovery_target_action": "promote",
                "recovery_target_timeline": "current", "archive_mode": "off"}
    if target_time is not None:
        if isinstance(target_time, str):
            # RFC 3339 as the CRD takes it; PostgreSQL reads its own timestamp syntax, not 'T…Z'.
            parsed = parse_time(target_time)
            if parsed is None:
                raise ValueError("the recovery target time is empty")
            target_time = parsed
        settings["recovery_target_time"] = target_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    elif target_lsn is not None:
        settings["recovery_target_lsn"] = target_lsn
    # without a target: to the end of the archived WAL
    return settings


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _own_like(path: Path, reference: Path) -> None:
    if os.geteuid() == 0:
        info = reference.stat()
        os.chown(path, info.st_uid, info.st_gid)


def write_recovery(pgdata: Path, settings: Mapping[str, str]) -> None:
    """The recovery settings at the end of postgresql.auto.conf (they win over postgresql.conf),
    between markers, and recovery.signal."""
    auto = pgdata / "postgresql.auto.conf"
    text = auto.read_text() if auto.exists() else ""
    lines = [MARK_BEGIN, *(f"{k} = {_quote(v)}" for k, v in settings.items()), MARK_END]
    auto.write_text(text + ("" if not text or text.endswith("\n") else "\n") + "\n".join(lines) + "\n")
    signal = pgdata / "recovery.signal"
    signal.write_text("")
    for path in (auto, signal):
        _own_like(path, pgdata)


def remove_recovery(pgdata: Path) -> None:
    auto = pgdata / "postgresql.auto.conf"
    kept, inside = [], False
    for line in auto.read_text().splitlines():
        if line == MARK_BEGIN:
            inside = True
        elif line == MARK_END:
            inside = False
        elif not inside:
            kept.append(line)
    auto.write_text("\n".join(kept) + ("\n" if kept else ""))


def _pg(bindir: str | None, name: str) -> str:
    return f"{bindir}/{name}" if bindir else name


def control_data(pgdata: Path, bindir: str | None = None, prefix: Sequence[str] = ()) -> dict[str, str]:
    out = subprocess.run([*prefix, _pg(bindir, "pg_controldata"), str(pgdata)], capture_output=True, text=True,
                         env={**os.environ, "LC_ALL": "C"}, timeout=60)
    return {key.strip(): value.strip() for key, _, value in
            (line.partition(":") for line in out.stdout.splitlines()) if value}


def timeline_of(pgdata: Path, bindir: str | None = None, prefix: Sequence[str] = ()) -> int | None:
    value = control_data(pgdata, bindir, prefix).get("Latest checkpoint's TimeLineID")
    return int(value) if value else None


def recover(pgdata: Path, *, bindir: str | None = None, prefix: Sequence[str] = (),
            options: str = "", log_file: Path | None = None, timeout: float = RECOVERY_TIMEOUT,
            env: Mapping[str, str] | None = None) -> int | None:
    """Start postgres on the restored PGDATA, wait until it promoted (recovery.signal is gone),
    stop it; the new timeline. A recovery that stops with an error (target not reached, WAL
    missing) fails with the end of the server log."""
    log_file = log_file or pgdata.parent / f"{pgdata.name}-restore.log"
    argv = [*prefix, _pg(bindir, "pg_ctl"), "-D", str(pgdata), "-l", str(log_file), "-w", "-t", str(int(min(timeout, 600))), "start"]
    if options:
        argv[-1:-1] = ["-o", options]
    started = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=min(timeout, 600) + 30)
    if started.returncode != 0:
        raise RestoreError(f"pg_ctl start failed: {started.stderr.strip()}\n{_tail(log_file)}")
    deadline = time.monotonic() + timeout
    try:
        # recovery.signal goes when the new timeline is chosen; the server writes "in production"
        # to pg_control once the end of recovery is logged: a stop after that checkpoints on it.
        while ((pgdata / "recovery.signal").exists()
               or control_data(pgdata, bindir, prefix).get("Database cluster state") != "in production"):
            if not (pgdata / "postmaster.pid").exists():
                raise RestoreError(f"postgres stopped during recovery:\n{_tail(log_file)}")
            if time.monotonic() > deadline:
                raise RestoreError(f"recovery did not finish within {timeout:.0f}s:\n{_tail(log_file)}")
            time.sleep(0.3)
    finally:
        if (pgdata / "postmaster.pid").exists():
            subprocess.run([*prefix, _pg(bindir, "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "-t", "120",
                            "stop"], capture_output=True, timeout=180)
    remove_recovery(pgdata)
    return timeline_of(pgdata, bindir, prefix)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def restore(storage: S3Storage, source: ArchiveLayout, pgdata: Path, backups: Sequence[Backup], *,
            name: str | None = None, target_time: datetime | str | None = None, target_lsn: str | None = None,
            bindir: str | None = None, prefix: Sequence[str] = (), options: str = "",
            command_env: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None,
            timeout: float = RECOVERY_TIMEOUT) -> RestoreResult:
    """The whole restore into an empty PGDATA (which must exist, owned by the postgres user)."""
    backup = choose(backups, name, target_time, target_lsn)
    if any(pgdata.iterdir()):
        raise RestoreError(f"{pgdata} is not empty")
    size, seconds = unpack(storage, source, backup, pgdata, prefix)
    for leftover in ("postmaster.pid", "postmaster.opts", "standby.signal"):
        (pgdata / leftover).unlink(missing_ok=True)
    write_recovery(pgdata, recovery_settings(restore_command(source.cluster, source.path, command_env,
                                                             namespace=source.namespace),
                                             target_time, target_lsn))
    timeline = recover(pgdata, bindir=bindir, prefix=prefix, options=options, timeout=timeout, env=env)
    return RestoreResult(backup, seconds, size, timeline)
