"""A small stand-in for the API server: applies plans the way Kubernetes would, for the tests.

It adds what the real server adds (uids, generations that move on spec changes, Service
defaults), so "a second plan yields nothing" is tested against objects that look observed.
"""
from __future__ import annotations

import base64
import copy
import itertools
import random
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pgop.cluster.plan import ObservedCluster, plan_cluster
from pgop.kernel.actions import CREATE, DELETE, PATCH, Action, Plan, apply_merge_patch
from pgop.kernel.model import Cluster, Instance

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
_uids = itertools.count(1)


def cluster_body(name: str = "orders", namespace: str = "shop", **spec: Any) -> dict[str, Any]:
    spec.setdefault("instances", 3)
    spec.setdefault("storage", {"size": "1Gi"})
    spec.setdefault("bootstrap", {"initdb": {"database": "app", "owner": "app"}})
    return {
        "apiVersion": "pgop.io/v1",
        "kind": "PgCluster",
        "metadata": {"name": name, "namespace": namespace, "uid": f"cluster-uid-{name}", "generation": 1},
        "spec": spec,
    }


def make_cluster(**spec: Any) -> Cluster:
    return Cluster.from_object(cluster_body(**spec))


class World:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        # The PgCluster's status and annotations as the handler would have written them.
        self.cluster_status: dict[str, Any] = {}
        self.cluster_annotations: dict[str, str] = {}
        self.events: list[Any] = []
        self.cordoned: set[str] = set()  # nodes marked unschedulable (observed with the pods)

    def cluster(self, cluster: Cluster) -> Cluster:
        """The cluster as stored now: its status as written by the plans applied so far."""
        return replace(cluster, status={**cluster.status, **self.cluster_status},
                       annotations={**cluster.annotations, **self.cluster_annotations})

    # ---------------------------------------------------------------- applying plans
    def apply(self, actions: list[Action]) -> None:
        """A Plan's status first (the handler writes what failover decided before acting), then
        its actions in order."""
        if isinstance(actions, Plan):
            self.cluster_status = apply_merge_patch(self.cluster_status, actions.status)
            self.events += actions.events
        for action in actions:
            key = (action.kind, action.name)
            if action.kind == "PgCluster" and action.verb == PATCH:
                annotations = (action.patch or {}).get("metadata", {}).get("annotations", {})
                self.cluster_annotations = apply_merge_patch(self.cluster_annotations, annotations)
                continue
            if action.verb == CREATE:
                assert key not in self.objects, f"{action.kind} {action.name} exists already"
                self.objects[key] = self._created(action)
            elif action.verb == PATCH:
                current = self.objects[key]
                patch = dict(action.patch or {})
                if action.kind == "Secret" and "stringData" in patch:  # as the API server stores it
                    patch["data"] = {k: base64.b64encode(v.encode()).decode()
                                     for k, v in patch.pop("stringData").items()}
                patched = apply_merge_patch(current, patch)
                if action.kind == "PgInstance" and patched.get("spec") != current.get("spec"):
                    patched["metadata"]["generation"] = current["metadata"]["generation"] + 1
                self.objects[key] = patched
            elif action.verb == DELETE:
                assert key in self.objects, f"{action.kind} {action.name} does not exist"
                if action.uid is not None:
                    assert self.objects[key]["metadata"]["uid"] == action.uid, "delete precondition failed"
                del self.objects[key]
            else:
                raise AssertionError(f"unknown verb {action.verb}")

    def _created(self, action: Action) -> dict[str, Any]:
        body = copy.deepcopy(action.body)
        meta = body["metadata"]
        meta["uid"] = f"uid-{next(_uids)}"
        meta["generation"] = 1
        meta["creationTimestamp"] = "2026-11-22T11:00:00Z"
        if action.kind == "Service":
            body["spec"].update({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                                 "sessionAffinity": "None", "ipFamilies": ["IPv4"],
                                 "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"})
        if action.kind == "Secret":
            body["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in body.pop("stringData").items()}
        if action.kind == "Pod":
            body["status"] = {"phase": "Pending"}
        return body

    # ---------------------------------------------------------------- reading
    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, name))

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [obj for (k, _), obj in sorted(self.objects.items()) if k == kind]

    def observed_cluster(self, cluster: str = "orders", *, pods: bool = False) -> ObservedCluster:
        """`pods`: observe the Postgres pods and the PVCs too (the failover tests put them there)."""
        account = f"{cluster}-agent"
        return ObservedCluster(
            pods=self.all("Pod") if pods else None,
            volumes=self.all("PersistentVolumeClaim") if pods else None,
            cordoned_nodes=frozenset(self.cordoned) if pods else None,
            instances=self.all("PgInstance"),
            services=self.all("Service"),
            secrets=self.all("Secret"),
            pdb=self.get("PodDisruptionBudget", cluster),
            primary_pdb=self.get("PodDisruptionBudget", f"{cluster}-primary"),
            service_account=self.get("ServiceAccount", account),
            role=self.get("Role", account),
            role_binding=self.get("RoleBinding", account),
        )

    def instance(self, name: str) -> Instance:
        return Instance.from_object(self.objects[("PgInstance", name)])

    def instance_names(self) -> list[str]:
        return sorted((obj["metadata"]["name"] for obj in self.all("PgInstance")),
                      key=lambda name: int(name.rsplit("-", 1)[1]))

    def pods_of(self, instance: str) -> list[dict[str, Any]]:
        return [pod for pod in self.all("Pod") if pod["metadata"]["labels"].get("pgop.io/instance") == instance]

    # ---------------------------------------------------------------- what agents and kubelets do
    def report(self, name: str, *, ready: bool = True, role: str | None = None, lsn: str = "0/3000000",
               heartbeat: datetime = NOW, settle: bool = True, **extra: Any) -> None:
        """The instance's agent writes its status (applied its spec, if `settle`)."""
        obj = self.objects[("PgInstance", name)]
        status = obj.setdefault("status", {})
        status.update({"ready": ready, "role": role or obj["spec"]["role"], "lsn": lsn, "timeline": 1,
                       "lastHeartbeat": heartbeat.strftime("%Y-%m-%dT%H:%M:%SZ"), "phase": "Running"})
        if settle:
            status["observedGeneration"] = obj["metadata"]["generation"]
        status.update(extra)

    def settle_all(self) -> None:
        for name in self.instance_names():
            self.report(name)

    def set_pod_phase(self, name: str, phase: str) -> None:
        self.objects[("Pod", name)]["status"] = {"phase": phase}


