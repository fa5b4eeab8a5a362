from pgop.cluster.controller import status_for_cluster
from pgop.cluster.plan import ObservedCluster
from pgop.kernel.actions import Plan
from pgop.kernel.model import Cluster


def _cluster(backup=None):
    spec = {"instances": 1, "postgresVersion": 15, "storage": {"size": "1Gi"},
            "bootstrap": {"initdb": {"database": "app", "owner": "app"}}}
    if backup:
        spec["backup"] = backup
    return Cluster.from_object({"apiVersion": "pgop.io/v1", "kind": "PgCluster",
                                "metadata": {"name": "orders", "namespace": "shop", "uid": "u1",
                                             "generation": 1}, "spec": spec})


BACKUP = {"s3": {"bucket": "pg-backups", "credentialsSecret": "s3"}}


def _instance(name, role="primary", reported_role="primary", archiver=None):
    status = {"role": reported_role}
    if archiver is not None:
        status["archiver"] = archiver
    return {"metadata": {"name": name}, "spec": {"role": role, "cluster": "orders"}, "status": status}


def _archiving(instances):
    status = status_for_cluster(_cluster(BACKUP), ObservedCluster(instances=instances), Plan())
    return {c["type"]: c for c in status["conditions"]}["ContinuousArchiving"]


def test_archiving_is_true_when_the_primary_archived_and_failed_before_that():
    cond = _archiving([
        _instance("orders-0", archiver={"archivedCount": 7, "lastArchivedWal": "000000010000000000000007",
                                        "lastArchivedTime": "2026-01-01T10:05:00Z", "failedCount": 2,
                                        "lastFailedWal": "000000010000000000000003",
                                        "lastFailedTime": "2026-01-01T10:00:00Z"}),
        _instance("orders-1", role="replica", reported_role="replica",
                  archiver={"archivedCount": 0, "failedCount": 9, "lastFailedTime": "2026-01-01T11:00:00Z"}),
    ])
    assert (cond["status"], cond["reason"]) == ("True", "Archiving")
    assert "000000010000000000000007" in cond["message"]


def test_archiving_fails_when_the_last_attempt_failed():
    cond = _archiving([_instance("orders-0", archiver={
        "archivedCount": 7, "lastArchivedWal": "000000010000000000000007",
        "lastArchivedTime": "2026-01-01T10:05:00Z", "failedCount": 12,
        "lastFailedWal": "000000010000000000000008", "lastFailedTime": "2026-01-01T10:09:00Z"})])
    assert (cond["status"], cond["reason"]) == ("False", "ArchivingFailing")
    assert "000000010000000000000008" in cond["message"] and "2026-01-01T10:09:00Z" in cond["message"]
    assert "12 failure" in cond["message"]


def test_archiving_fails_when_nothing_was_ever_archived_but_attempts_failed():
    cond = _archiving([_instance("orders-0", archiver={
        "archivedCount": 0, "failedCount": 3, "lastFailedWal": "000000010000000000000001",
        "lastFailedTime": "2026-01-01T10:09:00Z"})])
    assert (cond["status"], cond["reason"]) == ("False", "ArchivingFailing")
    assert "nothing archived yet" in cond["message"]


def test_archiving_is_unknown_until_there_is_something_to_judge():
    assert _archiving([])["reason"] == "NoPrimary"
    # the operator wants a primary, but the instance does not run as one yet
    assert _archiving([_instance("orders-0", reported_role="replica", archiver={"archivedCount": 3})])["reason"] \
        == "NoPrimary"
    assert _archiving([_instance("orders-0")])["reason"] == "NotReported"
    cond = _archiving([_instance("orders-0", archiver={"archivedCount": 0, "failedCount": 0})])
    assert (cond["status"], cond["reason"]) == ("Unknown", "NoWalArchivedYet")


def test_no_archiving_condition_without_backup():
    status = status_for_cluster(_cluster(), ObservedCluster(), Plan())
    assert "ContinuousArchiving" not in {c["type"] for c in status["conditions"]}
