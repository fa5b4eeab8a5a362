"""Who is primary: the pure decision of docs/high-availability.md ("Failover, step by step").

Input: the PgCluster (spec, status, annotations), its PgInstances (spec and what their agents
report), the Postgres pods and the volumes (or None when not observed), and `now`. Output: an
`HaDecision`: the status fields to write on the PgCluster (targetPrimary, currentPrimary,
failover, lastSwitchover, rejoining), whom the replicas follow, which instances are fenced, the
Events, and what it waits for. The cluster planner turns it into PgInstance patches.

Everything a failover has decided so far is in PgCluster.status (`failover`, `targetPrimary`),
written before the PgInstances are changed, so an operator restarted midway continues where it
was; each pass re-reads the world and moves at most one step:

    (no failover) --primary failed--> Pending --failoverDelay--> Deciding --quorum + old primary
    cannot write--> Promoting --target reports primary--> (no failover, currentPrimary = target)
    (no failover) --pgop promote--> Switchover Demoting --target caught up--> Promoting --> ...
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pgop.kernel import hibernation
from pgop.kernel.actions import NORMAL, WARNING, Event, merge_patch
from pgop.kernel.conditions import parse_time, rfc3339
from pgop.kernel.lsn import parse_lsn
from pgop.kernel.meta import ANNOTATION_BOOTSTRAP_MODE, POSTGRES_CONTAINER
from pgop.kernel.model import PRIMARY, REPLICA, REQUIRED, Cluster, Instance, instance_name
from pgop.kernel.readiness import DEFAULT_HEARTBEAT_TIMEOUT, heartbeat_age, is_ready

ANNOTATION_SWITCHOVER = "pgop.io/switchover-to"
ANNOTATION_FENCED = "pgop.io/fenced-instances"

# The agent of a primary that reaches neither the API server nor a streaming replica for this
# long stops Postgres (pgop.agent); the operator adds a margin for clocks and the loop's period.
ISOLATION_TIMEOUT = 10.0
ISOLATION_MARGIN = 5.0
# A switchover whose target has not received the old primary's last WAL by then is given up:
# the old primary, cleanly shut down, is promoted again (nothing was lost).
SWITCHOVER_CATCH_UP_TIMEOUT = 60.0
# A target whose agent beats but has not reported primary by then (pg_promote() gives up after
# 60 s) is deposed and the failover decides again among the others: no failover waits for ever on
# one instance. Nothing is lost: until it reports primary nobody streams from it, so with
# synchronousMode required it cannot get a commit acknowledged.
PROMOTION_TIMEOUT = 90.0
# A primary whose agent has been silent this long (three beats of 2 s) counts as failed before the
# heartbeat timeout when every replica that streamed from it has lost its WAL stream since (a
# replica's receiver gives up after wal_receiver_timeout, 5 s): two observers, the API server and
# the replicas, both lost it, as when its node dies, freezes or is cut off. A primary cut off from
# the API server only still streams to its replicas and waits for the heartbeat timeout.
CORROBORATED_SILENCE = 6.0

FAILOVER, SWITCHOVER = "Failover", "Switchover"
PENDING, DECIDING, DEMOTING, PROMOTING = "Pending", "Deciding", "Demoting", "Promoting"

STREAMING, STOPPED = "streaming", "stopped"

Obj = Mapping[str, Any]


# ------------------------------------------------------------------------------------ inputs

@dataclass(frozen=True)
class PodState:
    """The Postgres pod of an instance as the API server shows it."""

    exists: bool
    deleting: bool = False
    running: bool = False  # the postgres container (the agent, PID 1) runs
    stopped_why: str = ""  # why it does not run, when it does not
    node: str | None = None
    # created and on its way (image present, container being made): the kubelet posts "running"
    # a moment after the agent in it has already reported, so this is no failure
    starting: bool = False
    created: datetime | None = None
    uid: str | None = None
    # made for a volume not yet marked initialised: its agent fills the volume before it starts
    # Postgres (the pod's annotation pgop.io/bootstrap-mode, until the operator marks the volume)
    bootstraps: bool = False


def pod_state(pod: Obj | None) -> PodState:
    if pod is None:
        return PodState(exists=False, stopped_why="the pod is gone")
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    node = (pod.get("spec") or {}).get("nodeName")
    statuses = [s for s in status.get("containerStatuses") or [] if s.get("name") == POSTGRES_CONTAINER]
    state = (statuses[0].get("state") or {}) if statuses else {}
    phase = status.get("phase") or "Pending"
    running = "running" in state and phase == "Running"
    why = ""
    if not running:
        if "terminated" in state:
            term = state["terminated"]
            why = f"its container terminated ({term.get('reason') or 'exit code ' + str(term.get('exitCode'))})"
        elif "waiting" in state:
            why = f"its container is not running ({state['waiting'].get('reason') or 'waiting'})"
        else:
            why = f"its pod is {phase}"
    waiting_reason = (state.get("waiting") or {}).get("reason") if "waiting" in state else None
    starting = not running and "terminated" not in state and phase == "Pending" and \
        waiting_reason in (None, "PodInitializing", "ContainerCreating")
    try:
        created = parse_time(meta.get("creationTimestamp"))
    except ValueError:
        created = None
    return PodState(exists=True, deleting=bool(meta.get("deletionTimestamp")), running=running,
                    stopped_why=why, node=node, starting=starting, created=created,
                    uid=meta.get("uid"), bootstraps=ANNOTATION_BOOTSTRAP_MODE in (meta.get("annotations") or {}))


def fenced_instances(annotations: Mapping[str, str], names: Sequence[str]) -> tuple[frozenset[str] | None, str]:
    """The instances the annotation pgop.io/fenced-instances fences (a JSON list of names, or
    ["*"] for all), and a problem in words when it cannot be read (then: None, leave as is)."""
    text = annotations.get(ANNOTATION_FENCED)
    if not text:
        return frozenset(), ""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None, (f"annotation {ANNOTATION_FENCED} must be a JSON list of instance names or [\"*\"], "
                      f"not {text!r}; fencing is left as it is")
    if "*" in value:
        return frozenset(names), ""
    return frozenset(value), ""


# ------------------------------------------------------------------------------------ output

@dataclass
class HaDecision:
    target_primary: str  # "" while a failover decides or a switchover demotes
    current_primary: str | None
    follow: str  # whom the replicas follow ("" = stop streaming)
    fenced: frozenset[str] | None  # None: the annotation is unreadable, leave spec.fenced alone
    status: dict[str, Any] = field(default_factory=dict)  # merge patch for PgCluster.status
    events: list[Event] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    busy: bool = False  # a failover or switchover runs: no scale-down, no rolling restart
    clear_switchover: bool = False  # remove the annotation pgop.io/switchover-to
    had_data: bool = False  # the cluster was initialised once: never initdb again
    held: frozenset[str] = frozenset()  # follow nobody whatever `follow` says (the old primary)

    def primary_of(self, name: str) -> str:
        """spec.primary of an instance: its own name on the target, else whom replicas follow."""
        if name == self.target_primary:
            return name
        if name in self.held:
            return ""
        return "" if self.follow == name else self.follow


# ------------------------------------------------------------------------------------ decision

@dataclass
class _Facts:
    cluster: Cluster
    live: list[Instance]
    by_name: dict[str, Instance]
    pods: Mapping[str, Obj] | None
    volumes: Mapping[str, Obj] | None
    fenced: frozenset[str]
    now: datetime
    heartbeat_timeout: float

    def fresh(self, instance: Instance, since: datetime | None = None) -> bool:
        """Alive (a status write or a Lease renewal within the heartbeat timeout) and, with
        `since`, a status written since then: a report of what the agent did, which a Lease
        renewal is not (pgop.kernel.liveness)."""
        age = heartbeat_age(instance, self.now)
        if age is None or age > self.heartbeat_timeout:
            return False
        beat = instance.status.last_heartbeat
        return since is None or (beat is not None and beat >= since)

    def pod(self, name: str) -> PodState | None:
        return None if self.pods is None else pod_state(self.pods.get(name))

    def is_fenced(self, instance: Instance) -> bool:
        return instance.name in self.fenced or instance.spec.fenced


def decide(cluster: Cluster, instances: Sequence[Instance | Obj], *, now: datetime,
           pods: Mapping[str, Obj] | None = None, volumes: Mapping[str, Obj] | None = None,
           heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT) -> HaDecision:
    """`pods` and `volumes`: the Postgres pod and the PVC of each instance by instance name, or
    None when not observed (then the rules that need them are not applied)."""
    views = [i if isinstance(i, Instance) else Instance.from_object(i) for i in instances]
    live = sorted((i for i in views if not i.deleting), key=lambda i: i.ordinal)
    fenced, fence_problem = fenced_instances(cluster.annotations, [i.name for i in live])
    facts = _Facts(cluster, live, {i.name: i for i in live}, pods, volumes,
                   fenced if fenced is not None else frozenset(i.name for i in live if i.spec.fenced),
                   now, heartbeat_timeout)
    state = _State.read(cluster)
    if fence_problem:
        state.waiting.append(fence_problem)
    state.had_data = bool(state.current) or any(_initialised(v) for v in (volumes or {}).values())

    if state.failover is None:
        _steady(facts, state)
    else:
        _step(facts, state)
    _rejoins(facts, state)
    state.had_data = state.had_data or bool(state.current)
    return state.result(cluster, fenced)


def _initialised(volume: Obj) -> bool:
    return bool(((volume.get("metadata") or {}).get("annotations") or {}).get("pgop.io/initialized"))


@dataclass
class _State:
    target: str | None
    current: str | None
    failover: dict[str, Any] | None
    rejoining: list[str]
    before: dict[str, Any]
    last_switchover: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    clear_switchover: bool = False
    had_data: bool = False

    @classmethod
    def read(cls, cluster: Cluster) -> _State:
        st = cluster.status
        failover = st.get("failover")
        return cls(target=st.get("targetPrimary") if "targetPrimary" in st else None,
                   current=st.get("currentPrimary") or None,
                   failover=dict(failover) if failover else None,
                   rejoining=list(st.get("rejoining") or []), before=dict(st))

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def result(self, cluster: Cluster, fenced: frozenset[str] | None) -> HaDecision:
        target = self.target or ""
        failover = self.failover
        phase = (failover or {}).get("phase")
        held: frozenset[str] = frozenset()
        if phase == DECIDING:
            follow = ""
        elif phase == PROMOTING:
            # The other replicas stream from the target already while it promotes (a standby
            # serves WAL too, and its replicas follow it onto the new timeline), so the new
            # primary has its synchronous standbys the moment it takes writes. They reach it at
            # its pod IP (spec.primaryHost), never through -rw, which may still route to the old
            # primary. Nobody of them is
            # ahead of it: it was chosen as the most advanced. The old primary, and any target
            # deposed before (it may have promoted itself), wait for the failover to end to rejoin.
            follow = target
            if failover:
                held = frozenset({str(failover.get("oldPrimary") or "")}
                                 | {str(name) for name in failover.get("deposed") or []}) - {"", target}
        elif phase == DEMOTING:
            follow = str(failover.get("oldPrimary") or "") if failover else ""
        else:
            follow = self.current or target
        status: dict[str, Any] = {"targetPrimary": target, "currentPrimary": self.current,
                                  "failover": _replace(self.before.get("failover"), failover),
                                  "rejoining": self.rejoining or None}
        if self.last_switchover is not None:
            status["lastSwitchover"] = _replace(self.before.get("lastSwitchover"), self.last_switchover)
        return HaDecision(target_primary=target, current_primary=self.current, follow=follow, fenced=fenced,
                          status=status, events=self.events, waiting=self.waiting,
                          busy=phase not in (None, PENDING), clear_switchover=self.clear_switchover,
                          had_data=self.had_data, held=held)


def _replace(old: Any, new: Any) -> Any:
    """The status value that turns `old` into `new` under a merge patch (keys `new` lacks go)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping) and old != new:
        return merge_patch(old, new)
    return new


