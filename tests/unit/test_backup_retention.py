from datetime import UTC, datetime, timedelta

import pytest

from pgop.backup.catalog import Backup
from pgop.backup.retention import (
    apply_retention,
    first_recoverability_point,
    oldest_wal_needed,
    parse_max_age,
    wal_deletable,
)
from pgop.kernel.model import RetentionSpec


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


NOW = utc(2026, 11, 22, 12, 0)


def daily(day: int, segment: int, timeline: int = 1, phase: str = "Completed") -> Backup:
    """A backup taken at 03:00 on `day` of November, beginning in WAL segment `segment`."""
    begin = f"{timeline:08X}00000000{segment:08X}"
    started = utc(2026, 11, day, 3, 0)
    done = phase == "Completed"
    return Backup(
        cluster="orders", backup_name=f"orders-202611{day:02d}0300", phase=phase, timeline=timeline,
        begin_lsn=f"0/{segment:X}000028", end_lsn=f"0/{segment:X}000100" if done else None,
        begin_wal=begin, end_wal=begin if done else None,
        started_at=started, completed_at=started + timedelta(minutes=10) if done else None,
    )


FIVE = [daily(18, 0x10), daily(19, 0x20), daily(20, 0x30), daily(21, 0x40), daily(22, 0x50)]


def names(backups):
    return [b.backup_name for b in backups]


# ------------------------------------------------------------------------ keepLast

def test_keep_last_2_of_5_deletes_the_3_oldest_and_the_wal_before_the_oldest_kept():
    decision = apply_retention(FIVE, RetentionSpec(keep_last=2), NOW)
    assert names(decision.keep) == ["orders-202611210300", "orders-202611220300"]
    assert names(decision.delete) == ["orders-202611180300", "orders-202611190300", "orders-202611200300"]
    assert decision.oldest_wal_needed == "000000010000000000000040"
    assert wal_deletable("00000001000000000000003F", decision.oldest_wal_needed)
    assert not wal_deletable("000000010000000000000040", decision.oldest_wal_needed)
    assert not wal_deletable("000000010000000000000051", decision.oldest_wal_needed)


def test_the_order_backups_are_given_in_does_not_matter():
    decision = apply_retention(list(reversed(FIVE)), RetentionSpec(keep_last=2), NOW)
    assert names(decision.keep) == ["orders-202611210300", "orders-202611220300"]


def test_keep_last_more_than_there_are_deletes_nothing():
    decision = apply_retention(FIVE, RetentionSpec(keep_last=7), NOW)
    assert decision.delete == [] and len(decision.keep) == 5
    assert decision.oldest_wal_needed == "000000010000000000000010"


def test_each_deletion_says_why():
    decision = apply_retention(FIVE, RetentionSpec(keep_last=2), NOW)
    assert decision.reasons["orders-202611200300"] == \
        "retention keepLast 2: 2 newer completed backup(s), completed 2026-11-20T03:10:00Z"


# ------------------------------------------------------------------------ failed and running

def test_failed_and_running_backups_are_never_counted_as_kept():
    # The two newest are a failure and a running one: keepLast 2 keeps two *completed* backups.
    backups = FIVE[:3] + [daily(21, 0x40, phase="Failed"), daily(22, 0x50, phase="Running")]
    decision = apply_retention(backups, RetentionSpec(keep_last=2), NOW)
    assert names(decision.keep) == ["orders-202611190300", "orders-202611200300"]
    assert "orders-202611220300" not in names(decision.delete)  # running: left alone
    assert names(decision.in_progress) == ["orders-202611220300"]
    assert "orders-202611210300" not in names(decision.delete)  # a recent failure stays to be read


def test_failed_backups_older_than_the_oldest_kept_are_deleted():
    backups = [daily(17, 0x08, phase="Failed")] + FIVE
    decision = apply_retention(backups, RetentionSpec(keep_last=2), NOW)
    assert names(decision.delete)[0] == "orders-202611170300"
    assert "failed backup older than the oldest kept backup" in decision.reasons["orders-202611170300"]


def test_a_pending_backup_is_never_deleted_even_when_old():
    pending = Backup(cluster="orders", backup_name="orders-old-pending", phase="Pending")
    decision = apply_retention([pending] + FIVE, RetentionSpec(keep_last=1), NOW)
    assert "orders-old-pending" not in names(decision.delete)


def test_without_any_completed_backup_nothing_is_deleted_and_no_wal():
    backups = [daily(21, 0x40, phase="Failed"), daily(22, 0x50, phase="Running")]
    decision = apply_retention(backups, RetentionSpec(keep_last=1), NOW)
    assert decision.delete == [] and decision.keep == []
    assert decision.oldest_wal_needed is None
    assert not wal_deletable("000000010000000000000001", decision.oldest_wal_needed)


