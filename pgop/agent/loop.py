"""The agent's loop, top to bottom: read the spec, see what runs, decide, act, report.

Every `interval` seconds, sooner while it is changing something, and at once when its PgInstance
changes (a watch of that one object wakes the loop; the poll stays as the fallback), one turn:
1. read my PgInstance and my cluster's (keep the last spec if the API server is unreachable;
   an unknown cluster leaves slots and synchronous names as they are),
2. observe postgres (running? role, LSNs, pending restarts, standbys, slots) and the config files,
3. compute what is wanted (config rendered from the spec, slots, synchronous names),
4. `ha.decide` (pure), 5. carry the actions out, 6. write the PgInstance status (the heartbeat).

Between 2 and 4 the turn also judges isolation (a primary that reached neither the API server nor
a streaming replica for `isolation_timeout` is stopped at once) and a replica stuck on an old
timeline (rewound); both decisions are in `ha`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg

from pgop.agent import bootstrap, config, exporter, ha, health, local, rejoin, replication, status, streaming
from pgop.agent.commands import CommandError, Runner
from pgop.agent.kube import REQUEST_TIMEOUT, InstanceStore
from pgop.agent.observed import PostgresState
from pgop.agent.postmaster import Postmaster, PostmasterError, reap_orphans
from pgop.agent.settings import AgentSettings, SettingsError
from pgop.agent.state import one_row, read_state, with_archive_refusal
from pgop.kernel import pgconfig
from pgop.kernel.conditions import condition, rfc3339
from pgop.kernel.meta import RELOAD_FIELD, RESTART_FIELD
from pgop.kernel.model import PRIMARY, REPLICA, Instance

log = logging.getLogger(__name__)

HEALTHY_AFTER = 30.0  # seconds up and accepting before past failed starts are forgotten
START_WAIT = 10.0  # seconds a turn waits for a starting postgres; then the next turns watch it
ACTION_ALLOWANCE = 300.0  # seconds /healthz stays green during one action (a shutdown checkpoint)
REJOIN_ALLOWANCE = 24 * 3600.0  # a rejoin may clone the whole database: the kubelet must not kill it
RELOAD_CONFIRM_TIMEOUT = 10.0
RECEIVER_STOP_TIMEOUT = 5.0  # seconds a reload that ends streaming waits for the WAL receiver to go
DIVERGED_PATIENCE = 15.0  # seconds a replica may fail to stream from a later timeline before a rewind
CONDITION_REJOINED = "Rejoined"
WATCHDOG_EVERY = 0.5  # seconds between two looks of the isolation watchdog
POSTMASTER_POLL = 0.1  # seconds between two looks at the postmaster while the loop idles


# What carries out one action: (action, its decision, what is wanted) -> go on with the next?
Effect = Callable[[ha.Action, ha.Decision, ha.Wanted], bool]


def request_token(instance: Instance, field: str) -> str:
    return str(instance.raw_spec.get(field) or "")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Agent:
    def __init__(self, settings: AgentSettings, store: InstanceStore, runner: Runner | None = None,
                 now=utcnow):
        self.settings = settings
        self.store = store
        self.runner = runner or Runner(settings.run_as)
        self.now = now
        self.postmaster = Postmaster(settings, self.runner)
        self.files = config.ConfigFiles(settings.pgdata)
        self.health = health.Health(stale_after=max(30.0, 6 * settings.interval))
        self.stopping = threading.Event()
        self.instance: Instance | None = None
        self.cluster: list[Instance] | None = None
        self.applied_generation: int | None = None
        self.failed_starts = 0
        self.expect_running = False
        self.exit_code: int | None = None
        self.last_state: PostgresState | None = None
        self.last_decision: ha.Decision | None = None
        self.message: str | None = None
        self.previous_status: dict = {}  # as last read: other writers' conditions are kept
        self.status_written_at: float | None = None  # monotonic; heartbeat-only writes wait for refresh
        self.status_written_for: int | None = None  # the spec generation read before that write
        self.lease_renewed_at = float("-inf")  # monotonic: the last renewal of the liveness Lease
        self.lease_failed_at = float("-inf")  # monotonic: the last renewal that failed
        self.instance_body: dict[str, Any] | None = None  # as last read: the Lease's owner
        self.turns = 0
        # Set by a change of the PgInstance (the watch), by stop(): the loop's wait ends at once.
        self.wakeup = threading.Event()
        self.watcher: threading.Thread | None = None
        started = time.monotonic()
        self.api_ok_at = started  # last successful read or status patch
        self.replica_ok_at = started  # last time this primary had a streaming replica (or was none)
        self.streaming_at = started  # last time this replica's WAL receiver streamed (or was none)
        self.receiving = False  # the last look saw this replica's WAL receiver really streaming
        self.last_replayed: str | None = None  # a replica's replay LSN at the last look
        self.known_cluster: list[Instance] = []  # the last list of the cluster that was read
        self.isolated: str | None = None
        self.notice: str | None = None  # said in the status once the API server hears it
        self.last_received: tuple[str | None, str | None] = (None, None)  # (system id, receivedLSN)
        self.following: str | None = None
        self.rejoined: dict | None = None  # the Rejoined condition, while this agent runs
        self.rejoin_waits = False  # the last rejoin found no primary: look again after `interval`
        self.replica_timeline = 0  # the highest timeline this replica was seen on (they only grow)
        self.granted_for: float | None = None  # the postmaster start the role grants were made in
        self.certificates: tuple[float | None, str] | None = None  # (postmaster start, files' digest)
        # The `pgop restart` / `pgop reload` tokens (spec.restartRequestedAt, spec.reloadRequestedAt)
        # the running postmaster has honoured. Set from the first spec read: the postmaster this
        # agent (PID 1) starts next starts after any request made so far.
        self.restarted_for: str | None = None
        self.reloaded_for: str | None = None
        self.loaded_certificates: dict[str, Any] | None = None  # status.certificates
        self.effects: dict[str, Effect] = {
            ha.STOP: self._stop,
            ha.STOP_NOW: self._stop_now,
            ha.WRITE_CONFIG: self._write_config,
            ha.REJOIN: self._rejoin,
            ha.STANDBY: self._standby,
            ha.START: self._start_postgres,
            ha.RESTART: self._restart_postgres,
            ha.RELOAD: self._reload,
            ha.PROMOTE: self._promote,
            ha.CREATE_SLOT: self._create_slot,
            ha.DROP_SLOT: self._drop_slot,
            ha.GIVE_UP: self._give_up,
        }

    # ------------------------------------------------------------------------------ the volume

    def bootstrap_volume(self) -> int:
        """Fill the volume the pod was made for (pgop.agent.bootstrap.before_postgres) before the
        loop starts Postgres on it; an exit code when that failed (the kubelet starts the
        container again, with its back-off, and a half-made data directory is emptied first).
        /healthz stays green meanwhile (a clone may take hours); a SIGTERM ends it at once."""
        def interrupted(signum, _frame):
            log.info("received %s while bootstrapping: stopping", signal.Signals(signum).name)
            raise SystemExit(128 + signum)

        previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGTERM, signal.SIGINT)} \
            if threading.current_thread() is threading.main_thread() else {}
        self.health.working(float("inf"))
        try:
            bootstrap.before_postgres(self.settings, self.store, self.runner)
        except Exception as error:  # the container's last log lines are its termination message
            log.error("bootstrap failed: %s", error,
                      exc_info=not isinstance(error, (bootstrap.BootstrapError, CommandError, SettingsError)))
            return 1
        finally:
            self.health.busy_until = 0.0
            self.health.started = time.monotonic()  # the loop's first turn has its time from now
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    # ------------------------------------------------------------------------------ the loop

    def run(self) -> int:
        self.start_watch()
        if self.settings.isolation_timeout > 0:
            threading.Thread(target=self.watchdog, name=f"isolation-{self.settings.instance}", daemon=True).start()
        while not self.stopping.is_set():
            self.wakeup.clear()
            acted = self.turn()
            if self.exit_code is not None:
                break
            self.idle(0.2 if acted else self.settings.interval)
        self.shutdown()
        return self.exit_code or 0

    def grant_replication_role(self) -> None:
        """On a primary, once per postmaster start: what the replication role may run besides
        streaming (pg_rewind's reads, a checkpoint, a WAL switch), so no network login needs the
        superuser. Idempotent; clusters made before it get it on their next primary start."""
        state, started = self.last_state, self.postmaster.started_at
        if state is None or state.role != PRIMARY or not state.accepting or started is None \
                or self.granted_for == started:
            return
        try:
            with local.connect(self.settings) as conn:
                replication.grant_replication_role_rights(conn, pgconfig.REPLICATION_USER)
            self.granted_for = started
        except psycopg.Error as error:
            log.warning("cannot grant the replication role its rights: %s", str(error).strip())

    def reload_renewed_certificates(self) -> None:
        """The operator renews a certificate before it expires and the kubelet swaps the mounted
        files; Postgres reads certificate files at start and on SIGHUP. A reload, no restart:
        sessions stay, new connections get the new certificate."""
        tls = self.settings.tls
        started = self.postmaster.started_at
        if tls is None or started is None:
            return
        digest = certificates_digest(tls)
        if self.certificates is None or self.certificates[0] != started:
            self.certificates = (started, digest)  # what this postmaster read when it started
            self.loaded_certificates = loaded_certificates(tls)
            return
        if self.certificates[1] != digest:
            log.info("the certificates in %s changed (renewed): reloading postgres", tls.directory)
            self.postmaster.reload()
            self.certificates = (started, digest)
            self.loaded_certificates = loaded_certificates(tls)

    def idle(self, seconds: float) -> None:
        """Waits `seconds`, or less: until the PgInstance changes (the watch sets `wakeup`), the
        postmaster exits, or a WAL receiver that was streaming ends. A crashed postgres is
        restarted within POSTMASTER_POLL, not a heartbeat interval later: a primary's restart in
        place is most of the write gap it causes. A stream that ended (its primary shut down in a
        switchover, having sent everything) is reported at once: the operator promotes the target
        when it reads that it received the old primary's last WAL. (A receiver that only retries,
        refused each time, wakes nobody: that would be a turn every retry.)"""
        deadline = time.monotonic() + seconds
        watch_receiver = self.expect_running and self.receiving
        receiver = self.postmaster.wal_receiver_pid() if watch_receiver else None
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.wakeup.wait(min(left, POSTMASTER_POLL)):
                return
            if self.expect_running and not self.postmaster.is_running():
                return
            if watch_receiver and self.postmaster.wal_receiver_pid() != receiver:
                return

    def start_watch(self) -> None:
        """A thread that wakes the loop when the PgInstance changes, if the store can watch."""
        watch = getattr(self.store, "watch", None)
        if watch is None or self.watcher is not None:
            return
        self.watcher = threading.Thread(target=watch, args=(self.settings.instance, self.wakeup.set, self.stopping,
                                                            self.settings.cluster),
                                        name=f"watch-{self.settings.instance}", daemon=True)
        self.watcher.start()

    def watchdog(self) -> None:
        """Isolation, judged every WATCHDOG_EVERY seconds whatever the loop does: a turn can wait for
        an API server that does not answer (two requests of kube.REQUEST_TIMEOUT each), and the
        operator promotes another instance isolationTimeout plus a margin after this one's last
        heartbeat. Once the API server has been silent for the timeout, it asks Postgres itself
        whether a replica streams; isolated, it sends the immediate shutdown at once (the loop then
        sees a stopped, isolated primary and leaves it stopped)."""
        timeout = self.settings.isolation_timeout
        while not self.stopping.wait(WATCHDOG_EVERY):
            state = self.last_state
            if self.isolated or state is None or state.role != PRIMARY or time.monotonic() - self.api_ok_at < timeout:
                continue
            try:
                with local.connect(self.settings, timeout=1) as conn:
                    if any(s.state == "streaming" for s in replication.read_standbys(conn)):
                        self.replica_ok_at = time.monotonic()
            except psycopg.Error:
                pass  # no answer: no streaming replica seen either
            peers = len(streaming.cluster_members(self.settings.instance, self.known_cluster))
            why = ha.isolation(time.monotonic(), self.api_ok_at, self.replica_ok_at, timeout, peers)
            if why and not self.isolated:
                log.error("%s", why)
                self.notice = f"{why} (at {rfc3339(self.now())})"
                self.isolated = why
                self.expect_running = False
                self.postmaster.signal_shutdown("immediate")

    def stop(self) -> None:
        """Stop the loop and ask postgres for a fast shutdown now (safe in a signal handler): a
        SIGTERM must reach postgres even while the loop is busy."""
        self.stopping.set()
        self.wakeup.set()
        self.postmaster.signal_shutdown("fast")

    def turn(self) -> bool:
        """One pass of read, observe, decide, act, report. True when it acted."""
        if self.stopping.is_set():
            return False
        self.turns += 1
        self.message = None
        if os.getpid() == 1:
            reap_orphans(self.runner.children)
        try:
            instance = self.read_spec()
            if instance is None:
                self.report(None, None)
                return False
            if not (self.settings.pgdata / "PG_VERSION").exists():
                if self.clone_unfinished(instance):
                    return self.clone_again(instance)
                self.message = bootstrap.no_data_directory(self.settings)
                self.report(instance, ha.Decision((), ha.FAILED, self.message))
                return False
            if self.restarted_for is None:
                self.restarted_for = request_token(instance, RESTART_FIELD)
                self.reloaded_for = request_token(instance, RELOAD_FIELD)
            actual = self.observe()
            wanted = self.want(instance, actual)
            decision = ha.decide(wanted, actual, self.settings.max_start_attempts)
            self.last_decision = decision
            for action in decision.actions:
                log.info("%s", action)
            self.act(decision, wanted)
            self.grant_replication_role()
            self.reload_renewed_certificates()
            if decision.applied:
                self.applied_generation = instance.generation
            if decision.actions and not self.stopping.is_set():
                # Report what the actions made of it, not what was before (a receiver that
                # stopped, a promotion): the operator waits for exactly that. What is left to do
                # is the next turn's; nothing left at all: the spec is applied now.
                after = ha.decide(wanted, self.observe(), self.settings.max_start_attempts)
                if after.applied and not after.actions:
                    self.applied_generation = instance.generation
                decision = self.last_decision = after
            self.report(instance, decision, wanted=wanted)
            return bool(decision.actions) and not self.rejoin_waits
        except Exception as error:  # the loop must turn whatever happens; the next turn retries
            log.exception("agent turn failed")
            self.message = f"agent error: {error}"
            self.report(self.instance, self.last_decision, healthy=False)
            return False

    # ------------------------------------------------------------------------------ 1. read

    def read_spec(self) -> Instance | None:
        try:
            body = self.store.get_instance(self.settings.instance)
            # From a store's watch cache: the API server was last heard when the watch delivered
            # (isolation must not count a cached read as an answer).
            self.api_ok_at = max(self.api_ok_at, getattr(self.store, "contact_at", None) or time.monotonic())
            if body is None:
                self.message = f"PgInstance {self.settings.instance} does not exist"
                return self.instance
            self.instance = Instance.from_object(body)
            self.instance_body = body
            self.previous_status = body.get("status") or {}
        except Exception as error:
            log.warning("cannot read PgInstance %s: %s", self.settings.instance, error)
            self.message = f"cannot read the PgInstance ({error}); running on the last spec seen"
            self.cluster = None  # the list would wait for the same unreachable API server
            return self.instance
        try:
            self.cluster = [Instance.from_object(b) for b in self.store.list_instances(self.settings.cluster)]
            self.known_cluster = self.cluster
        except Exception as error:
            log.warning("cannot list the PgInstances of %s: %s", self.settings.cluster, error)
            self.cluster = None
        return self.instance

    # --------------------------------------------------------------------------- 2. observe

    def observe(self) -> ha.Actual:
        running = self.postmaster.is_running()
        if self.expect_running and not running:
            self.failed_starts += 1
            self.expect_running = False
            log.error("postgres exited unexpectedly (exit code %s)", self.postmaster.last_exit)
        state = PostgresState()
        crashed = False
        if not running and self.settings.pgdata.joinpath("global", "pg_control").exists():
            # Stopped on purpose (demoted, switchover): report where it ended, for the operator.
            stopped = rejoin.stopped_position(self.settings, self.runner)
            crashed = stopped is None
            if stopped is not None:
                lsn, timeline, system_identifier = stopped
                state = PostgresState(lsn=lsn, timeline=timeline, system_identifier=system_identifier)
        if running:
            try:
                with local.connect(self.settings) as conn:
                    state = with_archive_refusal(read_state(conn), self.settings.pgdata)
            except psycopg.Error as error:
                state = PostgresState(error=str(error).strip())
            started = self.postmaster.started_at
            if state.accepting and started is not None and time.monotonic() - started > HEALTHY_AFTER:
                self.failed_starts = 0
        self.last_state = state
        previous_received = self.last_received[1] if self.last_received else None
        if state.received_lsn:
            self.last_received = (state.system_identifier, state.received_lsn)
        now = time.monotonic()
        if state.role == REPLICA or (state.role == PRIMARY and any(s.state == "streaming" for s in state.standbys)):
            self.replica_ok_at = now
        primary_timeline = self._primary_timeline()
        self.receiving = ha.receiving(state, primary_timeline, previous_received)
        replaying = ha.replaying(state, self.last_replayed)
        self.last_replayed = state.lsn if state.role == REPLICA else None
        if state.role != REPLICA or self.receiving or replaying:
            self.streaming_at = now
        if state.role == PRIMARY or self.isolated:
            peers = len(streaming.cluster_members(self.settings.instance, self.known_cluster))
            isolated = ha.isolation(now, self.api_ok_at, self.replica_ok_at, self.settings.isolation_timeout, peers)
            if self.isolated and not isolated:
                log.info("the API server answers again; isolation is over")
            elif isolated and not self.isolated:
                log.error("%s", isolated)
                self.notice = f"{isolated} (at {rfc3339(self.now())})"
            self.isolated = isolated
        if state.role == REPLICA and state.timeline:
            self.replica_timeline = max(self.replica_timeline, state.timeline)
            state = dataclasses.replace(state, timeline=self.replica_timeline)
            self.last_state = state
        diverged = ha.diverged(state, primary_timeline, now - self.streaming_at, DIVERGED_PATIENCE)
        return ha.Actual(running=running, state=state, written=config.read_written(self.files),
                         standby_signal=self.files.standby_signal.exists(), failed_starts=self.failed_starts,
                         isolated=self.isolated, diverged=diverged, crashed=crashed,
                         restarted_for=self.restarted_for, reloaded_for=self.reloaded_for)

    def _primary_timeline(self) -> int | None:
        """The timeline the primary reports, if the cluster's list says who that is."""
        instance = self.instance
        wanted = instance.raw_spec.get("primary") if instance is not None else None
        for other in self.known_cluster:
            if other.name == self.settings.instance or other.spec.role != PRIMARY or other.status.role != PRIMARY:
                continue
            if wanted and other.name != wanted:
                continue
            return other.status.timeline
        return None

    # ------------------------------------------------------------------------------ 3. want

    def want(self, instance: Instance, actual: ha.Actual | None) -> ha.Wanted:
        """`actual` None: nothing to observe (no data directory), which only a replica asks."""
        spec = instance.spec
        primary = spec.role == PRIMARY
        slots = None
        if primary and self.cluster is not None:
            sync = streaming.synchronous_names(spec.synchronous_replicas, spec.synchronous_mode, instance.name,
                                               self.cluster, actual.state.standbys if actual else ())
            slots = streaming.wanted_slots(instance.name, self.cluster)
        elif primary:
            sync = ((actual.written.settings if actual else None) or {}).get("synchronous_standby_names", "")
        else:
            sync = ""
        following = spec_primary(instance)
        settings = config.desired_settings(self.settings, spec, replica=not primary,
                                           synchronous_standby_names=sync, streaming=following != "")
        handover = not primary and self.cluster is not None and any(
            spec_primary(other) == instance.name for other in streaming.cluster_members(instance.name, self.cluster))
        if not primary and self.cluster is not None and not handover:
            slots = frozenset()  # a replica nobody follows keeps no slots (see ha.decide)
        return ha.Wanted(role=spec.role, fenced=spec.fenced, settings=settings, hba=config.hba_text(self.settings, spec),
                         slots=slots, postgres_version=spec.postgres_version, primary=following,
                         handover=handover, restart_token=request_token(instance, RESTART_FIELD),
                         reload_token=request_token(instance, RELOAD_FIELD))

    # ------------------------------------------------------------------------------- 5. act

    def act(self, decision: ha.Decision, wanted: ha.Wanted) -> None:
        """Carry the actions out in order, one effect each; an effect that returns False ends the
        turn's actions (a postgres that did not start, giving up). An action kind without an effect
        fails the turn before any action runs."""
        effects = [(action, self._effect(action.kind)) for action in decision.actions]
        for action, effect in effects:
            if self.stopping.is_set():
                return
            self.health.working(ACTION_ALLOWANCE)
            if not effect(action, decision, wanted):
                return

    def _effect(self, kind: str) -> Effect:
        try:
            return self.effects[kind]
        except KeyError:
            raise LookupError(f"the agent has no effect for action kind {kind!r}") from None

    # One small method per action kind (ha.KINDS): True to go on with the next action.

    def _stop(self, action: ha.Action, decision: ha.Decision, wanted: ha.Wanted) -> bool:
        self.expect_running = False
        self.postmaster.stop("fast")
        return True

    def _stop_now(self, action: ha.Action, decision: ha.Decision, wanted: ha.Wanted) -> bool:
        """Immediate shutdown (SIGQUIT): no session gets to commit during it, unlike smart or
        fast; crash recovery (or pg_rewind) deals with the rest."""
        self.expect_running = False
        self.postmaster.stop("immediate", timeout=10)
        log.warning("stopped postgres (immediate): %s", action.reason)
        return True

    def _rejoin(self, action: ha.Action, decision: ha.Decision, wanted: ha.Wanted) -> bool:
        if self.postmaster.is_running():  # a replica on a timeline it cannot follow: stop it first
            self.expect_running = False
            self.postmaster.stop("fast")
        assert self.instance is not None
        self.rejoined = condition(CONDITION_REJOINED, False, "Rejoining", action.reason)
        self.health.working(REJOIN_ALLOWANCE)
        with self.heartbeats(ha.REJOINING, f"rejoining as a replica: {action.reason}"):
            outcome = rejoin.rejoin(self.settings, self.runner, self.instance.spec, dict(wanted.settings),
                                    wanted.hba)
        self.rejoin_waits = not outcome.done
        if not outcome.done:
            self.message = outcome.message
            self.rejoined = condition(CONDITION_REJOINED, False, "Rejoining", outcome.message)
            log.warning("rejoin: %s", outcome.message)
            return False
        log.info("rejoined: %s", outcome.message)
        self.rejoined = condition(CONDITION_REJOINED, True, outcome.how or "Rejoined", outcome.message)
        self.notice = f"rejoined as a replica: {outcome.message}"
        self.failed_starts = 0
        self.streaming_at = time.monotonic()
        return True

    def clone_unfinished(self, instance: Instance) -> bool:
        """A rejoin emptied this volume to clone the primary (its pg_rewind failed), and the clone
        failed too (the primary changed under it, a second failover): the volume held this
        cluster's data and the rejoin is not done. Without this its instance would stay without a
        data directory for good."""
        return (rejoin.rewind_failed_marker(self.settings).exists() and instance.spec.role == REPLICA
                and bool(spec_primary(instance)))

    def clone_again(self, instance: Instance) -> bool:
        """The unfinished rejoin's clone, again, from the primary spec.primary names now; the next
        turn starts the replica once it is done, or reports why not and tries again."""
        why = "a rejoin's clone of the primary failed and left the volume empty; cloning the primary again"
        decision = ha.Decision((), ha.REJOINING, why)
        done = self._rejoin(ha.Action(ha.REJOIN, why), decision, self.want(instance, None))
        self.report(instance, ha.Decision((), ha.REJOINING, self.message or why))
        return done

    def _write_config(self, action: ha.Action, decision: ha.Decision, wanted: ha.Wanted) -> bool:
        bootstrap.write_passfile(self.settings, self.runner)
        config.write(self.files, dict(wanted.settings), wanted.hba, self.runner.owner)
        return True

    def _standby(self, action: ha.Action, decision: ha.Decision, wanted: ha.Wanted) -> bool:
        log.info("%s", action.reason)
        config.write_standby_signal(self.files, self.runner.owner)
        return True

    def _start_postgres(self, action: ha.Action, decision: ha.Decision, wanted: ha.Wanted) -> bool:
        return self._honour(wanted, self._start(restart=False))

    def _restart_postgres(self, action: ha.Action, decision: ha.Decision, wanted: ha.Wanted) -> bool:
        return self._honour(wanted, self._start(restart=True))

    def _honour(self, wanted: ha.Wanted, started: bool) -> bool:
        """A postmaster that starts reads the files as they are: every request so far is met."""
        if started:
            self.restarted_for, self.reloaded_for = wanted.restart_token, wanted.reload_token
        return started

    def _reload(self, action: ha.Action, decision: ha.Decision, wanted: ha.Wanted) -> bool:
        self.reload()
        self.reloaded_for = wanted.reload_token
        if wanted.primary == "" and wanted.role != PRIMARY:
            self.wait_receiver_gone()
        return True

    def _promote(self, action: ha.Action, decision: ha.Decision, wanted: ha.Wanted) -> bool:
        self.promote()
        return True

    def _create_slot(self, action: ha.Action, decision: ha.Decision, wanted: ha.Wanted) -> bool:
        self.change_slot(ha.CREATE_SLOT, action.target or "")
        return True

    def _drop_slot(self, action: ha.Action, decision: ha.Decision, wanted: ha.Wanted) -> bool:
        self.change_slot(ha.DROP_SLOT, action.target or "")
        return True

    def _give_up(self, action: ha.Action, decision: ha.Decision, wanted: ha.Wanted) -> bool:
        log.error("%s; exiting", action.reason)
        self.message = f"{decision.message or action.reason}"
        self.exit_code = 1
        self.stopping.set()
        return False

    def _start(self, restart: bool) -> bool:
        bootstrap.write_passfile(self.settings, self.runner)
        self.expect_running = True
        try:
            if restart:
                self.postmaster.restart(START_WAIT, wait=False)
            else:
                self.postmaster.start(START_WAIT, wait=False)
            return True
        except PostmasterError as error:
            log.error("%s", error)
            self.message = str(error)
            self.failed_starts += 1
            self.expect_running = False
            self.postmaster.stop("immediate")
            return False

    def reload(self) -> None:
        """SIGHUP, then wait until the postmaster has read the files (pg_conf_load_time moves), so
        the next look at pg_settings.pending_restart sees the new files."""
        # One session: the postmaster signals its children once it has read the files, and this
        # backend takes the new files (and a new pg_conf_load_time) before its next statement.
        with local.connect(self.settings) as conn:
            before = one_row(conn, "SELECT pg_conf_load_time()")[0]
            self.postmaster.reload()
            deadline = time.monotonic() + RELOAD_CONFIRM_TIMEOUT
            while time.monotonic() < deadline:
                time.sleep(0.02)
                if one_row(conn, "SELECT pg_conf_load_time()")[0] != before:
                    return
        log.warning("postgres did not confirm the reload within %ss", RELOAD_CONFIRM_TIMEOUT)

    @contextlib.contextmanager
    def heartbeats(self, phase: str, message: str) -> Iterator[None]:
        """Beat (lastHeartbeat, phase, message) every interval while the loop is busy with one long
        action (a rewind, a clone), so the operator sees an agent at work, not a dead one."""
        done = threading.Event()
        name = self.settings.instance

        def beat() -> None:
            while True:
                try:
                    self.store.patch_status(name, {"lastHeartbeat": rfc3339(self.now()), "phase": phase,
                                                   "ready": False, "message": message})
                    self.api_ok_at = time.monotonic()
                except Exception as error:
                    log.debug("cannot write a heartbeat: %s", error)
                if done.wait(self.settings.interval):
                    return

        thread = threading.Thread(target=beat, name=f"heartbeat-{name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(self.settings.interval + REQUEST_TIMEOUT)

    def wait_receiver_gone(self) -> None:
        """After the reload that empties primary_conninfo: the startup process ends the WAL
        receiver; wait (bounded) until pg_stat_wal_receiver has no row, so the report that follows
        can say `stopped`."""
        deadline = time.monotonic() + RECEIVER_STOP_TIMEOUT
        while time.monotonic() < deadline:
            with local.connect(self.settings) as conn:
                if replication.read_receiver(conn).status is None:
                    return
            time.sleep(0.02)
        log.warning("the WAL receiver did not stop within %ss of the reload", RECEIVER_STOP_TIMEOUT)

    def promote(self) -> None:
        with local.connect(self.settings) as conn:
            promoted = one_row(conn, "SELECT pg_promote(true, 60)")[0]
        if not promoted:
            self.message = "pg_promote() did not finish within 60 s"
        else:
            log.info("promoted to primary")

    def change_slot(self, kind: str, name: str) -> None:
        try:
            with local.connect(self.settings) as conn:
                if kind == ha.CREATE_SLOT:
                    replication.create_slot(conn, name)
                else:
                    replication.drop_slot(conn, name)
        except psycopg.Error as error:
            # e.g. the slot of a replica that is still connected while its pod goes away
            log.warning("%s %s failed: %s", kind, name, str(error).strip())

    # ---------------------------------------------------------------------------- 6. report

    def readiness(self, instance: Instance | None) -> tuple[bool, str]:
        state = self.last_state
        if instance is None or state is None:
            return False, "no PgInstance read yet"
        return ha.readiness(role=instance.spec.role, primary=spec_primary(instance), fenced=instance.spec.fenced,
                            running=self.postmaster.is_running(), state=state,
                            system_identifier=status.primary_system_identifier(self.known_cluster,
                                                                               self.settings.instance))

    def is_ready(self, instance: Instance | None) -> bool:
        return self.readiness(instance)[0]

    def report(self, instance: Instance | None, decision: ha.Decision | None, healthy: bool = True,
               wanted: ha.Wanted | None = None) -> None:
        ready, why_not = self.readiness(instance)
        ready = ready and healthy
        if healthy:
            self.health.turned(ready, {"phase": decision.phase if decision else None,
                                       "role": self.last_state.role if self.last_state else None,
                                       **({} if ready else {"reason": why_not})})
        if instance is None:
            return
        running = self.postmaster.is_running()
        # Stopped: only what pg_control says of a clean shutdown (where it ended), nothing live
        state = self.last_state if self.last_state is not None and (running or self.last_state.role is None) \
            else PostgresState()
        if wanted is not None:
            self.following = ha.following(wanted.primary, state, wanted.settings.get("primary_conninfo", ""),
                                          self.following)
        system_id, last_received = self.last_received
        patch = status.build_status(
            self.settings, now=self.now(), state=state,
            decision=decision, ready=ready, generation=instance.generation,
            applied_generation=self.applied_generation,
            previous_conditions=self.previous_status.get("conditions") or [],
            message=self.message or self.notice, primary_lsn=status.primary_lsn(self.cluster),
            not_ready=why_not,
            received_lsn=ha.received_lsn(state, last_received if system_id == state.system_identifier else None),
            following=self.following, extra_conditions=[self.rejoined] if self.rejoined else [],
        )
        previous = instance.status.replica_sync_states
        if state.role == PRIMARY and instance.spec.role == PRIMARY and self.cluster is not None:
            # each replica's sync state as this primary sees it, on its own status
            patch["replicaSyncStates"] = status.replica_sync_states(
                state.standbys, streaming.cluster_members(instance.name, self.cluster), previous)
        elif previous is not None:
            patch["replicaSyncStates"] = None
        if self.loaded_certificates is not None and running:
            patch["certificates"] = self.loaded_certificates
        since = None if self.status_written_at is None or self.status_written_for != instance.generation \
            else time.monotonic() - self.status_written_at
        beat_every = status.refresh_for(instance, state, self.settings.status_refresh)
        leased = self.may_lease()
        if not status.worth_writing(self.previous_status, patch, since,
                                    self.settings.report_refresh if leased else beat_every):
            # Nothing new to say: the status as stored (read this turn) is still true. The Lease's
            # renewal says so, and that the agent is alive (pgop.kernel.liveness).
            beat_at = max(self.status_written_at or float("-inf"), self.lease_renewed_at)
            if time.monotonic() - beat_at < beat_every or (leased and self.renew_lease(instance)):
                return
        try:
            self.store.patch_status(instance.name, patch)
            self.api_ok_at = self.status_written_at = time.monotonic()
            self.status_written_for = instance.generation
            if self.notice and not self.isolated:
                self.notice = None  # said once the API server heard it
        except Exception as error:
            log.warning("cannot write the status of %s: %s", instance.name, error)

    def may_lease(self) -> bool:
        """Whether the heartbeat goes to the liveness Lease: the store has Leases, the pod UID
        holds it, and no renewal failed within the last report refresh (then the status carries
        the heartbeat, as without Leases, and the Lease is tried again after that)."""
        return (hasattr(self.store, "renew_lease") and bool(self.settings.pod_uid)
                and self.instance_body is not None
                and time.monotonic() - self.lease_failed_at >= self.settings.report_refresh)

    def renew_lease(self, instance: Instance) -> bool:
        """Renew the instance's liveness Lease; False when it failed (the status carries this
        heartbeat, and the next ones until `may_lease` tries again)."""
        assert self.instance_body is not None
        try:
            self.store.renew_lease(self.instance_body, self.settings.pod_uid, self.now())  # type: ignore[attr-defined]
        except Exception as error:
            log.warning("cannot renew the liveness Lease of %s (%s): heartbeats go into the status for %.0fs",
                        instance.name, error, self.settings.report_refresh)
            self.lease_failed_at = time.monotonic()
            return False
        self.api_ok_at = self.lease_renewed_at = time.monotonic()
        return True

    # -------------------------------------------------------------------------- shutdown

    def shutdown(self) -> None:
        """Fast shutdown of postgres (the pod is going away), then a last status."""
        self.postmaster.stop("fast")
        if self.instance is not None:
            try:
                self.store.patch_status(self.instance.name, {
                    "ready": False, "phase": "Stopped" if self.exit_code is None else ha.FAILED,
                    "lastHeartbeat": rfc3339(self.now()),
                    "message": "the agent stopped postgres (pod shutdown)" if self.exit_code is None
                    else self.message})
            except Exception as error:
                log.warning("cannot write the final status: %s", error)


def certificates_digest(tls: pgconfig.TlsFiles) -> str:
    import hashlib
    digest = hashlib.sha256()
    for path in (tls.server_cert, tls.server_key, tls.ca, tls.server_ca):
        try:
            with open(path, "rb") as f:
                digest.update(f.read())
        except OSError:
            digest.update(b"-")
    return digest.hexdigest()


def loaded_certificates(tls: pgconfig.TlsFiles) -> dict[str, Any]:
    """status.certificates: fingerprints of the CAs this instance trusts (client and server side)
    and of the certificates it presents, as read now. The operator rotates its CA by them: the
    leaves are issued from a new CA only once every instance trusts it, and the old CA leaves the
    bundle only once every instance presents leaves of the new one."""
    def read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return ""
    trusted = pgconfig.certificate_fingerprints(read(tls.ca))
    if tls.server_ca != tls.ca:
        trusted += [fp for fp in pgconfig.certificate_fingerprints(read(tls.server_ca)) if fp not in trusted]
    server = pgconfig.certificate_fingerprints(read(tls.server_cert))
    replication = pgconfig.certificate_fingerprints(read(tls.client_cert))
    return {"trusted": trusted, "server": server[0] if server else "",
            "replication": replication[0] if replication else ""}


def spec_primary(instance: Instance) -> str | None:
    """spec.primary as the operator wrote it: None when it is left out (a replica streams from the
    -rw Service, as before failover existed), "" while a failover decides, else a name."""
    value = instance.raw_spec.get("primary")
    return None if value is None else str(value)


def run(settings: AgentSettings, store: InstanceStore, serve_health: bool = True) -> int:
    """`pgop agent run`: the agent as PID 1 of the Postgres pod."""
    agent = Agent(settings, store)

    def on_signal(signum, _frame):
        log.info("received %s: fast shutdown of postgres", signal.Signals(signum).name)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = health.serve(agent.health, settings.agent_address, settings.agent_port) if serve_health else None
    metrics = exporter.serve(agent, settings) if serve_health else None
    try:
        if settings.bootstrap_permit and not bootstrap.is_bootstrapped(settings):
            code = agent.bootstrap_volume()
            if code:
                return code
        return agent.run()
    finally:
        for running in (server, metrics):
            if running is not None:
                running.shutdown()
