"""`pgop agent run` as the process a Postgres pod runs: the bootstrap of a new volume its pod
permits, the CLI and environment contract, the health port, and SIGTERM as a fast shutdown. PgInstances come from JSON files
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
    # As in a pod made for an empty volume: its annotation pgop.io/bootstrap-mode, passed by the
    # kubelet, lets the agent fill the volume before it starts Postgres.
    env = host.env(primary, store) | {"PGOP_BOOTSTRAP_PERMIT": "initdb"}
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
    replica_env = host.env(replica, store) | {"PGOP_BOOTSTRAP_PERMIT": "basebackup"}
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
    assert "bootstrap initdb into" in log and "fast shutdown" in log
    for password in host.passwords.values():
        assert password not in log
    # Started again with the permission withdrawn (the operator marked the volume): the data
    # directory is there, so Postgres simply starts on it; nothing is bootstrapped again.
    again = subprocess.Popen([PGOP, "agent", "run"], env=env | {"PGOP_BOOTSTRAP_PERMIT": ""},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    processes.append(again)
    wait_for(lambda: status("orders-0").get("ready"), "the primary ready again")
    with local.connect(primary) as conn:
        assert conn.execute("select datname from pg_database where datname = 'shop'").fetchone() == ("shop",)
    again.send_signal(signal.SIGTERM)
    assert again.wait(30) == 0
    assert "bootstrap" not in again.stdout.read()


def instance_store(tmp_path: Path, ordinal: int, role: str, mode: str) -> Path:
    """A directory of PgInstances (PGOP_INSTANCE_STORE) holding orders-<ordinal> as the operator writes it."""
    store = tmp_path / "instances"
    store.mkdir()
    cluster = Cluster.from_object({"metadata": {"name": "orders", "namespace": "test", "uid": "u"},
                                   "spec": {"instances": 2, "storage": {"size": "1Gi"}}})
    body = build_instance(cluster, ordinal, role, mode, primary="orders-0")
    body["metadata"]["generation"] = 1
    (store / f"orders-{ordinal}.json").write_text(json.dumps(body))
    return store


def test_a_volume_whose_data_is_lost_is_not_filled_again(host, processes, tmp_path):
    """The pod's permission withdrawn (the volume marked initialised) and no data directory (a
    wiped local disk): the agent refuses to make a new one, says why in its status and stays up
    (alive, not ready), rather than bring back an empty instance."""
    store = instance_store(tmp_path, 0, "primary", "initdb")
    settings = host.settings("orders-0")
    agent = subprocess.Popen([PGOP, "agent", "run"], env=host.env(settings, store) | {"PGOP_BOOTSTRAP_PERMIT": ""},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    processes.append(agent)
    said = wait_for(lambda: (st := json.loads((store / "orders-0.json").read_text()).get("status") or {})
                    .get("message") and st, "the agent's report")
    assert "its data is lost" in said["message"] and not said.get("ready")
    assert http_status(settings.agent_port, "/healthz") == 200
    assert http_status(settings.agent_port, "/readyz") == 503
    assert not (settings.pgdata / "PG_VERSION").exists()
    assert agent.poll() is None


def test_a_bootstrap_waiting_for_its_primary_stays_alive_and_ends_at_sigterm(host, processes, tmp_path):
    """A new replica's agent waits for its primary to accept connections before it clones: /healthz
    stays green meanwhile (a liveness probe must not kill a long wait or clone), and a SIGTERM (the
    pod deleted) ends it at once, not after the grace period."""
    store = instance_store(tmp_path, 1, "replica", "basebackup")
    nobody = host.settings("orders-0")  # a port where no primary listens
    replica = host.settings("orders-1", primary_port=nobody.pg_port)
    env = host.env(replica, store) | {"PGOP_BOOTSTRAP_PERMIT": "basebackup", "PGOP_HEARTBEAT_INTERVAL": "0.5"}
    agent = subprocess.Popen([PGOP, "agent", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    processes.append(agent)
    wait_for(lambda: http_status(replica.agent_port, "/healthz") == 200, "/healthz while it waits")
    time.sleep(2)  # past the agent's first few turns, had it started its loop
    assert agent.poll() is None
    assert http_status(replica.agent_port, "/healthz") == 200
    assert http_status(replica.agent_port, "/readyz") == 503
    assert not (replica.pgdata / "PG_VERSION").exists()
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(10) == 128 + signal.SIGTERM
    log = agent.stdout.read()
    assert "waiting for the primary" in log and "while bootstrapping" in log


def test_run_without_a_pod_environment_says_what_is_missing():
    done = subprocess.run([PGOP, "agent", "run"], env={"PATH": os.environ["PATH"]}, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert "PGOP_CLUSTER" in done.stderr and "PGDATA" in done.stderr
