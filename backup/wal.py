"""wal-push and wal-fetch: PostgreSQL's archive_command and restore_command.

wal-push compresses a file of pg_wal with zstd into a spooled temporary file (memory up to
SPOOL_MEMORY, disk beyond), hashing the uncompressed bytes on the way, then creates the object
only if its name is free. An object of that name with the same sha256 is success (PostgreSQL
re-archives a segment whose earlier success it did not record); a different one is a loud failure:
archived WAL is never replaced.

wal-fetch streams the object through the decompressor into a temporary file next to the target,
checks size and sha256, fsyncs, and renames it into place, so PostgreSQL never reads half a file.

With an encryption key (spec.backup.s3.encryption; pgop.backup.encryption) the zstd stream is
sealed before it is spooled, and a fetch decrypts an object that starts with the format's magic;
the sha256 and size stay those of the plain file.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import zstandard

from pgop.backup import encryption
from pgop.backup.layout import ArchiveLayout
from pgop.backup.s3 import S3Storage

CHUNK = 1 << 20
SPOOL_MEMORY = 32 << 20
COMPRESSION_LEVEL = 3
COMPRESSION = "zstd"

# Object metadata (x-amz-meta-*): what a fetch verifies and a person can read with `aws s3api
# head-object`.
META_SHA256 = "sha256"  # of the uncompressed file
META_SIZE = "size"  # uncompressed bytes
META_COMPRESSION = "compression"
META_SYSTEM_ID = "system-identifier"  # of the database system that wrote it, when known

PUSHED = "pushed"
ALREADY_ARCHIVED = "already-archived"
FETCHED = "fetched"
NOT_FOUND = "not-found"


class WalError(RuntimeError):
    pass


class WalConflict(WalError):
    """An archived file of the same name holds different content."""


class WalCorrupt(WalError):
    """A fetched file does not match the checksum it was archived with."""


class WalForeign(WalError):
    """The archived file was written by another database system than the one fetching it."""


def foreign_check(name: str, archived_by: str | None, system_id: str | None) -> None:
    """Refuses (WalForeign) a file another database system archived: a replica or a restore replays
    only its own system's WAL (the marker's rule, pgop.backup.marker, per file). Either side unknown
    (an object pushed from outside a data directory, a fetch into one without pg_control): no check."""
    if archived_by and system_id and archived_by != system_id:
        raise WalForeign(f"{name}: archived by database system {archived_by}, this is {system_id}: "
                         "another cluster of the same name archived here; not replaying its WAL")


@dataclass(frozen=True)
class Compressed:
    sha256: str
    size: int  # uncompressed
    compressed_size: int


def compress(source: IO[bytes], target: IO[bytes], level: int = COMPRESSION_LEVEL,
             size: int = -1) -> Compressed:
    """zstd from `source` into `target`, chunk by chunk; the sha256 is of the uncompressed bytes."""
    digest = hashlib.sha256()
    total = 0
    start = target.tell()
    writer = zstandard.ZstdCompressor(level=level, write_checksum=True).stream_writer(
        target, size=size, closefd=False)
    while chunk := source.read(CHUNK):
        digest.update(chunk)
        total += len(chunk)
        writer.write(chunk)
    writer.flush(zstandard.FLUSH_FRAME)
    writer.close()
    return Compressed(digest.hexdigest(), total, target.tell() - start)


def decompress(source: IO[bytes], target: IO[bytes]) -> Compressed:
    digest = hashlib.sha256()
    total = 0
    with zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True, closefd=False) as reader:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            total += len(chunk)
            target.write(chunk)
    return Compressed(digest.hexdigest(), total, -1)


def push_decision(existing: dict[str, str] | None, sha256: str) -> str:
    """What to do with a file whose name is taken (pure): nothing if it is the same content,
    refuse otherwise. `existing` is the archived object's metadata, None when the name is free."""
    if existing is None:
        return PUSHED
    archived = existing.get(META_SHA256)
    if archived == sha256:
        return ALREADY_ARCHIVED
    raise WalConflict(conflict_message(existing, sha256))