# ------------------------------------------------------------------------ planning helpers

def plan(world, cluster, seed=1, now=NOW, pods=False):
    return plan_cluster(world.cluster(cluster), world.observed_cluster(cluster.name, pods=pods),
                        rng=random.Random(seed), now=now)


def summary(actions):
    return [(a.verb, a.kind, a.name) for a in actions]


def instance_actions(actions):
    return [(a.verb, a.name) for a in actions if a.kind == "PgInstance"]


def converge(world, cluster, rounds=20):
    """Plan, apply, let every agent report ready on its spec; until nothing is left to do."""
    for _ in range(rounds):
        actions = plan(world, cluster)
        if not actions:
            return
        world.apply(actions)
        world.settle_all()
    raise AssertionError("the cluster did not converge")


def running_cluster(instances=3, **spec):
    world = World()
    cluster = make_cluster(instances=instances, **spec)
    converge(world, cluster)
    assert len(world.instance_names()) == instances
    return world, cluster


def spec_change(cluster, **changes):
    body = cluster_body(**{**_spec_of(cluster), **changes})
    return Cluster.from_object(body)


def _spec_of(cluster):
    spec = cluster.spec
    out = {"instances": spec.instances, "storage": spec.storage.to_dict(), "parameters": dict(spec.parameters),
           "synchronousReplicas": spec.synchronous_replicas, "synchronousMode": spec.synchronous_mode}
    if spec.image:
        out["image"] = spec.image
    return out
