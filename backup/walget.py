"""`pgop agent wal-fetch %f %p`, PostgreSQL's restore_command, as a program: the prefetching
client (pgop.backup.prefetch) wired to the prefetcher it starts (pgop.backup.prefetcher) and to
the direct fetch it falls back to (pgop.backup.commands). Both are imported only when needed: a
file already in the spool loads neither, nor boto3."""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pgop.backup import prefetch


def _direct(name: str, target: str, env: Mapping[str, str], cwd: Path | None) -> int:
    from pgop.backup.commands import wal_fetch
    return wal_fetch(name, target, env, cwd)


def _serve(spool: Path, env: dict[str, str], depth: int) -> None:
    from pgop.backup.prefetcher import serve
    serve(spool, env, depth)


def fetch(name: str, target: str, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
    return prefetch.fetch(name, target, os.environ if env is None else env, cwd, direct=_direct, serve=_serve)


def warm(first: str, target: str, env: Mapping[str, str] | None = None) -> bool:
    return prefetch.warm(first, target, os.environ if env is None else env, serve=_serve)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "--prefetch":
        # `wal-fetch --prefetch FIRST TARGET`: a restore warms the spool (prefetch.warm)
        return 0 if warm(args[1], args[2]) else 1
    if len(args) != 2:
        print("pgop wal: usage: wal-fetch WALFILE TARGET (PostgreSQL's %f %p)", file=sys.stderr)
        return 2
    return fetch(args[0], args[1])
