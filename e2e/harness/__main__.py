"""pgop's local environment: a real single-node Kubernetes and the services pgop talks to.

    python -m e2e.harness up [--nodes 3]   # install, build (cached), start everything; idempotent
    python -m e2e.harness down             # stop everything it started, by PID
    python -m e2e.harness status           # what runs
    python -m e2e.harness env              # print the env.sh to source
    python -m e2e.harness node list        # the extra nodes and their faults
    python -m e2e.harness node kill|freeze|thaw|partition|heal|restart NODE
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

from . import build, cluster, envfile, example, host, images, nodes, paths, proc, provisioner, services
from .log import step

ORDER = cluster.CONTROL_PLANE + cluster.NODE + services.NAMES


def up(args) -> None:
    t0 = time.monotonic()
    paths.ensure_dirs()
    host.install_packages()
    host.require_tools("go", "podman", "containerd", "runc", "debootstrap", "openssl", "iptables")
    build.build_all(args.only or None)
    images.build_all()
    host.sysctls()
    host.node_address()
    cluster.up_control_plane()
    cluster.start_containerd()
    images.import_all()
    cluster.up_node()
    start_provisioner()
    services.up()
    nodes.up(args.nodes)
    env = envfile.write()
    cluster.install_crds()
    if args.operator:
        start_operator(env)
    else:
        example.remove()  # the tests' environment: no example pods competing for the cores
    deployed = example.deploy() if args.operator and args.example else None
    print(f"[pgop-env] up in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    print(f"""
The local environment is up. To use it:

    . {paths.ENV_SH}
    kubectl get nodes

