"""pgop.runtime.diffbase: kopf's essence of an object, built from a slim copy, is kopf's own."""
from __future__ import annotations

import copy
import json

import kopf

from pgop.runtime.diffbase import SlimDiffBaseStorage, in_slim_body, slim_body


def storages():
    return (kopf.AnnotationsDiffBaseStorage(prefix="pgop.io", key="last-handled-configuration"),
            SlimDiffBaseStorage(prefix="pgop.io", key="last-handled-configuration"))


def instance_body() -> dict:
    return {
        "apiVersion": "pgop.io/v1", "kind": "PgInstance",
        "metadata": {
            "name": "orders-1", "namespace": "shop", "uid": "u-1", "resourceVersion": "812",
            "generation": 3, "creationTimestamp": "2026-12-03T12:00:00Z",
            "labels": {"pgop.io/cluster": "orders"},
            "annotations": {"pgop.io/last-handled-configuration": json.dumps({"spec": {"role": "replica"}}),
                            "pgop.io/handler-x": "{}", "team": "payments",
                            "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
            "ownerReferences": [{"kind": "PgCluster", "name": "orders", "uid": "c-1"}],
            "managedFields": [{"manager": "pgop-agent", "fieldsV1": {"f:status": {f"f:x{i}": {} for i in range(50)}}}],
        },
        "spec": {"cluster": "orders", "role": "replica", "primary": "orders-0", "bootstrap": "basebackup",
                 "parameters": {"work_mem": "8MB"}},
        "status": {"phase": "Running", "lastHeartbeat": "2026-12-03T12:00:05Z", "lsn": "0/3000060"},
    }


def test_the_essence_is_kopfs_own():
    ours, kopfs = storages()[1], storages()[0]
    for body in (instance_body(), {**instance_body(), "status": {}}, {"metadata": {"name": "bare"}, "spec": {}},
                 {k: v for k, v in instance_body().items() if k != "status"}):
        assert ours.build(body=kopf.Body(copy.deepcopy(body))) == kopfs.build(body=kopf.Body(copy.deepcopy(body)))


def test_extra_fields_are_kept_as_kopf_keeps_them():
    kopfs, ours = storages()
    body = kopf.Body(instance_body())
    got = ours.build(body=body, extra_fields=[("status", "phase")])
    assert got == kopfs.build(body=body, extra_fields=[("status", "phase")])
    assert got["status"] == {"phase": "Running"}


def test_spec_and_annotation_fields_keep_the_slim_build_and_stay_kopfs_own():
    kopfs, ours = storages()
    body = kopf.Body(instance_body())
    fields = [("spec",), ("metadata", "annotations")]  # what the PgCluster handlers watch
    assert ours.build(body=body, extra_fields=fields) == kopfs.build(body=body, extra_fields=fields)
    assert in_slim_body(("spec",)) and in_slim_body("metadata.labels") and in_slim_body(("metadata", "annotations"))
    assert not in_slim_body(("status", "phase")) and not in_slim_body(("metadata", "generation"))
    assert not in_slim_body(("metadata",))


def test_the_slim_body_drops_status_and_system_metadata():
    slim = slim_body(kopf.Body(instance_body()))
    assert "status" not in slim
    assert set(slim["metadata"]) == {"labels", "annotations", "name", "namespace", "uid"}
    assert slim["spec"]["role"] == "replica"
