"""The `pgop` command for scripts and day-2 work, end to end on the local cluster, as a user runs
it: `-o json|yaml`, full rows when piped, `pgop psql`, `pgop reload`, `pgop restart` (one instance,
then the whole cluster: replica first, the primary by switchover) and `pgop report`."""
from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import yaml

from e2e.harness import paths
from e2e.test_pgcluster import cluster, eventually, exec_psql, manifest, secret, wait_ready

PGOP = paths.REPO / ".venv" / "bin" / "pgop"


def pgop(local_env, *args, check=True, timeout=900, input=None):
    """The command as a script runs it: stdout a pipe, kubectl from the harness on PATH."""
    kubectl_dir = str(Path(local_env["KUBECTL"]).parent)
    env = {**os.environ, **local_env, "PATH": f"{kubectl_dir}:{os.environ.get('PATH', '')}"}
    stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    result = subprocess.run([str(PGOP), *args], capture_output=True, text=True, env=env, timeout=timeout, **stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"pgop {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def started_at(kubectl, ns, pod):
    return exec_psql(kubectl, ns, pod, "select pg_postmaster_start_time()")


def test_status_psql_and_report_for_scripts(kubectl, namespace, operator, local_env, tmp_path):
    ns, name = namespace, "cli-a-rather-long-cluster-name-for-the-table"
    kubectl("apply", "-f", "-", input=manifest(name, ns, instances=2, sync=0))
    wait_ready(kubectl, ns, name, 2)

    doc = json.loads(pgop(local_env, "status", name, "-n", ns, "-o", "json").stdout)
    assert doc["kind"] == "ClusterStatus" and doc["phase"] == "Ready" and doc["currentPrimary"] == f"{name}-0"
    assert [m["name"] for m in doc["members"]] == [f"{name}-0", f"{name}-1"]
    assert all(m["ready"] and m["lsn"] for m in doc["members"])
    assert yaml.safe_load(pgop(local_env, "status", name, "-n", ns, "-o", "yaml").stdout)["name"] == name

    # piped, the table is not cut at 80 columns: whole instance names and LSNs
    table = pgop(local_env, "status", name, "-n", ns).stdout
    for member in doc["members"]:
        row = next(line for line in table.splitlines() if f" {member['name']} " in line)
        # the LSN whole (it moves between the two reads: its form, not its value)
        assert re.search(r" [0-9A-F]+/[0-9A-F]{7,8} ", row), table
    assert "…" not in table

    # psql on the primary, on a replica, and SQL piped in
    primary = pgop(local_env, "psql", name, "-n", ns, "--", "-XAtq", "-d", "app", "-c",
                   "select pg_is_in_recovery()").stdout.strip()
    assert primary == "f"
    replica = pgop(local_env, "psql", name, "-n", ns, "--replica", "--", "-XAtq", "-d", "app", "-c",
                   "select pg_is_in_recovery()").stdout.strip()
    assert replica == "t"
    piped = pgop(local_env, "psql", name, "-n", ns, "--", "-XAtq", "-d", "app", input="select 40 + 2;\n")
    assert piped.stdout.strip() == "42"

    # the support bundle: objects and logs, no password anywhere
    bundle = tmp_path / "report.tar.gz"
    pgop(local_env, "report", name, "-n", ns, "-f", str(bundle))
    password = secret(kubectl, ns, f"{name}-app", "password")
    with tarfile.open(bundle) as tar:
        contents = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode(errors="replace")
                    for m in tar.getmembers() if m.isfile()}
    for expected in ("summary.txt", "pgcluster.yaml", "pginstances.yaml", "pods.yaml", "services.yaml",
                     "pvcs.yaml", "secrets.yaml", "events.yaml", f"logs/{name}-0/postgres.log"):
        assert expected in contents, sorted(contents)
    for path, text in contents.items():
        assert password not in text, f"the app password is in {path}"
    secrets = list(yaml.safe_load_all(contents["secrets.yaml"]))
    app = next(s for s in secrets if s["metadata"]["name"] == f"{name}-app")
    assert app["data"] and set(app["data"].values()) == {"<redacted>"}


def test_reload_and_rolling_restart(kubectl, namespace, operator, local_env):
    ns, name = namespace, "day2"
    kubectl("apply", "-f", "-", input=manifest(name, ns, instances=2, sync=0))
    wait_ready(kubectl, ns, name, 2)
    pods = [f"{name}-0", f"{name}-1"]
    # the primary hands over by switchover only to a replica that streams from it
    eventually(lambda: all((kubectl.json("-n", ns, "get", "pginstance", p).get("status") or {}).get("walReceiver")
                           == "streaming" for p in pods[1:]), "the replica streaming", 60)
    started = {p: started_at(kubectl, ns, p) for p in pods}

    # reload: every agent reloads, nobody restarts
    loaded = {p: exec_psql(kubectl, ns, p, "select pg_conf_load_time()") for p in pods}
    out = pgop(local_env, "reload", name, "-n", ns, "--timeout", "120").stdout
    assert "every instance reloaded" in out, out
    for p in pods:
        assert exec_psql(kubectl, ns, p, "select pg_conf_load_time()") != loaded[p]
    assert {p: started_at(kubectl, ns, p) for p in pods} == started

    # one instance: only the replica restarts
    out = pgop(local_env, "restart", name, "-n", ns, "--instance", "1", "--timeout", "300").stdout
    assert "every instance restarted" in out, out
    assert started_at(kubectl, ns, pods[0]) == started[pods[0]]
    after_one = started_at(kubectl, ns, pods[1])
    assert after_one != started[pods[1]]
    assert cluster(kubectl, ns, name)["status"]["currentPrimary"] == pods[0]

    # the whole cluster: the replica first, then the primary hands over by switchover and restarts
    eventually(lambda: (kubectl.json("-n", ns, "get", "pginstance", pods[1]).get("status") or {}).get("walReceiver")
               == "streaming", "the replica streaming again", 60)
    out = pgop(local_env, "restart", name, "-n", ns, "--timeout", "600").stdout
    assert "every instance restarted" in out, out
    restarted = {p: started_at(kubectl, ns, p) for p in pods}
    assert restarted[pods[1]] != after_one and restarted[pods[0]] != started[pods[0]]
    assert restarted[pods[1]] < restarted[pods[0]]  # the replica first
    status = wait_ready(kubectl, ns, name, 2)
    assert status["currentPrimary"] == pods[1]  # the primary was handed over, not restarted in place
    assert (status.get("lastSwitchover") or {}).get("target") == pods[1]
    assert exec_psql(kubectl, ns, pods[1], "select pg_is_in_recovery()") == "f"
    assert exec_psql(kubectl, ns, pods[0], "select pg_is_in_recovery()") == "t"

    # an instance that is not there is refused, naming what is
    refused = pgop(local_env, "restart", name, "-n", ns, "--instance", "7", check=False)
    assert refused.returncode == 2 and f"{name}-7 is not an instance" in refused.stderr
