"""The agent's side of failover against real PostgreSQL 15 processes (docs/high-availability.md).

As in test_agent_postgres, each agent runs in a thread over a real postgres on a loopback port,
with the in-memory PgInstance store in place of the API server; the test plays the operator (it
writes spec.role and spec.primary). The `<cluster>-rw` Service every replica streams from, clones
from and rewinds from is a small TCP forwarder on loopback whose backend the test moves to the new
primary, as the operator moves the pod labels.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import threading
import time

import psycopg
import pytest

from e2e.harness.pg import AgentHost
from pgop.agent import bootstrap, kube, rejoin
from pgop.agent.commands import Runner
from pgop.agent.kube import MemoryInstanceStore
from pgop.kernel import pgconfig
from pgop.kernel.lsn import parse_lsn
from tests.integration.test_agent_postgres import Fleet, wait_for

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not shutil.which("runuser") or not os.path.exists("/usr/lib/postgresql/15/bin/pg_rewind"),
                       reason="needs Debian's postgresql-15 and runuser"),
]


class Forwarder:
    """The -rw Service: accepts on a loopback port, forwards to the current primary's port.
    Moving it closes the connections to the old backend (its endpoints are gone)."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.target: int | None = None
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True, name="rw-forwarder").start()

    def move(self, port: int | None) -> None:
        with self.lock:
            self.target = port
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                self._close(sock)

    @staticmethod
    def _close(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            target = self.target
            if target is None:
                client.close()
                continue
            try:
                backend = socket.create_connection(("127.0.0.1", target), timeout=5)
                backend.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, backend))
            for a, b in ((client, backend), (backend, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source)
            self._close(sink)

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.move(None)


class FailoverFleet(Fleet):
    """Every instance streams from, clones from and rewinds from the forwarder."""

    def __init__(self, host: AgentHost, store: MemoryInstanceStore, cluster_spec: dict, rw: Forwarder,
                 **settings_changes):
        super().__init__(host, store, cluster_spec)
        self.rw = rw
        self.settings_changes = settings_changes

    def create(self, ordinal: int, role: str, mode: str) -> str:
        name = super().create(ordinal, role, mode)
        self.settings[name] = dataclasses.replace(self.settings[name], primary_port=self.rw.port,
                                                  **self.settings_changes)
        if ordinal == 0:
            self.rw.move(self.settings[name].pg_port)
        return name

    def promote(self, name: str) -> dict:
        """What the operator does once it chose `name`: spec.role primary, the Service moves once
        the agent reports a primary."""
        generation = self.store.update_spec(name, role="primary", primary=name)
        status = wait_for(lambda: (s := self.status(name)).get("role") == "primary"
                          and s.get("observedGeneration") == generation and s, f"{name} promoted", 60)
        self.rw.move(self.settings[name].pg_port)
        return status


@pytest.fixture
def host():
    machine = AgentHost()
    yield machine
    machine.cleanup()


@pytest.fixture
def rw():
    forwarder = Forwarder()
    yield forwarder
    forwarder.close()


@pytest.fixture
def fleet_factory(host, rw):
    fleets = []

    def make(settings_changes=None, **cluster_spec) -> FailoverFleet:
        fleet = FailoverFleet(host, kube.MemoryInstanceStore(host.namespace), cluster_spec, rw,
                              **(settings_changes or {}))
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.cleanup()


def count(fleet: Fleet, name: str) -> int:
    return fleet.sql(name, "SELECT count(*) FROM items", dbname="app")[0][0]


def replication_rows(fleet: Fleet, name: str) -> list[str]:
    return [row[0] for row in fleet.sql(name, "SELECT application_name FROM pg_stat_replication ORDER BY 1")]


# ------------------------------------------------------------------------- stop streaming

def test_replica_told_spec_primary_empty_stops_its_receiver_and_reports_where(fleet_factory):
    fleet = fleet_factory(instances=2)
    primary = fleet.primary()
    replica = fleet.replica(1)
    fleet.sql(primary, "CREATE TABLE items (id serial PRIMARY KEY)", dbname="app", user="app")
    fleet.sql(primary, "INSERT INTO items SELECT FROM generate_series(1, 10)", dbname="app", user="app")
    wait_for(lambda: count(fleet, replica) == 10, "the rows on the replica")
    streaming = wait_for(lambda: (s := fleet.status(replica)).get("walReceiver") == "streaming" and s,
                         "walReceiver streaming")
    assert streaming["ready"] is True and streaming["following"] == primary

    asked = time.monotonic()
    generation = fleet.store.update_spec(replica, primary="")
    status = wait_for(lambda: (s := fleet.status(replica)).get("walReceiver") == "stopped"
                      and s.get("following") == "" and s, "walReceiver stopped, following ''", 10, 0.01)
    answered = time.monotonic() - asked
    print(f"\nspec.primary '' -> status walReceiver stopped, following '': {answered * 1000:.0f} ms")
    assert answered < 2.0
    assert fleet.sql(replica, "SELECT count(*) FROM pg_stat_wal_receiver") == [(0,)]
    assert status["receivedLSN"] and status["replayLSN"] and status["timeline"] == 1
    assert status["systemIdentifier"] == fleet.status(primary)["systemIdentifier"]
    assert status["ready"] is False  # out of the -ro Service while a failover decides
    health = fleet.agents[replica].health
    assert health.ready is False and "spec.primary is empty" in health.detail["reason"]  # /readyz: 503
    ready_condition = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready_condition["status"] == "False" and "spec.primary is empty" in ready_condition["message"]
    wait_for(lambda: fleet.status(replica).get("observedGeneration") == generation, "generation applied")
    wait_for(lambda: replication_rows(fleet, primary) == [], "the primary to see no standby")

    # The primary writes on; nothing reaches the replica, and receivedLSN stays where it stopped.
    stopped_at = status["receivedLSN"]
    fleet.sql(primary, "INSERT INTO items SELECT FROM generate_series(1, 10)", dbname="app", user="app")
    time.sleep(1.5)
    assert count(fleet, replica) == 10
    assert fleet.status(replica)["receivedLSN"] == stopped_at
    assert fleet.sql(replica, "SHOW primary_conninfo") == [("",)]
    assert fleet.sql(replica, "SHOW recovery_target_timeline") == [("latest",)]
    assert fleet.sql(primary, "SHOW max_slot_wal_keep_size") == [("1GB",)]

    # Its pod restarts meanwhile: it comes back not streaming, and still says where it is.
    fleet.stop(replica)
    fleet.start(replica)
    restarted = wait_for(lambda: (s := fleet.status(replica)).get("phase") == "Running"
                         and s.get("walReceiver") == "stopped" and s.get("following") == "" and s, "restarted", 30)
    assert restarted["receivedLSN"] == restarted["replayLSN"]
    assert parse_lsn(restarted["replayLSN"]) >= parse_lsn(stopped_at)
    assert count(fleet, replica) == 10

    # spec.primary names the primary again: streaming from the -rw Service, ready.
    fleet.store.update_spec(replica, primary=primary)
    status = wait_for(lambda: (s := fleet.status(replica)).get("walReceiver") == "streaming"
                      and s.get("following") == primary and s.get("ready") and s, "streaming again", 10)
    wait_for(lambda: count(fleet, replica) == 20, "the rows written meanwhile")
    assert fleet.agents[replica].health.ready is True
    assert fleet.sql(replica, "SHOW primary_slot_name") == [(pgconfig.slot_name(replica),)]


# ------------------------------------------------------------------- demotion and rejoin

class Writer:
    """A session committing in a loop on the primary (through its own port, not the Service):
    when was the last commit acknowledged?"""

    def __init__(self, fleet: Fleet, name: str):
        self.fleet, self.name = fleet, name
        self.acked: list[tuple[int, float]] = []
        self.error: Exception | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        try:
            with self.fleet.host.connect(self.fleet.settings[self.name], user="app", dbname="app") as conn:
                while not self.stopping.is_set():
                    row = conn.execute("INSERT INTO items DEFAULT VALUES RETURNING id").fetchone()
                    assert row is not None
                    self.acked.append((row[0], time.monotonic()))
        except psycopg.Error as error:
            self.error = error

    def start(self) -> Writer:
        self.thread.start()
        wait_for(lambda: len(self.acked) > 100, "the writer committing")
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)


