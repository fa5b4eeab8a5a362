import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgop.backup.plan import (
    ANNOTATION_SCHEDULED_AT,
    LABEL_ORIGIN,
    build_scheduled_backup,
    choose_backup_target,
    plan_backups,
)
from pgop.kernel.actions import CREATE, DELETE, Action
from pgop.kernel.lsn import WAL_SEGMENT_SIZE, format_lsn, wal_file_name
from pgop.kernel.model import Cluster, Instance
from tests.unit.world import cluster_body


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


S3 = {"bucket": "pg-backups", "path": "shop/orders", "credentialsSecret": "s3-creds"}


def make_cluster(status: dict[str, Any] | None = None, deleting: bool = False, **backup: Any) -> Cluster:
    body = cluster_body(backup={"s3": S3, **backup})
    if status:
        body["status"] = status
    if deleting:
        body["metadata"]["deletionTimestamp"] = "2026-11-22T00:00:00Z"
    return Cluster.from_object(body)


def pgbackup(name: str, phase: str | None = "Completed", completed: datetime | None = None, segment: int = 1,
             scheduled_at: str | None = None, cluster: str = "orders", uid: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "pgop.io/v1", "kind": "PgBackup",
        "metadata": {"name": name, "namespace": "shop", "uid": uid or f"uid-{name}"},
        "spec": {"cluster": cluster, "method": "basebackup", "target": "prefer-replica"},
    }
    if scheduled_at:
        body["metadata"]["annotations"] = {ANNOTATION_SCHEDULED_AT: scheduled_at}
    if phase:
        body["status"] = {"phase": phase}
    if phase == "Completed":
        completed = completed or utc(2026, 11, 1)
        body["status"] |= {
            "startedAt": (completed - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "completedAt": completed.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "timeline": 1, "beginLSN": format_lsn(segment * WAL_SEGMENT_SIZE + 0x28),
            "endLSN": format_lsn(segment * WAL_SEGMENT_SIZE + 0x100),
            "beginWal": wal_file_name(1, segment * WAL_SEGMENT_SIZE), "endWal": wal_file_name(1, segment * WAL_SEGMENT_SIZE),
        }
    return body


def daily_backups(days: range) -> list[dict[str, Any]]:
    return [pgbackup(f"orders-202611{d:02d}0300", completed=utc(2026, 11, d, 3, 10), segment=d * 16,
                     scheduled_at=f"2026-11-{d:02d}T03:00:00Z") for d in days]


def summary(actions: list[Action]) -> list[tuple[str, str, str]]:
    return [(a.verb, a.kind, a.name) for a in actions]


class World:
    """The cluster status and its PgBackups, as the handler would leave them after a plan."""

    def __init__(self, backups: list[dict[str, Any]] | None = None, status: dict[str, Any] | None = None,
                 **backup: Any) -> None:
        self.backups = {b["metadata"]["name"]: b for b in backups or []}
        self.status = dict(status or {})
        self.backup = backup
        self.retention = None  # the last plan's retention decision

    def plan(self, now: datetime, **kwargs: Any):
        plan, self.retention = plan_backups(make_cluster(self.status, **self.backup), list(self.backups.values()),
                                            now, **kwargs)
        return plan

    def reconcile(self, now: datetime, **kwargs: Any):
        plan = self.plan(now, **kwargs)
        for action in plan:
            if action.verb == CREATE:
                assert action.name not in self.backups, "created twice"
                self.backups[action.name] = copy.deepcopy(action.body)
            elif action.verb == DELETE:
                assert self.backups[action.name]["metadata"]["uid"] == action.uid
                del self.backups[action.name]
        self.status.update(plan.status)
        return plan

    def finish(self, name: str, completed: datetime, segment: int) -> None:
        done = pgbackup(name, completed=completed, segment=segment)
        self.backups[name]["status"] = done["status"]


# ------------------------------------------------------------------------ schedule

def test_a_due_schedule_creates_one_pgbackup_owned_by_the_cluster():
    world = World(status={"lastScheduledBackupTime": "2026-11-21T03:00:00Z"}, schedule="0 3 * * *")
    plan = world.plan(utc(2026, 11, 22, 3, 0, 20))
    assert summary(plan) == [(CREATE, "PgBackup", "orders-202611220300")]
    body = plan[0].body
    assert body["spec"] == {"cluster": "orders", "method": "basebackup", "target": "prefer-replica",
                            "deletionPolicy": "Retain"}
    meta = body["metadata"]
    assert meta["namespace"] == "shop"
    assert meta["labels"]["pgop.io/cluster"] == "orders" and meta["labels"][LABEL_ORIGIN] == "schedule"
    assert meta["annotations"][ANNOTATION_SCHEDULED_AT] == "2026-11-22T03:00:00Z"
    [owner] = meta["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == \
        ("PgCluster", "orders", "cluster-uid-orders", True)
    assert plan.status == {"lastScheduledBackupTime": "2026-11-22T03:00:00Z"}


def test_the_backup_target_of_the_cluster_is_handed_down():
    body = build_scheduled_backup(make_cluster(schedule="@daily", target="primary"), utc(2026, 11, 22))
    assert body["spec"]["target"] == "primary"


def test_a_second_plan_after_applying_the_first_does_nothing():
    world = World(status={"lastScheduledBackupTime": "2026-11-21T03:00:00Z"}, schedule="0 3 * * *")
    world.reconcile(utc(2026, 11, 22, 3, 0, 20))
    again = world.plan(utc(2026, 11, 22, 3, 0, 50))
    assert list(again) == [] and again.status == {}


def test_operator_down_three_days_creates_exactly_one_backup_when_it_returns():
    world = World(status={"lastScheduledBackupTime": "2026-11-19T03:00:00Z"}, schedule="0 3 * * *")
    for minute in range(5):
        world.reconcile(utc(2026, 11, 22, 14, minute))
    assert list(world.backups) == ["orders-202611220300"]


def test_a_lost_status_write_does_not_make_a_second_backup_for_the_same_due_time():
    # The backup was created, then the operator died before writing lastScheduledBackupTime.
    world = World(backups=[pgbackup("orders-202611220300", phase="Running", scheduled_at="2026-11-22T03:00:00Z")],
                  status={"lastScheduledBackupTime": "2026-11-21T03:00:00Z"}, schedule="0 3 * * *")
    plan = world.plan(utc(2026, 11, 22, 3, 5))
    assert list(plan) == []
    assert plan.status == {"lastScheduledBackupTime": "2026-11-22T03:00:00Z"}


def test_a_status_lost_entirely_is_recovered_from_the_backups_annotations():
    world = World(backups=daily_backups(range(20, 22)), schedule="0 3 * * *")
    plan = world.plan(utc(2026, 11, 22, 14, 0))
    assert summary(plan) == [(CREATE, "PgBackup", "orders-202611220300")]  # missed since the 21st: once


def test_first_sight_of_a_schedule_arms_it_without_backing_up_at_once():
    world = World(schedule="0 3 * * *")
    plan = world.reconcile(utc(2026, 11, 22, 14, 0))
    assert list(plan) == []
    assert world.status == {"lastScheduledBackupTime": "2026-11-22T03:00:00Z"}
    assert summary(world.reconcile(utc(2026, 11, 23, 3, 0))) == [(CREATE, "PgBackup", "orders-202611230300")]


def test_a_due_time_missed_since_the_cluster_was_created_fires_once():
    world = World(schedule="0 3 * * *")
    plan = world.reconcile(utc(2026, 11, 22, 5, 0), created_at=utc(2026, 11, 22, 2, 0))
    assert summary(plan) == [(CREATE, "PgBackup", "orders-202611220300")]
    assert list(world.reconcile(utc(2026, 11, 22, 5, 1), created_at=utc(2026, 11, 22, 2, 0))) == []


def test_a_cluster_created_after_todays_due_time_waits_for_tomorrow():
    world = World(schedule="0 3 * * *")
    assert list(world.reconcile(utc(2026, 11, 22, 5, 0), created_at=utc(2026, 11, 22, 4, 0))) == []
    assert len(world.reconcile(utc(2026, 11, 23, 3, 0), created_at=utc(2026, 11, 22, 4, 0))) == 1


def test_a_due_time_waits_while_a_backup_runs_and_fires_when_it_ends():
    world = World(backups=[pgbackup("orders-manual", phase="Running")],
                  status={"lastScheduledBackupTime": "2026-11-21T03:00:00Z"}, schedule="0 3 * * *")
    plan = world.reconcile(utc(2026, 11, 22, 3, 0))
    assert list(plan) == [] and plan.status == {}
    assert plan.waiting == ["the backup due at 2026-11-22T03:00:00Z waits for orders-manual to finish"]
    world.finish("orders-manual", utc(2026, 11, 22, 3, 40), segment=0x40)
    assert summary(world.reconcile(utc(2026, 11, 22, 3, 41))) == [(CREATE, "PgBackup", "orders-202611220300")]


def test_a_bad_schedule_creates_nothing_and_names_the_field():
    world = World(status={"lastScheduledBackupTime": "2026-11-21T03:00:00Z"}, schedule="0 3 * * * *")
    plan = world.plan(utc(2026, 11, 22, 3, 0))
    assert list(plan) == []
    assert plan.permanent.startswith("spec.backup.schedule: '0 3 * * * *' has 6 field(s)")


def test_a_clock_behind_the_last_scheduled_time_creates_nothing_and_keeps_the_time():
    world = World(status={"lastScheduledBackupTime": "2026-11-22T03:00:00Z"}, schedule="* * * * *")
    plan = world.plan(utc(2026, 11, 22, 2, 50))
    assert list(plan) == [] and plan.status == {}


def test_no_schedule_no_backups_created():
    assert list(World().plan(utc(2026, 11, 22, 3, 0))) == []


def test_a_cluster_being_deleted_gets_no_backup_actions():
    cluster = make_cluster({"lastScheduledBackupTime": "2026-11-21T03:00:00Z"}, deleting=True,
                           schedule="0 3 * * *", retention={"keepLast": 1})
    assert list(plan_backups(cluster, daily_backups(range(18, 22)), utc(2026, 11, 22, 3, 0))[0]) == []


def test_backups_of_other_clusters_are_not_counted_or_touched():
    others = [pgbackup(f"payments-{d}", completed=utc(2026, 11, d), cluster="payments") for d in range(10, 15)]
    world = World(backups=others + daily_backups(range(20, 22)), retention={"keepLast": 1})
    assert summary(world.plan(utc(2026, 11, 22))) == [(DELETE, "PgBackup", "orders-202611200300")]


# ------------------------------------------------------------------------ retention

def test_retention_deletes_the_pgbackups_it_drops_oldest_first_with_a_uid_precondition():
    world = World(backups=daily_backups(range(18, 23)), retention={"keepLast": 2})
    plan = world.plan(utc(2026, 11, 22, 12, 0))
    assert summary(plan) == [(DELETE, "PgBackup", f"orders-202611{d}0300") for d in (18, 19, 20)]
    assert [a.uid for a in plan] == [f"uid-orders-202611{d}0300" for d in (18, 19, 20)]
    assert world.retention.oldest_wal_needed == "000000010000000100000050"  # the 21st's beginWal
    assert plan.status["firstRecoverabilityPoint"] == "2026-11-21T03:10:00Z"


def test_scheduled_creation_comes_before_retention_deletions_and_converges():
    world = World(backups=daily_backups(range(18, 22)), status={"lastScheduledBackupTime": "2026-11-21T03:00:00Z"},
                  schedule="0 3 * * *", retention={"keepLast": 2})
    plan = world.reconcile(utc(2026, 11, 22, 3, 0))
    assert summary(plan) == [(CREATE, "PgBackup", "orders-202611220300"),
                             (DELETE, "PgBackup", "orders-202611180300"),
                             (DELETE, "PgBackup", "orders-202611190300")]
    # The new backup is Pending: it does not count until it completes.
    assert list(world.plan(utc(2026, 11, 22, 3, 1))) == []
    world.finish("orders-202611220300", utc(2026, 11, 22, 3, 12), segment=0x160)
    assert summary(world.reconcile(utc(2026, 11, 22, 3, 13))) == [(DELETE, "PgBackup", "orders-202611200300")]
    assert list(world.reconcile(utc(2026, 11, 22, 3, 14))) == [] and world.plan(utc(2026, 11, 22, 3, 15)).status == {}


def test_retention_ignores_pgbackups_already_being_deleted():
    backups = daily_backups(range(18, 23))
    backups[0]["metadata"]["deletionTimestamp"] = "2026-11-22T00:00:00Z"
    plan = World(backups=backups, retention={"keepLast": 2}).plan(utc(2026, 11, 22, 12))
    assert summary(plan) == [(DELETE, "PgBackup", f"orders-202611{d}0300") for d in (19, 20)]


def test_without_retention_nothing_is_deleted_and_the_first_point_is_the_oldest_backup():
    plan = World(backups=daily_backups(range(18, 23))).plan(utc(2026, 11, 22, 12))
    assert list(plan) == []
    assert plan.status == {"firstRecoverabilityPoint": "2026-11-18T03:10:00Z"}


def test_a_pgbackup_with_an_unreadable_status_is_not_restorable_and_does_not_crash_the_plan():
    broken = pgbackup("orders-broken", completed=utc(2026, 11, 22, 11, 0))
    broken["status"]["endLSN"] = "garbage"
    broken["status"]["completedAt"] = "yesterday"
    world = World(backups=daily_backups(range(20, 23)) + [broken], retention={"keepLast": 2})
    plan = world.plan(utc(2026, 11, 22, 12))
    assert summary(plan) == [(DELETE, "PgBackup", "orders-202611200300")]
    assert [b.backup_name for b in world.retention.keep] == ["orders-202611210300", "orders-202611220300"]


def test_the_first_recoverability_point_is_removed_when_no_completed_backup_is_left():
    world = World(backups=[pgbackup("orders-manual", phase="Failed")],
                  status={"firstRecoverabilityPoint": "2026-11-18T03:10:00Z"})
    assert world.plan(utc(2026, 11, 22, 12)).status == {"firstRecoverabilityPoint": None}
    assert World().plan(utc(2026, 11, 22, 12)).status == {}


def test_the_only_completed_backup_survives_any_retention():
    world = World(backups=daily_backups(range(1, 2)), retention={"maxAge": "1h"})
    assert list(world.plan(utc(2026, 11, 22, 12))) == []


def test_action_lines_say_why_a_backup_goes():
    plan = World(backups=daily_backups(range(20, 23)), retention={"keepLast": 2}).plan(utc(2026, 11, 22, 12))
    assert plan[0].describe() == ("delete PgBackup orders-202611200300: retention keepLast 2: 2 newer completed "
                                  "backup(s), completed 2026-11-20T03:10:00Z")


# ------------------------------------------------------------------------ where the backup runs

NOW = utc(2026, 11, 22, 12, 0)


def instance(ordinal: int, role: str = "replica", ready: bool = True, lsn: str = "0/5000000",
             sync_state: str | None = "async", timeline: int = 1, fenced: bool = False,
             heartbeat: datetime | None = NOW, deleting: bool = False) -> Instance:
    status: dict[str, Any] = {"ready": ready, "role": role, "lsn": lsn, "timeline": timeline}
    if sync_state and role == "replica":
        status["syncState"] = sync_state
    if heartbeat:
        status["lastHeartbeat"] = heartbeat.strftime("%Y-%m-%dT%H:%M:%SZ")
    meta: dict[str, Any] = {"name": f"orders-{ordinal}", "namespace": "shop"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-22T00:00:00Z"
    return Instance.from_object({"metadata": meta, "spec": {"cluster": "orders", "ordinal": ordinal, "role": role,
                                                            "bootstrap": "basebackup", "fenced": fenced},
                                 "status": status})


PRIMARY = instance(0, role="primary", lsn="0/9000000")


def test_the_replica_with_the_least_lag_is_chosen():
    far = instance(1, lsn="0/5000000")
    near = instance(2, lsn="0/8F00000")
    assert choose_backup_target([PRIMARY, far, near]).name == "orders-2"


def test_on_equal_lag_an_async_replica_is_preferred_over_a_synchronous_one():
    sync = instance(1, lsn="0/9000000", sync_state="quorum")
    async_ = instance(2, lsn="0/9000000", sync_state="async")
    assert choose_backup_target([PRIMARY, sync, async_]).name == "orders-2"


def test_the_primary_when_no_replica_is_ready_and_streaming():
    candidates = [PRIMARY, instance(1, ready=False), instance(2, sync_state=None), instance(3, fenced=True),
                  instance(4, deleting=True), instance(5, timeline=2)]
    assert choose_backup_target(candidates).name == "orders-0"


def test_target_primary_takes_the_primary_even_with_replicas():
    assert choose_backup_target([PRIMARY, instance(1)], "primary").name == "orders-0"


def test_nothing_when_no_instance_can_serve():
    assert choose_backup_target([]) is None
    assert choose_backup_target([instance(0, role="primary", ready=False)]) is None
    assert choose_backup_target([instance(0, role="primary", ready=False), instance(1)], "primary") is None


def test_a_stale_heartbeat_is_not_ready_when_now_is_given():
    stale = instance(1, heartbeat=NOW - timedelta(minutes=5))
    assert choose_backup_target([PRIMARY, stale]).name == "orders-1"  # status alone says ready
    assert choose_backup_target([PRIMARY, stale], now=NOW).name == "orders-0"


def test_a_replica_is_chosen_even_when_the_primary_is_down():
    assert choose_backup_target([instance(0, role="primary", ready=False), instance(1)]).name == "orders-1"


@pytest.mark.parametrize("target", ["prefer-replica", "primary"])
def test_a_demoted_primary_that_postgres_still_calls_primary_is_not_a_target(target):
    # Mid-failover: spec says replica, Postgres still says primary: neither a replica nor the primary.
    confused = Instance.from_object({"metadata": {"name": "orders-1"}, "spec": {"cluster": "orders", "ordinal": 1,
                                     "role": "replica"}, "status": {"ready": True, "role": "primary"}})
    assert choose_backup_target([confused], target) is None
