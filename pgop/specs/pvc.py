"""The PersistentVolumeClaim of an instance: it outlives pods, and records what it holds.

The volume itself says whether it holds a data directory (annotation `pgop.io/initialized`, set
once a bootstrap pod succeeded) and for which PgCluster (`pgop.io/cluster-uid`). A new PgInstance
has an empty status, so only the volume can tell that it must not be bootstrapped again.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pgop.kernel.meta import LABEL_INSTANCE, cluster_labels, object_meta, owner_reference
from pgop.kernel.model import API_VERSION, DELETE, Instance

ANNOTATION_INITIALIZED = "pgop.io/initialized"  # the bootstrap mode that filled the volume
ANNOTATION_CLUSTER_UID = "pgop.io/cluster-uid"


def pvc_name(instance: Instance) -> str:
    return instance.name


def instance_owner_reference(instance: Instance) -> dict[str, Any]:
    return owner_reference("PgInstance", instance.name, instance.uid, API_VERSION)


def desired_owner_references(instance: Instance) -> list[dict[str, Any]]:
    """reclaimPolicy Delete: the volume goes with its PgInstance. Retain: nothing owns it."""
    return [instance_owner_reference(instance)] if instance.spec.storage.reclaim_policy == DELETE else []


def build_pvc(instance: Instance) -> dict[str, Any]:
    labels = cluster_labels(instance.spec.cluster) | {LABEL_INSTANCE: instance.name}
    annotations = {ANNOTATION_CLUSTER_UID: instance.cluster_uid} if instance.cluster_uid else None
    meta = object_meta(pvc_name(instance), instance.namespace, labels, annotations=annotations)
    owners = desired_owner_references(instance)
    if owners:
        meta["ownerReferences"] = owners
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": instance.spec.storage.size}},
    }
    if instance.spec.storage.storage_class_name:
        spec["storageClassName"] = instance.spec.storage.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}


def _annotations(pvc: Mapping[str, Any]) -> Mapping[str, str]:
    return (pvc.get("metadata") or {}).get("annotations") or {}


def is_initialized(pvc: Mapping[str, Any]) -> bool:
    return bool(_annotations(pvc).get(ANNOTATION_INITIALIZED))


def holds_foreign_data(pvc: Mapping[str, Any], instance: Instance) -> bool:
    """A filled volume left behind (reclaimPolicy Retain) by another PgCluster of the same name.

    Removing the annotation `pgop.io/cluster-uid` from the PVC is how a person says "adopt it".
    """
    owner = _annotations(pvc).get(ANNOTATION_CLUSTER_UID)
    return (is_initialized(pvc) and bool(owner) and bool(instance.cluster_uid)
            and owner != instance.cluster_uid)


def mark_initialized_patch(instance: Instance, mode: str) -> dict[str, Any]:
    annotations = {ANNOTATION_INITIALIZED: mode}
    if instance.cluster_uid:
        annotations[ANNOTATION_CLUSTER_UID] = instance.cluster_uid
    return {"metadata": {"annotations": annotations}}
