import pytest

from pgop.kernel.lsn import format_lsn, lag_bytes, lsn_diff, parse_lsn, wal_file_name


def test_parse_combines_the_two_hex_halves():
    assert parse_lsn("0/3000060") == 0x3000060
    assert parse_lsn("16/B374D848") == (0x16 << 32) + 0xB374D848


def test_postgres_18_zero_padded_form_is_the_same_position():
    assert parse_lsn("0/09000000") == parse_lsn("0/9000000")
    assert parse_lsn("a/ff") == parse_lsn("A/FF")


@pytest.mark.parametrize("text", ["", "0/", "/1", "x/1", "1/2/3", "3000060", "123456789/0", None, 5])
def test_anything_else_is_refused(text):
    with pytest.raises(ValueError):
        parse_lsn(text)


@pytest.mark.parametrize("text", ["0/0", "0/3000060", "16/B374D848", "FFFFFFFF/FFFFFFFF"])
def test_format_is_the_inverse_of_parse(text):
    assert format_lsn(parse_lsn(text)) == text


def test_format_refuses_positions_outside_64_bits():
    with pytest.raises(ValueError):
        format_lsn(-1)
    with pytest.raises(ValueError):
        format_lsn(1 << 64)


def test_diff_is_numeric_where_string_order_would_be_wrong():
    # As strings '0/9000000' > '0/10000000'; as positions it is 112 MiB behind.
    assert lsn_diff("0/10000000", "0/9000000") == 0x7000000
    assert lsn_diff("1/0", "0/FFFFFFFF") == 1
    assert lsn_diff("0/100", "0/200") == -0x100


def test_lag_is_unknown_until_both_sides_reported():
    assert lag_bytes(None, "0/100") is None
    assert lag_bytes("0/100", None) is None
    assert lag_bytes("", "0/100") is None


def test_lag_in_bytes_and_never_negative():
    assert lag_bytes("0/5000000", "0/4000000") == 16 * 1024 * 1024
    # The replica sampled later than the primary: no lag, not a negative one.
    assert lag_bytes("0/4000000", "0/5000000") == 0


def test_wal_file_name_matches_pg_walfile_name():
    assert wal_file_name(1, "0/3000060") == "000000010000000000000003"
    assert wal_file_name(2, "1/A0000000") == "0000000200000001000000A0"
    assert wal_file_name(1, "0/FFFFFFFF") == "0000000100000000000000FF"
