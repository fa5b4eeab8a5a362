"""archive_command without a new boto3 per segment: a long-lived pusher and its client.

`pgop agent wal-push %p` costs a Python start and a boto3 import (~0.5 s) before the first byte
moves, once per segment: a primary writing WAL faster than that archives behind. The client here
(standard library only) hands the path to a pusher process that keeps the S3 client, and waits
for its answer; the pusher runs exactly what a direct wal-push runs (pgop.backup.commands.wal_push:
the archive.json check, zstd, sha256, never overwriting), one segment at a time, and answers with
its exit code and what it said. So the protocol PostgreSQL sees is unchanged: 0 only once the
segment is in S3, anything else "retry later".

The pusher listens on an abstract unix socket (nothing on disk: nothing in PGDATA that pg_rewind
or a backup would copy), named by the user, the pg_wal directory and the archive's location;
it answers only processes of its own user (SO_PEERCRED). It reads the credentials files at every
push and makes a new S3 client when they changed (a rotated Secret takes effect at once). It
exits after IDLE_SECONDS without a push. When it cannot be reached or started, or does not answer
in time, the client pushes directly, as before (a push is idempotent: same content is success).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_PUSHER = "PGOP_WAL_PUSHER"  # "0" pushes directly, a process per segment
IDLE_SECONDS = 60.0
ANSWER_TIMEOUT = 300.0  # a push with retries takes far less; then the client pushes itself
START_TIMEOUT = 10.0


def address(wal_path: str, env: Mapping[str, str]) -> str:
    """The abstract socket name of the pusher for this server's pg_wal and this environment (every
    PGOP_* setting: the pusher pushes with the environment of the call that started it)."""
    where = os.path.dirname(os.path.abspath(wal_path))
    settings = "\n".join(f"{k}={env[k]}" for k in sorted(env) if k.startswith("PGOP_"))
    key = hashlib.sha256(f"{os.getuid()}\n{where}\n{settings}".encode()).hexdigest()[:20]
    return f"\0pgop-wal-push-{os.getuid()}-{key}"


def _say(text: str) -> None:
    print(f"pgop wal: {text}", file=sys.stderr, flush=True)


def _ask(name: str, request: dict, timeout: float) -> dict | None:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.settimeout(timeout)
        connection.connect(name)
        connection.sendall(json.dumps(request).encode() + b"\n")
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


def _start(name: str, env: Mapping[str, str]) -> bool:
    """Fork a pusher that outlives this call; True once it listens. A pipe tells at once whether
    it came up (it writes a byte once listening; its end closes when it fails or exits)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's side
        code = 0
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            # Nothing of the caller's stays open: a reader of its output (the syslogger's pipe, a
            # caller's capture) must see EOF when the call ends, not when the pusher goes idle.
            # What a push says goes back in the answer, which the client prints.
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, write_end)
            os.closerange(write_end + 1, os.sysconf("SC_OPEN_MAX"))

            def ready() -> None:
                os.write(write_end, b"1")
                os.close(write_end)
            serve(name, dict(env), ready=ready)
        except BaseException:  # the child never returns into the caller; the client pushes directly
            code = 1
        os._exit(code)
    os.close(write_end)
    os.waitpid(pid, 0)
    try:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            import select
            readable, _, _ = select.select([pipe], [], [], START_TIMEOUT)
            return bool(readable) and pipe.read(1) == b"1"
    except OSError:
        return False


def push(path: str, env: Mapping[str, str] | None = None) -> int:
    """archive_command: through the pusher (started when none listens), else directly."""
    env = os.environ if env is None else env
    if env.get(ENV_PUSHER, "").strip() == "0":
        return _direct(path, env)
    name = address(path, env)
    request = {"op": "push", "path": os.path.abspath(path)}
    answer = _ask(name, request, ANSWER_TIMEOUT)
    if answer is None and _start(name, env):
        answer = _ask(name, request, ANSWER_TIMEOUT)
    if answer is None or not isinstance(answer.get("code"), int):
        return _direct(path, env)
    if answer.get("said"):
        sys.stderr.write(answer["said"])
        sys.stderr.flush()
    return int(answer["code"])


def _direct(path: str, env: Mapping[str, str]) -> int:
    from pgop.backup.commands import wal_push
    return wal_push(path, env)


# ------------------------------------------------------------------------------ the pusher

class _Clients:
    """One S3 client per set of settings (the credentials files re-read at every push)."""

    def __init__(self) -> None:
        self.cached: tuple[Any, Any] | None = None

    def __call__(self, env: Mapping[str, str]) -> tuple[Any, Any]:
        from pgop.backup.commands import (
            S3_ATTEMPTS,
            S3_CONNECT_TIMEOUT,
            S3_READ_TIMEOUT,
            archive_layout,
        )
        from pgop.backup.s3 import S3Settings, S3Storage
        settings = S3Settings.from_env(env)
        if self.cached is None or self.cached[0] != settings:
            storage = S3Storage.from_settings(settings, max_attempts=S3_ATTEMPTS, connect_timeout=S3_CONNECT_TIMEOUT,
                                              read_timeout=S3_READ_TIMEOUT)
            self.cached = (settings, storage)
        return self.cached[1], archive_layout(env)


def _peer_uid(connection: socket.socket) -> int:
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", credentials)[1]


def serve(name: str, env: dict[str, str], ready: Any = None, idle: float = IDLE_SECONDS) -> None:
    from pgop.backup.commands import wal_push
    clients = _Clients()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(name)  # taken: another pusher serves this pg_wal (OSError ends this one)
    server.listen(8)
    server.settimeout(1.0)
    if ready is not None:
        ready()
    last = time.monotonic()
    with server:
        while time.monotonic() - last < idle:
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                if _peer_uid(connection) != os.getuid():
                    continue
                connection.settimeout(30)
                try:
                    data = b""
                    while not data.endswith(b"\n"):
                        chunk = connection.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    request = json.loads(data)
                    path = request["path"]
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                said = io.StringIO()
                # PostgreSQL runs archive_command in PGDATA: the marker check finds pg_control
                # from the path, which is absolute here.
                with contextlib.redirect_stderr(said):
                    code = wal_push(str(Path(path)), env, target=clients)
                last = time.monotonic()
                with contextlib.suppress(OSError):
                    connection.sendall(json.dumps({"code": code, "said": said.getvalue()}).encode() + b"\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        _say("usage: wal-push WALFILE (PostgreSQL's %p)")
        return 2
    return push(args[0])
