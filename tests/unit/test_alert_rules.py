"""deploy/prometheus/pgop-alerts.yaml: valid for promtool, its unit tests pass, and every metric it
names is one pgop exports (a renamed metric would leave an alert that can never fire)."""
from __future__ import annotations

import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from pgop.agent.metrics import Activity, Database, ReplicaLag, Scrape, Volume, instance_metrics
from pgop.agent.observed import Archiver, PostgresState
from pgop.agent.streaming import ReceiverState, Slot, Standby
from pgop.runtime.metrics import REGISTRY, ObjectTracker

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "pgop-alerts.yaml"
RULES_TEST = RULES_DIR / "pgop-alerts.test.yaml"


def promtool() -> str | None:
    """PGOP_PROMTOOL, else the one the local environment builds (e2e/harness/build.py)."""
    if os.environ.get("PGOP_PROMTOOL"):
        return os.environ["PGOP_PROMTOOL"]
    from e2e.harness import build
    built = build.by_name()["prometheus"].bindir / "promtool"
    return str(built) if built.exists() else None


needs_promtool = pytest.mark.skipif(promtool() is None, reason="promtool is not built (python -m e2e.harness "
                                    "build prometheus, or PGOP_PROMTOOL)")


@needs_promtool
def test_promtool_accepts_the_rules():
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout + done.stderr


@needs_promtool
def test_the_rules_fire_when_they_should_and_only_then():
    done = subprocess.run([promtool(), "test", "rules", RULES_TEST.name], capture_output=True, text=True,
                          timeout=120, cwd=RULES_DIR)
    assert done.returncode == 0, done.stdout + done.stderr


def exported_names() -> set[str]:
    """Every sample name pgop can export: an instance of each role, and the operator's."""
    t = datetime(2026, 12, 1, tzinfo=UTC)
    primary = PostgresState(accepting=True, role="primary", timeline=1, lsn="0/3000000",
                            standbys=(Standby("a-1", "streaming", "sync", "0/3000000", "0/3000000", "0/3000000"),),
                            slots=(Slot("pgop_a_1", True, "0/3000000"),),
                            archiver=Archiver(1, "x", t, 1, "y", t), pending_restart=frozenset({"shared_buffers"}))
    replica = PostgresState(accepting=True, role="replica", timeline=1, lsn="0/3000000", received_lsn="0/3000000",
                            receiver=ReceiverState("streaming", 1, "h"))
    activity = Activity({"idle": 1}, 100, (Database("app", 1, 1),), 0.0, 0, (ReplicaLag("a-1", 0, 0, 0),), 0.0)
    names: set[str] = set()
    for state in (primary, replica):
        scrape = Scrape("n", "a", "a-0", state=state, activity=activity, wal_directory_bytes=1, volume=Volume(2, 1))
        names |= {s.name for m in instance_metrics(scrape) for s in m.samples}
    tracker = ObjectTracker()
    tracker.seen("PgCluster", {"metadata": {"namespace": "n", "name": "a"}, "spec": {"instances": 1}}, None)
    tracker.seen("PgBackup", {"metadata": {"namespace": "n", "name": "b"}, "spec": {"cluster": "a"},
                              "status": {"phase": "Completed", "completedAt": "2026-12-01T00:00:00Z"}}, None)
    names |= {s.name for m in tracker.collect() for s in m.samples}
    names |= {m.name for m in REGISTRY.collect()}  # the counters' family names
    return names


def test_every_metric_the_rules_name_is_exported():
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"PgopPrimaryDown", "PgopReplicationLagHigh", "PgopArchivingFailing",
                                           "PgopBackupTooOld", "PgopVolumeNearlyFull"}
    exported = exported_names()
    for rule in rules:
        for name in re.findall(r"\bpgop_[a-z_]+\b", rule["expr"]):
            assert name in exported, f"{rule['alert']} uses {name}, which pgop does not export"
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
