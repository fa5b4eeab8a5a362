"""One archive per cluster: the namespaced layout, its pinning, and the marker that refuses another
database system's archive (pgop.backup.marker). The same against the real S3 server and Postgres:
tests/integration/test_backup_wal.py."""
import io
import json

import pytest

from pgop.agent.backups import source_candidates
from pgop.backup import marker
from pgop.backup.layout import ArchiveLayout, backup_prefix
from pgop.backup.s3 import ObjectInfo
from pgop.cluster.controller import archiving_condition
from pgop.cluster.plan import ObservedCluster, pin_archive_layout, resolve_recovery
from pgop.kernel.model import (
    ANNOTATION_ARCHIVE_LAYOUT,
    LEGACY_LAYOUT,
    NAMESPACED_LAYOUT,
    REASON_FOREIGN_ARCHIVE,
    Cluster,
    Instance,
    RecoverySpec,
    S3Spec,
)
from pgop.kernel.podenv import ArchiveEnv, PodEnv
from pgop.specs.instance import managed_instance_spec
from pgop.specs.pods import pod_env, pod_inputs_hash
from tests.unit.world import cluster_body

S3 = {"bucket": "b", "path": "shop", "credentialsSecret": "s3-creds"}


# ------------------------------------------------------------------------------------ layout

def test_the_namespace_is_part_of_a_new_clusters_archive_and_not_of_a_legacy_one():
    namespaced = ArchiveLayout("orders", "shop/", "sales")
    assert namespaced.root == "shop/sales/orders/"
    assert namespaced.wal_key("000000010000000000000003") == "shop/sales/orders/wal/00000001/000000010000000000000003.zst"
    assert backup_prefix(namespaced, "b1") == "shop/sales/orders/base/b1/"
    assert namespaced.marker_key == "shop/sales/orders/archive.json"
    legacy = ArchiveLayout("orders", "shop")
    assert legacy.root == "shop/orders/" and legacy.legacy and not namespaced.legacy
    # two namespaces, one name, one bucket and path: two archives
    assert ArchiveLayout("orders", "shop", "a").root != ArchiveLayout("orders", "shop", "b").root
    assert ArchiveLayout("orders", "", "sales").root == "sales/orders/"
    for bad in ("a/b", "..", "."):
        with pytest.raises(ValueError, match="namespace"):
            ArchiveLayout("orders", "shop", bad)


def test_the_pod_contract_carries_the_namespace_of_the_archive_and_the_wal_commands_read_it():
    from pgop.backup.commands import archive_layout
    env = {e["name"]: e["value"] for e in ArchiveEnv(bucket="b", path="shop", namespace="sales").to_env()}
    assert env["PGOP_S3_NAMESPACE"] == "sales"
    assert archive_layout({**env, "PGOP_CLUSTER": "orders"}).root == "shop/sales/orders/"
    # unset, or set empty (a restore_command of a legacy source): the legacy layout
    assert "PGOP_S3_NAMESPACE" not in {e["name"] for e in ArchiveEnv(bucket="b").to_env()}
    assert archive_layout({**env, "PGOP_CLUSTER": "orders", "PGOP_S3_NAMESPACE": ""}).root == "shop/orders/"
    assert PodEnv.from_env({**env, "PGOP_CLUSTER": "x"}).archive.namespace == "sales"


# ------------------------------------------------------------------- pinning the layout

def cluster(annotations=None, status=None, **spec) -> Cluster:
    body = cluster_body(backup={"s3": S3}, **spec)
    body["metadata"]["annotations"] = dict(annotations or {})
    body["status"] = dict(status or {})
    return Cluster.from_object(body)


def test_a_new_cluster_is_pinned_to_the_namespaced_layout_an_existing_one_keeps_the_legacy_one():
    assert pin_archive_layout(cluster(), ObservedCluster()).archive_layout == NAMESPACED_LAYOUT
    instance = {"metadata": {"name": "orders-0"}}
    volume = {"metadata": {"name": "pgdata-orders-0"}}
    for existing in (ObservedCluster(instances=[instance]), ObservedCluster(volumes=[volume])):
        assert pin_archive_layout(cluster(), existing).archive_layout == LEGACY_LAYOUT
    for status in ({"currentPrimary": "orders-0"}, {"lastBackup": {"name": "b"}}):
        assert pin_archive_layout(cluster(status=status), ObservedCluster()).archive_layout == LEGACY_LAYOUT
    # once pinned, it stays, whatever exists
    pinned = cluster({ANNOTATION_ARCHIVE_LAYOUT: NAMESPACED_LAYOUT})
    assert pin_archive_layout(pinned, ObservedCluster(instances=[instance])).archive_layout == NAMESPACED_LAYOUT
    # a cluster never pinned (an earlier operator made it) reads as legacy everywhere else
    assert cluster().archive_layout == LEGACY_LAYOUT and cluster().archive_namespace == ""