KUBECONFIG={env['KUBECONFIG']}
kubectl:   {env['KUBECTL']}
Vault:     VAULT_ADDR={env['VAULT_ADDR']} VAULT_TOKEN=<in {paths.ENV_SH}>
Consul:    CONSUL_HTTP_ADDR={env['CONSUL_HTTP_ADDR']}
S3:        AWS_ENDPOINT_URL_S3={env['AWS_ENDPOINT_URL_S3']} (keys in {paths.ENV_SH})
RDS (moto): PGOP_RDS_ENDPOINT={env['PGOP_RDS_ENDPOINT']}
Logs:      {paths.LOGS}
Nodes:     {env['PGOP_NODES']} (faults: python -m e2e.harness node --help)
""")
    if deployed is not None:
        name, example_took = deployed
        print(example.next_steps(name, str(paths.ENV_SH), time.monotonic() - t0, example_took))


def start_provisioner() -> None:
    """The `pgop-local` StorageClass (node-local volumes, bound late) and its provisioner."""
    with step(f"{provisioner.NAME} StorageClass and provisioner"):
        proc.start("provisioner", [sys.executable, "-m", "e2e.harness.provisioner"],
                   cwd=str(paths.REPO))
        cluster.kubectl("apply", "-f", "-", input=provisioner.STORAGE_CLASS)


def start_operator(env: dict[str, str]) -> None:
    pgop = paths.REPO / ".venv" / "bin" / "pgop"
    with step(f"pgop operator (log: {paths.LOGS / 'operator.log'})"):
        liveness = f"http://127.0.0.1:{paths.OPERATOR_LIVENESS_PORT}/healthz"
        metrics = f"http://127.0.0.1:{paths.OPERATOR_METRICS_PORT}/metrics"
        proc.start("operator", [str(pgop), "run", "--all-namespaces", "--liveness", liveness,
                                "--metrics", metrics],
                   env=operator_env(env), cwd=str(paths.REPO))
        proc.wait_for(lambda: services._http_status(liveness) == 200,
                      "operator liveness", 60, log_name="operator")
        proc.wait_for(lambda: services._http_status(metrics) == 200, "operator metrics", 30, log_name="operator")


def operator_env(env: dict[str, str]) -> dict[str, str]:
    """What the operator process gets: the cluster and the endpoints of the outside world."""
    keep = ("KUBECONFIG", "VAULT_ADDR", "CONSUL_HTTP_ADDR", "PGOP_RDS_ENDPOINT", "AWS_DEFAULT_REGION",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3",
            "PGOP_S3_ENDPOINT_IN_CLUSTER", "PGOP_VAULT_ADDR_IN_CLUSTER")
    out = {k: env[k] for k in keep if k in env}
    # the operator's own identity: the admission policy lets only it change who is primary
    out["KUBECONFIG"] = env.get("PGOP_OPERATOR_KUBECONFIG") or env["KUBECONFIG"]
    out["VAULT_TOKEN"] = services.vault_operator_token()  # least privilege, not the root token
    return out


def down(args) -> None:
    if args.extra_nodes:
        nodes.teardown()
        envfile.write()
        return
    if proc.stop("operator"):
        step("stopped operator")
    _stop_test_operators()
    for name in reversed(services.NAMES):
        if proc.stop(name):
            step(f"stopped {name}")
    nodes.teardown()
    if proc.stop("provisioner"):
        step("stopped provisioner")
    # Pods first (their containers are children of containerd's shims, not of ours).
    if proc.stop("kubelet"):
        step("stopped kubelet")
    cluster.remove_pods()
    for name in reversed(cluster.CONTROL_PLANE + ["containerd", "kube-proxy", "coredns"]):
        if proc.stop(name):
            step(f"stopped {name}")
    paths.ENV_JSON.unlink(missing_ok=True)
    if args.wipe:
        _wipe_cluster_state()


def _wipe_cluster_state() -> None:
    """Forget every object of the cluster (etcd's data) and the local volumes that backed its
    PVCs, with everything stopped: the next `up` starts an empty cluster. What a killed run left
    in the API (an in-cluster operator Deployment from a Helm test, say) would otherwise be
    started again by the next `up` and act on the next run's objects. Built binaries, images,
    certificates and the S3 server's data stay."""
    for pidfile in paths.PIDS.glob("*.pid"):
        if proc.running(pidfile.stem):
            raise SystemExit(f"down --wipe: {pidfile.stem} still runs (pid {proc.pid_of(pidfile.stem)});"
                             " nothing was wiped")
    dirs = [paths.STATE / "etcd", provisioner.volumes_dir(paths.NODE_NAME)]
    dirs += sorted((paths.STATE / "nodes").glob("*/volumes"))
    for d in dirs:
        if d.exists():
            shutil.rmtree(d)
            step(f"wiped {d}")


def _stop_test_operators() -> None:
    """The operators tests started (operator-test, operator-test-standby, one per lane of a
    parallel run: operator-test-gw0, ...), left by a killed run."""
    for pidfile in sorted(paths.PIDS.glob("operator-test*.pid")):
        if proc.stop(pidfile.stem):
            step(f"stopped a test's operator ({pidfile.stem})")


def forget_tests(args) -> None:
    """What a killed test run left: its operators, its namespaces (and the clusters in them)."""
    from .fixtures import Kubectl, delete_leftover_namespaces
    _stop_test_operators()
    delete_leftover_namespaces(Kubectl(envfile.load()))


def status(args) -> None:
    bad = 0
    if proc.running("operator"):
        print(f"{'operator':26} running pid {proc.pid_of('operator')}")
    for name in ORDER + ["provisioner"]:
        pid = proc.pid_of(name)
        print(f"{name:26} {'running pid ' + str(pid) if pid else 'stopped'}")
        bad += pid is None
    for n in nodes.registered():
        for d in nodes.DAEMONS:
            pid = proc.pid_of(n.proc_name(d))
            print(f"{n.proc_name(d):26} {'running pid ' + str(pid) if pid else 'stopped'}")
            bad += pid is None
    sys.exit(1 if bad else 0)


def node_cmd(args) -> None:
    if args.action == "list":
        rows = [nodes.describe(n) for n in nodes.registered()]
        if args.json:
            print(json.dumps(rows, indent=1))
            return
        print(f"{paths.NODE_NAME:14} {paths.NODE_IP:12} host node (control plane, services; no faults)")
        for r in rows:
            print(f"{r['name']:14} {r['ip']:12} {r['state']:8} link {r['link']:4} "
                  f"partition {r['partition']:9} processes {r['processes']}")
        return
    if not args.node:
        raise SystemExit(f"node {args.action}: which node? ({', '.join(n.name for n in nodes.registered())})")
    node = nodes.by_name(args.node)
    if args.action == "kill":
        n = nodes.kill(node, keep_link=args.keep_link)
        step(f"{node.name}: killed {n} processes (SIGKILL)" + ("" if args.keep_link else ", link down"))
    elif args.action == "freeze":
        nodes.freeze(node)
        step(f"{node.name}: frozen ({len(nodes.processes(node))} processes)")
    elif args.action == "thaw":
        nodes.thaw(node)
        step(f"{node.name}: thawed")
    elif args.action == "partition":
        nodes.partition(node, apiserver_only=args.from_apiserver_only)
        step(f"{node.name}: partitioned from " + ("the API server" if args.from_apiserver_only
                                                  else "every other node and the host"))
    elif args.action == "heal":
        nodes.heal(node)
        step(f"{node.name}: healed")
    elif args.action == "restart":
        nodes.restart(node, wait=not args.no_wait)


def env(args) -> None:
    print(paths.ENV_SH.read_text() if paths.ENV_SH.exists() else "", end="")


def build_cmd(args) -> None:
    paths.ensure_dirs()
    build.build_all(args.only or None)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m e2e.harness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="install, build and start everything (idempotent)")
    u.add_argument("--only", nargs="*", help=argparse.SUPPRESS)
    u.add_argument("--operator", action="store_true", help="also start the pgop operator")
    u.add_argument("--no-example", dest="example", action="store_false",
                   help="with --operator: do not deploy the example PgCluster (namespace pgop-example)")
    u.add_argument("--nodes", type=int, default=1,
                   help="nodes in all: the host node plus N-1 extra kubelet nodes (default 1)")
    u.set_defaults(fn=up)
    d = sub.add_parser("down", help="stop everything this harness started")
    d.add_argument("--extra-nodes", action="store_true",
                   help="only the extra nodes: back to the single node, the rest keeps running")
    d.add_argument("--wipe", action="store_true",
                   help="also forget the cluster's state (etcd's data, the local volumes): the next "
                        "up starts an empty cluster")
    d.set_defaults(fn=down)
    sub.add_parser("status", help="which processes run").set_defaults(fn=status)
    sub.add_parser("env", help="print the env.sh to source").set_defaults(fn=env)
    sub.add_parser("forget-tests", help="stop the operators and delete the namespaces a killed test "
                                        "run left").set_defaults(fn=forget_tests)
    n = sub.add_parser("node", help="the extra nodes: list them, inject a fault, undo it",
                       description="""\
list                  the extra nodes, their state, link and partition
kill NODE             SIGKILL kubelet, containerd, kube-proxy, shims and containers at once
                      (cgroup freezer first, so nothing escapes), then the link down: power off
  --keep-link           leave the link up (processes gone, the machine still on the network)
restart NODE          power on: start a killed node again with its disk state (kills it first
                      if it still runs); waits for Ready unless --no-wait
freeze NODE / thaw    stop / resume every process of the node (cgroup v1 freezer)
partition NODE        drop all traffic of the node's link, both directions
  --from-apiserver-only   only traffic between the node (and its pods) and the API server
heal NODE             remove the partition""", formatter_class=argparse.RawDescriptionHelpFormatter)
    n.add_argument("action", choices=["list", "kill", "restart", "freeze", "thaw", "partition", "heal"])
    n.add_argument("node", nargs="?")
    n.add_argument("--from-apiserver-only", action="store_true")
    n.add_argument("--no-wait", action="store_true")
    n.add_argument("--keep-link", action="store_true")
    n.add_argument("--json", action="store_true")
    n.set_defaults(fn=node_cmd)
    b = sub.add_parser("build", help="build the Go binaries (cached by version)")
    b.add_argument("only", nargs="*")
    b.set_defaults(fn=build_cmd)
    args = p.parse_args(argv)
    if args.fn in (up, down) or (args.fn is node_cmd and args.action != "list"):
        _lock()
    args.fn(args)


def _lock() -> None:
    """One `up`, `down` or fault command at a time (a second waits): two at once would race."""
    import fcntl
    paths.STATE.mkdir(parents=True, exist_ok=True)
    global _LOCK
    _LOCK = open(paths.STATE / "harness.lock", "w")
    try:
        fcntl.flock(_LOCK, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        step("another `python -m e2e.harness` up/down/node command runs: waiting for it")
        fcntl.flock(_LOCK, fcntl.LOCK_EX)


_LOCK = None


if __name__ == "__main__":
    main()
