import io
import os
import struct

import pytest
import zstandard

from pgop.backup import commands, wal
from pgop.backup.layout import ArchiveLayout
from pgop.backup.s3 import Credentials, CredentialsError, S3Error, S3Settings


def test_compression_round_trip_keeps_every_byte_and_the_checksum():
    data = os.urandom(1 << 20) + b"\0" * (3 << 20) + os.urandom(12345)
    packed = io.BytesIO()
    done = wal.compress(io.BytesIO(data), packed, size=len(data))
    assert done.size == len(data) and done.compressed_size == len(packed.getvalue())
    assert done.compressed_size < len(data)  # the zero pages compress
    packed.seek(0)
    out = io.BytesIO()
    back = wal.decompress(packed, out)
    assert out.getvalue() == data and back.sha256 == done.sha256 and back.size == len(data)


def test_the_archived_object_is_plain_zstd_a_person_can_unpack():
    data = b"postgres wal" * 100000
    packed = io.BytesIO()
    wal.compress(io.BytesIO(data), packed)
    assert zstandard.ZstdDecompressor().decompress(packed.getvalue(), max_output_size=len(data)) == data


def test_an_empty_file_round_trips():
    packed, out = io.BytesIO(), io.BytesIO()
    done = wal.compress(io.BytesIO(b""), packed, size=0)
    packed.seek(0)
    assert wal.decompress(packed, out).sha256 == done.sha256 and out.getvalue() == b""


