"""`pgop agent` against real PostgreSQL 15 processes (Debian's binaries, as the postgres OS user).

Each agent runs in a thread of the test process with the in-memory PgInstance store in place of
the API server; its postgres is a real child process on a free loopback port. Every wait is
bounded.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from e2e.harness.pg import AgentHost
from pgop.agent import bootstrap, health, kube, loop
from pgop.agent.bootstrap import BootstrapError
from pgop.kernel import pgconfig
from pgop.kernel.model import Cluster, Instance
from pgop.specs.instance import build_instance

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not shutil.which("runuser") or not os.path.exists("/usr/lib/postgresql/15/bin/postgres"),
                       reason="needs Debian's postgresql-15 and runuser"),
]


def wait_for(predicate, what: str, timeout: float = 20.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (psycopg.Error, KeyError, IndexError):
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class Fleet:
    """The instances of one cluster, each an agent thread over a real postgres."""

    def __init__(self, host: AgentHost, store: kube.MemoryInstanceStore, cluster_spec: dict):
        self.host, self.store = host, store
        self.cluster = Cluster.from_object({
            "metadata": {"name": host.cluster, "namespace": host.namespace, "uid": "cluster-uid"},
            "spec": {"storage": {"size": "1Gi"}, **cluster_spec},
        })
        self.settings: dict = {}
        self.agents: dict[str, loop.Agent] = {}
        self.threads: dict[str, threading.Thread] = {}

    def name(self, ordinal: int) -> str:
        return f"{self.host.cluster}-{ordinal}"

    @property
    def primary_port(self) -> int:
        return self.settings[self.name(0)].pg_port

    def create(self, ordinal: int, role: str, mode: str) -> str:
        name = self.name(ordinal)
        # spec.primary as the operator writes it: the instance that is primary (ordinal 0 here)
        self.store.put(name, build_instance(self.cluster, ordinal, role, mode, primary=self.name(0))["spec"])
        primary_port = self.settings[self.name(0)].pg_port if ordinal else None
        self.settings[name] = self.host.settings(name, primary_port=primary_port)
        return name

    def bootstrap(self, name: str, mode: str):
        spec = Instance.from_object(self.store.get_instance(name)).spec
        return bootstrap.bootstrap(self.settings[name], mode, spec)

    def start(self, name: str) -> loop.Agent:
        agent = loop.Agent(self.settings[name], self.store)
        self.agents[name] = agent
        self.threads[name] = threading.Thread(target=agent.run, name=name, daemon=True)
        self.threads[name].start()
        return agent

    def stop(self, name: str) -> None:
        agent = self.agents.pop(name, None)
        if agent is None:
            return
        agent.stop()
        self.threads.pop(name).join(60)
        pid = agent.postmaster.pid
        if pid is not None:  # the agent did not get to stop it: by its PID, never by name
            os.kill(pid, signal.SIGQUIT)

    def primary(self) -> str:
        name = self.create(0, "primary", "initdb")
        self.bootstrap(name, "initdb")
        self.start(name)
        self.wait_ready(name)
        return name

    def replica(self, ordinal: int) -> str:
        name = self.create(ordinal, "replica", "basebackup")
        self.bootstrap(name, "basebackup")
        self.start(name)
        self.wait_ready(name)
        return name

    def status(self, name: str) -> dict:
        return self.store.status(name)

    def wait_ready(self, name: str, timeout: float = 30) -> dict:
        return wait_for(lambda: (s := self.status(name)).get("ready") and s, f"{name} ready", timeout)

    def wait_applied(self, name: str, generation: int, timeout: float = 30) -> dict:
        return wait_for(lambda: (s := self.status(name)).get("observedGeneration") == generation
                        and s.get("ready") and s, f"{name} at generation {generation}", timeout)

    def sql(self, name: str, query: str, params=None, dbname: str = "postgres", user: str = "postgres"):
        with self.host.connect(self.settings[name], user=user, dbname=dbname) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else None

    def start_time(self, name: str):
        return self.sql(name, "SELECT pg_postmaster_start_time()")[0][0]

    def cleanup(self) -> None:
        for name in list(self.agents):
            self.stop(name)


@pytest.fixture
def host():
    machine = AgentHost()
    yield machine
    machine.cleanup()


@pytest.fixture
def fleet_factory(host):
    fleets = []

    def make(**cluster_spec) -> Fleet:
        fleet = Fleet(host, kube.MemoryInstanceStore(host.namespace), cluster_spec)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.cleanup()


# ------------------------------------------------------------------------------------ bootstrap

def test_initdb_makes_app_database_owner_and_replication_role(fleet_factory, host):
    fleet = fleet_factory(instances=1, bootstrap={"initdb": {"database": "shop", "owner": "app"}})
    name = fleet.primary()

    # The app owner logs in over the network with the password from its secret file, and owns its database.
    assert fleet.sql(name, "SELECT current_user, current_database()", dbname="shop", user="app") == [("app", "shop")]
    fleet.sql(name, "CREATE TABLE orders (id int PRIMARY KEY)", dbname="shop", user="app")
    assert fleet.sql(name, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'") == [("app",)]
    roles = dict(fleet.sql(name, "SELECT rolname, rolreplication FROM pg_roles WHERE rolname IN "
                                 "('streaming_replica', 'app')"))
    assert roles == {"streaming_replica": True, "app": False}
    assert fleet.sql(name, "SHOW data_checksums") == [("on",)]
    assert fleet.sql(name, "SHOW password_encryption") == [("scram-sha-256",)]
    # Passwords are stored as SCRAM verifiers only.
    assert all(p.startswith("SCRAM-SHA-256$") for (p,) in fleet.sql(
        name, "SELECT rolpassword FROM pg_authid WHERE rolname IN ('postgres', 'app', 'streaming_replica')"))

    # `kubectl exec <pod> -- psql`: the postgres OS user gets a superuser session over the socket,
    # no password asked.
    settings = fleet.settings[name]
    psql = subprocess.run([shutil.which("runuser"), "-u", "postgres", "--", settings.binary("psql"), "-h", str(settings.socket_dir),
                           "-p", str(settings.pg_port), "-XAtw", "-c", "SELECT current_user, rolsuper FROM pg_roles "
                           "WHERE rolname = current_user"], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin"})
    assert psql.returncode == 0, psql.stderr
    assert psql.stdout.strip() == "postgres|t"
    # ... and nobody else does, even over the socket.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host=str(settings.socket_dir), port=settings.pg_port, user="app", dbname="shop",
                        password="wrong", connect_timeout=5).close()

    # No password in argv or in the log of postgres.
    log_text = settings.postgres_log.read_text()
    for password in host.passwords.values():
        assert password not in log_text

    # A completed bootstrap is never repeated.
    assert fleet.bootstrap(name, "initdb").already_done


def test_recovery_bootstrap_is_refused_plainly(host):
    with pytest.raises(BootstrapError, match="needs spec.recovery.source"):
        bootstrap.bootstrap(host.settings("orders-0"), "recovery")


def test_interrupted_basebackup_starts_over(fleet_factory):
    fleet = fleet_factory(instances=2)
    fleet.primary()
    name = fleet.create(1, "replica", "basebackup")
    settings = fleet.settings[name]
    # What a killed pg_basebackup leaves: a half-filled PGDATA and no completion marker.
    settings.pgdata.mkdir(parents=True)
    (settings.pgdata / "PG_VERSION").write_text("15\n")
    (settings.pgdata / "base").mkdir()
    (settings.pgdata / "base" / "junk").write_text("partial")
    # The primary's agent made the slot first: the clone uses it instead of creating one.
    wait_for(lambda: fleet.sql(fleet.name(0), "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                               (pgconfig.slot_name(name),)), "the primary to create the replica's slot")
    result = fleet.bootstrap(name, "basebackup")
    assert not result.already_done
    assert not (settings.pgdata / "base" / "junk").exists()
    assert (settings.pgdata / "standby.signal").exists()
    fleet.start(name)
    assert fleet.wait_ready(name)["role"] == "replica"


def test_a_replica_bootstrap_started_before_its_primary_runs_clones_once_it_is_up(fleet_factory, monkeypatch):
    """A new cluster's replica bootstrap starts while its primary is not up yet (in a cluster:
    while the primary's own bootstrap pod runs initdb). It waits, makes nothing, and clones
    once Postgres accepts connections there. One pg_basebackup attempt: the wait, not the
    retries, carries the replica over the primary's absence."""
    import functools
    monkeypatch.setattr(bootstrap, "basebackup", functools.partial(bootstrap.basebackup, attempts=1))
    fleet = fleet_factory(instances=2)
    primary = fleet.create(0, "primary", "initdb")
    fleet.bootstrap(primary, "initdb")  # the data directory exists, no Postgres runs
    replica = fleet.create(1, "replica", "basebackup")
    settings = fleet.settings[replica]
    outcome: dict = {}

    def clone() -> None:
        try:
            outcome["result"] = fleet.bootstrap(replica, "basebackup")
        except Exception as error:  # reported by the assertion below
            outcome["error"] = error

    thread = threading.Thread(target=clone, name="replica-bootstrap", daemon=True)
    thread.start()
    time.sleep(3)
    assert thread.is_alive(), outcome
    assert not bootstrap.is_bootstrapped(settings)
    assert not settings.pgdata.exists() or list(settings.pgdata.iterdir()) == []
    up = time.monotonic()
    fleet.start(primary)
    thread.join(60)
    assert not thread.is_alive() and "result" in outcome, outcome
    assert not outcome["result"].already_done
    assert time.monotonic() - up < 30
    fleet.start(replica)
    assert fleet.wait_ready(replica)["role"] == "replica"
    assert wait_for(lambda: fleet.sql(primary, "SELECT state FROM pg_stat_replication WHERE application_name = %s",
                                      (replica,)) == [("streaming",)], "the replica streaming")


