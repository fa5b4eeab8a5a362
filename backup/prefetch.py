"""restore_command at archive speed: a spool of prefetched WAL segments and the tiny client that
PostgreSQL runs (`pgop agent wal-fetch %f %p`).

PostgreSQL asks for one WAL file at a time and waits for each. A process per file that imports
boto3 costs ~0.4 s before the first byte moves, so a restore replayed at a few segments a second.
Here the first call starts a prefetcher (pgop.backup.prefetcher: one process with one S3 client)
that keeps the next `depth` segments of the timeline being replayed downloaded, checked and
fsynced in a spool directory next to the target; each later call is this module alone (standard
library only: no boto3, no kubernetes, no zstd), which renames the file into place and returns.

The same guarantees as a direct fetch (pgop.backup.wal.fetch, which the prefetcher runs):
- never a wrong file: a spool file is the archived object of that exact name, its sha256 and size
  checked before it is renamed to its name in the spool, and the spool is one per archive (its
  directory name hashes the archive's location), so a file of another archive is never taken;
- "not in the archive" (exit 1) is only ever said after S3 said so for the very name asked;
- any other failure keeps the exit code of a direct fetch (255 outside standby mode: PostgreSQL
  stops rather than ending recovery early).
When the prefetcher cannot be reached or started, the client fetches directly, as before.

Disk stays bounded: at most `depth` finished segments and `parallel` partial ones; a segment the
replay will not ask for (outside the window after the last one asked) is removed. The prefetcher
removes its spool and exits when nobody asked for anything for IDLE_SECONDS.

A few calls of every restore would still start Python: PostgreSQL probes for the next
timeline's history file when recovery starts and again when it ends (recovery_target_timeline
latest), reads the last replayed segment once more at the end (from the archive first) and then
its own timeline's history file. So the shell fast path (shell_fast_path) answers them too:
- a delivered file keeps a hard link `<name>.taken` in the spool; asked again while pg_wal/<name>
  is still that very file (PostgreSQL keeps what it restored under its own name, and renames it
  away before it ever reuses it), the file is linked into place again: the same bytes, checked
  when they were fetched, no copy. The prefetcher keeps the link of the newest segment only.
- for a name S3 said it does not have (a history file; on a standby also a segment after the end
  of the archive: a restore's recovery would end at it, so there S3 answers each time), the
  prefetcher writes a mark `<name>.missing` holding when it stops counting
  (MISSING_MARK_SECONDS after S3 said so); while it counts, the shell says "not in the archive"
  (exit 1). So that answer still comes only from S3, for that name, at most MISSING_MARK_SECONDS
  ago. The prefetcher asks S3 for the history files PostgreSQL asks for (its timeline's and the
  next ones) when a restore warms it and every HISTORY_PROBE_SECONDS after: a timeline that
  appears later is seen at the next probe, as PostgreSQL probes again.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

OK = 0
NOT_FOUND = 1
ABORT_RECOVERY = 255

ENV_DEPTH = "PGOP_WAL_PREFETCH"  # segments kept ahead; 0 turns prefetching off
DEFAULT_DEPTH = 8
MAX_DEPTH = 256
MAX_PARALLEL = 4
IDLE_SECONDS = 30.0
MISSING_TTL = 5.0  # a name S3 did not have is not prefetched again for this long
START_TIMEOUT = 8.0  # for the prefetcher to listen, then the client fetches directly
WARM_TIMEOUT = 10.0  # for the prefetcher's first S3 answers when a restore warms it
FAILED_START_BACKOFF = 60.0  # after a start that failed, clients fetch directly for this long
HISTORY_PROBE_SECONDS = 2.0  # how often the prefetcher asks S3 for the next timeline's history
MISSING_MARK_SECONDS = 5  # how long the shell says "not in the archive" after S3 said so

SPOOL_PREFIX = "pgop-prefetch-"
SOCKET = "prefetcher.sock"
LOCK = "prefetcher.lock"
START_FAILED = "prefetcher.failed"
LOG = "prefetcher.log"
TAKEN = ".taken"  # <name>.taken: a hard link to the file delivered as <name>
MISSING_MARK = ".missing"  # <name>.missing: S3 did not have <name>; holds until when to believe it

READY = "ready"
MISSING = "missing"
ERROR = "error"

_HEX = "0123456789ABCDEF"


# ------------------------------------------------------------------------------ pure decisions

def depth_from_env(env: Mapping[str, str]) -> int:
    """How many segments to keep ahead (PGOP_WAL_PREFETCH, default 8; 0 = fetch directly)."""
    raw = env.get(ENV_DEPTH, "").strip()
    if not raw:
        return DEFAULT_DEPTH
    try:
        depth = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_DEPTH}={raw!r}: expected a number of WAL segments (0 turns prefetching off)") \
            from None
    if depth < 0 or depth > MAX_DEPTH:
        raise ValueError(f"{ENV_DEPTH}={raw!r}: expected 0 to {MAX_DEPTH} WAL segments")
    return depth


def depth_from_env_or_off(env: Mapping[str, str]) -> int:
    """depth_from_env, 0 for a value it refuses (the restore_command says why when it runs)."""
    try:
        return depth_from_env(env)
    except ValueError:
        return 0


def archive_identity(env: Mapping[str, str]) -> str:
    """A short hash of where the WAL comes from (bucket, endpoint, path, namespace, cluster): the
    spool of one archive is never read for another."""
    keys = sorted(k for k in env if k.startswith("PGOP_S3_") and k != "PGOP_S3_CREDENTIALS_DIR")
    text = "\n".join(f"{k}={env[k]}" for k in keys) + f"\nPGOP_CLUSTER={env.get('PGOP_CLUSTER', '')}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def spool_directory(target: str | os.PathLike, env: Mapping[str, str]) -> Path:
    return Path(os.path.abspath(target)).parent / f"{SPOOL_PREFIX}{archive_identity(env)}"


def shell_fast_path(env: Mapping[str, str]) -> str:
    """The start of a restore_command that answers with the shell alone, and otherwise runs what
    follows it. `env` is the environment the command's client will see: it names the spool, in
    pg_wal, where PostgreSQL's %p points. In order:
    1. a prefetched file is renamed into place, and a hard link to it stays as <name>.taken;
    2. a file delivered before and still in pg_wal under its name as that very file (`-ef`:
       same inode) is linked into place again;
    3. a file S3 said it does not have, within the mark's time, is "not there" (exit 1).
    Anything missing or stale fails its step (silently), never the command. `%%` is PostgreSQL's
    escape for a `%` of the command's own (`date +%s`); PostgreSQL 16 and later refuse an unknown
    placeholder such as `%s`."""
    spool = f"pg_wal/{SPOOL_PREFIX}{archive_identity(env)}"
    return (f"{{ mv -f {spool}/%f %p && {{ ln -f %p {spool}/%f{TAKEN}; :; }}; }} 2>/dev/null || "
            f"{{ [ pg_wal/%f -ef {spool}/%f{TAKEN} ] && ln -f pg_wal/%f %p; }} 2>/dev/null || "
            f"{{ read t < {spool}/%f{MISSING_MARK} && [ \"$t\" -gt \"$(date +%%s)\" ] && exit 1; }} 2>/dev/null || ")


def is_history(name: str) -> bool:
    return len(name) == 16 and name.endswith(".history") and all(c in _HEX for c in name[:8])


def next_history(position: str) -> str | None:
    """The history file of the timeline after `position`'s: what PostgreSQL probes for when it
    looks for a newer timeline (pure)."""
    if not is_segment(position):
        return None
    timeline = int(position[:8], 16) + 1
    return f"{timeline:08X}.history" if timeline <= 0xFFFFFFFF else None


def stale_taken(names: Iterable[str]) -> list[str]:
    """The <name>.taken links to drop: every segment's but the newest one's (PostgreSQL asks
    again only for the last segment it replayed); history files' stay (small, asked repeatedly)."""
    segments = sorted(n for n in names if n.endswith(TAKEN) and is_segment(n[:-len(TAKEN)]))
    return segments[:-1]


