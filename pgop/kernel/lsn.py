"""WAL positions (LSNs): Postgres prints them as two hex halves 'X/Y' of one 64-bit byte offset.

Comparisons and lag in bytes must go through integers: as strings '0/9000000' sorts after
'0/10000000', and PostgreSQL 18 zero-pads the low half ('0/09000000') where 13-17 do not.
"""
from __future__ import annotations

import re

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")

WAL_SEGMENT_SIZE = 16 * 1024 * 1024  # initdb default; pgop never changes --wal-segsize

LsnLike = str | int


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> byte position. Raises ValueError on anything else."""
    match = _LSN.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not an LSN (expected two hexadecimal numbers such as 0/3000060): {text!r}")
    high, low = match.groups()
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(position: int) -> str:
    """Byte position -> 'X/Y' as PostgreSQL 13-17 print it (upper case, no padding)."""
    if not 0 <= position < 1 << 64:
        raise ValueError(f"LSN out of range: {position}")
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def _position(lsn: LsnLike) -> int:
    return lsn if isinstance(lsn, int) else parse_lsn(lsn)


def lsn_diff(newer: LsnLike, older: LsnLike) -> int:
    """Bytes of WAL from `older` to `newer` (negative when `older` is ahead), like pg_wal_lsn_diff."""
    return _position(newer) - _position(older)


def lag_bytes(primary_lsn: LsnLike | None, replica_lsn: LsnLike | None) -> int | None:
    """How far a replica is behind, or None when either side has not reported.

    Never negative: the two positions are sampled at different moments, so a replica can
    appear ahead of a primary that reported a little earlier; that is no lag, not a negative one.
    """
    if primary_lsn in (None, "") or replica_lsn in (None, ""):
        return None
    return max(0, lsn_diff(primary_lsn, replica_lsn))


def wal_file_name(timeline: int, lsn: LsnLike, segment_size: int = WAL_SEGMENT_SIZE) -> str:
    """The WAL segment file holding `lsn` on `timeline`, as pg_walfile_name() names it."""
    position = _position(lsn)
    segments_per_id = 0x100000000 // segment_size
    segment = position // segment_size
    return f"{timeline:08X}{segment // segments_per_id:08X}{segment % segments_per_id:08X}"
