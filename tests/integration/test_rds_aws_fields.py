"""Issue 16 against the moto server (RDS, EC2), the real Vault (operator token with only
pgop-operator.hcl) and the real Consul: each new field, drift reversal, restores and rotation.
Fixtures come from test_rds_mysqldb.py. The Stubber cases (a pending modification window, a pending
password change) are unit tests (tests/unit/test_rds_aws_fields.py): moto applies everything at once.
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from pgop.rds import policy
from pgop.runtime import publish as pub
from tests.integration.test_rds_mysqldb import (  # noqa: F401  (fixtures)
    advance,
    boto_session,
    consul_kv,
    controller,
    make,
    names,
    no_secret_in,
    operator_token,
    rds,
    vault,
    vault_root,
)

pytestmark = pytest.mark.services


@pytest.fixture
def network(boto_session, local_env):
    ec2 = boto_session.client("ec2", endpoint_url=local_env["PGOP_RDS_ENDPOINT"])
    client = boto_session.client("rds", endpoint_url=local_env["PGOP_RDS_ENDPOINT"])
    suffix = uuid.uuid4().hex[:8]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"us-east-1{z}")
               ["Subnet"]["SubnetId"] for i, z in ((1, "a"), (2, "b"))]
    groups = [ec2.create_security_group(GroupName=f"db-{suffix}-{i}", Description="db", VpcId=vpc)["GroupId"]
              for i in range(3)]
    subnet_group = f"private-{suffix}"
    client.create_db_subnet_group(DBSubnetGroupName=subnet_group, DBSubnetGroupDescription="private",
                                  SubnetIds=subnets)
    params = [f"orders-{suffix}", f"other-{suffix}"]
    for name in params:
        client.create_db_parameter_group(DBParameterGroupName=name, DBParameterGroupFamily="mysql8.0",
                                         Description=name)
    yield {"rds": client, "groups": groups, "subnet_group": subnet_group, "params": params}


def described(network, identifier):
    return network["rds"].describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"][0]


def ready(controller, o):
    outcome = controller.reconcile(o)
    assert outcome.status["phase"] == "Ready", outcome.status
    return advance(o, outcome)


def full_spec(network, **overrides):
    spec = {"dbSubnetGroupName": network["subnet_group"], "vpcSecurityGroupIds": network["groups"][:2],
            "dbParameterGroupName": network["params"][0], "storageEncrypted": True,
            "kmsKeyId": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "preferredBackupWindow": "03:00-04:00", "preferredMaintenanceWindow": "sun:05:00-sun:06:00",
            "publiclyAccessible": False, "autoMinorVersionUpgrade": False}
    spec.update(overrides)
    return spec


def test_each_field_is_created_reflected_and_changed(controller, network, names):
    o = ready(controller, make(names, spec=full_spec(network)))
    identifier = o.status["dbInstanceIdentifier"]
    raw = described(network, identifier)
    assert raw["DBSubnetGroup"]["DBSubnetGroupName"] == network["subnet_group"]
    assert sorted(g["VpcSecurityGroupId"] for g in raw["VpcSecurityGroups"]) == sorted(network["groups"][:2])
    assert raw["DBParameterGroups"][0]["DBParameterGroupName"] == network["params"][0]
    assert raw["StorageEncrypted"] is True and raw["KmsKeyId"] == o.status["kmsKeyId"]
    assert (raw["PreferredBackupWindow"], raw["PreferredMaintenanceWindow"]) == ("03:00-04:00", "sun:05:00-sun:06:00")
    assert raw["PubliclyAccessible"] is False and raw["AutoMinorVersionUpgrade"] is False
    assert o.status["dbSubnetGroupName"] == network["subnet_group"]
    assert o.status["vpcSecurityGroupIds"] == sorted(network["groups"][:2])

    changed = dataclasses.replace(o, generation=2, spec=make(names, spec=full_spec(
        network, vpcSecurityGroupIds=[network["groups"][2]], dbParameterGroupName=network["params"][1],
        preferredBackupWindow="01:00-01:30", preferredMaintenanceWindow="mon:02:00-mon:03:00",
        publiclyAccessible=True, autoMinorVersionUpgrade=True, applyImmediately=True)).spec)
    outcome = controller.reconcile(changed)
    assert outcome.status["phase"] == "Ready" and "DriftReverted" not in [e.reason for e in outcome.events]
    raw = described(network, identifier)
    assert [g["VpcSecurityGroupId"] for g in raw["VpcSecurityGroups"]] == [network["groups"][2]]
    assert raw["DBParameterGroups"][0]["DBParameterGroupName"] == network["params"][1]
    assert raw["PreferredBackupWindow"] == "01:00-01:30" and raw["PreferredMaintenanceWindow"] == "mon:02:00-mon:03:00"
    assert raw["PubliclyAccessible"] is True and raw["AutoMinorVersionUpgrade"] is True


def test_encryption_change_and_major_upgrade_are_refused(controller, network, names):
    o = ready(controller, make(names))
    plain = controller.reconcile(dataclasses.replace(o, generation=2, spec=make(
        names, spec={"storageEncrypted": False}).spec))
    assert plain.permanent and "restoreFrom" in plain.permanent
    major = controller.reconcile(dataclasses.replace(o, generation=3, spec=make(
        names, spec={"engineVersion": "8.4.3"}).spec))
    assert major.permanent and "spec.allowMajorVersionUpgrade" in major.permanent
    assert described(network, o.status["dbInstanceIdentifier"])["EngineVersion"] == "8.0.35"


def test_drift_is_reverted_with_warnings_and_unowned_fields_are_left(controller, network, names):
    o = ready(controller, make(names, spec={"vpcSecurityGroupIds": network["groups"][:1]}))
    identifier = o.status["dbInstanceIdentifier"]
    network["rds"].modify_db_instance(
        DBInstanceIdentifier=identifier, DBInstanceClass="db.m6g.large", BackupRetentionPeriod=1, MultiAZ=True,
        VpcSecurityGroupIds=[network["groups"][2]], DBParameterGroupName=network["params"][1],
        ApplyImmediately=True)
    outcome = controller.reconcile(o)
    raw = described(network, identifier)
    assert (raw["DBInstanceClass"], raw["BackupRetentionPeriod"], raw["MultiAZ"]) == ("db.t4g.small", 7, False)
    assert [g["VpcSecurityGroupId"] for g in raw["VpcSecurityGroups"]] == network["groups"][:1]
    assert raw["DBParameterGroups"][0]["DBParameterGroupName"] == network["params"][1]  # not the spec's
    drift = sorted(e.message.split(":")[0] for e in outcome.events if e.reason == "DriftReverted")
    assert drift == ["spec.backupRetentionDays", "spec.instanceClass", "spec.multiAZ", "spec.vpcSecurityGroupIds"]
    assert all(e.type == "Warning" for e in outcome.events if e.reason == "DriftReverted")


def test_rotation_vault_first_then_rds_and_apps_read_the_new_version(controller, vault, names):
    o = ready(controller, make(names))
    before = vault.read(o.spec.vault_path)
    asked = dataclasses.replace(o, annotations={"pgop.io/rotate-password": "2026-12-01T10:00:00.000Z"})
    outcome = controller.reconcile(asked)
    after = vault.read(o.spec.vault_path)
    assert after.version == before.version + 2 and "pendingPassword" not in after.data
    assert after.data["password"] != before.data["password"]
    assert outcome.status["passwordRotation"]["vaultVersion"] == after.version
    no_secret_in(outcome, after.data["password"])
    no_secret_in(outcome, before.data["password"])


def test_rotation_loses_a_cas_race_and_retries_without_touching_rds(controller, vault, names, monkeypatch):
    o = ready(controller, make(names))
    real = controller.vault.write

    def racing_write(path, data, *, cas):
        current = vault.read(path)
        real(path, {**current.data, "note": "someone else"}, cas=current.version)  # a concurrent writer
        monkeypatch.setattr(controller.vault, "write", real)
        return real(path, data, cas=cas)

    # monkeypatch: the module's controller gets its own methods back after this test
    monkeypatch.setattr(controller.vault, "write", racing_write)
    monkeypatch.setattr(controller.rds, "set_master_password",
                        lambda *a: pytest.fail("RDS asked after a lost check-and-set"))
    outcome = controller.reconcile(dataclasses.replace(o, annotations={"pgop.io/rotate-password": "t1"}))
    assert outcome.requeue_after
    assert {c["type"]: c["reason"] for c in outcome.status["conditions"]}["Progressing"] == "VaultWriteConflict"


@pytest.mark.parametrize("how", ["snapshot", "point-in-time"])
def test_restore_gets_its_own_password_in_vault_and_config_in_consul(controller, network, vault, consul_kv,
                                                                     vault_root, names, how):
    namespace, _ = names
    source = ready(controller, make(names))
    source_id = source.status["dbInstanceIdentifier"]
    if how == "snapshot":
        snap = f"snap-{uuid.uuid4().hex[:8]}"
        network["rds"].create_db_snapshot(DBSnapshotIdentifier=snap, DBInstanceIdentifier=source_id)
        restore = {"snapshotIdentifier": snap}
    else:
        restore = {"sourceDbInstanceIdentifier": source_id, "useLatestRestorableTime": True}
    target = make((namespace, "orders-copy"), spec={"restoreFrom": restore})
    try:
        outcome = controller.reconcile(target)
        assert outcome.status["phase"] == "Ready", outcome.status
        raw = described(network, outcome.status["dbInstanceIdentifier"])
        own = vault.read(target.spec.vault_path).data
        assert own["password"] != vault.read(source.spec.vault_path).data["password"]
        assert own["host"] == raw["Endpoint"]["Address"] != vault.read(source.spec.vault_path).data["host"]
        assert consul_kv.read(target.spec.consul_prefix)["host"] == raw["Endpoint"]["Address"]
        assert {t["Key"]: t["Value"] for t in raw["TagList"]}[policy.TAG_UID] == target.uid
        no_secret_in(outcome, own["password"])
    finally:
        pub.VaultKV(vault_root).delete(target.spec.vault_path)
        consul_kv.delete(target.spec.consul_prefix)


def test_restore_from_a_missing_snapshot_is_failed_with_a_reason(controller, names, vault_root):
    target = make((names[0], "orders-copy"), spec={"restoreFrom": {"snapshotIdentifier": "no-such-snapshot"}})
    outcome = controller.reconcile(target)
    assert outcome.status["phase"] == "Failed"
    assert {c["type"]: c["reason"] for c in outcome.status["conditions"]}["Ready"] == "RestoreSourceNotFound"
    pub.VaultKV(vault_root).delete(target.spec.vault_path)