def missing_mark(now: float) -> str:
    """What a <name>.missing mark holds: the second until which the shell believes it."""
    return f"{int(now) + MISSING_MARK_SECONDS}\n"


def is_segment(name: str) -> bool:
    return len(name) == 24 and all(c in _HEX for c in name) and name[:8] != "00000000"


def next_segments(name: str, count: int, segment_size: int) -> list[str]:
    """The `count` segment names that follow `name` on its timeline, in order (pure)."""
    if not is_segment(name) or count <= 0:
        return []
    per_id = 0x100000000 // segment_size
    timeline, log, segment = name[:8], int(name[8:16], 16), int(name[16:24], 16)
    out = []
    for _ in range(count):
        segment += 1
        if segment >= per_id:
            log, segment = log + 1, 0
        if log > 0xFFFFFFFF:
            break
        out.append(f"{timeline}{log:08X}{segment:08X}")
    return out


@dataclass(frozen=True)
class SpoolPlan:
    fetch: tuple[str, ...] = ()  # to download, nearest first
    evict: tuple[str, ...] = ()  # finished files the replay will not ask for


@dataclass
class Window:
    """What the prefetcher knows: the last segment asked for, what sits in the spool, what is on
    its way, and the names S3 did not have (with when)."""
    position: str | None = None
    ready: set[str] = field(default_factory=set)
    in_flight: set[str] = field(default_factory=set)
    missing: dict[str, float] = field(default_factory=dict)


