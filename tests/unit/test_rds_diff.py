
import pytest

from pgop.rds.diff import diff, major_version, version_key
from pgop.rds.instance import DbInstance
from pgop.rds.spec import MysqlDbSpec


def spec(**overrides):
    manifest = {"engineVersion": "8.0.35", "instanceSize": "small", "storageGB": 20,
                "databaseName": "orders", "backupRetentionDays": 7}
    manifest.update(overrides)
    return MysqlDbSpec.from_manifest("shop", "orders", manifest)


def instance(**overrides):
    base = dict(
        identifier="shop-orders-1234abcd", arn="arn:aws:rds:us-east-1:123:db:shop-orders-1234abcd",
        status="available", engine="mysql", engine_version="8.0.35", instance_class="db.t4g.small",
        storage_gb=20, multi_az=False, backup_retention_days=7, deletion_protection=False,
        db_name="orders", master_username="dbadmin", host="h", port=3306, tags={}, pending={},
        storage_encrypted=True,
    )
    base.update(overrides)
    return DbInstance(**base)


def test_nothing_to_do_when_matching():
    changes = diff(spec(), instance())
    assert changes.empty and not changes.refusals


def test_size_change_modifies_class_honouring_apply_immediately():
    changes = diff(spec(instanceSize="large", applyImmediately=True), instance())
    assert changes.modify == {"DBInstanceClass": "db.m6g.2xlarge", "ApplyImmediately": True}


def test_explicit_class_wins():
    changes = diff(spec(instanceClass="db.r6g.large"), instance())
    assert changes.modify["DBInstanceClass"] == "db.r6g.large"
    assert changes.modify["ApplyImmediately"] is False


def test_storage_grows_and_refuses_to_shrink():
    assert diff(spec(storageGB=50), instance()).modify["AllocatedStorage"] == 50
    refused = diff(spec(storageGB=20), instance(storage_gb=100))
    assert refused.empty
    assert [r.field for r in refused.refusals] == ["storageGB"]
    assert "cannot shrink" in refused.refusals[0].message


def test_multi_az_retention_and_deletion_protection():
    changes = diff(spec(multiAZ=True, backupRetentionDays=14, deletionProtection=True), instance())
    assert changes.modify == {"MultiAZ": True, "BackupRetentionPeriod": 14,
                              "DeletionProtection": True, "ApplyImmediately": False}


def test_database_name_is_immutable():
    refused = diff(spec(databaseName="billing"), instance())
    assert [r.field for r in refused.refusals] == ["databaseName"]
    assert "databaseName" in refused.refusals[0].message


def test_refusal_blocks_every_other_change():
    refused = diff(spec(databaseName="billing", instanceSize="huge"), instance())
    assert refused.modify == {} and refused.refusals


def test_other_engine_is_refused():
    refused = diff(spec(), instance(engine="postgres"))
    assert [r.field for r in refused.refusals] == ["engine"]


def test_engine_upgrade_minor_and_major():
    minor = diff(spec(engineVersion="8.0.36"), instance())
    assert minor.modify["EngineVersion"] == "8.0.36"
    assert "AllowMajorVersionUpgrade" not in minor.modify
    refused = diff(spec(engineVersion="8.4.3"), instance())
    assert refused.empty and [r.reason for r in refused.refusals] == ["MajorVersionUpgradeNotAllowed"]
    assert "spec.allowMajorVersionUpgrade: true" in refused.refusals[0].message
    major = diff(spec(engineVersion="8.4.3", allowMajorVersionUpgrade=True), instance())
    assert major.modify["AllowMajorVersionUpgrade"] is True


def test_instance_ahead_of_spec_is_a_note_not_a_downgrade():
    changes = diff(spec(engineVersion="8.0.35"), instance(engine_version="8.0.39"))
    assert changes.empty and not changes.refusals
    assert "ahead" in changes.notes[0]


def test_pending_modifications_are_not_asked_twice():
    pending = instance(pending={"DBInstanceClass": "db.m6g.large", "AllocatedStorage": 40})
    changes = diff(spec(instanceSize="medium", storageGB=40), pending)
    assert changes.empty


def test_tags_added_and_previously_applied_ones_removed():
    inst = instance(tags={"team": "shop", "old": "x", "foreign": "y", "pgop.io/uid": "u"})
    changes = diff(spec(tags={"team": "shop", "cost": "42"}), inst,
                   ownership_tags={"pgop.io/uid": "u"}, previously_applied_tags={"old": "x", "team": "shop"})
    assert changes.add_tags == {"cost": "42"}
    assert changes.remove_tags == ("old",)  # "foreign" was never ours


@pytest.mark.parametrize("a,b", [("8.0.9", "8.0.10"), ("5.7.44", "8.0.11"), ("8.0.35", "8.0.35-rds.20240408")])
def test_version_order(a, b):
    assert version_key(a) < version_key(b)


def test_major_version():
    assert major_version("8.0.35") == "8.0" and major_version("8.4.3") == "8.4"