# ------------------------------------------------------------------------ maxAge (recovery window)

def test_max_age_keeps_the_window_and_the_backup_that_starts_it():
    # 2 days back from 12:00 on the 22nd is 12:00 on the 20th: the backups of the 21st and 22nd
    # are inside; the one of the 20th (03:10) is needed to restore to 12:00 on the 20th.
    decision = apply_retention(FIVE, RetentionSpec(max_age="2d"), NOW)
    assert names(decision.keep) == ["orders-202611200300", "orders-202611210300", "orders-202611220300"]
    assert names(decision.delete) == ["orders-202611180300", "orders-202611190300"]
    assert decision.first_recoverability_point <= NOW - timedelta(days=2)


def test_max_age_never_deletes_the_newest_backup_even_when_all_are_old():
    decision = apply_retention(FIVE, RetentionSpec(max_age="1h"), utc(2026, 12, 31))
    assert names(decision.keep) == ["orders-202611220300"]
    assert len(decision.delete) == 4


def test_keep_last_and_max_age_together_keep_what_either_keeps():
    decision = apply_retention(FIVE, RetentionSpec(keep_last=4, max_age="1d"), NOW)
    assert len(decision.keep) == 4
    decision = apply_retention(FIVE, RetentionSpec(keep_last=1, max_age="3d"), NOW)
    assert names(decision.keep) == names(FIVE[1:])  # 19th 03:10 starts the window from 19th 12:00
    assert "keepLast 1 and maxAge 3d" in decision.reasons["orders-202611180300"]


def test_keep_last_one_keeps_only_the_newest():
    decision = apply_retention(FIVE, RetentionSpec(keep_last=1), NOW)
    assert names(decision.keep) == ["orders-202611220300"]


def test_no_retention_keeps_everything():
    assert apply_retention(FIVE, None, NOW).delete == []
    assert apply_retention(FIVE, RetentionSpec(), NOW).delete == []


@pytest.mark.parametrize("text, delta", [("12h", timedelta(hours=12)), ("30d", timedelta(days=30)),
                                         ("4w", timedelta(weeks=4))])
def test_max_age_format(text, delta):
    assert parse_max_age(text) == delta


@pytest.mark.parametrize("text", ["0d", "30", "1m", "1d12h", "-1d", ""])
def test_max_age_refuses_what_the_crd_refuses(text):
    with pytest.raises(ValueError, match="maxAge"):
        parse_max_age(text)


# ------------------------------------------------------------------------ WAL and timelines

def test_wal_before_the_oldest_kept_backup_goes_on_every_timeline_and_history_files_stay():
    # A failover moved the cluster to timeline 2 at segment 0x35; the oldest kept backup is on it.
    backups = FIVE[:3] + [daily(21, 0x40, timeline=2), daily(22, 0x50, timeline=2)]
    decision = apply_retention(backups, RetentionSpec(keep_last=2), NOW)
    needed = decision.oldest_wal_needed
    assert needed == "000000020000000000000040"
    assert wal_deletable("000000010000000000000034", needed)  # old timeline, before
    assert wal_deletable("000000020000000000000035.partial", needed)
    assert wal_deletable("00000001000000000000003F.zst", needed)
    assert wal_deletable("000000010000000000000020.00000028.backup", needed)
    assert not wal_deletable("000000020000000000000040", needed)
    assert not wal_deletable("00000002.history", needed)
    assert not wal_deletable("00000003.history", needed)
    assert not wal_deletable("README", needed)


def test_wal_deletable_reads_archive_keys_with_prefix_and_compression_suffix():
    needed = "000000010000000000000040"
    assert wal_deletable("shop/orders/wal/00000001/000000010000000000000001.zst", needed)
    assert not wal_deletable("shop/orders/wal/00000001/000000010000000000000041.zst", needed)
    assert not wal_deletable("shop/orders/wal/00000002/00000002.history.zst", needed)


def test_segment_numbers_compare_across_the_log_boundary():
    # 000000010000000100000000 follows 0000000100000000000000FF (16 MB segments).
    assert wal_deletable("0000000100000000000000FF", "000000010000000100000000")
    assert not wal_deletable("000000010000000100000000", "0000000100000000000000FF")


def test_oldest_wal_needed_is_the_earliest_position_among_kept_backups():
    assert oldest_wal_needed([daily(22, 0x50, timeline=3), daily(21, 0x40, timeline=2)]) == \
        "000000020000000000000040"


