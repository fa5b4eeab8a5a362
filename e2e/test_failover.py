"""The chaos suite of high availability (docs/high-availability.md): each scenario injects a fault
into a 3-instance PgCluster with `synchronousMode: required` while a writer pod inside the cluster
writes through `<cluster>-rw`, and then checks what a user checks:

- writes resume (an acknowledged write sent after the fault);
- every acknowledged write is on the final primary (zero lost with `required`);
- no write was acknowledged by a deposed primary after the new primary's first write that the
  final primary lacks (each write records the server's address, system identifier and timeline in
  the same statement; a late answer for a commit made before the fork, as from a node frozen
  mid-reply, is reported, not counted: the new timeline has that commit);
- every instance ends Ready and streaming from the one primary on the newest timeline, and `-rw`
  points at that primary only.

No timing is asserted here (the waits are bounds, generous on purpose): bench/failover.py measures
the write gap and the time until every instance streams again.
"""
from __future__ import annotations

import time

import pytest

from e2e.chaos import (
    ChaosCluster,
    NetworkCut,
    Report,
    Watch,
    Writer,
    _eventually,
    failover_started,
    force_delete_pod,
    kill_container,
    kill_postmaster,
    kill_sandbox,
    lose_volume,
    patch_role,
    promotion_target,
    switchover,
)

NAME = "ha"
INSTANCES = 3
RESUME = 120      # bound on waiting for writes to resume after a fault
CONVERGE = 300    # bound on waiting for every instance to stream again (a rebuild clones a volume)


def manifest(ns: str) -> str:
    return f"""
apiVersion: pgop.io/v1
kind: PgCluster
metadata: {{name: {NAME}, namespace: {ns}}}
spec:
  instances: {INSTANCES}
  postgresVersion: 15
  synchronousReplicas: 1
  synchronousMode: required
  storage: {{size: 1Gi}}
  bootstrap: {{initdb: {{database: app, owner: app}}}}
"""


@pytest.fixture
def cluster(kubectl, namespace, operator) -> ChaosCluster:
    """A 3-instance cluster, Ready and streaming, in a namespace of this test (open to faults)."""
    c = ChaosCluster(kubectl, namespace, NAME)
    c.allow_chaos()
    kubectl("apply", "-f", "-", input=manifest(namespace))
    c.wait_ready(INSTANCES, 300)
    c.wait_converged(120)
    return c


@pytest.fixture
def writer(cluster):
    w = Writer(cluster)
    w.start()
    yield w
    w.delete()


def assert_user_checks(report: Report) -> None:
    print(report.summary())
    assert report.ok(), report.summary()


def other_replicas(cluster: ChaosCluster, primary: str) -> list[str]:
    return [n for n in cluster.instance_names() if n != primary]


def test_pod_kill_of_the_primary_repeated(cluster, writer):
    for round in range(3):
        primary = cluster.primary()
        at = force_delete_pod(cluster, primary)
        writer.fault(f"pod delete #{round + 1} of {primary}", at)
        writer.wait_for_ack(sent_after=at, timeout=RESUME)
        cluster.wait_converged(CONVERGE, since=at)
    assert_user_checks(writer.finish())


def test_postmaster_kill_is_restarted_in_place(cluster, writer):
    primary = cluster.primary()
    timeline = cluster.timeline(primary)
    at = kill_postmaster(cluster, primary)
    writer.fault("postmaster SIGKILL", at)
    writer.wait_for_ack(sent_after=at, timeout=RESUME)
    cluster.wait_converged(CONVERGE, since=at)
    report = writer.finish()
    assert_user_checks(report)
    # a crash in a live pod is crash recovery in place, not a failover
    assert cluster.primary() == primary
    assert cluster.timeline(primary) == timeline
    assert set(report.timelines) == {timeline}


def test_primary_volume_lost_is_rebuilt_as_a_replica(cluster, writer):
    primary = cluster.primary()
    system_identifier = cluster.system_identifier(primary)
    at = lose_volume(cluster, primary)
    writer.fault("primary PVC and pod deleted", at)
    writer.wait_for_ack(sent_after=at, timeout=RESUME)
    cluster.wait_converged(CONVERGE, since=at)
    report = writer.finish()
    assert_user_checks(report)
    # the data of the cluster lives on: never an initdb over it, the lost one is a replica again
    assert report.system_identifiers == [system_identifier]
    for name in cluster.instance_names():
        assert cluster.system_identifier(name) == system_identifier, name
    assert cluster.primary() != primary
    assert cluster.in_recovery(primary)
    assert cluster.get("pginstance", primary)["spec"]["bootstrap"] == "basebackup"


