"""Where the local environment keeps its state, and the fixed addresses it uses."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("PGOP_ENV_DIR", "/var/lib/pgop-env"))
RUN = Path(os.environ.get("PGOP_ENV_RUN", "/run/pgop-env"))
LOGS = STATE / "logs"
PIDS = STATE / "pids"
PKI = STATE / "pki"
ENV_JSON = STATE / "env.json"
ENV_SH = STATE / "env.sh"

NODE_NAME = "pgop-node"
# The node's address lives on a bridge of its own (`pgop0`; this kernel has no dummy links), so
# pods reach the apiserver and the services at an address that never changes from one machine to
# the next, and nothing is bound to the VM's own network.
NODE_BRIDGE = "pgop0"
NODE_IP = "10.243.0.1"
POD_CIDR = "10.244.0.0/16"
NODE_POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
CLUSTER_DOMAIN = "cluster.local"

ETCD_CLIENT_PORT = 23790
ETCD_PEER_PORT = 23800
APISERVER_PORT = 6443
S3_PORT = 7070
VAULT_PORT = 8200
CONSUL_HTTP_PORT = 8500
MOTO_PORT = 5055
OPERATOR_LIVENESS_PORT = 18090  # the operator of `make up`: /healthz
OPERATOR_METRICS_PORT = 18091   # and its /metrics

CONTAINERD_SOCK = RUN / "containerd" / "containerd.sock"

# Extra nodes (`up --nodes N`): node i (2, 3, ...) is `pgop-node-i` at 10.243.0.i on the same bridge,
# with pods in 10.244.i.0/24; its state lives in STATE/nodes/<name>, its run files in RUN/nodes/<name>.
NODES_NET = "10.243.0.0/24"
NODES_JSON = STATE / "nodes.json"
MAX_NODES = 6


def node_dir(name: str) -> Path:
    """A node's own state directory (its volumes live under it and die with it)."""
    return STATE if name == NODE_NAME else STATE / "nodes" / name

# Dev-only credentials of the local services (loopback and this node only; never real secrets).
VAULT_DEV_ROOT_TOKEN = "pgop-dev-root"
S3_ACCESS_KEY = "pgopdevaccess"
S3_SECRET_KEY = "pgopdevsecret0123456789"
MOTO_ACCESS_KEY = "testing"
MOTO_SECRET_KEY = "testing"
AWS_REGION = "us-east-1"


def ensure_dirs() -> None:
    for d in (STATE, RUN, LOGS, PIDS, PKI):
        d.mkdir(parents=True, exist_ok=True)
