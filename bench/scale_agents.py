"""LOAD GENERATOR, NOT PGOP: it plays the parts that run inside pods on a real cluster, for the
simulated instances of bench/scale.py (pods on KWOK nodes, where no container runs):

- the agents: for every PgInstance whose Postgres pod runs, what `pgop agent run` sends the API
  server on each turn of its loop (pgop/agent/loop.py: `read_spec` GETs its PgInstance and LISTs
  its cluster's, `report` merge-patches the status when it changed or its report refresh is due,
  as `pgop.agent.status.worth_writing` decides, and otherwise renews its liveness Lease (making it
  on first use: pgop.kernel.liveness) when its heartbeat is due), every `interval` seconds
  (pgop.agent.settings.DEFAULT_INTERVAL unless told) and at once when its spec changes (the
  agent's watch). The status is built by the agent's own pgop.agent.status.build_status from a
  made-up observation: Postgres accepts connections in the role the spec asks, on timeline 1,
  replicas stream from spec.primary with no lag, and every spec is applied (a reload) at once.
  Keep this in step with the agent when its traffic changes;
- a volume provisioner for the benchmark's StorageClass: a PersistentVolume pre-bound to each
  claim (nothing is mounted: no container runs).

Everything is cached from watches (one per kind, across namespaces), so the benchmark's own reads
of what exists cost the API server nothing per object. Every request this process sends is
counted (bench.kubeapi.Api.sent), so the report can tell the agents' traffic from the rest.
"""
from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.kubeapi import Api, ApiError
from pgop.agent import ha
from pgop.agent import status as agent_status
from pgop.agent.observed import PostgresState
from pgop.agent.settings import DEFAULT_INTERVAL, DEFAULT_REPORT_REFRESH, DEFAULT_STATUS_REFRESH, AgentSettings
from pgop.agent.streaming import ReceiverState, Standby
from pgop.kernel import liveness
from pgop.kernel.meta import COMPONENT_POSTGRES, LABEL_CLUSTER, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_ROLE
from pgop.kernel.model import API_GROUP, Instance

log = logging.getLogger("bench.scale")

Key = tuple[str, str]  # (namespace, name)
PGOP = f"/apis/{API_GROUP}/v1"


def _key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


