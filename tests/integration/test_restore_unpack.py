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
from pathlib import Path

import pytest
import zstandard

from pgop.backup import layout as keys
from pgop.backup.catalog import Backup
from pgop.backup.layout import ArchiveLayout
from pgop.backup.restore import RestoreError, unpack
from tests.integration.test_backup_wal import s3, storage  # noqa: F401  (fixtures)

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


def test_a_tar_that_cannot_be_written_fails_with_tar_s_reason(storage):
    files = _files()
    layout, digest = _upload(storage, "blocked", files)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as pgdata:
        (Path(pgdata) / "base").write_text("a file where tar needs a directory")
        with pytest.raises(RestoreError, match="tar failed"):
            unpack(storage, layout, _backup("blocked", digest), Path(pgdata))
