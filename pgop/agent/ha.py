"""The decision: what is wanted (the PgInstance spec, the cluster) + what runs -> actions.

Pure (no driver or client: what runs arrives as the data of `observed`, `streaming` and
`config_change`), and the one place where the agent decides; `loop` carries the actions out
(one effect per action kind). Read it top to bottom: fencing first, then a Postgres that is
not running, then configuration, then the role, then replication slots. Failover grows here:
`role_actions` is where demotion (pg_rewind or a fresh clone) replaces today's refusal.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pgop.agent.config_change import WrittenConfig, change_cost
from pgop.agent.observed import PostgresState
from pgop.agent.streaming import slot_changes
from pgop.kernel.model import PRIMARY, REPLICA

# Actions, in the order the loop carries them out.
STOP = "stop"
WRITE_CONFIG = "write-config"
START = "start"
RELOAD = "reload"
RESTART = "restart"
PROMOTE = "promote"
DEMOTE = "demote"
CREATE_SLOT = "create-slot"
DROP_SLOT = "drop-slot"
GIVE_UP = "give-up"
KINDS = (STOP, WRITE_CONFIG, START, RELOAD, RESTART, PROMOTE, DEMOTE, CREATE_SLOT, DROP_SLOT, GIVE_UP)

# Phases the agent reports in PgInstance.status.phase.
STARTING = "Starting"
RUNNING = "Running"
RECONFIGURING = "Reconfiguring"
PROMOTING = "Promoting"
FENCED = "Fenced"
FAILED = "Failed"

# What changes the spec's effect: once none is left, the spec is applied (observedGeneration).
_APPLYING = frozenset({STOP, WRITE_CONFIG, START, RELOAD, RESTART, PROMOTE, DEMOTE})


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
    slots: frozenset[str] | None = None  # None: the cluster is unknown now; leave slots alone
    postgres_version: int = 15


@dataclass(frozen=True)
class Actual:
    running: bool
    state: PostgresState = field(default_factory=PostgresState)
    written: WrittenConfig = field(default_factory=lambda: WrittenConfig(None, None))
    standby_signal: bool = False
    failed_starts: int = 0


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

    change = change_cost(actual.written, dict(wanted.settings), wanted.hba, wanted.postgres_version)
    write = [Action(WRITE_CONFIG, "configuration changed: " + _names(change.changed))] if change else []

    if not actual.running:
        if actual.failed_starts >= max_start_attempts:
            return Decision((Action(GIVE_UP, f"postgres failed {actual.failed_starts} times in a row"),),
                            FAILED, f"postgres failed to start or crashed {actual.failed_starts} times "
                                    "in a row; the agent exits so the kubelet restarts the pod")
        demote = role_actions(wanted.role, REPLICA if actual.standby_signal else PRIMARY)
        if any(action.kind == DEMOTE for action in demote):
            return Decision(tuple(demote), FAILED, demote[0].reason)
        why = "postgres is not running" if actual.failed_starts == 0 else \
            f"postgres stopped; start attempt {actual.failed_starts + 1} of {max_start_attempts}"
        return Decision(tuple(write) + (Action(START, why),), STARTING)

    if not actual.state.accepting:
        # Config waits too: written now, nothing would reload or restart for it later.
        return Decision((), STARTING,
                        "postgres runs but does not accept connections yet (starting or recovering)",
                        waiting=True)

    actions = list(write)
    if change and change.needs_restart:
        actions.append(Action(RESTART, "only a restart applies " + _names(change.needs_restart_for)))
    elif change:
        actions.append(Action(RELOAD, "a reload applies " + _names(change.changed)))
    elif actual.state.pending_restart:
        actions.append(Action(RESTART, "pg_settings.pending_restart for " + _names(actual.state.pending_restart)))

    actions += role_actions(wanted.role, actual.state.role)

    if wanted.role == PRIMARY and actual.state.role == PRIMARY and wanted.slots is not None:
        create, drop = slot_changes(wanted.slots, actual.state.slots)
        actions += [Action(CREATE_SLOT, "an instance of the cluster streams from it", name) for name in create]
        actions += [Action(DROP_SLOT, "its instance is gone; it would keep WAL forever", name) for name in drop]

    kinds = {action.kind for action in actions}
    refused = None
    if actual.state.config_errors and not kinds & {WRITE_CONFIG, RELOAD, RESTART}:
        # Postgres runs on, without the refused settings: not applied, so a rollout stops here.
        refused = ("postgres refuses settings of spec.parameters (see its log): "
                   + "; ".join(actual.state.config_errors))
    if DEMOTE in kinds:
        phase, message = FAILED, next(a.reason for a in actions if a.kind == DEMOTE)
    elif PROMOTE in kinds:
        phase, message = PROMOTING, None
    elif kinds & {RESTART, RELOAD, WRITE_CONFIG}:
        phase, message = RECONFIGURING, None
    else:
        phase, message = RUNNING, refused
    return Decision(tuple(actions), phase, message, waiting=refused is not None)


def role_actions(wanted: str, actual: str | None) -> list[Action]:
    """The seam for failover: how an instance gets from the role it has to the one it should have."""
    if wanted == PRIMARY and actual == REPLICA:
        return [Action(PROMOTE, "spec.role is primary")]
    if wanted == REPLICA and actual == PRIMARY:
        return [Action(DEMOTE, "spec.role is replica but this instance is a primary; demotion "
                               "(pg_rewind) is not implemented in this version of pgop")]
    return []


def _names(names: Iterable[str]) -> str:
    ordered = sorted(names)
    return ", ".join(ordered[:8]) + (f" and {len(ordered) - 8} more" if len(ordered) > 8 else "")
