"""WAL positions (LSNs): Postgres prints them as two hex halves 'X/Y' of one 64-bit byte offset.

Comparisons and lag in bytes must go through integers: as strings '0/9000000' sorts after
'0/10000000', and PostgreSQL 18 zero-pads the low half ('0/09000000') where 13-17 do not.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

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


def wal_file_name(timeline: int, lsn: LsnLike, segment_size: int = WAL_SEGMENT_SIZE, *,
                  previous: bool = False) -> str:
    """The WAL segment file holding `lsn` on `timeline`, as the server names it. With previous=True,
    the one holding the byte before `lsn`, as pg_walfile_name() does: the segment a record ending
    at `lsn` ends in."""
    position = _position(lsn)
    if previous and position:
        position -= 1
    segments_per_id = 0x100000000 // segment_size
    segment = position // segment_size
    return f"{timeline:08X}{segment // segments_per_id:08X}{segment % segments_per_id:08X}"


# What PostgreSQL archives: WAL segments, the .partial segment a promotion leaves, the .backup
# history file of a base backup, and NNNNNNNN.history timeline files.
SEGMENT = "segment"
PARTIAL = "partial"
BACKUP_HISTORY = "backup-history"
TIMELINE_HISTORY = "timeline-history"

_KINDS = (
    (re.compile(r"^([0-9A-F]{8})[0-9A-F]{16}$"), SEGMENT),
    (re.compile(r"^([0-9A-F]{8})[0-9A-F]{16}\.partial$"), PARTIAL),
    (re.compile(r"^([0-9A-F]{8})[0-9A-F]{16}\.[0-9A-F]{8}\.backup$"), BACKUP_HISTORY),
    (re.compile(r"^([0-9A-F]{8})\.history$"), TIMELINE_HISTORY),
)
# A name that starts with a segment's 24 hex digits (a segment, .partial, .backup, compressed or not).
_SEGMENT_PREFIX = re.compile(r"^([0-9A-Fa-f]{8})([0-9A-Fa-f]{8})([0-9A-Fa-f]{8})(?:\..*)?$")


class NotAWalFile(ValueError):
    pass


@dataclass(frozen=True)
class WalFile:
    name: str  # as PostgreSQL names it in pg_wal, e.g. 000000010000000000000003
    kind: str
    timeline: int

    @property
    def timeline_hex(self) -> str:
        return f"{self.timeline:08X}"


def parse_wal_name(name: str) -> WalFile:
    """What kind of WAL archive file this is; refuses anything PostgreSQL would not archive (a
    stray path component would otherwise become part of an S3 key)."""
    for pattern, kind in _KINDS:
        match = pattern.match(name)
        if match:
            timeline = int(match.group(1), 16)
            if timeline == 0:
                break
            return WalFile(name, kind, timeline)
    raise NotAWalFile(f"{name!r} is not the name of a WAL segment, .partial, .backup or .history file")


def segment_position(name: str) -> tuple[int, int] | None:
    """(log id, segment) of a name that starts with a segment's 24 hex digits, whatever its
    timeline and suffix; None for any other name (history files among them)."""
    match = _SEGMENT_PREFIX.match(name)
    if match is None:
        return None
    return int(match.group(2), 16), int(match.group(3), 16)


def is_segment_name(name: str) -> bool:
    return segment_position(name) is not None