def test_demoted_primary_stops_at_once_rewinds_and_follows_the_promoted_replica(fleet_factory):
    fleet = fleet_factory(instances=3)
    old = fleet.primary()
    r1, r2 = fleet.replica(1), fleet.replica(2)
    fleet.sql(old, "CREATE TABLE items (id serial PRIMARY KEY)", dbname="app", user="app")
    for name in (r1, r2):
        wait_for(lambda name=name: fleet.sql(name, "SELECT to_regclass('items') IS NOT NULL", dbname="app")[0][0],
                 f"the table on {name}")
    # Failover, step 1: both replicas stop streaming and say where.
    for name in (r1, r2):
        fleet.store.update_spec(name, primary="")
    for name in (r1, r2):
        wait_for(lambda name=name: (s := fleet.status(name)).get("walReceiver") == "stopped"
                 and s.get("following") == "" and s, f"{name} stopped")
    writer = Writer(fleet, old).start()

    # The operator demotes the primary while a session commits in a loop: stopped at once.
    asked = time.monotonic()
    fleet.store.update_spec(old, role="replica", primary="")
    wait_for(lambda: writer.error is not None, "the writer's session to end", 10, 0.01)
    last_ack = writer.acked[-1][1] - asked
    stopped = time.monotonic() - asked
    writer.stop()
    print(f"\nrole replica -> last acknowledged commit {last_ack * 1000:.0f} ms after the spec change; "
          f"session gone after {stopped * 1000:.0f} ms")
    assert last_ack < 1.0
    wait_for(lambda: "immediate shutdown request" in fleet.settings[old].postgres_log.read_text(),
             "the immediate shutdown of the old primary", 5)
    # An immediate shutdown leaves no clean end in pg_control, so the old primary recovers as a
    # standby that follows no one and reports where its WAL ends: what the operator takes as an
    # answer from an instance that can acknowledge no commit (pgop.cluster.failover).
    wait_for(lambda: (s := fleet.status(old)).get("role") == "replica" and s.get("walReceiver") == "stopped"
             and s.get("following") == "" and s, "the old primary back as a standby following no one", 30)
    assert fleet.sql(old, "SELECT pg_is_in_recovery()")[0][0]
    acked = {row_id for row_id, _ in writer.acked}

    # r1 is promoted; the others follow it.
    promoted = fleet.promote(r1)
    assert promoted["timeline"] == 2
    for name in (r2, old):
        fleet.store.update_spec(name, primary=r1)

    # The other replica follows the new timeline; the old primary rewinds and follows too.
    wait_for(lambda: (s := fleet.status(r2)).get("timeline") == 2 and s.get("walReceiver") == "streaming"
             and s.get("following") == r1 and s.get("ready"), f"{r2} following {r1} on timeline 2", 30)
    status = wait_for(lambda: (s := fleet.status(old)).get("role") == "replica" and s.get("ready")
                      and s.get("timeline") == 2 and s, "the old primary rejoined as a replica", 90)
    rejoined = next(c for c in status["conditions"] if c["type"] == "Rejoined")
    assert rejoined["status"] == "True" and rejoined["reason"] == "Rewound", rejoined
    print(f"rejoin: {rejoined['message']}")
    assert status["following"] == r1 and status["walReceiver"] == "streaming"
    assert (fleet.settings[old].pgdata / "standby.signal").exists()

    # Nothing the new primary has was never acknowledged; the rewound one has exactly its rows.
    on_new = {row[0] for row in fleet.sql(r1, "SELECT id FROM items", dbname="app")}
    assert on_new <= acked
    fleet.sql(r1, "INSERT INTO items DEFAULT VALUES", dbname="app", user="app")
    total = count(fleet, r1)
    for name in (old, r2):
        wait_for(lambda name=name: count(fleet, name) == total, f"{name} caught up with {r1}")
    assert {row[0] for row in fleet.sql(old, "SELECT id FROM items", dbname="app")} == \
        {row[0] for row in fleet.sql(r1, "SELECT id FROM items", dbname="app")}
    assert sorted(replication_rows(fleet, r1)) == sorted([old, r2])
    assert fleet.status(old)["systemIdentifier"] == fleet.status(r1)["systemIdentifier"]


