"""Where things live in the bucket (pure). docs/backup-layout.md is the human version of this.

    <path>/<namespace>/<cluster>/wal/<timeline>/<wal file name>.zst
    <path>/<namespace>/<cluster>/archive.json        whose archive this is (pgop.backup.marker)

`<path>` is spec.backup.s3.path (may be empty), `<namespace>` the PgCluster's namespace (absent in
the legacy layout `<path>/<cluster>/` that clusters created before it keep: the PgCluster
annotation pgop.io/archive-layout pins which), `<cluster>` the PgCluster's name, `<timeline>` the
first 8 hex digits of the WAL file name: the timeline it belongs to. Every kind of file PostgreSQL
archives has its timeline there (segments, `.partial` segments left by a promotion, `.backup`
history files of base backups, `NNNNNNNN.history` timeline files), so a timeline's WAL is one
prefix to list, and the key sorts in WAL order inside it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pgop.kernel.lsn import (
    BACKUP_HISTORY,
    PARTIAL,
    SEGMENT,
    TIMELINE_HISTORY,
    NotAWalFile,
    WalFile,
    parse_wal_name,
)

COMPRESSED_SUFFIX = ".zst"

__all__ = ["BACKUP_HISTORY", "COMPRESSED_SUFFIX", "PARTIAL", "SEGMENT", "TIMELINE_HISTORY", "ArchiveLayout",
           "NotAWalFile", "WalFile", "parse_wal_name"]


def _clean(part: str | None) -> str:
    return "/".join(p for p in (part or "").split("/") if p)


MARKER_DOCUMENT = "archive.json"


@dataclass(frozen=True)
class ArchiveLayout:
    """The keys of one cluster's archive in its bucket."""
    cluster: str
    path: str = ""  # spec.backup.s3.path
    namespace: str = ""  # the cluster's namespace; "" for the legacy layout <path>/<cluster>/

    def __post_init__(self) -> None:
        if not self.cluster or "/" in self.cluster:
            raise ValueError(f"cluster name {self.cluster!r} cannot name an archive")
        if "/" in self.namespace or self.namespace in (".", ".."):
            raise ValueError(f"namespace {self.namespace!r} cannot name an archive")

    @property
    def root(self) -> str:
        """`<path>/<namespace>/<cluster>/` (legacy: `<path>/<cluster>/`): everything of this cluster."""
        return "/".join(p for p in (_clean(self.path), self.namespace, self.cluster) if p) + "/"

    @property
    def legacy(self) -> bool:
        return not self.namespace

    @property
    def marker_key(self) -> str:
        return f"{self.root}{MARKER_DOCUMENT}"

    @property
    def wal_root(self) -> str:
        return f"{self.root}wal/"

    def timeline_prefix(self, timeline: int) -> str:
        return f"{self.wal_root}{timeline:08X}/"

    def wal_key(self, name: str) -> str:
        wal = parse_wal_name(name)
        return f"{self.timeline_prefix(wal.timeline)}{wal.name}{COMPRESSED_SUFFIX}"

    def name_of_key(self, key: str) -> str | None:
        """The WAL file name a key of this archive holds, or None for another kind of object."""
        if not key.startswith(self.wal_root) or not key.endswith(COMPRESSED_SUFFIX):
            return None
        name = key.rsplit("/", 1)[-1][: -len(COMPRESSED_SUFFIX)]
        try:
            wal = parse_wal_name(name)
        except NotAWalFile:
            return None
        return name if key == self.wal_key(wal.name) else None


# ------------------------------------------------------------------------------ base backups
#
#     <path>/<cluster>/base/<backup name>/base.tar.zst   the data directory as one tar, zstd
#     <path>/<cluster>/base/<backup name>/backup.json    the catalog document, written last

BASE_ARCHIVE = "base.tar.zst"
CATALOG_DOCUMENT = "backup.json"
_BACKUP_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


def check_backup_name(name: str) -> str:
    """A backup name is a Kubernetes object name (a PgBackup's), which is also a safe key part."""
    if not isinstance(name, str) or not _BACKUP_NAME.match(name) or ".." in name:
        raise ValueError(f"{name!r} cannot name a base backup: use lower case letters, digits, '-' and '.'")
    return name


def base_root(layout: ArchiveLayout) -> str:
    return f"{layout.root}base/"


def backup_prefix(layout: ArchiveLayout, name: str) -> str:
    return f"{base_root(layout)}{check_backup_name(name)}/"


def base_archive_key(layout: ArchiveLayout, name: str) -> str:
    return backup_prefix(layout, name) + BASE_ARCHIVE


def catalog_key(layout: ArchiveLayout, name: str) -> str:
    return backup_prefix(layout, name) + CATALOG_DOCUMENT


def backup_name_of_catalog_key(layout: ArchiveLayout, key: str) -> str | None:
    """The backup a catalog document's key belongs to, or None for any other key."""
    root = base_root(layout)
    if not key.startswith(root) or not key.endswith("/" + CATALOG_DOCUMENT):
        return None
    name = key[len(root): -len(CATALOG_DOCUMENT) - 1]
    try:
        return check_backup_name(name)
    except ValueError:
        return None
