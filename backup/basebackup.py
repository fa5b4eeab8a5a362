"""Base backups streamed to S3: pg_basebackup's tar on stdout -> zstd -> S3 multipart upload.

Nothing is staged on local disk: the tar stream is read in chunks, its few small members that
describe the backup (backup_label, backup_manifest, PG_VERSION, global/pg_control) are picked out
as they pass by (`TarWatcher`), the stream is compressed and uploaded in parts of `PART_SIZE`
bytes, with at most `UPLOADS_IN_FLIGHT` parts in memory. The catalog document (backup.json) is
written last, and only once the WAL the backup needs (beginWal..endWal) is in the archive, so a
backup without a backup.json is never one to restore from; a failed upload is aborted.

`-X none`: the WAL comes from the archive (wal-push), not from the tar, as with any PITR tool.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import zstandard

from pgop.backup import catalog, encryption
from pgop.backup import layout as keys
from pgop.backup.catalog import Backup
from pgop.backup.layout import ArchiveLayout
from pgop.backup.s3 import S3Storage, describe_error
from pgop.kernel.lsn import format_lsn, parse_lsn, wal_file_name

log = logging.getLogger(__name__)

COMPRESSION = "zstd"
COMPRESSION_LEVEL = 3
# One zstd worker thread compresses while this one reads, hashes and uploads; jobs of 1 MiB keep
# its buffers at a few MiB (the default job at level 3 is 8 MiB, several of them in flight: a
# backup held 220 MB with one worker per core). The ratio is within 2 % of one 8 MiB job.
COMPRESSION_THREADS = 1
COMPRESSION_JOB_SIZE = 1 << 20
PART_SIZE = 8 << 20           # the first S3 parts (at least 5 MiB); later ones grow: part_size_for
PARTS_PER_SIZE = 2000         # parts of one size before the size doubles (S3 allows 10000 in all)
MAX_PART_SIZE_DOUBLINGS = 4   # 8 MiB .. 128 MiB
UPLOADS_IN_FLIGHT = 1         # besides the part being filled: compression runs while one uploads
READ_CHUNK = 1 << 20
ARCHIVE_WAIT = 120.0          # seconds to wait for endWal to reach the archive
BLOCK = 512
WATCHED = frozenset({"backup_label", "backup_manifest", "PG_VERSION", "global/pg_control"})
WATCHED_LIMIT = 64 << 20      # a manifest of a huge database is large, but never this large


class BaseBackupError(RuntimeError):
    pass


# ------------------------------------------------------------------ the tar stream, as it passes

def _tar_number(field_bytes: bytes) -> int:
    if field_bytes and field_bytes[0] & 0x80:  # GNU base-256 for sizes beyond 8 GiB
        value = field_bytes[0] & 0x7F
        for byte in field_bytes[1:]:
            value = (value << 8) | byte
        return value
    text = field_bytes.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _member_name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if prefix:
            name = f"{prefix}/{name}"
    return name.removeprefix("./")


class TarWatcher:
    """Fed the bytes of a tar archive in chunks of any size; keeps the members named in `watched`
    (their content), counts the rest. Tar is 512-byte headers followed by data padded to 512."""

    def __init__(self, watched: frozenset[str] = WATCHED):
        self.watched = watched
        self.members: dict[str, bytes] = {}
        self.count = 0
        self.ended = False
        self._buffer = bytearray()
        self._remaining = 0     # data bytes of the current member still to come
        self._padding = 0
        self._capture: bytearray | None = None
        self._name = ""
        self._long_name: str | None = None
        self._long_buffer: bytearray | None = None

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            if self._remaining:
                take = min(self._remaining, len(view))
                if self._capture is not None:
                    self._capture += view[:take]
                self._remaining -= take
                view = view[take:]
                if not self._remaining:
                    self._finish_member()
                continue
            if self._padding:
                take = min(self._padding, len(view))
                self._padding -= take
                view = view[take:]
                continue
            if self.ended:
                return  # the zero blocks at the end, and whatever padding follows them
            take = min(BLOCK - len(self._buffer), len(view))
            self._buffer += view[:take]
            view = view[take:]
            if len(self._buffer) == BLOCK:
                header = bytes(self._buffer)
                self._buffer.clear()
                self._header(header)

    def _header(self, header: bytes) -> None:
        if header == b"\0" * BLOCK:
            self.ended = True
            return
        size = _tar_number(header[124:136])
        kind = header[156:157]
        name = _member_name(header)
        if kind == b"L":  # GNU long name: the data is the name of the next member
            self._capture, self._name = bytearray(), "\0longname"
        elif kind in (b"x", b"g"):
            self._capture, self._name = None, ""
        else:
            if self._long_name is not None:
                name, self._long_name = self._long_name.removeprefix("./"), None
            self.count += 1
            self._name = name
            wanted = name in self.watched and size <= WATCHED_LIMIT and kind in (b"0", b"\0")
            self._capture = bytearray() if wanted else None
        self._remaining = size
        self._padding = (-size) % BLOCK
        if size == 0:
            self._finish_member()

    def _finish_member(self) -> None:
        if self._capture is not None:
            if self._name == "\0longname":
                self._long_name = bytes(self._capture).split(b"\0", 1)[0].decode("utf-8", "replace")
            else:
                self.members[self._name] = bytes(self._capture)
        self._capture = None


# --------------------------------------------------------------- what the backup's files tell

@dataclass(frozen=True)
class BackupLabel:
    begin_lsn: str
    begin_wal: str
    timeline: int


_START = re.compile(r"^START WAL LOCATION: ([0-9A-Fa-f]+/[0-9A-Fa-f]+) \(file ([0-9A-F]{24})\)$", re.M)
_TIMELINE = re.compile(r"^START TIMELINE: (\d+)$", re.M)


def parse_backup_label(text: str) -> BackupLabel:
    start = _START.search(text)
    if not start:
        raise BaseBackupError("backup_label has no START WAL LOCATION")
    timeline = _TIMELINE.search(text)
    return BackupLabel(format_lsn(parse_lsn(start.group(1))), start.group(2),
                       int(timeline.group(1)) if timeline else int(start.group(2)[:8], 16))


def manifest_end(manifest: bytes) -> tuple[int, str]:
    """(timeline, end LSN) of the last WAL range of a backup_manifest."""
    try:
        ranges = json.loads(manifest)["WAL-Ranges"]
        last = ranges[-1]
        return int(last["Timeline"]), format_lsn(parse_lsn(last["End-LSN"]))
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise BaseBackupError(f"backup_manifest has no readable WAL-Ranges: {error}") from None


def system_identifier(pg_control: bytes) -> str:
    """The database system identifier: the first field of pg_control, a uint64 (little-endian on
    every platform Debian packages PostgreSQL for)."""
    if len(pg_control) < 8:
        raise BaseBackupError("global/pg_control is truncated")
    return str(struct.unpack_from("<Q", pg_control)[0])


def segment_size_of(begin_lsn: str, begin_wal: str) -> int:
    """The server's WAL segment size, from a position and the name of its segment (backup_label
    has both). Among the sizes initdb allows (1 MiB..1 GiB) the smallest that names it alike."""
    for power in range(20, 31):
        size = 1 << power
        if wal_file_name(int(begin_wal[:8], 16), begin_lsn, size) == begin_wal:
            return size
    raise BaseBackupError(f"no WAL segment size puts {begin_lsn} in {begin_wal}")


# ----------------------------------------------------------------------- S3 multipart upload

def part_size_for(number: int, first: int = PART_SIZE) -> int:
    """The size of part `number` (1-based) of an upload whose first parts are `first` bytes: it
    doubles every PARTS_PER_SIZE parts. Small parts keep a backup's memory small; growing ones let
    the 10000 parts S3 allows hold 2000 x (1+2+4+8+16) x first bytes (484 GiB at 8 MiB)."""
    return first << min((number - 1) // PARTS_PER_SIZE, MAX_PART_SIZE_DOUBLINGS)


class MultipartWriter:
    """A file-like sink that uploads what is written to it as the parts of one S3 object.
    Memory: the part being filled plus `in_flight` parts on their way, each `part_size_for` bytes.
    A part is a buffer of its final size, filled in place and handed to the upload as it is: no
    copy of a part is ever made."""

    def __init__(self, storage: S3Storage, key: str, part_size: int = PART_SIZE,
                 metadata: Mapping[str, str] | None = None, in_flight: int = UPLOADS_IN_FLIGHT):
        if part_size < 5 << 20:
            raise ValueError("S3 parts (but the last) are at least 5 MiB")
        self.storage, self.key, self.part_size = storage, key, part_size
        self.size = 0
        self.digest = hashlib.sha256()  # of the object as stored: what a restore reads back
        self._buffer = bytearray(part_size)
        self._filled = 0
        self._parts: list[Future] = []
        self._pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="s3-part")
        self._slots = threading.BoundedSemaphore(in_flight)
        self._upload_id = storage.client.create_multipart_upload(
            Bucket=storage.bucket, Key=key, ContentType="application/octet-stream",
            Metadata=dict(metadata or {}))["UploadId"]
        self._done = False

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        written = len(view)
        self.digest.update(view)
        while view:
            take = min(len(self._buffer) - self._filled, len(view))
            self._buffer[self._filled:self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == len(self._buffer):
                part = self._buffer
                self._buffer, self._filled = bytearray(), 0  # the full one is the upload's now
                self._send(part)
                self._buffer = bytearray(part_size_for(len(self._parts) + 1, self.part_size))
        self.size += written
        return written

    def flush(self) -> None:
        pass

    def _send(self, body: bytearray) -> None:
        for future in self._parts:
            if future.done() and (error := future.exception()) is not None:
                raise error
        number = len(self._parts) + 1
        self._slots.acquire()  # bounded memory: wait for a part in flight to finish

        def upload() -> dict[str, Any]:
            try:
                answer = self.storage.client.upload_part(Bucket=self.storage.bucket, Key=self.key,
                                                         UploadId=self._upload_id, PartNumber=number, Body=body)
                return {"PartNumber": number, "ETag": answer["ETag"]}
            finally:
                self._slots.release()
        self._parts.append(self._pool.submit(upload))

    def complete(self) -> None:
        if self._filled or not self._parts:
            del self._buffer[self._filled:]  # in place: the last part is shorter
            last, self._buffer, self._filled = self._buffer, bytearray(), 0
            self._send(last)
        parts = [future.result() for future in self._parts]
        self._pool.shutdown()
        self.storage.client.complete_multipart_upload(
            Bucket=self.storage.bucket, Key=self.key, UploadId=self._upload_id,
            MultipartUpload={"Parts": parts})
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.storage.client.abort_multipart_upload(Bucket=self.storage.bucket, Key=self.key,
                                                       UploadId=self._upload_id)
        except Exception as error:  # the bucket's lifecycle rule cleans what is left
            log.warning("could not abort the upload of %s: %s", self.key, error)
        self._done = True


# ------------------------------------------------------------------------------ the backup

@dataclass
class Source:
    """How to reach the server to back up: pg_basebackup's connection options and how to run it
    (`prefix`, e.g. runuser, when the caller is not the OS user peer authentication expects)."""
    host: str | None = None
    port: int | None = None
    user: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    bindir: str | None = None
    prefix: Sequence[str] = ()

    def argv(self) -> list[str]:
        binary = f"{self.bindir}/pg_basebackup" if self.bindir else "pg_basebackup"
        argv = [*self.prefix, binary, "-D", "-", "-F", "tar", "-X", "none", "--checkpoint=fast",
                "--no-password", "--manifest-checksums=CRC32C"]
        if self.host:
            argv += ["-h", self.host]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-U", self.user]
        return argv


@dataclass(frozen=True)
class Throughput:
    seconds: float
    size_bytes: int
    compressed_bytes: int

    @property
    def mb_per_second(self) -> float:
        return self.size_bytes / 2**20 / self.seconds if self.seconds else 0.0


def _utcnow(round_up: bool = False) -> datetime:
    # The catalog keeps whole seconds. completedAt is rounded up: a restore target at or after it
    # must be after the backup's end (PostgreSQL refuses a stop point before consistency).
    now = datetime.now(UTC)
    whole = now.replace(microsecond=0)
    return whole + timedelta(seconds=1) if round_up and whole != now else whole


def wait_for_wal(storage: S3Storage, layout: ArchiveLayout, wal_name: str, timeout: float = ARCHIVE_WAIT,
                 interval: float = 0.5) -> None:
    """Until the segment is in the archive; the server archives it after the backup's end
    (pg_basebackup's BASE_BACKUP asks for the switch), wal-push takes it there."""
    deadline = time.monotonic() + timeout
    key = layout.wal_key(wal_name)
    while storage.head(key) is None:
        if time.monotonic() > deadline:
            raise BaseBackupError(f"WAL {wal_name} the backup needs did not reach the archive within "
                                  f"{timeout:.0f}s: is archiving working (ContinuousArchiving)?")
        time.sleep(interval)


def take_base_backup(storage: S3Storage, layout: ArchiveLayout, name: str, source: Source, *,
                     part_size: int = PART_SIZE, level: int = COMPRESSION_LEVEL,
                     archive_wait: float = ARCHIVE_WAIT, timeout: float = 24 * 3600,
                     threads: int = COMPRESSION_THREADS, job_size: int = COMPRESSION_JOB_SIZE,
                     in_flight: int = UPLOADS_IN_FLIGHT,
                     progress: Callable[[int], None] | None = None,
                     before_archive_wait: Callable[[], None] | None = None) -> Backup:
    """Stream a base backup of `source` to S3 as backup `name`; the catalog document it wrote."""
    archive_key = keys.base_archive_key(layout, name)
    document_key = keys.catalog_key(layout, name)
    if storage.head(document_key) is not None:
        raise BaseBackupError(f"backup {name} already exists in s3://{storage.bucket}/{document_key}")
    started_at = _utcnow()
    clock = time.monotonic()
    watcher = TarWatcher()
    digest = hashlib.sha256()
    size = 0
    sealing = encryption.writing_key(storage)
    upload = MultipartWriter(storage, archive_key, part_size, metadata={
        "compression": COMPRESSION, **(encryption.metadata(sealing) if sealing else {})}, in_flight=in_flight)
    process = subprocess.Popen(source.argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**_base_env(), **source.env})
    assert process.stdout is not None and process.stderr is not None  # both are PIPEs
    with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size or the user's quota: slower
        # A 1 MiB pipe: a 64 KB one switches between pg_basebackup and this reader every 64 KB.
        fcntl.fcntl(process.stdout.fileno(), fcntl.F_SETPIPE_SZ, READ_CHUNK)
    stderr: list[bytes] = []
    stderr_pipe = process.stderr
    reader = threading.Thread(target=lambda: stderr.append(stderr_pipe.read()), daemon=True)
    reader.start()
    try:
        params = zstandard.ZstdCompressionParameters.from_level(level, threads=threads, job_size=job_size,
                                                                 write_checksum=True)
        compressor = zstandard.ZstdCompressor(compression_params=params)
        # zstandard's stub asks for IO[bytes]; it calls only write() and flush(), which MultipartWriter has
        # With a key, zstd's output is sealed on its way to the parts (pgop.backup.encryption).
        sealer = encryption.EncryptingWriter(upload, sealing) if sealing else None
        writer = compressor.stream_writer(sealer or upload, closefd=False)  # type: ignore[arg-type]
        while chunk := process.stdout.read(READ_CHUNK):
            watcher.feed(chunk)
            digest.update(chunk)
            size += len(chunk)
            writer.write(chunk)
            if progress:
                progress(size)
            if time.monotonic() - clock > timeout:
                raise BaseBackupError(f"the backup took longer than {timeout:.0f}s")
        writer.flush(zstandard.FLUSH_FRAME)
        if sealer is not None:
            sealer.finish()
        code = process.wait(timeout=60)
        reader.join(10)
        if code != 0:
            text = b"".join(stderr).decode("utf-8", "replace").strip()
            raise BaseBackupError(f"pg_basebackup failed (exit {code}): {text[-2000:]}")
        backup = _describe(layout, name, watcher, started_at, size)
        upload.complete()
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        upload.abort()
        raise
    streamed = time.monotonic() - clock
    try:
        if before_archive_wait is not None:
            before_archive_wait()
        if backup.end_wal is None:  # _describe always sets it
            raise BaseBackupError(f"backup {name} has no end WAL to wait for")
        wait_for_wal(storage, layout, backup.end_wal, archive_wait)
    except BaseException:
        # Without its WAL the tar restores nothing. No backup.json names it, so nothing takes it for
        # a backup: removing it saves space, no more. Pod keys without the right to delete (with
        # spec.backup.s3.retentionCredentialsSecret) are refused; retention then removes the tar
        # with the failed backup's prefix, once that is older than the oldest kept backup.
        try:
            storage.delete(archive_key)
        except Exception as error:
            log.warning("could not delete %s (%s): retention removes it with the failed backup",
                        archive_key, describe_error(error))
        raise
    seconds = time.monotonic() - clock
    backup = _replace(backup, completed_at=_utcnow(round_up=True),
                      s3_path=f"s3://{storage.bucket}/{keys.backup_prefix(layout, name)}", files=({
        "name": keys.BASE_ARCHIVE, "sizeBytes": size, "compressedBytes": upload.size,
        "sha256": digest.hexdigest(), "storedSha256": upload.digest.hexdigest(), "tarMembers": watcher.count, "streamSeconds": round(streamed, 3),
        "seconds": round(seconds, 3)},),
        encryption={"algorithm": encryption.ALGORITHM, "keyId": sealing.key_id} if sealing else None)
    body = backup.to_json().encode()
    if not storage.put_new(document_key, io.BytesIO(body), len(body), {}, content_type="application/json"):
        raise BaseBackupError(f"backup {name} was written by someone else meanwhile")
    log.info("base backup %s: %d bytes (%d compressed) in %.1fs", name, size, upload.size, seconds)
    return backup