# ------------------------------------------------------------------------------ steady state

def _steady(facts: _Facts, state: _State) -> None:
    live = facts.live
    if state.target is None:  # a cluster made before targetPrimary existed, or a new one
        marked = sorted((i for i in live if i.is_primary),
                        key=lambda i: (i.status.role != PRIMARY, i.ordinal))
        if marked:
            state.target = marked[0].name
        elif not live and not state.had_data:
            state.target = instance_name(facts.cluster.name, 0)
        elif live:
            state.target = ""
    if not state.target:
        if live and state.current:
            _start_failover(facts, state, state.current, "no instance is marked primary")
        elif live:
            state.waiting.append("no instance is marked primary and none ever was; nothing to fail over from")
        return

    target = facts.by_name.get(state.target)
    if state.current != state.target:
        # The first primary coming up (or a cluster migrated without currentPrimary).
        if target is not None and target.status.role == PRIMARY and facts.fresh(target):
            state.current = state.target
        else:
            state.waiting.append(f"{state.target} becomes the primary once its agent reports it")
        return

    # currentPrimary == targetPrimary: the primary to watch, and a switchover to start.
    if hibernation.holds(facts.cluster):
        return  # its pods are stopped on purpose (pgop.kernel.hibernation): no failover, no switchover
    why = _failure(facts, state.target)
    if target is not None and facts.is_fenced(target):
        if why:
            state.waiting.append(f"the primary {state.target} is fenced: no failover while it is "
                                 f"fenced ({why}); `pgop fence off` to unfence")
        return
    if why:
        delay = facts.cluster.spec.failover_delay_seconds
        if delay > 0:
            state.failover = {"kind": FAILOVER, "phase": PENDING, "oldPrimary": state.target,
                              "since": rfc3339(facts.now), "reason": why,
                              "waitingFor": f"failoverDelay {delay}s"}
            state.waiting.append(f"the primary {state.target} failed ({why}); failover after "
                                 f"spec.failoverDelay ({delay}s) unless it comes back")
            return
        _start_failover(facts, state, state.target, why)
        return
    _maybe_switchover(facts, state)