def test_a_wiped_volume_is_not_filled_again_when_its_pod_restarts(cluster, writer):
    """A replica's data directory wiped under it (a local disk replaced), then its pod's sandbox
    killed (a node reboot): the kubelet starts the pod's container again, in the same pod. The
    volume is marked initialised and the pod's permission to bootstrap was withdrawn, so its agent
    refuses to fill the volume anew, saying why, and stays up not ready; writes go on through the
    primary."""
    primary = cluster.primary()
    replica = other_replicas(cluster, primary)[0]
    # The operator marks the volume and withdraws the pod's permission a moment after the cluster
    # is Ready (once the agent reported from the pod).
    pod = _eventually(lambda: (p := cluster.pod(replica)) and "pgop.io/bootstrap-mode" not in
                      (p["metadata"].get("annotations") or {}) and p, "the pod's permission withdrawn", 30, 0.5)
    # The marker first; Postgres may still write into the directory while it goes, so a second
    # pass takes what the first missed. What counts: no marker and no PG_VERSION are left.
    cluster.k("exec", replica, "-c", "postgres", "--", "sh", "-c",
              'rm -f "$(dirname "$PGDATA")/.$(basename "$PGDATA").pgop-bootstrap"; '
              'rm -rf "$PGDATA" 2>/dev/null; sleep 0.2; rm -rf "$PGDATA" 2>/dev/null; '
              'test ! -e "$PGDATA/PG_VERSION"')
    def postgres(p):
        return next(c for c in p["status"]["containerStatuses"] if c["name"] == "postgres")
    before = postgres(pod).get("containerID")
    at = kill_sandbox(cluster, replica)
    writer.fault(f"{replica}: data directory wiped, pod sandbox killed", at)
    # What follows is about the container started again in the new sandbox: until the kubelet
    # reports it, the pod's status (and the running agent's last report) may still be the old one's.
    _eventually(lambda: (p := cluster.pod(replica)) and postgres(p).get("containerID") not in (None, before),
                f"{replica}'s container started again", 120, 1)

    # The instance says why, in its status, from the agent started again in the same pod (its
    # permission, read at this start, is gone: the refusal, not the running agent's report of a
    # missing directory).
    def refused():
        got = cluster.get("pginstance", replica).get("status") or {}
        return "its data is lost; not filling it again" in (got.get("message") or "") and got
    said = _eventually(refused, f"the reason on {replica}", 120, 1)
    assert not said.get("ready")
    got = cluster.pod(replica)
    assert got["metadata"]["uid"] == pod["metadata"]["uid"]  # the same pod, a new sandbox
    assert not postgres(got).get("ready")
    # Nothing was made in the volume: no data directory, the volume still marked.
    assert cluster.k("exec", replica, "-c", "postgres", "--", "sh", "-c",
                     'test -e "$PGDATA/PG_VERSION" && echo filled || echo empty').stdout.strip() == "empty"
    assert cluster.get("pvc", replica)["metadata"]["annotations"]["pgop.io/initialized"]
    writer.wait_for_ack(sent_after=at, timeout=RESUME)
    report = writer.finish()
    print(report.summary())
    assert report.final_rows and not report.missing and not report.foreign_acks, report.summary()
    assert cluster.primary() == primary


def test_isolated_primary_stops_and_a_replica_takes_over(cluster, writer):
    primary = cluster.primary()
    timeline = cluster.timeline(primary)
    with NetworkCut(cluster, primary) as cut:
        writer.fault(f"network of {primary} cut", cut.cut_at)
        # a replica is promoted once the isolated primary cannot acknowledge a commit any more
        writer.wait_for_ack(sent_after=cut.cut_at, timeout=RESUME, where=lambda a: a.tl > timeline)

        # ... and the isolated primary stopped serving by itself (kubectl exec needs no pod network)
        def stopped():
            try:
                return cluster.psql(primary, "select pg_is_in_recovery()", timeout=10) == "t"
            except Exception:
                return True  # Postgres down: nothing to connect to
        assert cluster.kubectl.wait_for(stopped, f"{primary} isolated: Postgres stopped or a replica", 120)
    cluster.wait_converged(CONVERGE, since=cut.healed_at)
    report = writer.finish()
    assert_user_checks(report)
    assert cluster.primary() != primary
    assert cluster.in_recovery(primary)  # rejoined the new timeline
    last_on_old = report.last_ack_on(timeline)
    print(f"isolated primary: last acknowledged write {0 if last_on_old is None else last_on_old - cut.cut_at:.2f}s "
          "after the cut")


def test_operator_killed_in_the_middle_of_a_failover(cluster, writer, operator):
    primary = cluster.primary()

    def kill_operator(obj):
        started = failover_started(primary)(obj)
        if started:
            operator.kill()
        return started
    watch = Watch(cluster, ["pgcluster", NAME], kill_operator).start()
    try:
        at = force_delete_pod(cluster, primary)
        writer.fault("primary pod deleted, operator killed mid-failover", at)
        _, how = watch.wait(RESUME)
        print(f"operator killed at: {how}")
        time.sleep(5)
    finally:
        watch.stop()
        if operator.p is None or operator.p.poll() is not None:
            operator.start()
    writer.wait_for_ack(sent_after=at, timeout=RESUME)
    cluster.wait_converged(CONVERGE, since=at)
    assert_user_checks(writer.finish())


