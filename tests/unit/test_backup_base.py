"""Base backups: the tar stream watcher, what backup_label and backup_manifest say, WAL names, the
S3 keys of a backup, the recovery settings of a restore (pure, no S3, no PostgreSQL)."""
from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path

import pytest

from pgop.backup import layout as keys
from pgop.backup.basebackup import (
    BaseBackupError,
    TarWatcher,
    manifest_end,
    parse_backup_label,
    segment_size_of,
    system_identifier,
    wal_file_name,
)
from pgop.backup.layout import ArchiveLayout
from pgop.backup.restore import recovery_settings, remove_recovery, restore_command, write_recovery

LABEL = """START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
CHECKPOINT LOCATION: 0/2000060
BACKUP METHOD: streamed
BACKUP FROM: primary
START TIME: 2026-11-22 06:00:00 UTC
LABEL: pg_basebackup base backup
START TIMELINE: 1
"""
MANIFEST = json.dumps({"PostgreSQL-Backup-Manifest-Version": 1, "Files": [],
                       "WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}]})


def _tar(members: dict[str, bytes], fmt=tarfile.USTAR_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("chunk", [1, 7, 511, 512, 513, 4096, 1 << 20])
def test_the_watcher_keeps_the_describing_members_whatever_the_chunking(chunk):
    control = struct.pack("<Q", 7310000000000000001) + b"\0" * 200
    members = {"PG_VERSION": b"15\n", "base/1/1234": b"x" * 10000, "global/pg_control": control,
               "backup_label": LABEL.encode(), "empty": b"", "backup_manifest": MANIFEST.encode()}
    stream = _tar(members)
    watcher = TarWatcher()
    for start in range(0, len(stream), chunk):
        watcher.feed(stream[start:start + chunk])
    assert watcher.ended and watcher.count == len(members)
    assert set(watcher.members) == {"PG_VERSION", "global/pg_control", "backup_label", "backup_manifest"}
    assert watcher.members["backup_label"] == LABEL.encode()
    assert system_identifier(watcher.members["global/pg_control"]) == "7310000000000000001"


def test_gnu_long_names_are_followed_and_pax_headers_skipped():
    long_name = "base/16384/" + "a" * 150
    watcher = TarWatcher(frozenset({"backup_label", long_name}))
    watcher.feed(_tar({long_name: b"long", "backup_label": b"label"}, tarfile.GNU_FORMAT))
    assert watcher.members == {long_name: b"long", "backup_label": b"label"} and watcher.count == 2
    # PostgreSQL's tar writer never needs pax records; they are passed over, the members counted
    watcher = TarWatcher()
    watcher.feed(_tar({"x" * 150: b"long", "backup_label": b"label"}, tarfile.PAX_FORMAT))
    assert watcher.members == {"backup_label": b"label"} and watcher.count == 2


def test_backup_label_and_manifest():
    label = parse_backup_label(LABEL)
    assert (label.begin_lsn, label.begin_wal, label.timeline) == ("0/2000028", "000000010000000000000002", 1)
    assert manifest_end(MANIFEST.encode()) == (1, "0/2000100")
    with pytest.raises(BaseBackupError):
        parse_backup_label("nothing")
    with pytest.raises(BaseBackupError, match="WAL-Ranges"):
        manifest_end(b"{}")


def test_wal_file_names_like_pg_walfile_name():
    assert wal_file_name(1, "0/2000100") == "000000010000000000000002"
    assert wal_file_name(2, "1/FF000000", previous=True) == "0000000200000001000000FE"
    assert wal_file_name(1, "1/FF000000") == "0000000100000001000000FF"
    assert wal_file_name(1, "2/10", 64 << 20) == "000000010000000200000000"
    assert segment_size_of("0/2000028", "000000010000000000000002") == 16 << 20
    assert segment_size_of("5/8000028", "000000010000000500000002") == 64 << 20


def test_base_backup_keys():
    layout = ArchiveLayout("orders", "shop/")
    assert keys.base_archive_key(layout, "daily-1") == "shop/orders/base/daily-1/base.tar.zst"
    assert keys.catalog_key(layout, "daily-1") == "shop/orders/base/daily-1/backup.json"
    assert keys.backup_name_of_catalog_key(layout, "shop/orders/base/daily-1/backup.json") == "daily-1"
    assert keys.backup_name_of_catalog_key(layout, "shop/orders/base/daily-1/base.tar.zst") is None
    assert keys.backup_name_of_catalog_key(layout, "shop/other/base/daily-1/backup.json") is None
    for bad in ("", "a/b", "..", "Upper", "-x"):
        with pytest.raises(ValueError):
            keys.base_archive_key(layout, bad)


def test_recovery_settings_and_their_removal(tmp_path: Path):
    command = restore_command("orders", "shop path")
    # the legacy layout says its empty namespace: the pod's own (of its new cluster) may differ
    assert command == "PGOP_S3_CLUSTER=orders PGOP_S3_PATH='shop path' PGOP_S3_NAMESPACE='' pgop agent wal-fetch %f %p"
    assert restore_command("orders", "p", namespace="shop") == \
        "PGOP_S3_CLUSTER=orders PGOP_S3_PATH=p PGOP_S3_NAMESPACE=shop pgop agent wal-fetch %f %p"
    settings = recovery_settings(command, target_time="2026-11-22T07:00:00.25+01:00")
    # PostgreSQL's own syntax: it refuses RFC 3339's 'T' and 'Z' ("invalid value for parameter")
    assert settings["recovery_target_time"] == "2026-11-22 06:00:00.250000+00"
    assert settings["recovery_target_action"] == "promote"
    assert "recovery_target_lsn" not in recovery_settings(command)
    assert recovery_settings(command, target_lsn="0/3000000")["recovery_target_lsn"] == "0/3000000"

    (tmp_path / "postgresql.auto.conf").write_text("work_mem = '8MB'\n")
    write_recovery(tmp_path, settings)
    text = (tmp_path / "postgresql.auto.conf").read_text()
    assert "restore_command = 'PGOP_S3_CLUSTER=orders PGOP_S3_PATH=''shop path'' PGOP_S3_NAMESPACE='''' pgop" in text
    assert (tmp_path / "recovery.signal").exists()
    remove_recovery(tmp_path)
    assert (tmp_path / "postgresql.auto.conf").read_text() == "work_mem = '8MB'\n"
