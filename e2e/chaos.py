"""Client-side chaos for PgClusters on the local cluster: a writer pod, fault injectors, and the
checks a user makes afterwards (docs/high-availability.md, issue "High availability").

    cluster = ChaosCluster(kubectl, ns, "orders"); cluster.allow_chaos()
    writer = Writer(cluster); writer.start()
    fault_at = force_delete_pod(cluster, cluster.primary())
    writer.wait_for_ack(sent_after=fault_at)
    cluster.wait_converged()
    report = writer.finish()             # stops the writer and compares with the final primary
    assert report.ok(), report.summary()

Used by e2e/test_failover.py (asserts) and bench/failover.py (prints figures). Faults reach only
pods of namespaces labelled by `allow_chaos()`, which a test does on the namespace it created.
The host-level faults (network cut, agent kill) need root on the node, which the single-node
local cluster is.
"""
from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.harness import paths

WRITER_SOURCE = Path(__file__).with_name("chaos_writer.py")
WRITER_IMAGE = "localhost/pgop-postgres:dev"
CHAOS_LABEL = "pgop.io/chaos"
CHAOS_LABEL_VALUE = "allowed"
WRITES_TABLE = "pgop_chaos_writes"
# The CLI of this checkout: its venv, or the one running these tests (a worktree shares one venv).
PGOP = next((p for p in (paths.REPO / ".venv" / "bin" / "pgop", Path(sys.executable).parent / "pgop")
             if p.exists()), paths.REPO / ".venv" / "bin" / "pgop")
# CloudNativePG's e2e bounds, the bar the issue names (seconds).
CNPG_BOUNDS = {"pod delete": 20.0, "switchover": 20.0, "rejoin": 60.0,
               # node loss: the node-monitor grace period (40-50 s) plus up to 5 s, the upper end
               "node loss": 55.0}


class ChaosError(AssertionError):
    pass


