"""Time from `kubectl apply` of a PgCluster to Ready, with a breakdown, on the local cluster.

    make up && .venv/bin/python -m bench.pgcluster_ready [--runs 3]

Needs the operator running (make up). Polls the API every 0.1 s and records when each step is
first seen: instance object, Postgres pod scheduled, running, its container running (its agent
bootstraps the volume, then starts Postgres), first heartbeat, instance ready, pod Ready, the -rw
Service's first ready endpoint, cluster Ready. Prints a table; never fails on a slow figure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
import uuid

from e2e.harness import envfile
from pgop.cluster.plan import bootstrap_phase

MANIFEST = """
apiVersion: pgop.io/v1
kind: PgCluster
metadata: {{name: bench, namespace: {ns}}}
spec:
  instances: {n}
  postgresVersion: 15
  synchronousReplicas: {sync}
  storage: {{size: 1Gi}}
  bootstrap: {{initdb: {{database: app, owner: app}}}}
"""


def kubectl(env, *args, input=None):
    return subprocess.run([env["KUBECTL"], "--kubeconfig", env["KUBECONFIG"], *args], input=input,
                          text=True, capture_output=True, check=True).stdout


def snapshot(env, ns):
    out = json.loads(kubectl(env, "-n", ns, "get", "pgclusters,pginstances,pods,endpointslices", "-o", "json"))
    return out["items"]


def run_once(env, n: int) -> dict[str, float]:
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    kubectl(env, "create", "namespace", ns)
    seen: dict[str, float] = {}
    t0 = time.monotonic()

    def mark(key):
        seen.setdefault(key, time.monotonic() - t0)

    kubectl(env, "apply", "-f", "-", input=MANIFEST.format(ns=ns, n=n, sync=min(1, n - 1)))
    deadline = t0 + 300
    try:
        while time.monotonic() < deadline:
            for item in snapshot(env, ns):
                kind, name = item["kind"], item["metadata"]["name"]
                st = item.get("status") or {}
                if kind == "PgInstance":
                    mark(f"{name}: instance created")
                    if st.get("lastHeartbeat"):
                        mark(f"{name}: first heartbeat")
                    if st.get("ready"):
                        mark(f"{name}: ready")
                elif kind == "Pod":
                    conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
                    what = "bootstrap" if name.endswith("-bootstrap") else "postgres pod"
                    inst = name.removesuffix("-bootstrap")
                    if conds.get("PodScheduled") == "True":
                        mark(f"{inst}: {what} scheduled")
                    if st.get("phase") == "Running":
                        mark(f"{inst}: {what} running")
                    if conds.get("Ready") == "True":
                        mark(f"{inst}: {what} Ready")  # the kubelet's readiness probe passed
                    if what == "bootstrap" and bootstrap_phase(item) == "Succeeded":
                        mark(f"{inst}: {what} done")  # as the operator judges it: exit 0 is done
                    postgres = [c for c in st.get("containerStatuses") or () if c.get("name") == "postgres"]
                    if postgres and "running" in (postgres[0].get("state") or {}):
                        mark(f"{inst}: postgres container running")
                elif kind == "EndpointSlice" and \
                        (item["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == "bench-rw" and \
                        any((e.get("conditions") or {}).get("ready") for e in item.get("endpoints") or ()):
                    mark("-rw Service has a ready endpoint")
                elif kind == "PgCluster" and st.get("phase") == "Ready" and st.get("readyInstances") == n:
                    mark("cluster Ready")
            # until -rw routes too (a client's view), at most 10 s after Ready
            if "cluster Ready" in seen and ("-rw Service has a ready endpoint" in seen
                                            or time.monotonic() - t0 > seen["cluster Ready"] + 10):
                break
            time.sleep(0.1)
    finally:
        # Gone before the next run starts: a namespace torn down beside it (pods stopping, agents
        # exiting) costs the next run's pods CPU on a small machine.
        kubectl(env, "delete", "namespace", ns, "--wait=true", "--timeout=180s")
    return seen


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="*", default=[1, 3])
    args = p.parse_args()
    env = envfile.load()
    for n in args.sizes:
        runs = [run_once(env, n) for _ in range(args.runs)]
        keys = sorted({k for r in runs for k in r}, key=lambda k: statistics.median(r.get(k, 1e9) for r in runs))
        print(f"\nPgCluster with {n} instance(s), {args.runs} runs: seconds after kubectl apply")
        print(f"{'step':48} {'median':>8} {'min':>8} {'max':>8}")
        for k in keys:
            vals = [r[k] for r in runs if k in r]
            print(f"{k:48} {statistics.median(vals):8.1f} {min(vals):8.1f} {max(vals):8.1f}")


if __name__ == "__main__":
    main()
