"""`pgop promote` and `pgop fence`: requests to the operator, by annotation on the PgCluster.

Nobody but the operator changes a PgInstance's spec.role, spec.primary or spec.fenced (a
ValidatingAdmissionPolicy refuses everyone else, deploy/admission.yaml): these commands ask the
operator, which checks the request and says what it did in status.lastSwitchover, Events and the
PgCluster's conditions (docs/high-availability.md).
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import typer

from pgop.cluster.failover import ANNOTATION_FENCED, ANNOTATION_SWITCHOVER
from pgop.kernel.model import REQUIRED, ClusterSpec, instance_name

ALL = "*"


def resolve_instance(cluster: str, instance: str) -> str:
    """`orders-1`, or just `1` for the instance of ordinal 1."""
    return instance_name(cluster, int(instance)) if instance.isdigit() else instance


def fenced_after(current: str | None, on: bool, target: str, instances: Sequence[str]) -> str | None:
    """The annotation's new value (None: remove it) after fencing (`on`) or unfencing `target`
    (an instance name, or "all")."""
    try:
        names = json.loads(current) if current else []
    except ValueError:
        names = []
    if not isinstance(names, list):
        names = []
    fenced = set(instances) if ALL in names else {str(n) for n in names}
    if target == "all":
        return json.dumps([ALL]) if on else None
    if on:
        fenced.add(target)
    else:
        fenced.discard(target)
    if instances and set(instances) <= fenced and ALL in names:
        return json.dumps([ALL])
    return json.dumps(sorted(fenced)) if fenced else None


def fenced_names(value: str | None, instances: Sequence[str]) -> set[str]:
    """The instances an annotation value (fenced_after's result) fences."""
    names = json.loads(value) if value else []
    return set(instances) if ALL in names else set(names)


def writes_wait_warning(spec: Mapping[str, Any] | None, primary: str | None, instances: Sequence[str],
                        fenced: set[str]) -> str | None:
    """What a user must hear before the fence takes effect: with synchronousMode required, a
    primary that keeps fewer unfenced replicas than spec.synchronousReplicas cannot get a commit
    acknowledged, so every write waits (until a replica is unfenced or the setting changes).
    None when writes go on, or nothing is primary (every write waits then anyway)."""
    cluster = ClusterSpec.from_dict(spec)
    if cluster.synchronous_mode != REQUIRED or not primary or primary in fenced:
        return None
    unfenced = sorted(i for i in instances if i != primary and i not in fenced)
    need = cluster.synchronous_replicas
    if len(unfenced) >= need:
        return None
    left = ", ".join(unfenced) if unfenced else "none"
    return (f"writes on the primary {primary} will wait: spec.synchronousMode is required with "
            f"synchronousReplicas {need}, and {len(unfenced)} replica(s) are left unfenced ({left}); "
            "a commit waits for an acknowledgement no fenced replica can give. Unfence a replica, "
            "or lower spec.synchronousReplicas / set synchronousMode preferred, for writes to go on")


def _get(kube: Any, namespace: str, cluster: str) -> dict[str, Any]:
    body = kube.get("PgCluster", namespace, cluster)
    if body is None:
        typer.echo(f"PgCluster {namespace}/{cluster} not found", err=True)
        raise typer.Exit(1)
    return dict(body)


def _instances(kube: Any, namespace: str, cluster: str) -> list[str]:
    from pgop.kernel.meta import LABEL_CLUSTER
    return sorted(i["metadata"]["name"] for i in kube.list("PgInstance", namespace, {LABEL_CLUSTER: cluster}))


def promote(cluster: str, instance: str, namespace: str, wait: bool, timeout: float) -> None:
    from datetime import UTC, datetime

    from pgop.kernel.conditions import parse_time, rfc3339
    from pgop.runtime.kube import Kube

    kube = Kube()
    body = _get(kube, namespace, cluster)
    target = resolve_instance(cluster, instance)
    if target not in _instances(kube, namespace, cluster):
        typer.echo(f"{target} is not an instance of PgCluster {namespace}/{cluster}", err=True)
        raise typer.Exit(1)
    if (body.get("status") or {}).get("currentPrimary") == target:
        typer.echo(f"{target} is the primary already")
        return
    asked = datetime.now(UTC).replace(microsecond=0)
    kube.merge_patch("PgCluster", namespace, cluster, {"metadata": {"annotations": {ANNOTATION_SWITCHOVER: target}}})
    typer.echo(f"switchover to {target} requested ({ANNOTATION_SWITCHOVER}) at {rfc3339(asked)}")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    said = ""
    while time.monotonic() < deadline:
        body = _get(kube, namespace, cluster)
        status = body.get("status") or {}
        failover = status.get("failover") or {}
        line = f"{failover.get('kind', '')} {failover.get('phase', '')}: {failover.get('waitingFor', '')}".strip()
        if failover and line != said:
            typer.echo(f"  {line}")
            said = line
        last = status.get("lastSwitchover") or {}
        answered = parse_time(last.get("time"))
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        if ANNOTATION_SWITCHOVER not in annotations and answered is not None and answered >= asked \
                and last.get("target") == target:
            typer.echo(f"{last.get('result')}: {last.get('message')}")
            raise typer.Exit(0 if last.get("result") == "Done" else 1)
        time.sleep(1)
    typer.echo(f"no answer within {timeout:.0f}s; see `pgop status {cluster}` and the PgCluster's Events", err=True)
    raise typer.Exit(1)


def fence(on: bool, cluster: str, target: str, namespace: str) -> None:
    from pgop.runtime.kube import Kube

    kube = Kube()
    body = _get(kube, namespace, cluster)
    instances = _instances(kube, namespace, cluster)
    if target != "all":
        target = resolve_instance(cluster, target)
        if target not in instances:
            typer.echo(f"{target} is not an instance of PgCluster {namespace}/{cluster}", err=True)
            raise typer.Exit(1)
    current = ((body.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_FENCED)
    value = fenced_after(current, on, target, instances)
    kube.merge_patch("PgCluster", namespace, cluster, {"metadata": {"annotations": {ANNOTATION_FENCED: value}}})
    what = "fenced" if on else "unfenced"
    typer.echo(f"{target} {what}: {ANNOTATION_FENCED} = {value or '(removed)'}; the operator sets spec.fenced "
               "(a fenced instance's Postgres stops, its pod and volume stay; a fenced primary is never "
               "failed over)")
    warning = writes_wait_warning(body.get("spec"), (body.get("status") or {}).get("currentPrimary"),
                                  instances, fenced_names(value, instances))
    if warning:
        typer.echo(f"warning: {warning}", err=True)
