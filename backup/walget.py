"""`pgop agent wal-fetch %f %p`, PostgreSQL's restore_command, as a program: the prefetching
client (pgop.backup.prefetch) wired to the prefetcher it starts (pgop.backup.prefetcher) and to
the direct fetch it falls back to (pgop.backup.commands). Both are imported only when needed: a
file already in the spool loads neither, nor boto3."""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from pgop.backup import prefetch


def _direct(name: str, target: str, env: Mapping[str, str], cwd: Path | None) -> int:
    from pgop.backup.commands import wal_fetch
    return wal_fetch(name, target, env, cwd)


def _serve(spool: Path, env: dict[str, str], depth: int, prepared: tuple | None = None) -> None:
    from pgop.backup.prefetcher import serve
    serve(spool, env, depth, prepared=prepared)


def fetch(name: str, target: str, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
    return prefetch.fetch(name, target, os.environ if env is None else env, cwd, direct=_direct, serve=_serve)


def warm_once_unpacked(first: str, target: str, env: Mapping[str, str] | None = None,
                       stream: BinaryIO | None = None) -> bool:
    """`wal-fetch --prefetch FIRST TARGET`: a restore starts it as the base backup begins to
    unpack. Meanwhile it loads what the prefetcher needs and makes its S3 client (boto3, a few
    tenths of a second; the prefetcher it forks inherits them); once its input ends (the base
    backup is on disk: PGDATA/global/pg_control says whose WAL the spool may hold) it warms the
    spool (prefetch.warm). Anything written to its input (the unpack failed) ends it without warming."""
    env = os.environ if env is None else env
    if not prefetch.would_warm(first, env):
        return False
    import pgop.backup.prefetcher  # noqa: F401
    from pgop.backup.commands import _target
    try:  # its S3 client too (a tenth of a second or more); the prefetcher makes its own otherwise
        prepared = _target(env)
    except Exception:  # noqa: BLE001 - the prefetcher meets it again and says it in its log
        prepared = None
    if stream is None:
        stream = sys.stdin.buffer if sys.stdin is not None else None
    if stream is not None and not stream.isatty() and stream.read():
        return False
    return prefetch.warm(first, target, env, serve=functools.partial(_serve, prepared=prepared))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "--prefetch":
        if not prefetch.would_warm(args[1], os.environ):
            return 1  # prefetching off, or no segment: nothing loaded, nothing to tear down
        code = 0 if warm_once_unpacked(args[1], args[2]) else 1
        # Tearing down boto3 and the S3 client made for the prefetcher (which has its own copy)
        # would take a tenth of a second, and the restore waits for this process.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if len(args) != 2:
        print("pgop wal: usage: wal-fetch WALFILE TARGET (PostgreSQL's %f %p)", file=sys.stderr)
        return 2
    return fetch(args[0], args[1])
