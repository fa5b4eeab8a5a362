"""Restores across a failover, checked as a user would (kubectl, psql, `pgop restore`).

A cluster is backed up on timeline 1, fails over (its primary's volume and pod deleted: the
replica is promoted onto timeline 2 and archives there), and writes more. A restore to the end of the
archive reaches the end of timeline 2 (recovery_target_timeline latest); one pinned to timeline 1
(`--timeline 1`) stops where timeline 1 ends. The restoring instance shows its progress in
status.restore, and `pgop restore` prints it.
"""
from __future__ import annotations

import time
import uuid

from e2e.test_backup import (  # noqa: F401  (the s3 fixture)
    TIMEOUT,
    cluster_manifest,
    keys,
    pgop,
    rows,
    s3,
    s3_secret,
    switch_and_wait_archived,
)
from e2e.test_pgcluster import connect, eventually, exec_psql, wait_ready


def test_a_restore_to_the_end_follows_the_failover_onto_the_new_timeline(kubectl, namespace, operator, s3,
                                                                         local_env):
    ns, name, prefix = namespace, "tl", f"e2e-{uuid.uuid4().hex[:8]}"
    s3_secret(kubectl, ns, local_env)
    kubectl("apply", "-f", "-", input=cluster_manifest(name, ns, prefix, local_env["PGOP_S3_ENDPOINT_IN_CLUSTER"]))
    wait_ready(kubectl, ns, name, 2)
    with connect(kubectl, ns, f"{name}-rw", name) as conn:
        conn.execute("create table orders (id int primary key, at timestamptz default now())")
        conn.execute("insert into orders (id) select g from generate_series(1, 100) g")
    pgop(local_env, "backup", name, "-n", ns, "--name", "tl-first", "--wait")
    with connect(kubectl, ns, f"{name}-rw", name) as conn:
        conn.execute("insert into orders (id) select g from generate_series(101, 200) g")
    switch_and_wait_archived(kubectl, ns, f"{name}-0")

    # failover: the primary's volume and pod go at once; the replica is promoted onto timeline 2.
    # (A pod deleted alone stops Postgres cleanly; the old primary then holds the most WAL, its
    # shutdown checkpoint, and the failover rightly brings it back on timeline 1.)
    first = kubectl.json("-n", ns, "get", "pgcluster", name)["status"]["currentPrimary"]
    replica = next(i for i in (f"{name}-0", f"{name}-1") if i != first)
    eventually(lambda: exec_psql(kubectl, ns, replica, "select count(*) from orders") == "200",
               f"{replica} has replayed every row", timeout=60)
    pvc = (kubectl.json("-n", ns, "get", "pginstance", first).get("status") or {}).get("pvc") or first
    kubectl("-n", ns, "delete", "pvc", pvc, "--wait=false")
    kubectl("-n", ns, "delete", "pod", first, "--grace-period=0", "--force", "--wait=false")
    promoted = eventually(lambda: (p := (kubectl.json("-n", ns, "get", "pgcluster", name).get("status") or {})
                                   .get("currentPrimary")) != first and p, "a new primary", timeout=120)
    assert promoted == replica, promoted
    with connect(kubectl, ns, f"{name}-rw", name) as conn:
        eventually(lambda: conn.execute("select not pg_is_in_recovery()").fetchone()[0], "the -rw writable",
                   timeout=60)
        # The WAL it writes now is on the new timeline (pg_control_checkpoint() would still say 1
        # until the checkpoint PostgreSQL requests after a promotion has finished).
        wal_file = conn.execute("select pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        assert int(wal_file[:8], 16) >= 2, wal_file
        conn.execute("insert into orders (id) select g from generate_series(201, 350) g")
    switch_and_wait_archived(kubectl, ns, promoted)
    history = f"{prefix}/{ns}/{name}/wal/00000002/00000002.history.zst"
    eventually(lambda: history in keys(s3, f"{prefix}/{ns}/{name}/wal/00000002/"),
               "the promoted primary's timeline history file in the archive", timeout=120)
    wait_ready(kubectl, ns, name, 2)

    # to the end of the archive: timeline 2's rows are there
    started = time.monotonic()
    out = pgop(local_env, "restore", name, "--to", "tl-end", "-n", ns, "--instances", "1",
               "--timeout", str(TIMEOUT)).stdout
    print(f"restore across a failover: {time.monotonic() - started:.1f}s\n{out}")
    assert rows(kubectl, ns, "tl-end") == (350, 350)
    assert "tl-end-0: restore" in out, out  # the progress lines of status.restore
    restored = kubectl.json("-n", ns, "get", "pginstance", "tl-end-0")["status"].get("restore") or {}
    assert restored.get("phase") == "Completed" and restored.get("walFilesRestored", 0) > 0, restored
    assert restored.get("backup") == "tl-first" and restored.get("bytesRestored", 0) > 0, restored
    # the restored cluster archives its own new timeline's history file into its own archive
    eventually(lambda: [k for k in keys(s3, f"{prefix}/{ns}/tl-end/wal/") if k.endswith(".history.zst")],
               "the restored cluster's history file in its own archive", timeout=120)

    # pinned to timeline 1: the rows written after the failover are not there
    pgop(local_env, "restore", name, "--to", "tl-one", "-n", ns, "--instances", "1", "--timeline", "1",
         "--timeout", str(TIMEOUT))
    assert kubectl.json("-n", ns, "get", "pgcluster", "tl-one")["spec"]["bootstrap"]["recovery"]["targetTimeline"] == 1
    assert rows(kubectl, ns, "tl-one") == (200, 200)
