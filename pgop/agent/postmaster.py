"""Postgres as a child process of the agent.

The agent is PID 1 of its container: postgres is its child (so it knows at once when postgres
dies), it forwards a SIGTERM as a fast shutdown, and it reaps the orphans a container's PID 1
inherits. It does not use pg_ctl, which would detach postgres from the agent.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

from pgop.agent import local
from pgop.agent.commands import Children, Runner
from pgop.agent.settings import AgentSettings

log = logging.getLogger(__name__)

SHUTDOWN_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


class PostmasterError(RuntimeError):
    pass


def remove_stale_pid_file(pgdata: Path) -> bool:
    """Remove postmaster.pid when no postmaster of this data directory runs.

    After a pod is killed the file stays on the volume, and in a fresh container its pid may
    belong to an unrelated process (or to the agent itself), which postgres would take as a
    running server and refuse to start.
    """
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        ours = any(part.endswith(b"postgres") for part in cmdline[:1]) and str(pgdata).encode() in cmdline
    except OSError:
        ours = False
    if ours and pid != os.getpid():
        return False
    pid_file.unlink(missing_ok=True)
    log.info("removed the stale postmaster.pid (pid %s is not a postmaster of %s)", pid, pgdata)
    return True


class Postmaster:
    def __init__(self, settings: AgentSettings, runner: Runner):
        self.settings = settings
        self.runner = runner
        self.process: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.last_exit: int | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def wal_receiver_pid(self) -> int | None:
        """The pid of postgres's WAL receiver process, if one runs: it exits when its primary
        goes (a switchover's clean shutdown ends the stream), a moment worth reporting at once.
        Read from /proc, no connection: cheap enough for every POSTMASTER_POLL."""
        pid = self.pid
        if pid is None:
            return None
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        for child in children:
            try:
                title = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"postgres: ") and b"walreceiver" in title:
                return int(child)
        return None

    def is_running(self) -> bool:
        if self.process is None:
            return False
        code = self.process.poll()
        if code is None:
            return True
        self._exited(code)
        return False

    def _exited(self, code: int, expected: bool = False) -> None:
        if self.process is not None:
            (log.info if expected else log.warning)("postgres (pid %s) exited with %s", self.process.pid, code)
            self.runner.children.forget(self.process.pid)
        self.last_exit = code
        self.process = None
        self.started_at = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def start(self, timeout: float = 120, options: list[str] | None = None, wait: bool = True) -> None:
        """Start postgres and wait until it accepts connections (a replica: once consistent).

        With wait=False, return after `timeout` even if it does not accept connections yet (a long
        crash recovery must not stop the agent's loop); raise only if postgres exited.
        """
        if self.is_running():
            return
        remove_stale_pid_file(self.settings.pgdata)
        argv = [self.settings.binary("postgres"), "-D", str(self.settings.pgdata), *(options or [])]
        output = None
        if self.settings.postgres_log is not None:
            self._log_handle = open(self.settings.postgres_log, "ab")
            output = self._log_handle
        self.process = self.runner.popen(argv, stdin=subprocess.DEVNULL, stdout=output,
                                         stderr=subprocess.STDOUT if output else None)
        self.started_at = time.monotonic()
        log.info("started postgres (pid %s)", self.process.pid)
        if local.wait_until_accepting(self.settings, timeout, alive=self.is_running):
            return
        if not self.is_running():
            raise PostmasterError(f"postgres exited during start with {self.last_exit} (see its log)")
        if wait:
            raise PostmasterError(f"postgres did not accept connections within {timeout:.0f}s")
        log.info("postgres does not accept connections yet (recovering?); the loop keeps watching")

    def signal_shutdown(self, mode: str = "fast") -> None:
        """Ask for a shutdown without waiting (from a signal handler)."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(SHUTDOWN_SIGNALS[mode])

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Shut postgres down: fast (SIGINT) by default, immediate if it takes too long."""
        if not self.is_running():
            return
        assert self.process is not None
        log.info("stopping postgres (%s shutdown)", mode)
        self.process.send_signal(SHUTDOWN_SIGNALS[mode])
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("postgres did not stop within %ss; immediate shutdown", timeout)
            self.process.send_signal(signal.SIGQUIT)
            try:
                code = self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
        self._exited(code, expected=True)

    def restart(self, timeout: float = 120, wait: bool = True) -> None:
        self.stop()
        self.start(timeout, wait=wait)

    def reload(self) -> None:
        if self.is_running():
            assert self.process is not None
            self.process.send_signal(signal.SIGHUP)


def reap_orphans(children: Children) -> list[int]:
    """Reap zombie children that nobody waits for (a container's PID 1 inherits every orphan).

    Only zombies not registered in `children`: waiting on any other pid would steal the exit
    status of a postgres or a command the agent is waiting for.
    """
    me = os.getpid()
    reaped = []
    with children.lock:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in children.pids:
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if len(fields) > 1 and fields[0] == "Z" and int(fields[1]) == me:
                try:
                    os.waitpid(int(entry.name), os.WNOHANG)
                    reaped.append(int(entry.name))
                except ChildProcessError:
                    pass
    return reaped
