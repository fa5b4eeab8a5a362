"""What bench/scale.py measures besides its own clock: processes' CPU and RSS from /proc, the API
server's request counts and etcd's database size from their /metrics (Prometheus text format).

The parsing and the arithmetic are pure functions (tests/unit/test_bench_scale.py); the sampler is
a thread that reads /proc once a second.
"""
from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from e2e.harness.proc import _starttime, tcp_connections

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def process_age(pid: int, uptime: str | None = None) -> float | None:
    """Seconds since process `pid` started (from /proc), None when it is gone."""
    started = _starttime(pid)
    if not started:
        return None
    try:
        uptime = uptime if uptime is not None else Path("/proc/uptime").read_text()
        return float(uptime.split()[0]) - int(started) / CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric `name` in a Prometheus text exposition: (labels, value)."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        try:
            out.append((labels, float(m.group(3))))
        except ValueError:
            continue
    return out


def request_counts(text: str) -> Counter[tuple[str, str]]:
    """apiserver_request_total summed over codes, scopes, components and versions: per
    (verb, resource[/subresource])."""
    counts: Counter[tuple[str, str]] = Counter()
    for labels, value in samples(text, "apiserver_request_total"):
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        counts[(labels.get("verb", ""), resource)] += int(value)
    return counts


def etcd_db_bytes(text: str) -> tuple[int | None, int | None]:
    """(etcd_mvcc_db_total_size_in_bytes, etcd_mvcc_db_total_size_in_use_in_bytes)."""
    def one(name: str) -> int | None:
        found = samples(text, name)
        return int(found[0][1]) if found else None
    return one("etcd_mvcc_db_total_size_in_bytes"), one("etcd_mvcc_db_total_size_in_use_in_bytes")


def delta(before: Mapping[tuple[str, str], int], after: Mapping[tuple[str, str], int]) -> Counter[tuple[str, str]]:
    """What was counted between two scrapes (a counter that went down, after a restart, counts
    from zero)."""
    out: Counter[tuple[str, str]] = Counter()
    for key, value in after.items():
        d = value - before.get(key, 0)
        out[key] = d if d >= 0 else value
    return +out


def histogram(text: str, name: str) -> dict[float, float]:
    """The cumulative buckets of an unlabelled Prometheus histogram: upper bound (le) -> count,
    +Inf included; empty when the metric is not there."""
    return {float(labels["le"]): value for labels, value in samples(text, f"{name}_bucket") if "le" in labels}


def bucket_quantile(before: Mapping[float, float], after: Mapping[float, float], q: float) -> float | None:
    """The upper bound of the bucket that holds quantile `q` of what was observed between two
    scrapes (so "at most"); None when nothing was observed; inf when it is above the last bound."""
    counts = {le: after[le] - before.get(le, 0.0) for le in after}
    total = counts.get(float("inf"), 0.0)
    if total <= 0:
        return None
    for le in sorted(counts):
        if counts[le] >= q * total:
            return le
    return float("inf")


def top(counts: Mapping[tuple[str, str], int], per: float, n: int = 12) -> list[tuple[str, float]]:
    """The busiest (verb resource) pairs, their counts divided by `per`: the window's seconds
    (requests per second) or the number of clusters (requests per cluster)."""
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    return [(f"{verb} {resource}", count / per) for (verb, resource), count in ranked]


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds (all its threads)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int | None:
    try:
        return int(open(f"/proc/{pid}/statm").read().split()[1]) * PAGE
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


@dataclass
class Series:
    """(monotonic time, CPU seconds, RSS bytes) of one process, once a second."""
    pid: int
    points: list[tuple[float, float, int]] = field(default_factory=list)
    base: float = 0.0  # CPU seconds of the processes before this PID (a restarted one)
    connections: list[tuple[float, int]] = field(default_factory=list)  # (time, TCP connections to the API server)

    def window(self, start: float, end: float) -> tuple[float | None, int | None]:
        """Mean CPU (fraction of one core) and the largest RSS between two moments."""
        inside = [p for p in self.points if start <= p[0] <= end]
        if len(inside) < 2:
            return None, (max(p[2] for p in inside) if inside else None)
        (t0, c0, _), (t1, c1, _) = inside[0], inside[-1]
        return ((c1 - c0) / (t1 - t0) if t1 > t0 else None), max(p[2] for p in inside)


def cpu_share(points: Iterable[tuple[float, float, int]]) -> float | None:
    pts = list(points)
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return None
    return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


class Sampler(threading.Thread):
    """Reads CPU and RSS of the named processes every `every` seconds until stopped. A process
    found by `follow[name]()` is looked up again when it goes (a restarted operator): its series
    then restarts from the new PID, and `restarts` records when."""

    def __init__(self, pids: Mapping[str, int], every: float = 1.0,
                 follow: Mapping[str, Callable[[], int | None]] | None = None,
                 connections: Mapping[str, int] | None = None):
        super().__init__(name="bench-sampler", daemon=True)
        self.series = {name: Series(pid) for name, pid in pids.items()}
        self.follow = dict(follow or {})
        self.connections = dict(connections or {})  # name -> the remote port whose connections are counted
        self.restarts: list[tuple[float, str, int | None]] = []  # (time, name, new PID or None)
        self.every = every
        self.stopping = threading.Event()

    def sample(self) -> None:
        now = time.monotonic()
        for name, s in list(self.series.items()):  # a series may be added meanwhile
            cpu, rss = cpu_seconds(s.pid), rss_bytes(s.pid)
            if cpu is None and name in self.follow:
                pid = self.follow[name]()
                if pid != s.pid and (not self.restarts or self.restarts[-1][1:] != (name, pid)):
                    self.restarts.append((now, name, pid))
                if pid is not None and pid != s.pid:
                    # the new process's CPU seconds count on from the old one's last
                    s.base, s.pid = (s.points[-1][1] if s.points else 0.0), pid
                    cpu, rss = cpu_seconds(pid), rss_bytes(pid)
            if cpu is not None and rss is not None:
                s.points.append((now, s.base + cpu, rss))
            if name in self.connections and (held := tcp_connections(s.pid, self.connections[name])) is not None:
                s.connections.append((now, held))

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(self.every)

    def stop(self) -> None:
        self.stopping.set()
        self.sample()