def test_agent_of_the_new_primary_killed_during_promotion(cluster, writer):
    """A second failure inside the first: the replica chosen for promotion loses its container
    (agent and Postgres) the moment it is chosen. Both the old primary (pod gone) and the chosen
    one (crashed) must still tell where their WAL ends, or a quorum of 2 of 3 is never reached:
    a crashed former primary recovers as a standby following no one and reports its position."""
    primary = cluster.primary()
    killed: list[str] = []

    def kill_agent(obj):
        target = promotion_target(primary)(obj)
        if target and not killed:
            killed.append(target)
            kill_container(cluster, target)
        return target
    watch = Watch(cluster, ["pgcluster", NAME], kill_agent).start()
    try:
        at = force_delete_pod(cluster, primary)
        writer.fault("primary pod deleted, then the new primary's container killed while promoting", at)
        _, target = watch.wait(RESUME)
        print(f"container of {target} killed during its promotion")
    finally:
        watch.stop()
    writer.wait_for_ack(sent_after=at, timeout=RESUME)
    cluster.wait_converged(CONVERGE, since=at)
    assert_user_checks(writer.finish())


def test_switchover_under_load(cluster, writer):
    primary = cluster.primary()
    timeline = cluster.timeline(primary)
    target = other_replicas(cluster, primary)[0]
    at = time.time()
    p = switchover(cluster, target)
    assert p.returncode == 0, p.stdout + p.stderr
    writer.fault(f"switchover to {target}", at)
    cluster.kubectl.wait_for(lambda: cluster.status().get("currentPrimary") == target,
                             f"currentPrimary {target}", RESUME)
    writer.wait_for_ack(sent_after=at, timeout=RESUME, where=lambda a: a.tl > timeline)
    cluster.wait_converged(CONVERGE, since=at)
    report = writer.finish()
    assert_user_checks(report)
    assert cluster.primary() == target
    assert cluster.in_recovery(primary)  # the old primary follows the new one
    assert "SwitchoverDone" in {e.get("reason") for e in cluster.events()}


def test_manual_role_edit_is_refused(cluster, writer):
    primary = cluster.primary()
    replica = other_replicas(cluster, primary)[0]
    for instance, patch in ((replica, "primary"), (primary, "replica")):
        p = patch_role(cluster, instance, patch)
        assert p.returncode != 0, f"spec.role of {instance} was changed to {patch} by hand: {p.stdout}"
        assert "pgop promote" in p.stderr, p.stderr  # says why, and what to do instead
    fence = cluster.k("patch", "pginstance", primary, "--type=merge", "-p", '{"spec":{"fenced":true}}', check=False)
    assert fence.returncode != 0 and "pgop fence" in fence.stderr, fence.stdout + fence.stderr
    time.sleep(5)  # writes go on meanwhile
    report = writer.finish()
    assert_user_checks(report)
    assert cluster.primary() == primary
    assert len(report.timelines) == 1 and not report.failures
    assert [i["spec"]["role"] for i in cluster.instances()] == \
        ["primary" if n == primary else "replica" for n in cluster.instance_names()]


def test_two_quick_failures_in_a_row(cluster, writer):
    first = cluster.primary()
    at1 = force_delete_pod(cluster, first)
    writer.fault(f"pod delete of {first}", at1)
    ack = writer.wait_for_ack(sent_after=at1, timeout=RESUME)
    # at once, the instance that acknowledged the first write after the fault: the new primary
    second = cluster.pod_by_ip(ack.server) or cluster.primary()
    at2 = force_delete_pod(cluster, second)
    writer.fault(f"pod delete of {second}", at2)
    writer.wait_for_ack(sent_after=at2, timeout=RESUME)
    cluster.wait_converged(CONVERGE, since=at2)
    assert_user_checks(writer.finish())


def test_lagging_replica_is_not_chosen(cluster, writer):
    primary = cluster.primary()
    lagging, caught_up = other_replicas(cluster, primary)
    # The lagging replica's WAL receiver gets nothing (its connections to port 5432 are cut) while
    # its agent still reaches the API server and writes go on through the other replica's quorum.
    with NetworkCut(cluster, lagging, ports=[5432]) as cut:
        writer.fault(f"WAL receiver of {lagging} cut", cut.cut_at)
        n = len(writer.acks())
        cluster.kubectl.wait_for(lambda: len(writer.acks()) >= n + 100, "100 more writes", 120)
        received = cluster.psql(lagging, "select pg_last_wal_receive_lsn()")
        ahead = cluster.psql(primary, f"select pg_wal_lsn_diff(pg_current_wal_lsn(), '{received}')")
        assert float(ahead) > 0, f"{lagging} is not behind: received {received}"
        at = force_delete_pod(cluster, primary)
        writer.fault(f"pod delete of {primary}", at)
        writer.wait_for_ack(sent_after=at, timeout=RESUME)
        new_primary = cluster.primary()
    cluster.wait_converged(CONVERGE, since=at)
    report = writer.finish()
    assert_user_checks(report)
    assert new_primary == caught_up, f"{new_primary} promoted, {lagging} was behind by {ahead} bytes"