def _eventually(fn: Callable[[], Any], what: str, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except (subprocess.TimeoutExpired, AssertionError, ValueError, KeyError) as e:
            last = e
        time.sleep(interval)
    raise ChaosError(f"timed out after {timeout:.0f}s waiting for {what}: {last!r}")


# ------------------------------------------------------------------------------------- the cluster

class ChaosCluster:
    """A PgCluster seen from outside: kubectl for the objects, kubectl exec + psql (superuser over
    the local socket) for what Postgres itself says."""

    def __init__(self, kubectl, namespace: str, name: str):
        self.kubectl, self.ns, self.name = kubectl, namespace, name

    def k(self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None):
        return self.kubectl("-n", self.ns, *args, check=check, timeout=timeout, input=input)

    def get(self, *args: str) -> dict:
        return json.loads(self.k("get", *args, "-o", "json").stdout)

    def allow_chaos(self) -> None:
        """Marks the namespace as one whose pods may be faulted (only on namespaces a test made)."""
        self.kubectl("label", "namespace", self.ns, f"{CHAOS_LABEL}={CHAOS_LABEL_VALUE}", "--overwrite")

    def check_allowed(self) -> None:
        labels = json.loads(self.kubectl("get", "namespace", self.ns, "-o", "json").stdout)["metadata"].get("labels") or {}
        if labels.get(CHAOS_LABEL) != CHAOS_LABEL_VALUE:
            raise ChaosError(f"namespace {self.ns} is not labelled {CHAOS_LABEL}={CHAOS_LABEL_VALUE}: "
                             "no faults outside the namespaces a test created")

    # ---- objects
    def status(self) -> dict:
        return self.get("pgcluster", self.name).get("status") or {}

    def instances(self) -> list[dict]:
        items = self.get("pginstances", "-l", f"pgop.io/cluster={self.name}")["items"]
        if not items:  # the label is a convenience; spec.cluster is the contract
            items = [i for i in self.get("pginstances")["items"] if i["spec"].get("cluster") == self.name]
        return sorted(items, key=lambda i: i["spec"].get("ordinal", 0))

    def instance_names(self) -> list[str]:
        return [i["metadata"]["name"] for i in self.instances()]

    def primary(self) -> str:
        """The primary as the cluster's status names it."""
        current = self.status().get("currentPrimary")
        if not current:
            raise ChaosError(f"PgCluster {self.name} names no currentPrimary")
        return current

    def pod(self, name: str) -> dict:
        return self.get("pod", name)

    def pod_uid(self, name: str) -> str:
        return self.pod(name)["metadata"]["uid"]

    def pod_by_ip(self, ip: str) -> str | None:
        for pod in self.get("pods", "-l", f"pgop.io/cluster={self.name}")["items"]:
            if (pod.get("status") or {}).get("podIP") == ip:
                return pod["metadata"]["name"]
        return None

    def events(self) -> list[dict]:
        items = self.get("events", "--field-selector", f"involvedObject.name={self.name}")["items"]
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def describe(self) -> str:
        """What a person looks at when a scenario failed."""
        wide = self.k("get", "pgc,pgi,pods,pvc", "-o", "wide", check=False).stdout
        events = self.k("get", "events", "--sort-by=.lastTimestamp", check=False).stdout
        return f"{json.dumps(self.status(), indent=1)[-3000:]}\n{wide}\n{events[-4000:]}"

    # ---- Postgres
    def psql(self, pod: str, sql: str, db: str = "app", timeout: float = 20) -> str:
        p = self.k("exec", pod, "-c", "postgres", "--", "psql", "-XAtq", "-v", "ON_ERROR_STOP=1",
                   "-d", db, "-c", sql, timeout=timeout)
        return p.stdout.strip()

    def timeline(self, pod: str) -> int:
        """The timeline WAL is written on (primary) or received on (replica)."""
        return int(self.psql(pod, "select case when pg_is_in_recovery() "
                                  "then (select received_tli from pg_stat_wal_receiver) "
                                  "else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end")
                   or 0)

    def in_recovery(self, pod: str) -> bool:
        return self.psql(pod, "select pg_is_in_recovery()") == "t"

    def system_identifier(self, pod: str) -> str:
        return self.psql(pod, "select system_identifier from pg_control_system()")

    def acked_rows(self, pod: str, run: str) -> set[int]:
        out = self.psql(pod, f"select seq from {WRITES_TABLE} where run = '{run}'", timeout=60)
        return {int(s) for s in out.split()}

    def rw_endpoints(self) -> list[str]:
        slices = self.get("endpointslices", "-l", f"kubernetes.io/service-name={self.name}-rw")["items"]
        return sorted(a for s in slices for e in s.get("endpoints") or []
                      if (e.get("conditions") or {}).get("ready") for a in e["addresses"])

    # ---- waiting
    def wait_ready(self, instances: int, timeout: float = 300) -> dict:
        def ready():
            st = self.status()
            return (st.get("phase") == "Ready" and st.get("readyInstances") == instances
                    and len(st.get("instances") or []) == instances) and st
        try:
            return _eventually(ready, f"PgCluster {self.name} Ready with {instances} instances", timeout, 1)
        except ChaosError as e:
            raise ChaosError(f"{e}\n{self.describe()}") from None

    def convergence_problems(self) -> list[str]:
        """Empty when every instance is Ready and streaming on the newest timeline: one primary (the
        one the status names, the only -rw endpoint), every other instance a replica whose WAL
        receiver streams from it on its timeline, all on one system identifier."""
        problems: list[str] = []
        st = self.status()
        items = self.instances()
        names = [i["metadata"]["name"] for i in items]
        primary = st.get("currentPrimary")
        if st.get("phase") != "Ready":
            problems.append(f"PgCluster phase {st.get('phase')!r}")
        if st.get("targetPrimary") not in (None, primary):
            problems.append(f"targetPrimary {st.get('targetPrimary')!r} != currentPrimary {primary!r}")
        if st.get("failover"):
            problems.append(f"a failover/switchover still in progress: {st['failover']}")
        for i in items:
            ist = i.get("status") or {}
            if not ist.get("ready"):
                problems.append(f"{i['metadata']['name']} not ready ({ist.get('phase')})")
            want = "primary" if i["metadata"]["name"] == primary else "replica"
            if ist.get("role") != want or i["spec"].get("role") != want:
                problems.append(f"{i['metadata']['name']}: spec.role {i['spec'].get('role')}, "
                                f"status.role {ist.get('role')}, expected {want}")
        if problems or not primary:
            return problems or ["no currentPrimary"]
        try:
            if self.in_recovery(primary):
                return [f"{primary} (currentPrimary) is in recovery"]
            tl = self.timeline(primary)
            sysid = self.system_identifier(primary)
            rows = self.psql(primary, "select application_name, state from pg_stat_replication")
            streaming = {r.split("|")[0] for r in rows.splitlines() if r.endswith("|streaming")}
            primary_ip = self.pod(primary)["status"].get("podIP")
            for name in names:
                if name == primary:
                    continue
                if name not in streaming:
                    problems.append(f"{name} not streaming from {primary} (pg_stat_replication: {rows!r})")
                # straight from the primary's pod, not through the -rw Service
                rec = self.psql(name, "select status, received_tli, sender_host from pg_stat_wal_receiver")
                if rec != f"streaming|{tl}|{primary_ip}":
                    problems.append(f"{name}: WAL receiver {rec!r}, expected streaming on timeline {tl} "
                                    f"from {primary_ip}")
                if self.system_identifier(name) != sysid:
                    problems.append(f"{name} is on another system identifier than {primary}")
            endpoints = self.rw_endpoints()
            if endpoints != [primary_ip]:
                problems.append(f"{self.name}-rw endpoints {endpoints}, expected only {primary} ({primary_ip})")
        except (AssertionError, subprocess.TimeoutExpired) as e:
            problems.append(f"cannot ask Postgres: {str(e).strip()[-300:]}")
        return problems

    def wait_converged(self, timeout: float = 300, since: float | None = None) -> float:
        """Waits until convergence_problems() is empty; returns seconds since `since` (wall clock,
        e.g. the time of a fault) or since the call."""
        t0 = since if since is not None else time.time()
        deadline = time.monotonic() + timeout
        problems: list[str] = []
        while time.monotonic() < deadline:
            problems = self.convergence_problems()
            if not problems:
                return time.time() - t0
            time.sleep(0.5)
        raise ChaosError(f"not converged after {timeout:.0f}s: {problems}\n{self.describe()}")


# ---------------------------------------------------------------------------------------- writer

@dataclass
class Ack:
    seq: int
    sent: float
    ack: float
    server: str
    sysid: str
    tl: int
    lsn: str
    late: bool = False


@dataclass
class Failure:
    seq: int | None
    sent: float
    at: float
    error: str


@dataclass
class Report:
    """What the client saw, and what the final primary holds."""
    run: str
    acks: list[Ack]
    failures: list[Failure]
    abandoned: list[int]
    final_primary: str | None = None
    final_rows: set[int] | None = None
    faults: list[tuple[str, float]] = field(default_factory=list)
    convergence: list[str] = field(default_factory=list)

    # -- figures
    @property
    def longest_gap(self) -> tuple[float, float, float]:
        """(seconds, from, to): the longest time between two acknowledged writes (ack times)."""
        times = sorted(a.ack for a in self.acks)
        best = (0.0, times[0] if times else 0.0, times[0] if times else 0.0)
        for a, b in zip(times, times[1:]):
            if b - a > best[0]:
                best = (b - a, a, b)
        return best

    def gap_over(self, at: float, until: float | None = None) -> float | None:
        """The write gap a fault at `at` caused: the longest time between two consecutive
        acknowledged writes where the later one came after `at` (and before `until`, e.g. the next
        fault). None when no write was acknowledged after `at`."""
        times = sorted(a.ack for a in self.acks)
        gaps = [b - a for a, b in zip(times, times[1:]) if b > at and (until is None or b <= until)]
        if not gaps:
            return None
        return max(gaps)

    def acks_after(self, at: float) -> list[Ack]:
        return [a for a in self.acks if a.sent >= at]

    @property
    def missing(self) -> list[int]:
        """Acknowledged writes that are not on the final primary."""
        if self.final_rows is None:
            return []
        return sorted({a.seq for a in self.acks} - self.final_rows)

    @property
    def unacknowledged_kept(self) -> int:
        """Rows on the final primary whose commit the client never saw acknowledged (in doubt: fine)."""
        if self.final_rows is None:
            return 0
        return len(self.final_rows - {a.seq for a in self.acks})

    @property
    def system_identifiers(self) -> list[str]:
        return sorted({a.sysid for a in self.acks})

    @property
    def foreign_acks(self) -> list[Ack]:
        """Acks from a server on another system identifier than the first ack's (a re-initialised
        primary behind -rw)."""
        if not self.acks:
            return []
        first = min(self.acks, key=lambda a: a.ack).sysid
        return [a for a in self.acks if a.sysid != first]

    @property
    def timelines(self) -> dict[int, float]:
        """timeline -> time of its first acknowledged write."""
        first: dict[int, float] = {}
        for a in self.acks:
            first[a.tl] = min(first.get(a.tl, a.ack), a.ack)
        return dict(sorted(first.items()))

    def _late_on_older_timeline(self) -> list[Ack]:
        """Writes acknowledged on an older timeline after a newer timeline's first acknowledged
        write."""
        first = self.timelines
        return [a for a in self.acks if any(t > a.tl and at < a.ack for t, at in first.items())]

    @property
    def deposed_acks(self) -> list[Ack]:
        """Writes a deposed primary acknowledged after the new primary's first write that are not
        on the final primary: it committed them after the fork, still serving (split brain)."""
        if self.final_rows is None:
            return self._late_on_older_timeline()
        return [a for a in self._late_on_older_timeline() if a.seq not in self.final_rows]

    @property
    def delayed_acks(self) -> list[Ack]:
        """Writes acknowledged late on an older timeline whose row is on the final primary: the
        commit was made before the fork (the new timeline has it; each seq is inserted once), and
        only its answer arrived late, e.g. from a node frozen mid-reply. Reported, not a problem."""
        if self.final_rows is None:
            return []
        return [a for a in self._late_on_older_timeline() if a.seq in self.final_rows]

    @property
    def servers(self) -> list[tuple[str, int, int]]:
        """(server address, timeline, acks) in the order the servers first acknowledged."""
        order: dict[tuple[str, int], list[float]] = {}
        for a in sorted(self.acks, key=lambda a: a.ack):
            order.setdefault((a.server, a.tl), []).append(a.ack)
        return [(s, t, len(v)) for (s, t), v in order.items()]

    def last_ack_on(self, tl: int) -> float | None:
        times = [a.ack for a in self.acks if a.tl == tl]
        return max(times) if times else None

    # -- verdict
    def problems(self) -> list[str]:
        out = []
        if not self.acks:
            out.append("no write was acknowledged")
        if self.final_rows is None:
            out.append("the final primary's rows were not read")
        if self.missing:
            out.append(f"{len(self.missing)} acknowledged writes missing on the final primary "
                       f"{self.final_primary}: seq {self.missing[:20]}")
        if self.deposed_acks:
            d = self.deposed_acks
            out.append(f"{len(d)} writes acknowledged by a deposed primary after the new primary's first "
                       f"write: {[(a.seq, a.server, a.tl) for a in d[:10]]}")
        if self.foreign_acks:
            out.append(f"{len(self.foreign_acks)} writes acknowledged on another system identifier "
                       f"({self.system_identifiers}): a re-initialised database behind -rw")
        for name, at in self.faults:
            failed = [f.sent for f in self.failures if f.sent >= at]
            if not self.acks_after(min(failed) if failed else at):
                out.append(f"writes did not resume after {name}")
        out += self.convergence
        return out

    def ok(self) -> bool:
        return not self.problems()

    def summary(self) -> str:
        gap, a, b = self.longest_gap
        lines = [f"run {self.run}: {len(self.acks)} acks, {len(self.failures)} failed attempts, "
                 f"{len(self.abandoned)} unanswered for long, longest gap {gap:.2f}s "
                 f"({_clock(a)} -> {_clock(b)})",
                 f"  servers (address, timeline, acks): {self.servers}",
                 f"  final primary {self.final_primary}: missing {len(self.missing)}, "
                 f"kept without ack {self.unacknowledged_kept}, acknowledged late by a deposed primary "
                 f"but committed before the fork {[(a.seq, a.server, a.tl) for a in self.delayed_acks]}"]
        starts = [at for _, at in self.faults]
        for i, (name, at) in enumerate(self.faults):
            gap_at = self.gap_over(at, starts[i + 1] if i + 1 < len(starts) else None)
            lines.append(f"  fault {name} at {_clock(at)}: gap {gap_at if gap_at is None else round(gap_at, 2)}s")
        if self.failures:
            first, last = self.failures[0], self.failures[-1]
            lines.append(f"  first error {_clock(first.at)}: {first.error[:160]}")
            lines.append(f"  last error {_clock(last.at)}: {last.error[:160]}")
        for p in self.problems():
            lines.append(f"  PROBLEM: {p}")
        return "\n".join(lines)


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}"


