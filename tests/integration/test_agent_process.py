"""`pgop agent bootstrap` and `pgop agent run` as the processes a pod runs: the CLI and environment
contract, the health port, and SIGTERM as a fast shutdown. PgInstances come from JSON files
(PGOP_INSTANCE_STORE) instead of the API server."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from e2e.harness.pg import AgentHost
from pgop.agent import local
from pgop.kernel.model import Cluster
from pgop.specs.instance import build_instance

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.path.exists("/usr/lib/postgresql/15/bin/postgres"), reason="needs postgresql-15"),
]

PGOP = str(Path(sys.executable).with_name("pgop"))


def wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_status(port: int, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


@pytest.fixture
def host():
    machine = AgentHost()
    yield machine
    machine.cleanup()


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_bootstrap_and_run_as_processes(host, processes, tmp_path):
    store = tmp_path / "instances"
    store.mkdir()
    cluster = Cluster.from_object({"metadata": {"name": "orders", "namespace": "test", "uid": "u"},
                                   "spec": {"instances": 2, "synchronousReplicas": 1, "storage": {"size": "1Gi"},
                                            "bootstrap": {"initdb": {"database": "shop", "owner": "app"}}}})

    def write_instance(ordinal, role, mode):
        body = build_instance(cluster, ordinal, role, mode, primary="orders-0")  # as the operator writes it
        body["metadata"]["generation"] = 1
        (store / f"orders-{ordinal}.json").write_text(json.dumps(body))

    def status(name):
        return json.loads((store / f"{name}.json").read_text()).get("status") or {}

    write_instance(0, "primary", "initdb")
    primary = host.settings("orders-0")
    env = host.env(primary, store)
    done = subprocess.run([PGOP, "agent", "bootstrap", "--mode", "initdb"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for password in host.passwords.values():
        assert password not in done.stderr + done.stdout

    agent = subprocess.Popen([PGOP, "agent", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    processes.append(agent)
    wait_for(lambda: status("orders-0").get("ready"), "the primary ready")
    assert wait_for(lambda: http_status(primary.agent_port, "/readyz") == 200, "/readyz")
    assert http_status(primary.agent_port, "/healthz") == 200
    # initdb read its PgInstance (beside the initdb binary) and made the database the spec names
    with local.connect(primary) as conn:
        assert conn.execute("select datname from pg_database where datname = 'shop'").fetchone() == ("shop",)

    write_instance(1, "replica", "basebackup")
    replica = host.settings("orders-1", primary_port=primary.pg_port)
    replica_env = host.env(replica, store)
    done = subprocess.run([PGOP, "agent", "bootstrap", "--mode", "basebackup", "--primary-host", "127.0.0.1"],
                          env=replica_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    replica_agent = subprocess.Popen([PGOP, "agent", "run"], env=replica_env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
    processes.append(replica_agent)
    wait_for(lambda: (status("orders-0").get("replicaSyncStates") or {}).get("orders-1") == "quorum"
             and status("orders-1").get("ready"),
             "the replica streaming as a quorum standby")
    assert status("orders-1")["role"] == "replica"

    # SIGTERM (what the kubelet sends): fast shutdown of postgres, a last status, exit 0.
    postmaster_pid = int((primary.pgdata / "postmaster.pid").read_text().split()[0])
    replica_agent.send_signal(signal.SIGTERM)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0 and replica_agent.wait(30) == 0
    assert not (primary.pgdata / "postmaster.pid").exists()
    assert not Path(f"/proc/{postmaster_pid}").exists()
    final = status("orders-0")
    assert final["ready"] is False and final["phase"] == "Stopped"
    log = agent.stdout.read()
    assert "fast shutdown" in log
    for password in host.passwords.values():
        assert password not in log


def test_run_without_a_pod_environment_says_what_is_missing():
    done = subprocess.run([PGOP, "agent", "run"], env={"PATH": os.environ["PATH"]}, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert "PGOP_CLUSTER" in done.stderr and "PGDATA" in done.stderr