def test_basebackup_fails_cleanly_without_a_primary(host):
    settings = host.settings("orders-1", primary_port=1)  # nothing listens on port 1
    settings.pgdata.mkdir(parents=True)
    with pytest.raises(BootstrapError, match="pg_basebackup"):
        bootstrap.basebackup(settings, Instance.from_object(
            {"metadata": {"name": "orders-1"}, "spec": {"cluster": "orders", "role": "replica"}}).spec,
            bootstrap.Runner(settings.run_as), attempts=2, retry_delay=0.1)
    assert list(settings.pgdata.iterdir()) == []
    assert not bootstrap.is_bootstrapped(settings)


# ---------------------------------------------------------------------------------- replication

def test_replicas_stream_with_slots_and_quorum_sync(fleet_factory):
    fleet = fleet_factory(instances=3, synchronousReplicas=1)
    primary = fleet.primary()
    r1, r2 = fleet.replica(1), fleet.replica(2)

    rows = wait_for(lambda: (r := fleet.sql(primary, "SELECT application_name, state, sync_state FROM "
                                                     "pg_stat_replication ORDER BY 1")) and len(r) == 2
                    and all(row[2] == "quorum" for row in r) and r, "two quorum standbys")
    # ANY 1 over two replicas: PostgreSQL reports both as 'quorum' (either one confirms a commit).
    assert rows == [(r1, "streaming", "quorum"), (r2, "streaming", "quorum")]
    assert fleet.sql(primary, "SHOW synchronous_standby_names") == [(f'ANY 1 ("{r1}", "{r2}")',)]
    slots = fleet.sql(primary, "SELECT slot_name, active FROM pg_replication_slots ORDER BY 1")
    assert slots == [(pgconfig.slot_name(r1), True), (pgconfig.slot_name(r2), True)]
    assert fleet.sql(r1, "SHOW primary_slot_name") == [(pgconfig.slot_name(r1),)]

    # Data written on the primary, through a synchronous commit, is on both replicas.
    fleet.sql(primary, "CREATE TABLE items (id int PRIMARY KEY, note text)", dbname="app", user="app")
    fleet.sql(primary, "INSERT INTO items VALUES (1, 'hello')", dbname="app", user="app")
    for replica in (r1, r2):
        assert wait_for(lambda replica=replica: fleet.sql(replica, "SELECT note FROM items", dbname="app", user="app"),
                        f"the row on {replica}") == [("hello",)]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            fleet.sql(replica, "INSERT INTO items VALUES (2, 'no')", dbname="app", user="app")

    # Heartbeat fields, as the operator reads them.
    primary_status = fleet.status(primary)
    wait_for(lambda: (fleet.status(primary).get("replicaSyncStates") or {}).get(r1) == "quorum",
             "the primary to report the replica's sync state, on its own status")
    replica_status = fleet.status(r1)
    assert primary_status["role"] == "primary" and replica_status["role"] == "replica"
    assert primary_status["timeline"] == replica_status["timeline"] == 1
    assert replica_status["lsn"] and replica_status["receivedLSN"]
    assert primary_status["systemIdentifier"] == replica_status["systemIdentifier"]
    assert replica_status["pod"] == r1 and replica_status["podIP"] == "127.0.0.1"
    assert replica_status["observedGeneration"] == 1 and replica_status["phase"] == "Running"
    assert replica_status["lagBytes"] == 0 or wait_for(lambda: fleet.status(r1)["lagBytes"] == 0, "no lag")
    beat = datetime.fromisoformat(fleet.status(primary)["lastHeartbeat"].replace("Z", "+00:00"))
    wait_for(lambda: datetime.fromisoformat(fleet.status(primary)["lastHeartbeat"].replace("Z", "+00:00")) > beat,
             "a newer heartbeat (every status refresh when nothing changes)", timeout=12)

    # synchronousReplicas 1 -> 0: a reload, no restart; both replicas become async.
    started = fleet.start_time(primary)
    generation = fleet.store.update_spec(primary, synchronousReplicas=0)
    fleet.wait_applied(primary, generation)
    assert fleet.sql(primary, "SHOW synchronous_standby_names") == [("",)]
    wait_for(lambda: [row[0] for row in fleet.sql(primary, "SELECT sync_state FROM pg_stat_replication")]
             == ["async", "async"], "both replicas async")
    assert fleet.start_time(primary) == started

    # Replica removed (its agent stopped, its PgInstance deleted): its slot goes, the quorum shrinks.
    fleet.store.update_spec(primary, synchronousReplicas=1)
    wait_for(lambda: fleet.sql(primary, "SHOW synchronous_standby_names")[0][0] == f'ANY 1 ("{r1}", "{r2}")',
             "the quorum over both replicas again")
    fleet.stop(r2)
    fleet.store.delete(r2)
    wait_for(lambda: fleet.sql(primary, "SELECT slot_name FROM pg_replication_slots") == [(pgconfig.slot_name(r1),)],
             "the removed replica's slot to be dropped")
    wait_for(lambda: fleet.sql(primary, "SHOW synchronous_standby_names")[0][0] == f'ANY 1 ("{r1}")',
             "the quorum over the remaining replica")


