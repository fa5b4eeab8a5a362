"""Labels, owner references and metadata shared by every object the operator makes."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from pgop.kernel.model import API_VERSION

LABEL_CLUSTER = "pgop.io/cluster"
LABEL_INSTANCE = "pgop.io/instance"
LABEL_ROLE = "pgop.io/role"
LABEL_COMPONENT = "pgop.io/component"
COMPONENT_POSTGRES = "postgres"
COMPONENT_BOOTSTRAP = "bootstrap"
BOOTSTRAP_CONTAINER = "bootstrap"  # the container of a restore's bootstrap pod
# On a Postgres pod made for a volume not yet marked initialised: the bootstrap its agent may run
# (initdb, basebackup) before it starts Postgres; removed once the volume is marked.
ANNOTATION_BOOTSTRAP_MODE = "pgop.io/bootstrap-mode"
POSTGRES_CONTAINER = "postgres"
MANAGED_BY = ("app.kubernetes.io/managed-by", "pgop")
# PgInstance spec fields of `pgop restart` / `pgop reload` requests (pgop.specs.instance writes
# them, the agent acts on them): an opaque token; a new token asks for one restart (reload).
RESTART_FIELD = "restartRequestedAt"
RELOAD_FIELD = "reloadRequestedAt"


def cluster_labels(cluster: str) -> dict[str, str]:
    return {LABEL_CLUSTER: cluster, MANAGED_BY[0]: MANAGED_BY[1]}


def owner_reference(kind: str, name: str, uid: str, api_version: str = API_VERSION) -> dict[str, Any]:
    """The owner is the controller: deleting it lets the garbage collector delete what it made."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(
    name: str,
    namespace: str,
    labels: dict[str, str],
    owner: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return meta


def stable_hash(data: Any) -> str:
    """A short digest that is the same for equal data on every run and every operator restart."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