def _replaced(instance: Instance, pod: PodState) -> bool:
    """The pod is not the one the agent last reported from: by UID when both are known, else by
    time (a pod made after the last heartbeat)."""
    reported = instance.status.pod_uid
    if reported and pod.uid:
        return reported != pod.uid
    beat = instance.status.last_heartbeat
    return beat is None or pod.created is None or beat <= pod.created


def _filled_by_its_pod(instance: Instance, pod: PodState | None) -> bool:
    """A volume not marked yet, which the agent reporting as this instance filled: it reports from
    the pod made to bootstrap the volume, and its agent reports only once the bootstrap is done
    (the operator marks the volume a moment later). A new empty volume under a primary that ran
    has a new pod, which has not reported."""
    return pod is not None and pod.exists and pod.bootstraps and pod.uid is not None \
        and instance.status.pod_uid == pod.uid


def _failure(facts: _Facts, name: str) -> str:
    """Why the (target) primary `name` cannot serve, or "" when it can (or we cannot tell yet)."""
    instance = facts.by_name.get(name)
    if instance is None:
        return f"its PgInstance {name} is gone"
    if facts.volumes is not None:
        volume = facts.volumes.get(name)
        if volume is None:
            return "its volume is gone"
        if (volume.get("metadata") or {}).get("deletionTimestamp"):
            return "its volume is being deleted"
        if not _initialised(volume) and not _filled_by_its_pod(instance, facts.pod(name)):
            return "its volume is new and empty (the data is lost)"
    pod = facts.pod(name)
    if pod is not None:
        if not pod.exists:
            return "its pod is gone"
        if not pod.running and not pod.starting:
            return pod.stopped_why
        if not pod.running:
            # Starting: fine when its agent has reported from this pod (the kubelet posts
            # "running" late); a new pod replaced the primary's, whose Postgres is gone or going
            # (a force-deleted pod's containers may still beat from the node for a while): fail
            # over rather than wait for it to start again.
            if _replaced(instance, pod):
                return f"its pod was replaced and is starting ({pod.stopped_why})"
        # A pod being deleted gracefully: its agent shuts Postgres down with `fast`, which sends
        # the last WAL to the replicas; fail over when it is gone, not while it still streams.
    age = heartbeat_age(instance, facts.now)
    if age is not None and age > facts.heartbeat_timeout:
        return f"no heartbeat from its agent for {age:.0f}s (limit {facts.heartbeat_timeout:.0f}s)"
    if age is not None and age > CORROBORATED_SILENCE:
        lost = _replicas_that_lost(facts, instance)
        if lost:
            return (f"no heartbeat from its agent for {age:.0f}s, and its replicas {', '.join(lost)} "
                    "stopped receiving its WAL since")
    if instance.status.phase == "Failed":
        return "its agent gave up starting Postgres (" + (instance.status.message or "phase Failed") + ")"
    # Postgres crashed inside a live pod: the agent restarts it in place (crash recovery, no new
    # timeline); that is no reason to fail over while the agent beats.
    return ""


