"""Issue 16 against moto (in-process) with the in-memory Vault and Consul of test_rds_controller:
networking, encryption and maintenance fields, engine upgrades, drift reversal, password rotation
and restores. The same scenarios run against the real Vault and Consul in
tests/integration/test_rds_aws_fields.py.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from pgop.rds import policy
from pgop.rds.aws import Rds
from pgop.rds.controller import MysqlDbController
from pgop.runtime import publish as pub
from tests.unit.test_rds_controller import MemoryConsul, MemoryVault, advance, make, reason


@pytest.fixture
def network():
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
        rds = boto3.client("rds", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"us-east-1{z}")
                   ["Subnet"]["SubnetId"] for i, z in ((1, "a"), (2, "b"))]
        groups = [ec2.create_security_group(GroupName=f"db-{i}", Description="db", VpcId=vpc)["GroupId"]
                  for i in range(3)]
        rds.create_db_subnet_group(DBSubnetGroupName="private", DBSubnetGroupDescription="private",
                                   SubnetIds=subnets)
        for name in ("orders-params", "other-params"):
            rds.create_db_parameter_group(DBParameterGroupName=name, DBParameterGroupFamily="mysql8.0",
                                          Description=name)
        yield {"rds": rds, "groups": groups}


@pytest.fixture
def vault():
    return MemoryVault()


@pytest.fixture
def consul_kv():
    return MemoryConsul()


class Clock:
    def __init__(self):
        self.now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def controller(network, vault, consul_kv, clock):
    return MysqlDbController(Rds(network["rds"]), vault, consul_kv, poll_seconds=1, resync_seconds=30,
                             clock=clock)


def full_spec(network, **overrides):
    spec = {"dbSubnetGroupName": "private", "vpcSecurityGroupIds": network["groups"][:2],
            "dbParameterGroupName": "orders-params", "storageEncrypted": True,
            "kmsKeyId": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "preferredBackupWindow": "03:00-04:00", "preferredMaintenanceWindow": "sun:05:00-sun:06:00",
            "publiclyAccessible": False, "autoMinorVersionUpgrade": False}
    spec.update(overrides)
    return spec


def described(network, identifier):
    return network["rds"].describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"][0]


def ready(controller, o):
    outcome = controller.reconcile(o)
    assert outcome.status["phase"] == "Ready", outcome.status
    return advance(o, outcome)


# --- the fields --------------------------------------------------------------------------------------

def test_fields_reach_create_and_show_in_status(controller, network):
    o = ready(controller, make(spec=full_spec(network)))
    raw = described(network, o.status["dbInstanceIdentifier"])
    assert raw["DBSubnetGroup"]["DBSubnetGroupName"] == "private"
    assert sorted(g["VpcSecurityGroupId"] for g in raw["VpcSecurityGroups"]) == sorted(network["groups"][:2])
    assert [g["DBParameterGroupName"] for g in raw["DBParameterGroups"]] == ["orders-params"]
    assert raw["StorageEncrypted"] is True and raw["KmsKeyId"].endswith("key/1234abcd-12ab-34cd-56ef-1234567890ab")
    assert raw["PreferredBackupWindow"] == "03:00-04:00"
    assert raw["PreferredMaintenanceWindow"] == "sun:05:00-sun:06:00"
    assert raw["PubliclyAccessible"] is False and raw["AutoMinorVersionUpgrade"] is False
    status = o.status
    assert status["dbSubnetGroupName"] == "private" and status["dbParameterGroupName"] == "orders-params"
    assert status["vpcSecurityGroupIds"] == sorted(network["groups"][:2])
    assert status["storageEncrypted"] is True and status["kmsKeyId"] == raw["KmsKeyId"]
    assert status["preferredBackupWindow"] == "03:00-04:00" and status["publiclyAccessible"] is False
    assert status["preferredMaintenanceWindow"] == "sun:05:00-sun:06:00"
    assert status["autoMinorVersionUpgrade"] is False


def test_mutable_fields_follow_the_spec(controller, network):
    o = ready(controller, make(spec=full_spec(network)))
    changed = dataclasses.replace(o, generation=2, spec=make(spec=full_spec(
        network, vpcSecurityGroupIds=[network["groups"][2]], dbParameterGroupName="other-params",
        preferredBackupWindow="01:00-01:30", preferredMaintenanceWindow="Mon:02:00-mon:03:00",
        publiclyAccessible=True, autoMinorVersionUpgrade=True, applyImmediately=True)).spec)
    outcome = controller.reconcile(changed)
    assert outcome.status["phase"] == "Ready"
    assert "DriftReverted" not in [e.reason for e in outcome.events]  # a spec change is not drift
    raw = described(network, o.status["dbInstanceIdentifier"])
    assert [g["VpcSecurityGroupId"] for g in raw["VpcSecurityGroups"]] == [network["groups"][2]]
    assert raw["DBParameterGroups"][0]["DBParameterGroupName"] == "other-params"
    assert raw["PreferredBackupWindow"] == "01:00-01:30"
    assert raw["PreferredMaintenanceWindow"] == "mon:02:00-mon:03:00"
    assert raw["PubliclyAccessible"] is True and raw["AutoMinorVersionUpgrade"] is True


def test_encryption_cannot_change_and_says_to_restore(controller, network):
    o = ready(controller, make(spec=full_spec(network)))
    for change in ({"storageEncrypted": False, "kmsKeyId": None},
                   {"kmsKeyId": "arn:aws:kms:us-east-1:123456789012:key/ffffffff-0000-0000-0000-000000000000"}):
        spec = {k: v for k, v in full_spec(network, **change).items() if v is not None}
        outcome = controller.reconcile(dataclasses.replace(o, generation=2, spec=make(spec=spec).spec))
        assert outcome.permanent and "restoreFrom" in outcome.permanent
        assert reason(outcome, "Degraded") == "ImmutableField"
    assert described(network, o.status["dbInstanceIdentifier"])["StorageEncrypted"] is True


def test_minor_upgrade_by_default_major_only_when_allowed(controller, network):
    o = ready(controller, make())
    identifier = o.status["dbInstanceIdentifier"]
    minor = controller.reconcile(dataclasses.replace(o, generation=2, spec=make(spec={"engineVersion": "8.0.36"}).spec))
    assert minor.status["engineVersion"] == "8.0.36"
    modifying = next(e.message for e in minor.events if e.reason == "Modifying")
    assert "ApplyImmediately=False" in modifying and "AllowMajorVersionUpgrade" not in modifying
    o = advance(o, minor)
    major = controller.reconcile(dataclasses.replace(o, generation=3, spec=make(spec={"engineVersion": "8.4.3"}).spec))
    assert major.permanent and "spec.allowMajorVersionUpgrade" in major.permanent
    assert reason(major, "Degraded") == "MajorVersionUpgradeNotAllowed"
    assert described(network, identifier)["EngineVersion"] == "8.0.36"
    allowed = controller.reconcile(dataclasses.replace(o, generation=4, spec=make(
        spec={"engineVersion": "8.4.3", "allowMajorVersionUpgrade": True}).spec))
    assert allowed.status["phase"] == "Ready" and described(network, identifier)["EngineVersion"] == "8.4.3"


# --- drift -----------------------------------------------------------------------------------------

def test_drift_is_put_back_with_a_warning_naming_the_field(controller, network):
    o = ready(controller, make(spec=full_spec(network, backupRetentionDays=7)))
    identifier = o.status["dbInstanceIdentifier"]
    # someone changes the instance with the AWS API, console or CLI
    network["rds"].modify_db_instance(
        DBInstanceIdentifier=identifier, DBInstanceClass="db.m6g.large", BackupRetentionPeriod=1,
        MultiAZ=True, VpcSecurityGroupIds=[network["groups"][2]], PubliclyAccessible=True,
        ApplyImmediately=True)
    outcome = controller.reconcile(o)
    assert outcome.status["phase"] == "Ready"
    raw = described(network, identifier)
    assert raw["DBInstanceClass"] == "db.t4g.small" and raw["BackupRetentionPeriod"] == 7
    assert raw["MultiAZ"] is False and raw["PubliclyAccessible"] is False
    assert sorted(g["VpcSecurityGroupId"] for g in raw["VpcSecurityGroups"]) == sorted(network["groups"][:2])
    drift = {e.message.split(":")[0]: e for e in outcome.events if e.reason == "DriftReverted"}
    assert set(drift) == {"spec.instanceClass", "spec.backupRetentionDays", "spec.multiAZ",
                          "spec.vpcSecurityGroupIds", "spec.publiclyAccessible"}
    assert all(e.type == "Warning" for e in drift.values())
    assert "instance has db.m6g.large, spec says db.t4g.small" in drift["spec.instanceClass"].message
    assert "instance has 1, spec says 7" in drift["spec.backupRetentionDays"].message


def test_fields_the_spec_does_not_set_are_left_alone(controller, network):
    o = ready(controller, make())  # no parameter group, windows, security groups in the spec
    identifier = o.status["dbInstanceIdentifier"]
    network["rds"].modify_db_instance(DBInstanceIdentifier=identifier, DBParameterGroupName="other-params",
                                      PreferredBackupWindow="22:00-23:00", AutoMinorVersionUpgrade=False,
                                      VpcSecurityGroupIds=[network["groups"][1]], ApplyImmediately=True)
    outcome = controller.reconcile(o)
    assert outcome.status["phase"] == "Ready" and not outcome.events
    raw = described(network, identifier)
    assert raw["DBParameterGroups"][0]["DBParameterGroupName"] == "other-params"
    assert raw["PreferredBackupWindow"] == "22:00-23:00" and raw["AutoMinorVersionUpgrade"] is False
    assert [g["VpcSecurityGroupId"] for g in raw["VpcSecurityGroups"]] == [network["groups"][1]]


# --- rotation --------------------------------------------------------------------------------------

def test_rotate_on_request_vault_first_then_rds_once(controller, network, vault):
    o = ready(controller, make())
    before = vault.read(o.spec.vault_path)
    sent = []
    real = controller.rds.set_master_password

    def spy(identifier, password):
        assert vault.read(o.spec.vault_path).data["pendingPassword"] == password  # Vault holds it first
        sent.append(password)
        real(identifier, password)

    controller.rds.set_master_password = spy
    asked = dataclasses.replace(o, annotations={"pgop.io/rotate-password": "2026-12-01T10:00:00Z"})
    outcome = controller.reconcile(asked)
    after = vault.read(o.spec.vault_path)
    assert len(sent) == 1 and after.data["password"] == sent[0] != before.data["password"]
    assert "pendingPassword" not in after.data and after.version == before.version + 2
    assert [e.reason for e in outcome.events][:2] == ["RotatingPassword", "PasswordRotated"]
    for password in (sent[0], before.data["password"]):
        assert password not in repr(outcome.status) + repr(outcome.events)
    rotation = outcome.status["passwordRotation"]
    assert rotation["handledRequest"] == "2026-12-01T10:00:00Z" and not rotation["inProgress"]
    again = controller.reconcile(advance(asked, outcome))  # the same token is not a new request
    assert not again.events and len(sent) == 1


def test_rotation_resumes_a_pending_password_after_a_crash(controller, network, vault):
    o = ready(controller, make())
    current = vault.read(o.spec.vault_path)
    # a previous pass stored the pending password and died before (or after) telling RDS
    vault.write(o.spec.vault_path, {**current.data, "pendingPassword": "Pending-Password-123"}, cas=current.version)
    controller.generate_password = lambda: pytest.fail("a second new password was generated")
    outcome = controller.reconcile(o)
    assert outcome.status["phase"] == "Ready"
    assert vault.read(o.spec.vault_path).data["password"] == "Pending-Password-123"


def test_rotation_schedule_arms_then_rotates_when_due(controller, network, vault, clock):
    o = ready(controller, make(spec={"passwordRotation": {"schedule": "0 3 * * *"}}))
    assert o.status["passwordRotation"]["lastScheduledAt"] == "2026-12-01T03:00:00Z"  # armed, not run
    first = vault.read(o.spec.vault_path).data["password"]
    clock.now = datetime(2026, 12, 2, 3, 1, tzinfo=UTC)
    outcome = controller.reconcile(o)
    assert "PasswordRotated" in [e.reason for e in outcome.events]
    assert vault.read(o.spec.vault_path).data["password"] != first
    assert outcome.status["passwordRotation"]["lastScheduledAt"] == "2026-12-02T03:00:00Z"
    clock.now += timedelta(hours=1)
    assert "PasswordRotated" not in [e.reason for e in controller.reconcile(advance(o, outcome)).events]


def test_rotation_with_vault_down_changes_nothing_in_rds(controller, network, vault):
    o = ready(controller, make())
    vault.down = True
    controller.rds.set_master_password = lambda *a: pytest.fail("RDS asked before Vault stored the password")
    outcome = controller.reconcile(dataclasses.replace(o, annotations={"pgop.io/rotate-password": "t1"}))
    assert outcome.requeue_after and reason(outcome, "Progressing") == "VaultUnavailable"


# --- restore ---------------------------------------------------------------------------------------

def restore_target(spec_extra, name="orders-copy"):
    o = make(spec=spec_extra)
    return dataclasses.replace(o, name=name, spec=dataclasses.replace(
        o.spec, vault_path=f"secret/data/k8s/shop/{name}/db", consul_prefix=f"config/k8s/shop/{name}/db"))


@pytest.mark.parametrize("how", ["snapshot", "latest", "time"])
def test_restore_gets_its_own_password_and_config(controller, network, vault, consul_kv, how):
    source = ready(controller, make())
    source_id = source.status["dbInstanceIdentifier"]
    if how == "snapshot":
        network["rds"].create_db_snapshot(DBSnapshotIdentifier="orders-snap", DBInstanceIdentifier=source_id)
        restore = {"snapshotIdentifier": "orders-snap"}
    elif how == "latest":
        restore = {"sourceDbInstanceIdentifier": source_id, "useLatestRestorableTime": True}
    else:
        at = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        restore = {"sourceDbInstanceIdentifier": source_id, "restoreTime": at}
    target = restore_target({"restoreFrom": restore, "preferredMaintenanceWindow": "tue:01:00-tue:02:00"})
    outcome = controller.reconcile(target)
    assert outcome.status["phase"] == "Ready", outcome.status
    identifier = outcome.status["dbInstanceIdentifier"]
    assert identifier != source_id
    reasons = [e.reason for e in outcome.events]
    assert reasons.index("Restoring") < reasons.index("PasswordSet") < reasons.index("Ready")
    assert outcome.status["restore"]["passwordSet"] is True
    raw = described(network, identifier)
    tags = {t["Key"]: t["Value"] for t in raw["TagList"]}
    assert tags[policy.TAG_UID] == target.uid
    assert raw["PreferredMaintenanceWindow"] == "tue:01:00-tue:02:00"  # set after the restore
    own = vault.read(target.spec.vault_path).data
    assert own["password"] != vault.read(source.spec.vault_path).data["password"]
    assert own["host"] == raw["Endpoint"]["Address"]
    assert consul_kv.read(target.spec.consul_prefix)["host"] == raw["Endpoint"]["Address"]
    assert own["password"] not in repr(outcome.status) + repr(outcome.events)


def test_restore_from_a_missing_snapshot_fails_with_a_reason(controller, network):
    outcome = controller.reconcile(restore_target({"restoreFrom": {"snapshotIdentifier": "no-such-snap"}}))
    assert outcome.status["phase"] == "Failed" and outcome.permanent
    assert reason(outcome, "Ready") == "RestoreSourceNotFound"


def test_restore_crash_before_status_still_sets_the_password(controller, network, vault):
    source = ready(controller, make())
    target = restore_target({"restoreFrom": {"sourceDbInstanceIdentifier": source.status["dbInstanceIdentifier"],
                                             "useLatestRestorableTime": True}})
    step = policy.restore_request(target, policy.target_identifier(target))
    controller.rds.restore(step.operation, step.request)  # ... and the operator dies before status
    outcome = controller.reconcile(target)
    assert "PasswordSet" in [e.reason for e in outcome.events] and outcome.status["phase"] == "Ready"
    assert vault.read(target.spec.vault_path).data["password"]


# --- where moto cannot play AWS: Stubber ------------------------------------------------------------

def _stubbed(o, **fields):
    identifier = policy.target_identifier(o)
    raw = {
        "DBInstanceIdentifier": identifier, "DBInstanceArn": f"arn:aws:rds:us-east-1:1:db:{identifier}",
        "DBInstanceStatus": "available", "Engine": "mysql", "EngineVersion": "8.0.35",
        "DBInstanceClass": "db.t4g.small", "AllocatedStorage": 20, "MultiAZ": False, "BackupRetentionPeriod": 7,
        "DeletionProtection": False, "DBName": "orders", "MasterUsername": "dbadmin", "StorageEncrypted": True,
        "PubliclyAccessible": False, "Endpoint": {"Address": f"{identifier}.rds.example", "Port": 3306},
        "TagList": [{"Key": k, "Value": v} for k, v in policy.ownership_tags(o).items()],
    }
    raw.update(fields)
    return {"DBInstances": [raw]}


def test_minor_upgrade_waiting_for_the_window_is_shown_and_not_asked_twice(vault, consul_kv):
    """Stubber: moto applies every modification at once; RDS keeps a minor upgrade without
    applyImmediately in PendingModifiedValues until the maintenance window."""
    from botocore.stub import Stubber
    client = boto3.client("rds", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    o = make(spec={"engineVersion": "8.0.36"})
    o = dataclasses.replace(o, status={"phase": "Ready", "dbInstanceIdentifier": policy.target_identifier(o)})
    pending = _stubbed(o, PendingModifiedValues={"EngineVersion": "8.0.36"})
    stub = Stubber(client)
    stub.add_response("describe_db_instances", pending)  # no modify_db_instance is expected
    pub.ensure_master_password(vault, o.spec.vault_path, username="dbadmin", engine="mysql", dbname="orders")
    with stub:
        outcome = MysqlDbController(Rds(client), vault, consul_kv).reconcile(o)
        stub.assert_no_pending_responses()
    assert outcome.status["phase"] == "Ready"
    assert outcome.status["pendingModifications"] == {"EngineVersion": "8.0.36"}
    assert outcome.status["engineVersion"] == "8.0.35"


def test_rotation_waits_while_rds_applies_the_password(vault, consul_kv):
    """Stubber: RDS shows a pending master password change (as ****) for a while; moto does not.
    Vault's `password` stays the old one (which RDS still takes) until the change is applied."""
    from botocore.stub import Stubber
    client = boto3.client("rds", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    o = make()
    o = dataclasses.replace(o, status={"phase": "Ready", "dbInstanceIdentifier": policy.target_identifier(o),
                                       "passwordRotation": {"inProgress": {"trigger": "Requested"}}})
    old = pub.ensure_master_password(vault, o.spec.vault_path, username="dbadmin", engine="mysql", dbname="orders")
    current = vault.read(o.spec.vault_path)
    vault.write(o.spec.vault_path, {**current.data, "pendingPassword": "New-Password-123"}, cas=current.version)
    stub = Stubber(client)
    stub.add_response("describe_db_instances", _stubbed(o, PendingModifiedValues={"MasterUserPassword": "****"}))
    stub.add_response("describe_db_instances", _stubbed(o))  # applied: promote
    stub.add_response("describe_db_instances", _stubbed(o))  # then publish
    controller = MysqlDbController(Rds(client), vault, consul_kv)
    with stub:
        waiting = controller.reconcile(o)
        assert waiting.status["phase"] == "Modifying" and reason(waiting, "Progressing") == "PasswordChanging"
        assert vault.read(o.spec.vault_path).data["password"] == old.password
        assert "pendingModifications" not in waiting.status or not waiting.status["pendingModifications"]
        done = controller.reconcile(advance(o, waiting))
    assert "PasswordRotated" in [e.reason for e in done.events]
    assert vault.read(o.spec.vault_path).data["password"] == "New-Password-123"
