"""A PgBackup deleted by hand: what its spec.deletionPolicy does to its base backup in S3
(pgop.backup.deletion, pure), and the CRD that carries the policy."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from pgop.backup import deletion
from pgop.backup.catalog import COMPLETED, FAILED, Backup

T0 = datetime(2026, 12, 1, tzinfo=UTC)
CRD = Path(__file__).resolve().parents[2] / "crds" / "pgbackups.yaml"


def backup(name: str, phase: str = COMPLETED, hour: int = 0) -> Backup:
    return Backup("orders", name, phase, timeline=1, begin_lsn="0/2000028", end_lsn="0/2000100",
                  begin_wal="000000010000000000000002", started_at=T0 + timedelta(hours=hour),
                  completed_at=T0 + timedelta(hours=hour, minutes=1) if phase == COMPLETED else None)


def pgbackup(policy: str | None = None, annotation: str | None = None) -> dict:
    body: dict = {"metadata": {"name": "b2", "namespace": "shop"}, "spec": {"cluster": "orders"}}
    if policy:
        body["spec"]["deletionPolicy"] = policy
    if annotation is not None:
        body["metadata"]["annotations"] = {deletion.ANNOTATION: annotation}
    return body


def decide(name="b2", catalog=(), present=True, annotation=None, has_archive=True):
    return deletion.decide(name, cluster="orders", cluster_present=present, catalog=None if catalog is None else list(catalog),
                           annotation=annotation, has_archive=has_archive)


def test_retain_is_the_default_and_only_delete_gets_a_finalizer():
    assert deletion.deletion_policy(pgbackup()) == deletion.RETAIN
    assert not deletion.deletes_from_s3(pgbackup())
    assert not deletion.deletes_from_s3(pgbackup("Retain"))
    assert deletion.deletes_from_s3(pgbackup("Delete"))


def test_delete_removes_a_completed_backup_when_others_remain():
    step = decide(catalog=[backup("b1"), backup("b2", hour=1)])
    assert step.action == deletion.REMOVE
    assert "b2" in step.message and "WAL is left to retention" in step.message


def test_the_clusters_only_restorable_backup_stays_unless_forced():
    alone = [backup("b2"), backup("b0", FAILED)]  # a failed one restores nothing
    kept = decide(catalog=alone)
    assert kept.action == deletion.KEEP and kept.reason == deletion.REASON_KEPT
    assert "only completed backup" in kept.message and "pgop.io/backup-deletion=force" in kept.message
    forced = decide(catalog=alone, annotation=deletion.FORCE)
    assert forced.action == deletion.REMOVE and "as forced" in forced.message


def test_a_backup_not_completed_in_the_catalog_has_its_leftovers_removed():
    # Failed, still running, or already removed by retention: its prefix is cleared (idempotent).
    assert decide(catalog=[backup("b1")]).action == deletion.REMOVE
    assert decide(catalog=[]).action == deletion.REMOVE


def test_deleting_a_cluster_never_deletes_its_backups():
    step = decide(present=False, catalog=None)
    assert step.action == deletion.KEEP and "never deletes its backups" in step.message
    forced = decide(present=False, catalog=None, annotation=deletion.FORCE)
    assert forced.action == deletion.KEEP


def test_skip_and_unknown_annotations_leave_s3_alone():
    assert decide(catalog=[backup("b1"), backup("b2")], annotation=deletion.SKIP).action == deletion.KEEP
    odd = decide(catalog=[backup("b1"), backup("b2")], annotation="yes")
    assert odd.action == deletion.KEEP and "neither 'force' nor 'skip'" in odd.message
    assert deletion.override(pgbackup(annotation=" Force ")) == deletion.FORCE
    assert deletion.override(pgbackup(annotation="")) is None


def test_a_cluster_without_an_archive_keeps_what_it_cannot_find():
    assert decide(catalog=None, has_archive=False).action == deletion.KEEP


def test_the_finalizer_gives_up_after_its_patience_so_a_namespace_never_hangs_on_s3():
    asked = T0
    assert not deletion.give_up(asked, asked + timedelta(seconds=deletion.DELETE_PATIENCE - 1))
    assert deletion.give_up(asked, asked + timedelta(seconds=deletion.DELETE_PATIENCE))
    assert not deletion.give_up(None, asked)
    message = deletion.gave_up_message("b2", "s3://bucket/orders/base/b2", "connection refused")
    assert "10 minutes" in message and "s3://bucket/orders/base/b2" in message


def test_the_crd_offers_the_policy_with_retain_as_default_and_lets_only_it_change():
    spec = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    field = spec["properties"]["deletionPolicy"]
    assert field["enum"] == list(deletion.POLICIES) and field["default"] == deletion.RETAIN
    rule = spec["x-kubernetes-validations"][0]["rule"]
    for name in ("cluster", "method", "target"):
        assert f"self.{name} == oldSelf.{name}" in rule
    assert "deletionPolicy" not in rule


def test_the_clusters_default_reaches_the_pgbackups_made_for_it():
    from pgop.backup.plan import build_scheduled_backup
    from pgop.kernel.model import Cluster
    from tests.unit.world import cluster_body
    s3 = {"bucket": "pg-backups", "credentialsSecret": "s3-creds"}
    plain = Cluster.from_object(cluster_body(backup={"s3": s3, "schedule": "0 3 * * *"}))
    assert build_scheduled_backup(plain, T0)["spec"]["deletionPolicy"] == deletion.RETAIN
    deleting = Cluster.from_object(cluster_body(backup={"s3": s3, "schedule": "0 3 * * *",
                                                        "deletionPolicy": "Delete"}))
    assert build_scheduled_backup(deleting, T0)["spec"]["deletionPolicy"] == deletion.DELETE
    crd = yaml.safe_load((CRD.parent / "pgclusters.yaml").read_text())
    field = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "backup"]["properties"]["deletionPolicy"]
    assert field["enum"] == list(deletion.POLICIES) and field["default"] == deletion.RETAIN
