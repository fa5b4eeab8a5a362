"""`pgop-local`: node-local volumes like a real cluster's (what kind's local-path provisioner does).

The StorageClass binds late (WaitForFirstConsumer): the scheduler picks the pod's node first and
writes it into the claim (`volume.kubernetes.io/selected-node`); this provisioner then makes a
directory under that node's own state directory and a PersistentVolume pinned to the node
(nodeAffinity on kubernetes.io/hostname), pre-bound to the claim. Any later pod of the claim can
only run on that node, and the data dies with the node. Released volumes of reclaim policy Delete
are removed (directory and PV).

Runs as a harness process (`python -m e2e.harness provisioner`), stdlib only: it lists and watches
claims with the admin certificate against the API server on loopback.
"""
from __future__ import annotations

import json
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import paths

NAME = "pgop-local"
PROVISIONER = "pgop.io/local"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"

STORAGE_CLASS = f"""
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: {NAME}
provisioner: {PROVISIONER}
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
"""


def volumes_dir(node: str) -> Path:
    return paths.node_dir(node) / "volumes"


def known_node(node: str) -> bool:
    if node == paths.NODE_NAME:
        return True
    try:
        return node in json.loads(paths.NODES_JSON.read_text())["names"]
    except (FileNotFoundError, KeyError, ValueError):
        return False


class Api:
    def __init__(self) -> None:
        self.base = f"https://127.0.0.1:{paths.APISERVER_PORT}"
        self.ctx = ssl.create_default_context(cafile=str(paths.PKI / "ca.crt"))
        self.ctx.load_cert_chain(str(paths.PKI / "admin.crt"), str(paths.PKI / "admin.key"))

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 15):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json",
                                              "Accept": "application/json"})
        return urllib.request.urlopen(req, context=self.ctx, timeout=timeout)

    def get(self, path: str) -> dict:
        with self.call("GET", path) as r:
            return json.loads(r.read())


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def _storage_class_reclaim(api: Api, cls: str) -> str | None:
    try:
        sc = api.get(f"/apis/storage.k8s.io/v1/storageclasses/{cls}")
    except urllib.error.HTTPError:
        return None
    if sc.get("provisioner") != PROVISIONER:
        return None
    return sc.get("reclaimPolicy", "Delete")


def provision(api: Api, pvc: dict, reclaim: str) -> None:
    meta, spec = pvc["metadata"], pvc["spec"]
    node = meta.get("annotations", {}).get(SELECTED_NODE)
    if not node or spec.get("volumeName") or pvc.get("status", {}).get("phase") != "Pending":
        return
    if spec.get("volumeMode", "Filesystem") != "Filesystem":
        log(f"{meta['namespace']}/{meta['name']}: volumeMode {spec['volumeMode']} is not supported")
        return
    if not known_node(node):
        log(f"{meta['namespace']}/{meta['name']}: node {node} is not a node of this harness")
        return
    pv_name = f"pvc-{meta['uid']}"
    directory = volumes_dir(node) / f"{pv_name}_{meta['namespace']}_{meta['name']}"
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o777)  # any uid may write, as with the host-path provisioner
    pv = {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "annotations": {PROVISIONED_BY: PROVISIONER},
                     "labels": {"pgop.io/node": node}},
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": reclaim,
            "storageClassName": spec["storageClassName"],
            "volumeMode": "Filesystem",
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"],
                         "resourceVersion": meta["resourceVersion"]},
            # A local volume, not a host path: the kubelet applies the pod's fsGroup to it (as CSI
            # drivers do), so pods need no root init container to own it. A volume whose node
            # lost its disk fails to mount (the bind mount's source is gone) instead of coming
            # back empty.
            "local": {"path": str(directory)},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
        },
    }
    try:
        api.call("POST", "/api/v1/persistentvolumes", pv).close()
        log(f"{meta['namespace']}/{meta['name']}: {pv_name} on {node} at {directory}")
    except urllib.error.HTTPError as e:
        if e.code != 409:  # already made by an earlier pass
            raise


def reclaim(api: Api, pv: dict) -> None:
    meta, spec = pv["metadata"], pv["spec"]
    if meta.get("annotations", {}).get(PROVISIONED_BY) != PROVISIONER:
        return
    if pv.get("status", {}).get("phase") not in ("Released", "Failed"):
        return
    if spec.get("persistentVolumeReclaimPolicy") != "Delete":
        return
    directory = Path((spec.get("local") or spec.get("hostPath") or {}).get("path", "/nonexistent"))
    node = meta.get("labels", {}).get("pgop.io/node", "")
    if node and directory.parent == volumes_dir(node):
        shutil.rmtree(directory, ignore_errors=True)
    try:
        api.call("DELETE", f"/api/v1/persistentvolumes/{meta['name']}").close()
        log(f"{meta['name']}: released, deleted with {directory}")
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise


def reconcile(api: Api) -> str:
    classes: dict[str, str | None] = {}
    pvcs = api.get("/api/v1/persistentvolumeclaims")
    for pvc in pvcs["items"]:
        cls = pvc["spec"].get("storageClassName")
        if not cls:
            continue
        if cls not in classes:
            classes[cls] = _storage_class_reclaim(api, cls)
        if classes[cls]:
            provision(api, pvc, classes[cls])
    for pv in api.get("/api/v1/persistentvolumes")["items"]:
        reclaim(api, pv)
    return pvcs["metadata"]["resourceVersion"]


def run() -> None:
    """Reconciles on every claim event, and every 10 s for volumes the PV controller released."""
    api = Api()
    log(f"{PROVISIONER} provisioner for StorageClass {NAME}")
    while True:
        try:
            rv = reconcile(api)
            with api.call("GET", f"/api/v1/persistentvolumeclaims?watch=1&timeoutSeconds=10"
                                 f"&resourceVersion={rv}", timeout=20) as r:
                for line in r:
                    if line.strip():
                        reconcile(api)
        except Exception as e:  # the API server restarts, a watch expires: start over
            log(f"{type(e).__name__}: {e}")
            time.sleep(1)


if __name__ == "__main__":
    run()
    sys.exit(0)
