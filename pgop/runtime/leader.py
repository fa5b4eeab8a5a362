"""One active operator among its replicas: leader election through a `coordination.k8s.io` Lease.

The rules are those of Kubernetes' own controllers (client-go's leaderelection), so an
administrator reads the Lease the way they read kube-controller-manager's:

- A candidate takes the Lease when it is free (no holder: released by a leader that stopped
  cleanly) or when its record has not changed for `leaseDurationSeconds` as the candidate measures
  it on its own clock. Times written in the Lease are never compared with the local clock, so a
  skewed clock cannot make two leaders.
- The leader renews every `RENEW_INTERVAL`. One that could not renew for `RENEW_DEADLINE`
  (shorter than the lease duration) stops acting by exiting before any candidate may take over;
  its container restarts as a candidate.
- A leader that stops cleanly (SIGTERM: a rollout, a drain) releases the Lease, and a candidate
  takes it at its next look, within `RETRY_PERIOD`.
- Every write carries the resourceVersion it read: of two candidates, one wins, the other gets a
  conflict and stays a candidate.

What this cannot do: a leader frozen as a whole (SIGSTOP, a VM pause) longer than the lease
duration is replaced while frozen and, when thawed, may act until its renew loop notices, at most
one `RENEW_INTERVAL` later. Kubernetes' controllers share that window.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.rest import ApiException

log = logging.getLogger("pgop.leader")

LEASE_DURATION = 10.0  # a leader not heard of for this long is gone
RENEW_DEADLINE = 7.0   # a leader that could not renew for this long stops acting
RENEW_INTERVAL = 2.0
RETRY_PERIOD = 1.0     # how often a candidate looks at the Lease

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_identity() -> str:
    """The pod's name (its hostname) and a random part: a restarted container is a new candidate."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def default_namespace(env: Mapping[str, str] | None = None) -> str:
    given = (os.environ if env is None else env).get("PGOP_NAMESPACE")
    if given:
        return given
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


@dataclass(frozen=True)
class Record:
    """What a Lease says about its holder."""
    holder: str | None
    renew_time: str | None
    duration: float
    transitions: int

    @classmethod
    def of(cls, lease: dict[str, Any] | None) -> Record | None:
        if lease is None:
            return None
        spec = lease.get("spec") or {}
        return cls(holder=spec.get("holderIdentity") or None, renew_time=spec.get("renewTime"),
                   duration=float(spec.get("leaseDurationSeconds") or LEASE_DURATION),
                   transitions=int(spec.get("leaseTransitions") or 0))


def may_take(record: Record | None, me: str, unchanged_since: float, now: float) -> bool:
    """May candidate `me` take the Lease? `unchanged_since` is when it last saw the record change,
    on its own monotonic clock."""
    if record is None or record.holder is None or record.holder == me:
        return True
    return now - unchanged_since >= record.duration


def lease_spec(me: str, record: Record | None, now: datetime, duration: float = LEASE_DURATION) -> dict[str, Any]:
    """The Lease's spec once `me` holds it (acquired, or renewed)."""
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    renewing = record is not None and record.holder == me
    transitions = (record.transitions if record else 0) + (0 if renewing or record is None else 1)
    return {"holderIdentity": me, "leaseDurationSeconds": int(duration), "renewTime": stamp,
            **({} if renewing else {"acquireTime": stamp}), "leaseTransitions": transitions}


def released_spec(record: Record, now: datetime) -> dict[str, Any]:
    """Given up cleanly: no holder, so a candidate need not wait out the duration."""
    return {"holderIdentity": None, "leaseDurationSeconds": 1, "leaseTransitions": record.transitions,
            "renewTime": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}


class LostLeadership(Exception):
    pass


class Elector:
    """The effects: reads and writes the Lease through `pgop.runtime.kube.Kube`."""

    def __init__(self, kube: Any, namespace: str, name: str, identity: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.kube, self.namespace, self.name = kube, namespace, name
        self.identity = identity or default_identity()
        self.clock = clock
        self._seen: tuple[Record | None, float] = (None, clock())
        self._lease: dict[str, Any] | None = None
        self.renewed_at = 0.0

    def _read(self) -> Record | None:
        self._lease = self.kube.get("Lease", self.namespace, self.name)
        record = Record.of(self._lease)
        if record != self._seen[0]:
            self._seen = (record, self.clock())
        return record

    def _write(self, spec: dict[str, Any]) -> bool:
        """Create or replace the Lease as read; False when another candidate wrote it meanwhile."""
        try:
            if self._lease is None:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
                created = self.kube.create(body)
                if created is None:  # 409: another candidate created it first
                    return False
                self._lease = created
            else:
                self._lease = self.kube.replace({**self._lease, "spec": spec})
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    def try_acquire(self) -> bool:
        record = self._read()
        if not may_take(record, self.identity, self._seen[1], self.clock()):
            return False
        if self._write(lease_spec(self.identity, record, datetime.now(UTC))):
            self.renewed_at = self.clock()
            if record is None or record.holder != self.identity:
                log.info("leader election: %s took the Lease %s/%s (from %s)", self.identity, self.namespace,
                         self.name, (record.holder if record else None) or "nobody")
            return True
        return False

    def renew(self) -> None:
        """One renewal; raises LostLeadership when another holds the Lease."""
        record = self._read()
        if record is None or record.holder != self.identity:
            raise LostLeadership(f"the Lease {self.namespace}/{self.name} is held by "
                                 f"{record.holder if record else 'nobody'}")
        if self._write(lease_spec(self.identity, record, datetime.now(UTC))):
            self.renewed_at = self.clock()

    def release(self) -> None:
        try:
            record = self._read()
            if record is not None and record.holder == self.identity:
                self._write(released_spec(record, datetime.now(UTC)))
                log.info("leader election: %s released the Lease %s/%s", self.identity, self.namespace, self.name)
        except Exception as error:  # the next leader waits out the duration instead
            log.warning("leader election: could not release the Lease: %s", error)

    async def acquire(self) -> None:
        """Waits until this process holds the Lease."""
        announced = False
        while True:
            try:
                if await asyncio.to_thread(self.try_acquire):
                    return
                if not announced:
                    log.info("leader election: %s is a candidate; the Lease %s/%s is held by %s",
                             self.identity, self.namespace, self.name, self._seen[0] and self._seen[0].holder)
                    announced = True
            except Exception as error:
                log.warning("leader election: cannot read the Lease %s/%s: %s", self.namespace, self.name, error)
            await asyncio.sleep(RETRY_PERIOD)

    async def keep(self) -> None:
        """Renews until the Lease is lost or cannot be renewed in time; then raises LostLeadership."""
        while True:
            await asyncio.sleep(RENEW_INTERVAL)
            try:
                await asyncio.wait_for(asyncio.to_thread(self.renew), RENEW_DEADLINE)
            except LostLeadership:
                raise
            except Exception as error:
                log.warning("leader election: renewal failed: %s", error)
            if self.clock() - self.renewed_at >= RENEW_DEADLINE:
                raise LostLeadership(f"the Lease {self.namespace}/{self.name} was not renewed for "
                                     f"{RENEW_DEADLINE:.0f}s")
