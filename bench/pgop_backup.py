"""pgop's base backup as a process of its own, with settings of the caller's choosing, so that
bench.backup_throughput measures its memory (the largest RSS) and speed with today's settings
and with those of before.

    python -m bench.pgop_backup NAME '{"part_size": 33554432, "in_flight": 2, "threads": -1, "job_size": 0}'

The settings are keyword arguments of backup.basebackup.take_base_backup. Reads the agent's S3
environment (PGOP_S3_*), and BENCH_PG_HOST, BENCH_PG_PORT, BENCH_PG_BINDIR (the source; as
PGOP_RUN_AS when this runs as root). Prints the catalog document's files[0] as JSON.
"""
from __future__ import annotations

import json
import os
import sys

from pgop.backup import basebackup
from pgop.backup.layout import ArchiveLayout
from pgop.backup.s3 import S3Settings, S3Storage


def main(argv: list[str] | None = None) -> None:
    name, settings_json = argv or sys.argv[1:]
    settings = S3Settings.from_env()
    storage = S3Storage.from_settings(settings)
    run_as = os.environ.get("PGOP_RUN_AS")
    source = basebackup.Source(host=os.environ["BENCH_PG_HOST"], port=int(os.environ["BENCH_PG_PORT"]),
                               user="postgres", bindir=os.environ["BENCH_PG_BINDIR"],
                               prefix=["runuser", "-u", run_as, "--"] if run_as and os.geteuid() == 0 else [])
    layout = ArchiveLayout(os.environ["PGOP_CLUSTER"], settings.path)
    backup = basebackup.take_base_backup(storage, layout, name, source, archive_wait=300, **json.loads(settings_json))
    print(json.dumps(backup.files[0]))


if __name__ == "__main__":
    main()