def _replicas_that_lost(facts: _Facts, primary: Instance) -> list[str]:
    """The replicas that followed `primary` and report, after its last sign of life (a status
    write or a Lease renewal), that they no longer receive its WAL; empty unless there is at least
    one and *all* of them say so. A replica's Lease renewal says its status as stored still holds
    (pgop.kernel.liveness: an agent renews only when it has nothing new to write), so a status
    without a WAL stream renewed after the primary's last sign of life counts: a primary whose
    agent outlived its Postgres by a beat (a node killed process by process) is still
    corroborated by replicas whose status changed just before that beat."""
    beat = primary.status.alive_at
    followers = [i for i in facts.live if i.name != primary.name and i.status.following == primary.name
                 and not facts.is_fenced(i)]
    if beat is None or not followers:
        return []
    for replica in followers:
        st = replica.status
        if not facts.fresh(replica) or st.alive_at is None or st.alive_at <= beat \
                or st.wal_receiver == STREAMING:
            return []
    return [i.name for i in followers]


def _start_failover(facts: _Facts, state: _State, old: str, why: str, deposed: Sequence[str] = ()) -> None:
    now = rfc3339(facts.now)
    previous = state.failover or {}
    since = previous.get("since") if previous.get("phase") not in (None, PENDING) else None
    state.failover = {"kind": FAILOVER, "phase": DECIDING, "oldPrimary": previous.get("oldPrimary") or old,
                      "since": since or now, "phaseSince": now, "reason": why,
                      "deposed": sorted(set(previous.get("deposed") or []) | {old} | set(deposed))}
    state.target = ""
    state.event(WARNING, "FailoverStarted",
                f"primary {old} failed: {why}. Every replica stops its WAL receiver (spec.primary \"\") "
                "and reports where it stopped; the most advanced one is promoted")


