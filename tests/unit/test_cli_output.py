"""`-o table|json|yaml` and tables that are not cut when piped: the documents are pure functions of
the objects the tables show; the console is checked in a child process whose stdout is a pipe."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import yaml
from typer.testing import CliRunner

from pgop.backup.catalog import Backup
from pgop.cli import app
from pgop.cli_output import Output, backups_document, cluster_document, dump, plan_document
from pgop.kernel.actions import PATCH, Action
from pgop.rds.report import status_document

REPO = Path(__file__).resolve().parents[2]
LONG = "orders-with-a-long-name-that-no-eighty-column-terminal-would-show-whole-0"
LSN = "1A2B3C4D/5E6F7A8B"


def cluster_and_instances():
    cluster = {"metadata": {"name": "orders", "namespace": "shop"}, "spec": {"instances": 2},
               "status": {"phase": "Ready", "readyInstances": 2, "currentPrimary": "orders-0",
                          "targetPrimary": "orders-0",
                          "instances": [{"name": "orders-1", "syncState": "quorum", "ready": True}],
                          "conditions": [{"type": "Ready", "status": "True", "reason": "AllReady",
                                          "message": "2/2 ready"}]}}
    instances = [
        {"metadata": {"name": "orders-1"}, "spec": {"ordinal": 1, "role": "replica"},
         "status": {"role": "replica", "ready": True, "timeline": 2, "lsn": "0/3000060", "pod": "orders-1",
                    "lastHeartbeat": "2026-11-22T12:00:00Z", "phase": "Running"}},
        {"metadata": {"name": "orders-0"}, "spec": {"ordinal": 0, "role": "primary"},
         "status": {"role": "primary", "ready": True, "timeline": 2, "lsn": "0/3000100", "pod": "orders-0"}},
    ]
    return cluster, instances


def test_the_status_document_has_a_stable_shape():
    doc = cluster_document(*cluster_and_instances())
    assert doc["apiVersion"] == "pgop.io/cli/v1" and doc["kind"] == "ClusterStatus"
    assert (doc["namespace"], doc["name"], doc["phase"], doc["currentPrimary"]) == ("shop", "orders", "Ready", "orders-0")
    assert [m["name"] for m in doc["members"]] == ["orders-0", "orders-1"]  # by ordinal
    replica = doc["members"][1]
    assert replica == {"name": "orders-1", "role": "replica", "ready": True, "phase": "Running", "timeline": 2,
                       "lsn": "0/3000060", "lagBytes": 0xA0, "syncState": "quorum",
                       "lastHeartbeat": "2026-11-22T12:00:00Z", "pod": "orders-1", "fenced": False}
    assert doc["conditions"][0]["reason"] == "AllReady"
    assert json.loads(dump(doc, Output.json)) == doc
    assert yaml.safe_load(dump(doc, Output.yaml)) == doc


def test_the_plan_document_lists_the_actions_in_order():
    actions = [Action(PATCH, "PgInstance", "orders-1", "shop", "restart requested", patch={"spec": {}}),
               Action(PATCH, "PgInstance", "orders-0", "shop", "then the primary", patch={"spec": {}})]
    doc = plan_document("shop", "orders", True, actions, ["rolling restart: next orders-0"])
    assert doc["kind"] == "ClusterPlan" and doc["exists"] is True
    assert [a["name"] for a in doc["actions"]] == ["orders-1", "orders-0"]
    assert doc["actions"][0] == {"verb": "patch", "kind": "PgInstance", "namespace": "shop", "name": "orders-1",
                                 "reason": "restart requested"}
    assert doc["waiting"] == ["rolling restart: next orders-0"]


def test_the_backups_document():
    backup = Backup(cluster="orders", backup_name="orders-20261122030405", timeline=1, begin_lsn="0/2000028",
                    end_lsn="0/2000100", begin_wal="000000010000000000000002",
                    started_at=datetime(2026, 11, 22, 3, 4, 5, tzinfo=UTC),
                    completed_at=datetime(2026, 11, 22, 3, 4, 9, tzinfo=UTC), size_bytes=1000,
                    files=({"compressedBytes": 300},))
    doc = backups_document("orders", "s3://b/shop/orders", [backup], backup.completed_at, "000000010000000000000003")
    assert doc["kind"] == "BackupCatalog" and doc["firstRecoverabilityPoint"] == "2026-11-22T03:04:09Z"
    [item] = doc["backups"]
    assert item["name"] == "orders-20261122030405" and item["compressedBytes"] == 300
    assert item["startedAt"] == "2026-11-22T03:04:05Z" and item["endLSN"] == "0/2000100"
    assert doc["lastArchivedWal"] == "000000010000000000000003"
    json.dumps(doc)  # plain JSON types only


def test_the_mysqldb_document_never_holds_a_password():
    body = {"metadata": {"name": "shop", "namespace": "team"},
            "spec": {"engineVersion": "8.0", "instanceSize": "small", "storageGB": 20},
            "status": {"phase": "Ready", "endpoint": "db.example", "port": 3306,
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Available", "message": ""}]}}
    doc = status_document(body)
    assert doc["kind"] == "MysqlDbStatus" and doc["endpoint"] == "db.example" and doc["port"] == 3306
    assert doc["vaultPath"] == "secret/data/k8s/team/shop/db"
    assert "password" not in json.dumps(doc).lower()


def test_a_piped_table_is_printed_whole():
    """A child process with stdout on a pipe (as `pgop status | grep`) prints the long instance
    name and the LSN whole, without ellipsis and without wrapping."""
    code = f"""
import sys
from pgop.cli_output import console
from pgop.cli_views import cluster_table
cluster = {{"metadata": {{"name": "orders", "namespace": "shop"}}, "spec": {{"instances": 1}}, "status": {{}}}}
inst = {{"metadata": {{"name": {LONG!r}}}, "spec": {{"ordinal": 0, "role": "primary"}},
        "status": {{"role": "primary", "ready": True, "lsn": {LSN!r}, "pod": {LONG!r}}}}}
console().print(cluster_table(cluster, [inst]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "COLUMNS": "80", "TERM": "xterm"}, timeout=60)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if LSN in line)
    assert row.count(LONG) == 2 and "…" not in done.stdout
    assert "\x1b[" not in done.stdout  # no colour codes in a pipe


def test_every_listing_command_takes_output():
    runner = CliRunner()
    for command in (["status"], ["plan"], ["backups"], ["mysqldb", "status"]):
        result = runner.invoke(app, [*command, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert "--output" in result.output, command
    result = runner.invoke(app, ["status", "orders", "-o", "xml"])
    assert result.exit_code == 2 and "xml" in result.output