def test_a_corrupt_object_does_not_decompress():
    packed = io.BytesIO()
    wal.compress(io.BytesIO(os.urandom(100000)), packed)
    broken = bytearray(packed.getvalue())
    broken[len(broken) // 2] ^= 0xFF
    with pytest.raises(zstandard.ZstdError):
        wal.decompress(io.BytesIO(bytes(broken)), io.BytesIO())


def test_a_free_name_is_pushed_the_same_content_is_already_there_a_different_one_is_refused():
    assert wal.push_decision(None, "aa") == wal.PUSHED
    assert wal.push_decision({"sha256": "aa", "size": "3"}, "aa") == wal.ALREADY_ARCHIVED
    with pytest.raises(wal.WalConflict, match="different file"):
        wal.push_decision({"sha256": "bb"}, "aa")
    with pytest.raises(wal.WalConflict, match="not written by pgop"):
        wal.push_decision({}, "aa")


def test_a_conflict_names_another_database_system_when_that_is_the_cause():
    text = wal.conflict_message({"sha256": "b" * 64, "system-identifier": "111"}, "a" * 64, "222")
    assert "database system 111" in text and "this is 222" in text
    assert "database system" not in wal.conflict_message({"sha256": "b" * 64, "system-identifier": "1"}, "a" * 64, "1")


def test_the_system_identifier_comes_from_pg_control_next_to_pg_wal(tmp_path):
    (tmp_path / "global").mkdir()
    (tmp_path / "pg_wal").mkdir()
    (tmp_path / "global" / "pg_control").write_bytes(struct.pack("<Q", 7301234567890123456) + b"\0" * 100)
    assert wal.system_identifier(tmp_path / "pg_wal" / "000000010000000000000001") == "7301234567890123456"
    assert wal.system_identifier(tmp_path / "elsewhere" / "x" / "000000010000000000000001") is None


def test_settings_come_from_the_pod_environment_and_the_secret_files(tmp_path):
    (tmp_path / "ACCESS_KEY_ID").write_text("AKID\n")
    (tmp_path / "ACCESS_SECRET_KEY").write_text("s3cr3t\n")
    settings = S3Settings.from_env({"PGOP_S3_BUCKET": "b", "PGOP_S3_PATH": "p", "PGOP_S3_ENDPOINT": "http://e",
                                    "PGOP_S3_REGION": "r", "PGOP_S3_CREDENTIALS_DIR": str(tmp_path)})
    assert (settings.bucket, settings.path, settings.endpoint, settings.region) == ("b", "p", "http://e", "r")
    assert settings.credentials == Credentials("AKID", "s3cr3t")
    assert "s3cr3t" not in repr(settings)


def test_the_usual_aws_key_names_are_accepted_too(tmp_path):
    (tmp_path / "AWS_ACCESS_KEY_ID").write_text("AKID")
    (tmp_path / "AWS_SECRET_ACCESS_KEY").write_text("x")
    assert Credentials.from_directory(tmp_path) == Credentials("AKID", "x")


def test_missing_settings_or_keys_are_said_plainly(tmp_path):
    with pytest.raises(S3Error, match="PGOP_S3_BUCKET"):
        S3Settings.from_env({})
    with pytest.raises(CredentialsError, match="ACCESS_KEY_ID"):
        S3Settings.from_env({"PGOP_S3_BUCKET": "b", "PGOP_S3_CREDENTIALS_DIR": str(tmp_path)})
    with pytest.raises(CredentialsError, match="not mounted"):
        S3Settings.from_env({"PGOP_S3_BUCKET": "b", "PGOP_S3_CREDENTIALS_DIR": str(tmp_path / "none")})


def test_without_settings_push_fails_and_fetch_does_not_end_recovery_early(tmp_path, capsys):
    segment = tmp_path / "000000010000000000000001"
    segment.write_bytes(b"x")
    assert commands.wal_push(str(segment), env={}) == 1
    assert "PGOP_S3_BUCKET" in capsys.readouterr().err
    # archive recovery: a failure is not "no more WAL"
    assert commands.wal_fetch(segment.name, str(tmp_path / "out"), env={}, cwd=tmp_path) == commands.ABORT_RECOVERY
    # a standby: "not now"; it streams and asks again
    (tmp_path / "standby.signal").write_text("")
    assert commands.wal_fetch(segment.name, str(tmp_path / "out"), env={}, cwd=tmp_path) == 1


def test_a_name_that_is_not_wal_is_never_pushed(tmp_path):
    stray = tmp_path / "postgresql.conf"
    stray.write_text("x")
    with pytest.raises(ValueError):
        wal.push(None, ArchiveLayout("orders"), stray)


class _FakeStorage:
    """Just enough of S3Storage for fetch: one object."""

    def __init__(self, key, data, metadata):
        self.objects = {key: (data, metadata)}

    def get(self, key):
        from pgop.backup.s3 import ObjectInfo
        if key not in self.objects:
            return None
        data, metadata = self.objects[key]
        return ObjectInfo(key, len(data), metadata), io.BytesIO(data)


def test_fetch_replaces_the_target_whole_and_clears_what_a_killed_fetch_left(tmp_path):
    layout = ArchiveLayout("orders")
    content = os.urandom(300000)
    packed = io.BytesIO()
    done = wal.compress(io.BytesIO(content), packed)
    name = "000000010000000000000004"
    storage = _FakeStorage(layout.wal_key(name), packed.getvalue(), {"sha256": done.sha256, "size": str(done.size)})
    leftover = tmp_path / ".RECOVERYXLOG.abc123.pgop-fetch"
    leftover.write_bytes(b"half")
    target = tmp_path / "RECOVERYXLOG"
    assert wal.fetch(storage, layout, name, target) == wal.FETCHED
    assert target.read_bytes() == content and not leftover.exists()
    assert wal.fetch(storage, layout, "000000010000000000000005", tmp_path / "x") == wal.NOT_FOUND

    storage.objects[layout.wal_key(name)] = (packed.getvalue(), {"sha256": "0" * 64, "size": str(done.size)})
    with pytest.raises(wal.WalCorrupt, match="checksum mismatch"):
        wal.fetch(storage, layout, name, tmp_path / "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RECOVERYXLOG"]


def test_a_replica_or_restore_refuses_wal_another_database_system_archived():
    from pgop.backup.wal import WalForeign, foreign_check
    with pytest.raises(WalForeign, match="archived by database system 111, this is 222"):
        foreign_check("000000010000000000000003", "111", "222")
    foreign_check("000000010000000000000003", "111", "111")
    foreign_check("000000010000000000000003", None, "222")  # pushed from outside a data directory
    foreign_check("000000010000000000000003", "111", None)  # a fetch with no pg_control to compare
