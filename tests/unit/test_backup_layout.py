import pytest

from pgop.backup.layout import (
    BACKUP_HISTORY,
    PARTIAL,
    SEGMENT,
    TIMELINE_HISTORY,
    ArchiveLayout,
    NotAWalFile,
    parse_wal_name,
)


@pytest.mark.parametrize("name, kind, timeline", [
    ("000000010000000000000003", SEGMENT, 1),
    ("0000000A00000001000000FF", SEGMENT, 10),
    ("000000020000000000000005.partial", PARTIAL, 2),
    ("000000010000000000000002.00000028.backup", BACKUP_HISTORY, 1),
    ("00000003.history", TIMELINE_HISTORY, 3),
])
def test_every_kind_postgres_archives_is_recognised(name, kind, timeline):
    wal = parse_wal_name(name)
    assert (wal.kind, wal.timeline) == (kind, timeline)


@pytest.mark.parametrize("name", [
    "", "000000010000000000000003.zst", "00000001000000000000003", "000000010000000000000003/..",
    "../000000010000000000000003", "0000000100000000000000g3", "000000010000000000000003.history",
    "00000000.history", "000000000000000000000001", "archive_status", "000000010000000000000003.ready",
])
def test_anything_else_is_refused(name):
    with pytest.raises(NotAWalFile):
        parse_wal_name(name)


def test_keys_group_wal_by_timeline_under_the_cluster():
    layout = ArchiveLayout("orders", "shop/orders-db/")
    assert layout.root == "shop/orders-db/orders/"
    assert layout.wal_key("000000010000000000000003") == \
        "shop/orders-db/orders/wal/00000001/000000010000000000000003.zst"
    assert layout.wal_key("00000002.history") == "shop/orders-db/orders/wal/00000002/00000002.history.zst"
    assert layout.wal_key("000000020000000000000005.partial") == \
        "shop/orders-db/orders/wal/00000002/000000020000000000000005.partial.zst"
    assert layout.wal_key("0000000A0000000000000001").startswith("shop/orders-db/orders/wal/0000000A/")
    assert layout.timeline_prefix(16) == "shop/orders-db/orders/wal/00000010/"


def test_no_path_means_the_bucket_root_and_slashes_are_tidied():
    assert ArchiveLayout("orders").wal_key("000000010000000000000001") == \
        "orders/wal/00000001/000000010000000000000001.zst"
    assert ArchiveLayout("orders", "/a//b/").root == "a/b/orders/"
    with pytest.raises(ValueError):
        ArchiveLayout("a/b")


def test_wal_keys_sort_in_wal_order_within_a_timeline():
    layout = ArchiveLayout("orders")
    names = ["000000010000000000000009", "00000001000000000000000A", "000000010000000100000000",
             "0000000100000000000000FF"]
    assert sorted(names, key=layout.wal_key) == sorted(names)


def test_a_key_gives_back_its_wal_name_and_only_its_own():
    layout = ArchiveLayout("orders", "p")
    key = layout.wal_key("000000010000000000000003")
    assert layout.name_of_key(key) == "000000010000000000000003"
    assert layout.name_of_key("p/orders/wal/00000002/000000010000000000000003.zst") is None  # wrong timeline
    assert layout.name_of_key("p/other/wal/00000001/000000010000000000000003.zst") is None
    assert layout.name_of_key("p/orders/base/x.tar.zst") is None
