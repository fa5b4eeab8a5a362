"""pgop's local environment: a real single-node Kubernetes and the services pgop talks to.

    python -m e2e.harness up        # install, build (cached), start everything; idempotent
    python -m e2e.harness down      # stop everything it started, by PID
    python -m e2e.harness status    # what runs
    python -m e2e.harness env       # print the env.sh to source
"""
from __future__ import annotations

import argparse
import sys
import time

from . import build, cluster, envfile, host, images, paths, proc, services
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
    services.up()
    env = envfile.write()
    cluster.install_crds()
    if args.operator:
        start_operator(env)
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
""")


def start_operator(env: dict[str, str]) -> None:
    pgop = paths.REPO / ".venv" / "bin" / "pgop"
    with step(f"pgop operator (log: {paths.LOGS / 'operator.log'})"):
        proc.start("operator", [str(pgop), "run", "--all-namespaces",
                                "--liveness", "http://127.0.0.1:18090/healthz"],
                   env=operator_env(env), cwd=str(paths.REPO))
        proc.wait_for(lambda: services._http_status("http://127.0.0.1:18090/healthz") == 200,
                      "operator liveness", 60, log_name="operator")


def operator_env(env: dict[str, str]) -> dict[str, str]:
    """What the operator process gets: the cluster and the endpoints of the outside world."""
    keep = ("KUBECONFIG", "VAULT_ADDR", "CONSUL_HTTP_ADDR", "PGOP_RDS_ENDPOINT", "AWS_DEFAULT_REGION",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3",
            "PGOP_S3_ENDPOINT_IN_CLUSTER", "PGOP_VAULT_ADDR_IN_CLUSTER")
    out = {k: env[k] for k in keep if k in env}
    out["VAULT_TOKEN"] = services.vault_operator_token()  # least privilege, not the root token
    return out


def down(args) -> None:
    if proc.stop("operator"):
        step("stopped operator")
    for name in reversed(services.NAMES):
        if proc.stop(name):
            step(f"stopped {name}")
    # Pods first (their containers are children of containerd's shims, not of ours).
    if proc.stop("kubelet"):
        step("stopped kubelet")
    cluster.remove_pods()
    for name in reversed(cluster.CONTROL_PLANE + ["containerd", "kube-proxy", "coredns"]):
        if proc.stop(name):
            step(f"stopped {name}")
    paths.ENV_JSON.unlink(missing_ok=True)


def status(args) -> None:
    bad = 0
    if proc.running("operator"):
        print(f"{'operator':26} running pid {proc.pid_of('operator')}")
    for name in ORDER:
        pid = proc.pid_of(name)
        print(f"{name:26} {'running pid ' + str(pid) if pid else 'stopped'}")
        bad += pid is None
    sys.exit(1 if bad else 0)


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
    u.set_defaults(fn=up)
    sub.add_parser("down", help="stop everything this harness started").set_defaults(fn=down)
    sub.add_parser("status", help="which processes run").set_defaults(fn=status)
    sub.add_parser("env", help="print the env.sh to source").set_defaults(fn=env)
    b = sub.add_parser("build", help="build the Go binaries (cached by version)")
    b.add_argument("only", nargs="*")
    b.set_defaults(fn=build_cmd)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
