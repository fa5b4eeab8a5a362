"""A restored data directory on disk before PostgreSQL starts on it, synced while it is written.

`tar -x` leaves what it writes in the page cache; an fsync of every file afterwards (what
PostgreSQL's start-up sync and `sync -f` cost) waits for all of the write-back at the end. Here
`tar -v` names each member as it starts it, so the member before is complete: a few threads fsync
it while tar writes the next ones (os.fsync releases the GIL), as pgBackRest syncs each file it
restores; a member still being written has its write-back started every 16 MB of the tar
(`start_write_back`), never an fsync before it is complete. Once tar is done only the last file
and the directories are left. Only the restored
files are synced (syncfs(2) would be one call, but it writes back everything dirty on the file
system, a neighbour's data included, and measured no faster here than this overlap).
"""
from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

THREADS = 4


def fsync_path(path: str | os.PathLike) -> None:
    """fsync one file or directory; a symlink (pg_tblspc) is not followed."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        if error.errno == errno.ELOOP:  # a symlink: its entry is synced with its directory
            return
        raise
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def start_write_back(path: str | os.PathLike) -> None:
    """Start writing a file's dirty pages to disk without waiting for them and without a flush of
    the disk's cache: posix_fadvise(DONTNEED) starts the write-back of what is dirty and drops
    from the page cache what is already on disk. The fsync once the file is complete then waits
    only for the rest. (An fsync every 16 MB of a 1 GB member forces a journal commit and a cache
    flush each time: 2 GB restored in 4.8-7.1 s that way, 1.9-2.8 s this way, same disk, same
    final fsyncs; sync_file_range(SYNC_FILE_RANGE_WRITE) measured as slow as the fsyncs.) A file
    not created yet, or a system without the call, is left to its fsync."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ELOOP):  # not there yet; a symlink (pg_tblspc)
            return
        raise
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(handle, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(handle)


def directories(root: Path) -> Iterable[str]:
    for directory, _, _ in os.walk(root):
        yield directory


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (no symlink followed)."""
    for directory, _, files in os.walk(root):
        for name in files:
            fsync_path(os.path.join(directory, name))
        fsync_path(directory)


def member_name(line: str) -> str | None:
    """The member name in a line of `tar -x -v` (one name a line); None for none (pure)."""
    name = line.rstrip("\n")
    if not name or name.endswith("/") or name.startswith("/") or ".." in name.split("/"):
        return None
    return name


class SyncBehind:
    """Feed it tar's verbose lines (`feed`, from a thread reading tar's stdout); it fsyncs each
    member once the next one starts. `finish` (after tar exited 0) syncs the last member and
    every directory and raises the first fsync error."""

    def __init__(self, root: Path, threads: int = THREADS):
        self.root = root
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="fsync")
        self.pending: list[Future] = []
        self.previous: str | None = None
        self.running: str | None = None  # the member being extracted whose early write-back runs
        self.lock = threading.Lock()

    def feed(self, line: str) -> None:
        name = member_name(line)
        if name is None:
            return
        with self.lock:
            if self.previous is not None:
                self.pending.append(self.pool.submit(fsync_path, self.root / self.previous))
            self.previous = name
            if len(self.pending) > 512:  # keep the bookkeeping small: only what is running or failed
                self.pending = [f for f in self.pending if not f.done() or f.exception() is not None]

    def written(self) -> None:
        """Another stretch of the tar went in: start the write-back of what the member being
        extracted holds so far (`start_write_back`; a 1 GB relation segment would otherwise be
        written back whole at its fsync)."""
        with self.lock:
            current = self.previous
            if current is None or current == self.running:
                return
            self.running = current
        self.pending.append(self.pool.submit(self._write_back_current, current))

    def _write_back_current(self, name: str) -> None:
        try:
            start_write_back(self.root / name)  # not created yet (tar named it first): its fsync follows
        finally:
            with self.lock:
                if self.running == name:
                    self.running = None

    def finish(self) -> None:
        try:
            with self.lock:
                if self.previous is not None:
                    self.pending.append(self.pool.submit(fsync_path, self.root / self.previous))
                    self.previous = None
                done = list(self.pending)
            for future in done:
                future.result()
            for directory in directories(self.root):
                fsync_path(directory)
        finally:
            self.pool.shutdown(wait=True)

    def abandon(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