def parse_writer_log(text: str) -> tuple[list[Ack], list[Failure], list[int], list[dict]]:
    acks, failures, abandoned, other = [], [], [], []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        kind = ev.get("ev")
        if kind == "ack":
            acks.append(Ack(ev["seq"], ev["sent"], ev["ack"], ev["server"] or "", ev["sysid"], int(ev["tl"]),
                            ev["lsn"], bool(ev.get("late"))))
        elif kind == "error":
            failures.append(Failure(ev.get("seq"), ev["sent"], ev["at"], ev["error"]))
        elif kind == "abandoned":
            abandoned.append(ev["seq"])
        else:
            other.append(ev)
    return acks, failures, abandoned, other


class Writer:
    """The writer pod: one row per transaction through `<cluster>-rw` with the app credentials,
    every answer as a JSON line in its log (e2e/chaos_writer.py)."""

    def __init__(self, cluster: ChaosCluster, run: str | None = None, interval: float = 0.02,
                 max_seconds: float = 900, max_count: int = 100_000, attempt_timeout: float = 5):
        self.cluster = cluster
        self.run = run or f"w{uuid.uuid4().hex[:6]}"
        self.pod = f"chaos-writer-{self.run}".lower()
        self.interval, self.max_seconds, self.max_count = interval, max_seconds, max_count
        self.attempt_timeout = attempt_timeout
        self.faults: list[tuple[str, float]] = []
        self._log: str | None = None

    def manifest(self) -> dict:
        secret = f"{self.cluster.name}-app"

        def from_secret(key: str) -> dict:
            return {"valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        env = [
            {"name": "PGHOST", "value": f"{self.cluster.name}-rw"},
            {"name": "PGPORT", **from_secret("port")},
            {"name": "PGDATABASE", **from_secret("dbname")},
            {"name": "PGUSER", **from_secret("username")},
            {"name": "PGPASSWORD", **from_secret("password")},
            {"name": "RUN", "value": self.run},
            {"name": "INTERVAL", "value": str(self.interval)},
            {"name": "MAX_COUNT", "value": str(self.max_count)},
            {"name": "MAX_SECONDS", "value": str(self.max_seconds)},
            {"name": "ATTEMPT_TIMEOUT", "value": str(self.attempt_timeout)},
            {"name": "STOP_FILE", "value": "/tmp/stop"},
        ]
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": self.pod, "namespace": self.cluster.ns,
                         "labels": {"app.kubernetes.io/name": "pgop-chaos-writer", "pgop.io/chaos-run": self.run}},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 2,
                "enableServiceLinks": False,
                "automountServiceAccountToken": False,
                "securityContext": {"runAsUser": 999, "runAsGroup": 999, "runAsNonRoot": True,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "writer", "image": WRITER_IMAGE, "imagePullPolicy": "IfNotPresent",
                    "command": ["python3", "-u", "-c", WRITER_SOURCE.read_text()],
                    "env": env,
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                }],
            },
        }

    def start(self, warmup_acks: int = 20, timeout: float = 120) -> None:
        """Starts the pod and waits until it has `warmup_acks` acknowledged writes."""
        self.cluster.k("apply", "-f", "-", input=json.dumps(self.manifest()))
        _eventually(lambda: len(self.acks()) >= warmup_acks, f"{warmup_acks} acknowledged writes from {self.pod}",
                    timeout, 0.5)

    def log_text(self) -> str:
        if self._log is not None:
            return self._log
        return self.cluster.k("logs", self.pod, check=False, timeout=60).stdout

    def acks(self) -> list[Ack]:
        return parse_writer_log(self.log_text())[0]

    def fault(self, name: str, at: float) -> None:
        """Records a fault, so the report checks that writes resumed after it."""
        self.faults.append((name, at))

    def wait_for_ack(self, sent_after: float, timeout: float = 180,
                     where: Callable[[Ack], bool] = lambda a: True, grace: float = 3.0) -> Ack:
        """The first write acknowledged once a fault at `sent_after` took effect: sent after the
        first failed attempt that followed it (a fault takes a moment to bite, e.g. the kubelet
        kills a deleted pod's container a little after the delete returns), or, when no attempt
        failed, sent `grace` seconds after it. Only acks matching `where` count."""
        def found():
            acks, failures, abandoned, _ = parse_writer_log(self.log_text())
            failed = [f.sent for f in failures if f.sent >= sent_after]
            if failed:
                start = min(failed)
            elif time.time() >= sent_after + grace:
                start = sent_after + grace
            else:
                return None
            hits = [a for a in acks if a.sent >= start and where(a)]
            return min(hits, key=lambda a: a.ack) if hits else None
        try:
            return _eventually(found, "an acknowledged write after the fault", timeout, 0.5)
        except ChaosError as e:
            failures = parse_writer_log(self.log_text())[1]
            last = failures[-1].error if failures else "no error logged"
            raise ChaosError(f"{e}\nlast writer error: {last}\n{self.cluster.describe()}") from None

    def stop(self, timeout: float = 60) -> None:
        """Asks the writer to end (a file it checks before each attempt) and waits for the pod."""
        self.cluster.k("exec", self.pod, "-c", "writer", "--", "touch", "/tmp/stop", check=False, timeout=30)

        def ended():
            phase = (self.cluster.pod(self.pod).get("status") or {}).get("phase")
            return phase in ("Succeeded", "Failed")
        try:
            _eventually(ended, f"{self.pod} to end", timeout, 0.5)
        except ChaosError:
            pass  # the log up to now is still the record
        self._log = self.cluster.k("logs", self.pod, check=False, timeout=60).stdout

    def report(self, final_primary: str | None = None, converged: bool = True) -> Report:
        acks, failures, abandoned, _ = parse_writer_log(self.log_text())
        r = Report(self.run, acks, failures, abandoned, faults=list(self.faults))
        try:
            r.final_primary = final_primary or self.cluster.primary()
            r.final_rows = self.cluster.acked_rows(r.final_primary, self.run)
        except (AssertionError, subprocess.TimeoutExpired) as e:
            r.convergence.append(f"cannot read the final primary's rows: {str(e)[-300:]}")
        if converged:
            r.convergence += self.cluster.convergence_problems()
        return r

    def finish(self, settle: float = 2.0, final_primary: str | None = None) -> Report:
        """A few more seconds of writes, then stop, and compare with the final primary."""
        time.sleep(settle)
        self.stop()
        return self.report(final_primary)

    def delete(self) -> None:
        self.cluster.k("delete", "pod", self.pod, "--wait=false", "--ignore-not-found", check=False)


