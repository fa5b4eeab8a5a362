"""Runs the pgop operator (this checkout's code) as a process for e2e tests."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from e2e.harness import lanes, paths, proc

TEST_OPERATOR = lanes.operator_pid_name()  # its PID file, which `make down` reads too
STANDBY_OPERATOR = lanes.operator_pid_name("operator-test-standby")  # a second replica's (leader election tests)


class OperatorProcess:
    def __init__(self, env: dict[str, str], log: Path, args: tuple[str, ...] = (),
                 pid_name: str = TEST_OPERATOR):
        self.env, self.log, self.args, self.pid_name = env, log, args, pid_name
        from e2e.harness.services import free_port
        self.p: subprocess.Popen | None = None
        # its /metrics, on loopback: e2e/test_metrics.py has Prometheus scrape it
        self.metrics_port = free_port()

    def start(self, alone: bool = True) -> None:
        # One operator at a time (unless replicas elect a leader): the one `make up` started, or
        # one a killed test run left behind, would act on the same objects.
        if alone:
            proc.stop("operator")
            proc.stop(TEST_OPERATOR)
            proc.stop(STANDBY_OPERATOR)
        if lanes.lane():
            from e2e.harness import envfile
            from e2e.harness.fixtures import Kubectl, wait_for_lane_namespaces
            wait_for_lane_namespaces(Kubectl(envfile.load()))
        pgop = paths.REPO / ".venv" / "bin" / "pgop"
        out = open(self.log, "ab")
        self.p = subprocess.Popen([str(pgop), "run", *lanes.operator_scope(), *self.args,
                                   "--metrics", f"http://127.0.0.1:{self.metrics_port}/metrics"], stdout=out,
                                  stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                                  start_new_session=True)
        proc.record(self.pid_name, self.p.pid)

    def kill(self) -> None:
        """SIGKILL: what a crash or a node loss does to the operator."""
        if self.p and self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(10)

    def stop(self) -> None:
        if self.p and self.p.poll() is None:
            # The threads' stacks into the log first: what any handler still running waits on.
            os.kill(self.p.pid, signal.SIGUSR1)
            time.sleep(0.2)
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