def made_up_lsn(turns: int) -> str:
    """An LSN that moves a little every 30 turns of the primary, about once a minute: a quiet
    database (an idle one writes no WAL at all; archive_timeout or a checkpoint moves it now and
    then). Each move is a status change the agents write at once."""
    value = 0x3000000 + 0x60 * (turns // 30)
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def system_identifier(namespace: str, cluster: str) -> str:
    """One per cluster, the same for all its instances (as after initdb and pg_basebackup)."""
    return str(7_000_000_000_000_000_000 + (hash((namespace, cluster)) % 10**18))


def simulated_status(instance: dict[str, Any], pod: dict[str, Any], *, now: datetime,
                     primary_lsn: str | None, lsn: str, members: list[dict[str, Any]],
                     interval: float) -> dict[str, Any]:
    """The status patch an agent would send for `instance` running in `pod`, Postgres healthy in
    the role its spec asks, the spec applied (pure)."""
    meta, spec = instance["metadata"], instance.get("spec") or {}
    role = spec.get("role") or "replica"
    namespace, cluster = meta.get("namespace", ""), spec.get("cluster") or ""
    settings = AgentSettings(
        cluster=cluster, instance=meta["name"], namespace=namespace,
        pgdata=Path("/var/lib/postgresql/data/pgdata"), secrets_dir=Path("/etc/pgop/secrets"),
        pod_name=pod["metadata"]["name"], pod_uid=pod["metadata"].get("uid", ""),
        pod_ip=(pod.get("status") or {}).get("podIP", ""), node_name=(pod.get("spec") or {}).get("nodeName", ""),
        interval=interval)
    replica = role == "replica"
    wanted_primary = spec.get("primary")
    members_here = [Instance.from_object(m) for m in members]
    sync = "quorum" if (spec.get("synchronousReplicas") or 0) > 0 else "async"
    standbys = tuple(Standby(application_name=m.name, state="streaming", sync_state=sync)
                     for m in members_here if m.name != meta["name"]) if not replica else ()
    state = PostgresState(
        accepting=True, role=role, timeline=1, lsn=primary_lsn if replica and primary_lsn else lsn,
        received_lsn=(primary_lsn or lsn) if replica else None,
        system_identifier=system_identifier(namespace, cluster),
        receiver=ReceiverState(status="streaming", received_tli=1, sender_host=spec.get("primaryHost") or None)
        if replica else None, standbys=standbys)
    generation = int(meta.get("generation") or 1)
    previous = instance.get("status") or {}
    patch = agent_status.build_status(
        settings, now=now, state=state, decision=ha.Decision((), ha.RUNNING), ready=True,
        generation=generation, applied_generation=generation,
        previous_conditions=previous.get("conditions") or [], primary_lsn=primary_lsn,
        following=wanted_primary if wanted_primary is not None else None)
    if not replica:
        patch["replicaSyncStates"] = agent_status.replica_sync_states(
            standbys, members_here, previous.get("replicaSyncStates"))
    return patch


@dataclass
class World:
    """What the watches saw, by kind; only the namespaces of this run."""
    prefix: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    clusters: dict[Key, dict[str, Any]] = field(default_factory=dict)
    instances: dict[Key, dict[str, Any]] = field(default_factory=dict)
    pods: dict[Key, dict[str, Any]] = field(default_factory=dict)  # Postgres pods, by instance key
    claims: dict[Key, dict[str, Any]] = field(default_factory=dict)
    role_flips: Counter[str] = field(default_factory=Counter)  # a Postgres pod's role label, "old->new"
    left_ready: Counter[str] = field(default_factory=Counter)  # a cluster's phase after Ready, by phase
    changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    def ours(self, obj: dict[str, Any]) -> bool:
        return (obj.get("metadata") or {}).get("namespace", "").startswith(self.prefix)


class Agents:
    """The simulated agents and the volume provisioner (see the module's docstring)."""

    def __init__(self, api: Api, world: World, storage_class: str, *, interval: float = DEFAULT_INTERVAL,
                 reads: bool = True, workers: int = 6, start_delay: float = 0.5):
        self.api, self.world, self.storage_class = api, world, storage_class
        self.interval, self.reads, self.workers, self.start_delay = interval, reads, workers, start_delay
        self.stopping = threading.Event()
        self.queue: list[tuple[float, int, Key]] = []  # (when, sequence, instance key)
        self.due: dict[Key, float] = {}  # the next turn of each agent
        self.running: set[Key] = set()
        self.queue_lock = threading.Condition()
        self.sequence = 0
        self.live: dict[Key, str] = {}  # instance key -> the pod UID its agent runs in
        self.turns: dict[Key, int] = {}
        self.written_at: dict[Key, float] = {}  # monotonic, of each simulated agent's last status write
        self.status_refresh = DEFAULT_STATUS_REFRESH
        self.report_refresh = DEFAULT_REPORT_REFRESH
        self.leased: dict[Key, float] = {}  # monotonic, of each simulated agent's last Lease renewal
        self.lease_failed: dict[Key, float] = {}  # monotonic, of its last failed renewal
        self.applied: dict[Key, int] = {}  # generation last reported
        self.lateness: list[float] = []  # seconds each turn started after it was due
        self.failures = 0
        self.failed: Counter[str] = Counter()  # why turns failed
        self.provisioned: set[str] = set()
        self.threads: list[threading.Thread] = []

    # ----------------------------------------------------------------------------- watches

    def start(self) -> None:
        watches: list[tuple[str, Callable[[str, dict[str, Any]], None], dict[str, str]]] = [
            (f"{PGOP}/pgclusters", self._on_cluster, {}),
            (f"{PGOP}/pginstances", self._on_instance, {}),
            ("/api/v1/pods", self._on_pod, {"labelSelector": f"{LABEL_COMPONENT}={COMPONENT_POSTGRES}"}),
            ("/api/v1/persistentvolumeclaims", self._on_claim, {"labelSelector": LABEL_CLUSTER}),
        ]
        for path, handler, query in watches:
            t = threading.Thread(target=self.api.watch, args=(path, handler, self.stopping), kwargs=query,
                                 name=f"watch {path.rsplit('/', 1)[-1]}", daemon=True)
            t.start()
            self.threads.append(t)
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"agent-{i}", daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self) -> None:
        self.stopping.set()
        with self.queue_lock:
            self.queue_lock.notify_all()

    def _store(self, table: dict[Key, dict[str, Any]], kind: str, obj: dict[str, Any], key: Key | None = None) -> None:
        with self.world.lock:
            if kind == "DELETED":
                table.pop(key or _key(obj), None)
            else:
                table[key or _key(obj)] = obj
            self.world.changed.notify_all()

    def _on_cluster(self, kind: str, obj: dict[str, Any]) -> None:
        if not self.world.ours(obj):
            return
        with self.world.lock:
            before = self.world.clusters.get(_key(obj))
        was = ((before or {}).get("status") or {}).get("phase")
        now = (obj.get("status") or {}).get("phase")
        if was == "Ready" and now != "Ready" and kind != "DELETED":
            self.world.left_ready[str(now)] += 1
        self._store(self.world.clusters, kind, obj)

    def _on_instance(self, kind: str, obj: dict[str, Any]) -> None:
        if not self.world.ours(obj):
            return
        key = _key(obj)
        self._store(self.world.instances, kind, obj)
        generation = int(obj["metadata"].get("generation") or 0)
        if kind != "DELETED" and key in self.live and self.applied.get(key) not in (None, generation):
            self._schedule(key, 0.0)  # the agent's watch: a new spec wakes the loop at once

    def _on_pod(self, kind: str, obj: dict[str, Any]) -> None:
        if not self.world.ours(obj):
            return
        meta = obj["metadata"]
        key = (meta["namespace"], (meta.get("labels") or {}).get(LABEL_INSTANCE, ""))
        status = obj.get("status") or {}
        running = (kind != "DELETED" and status.get("phase") == "Running" and status.get("podIP")
                   and not meta.get("deletionTimestamp"))
        with self.world.lock:
            before = self.world.pods.get(key)
        if before is not None and before["metadata"].get("uid") == meta.get("uid") and kind != "DELETED":
            old = (before["metadata"].get("labels") or {}).get(LABEL_ROLE)
            new = (meta.get("labels") or {}).get(LABEL_ROLE)
            if old != new and old is not None:
                self.world.role_flips[f"{old}->{new}"] += 1
        self._store(self.world.pods, "DELETED" if kind == "DELETED" else kind, obj, key)
        if running and self.live.get(key) != meta.get("uid"):
            self.live[key] = meta.get("uid", "")
            self._schedule(key, random.uniform(0, self.start_delay))  # the agent starts Postgres
        elif not running and self.live.get(key) == meta.get("uid"):
            self.live.pop(key, None)  # the pod stops or goes: so does its agent

    def _on_claim(self, kind: str, obj: dict[str, Any]) -> None:
        if not self.world.ours(obj):
            return
        self._store(self.world.claims, kind, obj)
        meta, spec = obj["metadata"], obj.get("spec") or {}
        if (kind == "DELETED" or spec.get("storageClassName") != self.storage_class or spec.get("volumeName")
                or meta.get("uid") in self.provisioned or meta.get("deletionTimestamp")):
            return
        self.provisioned.add(meta["uid"])
        try:
            self.api.create("/api/v1/persistentvolumes", volume_for(obj, self.world.prefix))
        except ApiError as error:
            self.provisioned.discard(meta["uid"])
            log.warning("cannot provision a volume for %s/%s: %s", meta["namespace"], meta["name"], error)

    # ------------------------------------------------------------------------------ agents

    def _schedule(self, key: Key, delay: float) -> None:
        """The agent's next turn in `delay` seconds, unless one is due sooner (one chain of turns
        per agent: a woken agent does not beat twice as often afterwards)."""
        when = time.monotonic() + delay
        with self.queue_lock:
            if key in self.due and self.due[key] <= when:
                return
            self.due[key] = when
            self.sequence += 1
            heapq.heappush(self.queue, (when, self.sequence, key))
            self.queue_lock.notify()

    def _next(self) -> tuple[float, Key] | None:
        with self.queue_lock:
            while not self.stopping.is_set():
                now = time.monotonic()
                if self.queue and self.queue[0][0] <= now:
                    when, _, key = heapq.heappop(self.queue)
                    if self.due.get(key) != when:
                        continue  # superseded by a sooner turn
                    if key in self.running:  # one turn at a time per agent, as its loop does
                        self.due[key] = now + 0.1
                        heapq.heappush(self.queue, (now + 0.1, self.sequence, key))
                        continue
                    del self.due[key]
                    self.running.add(key)
                    return when, key
                self.queue_lock.wait(min(1.0, self.queue[0][0] - now) if self.queue else 1.0)
        return None

    def _work(self) -> None:
        while (item := self._next()) is not None:
            when, key = item
            try:
                if key not in self.live:
                    continue  # the pod went; its agent with it
                self.lateness.append(time.monotonic() - when)
                try:
                    self.turn(key)
                except Exception as error:  # a turn fails, the next one comes
                    self.failures += 1
                    self.failed[f"{type(error).__name__} {getattr(error, 'status', '')}".strip()] += 1
                    log.debug("simulated agent %s/%s: %s", key[0], key[1], error)
            finally:
                with self.queue_lock:
                    self.running.discard(key)
            if key in self.live:
                self._schedule(key, self.interval)

    def turn(self, key: Key) -> None:
        namespace, name = key
        base = f"{PGOP}/namespaces/{namespace}/pginstances"
        with self.world.lock:
            instance = self.world.instances.get(key)
            pod = self.world.pods.get(key)
        if instance is None or pod is None:
            return
        cluster = (instance.get("spec") or {}).get("cluster") or ""
        if self.reads:  # what read_spec sends: my PgInstance, then my cluster's
            fresh = self.api.get_or_none(f"{base}/{name}")
            if fresh is None:
                return
            instance = fresh
            members = self.api.get(base, labelSelector=f"{LABEL_CLUSTER}={cluster}").get("items") or []
        else:
            with self.world.lock:
                members = [i for k, i in self.world.instances.items()
                           if k[0] == namespace and (i.get("spec") or {}).get("cluster") == cluster]
        primary = next((m for m in members if (m.get("spec") or {}).get("role") == "primary"
                        and (m.get("status") or {}).get("role") == "primary"), None)
        turns = self.turns[key] = self.turns.get(key, 0) + 1
        patch = simulated_status(instance, pod, now=datetime.now(UTC),
                                 primary_lsn=((primary or {}).get("status") or {}).get("lsn"),
                                 lsn=made_up_lsn(turns), members=members, interval=self.interval)
        # As the agent (pgop.agent.loop.report): a write when the status changes; else a heartbeat
        # every status refresh (a primary's on every turn: pgop.agent.status.refresh_for), as a
        # renewal of its liveness Lease (pgop.kernel.liveness), and the unchanged status again
        # every report refresh.
        written = self.written_at.get(key)
        since = None if written is None else time.monotonic() - written
        receiver = ReceiverState(status=patch.get("walReceiver"), received_tli=1, sender_host=None) \
            if patch.get("role") == "replica" else None
        beat_every = agent_status.refresh_for(Instance.from_object(instance),
                                              PostgresState(role=patch.get("role"), receiver=receiver),
                                              self.status_refresh)
        # As Loop.may_lease: the Lease carries the heartbeat unless a renewal failed within the
        # last report refresh (the status carries it meanwhile).
        may_lease = time.monotonic() - self.lease_failed.get(key, float("-inf")) >= self.report_refresh
        if not agent_status.worth_writing(instance.get("status"), patch, since,
                                          self.report_refresh if may_lease else beat_every):
            beat_at = max(written or float("-inf"), self.leased.get(key, float("-inf")))
            if time.monotonic() - beat_at < beat_every:
                return
            holder, now = self.live.get(key, ""), datetime.now(UTC)
            leases = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
            try:
                if key in self.leased:
                    self.api.merge_patch(f"{leases}/{liveness.lease_name(name)}", liveness.renewal(holder, now))
                else:
                    self.api.create(leases, liveness.lease_body(namespace, name, cluster,
                                                                instance["metadata"].get("uid", ""), holder, now))
                self.leased[key] = time.monotonic()
                return
            except ApiError as error:
                if error.status == 404:  # the Lease is gone: made again next turn
                    self.leased.pop(key, None)
                    return
                if error.status == 409:  # made already: renewed next turn
                    self.leased[key] = float("-inf")
                    return
                self.lease_failed[key] = time.monotonic()
                raise
        try:
            self.api.merge_patch(f"{base}/{name}/status", {"status": patch})
            self.written_at[key] = time.monotonic()
        except ApiError as error:
            if error.status == 404:
                return  # gone
            raise
        self.applied[key] = int(instance["metadata"].get("generation") or 0)


def volume_for(claim: dict[str, Any], run_label: str) -> dict[str, Any]:
    """A PersistentVolume pre-bound to `claim` (nothing is ever mounted from it)."""
    meta, spec = claim["metadata"], claim.get("spec") or {}
    return {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": f"bench-{meta['uid']}", "labels": {"bench.pgop.io/scale-pv": run_label.strip("-")}},
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",  # the benchmark deletes them itself
            "storageClassName": spec["storageClassName"],
            "volumeMode": "Filesystem",
            "hostPath": {"path": f"/nonexistent/bench-scale/{meta['uid']}"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta["namespace"],
                         "name": meta["name"], "uid": meta["uid"]},
        },
    }