# ---------------------------------------------------------------------------------------- faults

def force_delete_pod(cluster: ChaosCluster, pod: str) -> float:
    """`kubectl delete pod --grace-period=0 --force`: the pod object goes at once, the container is
    killed (SIGKILL after no grace)."""
    cluster.check_allowed()
    at = time.time()
    cluster.k("delete", "pod", pod, "--grace-period=0", "--force", "--wait=false")
    return at


def kill_postmaster(cluster: ChaosCluster, pod: str) -> float:
    """SIGKILL to the postmaster (its PID from postmaster.pid), the agent stays up."""
    cluster.check_allowed()
    at = time.time()
    cluster.k("exec", pod, "-c", "postgres", "--", "sh", "-c", 'kill -9 "$(head -1 "$PGDATA/postmaster.pid")"',
              timeout=30)
    return at


def lose_volume(cluster: ChaosCluster, instance: str) -> float:
    """The PVC and the pod deleted: the data of this instance is gone (the PVC's protection holds
    its deletion until the pod is gone, then both go)."""
    cluster.check_allowed()
    pvc = cluster.get("pginstance", instance).get("status", {}).get("pvc") or instance
    at = time.time()
    cluster.k("delete", "pvc", pvc, "--wait=false")
    cluster.k("delete", "pod", instance, "--grace-period=0", "--force", "--wait=false")
    return at


