from datetime import UTC, datetime

import pytest

from pgop.kernel.conditions import condition, rfc3339, set_condition
from pgop.rds import policy
from pgop.rds.instance import DbInstance
from pgop.rds.policy import (
    BlockDeletion,
    Claim,
    Create,
    Degrade,
    DeleteInstance,
    DisableDeletionProtection,
    Finished,
    LeaveUnpublished,
    Modify,
    Publish,
    Refuse,
    ReleaseInstance,
    ResetPassword,
    Unpublish,
    Wait,
    WaitForDeletion,
)
from pgop.rds.spec import MysqlDbObject

UID = "0b7c6d3e-1111-2222-3333-444455556666"


def obj(spec=None, status=None, annotations=None, uid=UID):
    manifest = {"engineVersion": "8.0.35", "instanceSize": "small", "storageGB": 20, "databaseName": "orders"}
    manifest.update(spec or {})
    return MysqlDbObject.from_body({
        "metadata": {"namespace": "shop", "name": "orders", "uid": uid, "generation": 1,
                     "annotations": annotations or {}},
        "spec": manifest, "status": status or {},
    })


def ours(o, **overrides):
    base = dict(
        identifier="shop-orders-x", arn="arn:x", status="available", engine="mysql",
        engine_version="8.0.35", instance_class="db.t4g.small", storage_gb=20, multi_az=False,
        backup_retention_days=7, deletion_protection=False, db_name="orders", master_username="dbadmin",
        host="shop-orders-x.rds", port=3306, tags=policy.ownership_tags(o), pending={},
        storage_encrypted=True,
    )
    base.update(overrides)
    return DbInstance(**base)


def test_nothing_there_means_create_with_ownership_tags_and_no_password():
    o = obj(spec={"tags": {"team": "shop"}})
    step = policy.next_step(o, None, identifier="id-1")
    assert isinstance(step, Create)
    tags = {t["Key"]: t["Value"] for t in step.request["Tags"]}
    assert tags[policy.TAG_UID] == UID and tags["team"] == "shop"
    assert "MasterUserPassword" not in step.request
    assert step.request["DBInstanceIdentifier"] == "id-1"
    assert step.request["DBName"] == "orders" and step.request["Engine"] == "mysql"


def test_instance_gone_after_it_existed_is_degraded_not_recreated():
    o = obj(status={"dbInstanceIdentifier": "id-1", "phase": "Ready"})
    step = policy.next_step(o, None, identifier="id-1")
    assert isinstance(step, Degrade) and step.reason == "InstanceNotFound"
    assert "does not recreate" in step.message


def test_creating_waits_with_phase_creating():
    o = obj()
    step = policy.next_step(o, ours(o, status="creating"), identifier="shop-orders-x")
    assert isinstance(step, Wait) and step.phase == "Creating"


def test_modifying_after_ready_waits_with_phase_modifying():
    o = obj(status={"phase": "Ready", "dbInstanceIdentifier": "shop-orders-x"})
    step = policy.next_step(o, ours(o, status="modifying"), identifier="shop-orders-x")
    assert isinstance(step, Wait) and step.phase == "Modifying"


def test_available_and_matching_is_published():
    o = obj()
    step = policy.next_step(o, ours(o), identifier="shop-orders-x", password_in_vault=True)
    assert step == Publish(password_managed=True)


def test_available_but_different_is_modified():
    o = obj(spec={"instanceSize": "medium"})
    step = policy.next_step(o, ours(o), identifier="shop-orders-x", password_in_vault=True)
    assert isinstance(step, Modify)
    assert step.changes.modify["DBInstanceClass"] == "db.m6g.large"


def test_immutable_difference_is_refused():
    o = obj(spec={"databaseName": "billing"})
    step = policy.next_step(o, ours(o), identifier="shop-orders-x", password_in_vault=True)
    assert isinstance(step, Refuse) and "databaseName" in step.message


def test_someone_elses_instance_is_not_touched():
    o = obj()
    foreign = ours(o, tags={})
    step = policy.next_step(o, foreign, identifier="shop-orders-x")
    assert isinstance(step, Degrade) and step.reason == "IdentifierTaken"
    assert "pgop.io/adopt" in step.message


def test_instance_of_another_mysqldb_is_not_adopted_even_when_asked():
    o = obj(annotations={"pgop.io/adopt": "shop-orders-x"})
    other = ours(o, tags={**policy.ownership_tags(o), policy.TAG_UID: "other-uid"})
    step = policy.next_step(o, other, identifier="shop-orders-x")
    assert isinstance(step, Degrade) and step.reason == "OwnedByAnother"


def test_adoption_claims_then_keeps_the_password():
    o = obj(annotations={"pgop.io/adopt": "legacy-orders"})
    assert policy.target_identifier(o) == "legacy-orders"
    legacy = ours(o, identifier="legacy-orders", tags={"team": "legacy"})
    assert isinstance(policy.next_step(o, legacy, identifier="legacy-orders", adopt_namespaces={"shop"}), Claim)
    claimed = ours(o, identifier="legacy-orders")
    step = policy.next_step(o, claimed, identifier="legacy-orders", password_in_vault=False)
    assert step == Publish(password_managed=False)


