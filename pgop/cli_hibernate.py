"""`pgop hibernate on|off` and `pgop destroy`.

`hibernate` asks the operator by annotation (pgop.io/hibernation, as CloudNativePG's
cnpg.io/hibernation), like `pgop restart`: the operator stops the replicas, then the primary,
deletes the pods and keeps everything else; waking starts them again with the roles they had
(pgop.kernel.hibernation). The command follows until the cluster is Hibernated, or awake and Ready.

`destroy` removes one replica for good: its volume, its pod and its PgInstance, in that order (a
volume in use stays until its pod is gone, and a PgInstance made again under the same name then
waits for it instead of starting on the old data). The cluster controller replaces the instance
with a fresh replica cloned from the primary.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import typer

from pgop.cli_day2 import _cluster_and_instances, _fail
from pgop.kernel import hibernation
from pgop.kernel.meta import LABEL_INSTANCE

FOLLOW_INTERVAL = 2.0


# ------------------------------------------------------------------------------ hibernate

def hibernation_progress(body: Mapping[str, Any], on: bool) -> tuple[bool, str]:
    """(done, what the cluster says now) of a hibernation (`on`) or wake-up request."""
    status = body.get("status") or {}
    phase = hibernation.phase_of(status)
    if on:
        return phase == hibernation.HIBERNATED, phase or status.get("phase") or "?"
    return phase is None and status.get("phase") == "Ready", phase or status.get("phase") or "?"


def hibernate(on: bool, cluster: str, namespace: str, wait: bool, timeout: float) -> None:
    from pgop.runtime.kube import Kube
    kube = Kube()
    body, _ = _cluster_and_instances(kube, namespace, cluster)
    value = hibernation.ON if on else hibernation.OFF
    kube.merge_patch("PgCluster", namespace, cluster,
                     {"metadata": {"annotations": {hibernation.ANNOTATION_HIBERNATION: value}}})
    if on:
        typer.echo(f"hibernation of {cluster} requested ({hibernation.ANNOTATION_HIBERNATION}={value}): the "
                   "replicas stop, then the primary; pods are deleted, volumes, Secrets and Services kept")
    else:
        typer.echo(f"wake-up of {cluster} requested ({hibernation.ANNOTATION_HIBERNATION}={value}): every "
                   "instance starts on its volume with the role it had")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    said = ""
    while time.monotonic() < deadline:
        body = kube.get("PgCluster", namespace, cluster) or {}
        done, now = hibernation_progress(body, on)
        if now != said:
            typer.echo(f"  {now}")
            said = now
        if done:
            typer.echo(f"{cluster}: {'hibernated' if on else 'awake and Ready'}")
            return
        time.sleep(FOLLOW_INTERVAL)
    _fail(f"not {'hibernated' if on else 'Ready'} within {timeout:.0f}s (now {said}); the request stays and the "
          f"operator carries on; see `pgop status {cluster}`")


# ------------------------------------------------------------------------------ destroy

def destroy_problem(cluster: Mapping[str, Any], instances: Sequence[Mapping[str, Any]], target: str,
                    force: bool) -> str:
    """Why `pgop destroy` refuses `target` ("" when it may go ahead)."""
    name = (cluster.get("metadata") or {}).get("name", "?")
    status = cluster.get("status") or {}
    spec = cluster.get("spec") or {}
    names = sorted(i["metadata"]["name"] for i in instances)
    if target not in names:
        return f"{target} is not an instance of PgCluster {name} ({', '.join(names) or 'none'})"
    if target in (status.get("currentPrimary"), status.get("targetPrimary")):
        return (f"{target} is the primary of {name}: promote another instance first "
                f"(`pgop promote {name} <instance>`), then destroy it")
    if status.get("failover"):
        return f"a {status['failover'].get('kind', 'failover')} runs in {name}: wait until it is done"
    if hibernation.phase_of(status) or hibernation.requested((cluster.get("metadata") or {}).get("annotations") or {}):
        return f"{name} is hibernated: wake it first (`pgop hibernate off {name}`), its replacement needs the primary"
    sync = int(spec.get("synchronousReplicas") or 0)
    others = [i for i in instances if i["metadata"]["name"] not in (target, status.get("currentPrimary"))
              and (i.get("status") or {}).get("ready")]
    if sync and len(others) < sync and not force:
        mode = spec.get("synchronousMode") or "preferred"
        effect = ("commits wait until its replacement streams" if mode == "required"
                  else "commits go on without the synchronous replicas it asks for")
        return (f"destroying {target} leaves {len(others)} ready replica(s) for spec.synchronousReplicas "
                f"{sync} ({mode}: {effect}); --force to go ahead")
    return ""


def destroy(cluster: str, instance: str, namespace: str, yes: bool, force: bool) -> None:
    from pgop.cli_ha import resolve_instance
    from pgop.runtime.kube import Kube
    kube = Kube()
    body, instances = _cluster_and_instances(kube, namespace, cluster)
    target = resolve_instance(cluster, instance)
    problem = destroy_problem(body, instances, target, force)
    if problem:
        _fail(problem, 2 if "not an instance" in problem else 1)
    current = next(i for i in instances if i["metadata"]["name"] == target)
    pvc = (current.get("status") or {}).get("pvc") or target
    if not yes and not typer.confirm(f"Destroy {target} of {namespace}/{cluster}: delete its volume {pvc} (its data "
                                     "is lost), its pods and its PgInstance? The operator makes a new replica",
                                     default=False):
        _fail("nothing done")
    kube.delete("PersistentVolumeClaim", namespace, pvc)
    for pod in kube.list("Pod", namespace, {LABEL_INSTANCE: target}):
        kube.delete("Pod", namespace, pod["metadata"]["name"], pod["metadata"].get("uid"))
    kube.delete("PgInstance", namespace, target, current["metadata"].get("uid"))
    typer.echo(f"{target} destroyed (volume {pvc}, pods, PgInstance); the operator creates a replica cloned from "
               f"the primary: `pgop status {cluster}`")