def test_switchover_demotion_is_fast_and_loses_no_acknowledged_commit(fleet_factory):
    fleet = fleet_factory(instances=2)
    old = fleet.primary()
    new = fleet.replica(1)
    fleet.sql(old, "CREATE TABLE items (id serial PRIMARY KEY)", dbname="app", user="app")
    wait_for(lambda: fleet.sql(new, "SELECT to_regclass('items') IS NOT NULL", dbname="app")[0][0], "the table")
    writer = Writer(fleet, old).start()
    # A switchover demotes the primary while the replica still follows it (spec.primary: old).
    asked = time.monotonic()
    fleet.store.update_spec(old, role="replica", primary="")
    wait_for(lambda: writer.error is not None, "the writer's session to end", 10, 0.01)
    writer.stop()
    last_ack = writer.acked[-1][1] - asked
    wait_for(lambda: not fleet.agents[old].postmaster.is_running(), "the old primary stopped", 30)
    print(f"\nswitchover: last acknowledged commit {last_ack * 1000:.0f} ms after the spec change, "
          f"stopped after {(time.monotonic() - asked) * 1000:.0f} ms")
    assert last_ack < 1.0
    log = fleet.settings[old].postgres_log.read_text()
    assert "fast shutdown request" in log and "immediate shutdown request" not in log
    acked = {row_id for row_id, _ in writer.acked}
    # The replica received everything (the shutdown checkpoint too): no acknowledged commit lost.
    fleet.store.update_spec(new, primary="")
    wait_for(lambda: fleet.status(new).get("following") == "", f"{new} stopped streaming")
    fleet.promote(new)
    assert acked <= {row[0] for row in fleet.sql(new, "SELECT id FROM items", dbname="app")}
    fleet.store.update_spec(old, primary=new)
    status = wait_for(lambda: (s := fleet.status(old)).get("ready") and s.get("timeline") == 2 and s,
                      "the old primary following the new one", 60)
    rejoined = next(c for c in status["conditions"] if c["type"] == "Rejoined")
    print(f"rejoin: {rejoined['message']}")
    assert rejoined["status"] == "True" and "no rewind was required" in rejoined["message"]