def test_adoption_resets_password_only_when_asked():
    o = obj(annotations={"pgop.io/adopt": "legacy-orders", "pgop.io/reset-password": "true"})
    claimed = ours(o, identifier="legacy-orders")
    assert isinstance(policy.next_step(o, claimed, identifier="legacy-orders", password_in_vault=False),
                      ResetPassword)
    assert isinstance(policy.next_step(o, claimed, identifier="legacy-orders", password_in_vault=True),
                      Publish)


def test_adoption_is_refused_unless_an_administrator_allows_it():
    o = obj(annotations={"pgop.io/adopt": "legacy-orders"})
    untagged = ours(o, identifier="legacy-orders", tags={"team": "legacy"})
    step = policy.next_step(o, untagged, identifier="legacy-orders")
    assert step == policy.adoption_refusal(o, untagged, frozenset())
    assert isinstance(step, Degrade) and step.reason == "AdoptionNotAllowed"
    # the message says how an administrator allows it, and that nothing was touched
    assert "pgop.io/adoptable-by=shop/orders" in step.message
    assert "PGOP_RDS_ADOPT_NAMESPACES" in step.message and "nothing on the instance was changed" in step.message
    # other namespaces in the configuration do not count
    assert isinstance(policy.next_step(o, untagged, identifier="legacy-orders",
                                       adopt_namespaces={"billing", "shop-2"}), Degrade)


@pytest.mark.parametrize("tag,allowed", [
    ("shop/orders", True), (" shop/orders ", True),
    ("shop", False), ("shop/other", False), ("billing/orders", False), ("shop/orders/x", False),
    ("*", False), ("", False),
])
def test_the_adoptable_by_tag_names_the_one_mysqldb_that_may_adopt(tag, allowed):
    o = obj(annotations={"pgop.io/adopt": "legacy-orders"})
    tagged = ours(o, identifier="legacy-orders", tags={policy.TAG_ADOPTABLE_BY: tag})
    step = policy.next_step(o, tagged, identifier="legacy-orders")
    assert isinstance(step, Claim) == allowed
    if not allowed:
        assert isinstance(step, Degrade) and step.reason == "AdoptionNotAllowed"


def test_the_operator_configuration_allows_adoption_for_its_namespaces():
    o = obj(annotations={"pgop.io/adopt": "legacy-orders"})
    untagged = ours(o, identifier="legacy-orders", tags={})
    assert isinstance(policy.next_step(o, untagged, identifier="legacy-orders", adopt_namespaces={"shop"}), Claim)


def test_adoption_never_takes_an_instance_of_another_mysqldb_even_where_allowed():
    o = obj(annotations={"pgop.io/adopt": "shop-orders-x"})
    other = ours(o, tags={**policy.ownership_tags(o), policy.TAG_UID: "other-uid",
                          policy.TAG_ADOPTABLE_BY: "shop/orders"})
    step = policy.next_step(o, other, identifier="shop-orders-x", adopt_namespaces={"shop"})
    assert isinstance(step, Degrade) and step.reason == "OwnedByAnother"


@pytest.mark.parametrize("spec,field", [
    ({"vaultPath": "secret/data/k8s/billing/orders/db"}, "spec.vaultPath"),
    ({"vaultPath": "secret/data/k8s/billing/k8s/shop/db"}, "spec.vaultPath"),
    ({"vaultPath": "secret/data/k8s/shop/../billing/db"}, "spec.vaultPath"),
    ({"consulPrefix": "config/k8s/billing/orders/db"}, "spec.consulPrefix"),
    ({"consulPrefix": "config/k8s/shop//db"}, "spec.consulPrefix"),
])
def test_a_path_outside_the_namespace_is_refused_before_anything_else(spec, field):
    o = obj(spec=spec)
    for instance in (None, ours(o)):
        step = policy.next_step(o, instance, identifier="shop-orders-x", password_in_vault=True)
        assert isinstance(step, Refuse) and step.reason == "PathOutsideNamespace"
        assert step.message.startswith(field) and "nothing there" in step.message
    assert policy.path_refusal(obj()) is None


def test_deletion_never_removes_what_lies_outside_the_namespace():
    stored = {"vaultPath": "secret/data/k8s/billing/orders/db", "consulPrefix": "config/k8s/shop/orders/db"}
    o = obj(spec={"vaultPath": "secret/data/k8s/billing/orders/db", "deletionPolicy": "Delete"}, status=stored)
    step = policy.deletion_step(o, None)
    assert isinstance(step, LeaveUnpublished) and step.reason == "PathOutsideNamespace"
    assert "spec.vaultPath" in step.message
    # its own instance still goes as deletionPolicy says: only the path is refused
    assert isinstance(policy.deletion_step(o, ours(o)), DeleteInstance)


def test_adoption_target_missing():
    o = obj(annotations={"pgop.io/adopt": "nope"})
    step = policy.next_step(o, None, identifier="nope")
    assert isinstance(step, Degrade) and step.reason == "AdoptionTargetNotFound"