def conflict_message(existing: dict[str, str], sha256: str, system_id: str | None = None) -> str:
    archived = existing.get(META_SHA256)
    if archived is None:
        return "an object of that name, not written by pgop (no sha256 metadata), is in the archive"
    text = f"a different file of that name is archived (sha256 {archived[:12]}..., this one {sha256[:12]}...)"
    theirs = existing.get(META_SYSTEM_ID)
    if theirs and system_id and theirs != system_id:
        text += (f"; the archive belongs to database system {theirs}, this is {system_id}: another cluster "
                 "of the same name archived here; point spec.backup.s3.path elsewhere or move the old archive away")
    return text


def system_identifier(wal_path: Path) -> str | None:
    """The database system identifier from pg_control (its first 8 bytes), when the file sits in
    the pg_wal of a data directory: archive_command runs in PGDATA with %p = pg_wal/<name>."""
    try:
        with open(wal_path.absolute().parent.parent / "global" / "pg_control", "rb") as control:
            head = control.read(8)
    except OSError:
        return None
    return str(struct.unpack("<Q", head)[0]) if len(head) == 8 else None


def push(storage: S3Storage, layout: ArchiveLayout, wal_path: str | os.PathLike,
         level: int = COMPRESSION_LEVEL) -> str:
    path = Path(wal_path)
    key = layout.wal_key(path.name)  # refuses a name PostgreSQL would not archive
    system_id = system_identifier(path)
    sealing = encryption.writing_key(storage)
    with open(path, "rb") as source, tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as spool:
        size = os.fstat(source.fileno()).st_size
        if sealing is None:
            done = compress(source, spool, level, size)
        else:  # zstd, then sealed (pgop.backup.encryption): the spool holds only ciphertext
            sealer = encryption.EncryptingWriter(spool, sealing)
            done = compress(source, sealer, level, size)  # type: ignore[arg-type]
            sealer.finish()
            done = Compressed(done.sha256, done.size, spool.tell())
        metadata = {META_SHA256: done.sha256, META_SIZE: str(done.size), META_COMPRESSION: COMPRESSION}
        if sealing is not None:
            metadata.update(encryption.metadata(sealing))
        if system_id:
            metadata[META_SYSTEM_ID] = system_id

        def decide() -> str:
            existing = storage.head(key)
            if existing is None:
                return push_decision(None, done.sha256)
            try:
                return push_decision(dict(existing.metadata), done.sha256)
            except WalConflict:
                raise WalConflict(f"{path.name}: " + conflict_message(dict(existing.metadata), done.sha256,
                                                                      system_id)) from None

        if decide() == ALREADY_ARCHIVED:
            return ALREADY_ARCHIVED
        spool.seek(0)
        if storage.put_new(key, spool, done.compressed_size, metadata):
            return PUSHED
        # Someone else wrote that name between our look and our write: judge what they wrote.
        if decide() != ALREADY_ARCHIVED:
            raise WalError(f"{path.name}: the object appeared and vanished while archiving; try again")
        return ALREADY_ARCHIVED


def fetch(storage: S3Storage, layout: ArchiveLayout, name: str, target: str | os.PathLike,
          system_id: str | None = None) -> str:
    """`system_id`: the fetching server's (pg_control); a file archived by another system is refused."""
    key = layout.wal_key(name)
    found = storage.get(key)
    if found is None:
        return NOT_FOUND
    info, body = found
    try:
        foreign_check(name, info.metadata.get(META_SYSTEM_ID), system_id)
    except WalForeign:
        body.close()
        raise
    target = Path(target)
    # PostgreSQL runs one restore_command at a time: a temporary file of an earlier attempt at this
    # target is what a killed fetch left behind.
    for stale in target.parent.glob(f".{target.name}.*.pgop-fetch"):
        stale.unlink(missing_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".pgop-fetch", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                got = decompress(encryption.open_reader(body, encryption.reading_keys(storage), name), out)
            except zstandard.ZstdError as error:
                raise WalCorrupt(f"{name}: the archived object does not decompress: {error}") from None
            except encryption.EncryptionError as error:
                raise WalCorrupt(str(error)) from None
            finally:
                body.close()
            expected = info.metadata.get(META_SHA256)
            if expected is None:
                raise WalCorrupt(f"{name}: the archived object has no sha256 metadata; not written by pgop")
            if got.sha256 != expected or str(got.size) != info.metadata.get(META_SIZE, str(got.size)):
                raise WalCorrupt(f"{name}: checksum mismatch (archived sha256 {expected[:12]}..., "
                                 f"fetched {got.sha256[:12]}..., {got.size} bytes)")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return FETCHED