def test_a_replica_ahead_of_the_promoted_one_diverged_and_is_rewound(fleet_factory, monkeypatch):
    from pgop.agent import loop
    monkeypatch.setattr(loop, "DIVERGED_PATIENCE", 3.0)
    fleet = fleet_factory(instances=3)
    old = fleet.primary()
    behind, ahead = fleet.replica(1), fleet.replica(2)
    fleet.sql(old, "CREATE TABLE items (id serial PRIMARY KEY)", dbname="app", user="app")
    wait_for(lambda: fleet.sql(behind, "SELECT to_regclass('items') IS NOT NULL", dbname="app")[0][0], "the table")
    # One replica stops streaming; the other receives more of timeline 1 (an async tail).
    fleet.store.update_spec(behind, primary="")
    wait_for(lambda: fleet.status(behind).get("following") == "", f"{behind} stopped")
    fleet.sql(old, "INSERT INTO items SELECT FROM generate_series(1, 100)", dbname="app", user="app")
    wait_for(lambda: count(fleet, ahead) == 100, f"{ahead} has the tail")
    fleet.stop(old)
    fleet.store.update_spec(old, role="replica", primary="")
    # The operator promotes the one that is behind (say, the other was not answering then).
    fleet.store.update_spec(ahead, primary="")
    fleet.promote(behind)
    fleet.store.update_spec(ahead, primary=behind)
    # Timeline 2 forked before what it replayed: it cannot follow; the agent rewinds it.
    status = wait_for(lambda: (s := fleet.status(ahead)).get("timeline") == 2 and s.get("ready") and s,
                      f"{ahead} rewound onto timeline 2", 90)
    rejoined = next(c for c in status["conditions"] if c["type"] == "Rejoined")
    assert rejoined["status"] == "True" and rejoined["reason"] == "Rewound", rejoined
    assert count(fleet, ahead) == count(fleet, behind) == 0


def failed_over_with_rows(fleet: Fleet, rows: int) -> tuple[str, str]:
    """The primary stopped and its replica promoted, which then took `rows` rows in app.items:
    (the old primary, the new one)."""
    old = fleet.primary()
    new = fleet.replica(1)
    fleet.sql(old, "CREATE TABLE items (id serial PRIMARY KEY)", dbname="app", user="app")
    wait_for(lambda: fleet.sql(new, "SELECT to_regclass('items') IS NOT NULL", dbname="app")[0][0], "the table")
    fleet.stop(old)
    fleet.promote(new)
    fleet.sql(new, f"INSERT INTO items SELECT FROM generate_series(1, {rows})", dbname="app", user="app")
    return old, new


def rejoined_as_replica(fleet: Fleet, old: str, new: str) -> tuple[dict, dict]:
    """The old primary told to follow `new` and its agent started: its status once it is a ready
    replica, and its Rejoined condition."""
    fleet.store.update_spec(old, role="replica", primary=new)
    fleet.start(old)
    status = wait_for(lambda: (s := fleet.status(old)).get("ready") and s.get("role") == "replica" and s,
                      f"{old} back as a replica of {new}", 120)
    return status, next(c for c in status["conditions"] if c["type"] == "Rejoined")


