"""Retention in S3: remove the base backups retention dropped, and the archived WAL no kept backup
needs. The catalog document goes first, so a backup half-removed by an interruption is already no
longer listed (a backup without backup.json is not a backup); the rest of its prefix follows and
is removed again on the next pass if anything is left."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from pgop.backup import layout as keys
from pgop.backup.layout import ArchiveLayout
from pgop.backup.retention import wal_deletable
from pgop.backup.s3 import S3Storage

log = logging.getLogger(__name__)


@dataclass
class Pruned:
    backups: int = 0
    objects: int = 0
    wal_files: int = 0
    bytes: int = 0


def delete_backup(storage: S3Storage, layout: ArchiveLayout, name: str, pruned: Pruned) -> None:
    catalog = keys.catalog_key(layout, name)
    if storage.head(catalog) is not None:
        storage.delete(catalog)
        pruned.objects += 1
    for item in list(storage.list(keys.backup_prefix(layout, name))):
        storage.delete(item.key)
        pruned.objects += 1
        pruned.bytes += item.size
    pruned.backups += 1


def delete_wal_before(storage: S3Storage, layout: ArchiveLayout, oldest_needed: str | None,
                      pruned: Pruned) -> None:
    """Every archived segment before `oldest_needed` (history files stay: they are tiny and a
    restore onto a later timeline reads them)."""
    if oldest_needed is None:
        return
    for item in list(storage.list(layout.wal_root)):
        name = layout.name_of_key(item.key)
        if name is not None and wal_deletable(name, oldest_needed):
            storage.delete(item.key)
            pruned.wal_files += 1
            pruned.bytes += item.size


def prune(storage: S3Storage, layout: ArchiveLayout, backups: list[str], oldest_needed: str | None) -> Pruned:
    pruned = Pruned()
    for name in backups:
        delete_backup(storage, layout, name, pruned)
    delete_wal_before(storage, layout, oldest_needed, pruned)
    log.info("retention in s3://%s/%s: %d backup(s), %d WAL file(s), %d bytes removed", storage.bucket,
             layout.root, pruned.backups, pruned.wal_files, pruned.bytes)
    return pruned