def test_required_mode_lists_every_replica_even_when_down(fleet_factory):
    fleet = fleet_factory(instances=2, synchronousReplicas=1, synchronousMode="required")
    primary = fleet.primary()
    name = fleet.create(1, "replica", "basebackup")  # exists, but never streams
    wait_for(lambda: fleet.sql(primary, "SHOW synchronous_standby_names")[0][0] == f'ANY 1 ("{name}")',
             "the required quorum over a replica that is not there")
    assert fleet.sql(primary, "SELECT count(*) FROM pg_stat_replication") == [(0,)]


def test_a_required_primary_restarted_while_its_replica_is_down_keeps_beating(fleet_factory):
    """The primary's agent grants the replication role its rights once per postmaster start. With
    synchronousMode required and no replica streaming, an ordinary commit waits for one: that
    grant must not, or the agent's loop stops (no status, no Lease renewal: a silent primary)."""
    fleet = fleet_factory(instances=2, synchronousReplicas=1, synchronousMode="required")
    primary = fleet.primary()
    name = fleet.create(1, "replica", "basebackup")  # exists, but never streams
    wait_for(lambda: fleet.sql(primary, "SHOW synchronous_standby_names")[0][0] == f'ANY 1 ("{name}")',
             "the required quorum over a replica that is not there")
    fleet.stop(primary)
    restarted = datetime.now(UTC)
    fleet.start(primary)
    fleet.wait_ready(primary)
    wait_for(lambda: fleet.agents[primary].granted_for is not None, "the grants of this start")
    # the loop goes on turning: heartbeats well after the restart
    wait_for(lambda: datetime.fromisoformat(fleet.status(primary)["lastHeartbeat"].replace("Z", "+00:00"))
             > restarted + timedelta(seconds=6), "heartbeats after the restart", timeout=20)
    assert fleet.sql(primary, "SHOW synchronous_standby_names")[0][0] == f'ANY 1 ("{name}")'
    # the application's commits still wait for the replica: only the agent's own do not
    assert fleet.sql(primary, "SHOW synchronous_commit") == [("on",)]


