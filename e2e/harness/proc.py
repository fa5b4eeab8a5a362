"""Starting, finding and stopping the processes the environment owns, by PID file only."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .paths import LOGS, PIDS


def pidfile(name: str) -> Path:
    return PIDS / f"{name}.pid"


def pid_of(name: str) -> int | None:
    try:
        pid = int(pidfile(name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    # A recycled PID belongs to someone else: check the process is still the one we started.
    try:
        started = (PIDS / f"{name}.start").read_text().strip()
        if started != _starttime(pid):
            return None
    except FileNotFoundError:
        pass
    return pid


def _starttime(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, IndexError):
        return ""


def running(name: str) -> bool:
    return pid_of(name) is not None


def start(name: str, argv: list[str], env: dict[str, str] | None = None,
          user: str | None = None, cwd: str | None = None) -> int:
    """Starts argv in its own session with output in logs/<name>.log; a no-op when running."""
    pid = pid_of(name)
    if pid:
        return pid
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{name}.log", "ab")
    log.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {' '.join(argv)}\n".encode())
    log.flush()
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
    pidfile(name).write_text(str(p.pid))
    (PIDS / f"{name}.start").write_text(_starttime(p.pid))
    return p.pid


def record(name: str, pid: int) -> None:
    """Names a process started elsewhere (a test's own operator), so `stop(name)` and `down` find
    it even when the run that started it was killed."""
    PIDS.mkdir(parents=True, exist_ok=True)
    pidfile(name).write_text(str(pid))
    (PIDS / f"{name}.start").write_text(_starttime(pid))


def stop(name: str, timeout: float = 20.0) -> bool:
    """SIGTERM to the process group we started, SIGKILL after timeout. True if it was running."""
    pid = pid_of(name)
    pidfile(name).unlink(missing_ok=True)
    (PIDS / f"{name}.start").unlink(missing_ok=True)
    if not pid:
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    _signal_group(pid, signal.SIGKILL)
    return True


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = ""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _signal_group(pid: int, sig: int) -> None:
    # Each process was started in a session of its own, so its group id is its pid.
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def wait_for(check: Callable[[], bool], what: str, timeout: float = 120.0,
             interval: float = 0.5, log_name: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as e:  # the thing is still starting: connection refused and friends
            last_exc = e
        if log_name and not running(log_name):
            raise RuntimeError(f"{what}: process {log_name} exited; see {LOGS / (log_name + '.log')}\n"
                               + tail(log_name))
        time.sleep(interval)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f}s (last error: {last_exc})"
                       + (f"\n{tail(log_name)}" if log_name else ""))


def tail(name: str, lines: int = 30) -> str:
    try:
        return "\n".join((LOGS / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def run(argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("text", True)
    kw.setdefault("capture_output", True)
    p = subprocess.run(argv, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def tcp_connections(pid: int, port: int) -> int | None:
    """How many established TCP connections process `pid` holds to `port` on the remote side
    (its socket inodes, looked up in its network namespace's /proc/net/tcp and tcp6); None when
    the process is gone."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        tables = [Path(f"/proc/{pid}/net/{name}").read_text() for name in ("tcp", "tcp6")]
    except OSError:
        return None
    count = 0
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                count += 1  # state 01: ESTABLISHED
    return count