def test_failed_rewind_falls_back_to_a_clone(fleet_factory):
    fleet = fleet_factory(instances=2)
    old, new = failed_over_with_rows(fleet, 50)  # the old primary's pod went away
    # A data directory pg_rewind cannot work with.
    (fleet.settings[old].pgdata / "global" / "pg_control").unlink()
    status, rejoined = rejoined_as_replica(fleet, old, new)
    assert rejoined["status"] == "True" and rejoined["reason"] == "Recloned", rejoined
    assert "pg_rewind failed" in rejoined["message"]
    # The agent beat while it rewound and cloned (the operator sees it at work, not dead).
    assert any(patch.get("phase") == "Rejoining" and "rejoining as a replica" in (patch.get("message") or "")
               for name, patch in fleet.store.patches if name == old)
    assert count(fleet, old) == 50
    assert status["timeline"] == 2 and status["walReceiver"] == "streaming"


def test_a_rejoin_whose_clone_failed_clones_again_when_the_agent_starts(fleet_factory):
    """What a rejoin leaves when pg_rewind failed and so did the clone after it (the primary
    changed under it: two failovers in a row): its marker next to PGDATA and an emptied volume.
    The agent started again on it clones the primary spec.primary names, instead of reporting a
    lost data directory for good."""
    fleet = fleet_factory(instances=2)
    old, new = failed_over_with_rows(fleet, 30)
    settings = fleet.settings[old]
    rejoin.rewind_failed_marker(settings).write_text("pg_rewind: fatal: could not open file\n")
    bootstrap.empty_data_directory(settings, Runner(settings.run_as))
    assert not (settings.pgdata / "PG_VERSION").exists()
    status, rejoined = rejoined_as_replica(fleet, old, new)
    assert rejoined["status"] == "True" and rejoined["reason"] == "Recloned", rejoined
    assert count(fleet, old) == 30
    assert status["walReceiver"] == "streaming"
    assert not rejoin.rewind_failed_marker(settings).exists()


def test_rejoin_waits_while_the_rw_service_has_no_primary(fleet_factory, rw):
    fleet = fleet_factory(instances=2)
    old = fleet.primary()
    fleet.replica(1)
    rw.move(None)  # the Service selects nobody while a failover is under way
    fleet.store.update_spec(old, role="replica")
    status = wait_for(lambda: (s := fleet.status(old)).get("phase") in ("Demoting", "Rejoining", "Stopped")
                      and "not reachable" in (s.get("message") or "") and s, "the rejoin waiting", 30)
    assert status["ready"] is False
    data = fleet.settings[old].pgdata
    assert (data / "PG_VERSION").exists() and not (data / "standby.signal").exists()  # untouched


# ------------------------------------------------------------------------------ isolation

def test_isolated_primary_stops_itself_and_starts_again_when_the_api_server_is_back(fleet_factory):
    fleet = fleet_factory(instances=2, settings_changes={"isolation_timeout": 3.0})
    primary = fleet.primary()
    replica = fleet.replica(1)
    agent = fleet.agents[primary]

    # The API server goes away (each request hangs 2.5 s, then fails), a replica still streams:
    # the primary runs on.
    fleet.store.hang, fleet.store.fail = 2.5, True
    time.sleep(5)
    assert agent.postmaster.is_running()

    # ... and the replica too: isolated, stopped (immediate) after the timeout.
    lost = time.monotonic()
    fleet.stop(replica)
    wait_for(lambda: not agent.postmaster.is_running(), "the isolated primary to stop", 15)
    took = time.monotonic() - lost
    print(f"\nisolated primary stopped {took:.1f}s after its last replica went (isolationTimeout 3s, "
          "API server already gone)")
    assert 2.5 <= took < 4.5  # the timeout plus the watchdog's look, whatever the hung requests
    assert "immediate shutdown request" in fleet.settings[primary].postgres_log.read_text()
    time.sleep(1)
    assert not agent.postmaster.is_running()  # stays stopped while isolated

    # The API server is back: the agent says why it stopped, and (still the primary) starts.
    fleet.store.hang, fleet.store.fail = 0.0, False
    said = wait_for(lambda: [m for name, patch in fleet.store.patches if name == primary
                             and "isolated" in (m := patch.get("message") or "")], "the isolation reported", 15)
    print(f"reported: {said[0]}")
    wait_for(lambda: agent.postmaster.is_running() and fleet.sql(primary, "SELECT 1"), "postgres started again", 30)
    assert fleet.wait_ready(primary)["role"] == "primary"


def test_single_instance_is_never_isolated(fleet_factory):
    fleet = fleet_factory(instances=1, settings_changes={"isolation_timeout": 1.0})
    primary = fleet.primary()
    fleet.store.fail = True
    time.sleep(3)
    assert fleet.agents[primary].postmaster.is_running()
    fleet.store.fail = False