# ------------------------------------------------------------------------------ the steps

def _step(facts: _Facts, state: _State) -> None:
    failover = state.failover
    assert failover is not None
    phase = failover.get("phase")
    if phase == PENDING:
        _pending(facts, state)
    elif phase == DECIDING:
        _deciding(facts, state)
    elif phase == DEMOTING:
        _demoting(facts, state)
    elif phase == PROMOTING:
        _promoting(facts, state)
    else:
        state.waiting.append(f"status.failover.phase {phase!r} is unknown; starting the failover over")
        _start_failover(facts, state, str(failover.get("oldPrimary") or state.current or ""), "unknown phase")
    if state.failover is not None and state.failover.get("kind") == FAILOVER and \
            _annotation(facts) and state.failover.get("phase") != PENDING:
        state.waiting.append("a switchover request waits until the failover is done")


def _pending(facts: _Facts, state: _State) -> None:
    failover = state.failover or {}
    old = str(failover.get("oldPrimary") or "")
    why = _failure(facts, old)
    instance = facts.by_name.get(old)
    if not why or (instance is not None and facts.is_fenced(instance)) or state.target != old:
        state.failover = None  # it came back (or was fenced) within failoverDelay
        state.waiting.append(f"the primary {old} is back within spec.failoverDelay: no failover")
        return
    since = parse_time(failover.get("since")) or facts.now
    delay = facts.cluster.spec.failover_delay_seconds
    waited = (facts.now - since).total_seconds()
    if waited < delay:
        state.waiting.append(f"the primary {old} failed ({why}) {waited:.0f}s ago; failover after "
                             f"spec.failoverDelay ({delay}s) unless it comes back")
        return
    state.failover = None
    _start_failover(facts, state, old, f"{why}, for {waited:.0f}s (failoverDelay {delay}s)")
    _deciding(facts, state)


def _answered(facts: _Facts, instance: Instance, since: datetime | None) -> bool:
    """It can acknowledge no commit and said where its WAL ends, after `since`: a replica whose
    agent stopped streaming on request, or a former primary its agent keeps stopped after a clean
    shutdown (its pod was deleted: the agent's fast shutdown), whose end of WAL pg_control gives."""
    st = instance.status
    if facts.is_fenced(instance) or not facts.fresh(instance, since):
        return False
    if st.following == "" and st.wal_receiver == STOPPED and st.role == REPLICA:
        return True
    return st.phase == "Stopped" and st.role is None and bool(st.lsn) and bool(st.system_identifier)


def _position(instance: Instance) -> tuple[int, int, int]:
    """(timeline, received, replayed). The newest timeline first: WAL an old timeline has past the
    point where a newer one forked was never acknowledged (its primary could commit no more when
    the newer one was promoted), so it must not outrank the newer timeline."""
    st = instance.status

    def lsn(text: str | None) -> int:
        try:
            return parse_lsn(text) if text else -1
        except ValueError:
            return -1
    replay = lsn(st.replay_lsn or st.lsn)
    return st.timeline or 0, max(lsn(st.received_lsn), replay), replay