# -------------------------------------------------------------------------- reload vs restart

def test_reloadable_change_reloads_and_restart_only_change_restarts(fleet_factory):
    fleet = fleet_factory(instances=2)
    primary = fleet.primary()
    replica = fleet.replica(1)

    started = {name: fleet.start_time(name) for name in (primary, replica)}
    for name in (replica, primary):
        generation = fleet.store.update_spec(name, parameters={"work_mem": "8MB"})
        fleet.wait_applied(name, generation)
        assert fleet.sql(name, "SHOW work_mem") == [("8MB",)]
        assert fleet.start_time(name) == started[name], f"{name} restarted for a reloadable setting"
        assert fleet.status(name)["pendingRestart"] is False

    for name in (replica, primary):
        generation = fleet.store.update_spec(name, parameters={"work_mem": "8MB", "shared_buffers": "64MB"})
        fleet.wait_applied(name, generation)
        assert fleet.sql(name, "SHOW shared_buffers") == [("64MB",)]
        assert fleet.start_time(name) > started[name], f"{name} did not restart for shared_buffers"
        assert fleet.sql(name, "SELECT count(*) FROM pg_settings WHERE pending_restart") == [(0,)]
    # The replica streams again after both restarts.
    wait_for(lambda: fleet.sql(primary, "SELECT state FROM pg_stat_replication") == [("streaming",)],
             "the replica streaming again")


