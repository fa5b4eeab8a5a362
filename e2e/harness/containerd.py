"""A node's containerd: its config, its CNI network, and `ctr` against its socket.

Shared by the host node (cluster.py) and the extra nodes (nodes.py), and by images.py for imports;
it imports neither of them, so no module imports another back.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from . import paths, proc


def ctr(*args: str, address: Path | str = paths.CONTAINERD_SOCK,
        check: bool = True) -> subprocess.CompletedProcess:
    return proc.run(["ctr", "--address", str(address), "-n", "k8s.io", *args], check=check)


def write_cni(conf_dir: Path, pod_cidr: str, ipam_dir: Path, ip_masq: bool = True) -> None:
    """The node's pod network: a bridge `cni0` (in the node's network namespace) and host-local
    addresses from the node's own pod range."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "10-pgop.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "pgop-pods",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": ip_masq,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]],
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": str(ipam_dir)}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]}, indent=2))


def write_config(cfg: Path, *, root: Path, state: Path, sock: Path, cni_conf_dir: Path,
                 sandbox_image: str, runc_root: Path | None = None) -> Path:
    """containerd's config.toml. `runc_root` gives runc a state directory of its own (the default,
    /run/containerd/runc, would be shared by every containerd of this machine)."""
    runc_options = "        SystemdCgroup = false\n"
    if runc_root is not None:
        runc_options += f'        Root = "{runc_root}"\n'
    cfg.write_text(f"""version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  enable_unprivileged_ports = true
  # Root in this VM may not lower oom_score_adj (kubelet asks -998 for sandboxes): clamp instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
{runc_options}  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf_dir}"
""")
    return cfg


def remove_tasks(address: Path | str) -> None:
    """SIGKILLs and deletes every task and container of one containerd (no container outlives it)."""
    tasks = ctr("tasks", "ls", "-q", address=address, check=False).stdout.split()
    for t in tasks:
        ctr("tasks", "kill", "-s", "SIGKILL", t, address=address, check=False)
    for t in tasks:
        ctr("tasks", "delete", "-f", t, address=address, check=False)
    for c in ctr("containers", "ls", "-q", address=address, check=False).stdout.split():
        ctr("containers", "delete", c, address=address, check=False)
