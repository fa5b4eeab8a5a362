from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from pgop.kernel.model import (
    DEFAULT_IMAGE,
    Cluster,
    ClusterSpec,
    Instance,
    parse_duration,
    parse_quantity,
)
from tests.unit.world import cluster_body

EXAMPLES = Path(__file__).parents[2] / "examples"


def paths(errors):
    return [path for path, _ in errors]


# ---------------------------------------------------------------------------------- defaults

def test_a_minimal_spec_gets_the_crd_defaults():
    spec = ClusterSpec.from_dict({"storage": {"size": "1Gi"}})
    assert spec.instances == 1
    assert spec.synchronous_replicas == 0 and spec.synchronous_mode == "preferred"
    assert spec.storage.reclaim_policy == "Retain"
    assert spec.effective_image == DEFAULT_IMAGE
    assert spec.bootstrap.initdb is not None
    assert (spec.bootstrap.initdb.database, spec.bootstrap.initdb.owner) == ("app", "app")
    assert spec.bootstrap.first_primary_mode == "initdb"
    assert spec.failover_delay_seconds == 0  # docs/high-availability.md: fail over at once
    assert spec.backup is None and spec.validate() == []


def test_image_override_wins():
    assert ClusterSpec.from_dict({"storage": {"size": "1Gi"}, "image": "reg/pg:16"}).effective_image == "reg/pg:16"


def test_yaml_typed_parameters_become_postgres_spellings():
    spec = ClusterSpec.from_dict({"storage": {"size": "1Gi"},
                                  "parameters": {"max_connections": 200, "jit": False, "log_checkpoints": True}})
    assert spec.parameters == {"max_connections": "200", "jit": "off", "log_checkpoints": "on"}


def test_wal_archiving_defaults_to_on_when_s3_is_set():
    spec = ClusterSpec.from_dict({"storage": {"size": "1Gi"},
                                  "backup": {"s3": {"bucket": "b", "credentialsSecret": "s"}}})
    assert spec.backup.wal_archiving is True
    off = ClusterSpec.from_dict({"storage": {"size": "1Gi"},
                                 "backup": {"s3": {"bucket": "b", "credentialsSecret": "s"}, "walArchiving": False}})
    assert off.backup.wal_archiving is False


def test_recovery_bootstrap_has_no_initdb():
    spec = ClusterSpec.from_dict({"storage": {"size": "1Gi"},
                                  "bootstrap": {"recovery": {"source": "orders", "targetLSN": "0/3000060"}}})
    assert spec.bootstrap.initdb is None
    assert spec.bootstrap.first_primary_mode == "recovery"
    assert spec.bootstrap.recovery.target_lsn == "0/3000060"


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("pgcluster-*.yaml")), ids=lambda p: p.name)
def test_the_shipped_examples_are_valid(example):
    cluster = Cluster.from_object(yaml.safe_load(example.read_text()))
    assert cluster.validate() == []


# -------------------------------------------------------------------------------- validation

def test_more_synchronous_replicas_than_replicas_is_refused():
    errors = ClusterSpec.from_dict({"instances": 2, "synchronousReplicas": 2, "storage": {"size": "1Gi"}}).validate()
    assert paths(errors) == ["spec.synchronousReplicas"]
    assert "instances - 1" in errors[0][1]


def test_required_mode_without_synchronous_replicas_is_refused():
    errors = ClusterSpec.from_dict({"instances": 2, "synchronousMode": "required", "storage": {"size": "1Gi"}}).validate()
    assert paths(errors) == ["spec.synchronousMode"]


def test_a_version_the_default_image_does_not_ship_needs_an_image():
    errors = ClusterSpec.from_dict({"postgresVersion": 16, "storage": {"size": "1Gi"}}).validate()
    assert paths(errors) == ["spec.postgresVersion"]
    assert "spec.image" in errors[0][1]
    assert ClusterSpec.from_dict({"postgresVersion": 16, "image": "x/pg:16", "storage": {"size": "1Gi"}}).validate() == []


@pytest.mark.parametrize("size", ["1GB", "lots", "", "0", "-1Gi"])
def test_a_storage_size_that_is_not_a_positive_quantity_is_refused(size):
    assert paths(ClusterSpec.from_dict({"storage": {"size": size}}).validate()) == ["spec.storage.size"]


def test_owned_parameters_are_refused_by_name():
    errors = ClusterSpec.from_dict({"storage": {"size": "1Gi"},
                                    "parameters": {"port": "6543", "archive_command": "x", "work_mem": "8MB"}}).validate()
    assert sorted(paths(errors)) == ["spec.parameters.archive_command", "spec.parameters.port"]
    assert all("operator" in reason for _, reason in errors)