def test_a_value_postgres_refuses_is_reported_and_not_applied(fleet_factory):
    fleet = fleet_factory(instances=1)
    name = fleet.primary()
    generation = fleet.store.update_spec(name, parameters={"work_mem": "lots", "maintenance_work_mem": "100MB"})
    status = wait_for(lambda: "work_mem" in ((s := fleet.status(name)).get("message") or "") and s,
                      "the refused setting reported")
    assert status["observedGeneration"] == generation - 1 and status["ready"] is True
    assert fleet.sql(name, "SHOW maintenance_work_mem") == [("100MB",)]  # the rest is applied
    generation = fleet.store.update_spec(name, parameters={"work_mem": "16MB"})
    assert fleet.wait_applied(name, generation).get("message") is None
    assert fleet.sql(name, "SHOW work_mem") == [("16MB",)]


def test_pending_restart_after_a_reload_restarts(fleet_factory, monkeypatch):
    # A restart-only setting the agent's list does not know (as an extension's would be): the
    # reload leaves it pending, pg_settings.pending_restart says so, and the agent restarts.
    monkeypatch.setattr(pgconfig, "POSTMASTER_PARAMETERS", pgconfig.POSTMASTER_PARAMETERS - {"max_connections"})
    fleet = fleet_factory(instances=1)
    name = fleet.primary()
    started = fleet.start_time(name)
    generation = fleet.store.update_spec(name, parameters={"max_connections": "120"})
    fleet.wait_applied(name, generation)
    assert fleet.sql(name, "SHOW max_connections") == [("120",)]
    assert fleet.start_time(name) > started
    assert fleet.status(name)["pendingRestart"] is False


