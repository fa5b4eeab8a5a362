"""The prefetcher behind restore_command (pgop.backup.prefetch says what it guarantees).

One process per spool, started by the first `wal-fetch` that finds none: it holds the spool's
lock file for its life (a second one started in a race exits), listens on a unix socket in the
spool, and answers one JSON line per request:

    {"op": "want", "name": N}   fetch N now (or wait for its prefetch), then keep the window
                                after it filled; answers {"result": "ready" | "missing" | "error"}
    {"op": "took", "name": N}   the client renamed N from the spool: move the window on
    {"op": "expect", "name": N} a restore's replay will start at N: download it and the window
                                after it before PostgreSQL asks; answered once the history
                                files PostgreSQL asks for first are probed
    {"op": "ping"} / {"op": "stats"}

Besides, every HISTORY_PROBE_SECONDS it asks S3 for the history file of the timeline after the
one being replayed (and the ones after that, while S3 has them): one it has goes into the spool,
for one it has not it writes the `<name>.missing` mark the shell fast path answers from; and it
drops the `<name>.taken` links of segments the replay is past (pgop.backup.prefetch says why).

Downloads run in a few threads with one S3 client (boto3 clients are thread-safe), each through
pgop.backup.wal.fetch into the spool: decompressed, size and sha256 checked, fsynced, renamed to
its name only then. A name S3 answered "not found" to is remembered for a few seconds, so at the
end of the archive (a standby waiting for the next segment) nothing is asked again and again.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pgop.backup import wal
from pgop.backup.layout import ArchiveLayout
from pgop.backup.prefetch import (
    ERROR,
    HISTORY_PROBE_SECONDS,
    IDLE_SECONDS,
    LOCK,
    MAX_PARALLEL,
    MISSING,
    MISSING_MARK,
    MISSING_TTL,
    READY,
    SOCKET,
    Window,
    is_history,
    is_segment,
    missing_mark,
    next_history,
    plan_spool,
    stale_taken,
)
from pgop.backup.s3 import S3Storage, describe_error

log = logging.getLogger("pgop.wal.prefetch")

POLL_SECONDS = 0.02  # how soon a file taken by the shell's `mv` is noticed
MIN_SEGMENT = 1 << 20
MAX_SEGMENT = 1 << 30
HISTORY_CHAIN = 16  # timelines followed in one probe


def segment_size_of(size: int) -> int | None:
    """A fetched segment's size is the server's wal_segment_size: a power of two, 1 MB to 1 GB."""
    if MIN_SEGMENT <= size <= MAX_SEGMENT and size & (size - 1) == 0:
        return size
    return None


class Prefetcher:
    def __init__(self, storage: S3Storage, layout: ArchiveLayout, spool: Path, depth: int,
                 parallel: int = MAX_PARALLEL):
        self.storage, self.layout, self.spool, self.depth = storage, layout, spool, depth
        # The spool is PGDATA/pg_wal/<spool>: the server's pg_control says whose WAL it may replay.
        self.system_id = wal.system_identifier(spool.parent / "spool")
        self.parallel = max(1, min(parallel, depth))
        self.window = Window()
        self.segment_size: int | None = None
        self.changed = threading.Condition()
        self.pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="prefetch")
        self.last_request = time.monotonic()
        self.probing = False
        self.history_lock = threading.Lock()
        self.last_probe = 0.0
        self.stats = {"history_probes": 0, "wanted": 0, "from_spool": 0, "waited": 0, "fetched_now": 0, "prefetched": 0,
                      "took": 0, "evicted": 0, "missing": 0, "errors": 0}

    # ----------------------------------------------------------------------------- requests

    def want(self, name: str) -> dict[str, Any]:
        with self.changed:
            self.last_request = time.monotonic()
            self.stats["wanted"] += 1
        if is_history(name):
            return self._fetch(name, asked=True)  # not a window's: S3's answer now (and its mark)
        with self.changed:
            if is_segment(name):
                self.window.position = name
            if name in self.window.in_flight:
                self.stats["waited"] += 1
                while name in self.window.in_flight:
                    self.changed.wait()
            if name in self.window.ready and (self.spool / name).exists():
                self.stats["from_spool"] += 1
                self._replan()
                return {"result": READY}
            self.window.ready.discard(name)
            self.window.in_flight.add(name)
            self.stats["fetched_now"] += 1
            self._replan()  # the segments after it start downloading meanwhile
        # Asked for and not prefetched (or its prefetch failed): the authoritative answer, now.
        answer = self._fetch(name, asked=True)
        with self.changed:
            self._replan()
        return answer

    def took(self, name: str) -> None:
        with self.changed:
            self.last_request = time.monotonic()
            if name in self.window.ready:
                self.stats["took"] += 1
            self.window.ready.discard(name)
            if is_segment(name):
                self.window.position = name
            self._replan()

    def expect(self, name: str) -> None:
        """A restore says where its replay will start (the backup's first WAL segment) before
        PostgreSQL asks: that segment downloads now, and once it is in (its size is the segment
        size) the window after it, so the first restore_command calls find them in the spool."""
        with self.changed:
            self.last_request = time.monotonic()
            if self.window.position is not None or not is_segment(name):
                return  # the replay already asked: it knows better
            self.window.position = name
            if name not in self.window.ready and name not in self.window.in_flight:
                self.window.in_flight.add(name)
                self.pool.submit(self._fetch, name, False)
            self._replan()
        self.probe_history()  # PostgreSQL's first question when it starts; answered after it

    # ----------------------------------------------------------------------------- fetching

    def _fetch(self, name: str, asked: bool) -> dict[str, Any]:
        if is_history(name):
            # One at a time: a probe and a client's question may ask for the same file, and a
            # fetch removes what looks like an earlier attempt's temporary file.
            with self.history_lock:
                return self._fetch_one(name, asked)
        return self._fetch_one(name, asked)

    def _fetch_one(self, name: str, asked: bool) -> dict[str, Any]:
        answer: dict[str, Any]
        try:
            result = wal.fetch(self.storage, self.layout, name, self.spool / name, system_id=self.system_id)
        except Exception as error:  # S3, checksum: said to the client, never taken for "missing"
            answer = {"result": ERROR, "message": describe_error(error)}
        else:
            answer = {"result": READY if result == wal.FETCHED else MISSING}
        self._mark(name, answer["result"])
        if is_history(name):
            return answer  # not part of the window: it stays until taken (or the spool goes)
        with self.changed:
            self.window.in_flight.discard(name)
            if answer["result"] == READY:
                if self.segment_size is None and is_segment(name):
                    with contextlib.suppress(OSError):
                        self.segment_size = segment_size_of((self.spool / name).stat().st_size)
                self.window.ready.add(name)
                if not asked:
                    self.stats["prefetched"] += 1
            elif answer["result"] == MISSING:
                self.window.missing[name] = time.monotonic()
                self.stats["missing"] += 1
            else:
                self.stats["errors"] += 1
                if not asked:
                    log.warning("prefetch of %s failed: %s", name, answer["message"])
            self.changed.notify_all()
            if not asked:
                self._replan()
        return answer

    def _mark(self, name: str, result: str) -> None:
        """The shell's "not in the archive": written only right after S3 said so for that name,
        removed once S3 has it or fails. For history files (a timeline nobody made), and for
        segments only on a standby, where "not there" means "stream meanwhile": a restore's
        recovery ends at the first segment said missing, so there S3 answers each time (a
        segment archived a second after a mark would otherwise end it short of its target)."""
        mark = self.spool / f"{name}{MISSING_MARK}"
        try:
            if result == MISSING and (is_history(name) or self._standby()):
                partial = self.spool / f".{name}{MISSING_MARK}"
                partial.write_text(missing_mark(time.time()))
                os.replace(partial, mark)
            else:
                mark.unlink(missing_ok=True)
        except OSError as error:
            log.warning("cannot update %s: %s", mark.name, error)

    def _standby(self) -> bool:
        return (self.spool.parent.parent / "standby.signal").exists()  # the spool is PGDATA/pg_wal/<spool>

    def probe_history(self) -> None:
        """Ask S3 for the history files PostgreSQL will ask for, so that the answer waits in the
        spool or as a mark: the replayed timeline's own (read when it promotes: the new timeline's
        history copies it; timeline 1 has none) and the next timeline's (and the ones after it
        while S3 has them: recovery_target_timeline latest probes for them)."""
        with self.changed:
            position = self.window.position
            if position is None or self.probing:
                return
            self.probing = True
        try:
            self.stats["history_probes"] += 1
            own = f"{position[:8]}.history"
            if not (self.spool / own).exists():  # a history file never changes once archived
                self._fetch(own, asked=False)
            name = next_history(position)
            for _ in range(HISTORY_CHAIN):
                if name is None:
                    break
                if not (self.spool / name).exists() and self._fetch(name, asked=False)["result"] != READY:
                    break
                name = f"{int(name[:8], 16) + 1:08X}.history"
        finally:
            with self.changed:
                self.probing = False
                self.last_probe = time.monotonic()

    def probe_if_due(self) -> None:
        """Every HISTORY_PROBE_SECONDS once the replay's timeline is known (serve's loop)."""
        with self.changed:
            if self.probing or self.window.position is None or \
                    time.monotonic() - self.last_probe < HISTORY_PROBE_SECONDS:
                return
            self.last_probe = time.monotonic()
        self.pool.submit(self.probe_history)
        self.drop_stale_links()

    def drop_stale_links(self) -> None:
        """The .taken links of segments the replay is past (one segment's link stays)."""
        with contextlib.suppress(OSError):
            for name in stale_taken(os.listdir(self.spool)):
                (self.spool / name).unlink(missing_ok=True)

    def _replan(self) -> None:
        """With self.changed held: drop what the replay passed, start what the window lacks."""
        now = time.monotonic()
        self.window.missing = {n: t for n, t in self.window.missing.items() if now - t < MISSING_TTL}
        plan = plan_spool(self.window, self.depth, self.segment_size, now, self.parallel)
        for name in plan.evict:
            self.window.ready.discard(name)
            (self.spool / name).unlink(missing_ok=True)
            self.stats["evicted"] += 1
        for name in plan.fetch:
            self.window.in_flight.add(name)
            self.pool.submit(self._fetch, name, False)

    def notice_taken(self) -> None:
        """Files gone from the spool were taken (by the shell's `mv` of the restore_command, which
        says nothing): the replay is there, move the window on."""
        with self.changed:
            gone = sorted(n for n in self.window.ready if not (self.spool / n).exists())
            if not gone:
                return
            self.window.ready.difference_update(gone)
            segments = [n for n in gone if is_segment(n)]
            if segments and (self.window.position is None or max(segments) > self.window.position):
                self.window.position = max(segments)
                self.last_request = time.monotonic()
            self.stats["took"] += len(gone)
            self._replan()
        self.drop_stale_links()

    def idle_for(self) -> float:
        with self.changed:
            if self.window.in_flight:
                return 0.0
            return time.monotonic() - self.last_request

    # ----------------------------------------------------------------------------- serving

    def handle(self, connection: socket.socket) -> None:
        with connection:
            data = b""
            while not data.endswith(b"\n"):
                chunk = connection.recv(4096)
                if not chunk:
                    break
                data += chunk
            try:
                request = json.loads(data)
                op, name = request.get("op"), request.get("name", "")
            except (ValueError, AttributeError):
                return
            if op in ("want", "took") and (not isinstance(name, str) or "/" in name or not name):
                reply: dict[str, Any] = {"result": ERROR, "message": f"bad WAL file name {name!r}"}
            elif op == "want":
                try:
                    self.layout.wal_key(name)
                except ValueError as error:
                    reply = {"result": ERROR, "message": str(error)}
                else:
                    reply = self.want(name)
            elif op == "took":
                self.took(name)
                return
            elif op == "expect":
                if isinstance(name, str) and "/" not in name:
                    self.expect(name)
                reply = {"result": "expected"}
            elif op == "stats":
                with self.changed:
                    reply = {**self.stats, "segmentSize": self.segment_size, "depth": self.depth}
            else:  # ping
                with self.changed:
                    self.last_request = time.monotonic()
                reply = {"result": "pong"}
            with contextlib.suppress(OSError):
                connection.sendall(json.dumps(reply).encode() + b"\n")


def serve(spool: Path, env: Mapping[str, str], depth: int, idle: float = IDLE_SECONDS,
          prepared: tuple[S3Storage, ArchiveLayout] | None = None) -> None:
    """Run until idle for `idle` seconds or until the spool is gone; then remove the spool.
    `prepared`: the S3 client and archive of `env`, made before the fork (unused until now)."""
    from pgop.backup.commands import _target
    os.chdir(spool)
    lock = open(LOCK, "a")  # noqa: SIM115 (held for the life of the process)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another prefetcher serves this spool
    storage, layout = prepared or _target(env)
    for leftover in spool.glob(f"*{MISSING_MARK}"):  # a predecessor's: only a fresh S3 answer counts
        leftover.unlink(missing_ok=True)
    prefetcher = Prefetcher(storage, layout, spool, depth)
    Path(SOCKET).unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(SOCKET)
    os.chmod(SOCKET, 0o600)
    server.listen(16)
    server.settimeout(POLL_SECONDS)
    try:
        while prefetcher.idle_for() < idle and spool.is_dir():
            prefetcher.notice_taken()
            prefetcher.probe_if_due()
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            connection.settimeout(None)
            threading.Thread(target=prefetcher.handle, args=(connection,), daemon=True).start()
    finally:
        # The socket first: a client arriving now starts a fresh prefetcher instead.
        Path(SOCKET).unlink(missing_ok=True)
        server.close()
        prefetcher.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(spool, ignore_errors=True)
