"""`pgop hibernate on|off` and `pgop destroy`, end to end on the local cluster, as a user runs them:
rows written, the cluster hibernated (no Postgres pod, volumes and objects kept, phase Hibernated,
no failover however long it stays so), woken (the same primary, the rows there, the replica
streaming), then a replica destroyed (a new, empty volume, cloned again, streaming) and the
primary's destruction refused."""
from __future__ import annotations

import json
import time

from e2e.test_cli_day2 import pgop
from e2e.test_pgcluster import cluster, eventually, exec_psql, manifest, wait_ready

ROWS = 500


def postgres_pods(kubectl, ns, name):
    return kubectl.json("-n", ns, "get", "pods", "-l", f"pgop.io/cluster={name},pgop.io/component=postgres")["items"]


def volumes(kubectl, ns, name):
    return {p["metadata"]["name"]: p["metadata"]["uid"]
            for p in kubectl.json("-n", ns, "get", "pvc", "-l", f"pgop.io/cluster={name}")["items"]}


def events(kubectl, ns, name):
    return [e["reason"] for e in kubectl.json("-n", ns, "get", "events", "--field-selector",
                                              f"involvedObject.name={name},involvedObject.kind=PgCluster")["items"]]


def instances(kubectl, ns, name):
    return {i["metadata"]["name"]: i for i in kubectl.json("-n", ns, "get", "pginstance", "-l",
                                                           f"pgop.io/cluster={name}")["items"]}


def streaming_replica(kubectl, ns, name):
    found = [n for n, i in instances(kubectl, ns, name).items()
             if (i.get("status") or {}).get("role") == "replica" and (i.get("status") or {}).get("walReceiver") == "streaming"
             and (i.get("status") or {}).get("ready")]
    return found[0] if found else None


def test_hibernation_round_trip_and_destroy(kubectl, namespace, operator, local_env):
    ns, name = namespace, "sleepy"
    kubectl("apply", "-f", "-", input=manifest(name, ns, instances=2, sync=0))
    wait_ready(kubectl, ns, name, 2)
    primary = f"{name}-0"
    exec_psql(kubectl, ns, primary, f"create table kept as select g as id from generate_series(1, {ROWS}) g")
    eventually(lambda: streaming_replica(kubectl, ns, name), "the replica streaming", 60)
    pvcs = volumes(kubectl, ns, name)
    assert len(pvcs) == 2
    services = sorted(s["metadata"]["name"] for s in kubectl.json("-n", ns, "get", "svc")["items"])
    secrets = sorted(s["metadata"]["name"] for s in kubectl.json("-n", ns, "get", "secret", "-l",
                                                                 f"pgop.io/cluster={name}")["items"])
    pods_before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in postgres_pods(kubectl, ns, name)}

    # on: every Postgres pod goes, nothing else
    t0 = time.monotonic()
    out = pgop(local_env, "hibernate", "on", name, "-n", ns, "--timeout", "300").stdout
    took_on = time.monotonic() - t0
    assert f"{name}: hibernated" in out, out
    assert postgres_pods(kubectl, ns, name) == []
    assert volumes(kubectl, ns, name) == pvcs
    assert sorted(instances(kubectl, ns, name)) == [f"{name}-0", f"{name}-1"]
    assert sorted(s["metadata"]["name"] for s in kubectl.json("-n", ns, "get", "svc")["items"]) == services
    assert sorted(s["metadata"]["name"] for s in kubectl.json("-n", ns, "get", "secret", "-l",
                                                              f"pgop.io/cluster={name}")["items"]) == secrets
    status = cluster(kubectl, ns, name)["status"]
    assert status["phase"] == "Hibernated" and status["hibernation"]["phase"] == "Hibernated"
    hibernated = next(c for c in status["conditions"] if c["type"] == "Hibernated")
    assert hibernated["status"] == "True"
    doc = json.loads(pgop(local_env, "status", name, "-n", ns, "-o", "json").stdout)
    assert doc["phase"] == "Hibernated" and doc["hibernation"]["phase"] == "Hibernated"

    # longer than the heartbeat timeout: no failover, no pod made again
    time.sleep(30)
    status = cluster(kubectl, ns, name)["status"]
    assert not status.get("failover") and status["currentPrimary"] == primary and status["phase"] == "Hibernated"
    assert postgres_pods(kubectl, ns, name) == []
    members = json.loads(pgop(local_env, "status", name, "-n", ns, "-o", "json").stdout)["members"]
    assert {m["phase"] for m in members} == {"Hibernated"} and not any(m["ready"] for m in members), members
    reasons = events(kubectl, ns, name)
    assert "Hibernated" in reasons and not {"FailoverStarted", "FailoverDone"} & set(reasons), reasons

    # off: the same instances on the same volumes, the former primary primary, the rows there
    t0 = time.monotonic()
    out = pgop(local_env, "hibernate", "off", name, "-n", ns, "--timeout", "300").stdout
    took_off = time.monotonic() - t0
    assert f"{name}: awake and Ready" in out, out
    status = wait_ready(kubectl, ns, name, 2)
    assert status["currentPrimary"] == primary and not status.get("hibernation")
    assert volumes(kubectl, ns, name) == pvcs
    pods_after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in postgres_pods(kubectl, ns, name)}
    assert sorted(pods_after) == sorted(pods_before) and not set(pods_after.values()) & set(pods_before.values())
    assert exec_psql(kubectl, ns, primary, "select pg_is_in_recovery()") == "f"
    assert exec_psql(kubectl, ns, primary, "select count(*) from kept") == str(ROWS)
    replica = eventually(lambda: streaming_replica(kubectl, ns, name), "the replica streaming again", 120)
    assert replica == f"{name}-1"
    exec_psql(kubectl, ns, primary, "insert into kept values (0)")
    eventually(lambda: exec_psql(kubectl, ns, replica, "select count(*) from kept") == str(ROWS + 1),
               "the new row on the replica", 60)
    assert not {"FailoverStarted", "FailoverDone"} & set(events(kubectl, ns, name))
    print(f"hibernate on: {took_on:.1f}s, off until Ready: {took_off:.1f}s")

    # destroy: the primary is refused, a replica is rebuilt on a new volume
    refused = pgop(local_env, "destroy", name, primary, "-n", ns, "--yes", check=False)
    assert refused.returncode == 1 and "is the primary" in refused.stderr and "pgop promote" in refused.stderr
    old_uid = pvcs[replica]
    out = pgop(local_env, "destroy", name, "1", "-n", ns, "--yes").stdout
    assert f"{replica} destroyed" in out, out

    def rebuilt():
        vols = volumes(kubectl, ns, name)
        fresh = [n for n, uid in vols.items() if n != primary and uid != old_uid]
        new = streaming_replica(kubectl, ns, name)
        return fresh and new and new in fresh and new
    new = eventually(rebuilt, "a replica on a new volume, streaming", 300)
    wait_ready(kubectl, ns, name, 2)
    eventually(lambda: old_uid not in volumes(kubectl, ns, name).values(), "the old volume gone", 60)
    assert exec_psql(kubectl, ns, new, "select count(*) from kept") == str(ROWS + 1)
    assert exec_psql(kubectl, ns, new, "select pg_is_in_recovery()") == "t"
    assert cluster(kubectl, ns, name)["status"]["currentPrimary"] == primary
