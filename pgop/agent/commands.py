"""PostgreSQL's binaries, run as the OS user that owns the data directory.

In a pod the agent already is that user (uid 999). When it runs as root (the integration tests,
or a machine where it is started by hand), PostgreSQL refuses root, so the children switch to
`run_as` and the files the agent writes are handed to that user.

Every child is registered while it runs: the agent is PID 1 in its pod and reaps orphans, and it
must never reap a child that subprocess or the postmaster supervisor is waiting for.
"""
from __future__ import annotations

import logging
import os
import pwd
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


class CommandError(RuntimeError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str):
        self.argv, self.returncode, self.stderr = list(argv), returncode, stderr
        tail = "\n".join(stderr.strip().splitlines()[-12:])
        super().__init__(f"{Path(argv[0]).name} exited with {returncode}: {tail}")


class Children:
    """Pids of the children the agent waits for itself (the reaper leaves them alone)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pids: set[int] = set()

    def spawn(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        # Spawn and register under the lock the reaper takes, so it never sees an unregistered one.
        with self.lock:
            process = subprocess.Popen(list(argv), **kwargs)
            self.pids.add(process.pid)
        return process

    def forget(self, pid: int) -> None:
        with self.lock:
            self.pids.discard(pid)


CHILDREN = Children()


class Runner:
    def __init__(self, run_as: str | None = None, children: Children = CHILDREN):
        self.children = children
        self.run_as = run_as if (run_as and os.geteuid() == 0) else None
        self._ids = None
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            self._ids = (entry.pw_uid, entry.pw_gid)

    @property
    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) the agent's files must belong to, or None when the agent is that user."""
        return self._ids

    def chown(self, *paths: Path) -> None:
        if self._ids is not None:
            for path in paths:
                os.chown(path, *self._ids)

    def _user_kwargs(self) -> dict:
        if self._ids is None:
            return {}
        return {"user": self._ids[0], "group": self._ids[1], "extra_groups": []}

    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        merged = {key: value for key, value in os.environ.items() if not key.startswith("PGPASS")}
        merged.update(env or {})
        if self._ids is not None:
            merged["HOME"] = pwd.getpwuid(self._ids[0]).pw_dir
            merged["USER"] = merged["LOGNAME"] = self.run_as or ""
        return merged

    def popen(self, argv: Sequence[str], env: Mapping[str, str] | None = None, **kwargs) -> subprocess.Popen:
        log.debug("starting %s", " ".join(argv))
        return self.children.spawn(argv, env=self._env(env), cwd="/", **self._user_kwargs(), **kwargs)

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float | None = None,
            check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        process = self.popen(argv, env, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            raise CommandError(argv, -9, f"timed out after {timeout}s\n{stderr}") from None
        finally:
            self.children.forget(process.pid)
        result = subprocess.CompletedProcess(list(argv), process.returncode, stdout, stderr)
        if check and process.returncode != 0:
            raise CommandError(argv, process.returncode, stderr or stdout)
        return result
