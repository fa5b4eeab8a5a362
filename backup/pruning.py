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
    requests: int = 0  # DeleteObjects requests sent


def delete_backup(storage: S3Storage, layout: ArchiveLayout, name: str, pruned: Pruned) -> None:
    catalog = keys.catalog_key(layout, name)
    if storage.head(catalog) is not None:
        storage.delete(catalog)
        pruned.objects += 1
    items = list(storage.list(keys.backup_prefix(layout, name)))
    pruned.requests += storage.delete_many([item.key for item in items])
    pruned.objects += len(items)
    pruned.bytes += sum(item.size for item in items)
    pruned.backups += 1


def delete_wal_before(storage: S3Storage, layout: ArchiveLayout, oldest_needed: str | None,
                      pruned: Pruned) -> None:
    """Every archived segment before `oldest_needed` (history files stay: they are tiny and a
    restore onto a later timeline reads them), in batches (S3Storage.delete_many)."""
    if oldest_needed is None:
        return
    items = [item for item in storage.list(layout.wal_root)
             if (name := layout.name_of_key(item.key)) is not None and wal_deletable(name, oldest_needed)]
    pruned.requests += storage.delete_many([item.key for item in items])
    pruned.wal_files += len(items)
    pruned.bytes += sum(item.size for item in items)


def prune(storage: S3Storage, layout: ArchiveLayout, backups: list[str], oldest_needed: str | None) -> Pruned:
    pruned = Pruned()
    for name in backups:
        delete_backup(storage, layout, name, pruned)
    delete_wal_before(storage, layout, oldest_needed, pruned)
    log.info("retention in s3://%s/%s: %d backup(s), %d WAL file(s), %d bytes removed in %d batch request(s)",
             storage.bucket, layout.root, pruned.backups, pruned.wal_files, pruned.bytes, pruned.requests)
    return pruned