def test_a_newline_in_a_parameter_cannot_inject_settings():
    errors = ClusterSpec.from_dict({"storage": {"size": "1Gi"},
                                    "parameters": {"work_mem": "8MB\nwal_level = minimal"}}).validate()
    assert paths(errors) == ["spec.parameters.work_mem"]


def test_a_parameter_name_that_is_not_a_setting_is_refused():
    errors = ClusterSpec.from_dict({"storage": {"size": "1Gi"}, "parameters": {"work mem": "1"}}).validate()
    assert paths(errors) == ["spec.parameters.work mem"]


def test_an_invalid_cron_schedule_is_refused_even_if_it_has_five_fields():
    spec = ClusterSpec.from_dict({"storage": {"size": "1Gi"}, "backup": {
        "s3": {"bucket": "b", "credentialsSecret": "s"}, "schedule": "61 25 * * *"}})
    assert paths(spec.validate()) == ["spec.backup.schedule"]


def test_a_valid_cron_schedule_and_macro_pass():
    for schedule in ("0 3 * * *", "@daily", "*/15 * * * 1-5"):
        spec = ClusterSpec.from_dict({"storage": {"size": "1Gi"}, "backup": {
            "s3": {"bucket": "b", "credentialsSecret": "s"}, "schedule": schedule}})
        assert spec.validate() == [], schedule


def test_bootstrap_must_be_exactly_one_kind():
    both = ClusterSpec.from_dict({"storage": {"size": "1Gi"},
                                  "bootstrap": {"initdb": {}, "recovery": {"source": "x"}}})
    assert paths(both.validate()) == ["spec.bootstrap"]


@pytest.mark.parametrize("owner", ["streaming_replica", "postgres", "pg_monitor"])
def test_roles_the_operator_reserves_cannot_own_the_app_database(owner):
    spec = ClusterSpec.from_dict({"storage": {"size": "1Gi"}, "bootstrap": {"initdb": {"owner": owner}}})
    assert "spec.bootstrap.initdb.owner" in paths(spec.validate())


def test_recovery_targets():
    def check(recovery):
        return paths(ClusterSpec.from_dict({"storage": {"size": "1Gi"}, "bootstrap": {"recovery": recovery}}).validate())
    assert check({"source": "o", "targetLSN": "0/XYZ"}) == ["spec.bootstrap.recovery.targetLSN"]
    assert check({"source": "o", "targetTime": "yesterday"}) == ["spec.bootstrap.recovery.targetTime"]
    assert check({"source": "o", "targetTime": "2026-11-22T03:00:00Z", "targetLSN": "0/1"}) == \
        ["spec.bootstrap.recovery.targetLSN"]
    assert check({"source": "o", "targetTime": "2026-11-22T03:00:00Z"}) == []


def test_restoring_into_the_source_cluster_is_refused():
    cluster = Cluster.from_object(cluster_body(name="orders", bootstrap={"recovery": {"source": "orders"}}))
    assert paths(cluster.validate()) == ["spec.bootstrap.recovery.source"]


def test_a_cluster_name_too_long_for_its_service_names_is_refused():
    cluster = Cluster.from_object(cluster_body(name="x" * 51))
    assert paths(cluster.validate()) == ["metadata.name"]


# ------------------------------------------------------------------- quantities and durations

def test_quantities_compare_by_value():
    assert parse_quantity("1Gi") == parse_quantity("1024Mi") == 2 ** 30
    assert parse_quantity("1G") == 10 ** 9
    assert parse_quantity("500m") == Decimal("0.5")
    assert parse_quantity("1e3") == 1000
    assert parse_quantity(3) == 3


@pytest.mark.parametrize("bad", ["1GB", "Gi", "1 Gi", "", True])
def test_bad_quantities_are_refused(bad):
    with pytest.raises(ValueError):
        parse_quantity(bad)