def test_the_plan_pins_the_layout_before_it_creates_anything():
    from pgop.cluster.plan import plan_cluster
    plan = plan_cluster(cluster(), ObservedCluster())
    first = plan[0]
    assert (first.verb, first.kind) == ("patch", "PgCluster")
    assert first.patch == {"metadata": {"annotations": {ANNOTATION_ARCHIVE_LAYOUT: NAMESPACED_LAYOUT}}}
    created = next(a for a in plan if a.kind == "PgInstance")
    assert created.body["spec"]["backup"]["archiveLayout"] == NAMESPACED_LAYOUT
    again = plan_cluster(cluster({ANNOTATION_ARCHIVE_LAYOUT: NAMESPACED_LAYOUT}), ObservedCluster())
    assert not [a for a in again if a.kind == "PgCluster"]


def test_a_bad_annotation_is_refused_naming_it():
    errors = cluster({ANNOTATION_ARCHIVE_LAYOUT: "flat"}).validate()
    assert ("metadata.annotations[pgop.io/archive-layout]", "must be namespaced or legacy, not 'flat'") in errors


def test_legacy_instances_keep_their_spec_and_pods_new_ones_archive_under_their_namespace():
    legacy = managed_instance_spec(cluster())
    assert "archiveLayout" not in legacy["backup"]
    namespaced = managed_instance_spec(cluster({ANNOTATION_ARCHIVE_LAYOUT: NAMESPACED_LAYOUT}))
    assert namespaced["backup"]["archiveLayout"] == NAMESPACED_LAYOUT

    def instance(spec):
        return Instance.from_object({"metadata": {"name": "orders-0", "namespace": "shop"},
                                     "spec": {"cluster": "orders", "ordinal": 0, "role": "primary",
                                              "bootstrap": "initdb", **spec}})
    old, new = instance(legacy), instance(namespaced)
    old_env = {e["name"]: e.get("value") for e in pod_env(old).to_env()}
    new_env = {e["name"]: e.get("value") for e in pod_env(new).to_env()}
    assert "PGOP_S3_NAMESPACE" not in old_env and new_env["PGOP_S3_NAMESPACE"] == "shop"
    # the digest of a legacy instance's pod is the one it had before layouts existed: no restart
    before = instance({k: v for k, v in legacy.items()})
    assert pod_inputs_hash(old) == pod_inputs_hash(before) != pod_inputs_hash(new)


def test_a_restore_takes_the_sources_pinned_layout_or_looks_in_its_own_namespace_first():
    source = cluster_body(name="orders", backup={"s3": S3})
    source["metadata"]["annotations"] = {ANNOTATION_ARCHIVE_LAYOUT: NAMESPACED_LAYOUT}
    resolved = resolve_recovery(RecoverySpec(source="orders"), source)
    assert resolved.archive_layout == NAMESPACED_LAYOUT and resolved.s3 == S3Spec.from_dict(S3)
    assert resolve_recovery(RecoverySpec(source="orders"), None).archive_layout is None
    # with explicit s3 the source, when it exists, still says its layout
    explicit = RecoverySpec(source="orders", s3=S3Spec("other", "c"))
    assert resolve_recovery(explicit, source).archive_layout == NAMESPACED_LAYOUT

    roots = [c.root for c in source_candidates(RecoverySpec(source="orders"), "sales", "shop")]
    assert roots == ["shop/sales/orders/", "shop/orders/"]  # never another namespace's
    assert [c.root for c in source_candidates(RecoverySpec(source="orders", archive_layout=LEGACY_LAYOUT),
                                              "sales", "shop")] == ["shop/orders/"]
    assert [c.root for c in source_candidates(RecoverySpec(source="orders", archive_layout=NAMESPACED_LAYOUT),
                                              "sales", "shop")] == ["shop/sales/orders/"]


# ------------------------------------------------------------------------------- the marker

def test_the_marker_decides_whose_archive_it_is():
    where = "s3://b/shop/sales/orders/"
    assert marker.judge(None, "7001", where) == marker.CLAIMED
    ours = marker.Marker("7001", "sales", "orders", "2026-11-22T03:00:00Z")
    assert marker.judge(ours, "7001", where) == marker.OURS
    with pytest.raises(marker.ForeignArchive) as refused:
        marker.judge(ours, "7999", where)
    text = str(refused.value)
    assert text.startswith(REASON_FOREIGN_ARCHIVE + ":")
    for part in (where, "7001", "7999", "sales/orders", "spec.backup.s3.path", "move the old archive away"):
        assert part in text