def test_begin_wal_is_derived_from_begin_lsn_when_missing():
    backup = Backup(cluster="orders", backup_name="b", timeline=1, begin_lsn="0/45000028", end_lsn="0/46000000",
                    completed_at=NOW)
    assert oldest_wal_needed([backup]) == "000000010000000000000045"


def test_a_kept_backup_that_does_not_say_where_it_began_protects_all_wal():
    unknown = Backup(cluster="orders", backup_name="orders-manual", end_lsn="0/60000100",
                     completed_at=utc(2026, 11, 22, 11, 0))
    decision = apply_retention(FIVE + [unknown], RetentionSpec(keep_last=2), NOW)
    assert decision.oldest_wal_needed is None


# ------------------------------------------------------------------------ recoverability

def test_first_recoverability_point_after_retention_is_the_end_of_the_oldest_kept():
    decision = apply_retention(FIVE, RetentionSpec(keep_last=2), NOW)
    assert decision.first_recoverability_point == utc(2026, 11, 21, 3, 10)
    assert first_recoverability_point(decision.keep) == utc(2026, 11, 21, 3, 10)
    assert first_recoverability_point([]) is None


# ------------------------------------------------------ the S3 catalog confirms what statuses say

def _confirmed(statuses, catalog, keep_last=2):
    from pgop.backup.retention import apply_retention, confirm_with_catalog
    spec = RetentionSpec(keep_last=keep_last)
    return confirm_with_catalog(apply_retention(statuses, spec, NOW), apply_retention(catalog, spec, NOW), catalog)


def test_when_statuses_and_catalog_agree_retention_is_as_before():
    confirmed = _confirmed(FIVE, FIVE)
    assert confirmed.s3_deletes == confirmed.pgbackup_deletes == names(FIVE[:3])
    assert confirmed.oldest_wal_needed == "000000010000000000000040" and not confirmed.refused


def test_forged_newer_completed_statuses_cannot_push_real_backups_out():
    forged = [Backup(cluster="orders", backup_name=f"fake-{i}", phase="Completed", begin_wal="000000010000000000000090",
                     end_lsn="0/90000100", completed_at=utc(2026, 11, 22, 11, i)) for i in range(2)]
    confirmed = _confirmed(FIVE + forged, FIVE)  # S3 has only the five real ones
    # the statuses would drop all five real ones; the catalog keeps the 21st and 22nd, so they stay
    assert confirmed.refused.keys() == {"orders-202611210300", "orders-202611220300"}
    assert set(confirmed.s3_deletes) == set(names(FIVE[:3]))
    assert "orders-202611220300" not in confirmed.pgbackup_deletes
    # WAL: never past the oldest backup the catalog keeps
    assert confirmed.oldest_wal_needed == "000000010000000000000040"


def test_a_real_backup_forged_failed_is_not_deleted():
    statuses = FIVE[:4] + [daily(22, 0x50, phase="Failed")]  # its status says Failed, S3 says completed
    confirmed = _confirmed(statuses, FIVE, keep_last=2)
    assert "orders-202611220300" not in confirmed.s3_deletes
    # the catalog keeps the 21st and 22nd, so the 20th's data goes; its PgBackup (kept by the
    # statuses' count) stays until its status agrees
    assert "orders-202611200300" in confirmed.s3_deletes and "orders-202611200300" not in confirmed.pgbackup_deletes
    # the statuses keep the 20th and 21st (WAL from 0x30), the catalog 21st and 22nd (0x40): the earlier wins
    assert confirmed.oldest_wal_needed == "000000010000000000000030"


def test_a_backup_only_in_the_catalog_counts_and_goes_with_its_turn():
    # the 18th's PgBackup was deleted by hand (or the cluster re-created): S3 still lists it
    confirmed = _confirmed(FIVE[1:], FIVE)
    assert "orders-202611180300" in confirmed.s3_deletes and "orders-202611180300" not in confirmed.pgbackup_deletes
    assert confirmed.oldest_wal_needed == "000000010000000000000040"


def test_a_failed_backup_without_a_catalog_document_is_removed():
    statuses = [daily(17, 0x08, phase="Failed"), *FIVE]
    confirmed = _confirmed(statuses, FIVE)
    assert "orders-202611170300" in confirmed.s3_deletes and "orders-202611170300" in confirmed.pgbackup_deletes


def test_an_empty_catalog_deletes_no_wal():
    confirmed = _confirmed(FIVE, [])
    assert confirmed.oldest_wal_needed is None
    assert confirmed.refused == {}  # nothing in S3 to protect: the PgBackups the statuses drop go