def _cannot_write(facts: _Facts, instance: Instance | None, since: datetime | None,
                  all_replicas_stopped: bool) -> str:
    """How we know `instance` (a former or would-be primary) can no longer acknowledge a commit,
    or "" when we do not know that yet."""
    if instance is None:
        return "its PgInstance is gone"
    if _answered(facts, instance, since):
        return "it stopped streaming as a replica"
    st = instance.status
    if facts.fresh(instance, since) and (st.role == REPLICA or st.phase in ("Fenced", "Stopped")):
        return f"its agent reports it {('fenced' if st.phase == 'Fenced' else 'demoted')}"
    pod = facts.pod(instance.name)
    if pod is not None and not pod.exists:
        return "its pod is gone"
    if pod is not None and not pod.running and not pod.deleting:
        return pod.stopped_why
    if all_replicas_stopped:
        return ("synchronousMode required and every replica it could stream to stopped its WAL "
                "receiver: it cannot get a commit acknowledged")
    age = heartbeat_age(instance, facts.now)
    limit = ISOLATION_TIMEOUT + ISOLATION_MARGIN
    if age is None or age > limit:
        return (f"its agent has been silent for {age:.0f}s, longer than the isolation timeout "
                f"({ISOLATION_TIMEOUT:.0f}s) plus {ISOLATION_MARGIN:.0f}s: it stopped Postgres itself"
                if age is not None else "its agent never reported")
    return ""


def _deciding(facts: _Facts, state: _State) -> None:
    failover = state.failover or {}
    since = parse_time(failover.get("phaseSince")) or parse_time(failover.get("since"))
    spec = facts.cluster.spec
    deposed = [str(name) for name in failover.get("deposed") or []]
    answered = [i for i in facts.live if _answered(facts, i, since)]
    total = len(facts.live)
    required = spec.synchronous_mode == REQUIRED and spec.synchronous_replicas > 0
    need = max(1, total - spec.synchronous_replicas) if required else 1
    missing = [i.name for i in facts.live if i not in answered]
    if len(answered) < need:
        what = (f"{len(answered)} of {total} instances stopped streaming and reported their position; "
                f"synchronousMode required with synchronousReplicas {spec.synchronous_replicas} needs "
                f"{need} (R >= N - n) to be sure to hold every acknowledged commit"
                if required else "no replica has stopped streaming and reported its position yet")
        message = f"failover: {what}; waiting for " + (", ".join(missing) or "an instance")
        _wait(state, "FailoverWaitingForQuorum" if required else "FailoverWaitingForReplicas", message,
              event=required)
        return

    # Step 3: nobody who was (or was about to be) primary can still acknowledge a commit.
    others = [i for i in facts.live if i.name not in deposed]
    all_stopped = required and all(i in answered for i in others)
    suspects = set(deposed) | {i.name for i in facts.live if i.status.role == PRIMARY and i not in answered}
    for name in sorted(suspects):
        if not _cannot_write(facts, facts.by_name.get(name), since, all_stopped):
            _wait(state, "FailoverWaitingForOldPrimary",
                  f"failover: {name} may still accept writes (its pod runs and its agent beat "
                  f"{heartbeat_age(facts.by_name[name], facts.now) or 0:.0f}s ago); promoting once it "
                  f"stops, its pod is gone, or it has been silent for "
                  f"{ISOLATION_TIMEOUT + ISOLATION_MARGIN:.0f}s")
            return

    # Step 4: choose.
    reference = _system_identifier(facts, deposed, answered)
    eligible = [i for i in answered
                if reference is None or i.status.system_identifier in (None, reference)]
    if not eligible:
        _wait(state, "FailoverNoCandidate", "failover: no replica that answered is on the cluster's "
              f"system identifier {reference}")
        return
    best = max(eligible, key=lambda i: (*_position(i), -i.ordinal))
    candidates = "; ".join(_describe_position(i) for i in sorted(answered, key=lambda i: i.ordinal))
    state.target = best.name
    state.failover = {**failover, "phase": PROMOTING, "target": best.name, "phaseSince": rfc3339(facts.now),
                      "waitingFor": f"{best.name} to report primary"}
    tail = ("" if required else " synchronousMode is not required: commits acknowledged only by the "
            "old primary (the tail of asynchronous commits) may be lost.")
    state.event(NORMAL if required else WARNING, "Promoted",
                f"promoting {best.name}, the most advanced of the replicas that answered "
                f"({len(answered)} of {total}): {candidates}.{tail}")


def _system_identifier(facts: _Facts, deposed: Sequence[str], answered: Sequence[Instance]) -> str | None:
    for name in deposed:
        instance = facts.by_name.get(name)
        if instance is not None and instance.status.system_identifier:
            return instance.status.system_identifier
    known = Counter(i.status.system_identifier for i in answered if i.status.system_identifier)
    return known.most_common(1)[0][0] if known else None


