import json
from datetime import UTC, datetime, timedelta

import pytest

from pgop.backup.catalog import (
    FORMAT,
    FORMAT_VERSION,
    Backup,
    CatalogError,
    RestoreTargetError,
    choose_backup,
    completed_backups,
    first_recoverability_point,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def backup(name: str, completed: datetime | None, end_lsn: str | None = None, phase: str = "Completed",
           **more) -> Backup:
    return Backup(cluster="orders", backup_name=name, phase=phase, completed_at=completed,
                  started_at=completed - timedelta(minutes=10) if completed else None,
                  end_lsn=end_lsn, **more)


FULL = Backup(
    cluster="orders",
    backup_name="orders-202611220300",
    system_identifier="7312345678901234567",
    timeline=2,
    begin_lsn="0/5000028",
    end_lsn="0/5000138",
    begin_wal="000000020000000000000005",
    end_wal="000000020000000000000005",
    started_at=utc(2026, 11, 22, 3, 0, 4),
    completed_at=utc(2026, 11, 22, 3, 12, 40),
    size_bytes=123456789,
    compression="zstd",
    pg_version=15,
    files=({"name": "base.tar.zst", "sizeBytes": 123450000}, {"name": "pg_wal.tar.zst", "sizeBytes": 6789}),
    s3_path="s3://pg-backups/shop/orders/base/orders-202611220300",
)

# Three daily backups; WAL positions grow with time.
B1 = backup("orders-202611200300", utc(2026, 11, 20, 3, 10), "0/3000100")
B2 = backup("orders-202611210300", utc(2026, 11, 21, 3, 10), "0/7000100")
B3 = backup("orders-202611220300", utc(2026, 11, 22, 3, 10), "0/B000100")
RUNNING = backup("orders-202611230300", None, None, phase="Running")
FAILED = backup("orders-manual", utc(2026, 11, 22, 20, 0), None, phase="Failed")


# ------------------------------------------------------------------------ the document

def test_document_round_trips_every_field():
    assert Backup.from_json(FULL.to_json()) == FULL
    assert Backup.from_json(FULL.to_json()).files == FULL.files


def test_document_uses_the_documented_field_names_and_a_format_version():
    document = json.loads(FULL.to_json())
    assert document["format"] == FORMAT and document["formatVersion"] == FORMAT_VERSION == 1
    assert {"cluster", "backupName", "systemIdentifier", "timeline", "beginLSN", "endLSN", "beginWal",
            "endWal", "startedAt", "completedAt", "sizeBytes", "compression", "pgVersion", "files"} <= set(document)
    assert document["completedAt"] == "2026-11-22T03:12:40Z"
    assert document["beginLSN"] == "0/5000028"


def test_system_identifier_is_a_string_so_json_readers_keep_all_64_bits():
    document = json.loads(FULL.to_json())
    assert document["systemIdentifier"] == "7312345678901234567"
    assert Backup.from_json(FULL.to_json()).system_identifier == "7312345678901234567"


def test_document_is_byte_for_byte_stable():
    assert FULL.to_json() == Backup.from_json(FULL.to_json()).to_json()


def test_unknown_fields_of_a_newer_minor_writer_are_ignored():
    document = json.loads(FULL.to_json())
    document["checksumAlgorithm"] = "sha256"
    assert Backup.from_dict(document) == FULL


def test_a_newer_format_version_is_refused_with_a_reason():
    document = json.loads(FULL.to_json())
    document["formatVersion"] = 2
    with pytest.raises(CatalogError, match="newer pgop .*format version 2"):
        Backup.from_dict(document)


@pytest.mark.parametrize("change, words", [
    ({"format": "barman"}, "not a pgop backup metadata document"),
    ({"formatVersion": "1"}, "formatVersion"),
    ({"backupName": ""}, "backupName is missing"),
    ({"endLSN": "5000138"}, "endLSN is not an LSN"),
    ({"completedAt": "2026-11-22 03:12:40"}, "completedAt is not an RFC 3339 time with a zone"),
    ({"timeline": "2"}, "timeline must be an integer"),
    ({"files": [{"sizeBytes": 1}]}, "files must be a list of objects with a name"),
])
def test_damaged_documents_are_refused_naming_the_field(change, words):
    document = json.loads(FULL.to_json()) | change
    with pytest.raises(CatalogError, match=words):
        Backup.from_dict(document)


def test_not_json_is_refused():
    with pytest.raises(CatalogError, match="not JSON"):
        Backup.from_json("<Error>NoSuchKey</Error>")


def test_lsns_are_read_in_any_spelling_postgres_uses():
    document = json.loads(FULL.to_json()) | {"endLSN": "0/05000138"}  # PostgreSQL 18 pads
    assert Backup.from_dict(document).end_lsn == "0/5000138"


def test_a_pgbackup_object_reads_into_the_same_record():
    body = {
        "metadata": {"name": "orders-202611220300", "uid": "u1"},
        "spec": {"cluster": "orders"},
        "status": {"phase": "Completed", "startedAt": "2026-11-22T03:00:04Z", "completedAt": "2026-11-22T03:12:40Z",
                   "beginLSN": "0/5000028", "endLSN": "0/5000138", "timeline": 2,
                   "beginWal": "000000020000000000000005", "endWal": "000000020000000000000005",
                   "sizeBytes": 123456789, "s3Path": FULL.s3_path},
    }
    record = Backup.from_pgbackup(body)
    assert record.completed
    assert (record.backup_name, record.completed_at, record.end_lsn, record.timeline, record.begin_wal) == \
        (FULL.backup_name, FULL.completed_at, FULL.end_lsn, FULL.timeline, FULL.begin_wal)


def test_a_pgbackup_without_status_is_pending():
    record = Backup.from_pgbackup({"metadata": {"name": "b"}, "spec": {"cluster": "orders"}})
    assert record.phase == "Pending" and not record.completed


# ------------------------------------------------------------------------ recoverable range

def test_first_recoverability_point_is_the_end_of_the_oldest_completed_backup():
    assert first_recoverability_point([B3, RUNNING, B1, FAILED, B2]) == B1.completed_at
    assert first_recoverability_point([RUNNING, FAILED]) is None


def test_completed_backups_are_ordered_oldest_first_and_exclude_the_rest():
    assert completed_backups([B3, RUNNING, B1, FAILED, B2]) == [B1, B2, B3]


# ------------------------------------------------------------------------ choosing for a restore

def test_without_a_target_the_latest_completed_backup_is_chosen():
    assert choose_backup([B1, B3, B2, RUNNING, FAILED]) == B3


def test_target_time_picks_the_latest_backup_that_ended_before_it():
    assert choose_backup([B1, B2, B3], target_time=utc(2026, 11, 21, 18, 0)) == B2
    assert choose_backup([B1, B2, B3], target_time="2026-11-21T18:00:00Z") == B2


def test_target_time_exactly_at_a_backup_end_may_start_from_it():
    assert choose_backup([B1, B2, B3], target_time=B2.completed_at) == B2


def test_a_target_between_a_backups_start_and_end_uses_the_previous_backup():
    during_b2 = B2.completed_at - timedelta(minutes=5)
    assert choose_backup([B1, B2, B3], target_time=during_b2) == B1


def test_a_target_before_the_first_backup_is_refused_with_the_range():
    with pytest.raises(RestoreTargetError) as caught:
        choose_backup([B2, B1, B3], target_time=utc(2026, 11, 19, 12, 0))
    message = str(caught.value)
    assert message.startswith("targetTime 2026-11-19T12:00:00Z is before the first recoverability point "
                              "2026-11-20T03:10:00Z")
    assert "available: 2026-11-20T03:10:00Z (end of orders-202611200300) to the end of the archived WAL" in message
    assert "orders-202611220300 completed 2026-11-22T03:10:00Z" in message


def test_a_failed_backup_never_serves_a_restore():
    # The failed backup "ended" later than B3: it must not be picked for a later target.
    assert choose_backup([B1, B2, B3, FAILED], target_time=utc(2026, 11, 22, 21, 0)) == B3


def test_no_completed_backup_at_all_says_so_and_lists_what_exists():
    with pytest.raises(RestoreTargetError, match=r"no completed base backup.*orders-202611230300 \(Running\)"):
        choose_backup([RUNNING], target_time=utc(2026, 11, 22))
    with pytest.raises(RestoreTargetError, match="no completed base backup"):
        choose_backup([])


def test_target_lsn_picks_the_latest_backup_ending_at_or_before_it():
    assert choose_backup([B1, B2, B3], target_lsn="0/9000000") == B2
    assert choose_backup([B1, B2, B3], target_lsn="0/7000100") == B2
    # Compared as positions, not text: '0/10000000' is after '0/B000100'.
    assert choose_backup([B1, B2, B3], target_lsn="0/10000000") == B3


def test_target_lsn_before_the_first_backup_is_refused_with_the_lsn_range():
    with pytest.raises(RestoreTargetError, match=r"targetLSN 0/1000000 is before the first recoverability point "
                                                 r"LSN 0/3000100; available: LSN 0/3000100"):
        choose_backup([B1, B2], target_lsn="0/1000000")


def test_a_target_in_the_future_is_refused_when_now_is_known():
    with pytest.raises(RestoreTargetError, match="in the future"):
        choose_backup([B1, B2], target_time=utc(2026, 11, 23), now=utc(2026, 11, 22, 12, 0))
    assert choose_backup([B1, B2], target_time=utc(2026, 11, 23)) == B2  # without now: the latest


def test_both_targets_at_once_are_refused():
    with pytest.raises(RestoreTargetError, match="at most one"):
        choose_backup([B1], target_time=utc(2026, 11, 22), target_lsn="0/1")


@pytest.mark.parametrize("kwargs, words", [
    ({"target_time": "yesterday"}, "not an RFC 3339 time"),
    ({"target_time": datetime(2026, 11, 22)}, "no time zone"),
    ({"target_lsn": "5000"}, "targetLSN: not an LSN"),
])
def test_malformed_targets_are_refused(kwargs, words):
    with pytest.raises(RestoreTargetError, match=words):
        choose_backup([B1], **kwargs)


def test_a_named_backup_is_used_when_it_fits_the_target():
    assert choose_backup([B1, B2, B3], target_time=utc(2026, 11, 22, 12, 0), name=B1.backup_name) == B1
    assert choose_backup([B1, B2, B3], name=B2.backup_name) == B2


def test_a_named_backup_that_ends_after_the_target_is_refused():
    with pytest.raises(RestoreTargetError, match="before the end of backup 'orders-202611220300'"):
        choose_backup([B1, B2, B3], target_time=utc(2026, 11, 21, 18, 0), name=B3.backup_name)


def test_a_named_backup_that_is_missing_or_not_completed_is_refused():
    with pytest.raises(RestoreTargetError, match="'nope' is not in the catalog; completed backups: "
                                                 "orders-202611200300, orders-202611210300"):
        choose_backup([B1, B2], name="nope")
    with pytest.raises(RestoreTargetError, match="is Failed, not Completed"):
        choose_backup([B1, FAILED], name="orders-manual")
