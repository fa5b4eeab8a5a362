"""The `pgop` executable. `pgop agent wal-fetch %f %p` and `pgop agent wal-push %p` are PostgreSQL's
restore_command and archive_command, run once per WAL file: they go straight to their clients
(pgop.backup.walget, pgop.backup.pusher: standard library only until they must reach S3
themselves) without loading the command line framework, and so does `pgop agent backup` (a backup
pod's memory, pgop.agent.backups.run_backup). Everything else is pgop.cli."""
from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args[:2] == ["agent", "wal-fetch"] and (
            (len(args) == 4 and not args[2].startswith("-")) or (len(args) == 5 and args[2] == "--prefetch")):
        from pgop.backup.walget import main as wal_fetch
        raise SystemExit(wal_fetch(args[2:]))
    if len(args) == 3 and args[:2] == ["agent", "wal-push"] and not args[2].startswith("-"):
        from pgop.backup.pusher import main as wal_push
        raise SystemExit(wal_push(args[2:]))
    if args[:2] == ["agent", "backup"]:
        # A backup pod's memory: the backup without the command line framework (about 14 MB).
        from pgop.agent.backups import backup_arguments, run_backup
        if (parsed := backup_arguments(args[2:])) is not None:
            raise SystemExit(run_backup(*parsed))
    from pgop.cli import main as cli
    cli()


if __name__ == "__main__":
    main()