def test_cannot_adopt_a_second_instance():
    o = obj(status={"dbInstanceIdentifier": "mine"}, annotations={"pgop.io/adopt": "other"})
    assert isinstance(policy.next_step(o, None, identifier="mine"), Refuse)


@pytest.mark.parametrize("state,reason", [("storage-full", "InstanceStorageFull"),
                                          ("failed", "InstanceFailed"), ("stopped", "InstanceStopped"),
                                          ("deleting", "InstanceDeleting")])
def test_broken_states_degrade(state, reason):
    o = obj()
    step = policy.next_step(o, ours(o, status=state), identifier="shop-orders-x")
    assert isinstance(step, Degrade) and step.reason == reason


# --- deletion ---

def test_deletion_protection_blocks():
    o = obj(spec={"deletionProtection": True})
    assert isinstance(policy.deletion_step(o, ours(o)), BlockDeletion)


def test_snapshot_policy_is_the_default_and_names_a_stable_snapshot():
    o = obj()
    step = policy.deletion_step(o, ours(o))
    assert isinstance(step, DeleteInstance)
    assert step.final_snapshot and step.final_snapshot == policy.deletion_step(o, ours(o)).final_snapshot


def test_delete_policy_skips_snapshot():
    o = obj(spec={"deletionPolicy": "Delete"})
    assert policy.deletion_step(o, ours(o)) == DeleteInstance(None, True)


def test_rds_level_protection_is_lifted_first_once_spec_allows():
    o = obj()
    assert isinstance(policy.deletion_step(o, ours(o, deletion_protection=True)), DisableDeletionProtection)


def test_retain_releases_and_keeps_secrets():
    o = obj(spec={"deletionPolicy": "Retain"})
    step = policy.deletion_step(o, ours(o))
    assert isinstance(step, ReleaseInstance) and set(step.tag_keys) == set(policy.OWNERSHIP_TAG_KEYS)
    assert isinstance(policy.deletion_step(o, None), Finished)


STORED = {"vaultPath": "secret/data/k8s/shop/orders/db", "dbInstanceIdentifier": "shop-orders-x"}


def test_deleting_waits_then_unpublishes():
    o = obj(status=STORED)
    assert isinstance(policy.deletion_step(o, ours(o, status="deleting")), WaitForDeletion)
    assert isinstance(policy.deletion_step(o, None), Unpublish)


def test_never_deletes_an_instance_that_is_not_ours():
    o = obj(spec={"deletionPolicy": "Delete"}, status=STORED)
    assert isinstance(policy.deletion_step(o, ours(o, tags={})), Unpublish)


def test_nothing_stored_means_nothing_to_unpublish():
    # e.g. Vault was down from the start: deletion must not wait for Vault to come back
    assert isinstance(policy.deletion_step(obj(), None), Finished)


# --- status helpers ---

def test_condition_transition_time_moves_only_on_flip():
    t1, t2, t3 = (datetime(2026, 1, 1, 12, 0, s, tzinfo=UTC) for s in (1, 2, 3))
    c = set_condition([], condition("Ready", False, "Creating", "m"), now=t1)
    c = set_condition(c, condition("Ready", False, "Creating", "m2"), now=t2)
    assert c[0]["lastTransitionTime"] == rfc3339(t1) and c[0]["message"] == "m2"
    c = set_condition(c, condition("Ready", True, "Available", "ok"), now=t3, generation=4)
    assert c[0]["lastTransitionTime"] == rfc3339(t3) and c[0]["status"] == "True" and c[0]["observedGeneration"] == 4


def test_backoff_doubles_to_a_cap():
    assert [policy.backoff(n, base=5, cap=60) for n in range(6)] == [5, 10, 20, 40, 60, 60]


def test_due():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert policy.due(None, now)
    assert policy.due("2026-01-01T11:59:59Z", now)
    assert not policy.due("2026-01-01T12:00:30Z", now)
    assert policy.due("garbage", now)


def test_instance_status_never_holds_a_password():
    o = obj()
    shown = policy.instance_status(ours(o, pending={"MasterUserPassword": "****", "DBInstanceClass": "db.x"}))
    assert shown["endpoint"] == "shop-orders-x.rds" and shown["port"] == 3306
    assert "MasterUserPassword" not in (shown["pendingModifications"] or {})


def test_status_report_shows_where_things_are_and_no_password():
    from pgop.rds.report import render
    body = {"metadata": {"namespace": "shop", "name": "orders"},
            "spec": {"engineVersion": "8.0.35", "instanceSize": "small", "databaseName": "orders"},
            "status": {"phase": "Degraded", "dbInstanceIdentifier": "shop-orders-x", "endpoint": "h", "port": 3306,
                       "lastError": "describe_db_instances: Throttling: Rate exceeded",
                       "conditions": [{"type": "Ready", "status": "False", "reason": "Throttled", "message": "m"}]}}
    text = render(body)
    assert "secret/data/k8s/shop/orders/db" in text and "config/k8s/shop/orders/db" in text
    assert "h:3306" in text and "Throttling" in text and "password" not in text.lower()
