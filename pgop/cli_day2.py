"""`pgop psql`, `pgop restart` and `pgop reload`: day-2 work on a PgCluster.

`psql` runs `kubectl exec` into the Postgres pod of the primary (or of a replica). `restart` and
`reload` ask the operator, by annotation on the PgCluster, as `pgop promote` does: the operator
copies the request into each PgInstance's spec on that instance's turn (a restart is rolled like
any change that needs one: one instance at a time, each only once the one before is ready again,
replicas first, the primary last and by switchover to an up-to-date replica when there is one),
and each agent restarts or reloads its Postgres once. Why not delete pods from here: a restart
driven by the operator survives this command being interrupted, never races a failover (the
rollout waits while one runs), and keeps the rule that only the operator makes an instance
primary (docs/cli.md).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import typer

from pgop.kernel.meta import LABEL_CLUSTER, POSTGRES_CONTAINER, RELOAD_FIELD, RESTART_FIELD
from pgop.kernel.model import PRIMARY, REPLICA
from pgop.specs.instance import ANNOTATION_RELOAD, ANNOTATION_RESTART, ANNOTATION_RESTART_INSTANCES

FOLLOW_INTERVAL = 2.0


class NoTarget(Exception):
    """No instance fits (none ready, no replica, the primary unknown); the message says why."""


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


# ------------------------------------------------------------------------------ psql

def _pod_of(instance: Mapping[str, Any]) -> str:
    return str((instance.get("status") or {}).get("pod") or instance["metadata"]["name"])


def choose_instance(cluster: Mapping[str, Any], instances: Iterable[Mapping[str, Any]],
                    replica: bool) -> tuple[str, str]:
    """(instance, pod) to connect to: the current primary; or with `replica` the ready, unfenced
    replica with the least lag (then the lowest ordinal)."""
    members = sorted(instances, key=lambda i: (i.get("spec") or {}).get("ordinal", 0))
    name = (cluster.get("metadata") or {}).get("name", "?")
    if not replica:
        current = (cluster.get("status") or {}).get("currentPrimary")
        for inst in members:
            status = inst.get("status") or {}
            if inst["metadata"]["name"] == current or (not current and status.get("role") == PRIMARY
                                                       and (inst.get("spec") or {}).get("role") == PRIMARY):
                return inst["metadata"]["name"], _pod_of(inst)
        raise NoTarget(f"PgCluster {name} has no primary now (status.currentPrimary is "
                       f"{current or 'empty'}); see `pgop status {name}`")
    fit = [i for i in members
           if (i.get("status") or {}).get("role") == REPLICA and (i.get("status") or {}).get("ready")
           and not (i.get("spec") or {}).get("fenced")]
    if not fit:
        raise NoTarget(f"PgCluster {name} has no ready replica; connect to the primary (without --replica)")
    best = min(fit, key=lambda i: ((i.get("status") or {}).get("lagBytes") or 0, (i.get("spec") or {}).get("ordinal", 0)))
    return best["metadata"]["name"], _pod_of(best)


def psql_command(namespace: str, pod: str, args: Sequence[str], interactive: bool) -> list[str]:
    """The kubectl command line: a terminal only when stdin is one, so SQL can be piped in."""
    return ["kubectl", "exec", "-i", *(["-t"] if interactive else []), "-n", namespace, pod,
            "-c", POSTGRES_CONTAINER, "--", "psql", *args]


def psql(cluster: str, namespace: str, replica: bool, args: Sequence[str]) -> NoReturn:
    from pgop.runtime.kube import Kube
    kube = Kube()
    body = kube.get("PgCluster", namespace, cluster)
    if body is None:
        _fail(f"PgCluster {namespace}/{cluster} not found")
    try:
        instance, pod = choose_instance(body, kube.list("PgInstance", namespace, {LABEL_CLUSTER: cluster}), replica)
    except NoTarget as error:
        _fail(str(error))
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        _fail("kubectl is not on PATH: `pgop psql` runs `kubectl exec`")
    command = psql_command(namespace, pod, args, interactive=sys.stdin.isatty() and sys.stdout.isatty())
    typer.echo(f"{instance} ({'replica' if replica else 'primary'}): {' '.join(command)}", err=True)
    sys.stdout.flush()
    os.execv(kubectl, command)


# ------------------------------------------------------------------------------ restart and reload

def request_token(now: datetime) -> str:
    """The request's token: its time, to the millisecond (a new request is a new token)."""
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def restart_annotations(token: str, instances: Sequence[str] | None) -> dict[str, str | None]:
    """The merge patch of the PgCluster's annotations; `instances` None: the whole cluster (a
    list left by an earlier `--instance` request is removed)."""
    return {ANNOTATION_RESTART: token,
            ANNOTATION_RESTART_INSTANCES: json.dumps(sorted(instances)) if instances is not None else None}


