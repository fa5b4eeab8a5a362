"""backup.restore.unpack against the real S3 server (versitygw): the base backup's tar streams from
S3 through zstd into `tar -x`, its sha256 checked against the catalog, while one thread hashes and
another feeds tar. What a user would check: the files are there, byte for byte; a damaged tar and a
tar that cannot be written are refused with the reason, never half-reported as restored."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zstandard

from pgop.backup import layout as keys
from pgop.backup.catalog import Backup
from pgop.backup.layout import ArchiveLayout
from pgop.backup.restore import RestoreError, restore, unpack
from tests.integration.test_backup_wal import archive_env, launcher, s3, storage  # noqa: F401  (fixtures)

CLUSTER = "unpack"


def _files() -> dict[str, bytes]:
    """A few MB in many chunks' worth of members: more than the pipeline's queues hold."""
    return {f"base/1/{number}": os.urandom(256 << 10) * 4 + bytes([number]) * 1000 for number in range(1, 25)}


def _upload(storage, name: str, files: dict[str, bytes]) -> tuple[ArchiveLayout, str]:
    layout = ArchiveLayout(CLUSTER, f"it-{name}")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for member, content in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    data = raw.getvalue()
    compressed = zstandard.ZstdCompressor(level=1).compress(data)
    storage.put_new(keys.base_archive_key(layout, name), io.BytesIO(compressed), len(compressed),
                    {"compression": "zstd"})
    return layout, hashlib.sha256(data).hexdigest()


def _backup(name: str, sha256: str) -> Backup:
    return Backup(CLUSTER, name, files=({"name": keys.BASE_ARCHIVE, "sha256": sha256},))


def test_the_base_backup_is_unpacked_byte_for_byte(storage):
    files = _files()
    layout, digest = _upload(storage, "whole", files)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as pgdata:
        size, _ = unpack(storage, layout, _backup("whole", digest), Path(pgdata))
        for member, content in files.items():
            assert (Path(pgdata) / member).read_bytes() == content, member
        assert size >= sum(len(content) for content in files.values())


def test_a_tar_that_does_not_match_its_checksum_is_refused(storage):
    layout, _ = _upload(storage, "swapped", _files())
    with tempfile.TemporaryDirectory(dir="/var/tmp") as pgdata, \
            pytest.raises(RestoreError, match="does not match its checksum in backup.json"):
        unpack(storage, layout, _backup("swapped", "0" * 64), Path(pgdata))


def _stored_sha256(storage, layout: ArchiveLayout, name: str) -> str:
    _, body = storage.get(keys.base_archive_key(layout, name))
    with body:
        return hashlib.sha256(body.read()).hexdigest()


def _stored_backup(name: str, stored: str, tar: str | None = None) -> Backup:
    """A backup's catalog since 2026-12: the sha256 of the object as stored (and of the tar)."""
    entry = {"name": keys.BASE_ARCHIVE, "storedSha256": stored, **({"sha256": tar} if tar else {})}
    return Backup(CLUSTER, name, files=(entry,))


def test_a_backup_checked_by_its_stored_checksum_is_unpacked_byte_for_byte(storage):
    files = _files()
    layout, _ = _upload(storage, "stored", files)
    backup = _stored_backup("stored", _stored_sha256(storage, layout, "stored"))
    with tempfile.TemporaryDirectory(dir="/var/tmp") as pgdata:
        unpack(storage, layout, backup, Path(pgdata))
        for member, content in files.items():
            assert (Path(pgdata) / member).read_bytes() == content, member


def test_the_stored_checksum_is_the_one_checked_when_the_catalog_has_it(storage):
    """The tar's own sha256 is right, the stored object's is not: refused (the stored one wins)."""
    layout, tar_digest = _upload(storage, "stored-wrong", _files())
    with tempfile.TemporaryDirectory(dir="/var/tmp") as pgdata, \
            pytest.raises(RestoreError, match="does not match its checksum in backup.json"):
        unpack(storage, layout, _stored_backup("stored-wrong", "0" * 64, tar_digest), Path(pgdata))


def test_a_damaged_object_is_refused_with_the_reason(storage):
    """One byte of the stored object changed in S3: zstd's frame checksum or the stored sha256
    refuses it, as a RestoreError that names the object."""
    layout, _ = _upload(storage, "damaged", _files())
    key = keys.base_archive_key(layout, "damaged")
    good = _stored_sha256(storage, layout, "damaged")
    _, body = storage.get(key)
    with body:
        data = bytearray(body.read())
    data[len(data) // 2] ^= 0xFF
    storage.delete(key)
    storage.put_new(key, io.BytesIO(bytes(data)), len(data), {"compression": "zstd"})
    with tempfile.TemporaryDirectory(dir="/var/tmp") as pgdata, \
            pytest.raises(RestoreError, match=key):
        unpack(storage, layout, _stored_backup("damaged", good), Path(pgdata))


def test_a_tar_that_cannot_be_written_fails_with_tar_s_reason(storage):
    files = _files()
    layout, digest = _upload(storage, "blocked", files)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as pgdata:
        (Path(pgdata) / "base").write_text("a file where tar needs a directory")
        with pytest.raises(RestoreError, match="tar failed"):
            unpack(storage, layout, _backup("blocked", digest), Path(pgdata))


def _processes_naming(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and text in command:
            found.append(command)
    return found


def test_a_restore_whose_unpack_fails_leaves_no_prefetcher_behind(archive_env, storage):
    """The restore_command's prefetcher gets ready while the base backup unpacks; when the unpack
    fails, the restore says why and leaves neither that process nor a spool behind."""
    layout, _ = _upload(storage, "early-warm", _files())
    backup = Backup(CLUSTER, "early-warm", begin_wal="000000010000000000000002", end_lsn="0/2000100",
                    completed_at=datetime.now(UTC) - timedelta(minutes=1),
                    files=({"name": keys.BASE_ARCHIVE, "sha256": "0" * 64},))
    with tempfile.TemporaryDirectory(dir="/var/tmp") as pgdata:
        with pytest.raises(RestoreError, match="does not match its checksum"):
            restore(storage, layout, Path(pgdata), [backup], name="early-warm")
        assert _processes_naming(f"{pgdata}/pg_wal") == []
        assert not (Path(pgdata) / "pg_wal").exists() or not any((Path(pgdata) / "pg_wal").iterdir())