def test_the_marker_document_reads_back_and_refuses_what_is_not_one():
    document = marker.Marker("18446744073709551615", "sales", "orders", "2026-11-22T03:00:00Z", "orders-0")
    assert marker.Marker.from_json(document.to_json()) == document
    assert json.loads(document.to_json())["systemIdentifier"] == "18446744073709551615"  # a string: exact
    for bad in (b"{", b"[]", json.dumps({"format": "x"}), json.dumps({"format": marker.FORMAT}),
                json.dumps({"format": marker.FORMAT, "formatVersion": 99, "systemIdentifier": "1"})):
        with pytest.raises(marker.MarkerError):
            marker.Marker.from_json(bad)


class MemoryStorage:
    """Just enough of S3Storage for the marker: get and put_new, counting the reads."""

    bucket = "b"
    client = None  # no endpoint

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.gets = 0

    def get(self, key):
        self.gets += 1
        if key not in self.objects:
            return None
        return ObjectInfo(key, len(self.objects[key]), {}), io.BytesIO(self.objects[key])

    def put_new(self, key, body, size, metadata, content_type=""):
        if key in self.objects:
            return False
        self.objects[key] = body.read()
        return True


def test_the_check_of_wal_push_is_cached_and_a_refusal_is_left_for_the_agent(tmp_path):
    (tmp_path / "pg_stat_tmp").mkdir()
    storage, layout = MemoryStorage(), ArchiveLayout("orders", "shop", "sales")
    assert marker.check_before_push(storage, layout, "7001", tmp_path, now=1000.0) == marker.CLAIMED
    assert marker.Marker.from_json(storage.objects[layout.marker_key]).namespace == "sales"
    reads = storage.gets
    for second in range(1, 100):  # a segment a second: no read of S3 within the cache's life
        assert marker.check_before_push(storage, layout, "7001", tmp_path, now=1000.0 + second) == marker.OURS
    assert storage.gets == reads
    assert marker.check_before_push(storage, layout, "7001", tmp_path, now=1000.0 + marker.CACHE_SECONDS) == \
        marker.OURS
    assert storage.gets == reads + 1
    assert marker.last_refusal(tmp_path) is None

    # another database system (a cluster created anew with the same name) in the same PGDATA path
    with pytest.raises(marker.ForeignArchive):
        marker.check_before_push(storage, layout, "7999", tmp_path, now=2000.0)
    reason, message = marker.last_refusal(tmp_path)
    assert reason == REASON_FOREIGN_ARCHIVE and "7001" in message and "7999" in message
    with pytest.raises(marker.ForeignArchive):  # a refusal is not cached as one: asked again
        marker.check_before_push(storage, layout, "7999", tmp_path, now=2001.0)
    # the old archive moved away: the next try claims it, and the refusal is gone
    del storage.objects[layout.marker_key]
    assert marker.check_before_push(storage, layout, "7999", tmp_path, now=2002.0) == marker.CLAIMED
    assert marker.last_refusal(tmp_path) is None


def test_a_cache_of_another_root_or_system_is_not_trusted(tmp_path):
    (tmp_path / "pg_stat_tmp").mkdir()
    storage = MemoryStorage()
    layout = ArchiveLayout("orders", "shop", "sales")
    marker.check_before_push(storage, layout, "7001", tmp_path, now=1000.0)
    other = ArchiveLayout("orders", "shop", "hr")
    storage.objects[other.marker_key] = marker.Marker("5555").to_json().encode()
    with pytest.raises(marker.ForeignArchive):
        marker.check_before_push(storage, other, "7001", tmp_path, now=1001.0)


def test_a_refusal_becomes_the_clusters_archiving_condition():
    archiver = {"archivedCount": 0, "failedCount": 3, "lastFailedWal": "000000010000000000000002",
                "lastFailedTime": "2026-11-22T03:00:00Z",
                "refusal": {"reason": REASON_FOREIGN_ARCHIVE, "message": "the archive s3://b/x/ belongs to ..."}}
    primary = {"metadata": {"name": "orders-0"}, "spec": {"role": "primary"},
               "status": {"role": "primary", "ready": True, "archiver": archiver}}
    got = archiving_condition([primary])
    assert (got["status"], got["reason"]) == ("False", REASON_FOREIGN_ARCHIVE)
    assert "000000010000000000000002 waits in pg_wal" in got["message"] and "s3://b/x/" in got["message"]
    # an ordinary failure keeps its reason
    ordinary = {**primary, "status": {**primary["status"], "archiver": {**archiver, "refusal": None}}}
    assert archiving_condition([ordinary])["reason"] == "ArchivingFailing"