def _base_env() -> dict[str, str]:
    return dict(os.environ)


def _replace(backup: Backup, **changes) -> Backup:
    return dataclasses.replace(backup, **changes)


def _describe(layout: ArchiveLayout, name: str, watcher: TarWatcher, started_at: datetime, size: int) -> Backup:
    missing = {"backup_label", "backup_manifest"} - watcher.members.keys()
    if missing:
        raise BaseBackupError(f"the backup stream has no {', '.join(sorted(missing))}: "
                              "pg_basebackup 13 or later with a manifest is needed")
    label = parse_backup_label(watcher.members["backup_label"].decode("utf-8", "replace"))
    end_timeline, end_lsn = manifest_end(watcher.members["backup_manifest"])
    segment_size = segment_size_of(label.begin_lsn, label.begin_wal)
    pg_version = watcher.members.get("PG_VERSION", b"").decode().strip()
    control = watcher.members.get("global/pg_control")
    return Backup(
        cluster=layout.cluster, backup_name=name, phase=catalog.COMPLETED,
        system_identifier=system_identifier(control) if control else None,
        timeline=end_timeline, begin_lsn=label.begin_lsn, end_lsn=end_lsn,
        begin_wal=label.begin_wal, end_wal=wal_file_name(end_timeline, end_lsn, segment_size, previous=True),
        started_at=started_at, size_bytes=size, compression=COMPRESSION,
        pg_version=int(pg_version) if pg_version.isdigit() else None,
    )


# ------------------------------------------------------------------------------ the catalog

def list_backups(storage: S3Storage, path: str, cluster: str, namespace: str = "") -> list[Backup]:
    """The base backups of a cluster as its catalog in S3 says (only those with a backup.json:
    complete ones), oldest first. A document that cannot be read is skipped with a warning.
    `namespace`: of the namespaced layout; "" for the legacy one."""
    layout = ArchiveLayout(cluster, path, namespace)
    found: list[Backup] = []
    for info in storage.list(keys.base_root(layout)):
        if keys.backup_name_of_catalog_key(layout, info.key) is None:
            continue
        got = storage.get(info.key)
        if got is None:
            continue
        _, body = got
        try:
            prefix = info.key.rsplit("/", 1)[0]
            found.append(_replace(Backup.from_json(body.read()), s3_path=f"s3://{storage.bucket}/{prefix}/"))
        except catalog.CatalogError as error:
            log.warning("skipping %s: %s", info.key, error)
        finally:
            body.close()
    return sorted(found, key=lambda b: (b.completed_at or b.started_at or datetime.min.replace(tzinfo=UTC),
                                        b.backup_name))