def _describe_position(instance: Instance) -> str:
    st = instance.status
    return (f"{instance.name} received {st.received_lsn or '?'} replayed {st.replay_lsn or st.lsn or '?'}"
            f" timeline {st.timeline if st.timeline is not None else '?'}")


def _wait(state: _State, reason: str, message: str, event: bool = False) -> None:
    state.waiting.append(message)
    if state.failover is not None:
        state.failover = {**state.failover, "waitingFor": message, "waitingReason": reason}
    if event:
        state.event(WARNING, reason, message)


def _promoting(facts: _Facts, state: _State) -> None:
    failover = state.failover or {}
    target_name = str(failover.get("target") or state.target or "")
    state.target = target_name
    since = parse_time(failover.get("phaseSince"))
    target = facts.by_name.get(target_name)
    if target is not None and target.status.role == PRIMARY and facts.fresh(target, since):
        _finish(facts, state, target)
        return
    why = _failure(facts, target_name)
    if why and not (target is not None and facts.fresh(target)):
        state.failover = {**failover, "kind": FAILOVER}
        _start_failover(facts, state, target_name, f"promotion of {target_name} failed: {why}",
                        deposed=[target_name])
        return
    waited = (facts.now - since).total_seconds() if since is not None else 0.0
    if waited > PROMOTION_TIMEOUT:
        state.failover = {**failover, "kind": FAILOVER}
        _start_failover(facts, state, target_name,
                        f"{target_name} did not report primary within {PROMOTION_TIMEOUT:.0f}s of being chosen "
                        f"(phase {target.status.phase if target is not None else 'unknown'}: "
                        f"{(target.status.message if target is not None else None) or 'no message'})",
                        deposed=[target_name])
        return
    _wait(state, "Promoting", f"{target_name} is being promoted; waiting for its agent to report it primary")


def _finish(facts: _Facts, state: _State, target: Instance) -> None:
    failover = state.failover or {}
    state.current = target.name
    state.failover = None
    former = [str(name) for name in failover.get("deposed") or [] if name != target.name]
    state.rejoining = sorted(set(state.rejoining) | {n for n in former if n in facts.by_name} - {target.name})
    timeline = target.status.timeline
    if failover.get("kind") == SWITCHOVER:
        state.clear_switchover = True
        message = (f"{target.name} is the primary (timeline {timeline}); {failover.get('oldPrimary')} "
                   "follows it as a replica")
        state.last_switchover = {"target": target.name, "result": "Done", "message": message,
                                 "time": rfc3339(facts.now)}
        state.event(NORMAL, "SwitchoverDone", message)
    else:
        state.event(NORMAL, "FailoverDone",
                    f"{target.name} is the primary (timeline {timeline}); the replicas follow it"
                    + (f"; {', '.join(state.rejoining)} rejoin as replicas" if state.rejoining else ""))


# ---------------------------------------------------------------------------- switchover

def _annotation(facts: _Facts) -> str:
    return facts.cluster.annotations.get(ANNOTATION_SWITCHOVER, "").strip()


def _maybe_switchover(facts: _Facts, state: _State) -> None:
    wanted = _annotation(facts)
    if not wanted:
        return
    primary = str(state.current)
    state.clear_switchover = True
    if wanted == primary:
        state.last_switchover = {"target": wanted, "result": "Done", "message": f"{wanted} is the primary already",
                                 "time": rfc3339(facts.now)}
        return
    problem = switchover_problem(facts, wanted, primary)
    if problem:
        state.last_switchover = {"target": wanted, "result": "Refused", "message": problem,
                                 "time": rfc3339(facts.now)}
        state.event(WARNING, "SwitchoverRefused", problem)
        return
    state.clear_switchover = False  # until it is done
    now = rfc3339(facts.now)
    state.failover = {"kind": SWITCHOVER, "phase": DEMOTING, "oldPrimary": primary, "target": wanted,
                      "since": now, "phaseSince": now, "reason": f"pgop promote {wanted}",
                      "deposed": [primary], "waitingFor": f"{primary} to shut down cleanly"}
    state.target = ""
    state.event(NORMAL, "SwitchoverStarted",
                f"switchover from {primary} to {wanted}: {primary} shuts down cleanly (fast), sending "
                f"its last WAL to the replicas; {wanted} is promoted once it has received all of it")