def test_durations():
    assert parse_duration("30s") == 30
    assert parse_duration("1m30s") == 90
    assert parse_duration("2h") == 7200
    for bad in ("", "30", "1d", "s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# ---------------------------------------------------------------------------------- PgInstance

def _instance_body(**status):
    return {
        "metadata": {"name": "orders-1", "namespace": "shop", "uid": "i-1", "generation": 3,
                     "ownerReferences": [{"kind": "PgCluster", "name": "orders", "uid": "c-1"}]},
        "spec": {"cluster": "orders", "ordinal": 1, "role": "replica", "bootstrap": "basebackup",
                 "parameters": {"work_mem": "8MB"}, "synchronousReplicas": 1},
        "status": status,
    }


def test_instance_view_reads_spec_status_and_its_cluster():
    instance = Instance.from_object(_instance_body(
        ready=True, role="replica", lsn="0/3000060", timeline=2, lastHeartbeat="2026-11-22T12:00:00Z",
        observedGeneration=3))
    assert instance.cluster_uid == "c-1"
    assert instance.ordinal == 1 and not instance.is_primary
    assert instance.spec.parameters == {"work_mem": "8MB"}
    assert instance.status.timeline == 2
    assert instance.status.last_heartbeat == datetime(2026, 11, 22, 12, tzinfo=UTC)
    assert instance.raw_spec["synchronousReplicas"] == 1


def test_an_instance_is_settled_only_when_ready_on_its_current_spec():
    assert Instance.from_object(_instance_body(ready=True, observedGeneration=3)).settled
    assert not Instance.from_object(_instance_body(ready=True, observedGeneration=2)).settled
    assert not Instance.from_object(_instance_body(ready=False, observedGeneration=3)).settled
    assert not Instance.from_object(_instance_body()).settled


# ------------------------------------------------------------ unsafe parameters (issue 12)

def _unsafe(parameters, **spec):
    return ClusterSpec.from_dict({"storage": {"size": "1Gi"}, "instances": 3, "synchronousReplicas": 1,
                                  "parameters": parameters, **spec}).validate()


@pytest.mark.parametrize("value", ["off", "OFF", "of", "false", "f", "No", "n", "0", " off ", False])
def test_fsync_off_is_refused_in_any_spelling_postgres_reads_as_off(value):
    errors = _unsafe({"fsync": value})
    assert paths(errors) == ["spec.parameters.fsync"]
    assert "corrupt" in errors[0][1] and "spec.allowUnsafeParameters: true" in errors[0][1]


@pytest.mark.parametrize("value", ["on", "true", "1", "yes", "o", "offline"])
def test_fsync_on_or_not_a_false_spelling_passes(value):
    assert _unsafe({"fsync": value}) == []


@pytest.mark.parametrize("value", ["off", "local", "LOCAL", "false", "0", "no"])
def test_synchronous_commit_off_or_local_is_refused_with_required_sync(value):
    errors = _unsafe({"synchronous_commit": value}, synchronousMode="required")
    assert paths(errors) == ["spec.parameters.synchronous_commit"]
    assert "synchronousMode required" in errors[0][1]
    # what preferred promises, off does not break
    assert _unsafe({"synchronous_commit": value}, synchronousMode="preferred") == []


@pytest.mark.parametrize("value", ["on", "remote_apply", "remote_write", "of", "loc"])
def test_synchronous_commit_that_waits_for_a_replica_passes(value):
    assert _unsafe({"synchronous_commit": value}, synchronousMode="required") == []


def test_setting_names_are_case_insensitive_for_the_unsafe_rule():
    assert paths(_unsafe({"FSync": "off"})) == ["spec.parameters.FSync"]


def test_allow_unsafe_parameters_lets_them_through_but_never_owned_ones():
    spec = {"allowUnsafeParameters": True, "synchronousMode": "required"}
    assert _unsafe({"fsync": "off", "synchronous_commit": "local"}, **spec) == []
    # full_page_writes is the operator's (pg_rewind needs it): refused with or without the opt-in
    assert paths(_unsafe({"full_page_writes": "off"}, **spec)) == ["spec.parameters.full_page_writes"]
    assert ClusterSpec.from_dict({"storage": {"size": "1Gi"}}).allow_unsafe_parameters is False


# ------------------------------------------------------------ spec.publish stays in the namespace

def test_publish_paths_default_below_the_clusters_namespace():
    cluster = Cluster.from_object(cluster_body(publish={}))
    assert cluster.publish_paths() == ("secret/data/k8s/shop/orders/db", "config/k8s/shop/orders/db")
    assert cluster.refused_publish_paths() == []
    assert Cluster.from_object(cluster_body()).publish_paths() is None


def test_publish_paths_of_another_namespace_are_refused_segment_by_segment():
    # the substring test this replaces let this one through: k8s/shop/ is in it
    cluster = Cluster.from_object(cluster_body(publish={"vaultPath": "secret/data/k8s/billing/k8s/shop/db",
                                                        "consulPrefix": "config/k8s/shop/../billing/db"}))
    refused = cluster.refused_publish_paths()
    assert [r.field for r in refused] == ["spec.publish.vaultPath", "spec.publish.consulPrefix"]