def plan_spool(window: Window, depth: int, segment_size: int | None, now: float,
               parallel: int = MAX_PARALLEL, missing_ttl: float = MISSING_TTL) -> SpoolPlan:
    """Which segments to download next and which spool files to drop (pure).

    The window is the `depth` segments after the last one asked for, on its timeline. Downloads
    stop at a name S3 recently did not have (the end of the archive: the ones after it are not
    there either); never more than `parallel` at once. Files outside the window are dropped: the
    replay moved past them, or turned to another timeline. Until the segment size is known (from
    the first segment fetched), nothing is planned."""
    if window.position is None or segment_size is None or depth <= 0:
        return SpoolPlan()
    wanted = next_segments(window.position, depth, segment_size)
    keep = set(wanted) | {window.position}
    evict = tuple(sorted(window.ready - keep))
    fetch: list[str] = []
    slots = parallel - len(window.in_flight)
    for name in wanted:
        seen = window.missing.get(name)
        if seen is not None and now - seen < missing_ttl:
            break
        if name in window.ready or name in window.in_flight:
            continue
        if len(fetch) >= slots:
            break
        fetch.append(name)
    return SpoolPlan(tuple(fetch), evict)


def exit_code(answer: str, standby: bool) -> int:
    """What PostgreSQL is told: 0 in place, 1 not in the archive (or, on a standby, any failure:
    it streams and asks again), 255 a failure outside standby mode (stop, do not end early)."""
    if answer == READY:
        return OK
    if answer == MISSING or standby:
        return NOT_FOUND
    return ABORT_RECOVERY


# ------------------------------------------------------------------------------ the client

def _say(text: str) -> None:
    print(f"pgop wal: {text}", file=sys.stderr, flush=True)