def switchover(cluster: ChaosCluster, instance: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`pgop promote CLUSTER INSTANCE` (the CLI of this checkout; it follows the switchover until
    done or refused, 180 s at most)."""
    cluster.check_allowed()
    return subprocess.run([str(PGOP), "promote", cluster.name, instance, "-n", cluster.ns], text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "KUBECONFIG": cluster.kubectl.kubeconfig})


def patch_role(cluster: ChaosCluster, instance: str, role: str) -> subprocess.CompletedProcess:
    """What a person might try instead of `pgop promote`: edit the PgInstance's spec.role."""
    return cluster.k("patch", "pginstance", instance, "--type=merge", "-p",
                     json.dumps({"spec": {"role": role}}), check=False)


# -- host-level faults: the pod's processes and network namespace on this node

def containerd_socket(node: str) -> Path:
    """The containerd of a node: the host's, or an extra node's of the three-node harness (its
    processes run on this host too, in network namespaces of their own)."""
    if not node or node == paths.NODE_NAME:
        return paths.CONTAINERD_SOCK
    return paths.RUN / "nodes" / node / "containerd" / "containerd.sock"


def _ctr(socket: Path, *args: str) -> str:
    p = subprocess.run(["ctr", "--address", str(socket), "-n", "k8s.io", *args], text=True,
                       capture_output=True, timeout=30)
    if p.returncode != 0:
        raise ChaosError(f"ctr {' '.join(args)} failed: {p.stderr}")
    return p.stdout


def container_pid(cluster: ChaosCluster, pod: str, container: str = "postgres") -> int:
    """Host PID of a running container's first process (`ctr task ls`; by the pod's cgroup when ctr
    cannot tell)."""
    cluster.check_allowed()
    obj = cluster.pod(pod)
    statuses = {c["name"]: c for c in (obj.get("status") or {}).get("containerStatuses") or []}
    cid = (statuses.get(container) or {}).get("containerID", "").split("://")[-1]
    if not cid or "running" not in (statuses[container].get("state") or {}):
        raise ChaosError(f"{pod}: container {container} is not running")
    try:
        for line in _ctr(containerd_socket(obj["spec"].get("nodeName", "")), "task", "ls").splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[0] == cid and parts[2] == "RUNNING":
                return int(parts[1])
    except (ChaosError, FileNotFoundError, subprocess.TimeoutExpired):
        pass
    return _pid_by_cgroup(obj["metadata"]["uid"], cid)


def _pod_processes(pod_uid: str):
    """(/proc/PID, its cgroup file's text) of every process on this host in the pod's cgroup."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cg = (d / "cgroup").read_text()
        except OSError:
            continue
        if pod_uid in cg or pod_uid.replace("-", "_") in cg:
            yield d, cg


def _pid_by_cgroup(pod_uid: str, cid: str) -> int:
    candidates = []
    for d, cg in _pod_processes(pod_uid):
        try:
            if cid in cg:
                nspid = re.search(r"^NSpid:\s+(.*)$", (d / "status").read_text(), re.M)
                candidates.append((nspid.group(1).split()[-1] if nspid else "", int(d.name)))
        except (OSError, ValueError):
            continue
    inits = [pid for inner, pid in candidates if inner == "1"] or [pid for _, pid in sorted(candidates)]
    if not inits:
        raise ChaosError(f"no process of container {cid[:12]} found on this host")
    return inits[0]


def stop_process(pod_uid: str, command: str, timeout: float = 60) -> int:
    """SIGSTOP, from the host, to the first process named `command` (its comm) in the pod's cgroup,
    as soon as one runs: holds a step (e.g. the bootstrap's initdb) where it is. Its PID."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d, _ in _pod_processes(pod_uid):
            try:
                if (d / "comm").read_text().strip() == command:
                    os.kill(int(d.name), signal.SIGSTOP)
                    return int(d.name)
            except (OSError, ValueError):
                continue
        time.sleep(0.02)
    raise ChaosError(f"no process {command!r} ran in pod {pod_uid} within {timeout:.0f}s")


def kill_container(cluster: ChaosCluster, pod: str, container: str = "postgres") -> float:
    """SIGKILL, from the host, to the container's PID 1 (`pgop agent`): a process cannot kill its
    own namespace's init, and the agent's death takes Postgres with it (the kernel ends every
    process of the PID namespace); the kubelet restarts the container."""
    pid = container_pid(cluster, pod, container)
    at = time.time()
    os.kill(pid, 9)
    return at


def kill_sandbox(cluster: ChaosCluster, pod: str) -> float:
    """SIGKILL, from the host, to the pod sandbox's process (`/pause`, which holds the pod's
    namespaces): what a node reboot does to a pod. The kubelet makes a new sandbox for the same pod
    (same UID, same volume) and runs its init containers again before its containers."""
    cluster.check_allowed()
    uid = cluster.pod(pod)["metadata"]["uid"]
    found = []
    for d, _ in _pod_processes(uid):
        try:
            if (d / "comm").read_text().strip() == "pause":
                found.append(int(d.name))
        except OSError:
            continue
    if len(found) != 1:
        raise ChaosError(f"{pod}: expected one sandbox process on this host, found {found}")
    at = time.time()
    os.kill(found[0], 9)
    return at


class NetworkCut:
    """iptables DROP rules inside a pod's network namespace (loopback kept). `ports` limits the cut
    to TCP connections to those ports (e.g. [5432]: the WAL receiver's connection to its primary,
    while the agent still reaches the API server). Use as a context manager, or cut()/heal()."""

    def __init__(self, cluster: ChaosCluster, pod: str, ports: list[int] | None = None):
        self.cluster, self.pod, self.ports = cluster, pod, ports
        self.netns: str | None = None
        self._fd: int | None = None
        self.rules: list[list[str]] = []
        self.cut_at: float | None = None
        self.healed_at: float | None = None

    def _rules(self) -> list[list[str]]:
        if not self.ports:
            return [["INPUT", "!", "-i", "lo", "-j", "DROP"], ["OUTPUT", "!", "-o", "lo", "-j", "DROP"]]
        out = []
        for port in self.ports:
            out += [["OUTPUT", "-p", "tcp", "--dport", str(port), "!", "-o", "lo", "-j", "DROP"],
                    ["INPUT", "-p", "tcp", "--sport", str(port), "!", "-i", "lo", "-j", "DROP"]]
        return out

    def _iptables(self, *args: str) -> subprocess.CompletedProcess:
        assert self.netns
        return subprocess.run(["nsenter", f"--net={self.netns}", "iptables", "-w", "5", *args], text=True,
                              capture_output=True, timeout=30)

    def cut(self) -> float:
        pid = container_pid(self.cluster, self.pod)
        if os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            raise ChaosError(f"{self.pod} shares the host's network namespace: not cutting the host")
        # Hold the namespace by a descriptor of our own, so the rules can be removed even after the
        # process we found is gone (e.g. its container restarted; the pod sandbox keeps the namespace).
        self._fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        self.netns = f"/proc/{os.getpid()}/fd/{self._fd}"
        self.cut_at = time.time()
        for rule in self._rules():
            p = self._iptables("-I", *rule)
            if p.returncode != 0:
                self.heal()
                raise ChaosError(f"iptables -I {' '.join(rule)} in {self.pod}: {p.stderr}")
            self.rules.append(rule)
        return self.cut_at

    def heal(self) -> float:
        """Removes the rules; safe to call twice, and after the pod is gone."""
        for rule in reversed(self.rules):
            self._iptables("-D", *rule)
        self.rules = []
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.healed_at = time.time()
        return self.healed_at

    def __enter__(self) -> NetworkCut:
        self.cut()
        return self

    def __exit__(self, *exc: object) -> None:
        self.heal()


class Watch:
    """Follows `kubectl get -w -o json` of one object or kind and calls `on_change(obj)` for each
    version, in a thread; the first time it returns a true value, `fired` holds (time, value) and
    the watch ends. For acting at an exact moment (e.g. kill the operator once a failover started)."""

    def __init__(self, cluster: ChaosCluster, what: list[str], on_change: Callable[[dict], Any]):
        self.cluster, self.what, self.on_change = cluster, what, on_change
        self.fired: tuple[float, Any] | None = None
        self.error: BaseException | None = None
        self._p: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Watch:
        k = self.cluster.kubectl
        self._p = subprocess.Popen([k.binary, "--kubeconfig", k.kubeconfig, "-n", self.cluster.ns, "get",
                                    *self.what, "-w", "-o", "json"], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._p and self._p.stdout
        decoder = json.JSONDecoder()
        buf = ""
        try:
            while True:
                chunk = self._p.stdout.readline()
                if not chunk:
                    return
                buf += chunk
                while True:
                    buf = buf.lstrip()
                    try:
                        obj, end = decoder.raw_decode(buf)
                    except ValueError:
                        break
                    buf = buf[end:]
                    value = self.on_change(obj)
                    if value:
                        self.fired = (time.time(), value)
                        return
        except BaseException as e:
            self.error = e
        finally:
            self.stop()

    def wait(self, timeout: float) -> tuple[float, Any]:
        self._thread.join(timeout)
        if self.fired is None:
            self.stop()
            raise ChaosError(f"watch of {' '.join(self.what)}: the awaited change did not happen within "
                             f"{timeout:.0f}s ({self.error!r})")
        return self.fired

    def stop(self) -> None:
        if self._p and self._p.poll() is None:
            self._p.kill()
            try:
                self._p.wait(5)
            except subprocess.TimeoutExpired:
                pass


def failover_started(old_primary: str) -> Callable[[dict], Any]:
    """For a Watch of the PgCluster: true once a failover is under way (status.failover set, or
    targetPrimary moved away from the old primary)."""
    def check(obj: dict) -> Any:
        st = obj.get("status") or {}
        if st.get("failover"):
            return f"failover {st['failover'].get('phase')}"
        if st.get("targetPrimary") not in (None, old_primary):
            return f"targetPrimary {st.get('targetPrimary')!r}"
        return None
    return check


def promotion_target(old_primary: str) -> Callable[[dict], Any]:
    """For a Watch of the PgCluster: the instance being promoted, once one is chosen."""
    def check(obj: dict) -> Any:
        st = obj.get("status") or {}
        target = st.get("targetPrimary") or (st.get("failover") or {}).get("target")
        if target and target != old_primary:
            return target
        return None
    return check


# ---------------------------------------------------------------------------------------- figures

def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
