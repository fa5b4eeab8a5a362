"""The decision: what is wanted (the PgInstance spec, the cluster) + what runs -> actions.

Pure (no driver or client: what runs arrives as the data of `observed`, `streaming` and
`config_change`), and the one place where the agent decides; `loop` carries the actions out
(one effect per action kind). Read it top to bottom: fencing first, then a Postgres that is
not running, then configuration, then the role, then replication slots.

The agent's side of failover (docs/high-availability.md) is decided here too, from plain data:
an isolated primary stops itself (`isolation`), a primary told to be a replica stops at once
(`immediate`) and rejoins (`rejoin_step`: pg_rewind against the primary, or a fresh clone), a
replica told `spec.primary: ""` stops streaming, and what the status says about it (`following`,
`wal_receiver`, `received_lsn`, `readiness`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pgop.agent.config_change import WrittenConfig, change_cost
from pgop.agent.observed import PostgresState
from pgop.agent.streaming import is_managed_slot, slot_changes
from pgop.kernel.model import PRIMARY, REPLICA

# Actions, in the order the loop carries them out.
STOP = "stop"
WRITE_CONFIG = "write-config"
START = "start"
RELOAD = "reload"
RESTART = "restart"
PROMOTE = "promote"
STOP_NOW = "stop-immediate"  # immediate shutdown: no session commits during it (demotion, isolation)
REJOIN = "rejoin"  # pg_rewind against the primary (a fresh clone if that fails), then standby.signal
STANDBY = "standby"  # standby.signal written: the next start recovers as a standby, never as a primary
CREATE_SLOT = "create-slot"
DROP_SLOT = "drop-slot"
GIVE_UP = "give-up"
KINDS = (STOP, STOP_NOW, WRITE_CONFIG, REJOIN, STANDBY, START, RELOAD, RESTART, PROMOTE, CREATE_SLOT, DROP_SLOT,
         GIVE_UP)

# Phases the agent reports in PgInstance.status.phase.
STARTING = "Starting"
RUNNING = "Running"
RECONFIGURING = "Reconfiguring"
PROMOTING = "Promoting"
DEMOTING = "Demoting"
REJOINING = "Rejoining"
ISOLATED = "Isolated"
STOPPED = "Stopped"  # Postgres stopped on purpose (a demoted primary waiting for whom to follow)
FENCED = "Fenced"
FAILED = "Failed"

# What changes the spec's effect: once none is left, the spec is applied (observedGeneration).
_APPLYING = frozenset({STOP, STOP_NOW, WRITE_CONFIG, REJOIN, STANDBY, START, RELOAD, RESTART, PROMOTE})


@dataclass(frozen=True)
class Action:
    kind: str
    reason: str
    target: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}{' ' + self.target if self.target else ''}: {self.reason}"


@dataclass(frozen=True)
class Wanted:
    role: str
    fenced: bool
    settings: Mapping[str, str]
    hba: str
    # None: the cluster is unknown now (or others still follow this replica); leave slots alone
    slots: frozenset[str] | None = None
    postgres_version: int = 15
    # spec.primary: None when the spec leaves it out (stream from the -rw Service, as ever); ""
    # while a failover decides (stream from nobody); else the instance to follow.
    primary: str | None = None
    # A switchover hands over: other instances still follow this one (their spec.primary names
    # it) to receive its last WAL, so a demotion is a fast shutdown, which sends all of it.
    handover: bool = False
    # spec.restartRequestedAt / spec.reloadRequestedAt (`pgop restart`, `pgop reload`): "" = none.
    restart_token: str = ""
    reload_token: str = ""


@dataclass(frozen=True)
class Actual:
    running: bool
    state: PostgresState = field(default_factory=PostgresState)
    written: WrittenConfig = field(default_factory=lambda: WrittenConfig(None, None))
    standby_signal: bool = False
    failed_starts: int = 0
    isolated: str | None = None  # why this primary counts as isolated (`isolation`), or None
    diverged: str | None = None  # why this replica cannot follow the primary's timeline, or None
    # Stopped without a clean shutdown (pg_control says "in production"): where its WAL ends is
    # known only once crash recovery has replayed all of it.
    crashed: bool = False
    # The request tokens the running postmaster has honoured (it started, or restarted or reloaded,
    # for them); None: not known yet, nothing is asked.
    restarted_for: str | None = None
    reloaded_for: str | None = None


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    phase: str
    message: str | None = None
    waiting: bool = False  # for postgres to get somewhere (e.g. out of crash recovery)

    @property
    def applied(self) -> bool:
        """Nothing left that changes how Postgres runs: the spec is in effect."""
        return not self.waiting and not any(action.kind in _APPLYING for action in self.actions)

    def kinds(self) -> list[str]:
        return [action.kind for action in self.actions]


def decide(wanted: Wanted, actual: Actual, max_start_attempts: int = 3) -> Decision:
    if wanted.fenced:
        if actual.running:
            return Decision((Action(STOP, "spec.fenced: no connections, no writes"),), FENCED)
        return Decision((), FENCED, "fenced: Postgres is stopped until spec.fenced is false")

    if actual.isolated:
        # Before anything else: this primary may be the deposed one, and must not commit on.
        if actual.running:
            return Decision((Action(STOP_NOW, actual.isolated),), ISOLATED, actual.isolated)
        return Decision((), ISOLATED, actual.isolated + "; Postgres stays stopped until the API "
                                                       "server answers again", waiting=True)

    change = change_cost(actual.written, dict(wanted.settings), wanted.hba, wanted.postgres_version)
    write = [Action(WRITE_CONFIG, "configuration changed: " + _names(change.changed))] if change else []

    if actual.running and wanted.role == REPLICA and actual.state.role == PRIMARY:
        # Demotion: at once (immediate; fast in a switchover; never smart), then rejoin.
        stop = demotion(wanted.handover)
        if wanted.primary == "":
            return Decision((stop,), DEMOTING, "demoted; waiting for spec.primary to name the primary to "
                                               "rejoin")
        return Decision((stop, Action(REJOIN, "a former primary rejoins as a replica"),
                         Action(START, "start as a replica")), DEMOTING)

    if not actual.running:
        if actual.failed_starts >= max_start_attempts:
            return Decision((Action(GIVE_UP, f"postgres failed {actual.failed_starts} times in a row"),),
                            FAILED, f"postgres failed to start or crashed {actual.failed_starts} times "
                                    "in a row; the agent exits so the kubelet restarts the pod")
        if wanted.role == REPLICA and not actual.standby_signal:
            # A data directory that ran as a primary: started as it is, it would be a second one.
            if wanted.primary == "" and actual.crashed:
                # A primary that crashed while a failover decides (its pod killed, or its agent
                # during a promotion): pg_control does not say where its WAL ends, so the operator
                # would wait for it forever. Started as a standby with no one to follow, it replays
                # all of its pg_wal (crash recovery runs to the end of WAL before a standby accepts
                # connections) and reports that position like any replica; it never writes.
                return Decision(tuple(write) + (Action(STANDBY, "a crashed former primary reports where its WAL ends as a "
                                                 "standby following no one"),
                                 Action(START, "start as a standby that follows no one")), STARTING)
            if wanted.primary == "":
                # The operator reads `Stopped` as "this one can acknowledge no commit".
                return Decision((), STOPPED, "demoted: Postgres is stopped; a former primary waits for "
                                             "spec.primary to name the primary to rejoin", waiting=True)
            return Decision((Action(REJOIN, "the data directory ran as a primary; spec.role is replica"),
                             Action(START, "start as a replica")), REJOINING)
        why = "postgres is not running" if actual.failed_starts == 0 else \
            f"postgres stopped; start attempt {actual.failed_starts + 1} of {max_start_attempts}"
        return Decision(tuple(write) + (Action(START, why),), STARTING)

    if not actual.state.accepting:
        # Config waits too: written now, nothing would reload or restart for it later.
        return Decision((), STARTING,
                        "postgres runs but does not accept connections yet (starting or recovering)",
                        waiting=True)

    if wanted.role == REPLICA and actual.state.role == REPLICA and actual.diverged and wanted.primary != "":
        return Decision((Action(REJOIN, actual.diverged), Action(START, "start as a replica")), REJOINING)

    actions = list(write)
    if change and change.needs_restart:
        actions.append(Action(RESTART, "only a restart applies " + _names(change.needs_restart_for)))
    elif change:
        actions.append(Action(RELOAD, "a reload applies " + _names(change.changed)))
    elif actual.state.pending_restart:
        actions.append(Action(RESTART, "pg_settings.pending_restart for " + _names(actual.state.pending_restart)))
    if not any(a.kind == RESTART for a in actions) and asked(wanted.restart_token, actual.restarted_for):
        actions.append(Action(RESTART, f"restart requested (spec.restartRequestedAt {wanted.restart_token})"))
    elif not any(a.kind in (RESTART, RELOAD) for a in actions) and asked(wanted.reload_token, actual.reloaded_for):
        actions.append(Action(RELOAD, f"reload requested (spec.reloadRequestedAt {wanted.reload_token})"))

    if wanted.role == PRIMARY and actual.state.role == REPLICA and wanted.slots is not None:
        # Before the promotion (a standby may hold physical slots): the replicas pointed at it
        # once it is primary find their slots at their first connection.
        create, _ = slot_changes(wanted.slots, actual.state.slots)
        actions += [Action(CREATE_SLOT, "an instance of the cluster will stream from it once it is promoted", name)
                    for name in create]

    actions += role_actions(wanted.role, actual.state.role)

    if wanted.role == PRIMARY and actual.state.role == PRIMARY and wanted.slots is not None:
        create, drop = slot_changes(wanted.slots, actual.state.slots)
        # Drops first: a slot max_slot_wal_keep_size invalidated is dropped, then made again.
        actions += [Action(DROP_SLOT, "invalidated (max_slot_wal_keep_size): made again" if name in create
                           else "its instance is gone; it would keep WAL forever", name) for name in drop]
        actions += [Action(CREATE_SLOT, "an instance of the cluster streams from it", name) for name in create]

    if wanted.role == REPLICA and actual.state.role == REPLICA and wanted.slots is not None:
        # Slots a replica still holds (made as the target of a promotion that was then deposed,
        # or kept from its time as primary) keep WAL on it that nobody fetches.
        actions += [Action(DROP_SLOT, "a replica nobody streams from keeps no replication slot", slot.name)
                    for slot in actual.state.slots if is_managed_slot(slot.name) and not slot.active]

    kinds = {action.kind for action in actions}
    refused = None
    if actual.state.config_errors and not kinds & {WRITE_CONFIG, RELOAD, RESTART}:
        # Postgres runs on, without the refused settings: not applied, so a rollout stops here.
        refused = ("postgres refuses settings of spec.parameters (see its log): "
                   + "; ".join(actual.state.config_errors))
    if PROMOTE in kinds:
        phase, message = PROMOTING, None
    elif kinds & {RESTART, RELOAD, WRITE_CONFIG}:
        phase, message = RECONFIGURING, None
    else:
        phase, message = RUNNING, refused
    return Decision(tuple(actions), phase, message, waiting=refused is not None)


def asked(token: str, honoured: str | None) -> bool:
    """A restart or reload request this postmaster has not carried out yet."""
    return bool(token) and honoured is not None and token != honoured


def demotion(handover: bool) -> Action:
    """How a primary that should be a replica stops. Neither way lets a session commit once it
    started (smart would). `immediate` in a failover: at once, nothing more leaves this instance.
    `fast` in a switchover (replicas still follow it): it writes a shutdown checkpoint and its WAL
    senders send everything to them first, so the target misses nothing and no rewind is needed."""
    if handover:
        return Action(STOP, "spec.role is replica and the replicas still follow this instance (a "
                            "switchover): fast shutdown, which sends them all of its WAL")
    return Action(STOP_NOW, "spec.role is replica but this instance runs as a primary: stop it now")


def role_actions(wanted: str, actual: str | None) -> list[Action]:
    """How a running instance gets from the role it has to the one it should have (a primary that
    should be a replica is handled before: it is stopped at once and rejoins)."""
    if wanted == PRIMARY and actual == REPLICA:
        return [Action(PROMOTE, "spec.role is primary")]
    return []


# ------------------------------------------------------------------------------ isolation

def isolation(now: float, api_ok_at: float, replica_ok_at: float, timeout: float, peers: int) -> str | None:
    """Why a primary counts as isolated, or None.

    Isolated: for `timeout` seconds (monotonic clock) it has reached neither the API server (no
    successful read of its PgInstance, no successful status patch) nor had a streaming replica
    (pg_stat_replication). Then the operator may already have promoted another instance, and
    this one must not acknowledge a commit any more. An instance with no other instance in its
    cluster (`peers` 0) has nobody to fail over to: it never stops itself.
    """
    if peers <= 0 or timeout <= 0:
        return None
    api_silent, replicas_silent = now - api_ok_at, now - replica_ok_at
    if api_silent < timeout or replicas_silent < timeout:
        return None
    return (f"isolated: no answer from the API server for {api_silent:.0f}s and no streaming replica "
            f"for {replicas_silent:.0f}s (isolationTimeout {timeout:g}s): stopped postgres (immediate) so "
            "that a deposed primary acknowledges no commit")


# -------------------------------------------------------------------------------- rejoin

@dataclass(frozen=True)
class Source:
    """What the agent found at the replication host (the -rw Service) before a rewind."""
    reachable: bool
    in_recovery: bool | None = None
    system_identifier: str | None = None
    timeline: int | None = None
    error: str | None = None


WAIT = "wait"
REWIND = "rewind"
REFUSE = "refuse"


def rejoin_step(local_system_identifier: str | None, source: Source) -> tuple[str, str]:
    """(WAIT | REWIND | REFUSE, why) for a former primary about to rejoin.

    Rewind only from a primary that answers and belongs to the same system: the -rw Service may
    select nobody (or this very instance) while the failover is under way, and a rewind that fails
    there must never lead to the clone's emptied volume.
    """
    if not source.reachable:
        return WAIT, f"the primary is not reachable ({source.error or 'no answer'}); rejoin waits for it"
    if source.in_recovery:
        return WAIT, "the replication host is not a primary yet (in recovery); rejoin waits"
    if (local_system_identifier and source.system_identifier
            and local_system_identifier != source.system_identifier):
        return REFUSE, (f"the primary has system identifier {source.system_identifier}, this data directory "
                        f"{local_system_identifier}: another database; not rewinding, not cloning over it")
    return REWIND, "pg_rewind against the primary"


def receiving(state: PostgresState, primary_timeline: int | None, previous_received: str | None) -> bool:
    """A replica's WAL receiver really streams: it is on the primary's timeline (or that is not
    known), or it received more since the last look (a lagging replica catching up on an older
    timeline's WAL). pg_stat_wal_receiver says `streaming` from the moment the receiver starts,
    also when its primary then refuses it (a diverged replica retrying twice a second): that alone
    proves nothing."""
    receiver = state.receiver
    if state.role != REPLICA or receiver is None or receiver.status != "streaming":
        return False
    if primary_timeline is None or (receiver.received_tli or 0) >= primary_timeline:
        return True
    return state.received_lsn is not None and state.received_lsn != previous_received


def replaying(state: PostgresState, previous_replayed: str | None) -> bool:
    """A replica replays on without streaming: catching up from the archive (restore_command),
    along whatever timeline the archive's history leads it. Not a diverged replica: no rewind."""
    return (state.role == REPLICA and state.lsn is not None and previous_replayed is not None
            and state.lsn != previous_replayed)


def diverged(state: PostgresState, primary_timeline: int | None, not_streaming_for: float,
             patience: float = 15.0) -> str | None:
    """Why a running replica cannot follow: its receiver has not streamed for `patience` seconds
    while the primary is on a later timeline (it ran past the point where that timeline forked:
    only a rewind brings it back)."""
    if state.role != REPLICA or primary_timeline is None or state.timeline is None:
        return None
    if primary_timeline <= state.timeline or not_streaming_for < patience:
        return None
    receiver = state.receiver
    if receiver is not None and receiver.status == "streaming" and (receiver.received_tli or 0) >= primary_timeline:
        return None
    return (f"not streaming for {not_streaming_for:.0f}s while the primary is on timeline {primary_timeline} "
            f"and this replica on {state.timeline}: it diverged; rewinding")


# ------------------------------------------------------------------------------- reporting

def wal_receiver(state: PostgresState) -> str | None:
    """status.walReceiver: a replica's pg_stat_wal_receiver status, `stopped` without a receiver."""
    if state.role != REPLICA:
        return None
    return state.receiver.status if state.receiver is not None and state.receiver.status else "stopped"


def following(wanted_primary: str | None, state: PostgresState, wanted_conninfo: str,
              previous: str | None) -> str | None:
    """status.following: the spec.primary the agent has applied. Moves only once Postgres runs with
    the primary_conninfo it implies and, for "", once no WAL receiver is left."""
    if wanted_primary is None:
        return None
    if state.role == PRIMARY:
        return wanted_primary
    if state.role != REPLICA or state.primary_conninfo is None or state.primary_conninfo != wanted_conninfo:
        return previous
    if wanted_primary == "" and state.receiver is not None and state.receiver.status is not None:
        return previous
    return wanted_primary


def received_lsn(state: PostgresState, last_known: str | None) -> str | None:
    """pg_last_wal_receive_lsn(), or the last one known when it is NULL (no receiver since the
    start), or else the replayed LSN (a replica restarted without streaming replays what it had
    received: never more than that, so a failover never overrates it)."""
    return state.received_lsn or last_known or (state.lsn if state.role == REPLICA else None)


def readiness(*, role: str, primary: str | None, fenced: bool, running: bool, state: PostgresState,
              system_identifier: str | None) -> tuple[bool, str]:
    """(ready, why not): what /readyz and status.ready say. A replica is ready only while it streams
    from the primary of its own system; with spec.primary "" it stays out of the -ro Service."""
    if fenced:
        return False, "fenced"
    if not running or not state.accepting:
        return False, "postgres does not accept connections"
    if state.role != role:
        return False, f"postgres runs as {state.role}, spec.role is {role}"
    if system_identifier and state.system_identifier and system_identifier != state.system_identifier:
        return False, (f"system identifier {state.system_identifier} is not the primary's "
                       f"({system_identifier})")
    if role == REPLICA:
        if primary == "":
            return False, "spec.primary is empty (a failover decides): not streaming, not serving"
        receiver = wal_receiver(state)
        if receiver != "streaming":
            return False, f"the WAL receiver is {receiver}, not streaming"
    return True, f"postgres accepts connections as {state.role}"


def _names(names: Iterable[str]) -> str:
    ordered = sorted(names)
    return ", ".join(ordered[:8]) + (f" and {len(ordered) - 8} more" if len(ordered) > 8 else "")
