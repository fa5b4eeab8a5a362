"""The `pgop` executable. `pgop agent wal-fetch %f %p` is PostgreSQL's restore_command, run once
per WAL file: it goes straight to pgop.backup.prefetch (standard library only) without loading
the command line framework, so a file already prefetched costs little more than the interpreter's
start. Everything else is pgop.cli."""
from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if len(args) == 4 and args[:2] == ["agent", "wal-fetch"] and not args[2].startswith("-"):
        from pgop.backup.walget import main as wal_fetch
        raise SystemExit(wal_fetch(args[2:]))
    from pgop.cli import main as cli
    cli()


if __name__ == "__main__":
    main()
