"""Point-in-time restore from S3: a base backup unpacked into an empty PGDATA (streamed: S3 ->
zstd -> tar, no compressed copy on disk), recovery settings that fetch the SOURCE cluster's WAL,
and one run of postgres until it reaches the target and promotes onto a new timeline.

The settings for the restore_command carry the source archive in the command itself
(`PGOP_S3_CLUSTER=<source> PGOP_S3_PATH=<path> PGOP_S3_NAMESPACE=<namespace> pgop agent wal-fetch
%f %p`, the namespace empty for a source in the legacy layout), so the server needs only the pod's
usual PGOP_S3_* environment (bucket, endpoint, credentials).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import queue
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zstandard

from pgop.backup import durable, encryption, prefetch
from pgop.backup import layout as keys
from pgop.backup import recovery_progress as progress_rules
from pgop.backup.catalog import Backup, choose_backup
from pgop.backup.layout import ArchiveLayout
from pgop.backup.s3 import ENV_ARCHIVE_CLUSTER, ENV_PATH, S3Storage
from pgop.kernel import pgconfig, podenv
from pgop.kernel.conditions import parse_time

log = logging.getLogger(__name__)

CHUNK = 1 << 20
PIPELINE_CHUNKS = 4  # chunks waiting for each of unpack's two consumer threads
SYNC_EVERY = 16 << 20  # of tar: the member being written is written back this often
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
           prefix: Sequence[str] = (), progress: Callable[[int], None] | None = None,
           sync: bool = True) -> tuple[int, float]:
    """Stream base.tar.zst into `tar -x` in PGDATA (run with `prefix`, e.g. as the postgres
    user); check it against the catalog: the sha256 of the object as stored when the catalog has
    it (`storedSha256`, backups since 2026-12; zstd's frame checksums cover the decompression),
    else the sha256 of the tar (2 GB hashed instead of 90 MB); with `sync`, the restored files on
    disk (pgop.backup.durable). (bytes unpacked, seconds)."""
    key = keys.base_archive_key(layout, backup.backup_name)
    got = storage.get(key)
    if got is None:
        raise RestoreError(f"s3://{storage.bucket}/{key} is missing: backup {backup.backup_name} is damaged")
    _, body = got
    entry = next((f for f in backup.files if f.get("name") == keys.BASE_ARCHIVE), {})
    stored = _HashingReader(body) if entry.get("storedSha256") else None
    expected = entry.get("storedSha256") or entry.get("sha256")
    started = time.monotonic()
    # -v names each member as tar starts it: the one before is complete and is fsynced meanwhile.
    # Records of CHUNK bytes (-b, read whole from the pipe: -B) through a pipe of that size: tar's
    # default, 10 KB reads from a 64 KB pipe, costs a context switch every few KB (2 GB restored
    # in 6.2 s instead of 3.0 with the same fsyncs, measured here).
    tar = subprocess.Popen([*prefix, "tar", "-x", "-b", str(CHUNK // 512), "-B", *(["-v"] if sync else []),
                            "-f", "-", "-C", str(pgdata)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE if sync else subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    assert tar.stdin is not None and tar.stderr is not None  # both are PIPEs
    with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size or the user's quota: slower
        fcntl.fcntl(tar.stdin.fileno(), fcntl.F_SETPIPE_SZ, CHUNK)
    syncer = durable.SyncBehind(pgdata) if sync else None
    names = threading.Thread(target=_feed_names, args=(tar.stdout, syncer), daemon=True) if syncer else None
    if names:
        names.start()
    digest = stored.digest if stored else hashlib.sha256()
    total = written = 0

    def write(chunk: bytes) -> None:
        nonlocal written
        tar.stdin.write(chunk)  # type: ignore[union-attr]
        written += len(chunk)
        if syncer and written % SYNC_EVERY < len(chunk):
            syncer.written()

    # Stages at once: this thread reads S3 (hashing the stored bytes) and decompresses, one thread
    # feeds tar and, for a backup without storedSha256, one hashes the tar (zstd, hashlib and the
    # pipe write all let go of the GIL: on two cores they overlap instead of taking turns). Each
    # queue holds a few chunks, so memory stays bounded.
    failed: list[BaseException] = []
    consumers: list[tuple[Callable[[bytes], None], str]] = [(write, "tar")]
    if not stored:
        consumers.append((digest.update, "sha256"))
    queues: tuple[queue.Queue[bytes | None], ...] = tuple(queue.Queue(PIPELINE_CHUNKS) for _ in consumers)
    stages = [threading.Thread(target=_consume, args=(chunks, consume, failed), daemon=True,
                               name=f"restore-{what}")
              for chunks, (consume, what) in zip(queues, consumers, strict=True)]
    for stage in stages:
        stage.start()
    try:
        try:
            # An encrypted tar (its catalog names the key id) must be encrypted: a plain object there was swapped in.
            plain = encryption.open_reader(stored or body, encryption.reading_keys(storage), key,
                                           require=bool(backup.key_id))
            with zstandard.ZstdDecompressor().stream_reader(plain, read_across_frames=True, closefd=False) as reader:
                while not failed and (chunk := reader.read(CHUNK)):
                    total += len(chunk)
                    for chunks in queues:
                        chunks.put(chunk)
                    if progress:
                        progress(total)
            if stored and not failed:
                stored.drain()  # anything after the last frame is part of the object too
        finally:
            for chunks in queues:
                chunks.put(None)
            for stage in stages:
                stage.join()
        if failed:
            raise failed[0]
        tar.stdin.close()
        code = tar.wait(timeout=1800)  # what tar still writes after the last byte came
        if names:
            names.join()
    except encryption.EncryptionError as error:
        _stop(tar, syncer)
        raise RestoreError(str(error)) from None
    except zstandard.ZstdError as error:  # a damaged frame, or its content checksum wrong
        _stop(tar, syncer)
        raise RestoreError(f"{key} is damaged in S3: zstd cannot decompress it ({error})") from None
    except BaseException:
        _stop(tar, syncer)
        raise
    finally:
        body.close()
    if code != 0:
        if syncer:
            syncer.abandon()
        raise RestoreError(f"tar failed unpacking {key}: {tar.stderr.read().decode(errors='replace')[-1000:]}")
    if expected and digest.hexdigest() != expected:
        if syncer:
            syncer.abandon()
        raise RestoreError(f"{key} does not match its checksum in backup.json: damaged in S3")
    if syncer:
        syncer.finish()
    return total, time.monotonic() - started


class _HashingReader:
    """A stored object's body that hashes what is read of it."""

    def __init__(self, body: Any):
        self.body = body
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.body.read(size)
        self.digest.update(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def close(self) -> None:
        self.body.close()


def _consume(chunks: queue.Queue[bytes | None], consume: Callable[[bytes], None], failed: list[BaseException]) -> None:
    """One stage of unpack's pipeline: `consume` every chunk until None. After a failure (its own
    or another stage's) it only drains, so the reader never waits on a full queue."""
    while (chunk := chunks.get()) is not None:
        if failed:
            continue
        try:
            consume(chunk)
        except BaseException as error:  # handed to the reader, which raises it
            failed.append(error)


def _feed_names(stream, syncer: durable.SyncBehind) -> None:
    with stream:
        for line in stream:
            syncer.feed(line.decode(errors="surrogateescape"))


def _stop(tar: subprocess.Popen, syncer: durable.SyncBehind | None) -> None:
    tar.kill()
    tar.wait(10)
    if syncer:
        syncer.abandon()


def command_environment(source: str, path: str = "", extra_env: Mapping[str, str] | None = None,
                        namespace: str = "") -> dict[str, str]:
    """What the restore_command sets before `pgop agent wal-fetch`: the source archive."""
    return {ENV_ARCHIVE_CLUSTER: source, ENV_PATH: path, podenv.ENV_S3_NAMESPACE: namespace, **(extra_env or {})}


def warm_prefetch(pgdata: Path, backup: Backup, env: Mapping[str, str],
                  prefix: Sequence[str] = ()) -> subprocess.Popen | None:
    """Start warming the restore_command's prefetcher (as the server's user: `prefix`) on the
    backup's first WAL segment, as the base backup begins to unpack: it loads its code meanwhile
    and waits for its input to end (pgop.backup.walget.warm_once_unpacked). `env` is the one the
    restore_command will see. The caller says when the unpack is over (release_warm) and reaps
    it; a failure only means the first restore_command starts the prefetcher itself."""
    first = backup.begin_wal or ""
    if not prefetch.would_warm(first, env):
        return None
    argv = [*prefix, "pgop", "agent", "wal-fetch", "--prefetch", first, str(pgdata / "pg_wal" / first)]
    try:
        return subprocess.Popen(argv, env=dict(env), cwd=pgdata, stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as error:
        log.info("no early WAL prefetch (%s): the first restore_command starts it", error)
        return None


def release_warm(warming: subprocess.Popen | None, unpacked: bool) -> None:
    """The unpack is over. `unpacked`: the base backup is on disk; the warm-up starts the
    prefetcher and returns once it has S3's answers to PostgreSQL's first questions (history
    files) and the first segment is on its way, waited for here (a few tenths of a second).
    Otherwise it ends without warming."""
    if warming is None or warming.stdin is None:
        return
    with contextlib.suppress(OSError):  # BrokenPipeError: it ended already (nothing to warm)
        if not unpacked:
            warming.stdin.write(b"stop\n")
        warming.stdin.close()
    try:
        warming.wait(timeout=prefetch.START_TIMEOUT + prefetch.WARM_TIMEOUT if unpacked else 10)
    except subprocess.TimeoutExpired:
        if not unpacked:
            warming.kill()
            warming.wait()


@contextlib.contextmanager
def warming_prefetch(pgdata: Path, backup: Backup, env: Mapping[str, str],
                     prefix: Sequence[str] = ()) -> Iterator[subprocess.Popen | None]:
    """Around the unpack: the restore_command's prefetcher gets ready meanwhile (warm_prefetch)
    and is released as unpacked when the block ends, told to stop when it raises (release_warm).
    Yields the warming process, for the caller to reap later (None: no warming)."""
    warming = warm_prefetch(pgdata, backup, env, prefix=prefix)
    try:
        yield warming
    except BaseException:
        release_warm(warming, unpacked=False)
        raise
    release_warm(warming, unpacked=True)


def restore_command(source: str, path: str = "", extra_env: Mapping[str, str] | None = None,
                    namespace: str = "", server_env: Mapping[str, str] | None = None) -> str:
    """wal-fetch from the source cluster's archive (bucket, endpoint, credentials: the pod's). The
    namespace is always said, empty for the legacy layout: the pod's own may differ. With
    `server_env` (the environment postgres runs with), a prefetched file is taken by the shell
    before any Python starts (pgop.backup.prefetch.shell_fast_path)."""
    env = command_environment(source, path, extra_env, namespace)
    assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
    command = f"{assignments} {pgconfig.WAL_FETCH_COMMAND}"
    if server_env is None:
        return command
    return prefetch.shell_fast_path({**server_env, **env}) + command


def recovery_settings(command: str, target_time: datetime | str | None = None,
                      target_lsn: str | None = None, target_timeline: str | None = None) -> dict[str, str]:
    """`target_timeline` None follows the archive's latest timeline (a failover's or promotion's
    new timeline included); 'current' stays on the backup's; a number pins one."""
    settings = {"restore_command": command, "recovery_target_action": "promote",
                "recovery_target_timeline": str(target_timeline or "latest"), "archive_mode": "off"}
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


def _postmaster_alive(pgdata: Path) -> bool:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _LogReader:
    """The server log, read on from where the last read stopped, whole lines only."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def new_text(self) -> str:
        try:
            with open(self.path, "rb") as log_file:
                log_file.seek(self.offset)
                data = log_file.read(4 << 20)
        except OSError:
            return ""
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode(errors="replace")


def recover(pgdata: Path, *, bindir: str | None = None, prefix: Sequence[str] = (),
            options: str = "", log_file: Path | None = None, stall_after: float = progress_rules.STALL_SECONDS,
            env: Mapping[str, str] | None = None,
            progress: Callable[[progress_rules.RestoreProgress], None] | None = None,
            started_progress: progress_rules.RestoreProgress | None = None,
            start_grace: float = 60.0) -> int | None:
    """Start postgres on the restored PGDATA, wait until it promoted (recovery.signal is gone),
    stop it; the new timeline. No time limit: as long as WAL files keep being restored (or the
    replay position moves), it waits; `stall_after` seconds without either is a stuck restore.
    A recovery that stops with an error (target not reached, WAL missing) fails with the end of
    the server log."""
    log_file = log_file or pgdata.parent / f"{pgdata.name}-restore.log"
    # -W: pg_ctl's own wait ends at consistency (hot_standby), which may be hours away.
    argv = [*prefix, _pg(bindir, "pg_ctl"), "-D", str(pgdata), "-l", str(log_file), "-W", "start"]
    if options:
        argv[-1:-1] = ["-o", options]
    reader = _LogReader(log_file)
    try:
        reader.offset = log_file.stat().st_size
    except OSError:
        pass
    started = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)
    if started.returncode != 0:
        raise RestoreError(f"pg_ctl start failed: {started.stderr.strip()}\n{_tail(log_file)}")
    current = replace(started_progress or progress_rules.RestoreProgress(), phase=progress_rules.REPLAYING)
    if progress:
        progress(current)
    launched = time.monotonic()
    state = progress_rules.watch(progress_rules.Watch(), current, launched)
    running_seen = False
    try:
        # recovery.signal goes when the new timeline is chosen; the server writes "in production"
        # to pg_control once the end of recovery is logged: a stop after that checkpoints on it.
        while ((pgdata / "recovery.signal").exists()
               or control_data(pgdata, bindir, prefix).get("Database cluster state") != "in production"):
            now = time.monotonic()
            if _postmaster_alive(pgdata):
                running_seen = True
            elif running_seen or now - launched > start_grace:
                raise RestoreError(f"postgres stopped during recovery:\n{_tail(log_file)}")
            seen = progress_rules.read_server_log(reader.new_text(), current)
            if seen != current:
                current = seen
                if progress:
                    progress(current)
            state = progress_rules.watch(state, current, now)
            if progress_rules.stalled(state, now, stall_after):
                raise RestoreError(progress_rules.stall_message(current, stall_after) + f":\n{_tail(log_file)}")
            time.sleep(0.3)
    finally:
        if (pgdata / "postmaster.pid").exists():
            # The shutdown checkpoint of a big restored database may take a while: no short limit.
            subprocess.run([*prefix, _pg(bindir, "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "-t", "1800",
                            "stop"], capture_output=True, timeout=1900)
        prefetch.remove_spools(pgdata / "pg_wal")
    remove_recovery(pgdata)
    timeline = timeline_of(pgdata, bindir, prefix)
    if timeline is not None:
        queue_history_for_archiving(pgdata, timeline)
    if progress:
        progress(replace(current, phase=progress_rules.COMPLETED, message=f"promoted onto timeline {timeline}"))
    return timeline


def queue_history_for_archiving(pgdata: Path, timeline: int) -> bool:
    """The promotion wrote the new timeline's history file with archiving off (a restore must not
    archive into anyone's archive), so PostgreSQL did not queue it. Queue it now (a `.ready` file):
    the restored cluster's archiver sends it to its own archive once it runs, so a later restore
    of that archive knows where its timelines branched."""
    name = f"{timeline:08X}.history"
    status = pgdata / "pg_wal" / "archive_status"
    if not (pgdata / "pg_wal" / name).exists() or (status / f"{name}.done").exists():
        return False
    ready = status / f"{name}.ready"
    ready.touch()
    _own_like(ready, pgdata)
    return True


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def restore(storage: S3Storage, source: ArchiveLayout, pgdata: Path, backups: Sequence[Backup], *,
            name: str | None = None, target_time: datetime | str | None = None, target_lsn: str | None = None,
            target_timeline: str | None = None, bindir: str | None = None, prefix: Sequence[str] = (),
            options: str = "", command_env: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None,
            stall_after: float = progress_rules.STALL_SECONDS,
            progress: Callable[[progress_rules.RestoreProgress], None] | None = None,
            attempt: int = 1) -> RestoreResult:
    """The whole restore into an empty PGDATA (which must exist, owned by the postgres user).
    `progress` hears how far it came (bytes of the base backup, WAL files restored, phase)."""
    backup = choose(backups, name, target_time, target_lsn)
    wrong_key = encryption.key_mismatch(f"backup {backup.backup_name}", backup.key_id,
                                        encryption.reading_keys(storage))
    if wrong_key:
        raise RestoreError(wrong_key)
    if any(pgdata.iterdir()):
        raise RestoreError(f"{pgdata} is not empty")
    target = (f"time {target_time}" if target_time else f"LSN {target_lsn}" if target_lsn
              else "the end of the archive")
    if target_timeline:
        target += f" on timeline {target_timeline}"
    current = progress_rules.RestoreProgress(backup=backup.backup_name, bytes_total=backup.size_bytes or None,
                                             target=target, attempt=attempt)
    if progress:
        progress(current)

    def unpacked(size: int) -> None:
        if progress:
            progress(replace(current, bytes_restored=size))

    server_env = {**os.environ, **(env or {})}
    # The restore_command's prefetcher gets ready while the base backup unpacks, and has S3's
    # answers to PostgreSQL's first questions before it starts: the shell answers them.
    with warming_prefetch(pgdata, backup, {**server_env, **command_environment(
            source.cluster, source.path, command_env, source.namespace)}, prefix=prefix) as warming:
        size, seconds = unpack(storage, source, backup, pgdata, prefix, progress=unpacked)
        for leftover in ("postmaster.pid", "postmaster.opts", "standby.signal"):
            (pgdata / leftover).unlink(missing_ok=True)
    current = replace(current, bytes_restored=size)
    try:
        write_recovery(pgdata, recovery_settings(restore_command(source.cluster, source.path, command_env,
                                                                 namespace=source.namespace, server_env=server_env),
                                                 target_time, target_lsn, target_timeline))
        timeline = recover(pgdata, bindir=bindir, prefix=prefix, options=options, stall_after=stall_after,
                           env=env, progress=progress, started_progress=current)
    finally:
        if warming is not None:
            try:
                warming.wait(timeout=30)
            except subprocess.TimeoutExpired:
                warming.kill()
                warming.wait()
    return RestoreResult(backup, seconds, size, timeline)