def progress(field: str, token: str, instances: Iterable[Mapping[str, Any]],
             scope: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
    """(done, pending) instance names of a request: done once the instance's spec carries the
    token and its agent reports that spec applied (status.observedGeneration) and is ready."""
    wanted = set(scope) if scope is not None else None
    done: list[str] = []
    pending: list[str] = []
    for inst in sorted(instances, key=lambda i: (i.get("spec") or {}).get("ordinal", 0)):
        name = inst["metadata"]["name"]
        if wanted is not None and name not in wanted:
            continue
        status = inst.get("status") or {}
        applied = ((inst.get("spec") or {}).get(field) == token and bool(status.get("ready"))
                   and status.get("observedGeneration") == inst["metadata"].get("generation"))
        (done if applied else pending).append(name)
    return done, pending


def _cluster_and_instances(kube: Any, namespace: str, cluster: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    body = kube.get("PgCluster", namespace, cluster)
    if body is None:
        _fail(f"PgCluster {namespace}/{cluster} not found")
    return body, kube.list("PgInstance", namespace, {LABEL_CLUSTER: cluster})


def restart(cluster: str, namespace: str, instance: str | None, wait: bool, timeout: float) -> None:
    from pgop.cli_ha import resolve_instance
    from pgop.runtime.kube import Kube
    kube = Kube()
    _, instances = _cluster_and_instances(kube, namespace, cluster)
    names = sorted(i["metadata"]["name"] for i in instances)
    scope = None
    if instance is not None:
        target = resolve_instance(cluster, instance)
        if target not in names:
            _fail(f"{target} is not an instance of PgCluster {namespace}/{cluster} ({', '.join(names) or 'none'})", 2)
        scope = [target]
    token = request_token(datetime.now(UTC))
    kube.merge_patch("PgCluster", namespace, cluster,
                     {"metadata": {"annotations": restart_annotations(token, scope)}})
    typer.echo(f"restart of {', '.join(scope) if scope else 'every instance of ' + cluster} requested "
               f"({ANNOTATION_RESTART}={token}): one instance at a time, replicas first, the primary last "
               "(by switchover when a replica is up to date)")
    if wait:
        follow(kube, namespace, cluster, RESTART_FIELD, token, scope, timeout, "restarted")


def reload(cluster: str, namespace: str, wait: bool, timeout: float) -> None:
    from pgop.runtime.kube import Kube
    kube = Kube()
    _cluster_and_instances(kube, namespace, cluster)
    token = request_token(datetime.now(UTC))
    kube.merge_patch("PgCluster", namespace, cluster, {"metadata": {"annotations": {ANNOTATION_RELOAD: token}}})
    typer.echo(f"reload of every instance of {cluster} requested ({ANNOTATION_RELOAD}={token})")
    if wait:
        follow(kube, namespace, cluster, RELOAD_FIELD, token, None, timeout, "reloaded")


def follow(kube: Any, namespace: str, cluster: str, field: str, token: str, scope: Sequence[str] | None,
           timeout: float, verb: str) -> None:
    """Print each instance as it is done, and what the cluster says it waits for, until all are."""
    deadline = time.monotonic() + timeout
    said: set[str] = set()
    last_note = ""
    while time.monotonic() < deadline:
        body, instances = _cluster_and_instances(kube, namespace, cluster)
        done, pending = progress(field, token, instances, scope)
        for name in done:
            if name not in said:
                said.add(name)
                typer.echo(f"  {name} {verb} ({len(said)}/{len(done) + len(pending)})")
        if not pending:
            typer.echo(f"{cluster}: every instance {verb}")
            return
        note = _what_it_waits_for(body)
        if note and note != last_note:
            typer.echo(f"  ... {note}")
            last_note = note
        time.sleep(FOLLOW_INTERVAL)
    _fail(f"not done within {timeout:.0f}s: {', '.join(pending)} not {verb} yet; the request stays and the "
          f"operator carries on; see `pgop status {cluster}` and the PgCluster's Events")


def _what_it_waits_for(body: Mapping[str, Any]) -> str:
    status = body.get("status") or {}
    failover = status.get("failover") or {}
    if failover:
        return f"{failover.get('kind', 'failover')} {failover.get('phase', '')}: {failover.get('waitingFor', '')}".strip()
    for c in status.get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("status") == "True":
            return str(c.get("message") or "")
    return ""
