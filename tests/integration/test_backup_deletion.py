"""A PgBackup deleted by hand with deletionPolicy Delete, on the real S3 server (versitygw) with real
base backups of PostgreSQL 15: the finalizer's decision (pgop.backup.deletion) and its removal
(pgop.backup.pruning.delete_backup) take exactly that backup out of the catalog and S3, leave the
archived WAL and the other backups alone, and what remains restores. The kopf handler around them
is run by e2e/test_backup.py."""
from __future__ import annotations

from pgop.backup import basebackup, deletion, pruning
from pgop.backup.layout import backup_prefix
from tests.integration.test_backup_wal import (  # noqa: F401  (fixtures)
    CLUSTER,
    _keys,
    archive_env,
    archiving_postgres,
    launcher,
    s3,
    storage,
)
from tests.integration.test_restore_timelines import PREFIX, _archived, _restore_into


def _backup(primary, storage, layout, name: str) -> None:
    basebackup.take_base_backup(storage, layout, name, basebackup.Source(
        host=str(primary.socket_dir), port=primary.port, user="postgres", bindir=primary.bindir, prefix=PREFIX),
        archive_wait=60)


def test_delete_removes_only_that_backup_and_the_rest_still_restores(archiving_postgres, archive_env, storage, s3):
    primary, layout = archiving_postgres, archive_env["layout"]
    primary.psql("CREATE TABLE orders (id int primary key, note text)")
    primary.psql("INSERT INTO orders SELECT g, 'first' FROM generate_series(1, 100) g")
    _backup(primary, storage, layout, "b1")
    primary.psql("INSERT INTO orders SELECT g, 'second' FROM generate_series(101, 200) g")
    _backup(primary, storage, layout, "b2")
    primary.psql("INSERT INTO orders SELECT g, 'after' FROM generate_series(201, 250) g")
    _archived(primary, storage, layout)
    catalog = basebackup.list_backups(storage, layout.path, CLUSTER)
    assert [b.backup_name for b in catalog] == ["b1", "b2"]
    wal_before = _keys(s3, layout.wal_root)
    b1_objects = _keys(s3, backup_prefix(layout, "b1"))
    assert b1_objects and _keys(s3, backup_prefix(layout, "b2"))

    step = deletion.decide("b2", cluster=CLUSTER, cluster_present=True, catalog=catalog, annotation=None)
    assert step.action == deletion.REMOVE
    removed = pruning.Pruned()
    pruning.delete_backup(storage, layout, "b2", removed)
    assert removed.objects >= 2 and removed.bytes > 0
    assert not _keys(s3, backup_prefix(layout, "b2"))
    assert _keys(s3, backup_prefix(layout, "b1")) == b1_objects
    assert _keys(s3, layout.wal_root) == wal_before  # WAL is retention's, never the finalizer's
    left = basebackup.list_backups(storage, layout.path, CLUSTER)
    assert [b.backup_name for b in left] == ["b1"]

    # The only one left is kept unless forced.
    assert deletion.decide("b1", cluster=CLUSTER, cluster_present=True, catalog=left,
                           annotation=None).action == deletion.KEEP
    assert deletion.decide("b1", cluster=CLUSTER, cluster_present=True, catalog=left,
                           annotation=deletion.FORCE).action == deletion.REMOVE

    primary.stop()
    restored, _ = _restore_into(storage, layout, left, primary.bindir)
    try:
        restored.start(timeout=60)
        assert restored.psql("SELECT count(*), max(id) FROM orders") == "250|250"
    finally:
        restored.cleanup()
