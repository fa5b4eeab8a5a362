from pgop.controller import status_for_cluster
from pgop.model import Cluster
from pgop.plan import Plan


def _cluster(backup=None):
    spec = {"instances": 1, "postgresVersion": 15, "storage": {"size": "1Gi"},
            "bootstrap": {"initdb": {"database": "app", "owner": "app"}}}
    if backup:
        spec["backup"] = backup
    return Cluster.from_object({"apiVersion": "pgop.io/v1", "kind": "PgCluster",
                                "metadata": {"name": "orders", "namespace": "shop", "uid": "u1",
                                             "generation": 1}, "spec": spec})


def test_archiving_not_available_is_said_not_hidden():
    status = status_for_cluster(_cluster({"s3": {"bucket": "pg-backups", "credentialsSecret": "s3"}}), [], Plan())
    cond = {c["type"]: c for c in status["conditions"]}["ContinuousArchiving"]
    assert (cond["status"], cond["reason"]) == ("False", "NotAvailable")


def test_no_archiving_condition_without_backup():
    status = status_for_cluster(_cluster(), [], Plan())
    assert "ContinuousArchiving" not in {c["type"] for c in status["conditions"]}