def switchover_problem(facts: _Facts, wanted: str, primary: str) -> str:
    target = facts.by_name.get(wanted)
    if target is None:
        return f"switchover refused: {wanted} is not an instance of this cluster"
    if facts.is_fenced(target):
        return f"switchover refused: {wanted} is fenced"
    if not is_ready(target, facts.now, facts.heartbeat_timeout):
        return f"switchover refused: {wanted} is not ready"
    st = target.status
    if st.wal_receiver != STREAMING or st.following != primary:
        return (f"switchover refused: {wanted} is not streaming from the primary {primary} "
                f"(walReceiver {st.wal_receiver or 'unknown'}, following {st.following or 'nobody'})")
    old = facts.by_name.get(primary)
    ours = old.status.system_identifier if old is not None else None
    if ours and st.system_identifier and ours != st.system_identifier:
        return (f"switchover refused: {wanted} is on system identifier {st.system_identifier}, "
                f"the primary on {ours}")
    return ""


def _demoting(facts: _Facts, state: _State) -> None:
    failover = state.failover or {}
    old_name = str(failover.get("oldPrimary") or "")
    wanted = str(failover.get("target") or "")
    since = parse_time(failover.get("phaseSince"))
    old = facts.by_name.get(old_name)
    target = facts.by_name.get(wanted)
    waited = (facts.now - since).total_seconds() if since else 0.0
    final = failover.get("oldPrimaryLSN")
    if not final:
        # Demoted cleanly: back as a replica, or stopped with the shutdown checkpoint it ended on
        if old is not None and (old.status.role == REPLICA or old.status.phase == "Stopped") and \
                facts.fresh(old, since) and (old.status.replay_lsn or old.status.lsn):
            final = old.status.replay_lsn or old.status.lsn
            failover = {**failover, "oldPrimaryLSN": final}
            state.failover = failover
        else:
            why = _failure(facts, old_name)
            if why:  # the old primary died during its shutdown: a failover decides now
                state.failover = {**failover, "kind": FAILOVER}
                state.last_switchover = {"target": wanted, "result": "Refused", "time": rfc3339(facts.now),
                                         "message": f"{old_name} failed during the switchover ({why}); "
                                                    "a failover chooses the new primary"}
                state.clear_switchover = True
                _start_failover(facts, state, old_name, why)
                return
            _wait(state, "Switchover", f"switchover: waiting for {old_name} to shut down cleanly and report "
                  "its last WAL position")
            return
    received = target.status.received_lsn if target is not None else None
    try:
        caught_up = received is not None and parse_lsn(received) >= parse_lsn(str(final))
    except ValueError:
        caught_up = False
    if caught_up and target is not None and not facts.is_fenced(target):
        state.target = wanted
        state.failover = {**failover, "phase": PROMOTING, "phaseSince": rfc3339(facts.now),
                          "waitingFor": f"{wanted} to report primary"}
        state.event(NORMAL, "Promoted", f"promoting {wanted}: it received all WAL of {old_name} "
                    f"(up to {final}); {_describe_position(target)}")
        return
    if waited > SWITCHOVER_CATCH_UP_TIMEOUT or target is None or facts.is_fenced(target):
        message = (f"switchover to {wanted} given up: it did not receive {old_name}'s last WAL ({final}) "
                   f"within {SWITCHOVER_CATCH_UP_TIMEOUT:.0f}s (received {received or 'nothing'}); "
                   f"{old_name} is promoted again, nothing was lost")
        state.target = old_name
        state.failover = {**failover, "phase": PROMOTING, "target": old_name, "phaseSince": rfc3339(facts.now),
                          "deposed": [], "waitingFor": f"{old_name} to report primary again"}
        state.last_switchover = {"target": wanted, "result": "Refused", "message": message,
                                 "time": rfc3339(facts.now)}
        state.clear_switchover = True
        state.event(WARNING, "SwitchoverRefused", message)
        return
    _wait(state, "Switchover", f"switchover: waiting for {wanted} to receive {old_name}'s last WAL ({final}); "
          f"it has {received or 'nothing'}")


# ------------------------------------------------------------------------------ rejoin

def _rejoins(facts: _Facts, state: _State) -> None:
    if state.failover is not None and state.failover.get("phase") != PENDING:
        return
    left = []
    for name in state.rejoining:
        instance = facts.by_name.get(name)
        if instance is None:
            continue
        st = instance.status
        if (st.role == REPLICA and st.following == state.current and st.wal_receiver == STREAMING
                and facts.fresh(instance)):
            state.event(NORMAL, "Rejoined", f"{name}, a former primary, streams from {state.current} "
                        f"as a replica (timeline {st.timeline})")
        else:
            left.append(name)
    state.rejoining = left
