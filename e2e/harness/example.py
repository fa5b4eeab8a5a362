"""The example PgCluster `make up` ends with: examples/pgcluster-orders.yaml (three instances, one
quorum-synchronous replica) in its own namespace, Ready, and what to type next.

`make env-up` (the environment for the tests, no operator) removes that namespace again, so the
example's pods never compete with the tests' for the two cores.
"""
from __future__ import annotations

import json
import time

import yaml

from . import cluster, paths
from .log import step

NAMESPACE = "pgop-example"
MANIFEST = paths.REPO / "examples" / "pgcluster-orders.yaml"
READY_TIMEOUT = 600.0
REMOVE_TIMEOUT = 180.0


def example_manifest(text: str, namespace: str = NAMESPACE) -> tuple[str, str]:
    """(cluster name, the manifest as JSON) of the example moved into `namespace`."""
    body = yaml.safe_load(text)
    body.setdefault("metadata", {})["namespace"] = namespace
    return body["metadata"]["name"], json.dumps(body)


def deploy() -> tuple[str, float]:
    """Apply the example and wait until it is Ready; (cluster name, seconds it took)."""
    name, body = example_manifest(MANIFEST.read_text())
    t0 = time.monotonic()
    with step(f"example PgCluster {NAMESPACE}/{name} ({MANIFEST.relative_to(paths.REPO)}), until Ready"):
        cluster.kubectl("apply", "-f", "-", input=_namespace_manifest())
        cluster.kubectl("apply", "-f", "-", input=body)
        deadline = time.monotonic() + READY_TIMEOUT
        status: dict = {}
        while time.monotonic() < deadline:
            got = cluster.kubectl("-n", NAMESPACE, "get", "pgcluster", name, "-o", "json", check=False)
            status = (json.loads(got.stdout).get("status") or {}) if got.returncode == 0 else {}
            if status.get("phase") == "Ready" and status.get("readyInstances") == 3:
                break
            time.sleep(2)
        else:
            detail = cluster.kubectl("-n", NAMESPACE, "get", "pgc,pgi,pods,pvc", "-o", "wide", check=False).stdout
            raise RuntimeError(f"the example PgCluster {NAMESPACE}/{name} is not Ready after {READY_TIMEOUT:.0f}s "
                               f"(phase {status.get('phase')}, {status.get('readyInstances', 0)}/3 ready):\n{detail}")
    return name, time.monotonic() - t0


def _namespace_manifest() -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})


def remove() -> None:
    """Delete the example's namespace if it is there, and wait until it is gone. Without a running
    operator nobody would remove kopf's finalizers on the pgop objects: they are removed here."""
    got = cluster.kubectl("get", "namespace", NAMESPACE, "-o", "name", check=False)
    if got.returncode != 0:
        return
    with step(f"removing the example namespace {NAMESPACE} (`make up` made it; the tests need the cores)"):
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
        deadline = time.monotonic() + REMOVE_TIMEOUT
        while time.monotonic() < deadline:
            if cluster.kubectl("get", "namespace", NAMESPACE, "-o", "name", check=False).returncode != 0:
                return
            for kind in ("pgbackups", "pginstances", "pgclusters"):
                listed = cluster.kubectl("-n", NAMESPACE, "get", kind, "-o", "name", check=False)
                for obj in listed.stdout.split() if listed.returncode == 0 else []:
                    cluster.kubectl("-n", NAMESPACE, "patch", obj, "--type=merge",
                                    "-p", '{"metadata":{"finalizers":null}}', check=False)
            time.sleep(2)
        raise RuntimeError(f"namespace {NAMESPACE} is still there after {REMOVE_TIMEOUT:.0f}s: "
                           f"kubectl get all -n {NAMESPACE}")


def next_steps(name: str, env_sh: str, took: float, example_took: float, namespace: str = NAMESPACE) -> str:
    """What `make up` prints last: how to connect to the example and what to try with it."""
    minutes, seconds = divmod(int(round(took)), 60)
    return f"""
pgop is running, and the example PgCluster {namespace}/{name} is Ready (3 instances: a primary, a
quorum-synchronous replica and an asynchronous one; Ready {example_took:.0f}s after it was applied).

    . {env_sh}    # kubectl, pgop (and `kubectl pgop`) on PATH
    pgop status {name} -n {namespace}

Connect:
    pgop psql {name} -n {namespace} -- -d app        # psql in the primary's pod (--replica: a replica)
    Service {name}-rw.{namespace}.svc:5432 (reads and writes), {name}-ro (replicas), {name}-r (any)
    user and password: kubectl -n {namespace} get secret {name}-app -o jsonpath='{{.data.password}}' | base64 -d
                       (user `app`, database `app`; the Secret also holds a `uri`)

Try next:
    pgop backup {name} -n {namespace} --wait             # needs spec.backup.s3: examples/pgcluster-backup.yaml
    pgop restore {name} --to {name}-restored -n {namespace} --time <RFC 3339 time>
    pgop promote {name} {name}-1 -n {namespace}          # switchover to a replica
    pgop hibernate on {name} -n {namespace}              # pods gone, volumes kept; `off` brings it back

`make up` took {minutes} min {seconds} s. `make env-up` / `make test` remove the namespace {namespace}.
"""
