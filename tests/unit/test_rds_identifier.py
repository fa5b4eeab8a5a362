import pytest

from pgop.rds.identifier import (
    MAX_IDENTIFIER_LENGTH,
    db_instance_identifier,
    final_snapshot_identifier,
    is_valid_identifier,
)


def test_readable_and_stable():
    first = db_instance_identifier("shop", "orders-db")
    assert first == db_instance_identifier("shop", "orders-db")
    assert first.startswith("shop-orders-db-")
    assert is_valid_identifier(first)


def test_ambiguous_pairs_do_not_collide():
    assert db_instance_identifier("a-b", "c") != db_instance_identifier("a", "b-c")


def test_long_names_are_cut_to_63_and_stay_distinct():
    ns = "n" * 63
    one = db_instance_identifier(ns, "x" * 63 + "1")
    two = db_instance_identifier(ns, "x" * 63 + "2")
    assert len(one) == MAX_IDENTIFIER_LENGTH
    assert one != two
    assert is_valid_identifier(one) and is_valid_identifier(two)


@pytest.mark.parametrize("namespace,name", [
    ("1shop", "db"), ("shop", "9"), ("a" * 54, "b"), ("x--y", "z"), ("shop", "my.db"),
])
def test_always_valid_for_rds(namespace, name):
    identifier = db_instance_identifier(namespace, name)
    assert is_valid_identifier(identifier), identifier
    assert identifier[0].isalpha()
    assert "--" not in identifier and not identifier.endswith("-")


def test_scope_changes_only_the_hash():
    plain = db_instance_identifier("shop", "orders")
    scoped = db_instance_identifier("shop", "orders", scope="prod-eu")
    assert plain != scoped
    assert plain.rsplit("-", 1)[0] == scoped.rsplit("-", 1)[0]


@pytest.mark.parametrize("bad", ["", "1abc", "abc-", "a--b", "A" * 64, "ab_c", "x" * 64])
def test_validity_check(bad):
    assert not is_valid_identifier(bad)


def test_final_snapshot_is_per_object_and_stable():
    identifier = db_instance_identifier("shop", "orders")
    a = final_snapshot_identifier(identifier, "uid-1")
    assert a == final_snapshot_identifier(identifier, "uid-1")
    assert a != final_snapshot_identifier(identifier, "uid-2")
    assert a.startswith(identifier + "-final-")
    assert "--" not in a and len(a) <= 255