# ---------------------------------------------------------------------------- the postmaster

def test_crashed_postgres_is_restarted_and_fencing_stops_it(fleet_factory):
    fleet = fleet_factory(instances=1)
    name = fleet.primary()
    agent = fleet.agents[name]
    first_pid = agent.postmaster.pid
    os.kill(first_pid, signal.SIGKILL)
    wait_for(lambda: agent.postmaster.pid not in (None, first_pid) and fleet.sql(name, "SELECT 1"),
             "postgres restarted by its agent", timeout=60)
    assert agent.failed_starts >= 1  # counted: the agent gives up after max_start_attempts in a row

    generation = fleet.store.update_spec(name, fenced=True)
    status = wait_for(lambda: (s := fleet.status(name)).get("phase") == "Fenced"
                      and s.get("observedGeneration") == generation and s, "fenced")
    assert status["ready"] is False and status["fenced"] is True
    assert not agent.postmaster.is_running()

    generation = fleet.store.update_spec(name, fenced=False)
    fleet.wait_applied(name, generation)
    assert fleet.sql(name, "SELECT 1") == [(1,)]


def test_agent_gives_up_when_postgres_cannot_start(fleet_factory):
    fleet = fleet_factory(instances=1)
    name = fleet.primary()
    agent, thread = fleet.agents[name], fleet.threads[name]
    # A value postgres refuses at start: the restart fails, and so do the retries.
    fleet.store.update_spec(name, parameters={"shared_buffers": "not-a-size"})
    thread.join(60)
    assert not thread.is_alive() and agent.exit_code == 1
    assert agent.failed_starts == fleet.settings[name].max_start_attempts
    status = fleet.status(name)
    assert status["phase"] == "Failed" and status["ready"] is False
    assert "3 times in a row" in status["message"]
    assert "not-a-size" in fleet.settings[name].postgres_log.read_text()


def test_promote_when_the_spec_says_primary(fleet_factory):
    fleet = fleet_factory(instances=2)
    old = fleet.primary()
    new = fleet.replica(1)
    fleet.sql(old, "CREATE TABLE before_failover (id int)", dbname="app", user="app")
    wait_for(lambda: fleet.sql(new, "SELECT to_regclass('before_failover') IS NOT NULL", dbname="app")[0][0],
             "the table on the replica")
    fleet.stop(old)  # what fencing the old primary will do
    fleet.store.update_spec(old, role="replica", primary=new)
    generation = fleet.store.update_spec(new, role="primary", primary=new)
    status = fleet.wait_applied(new, generation)
    assert status["role"] == "primary" and status["timeline"] == 2
    fleet.sql(new, "INSERT INTO before_failover VALUES (1)", dbname="app", user="app")
    assert not (fleet.settings[new].pgdata / "standby.signal").exists()
    # The new primary keeps a slot for the old one, which will rejoin as a replica.
    assert fleet.sql(new, "SELECT slot_name FROM pg_replication_slots") == [(pgconfig.slot_name(old),)]


def test_health_endpoints(fleet_factory):
    fleet = fleet_factory(instances=1)
    name = fleet.primary()
    agent = fleet.agents[name]
    settings = fleet.settings[name]
    server = health.serve(agent.health, "127.0.0.1", settings.agent_port)
    try:
        def get(path):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{settings.agent_port}{path}", timeout=5) as r:
                    return r.status
            except urllib.error.HTTPError as error:
                return error.code
        assert get("/healthz") == 200
        wait_for(lambda: get("/readyz") == 200, "readyz 200")
        fleet.store.update_spec(name, fenced=True)
        wait_for(lambda: get("/readyz") == 503, "readyz 503 once fenced")
        assert get("/healthz") == 200  # the loop still turns: the kubelet must not kill the pod
        assert get("/nope") == 404
    finally:
        server.shutdown()