def _ask(spool: Path, request: dict, timeout: float | None) -> dict | None:
    """One request to the prefetcher; None when none listens. The socket's path is relative to
    the spool (a path in a deep PGDATA can be longer than a unix socket name may be)."""
    here = os.getcwd()
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.chdir(spool)
        try:
            connection.connect(SOCKET)
        finally:
            os.chdir(here)
    except OSError:
        connection.close()
        return None
    try:
        connection.settimeout(timeout)
        connection.sendall(json.dumps(request).encode() + b"\n")
        if timeout == 0:
            return {}
        data = b""
        while not data.endswith(b"\n"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            data += chunk
        return json.loads(data) if data.strip() else None
    except (OSError, ValueError):
        return None
    finally:
        connection.close()


Direct = Callable[[str, str, Mapping[str, str], "Path | None"], int]
Serve = Callable[[Path, dict[str, str], int], None]


def _start_prefetcher(spool: Path, depth: int, serve: Serve) -> bool:
    """Fork a prefetcher that outlives this call (its own session, stdin/stdout closed) and wait
    until it listens. Forked, not exec'd: it runs with this interpreter and import path."""
    failed = spool / START_FAILED
    try:
        if time.time() - failed.stat().st_mtime < FAILED_START_BACKOFF:
            return False
    except FileNotFoundError:
        pass
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's side
        code = 0
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            null = os.open(os.devnull, os.O_RDWR)
            log = os.open(spool / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(log, 2)
            # Nothing of the caller's (PostgreSQL's files, its pipes) stays open in the prefetcher.
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            serve(spool, dict(os.environ), depth)
        except BaseException as error:  # the child never returns into the caller
            try:
                failed.write_text(f"{type(error).__name__}: {error}\n")
            except OSError:
                pass
            code = 1
        os._exit(code)
    os.waitpid(pid, 0)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if _ask(spool, {"op": "ping"}, 2.0) is not None:
            return True
        if failed.exists():
            return False
        time.sleep(0.02)
    return False


def fetch(name: str, target: str, env: Mapping[str, str], cwd: Path | None, *, direct: Direct,
          serve: Serve) -> int:
    """restore_command: the file from the spool, or through the prefetcher (started with `serve`
    when none listens), or `direct`ly (from S3 in this process)."""
    try:
        depth = depth_from_env(env)
    except ValueError as error:
        _say(f"wal-fetch {name}: {error}; fetching without prefetch")
        depth = 0
    if depth == 0:
        return direct(name, target, env, cwd)
    target = os.path.abspath(target)
    spool = spool_directory(target, env)
    try:
        os.replace(spool / name, target)
    except FileNotFoundError:
        pass
    except OSError as error:
        _say(f"wal-fetch {name}: cannot take it from the spool ({error}); fetching directly")
        return direct(name, target, env, cwd)
    else:
        _keep_link(spool, name, target)
        _ask(spool, {"op": "took", "name": name}, 0)  # moves the window on; no answer awaited
        return OK
    try:
        spool.mkdir(mode=0o700, exist_ok=True)
    except OSError as error:
        _say(f"wal-fetch {name}: no spool at {spool} ({error}); fetching directly")
        return direct(name, target, env, cwd)
    answer = _ask(spool, {"op": "want", "name": name}, None)
    if answer is None and _start_prefetcher(spool, depth, serve):
        answer = _ask(spool, {"op": "want", "name": name}, None)
    if answer is None:
        return direct(name, target, env, cwd)
    result = answer.get("result", ERROR)
    if result == READY:
        try:
            os.replace(spool / name, target)
        except OSError as error:  # dropped meanwhile (another timeline asked?): ask S3 itself
            _say(f"wal-fetch {name}: the prefetched file went away ({error}); fetching directly")
            return direct(name, target, env, cwd)
        _keep_link(spool, name, target)
        return OK
    standby = ((cwd or Path.cwd()) / "standby.signal").exists()
    if result != MISSING:
        _say(f"wal-fetch {name} failed: {answer.get('message') or 'the prefetcher gave no reason'}"
             + ("" if standby else "; stopping recovery rather than ending it early"))
    return exit_code(result, standby)


def _keep_link(spool: Path, name: str, target: str) -> None:
    """<name>.taken, as the shell fast path leaves it (a failure only costs a fetch later)."""
    link = spool / f"{name}{TAKEN}"
    try:
        link.unlink(missing_ok=True)
        os.link(target, link)
    except OSError:
        pass


def would_warm(first: str, env: Mapping[str, str]) -> bool:
    """Whether warm(first, ...) would start a prefetcher: prefetching is on (a depth it accepts)
    and `first` is a segment (pure)."""
    return depth_from_env_or_off(env) > 0 and is_segment(first)


def warm(first: str, target: str, env: Mapping[str, str], *, serve: Serve) -> bool:
    """Start the prefetcher of `target`'s spool (the one restore_command will use: same `env`)
    and have it download `first` and the segments after it before PostgreSQL asks for them: a
    restore calls this once the base backup is unpacked, so replay starts from a warm spool and
    no restore_command waits for Python and boto3 to start. Returns once the prefetcher has the
    answers to PostgreSQL's first questions (the history files it probes for when it starts). False when prefetching is off or the
    prefetcher did not start (restore_command then starts one itself, as without this)."""
    if not would_warm(first, env):
        return False
    depth = depth_from_env(env)
    spool = spool_directory(os.path.abspath(target), env)
    try:
        spool.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return False
    if _ask(spool, {"op": "ping"}, 2.0) is None and not _start_prefetcher(spool, depth, serve):
        return False
    return _ask(spool, {"op": "expect", "name": first}, WARM_TIMEOUT) is not None


def remove_spools(directory: Path) -> None:
    """Every spool under `directory` (pg_wal), e.g. once a restore has promoted."""
    import shutil
    for spool in _spools(directory):
        shutil.rmtree(spool, ignore_errors=True)


def _spools(directory: Path) -> Iterable[Path]:
    try:
        return [p for p in directory.iterdir() if p.name.startswith(SPOOL_PREFIX) and p.is_dir()]
    except OSError:
        return []
