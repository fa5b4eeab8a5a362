"""pgop's restore of one base backup as a process of its own: S3 -> zstd -d -> tar -x into an empty
PGDATA (`backup.restore.unpack`, what `backup.restore.restore` does before WAL replay), so that
bench.backup_compare measures its CPU and memory as it does the other tools' restore commands.

    python -m bench.pgop_unpack CLUSTER BACKUP PGDATA

Reads the agent's environment: PGOP_S3_* (bucket, path, endpoint, credentials) and PGOP_RUN_AS
(tar runs as that OS user when this runs as root). The restored files are synced as a restore
syncs them (pgop.backup.durable), and the restore_command's prefetcher gets ready on the backup's
first WAL segment while the base backup unpacks and is waited for, as a restore does before
PostgreSQL starts. Prints {"bytes": ..., "seconds": ...}.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pgop.backup import basebackup, restore
from pgop.backup.layout import ArchiveLayout
from pgop.backup.s3 import S3Settings, S3Storage


def main(argv: list[str] | None = None) -> None:
    cluster, name, pgdata = argv or sys.argv[1:]
    settings = S3Settings.from_env()
    storage = S3Storage.from_settings(settings)
    backup = restore.choose(basebackup.list_backups(storage, settings.path, cluster), name=name)
    run_as = os.environ.get("PGOP_RUN_AS")
    prefix = ["runuser", "-u", run_as, "--"] if run_as and os.geteuid() == 0 else []
    # As backup.restore.restore does: the restore_command's prefetcher gets ready on the backup's
    # first WAL segment while the base backup unpacks, and has S3's answers to the first questions
    # before PostgreSQL would start (it outlives this process, as it outlives the restore's).
    with restore.warming_prefetch(Path(pgdata), backup, {**os.environ, **restore.command_environment(
            cluster, settings.path)}, prefix=prefix):
        size, seconds = restore.unpack(storage, ArchiveLayout(cluster, settings.path), backup, Path(pgdata), prefix)
    print(json.dumps({"bytes": size, "seconds": round(seconds, 3)}))


if __name__ == "__main__":
    main()
