"""Extra kubelet nodes on this machine (`up --nodes N`), and the faults a test or a person injects
into them: kill, freeze/thaw, partition/heal, restart. See docs/local-cluster.md for the shape.

Each extra node `pgop-node-<i>` is made of plain kernel objects, no container around it:
- a network namespace `pgop-node-<i>` with a veth (`eth0` inside, `pgop-n<i>` on the host bridge
  pgop0), address 10.243.0.<i>, pods in 10.244.<i>.0/24 on a `cni0` bridge of its own, routes to
  every other node's pods;
- its own containerd (socket, root, state, runc root, CNI config), kubelet (root dir, pod log dir,
  cgroup root /pgop-node-<i>, certificates from the harness CA) and kube-proxy, all three started in
  the namespace with nsenter and in the freezer cgroup /pgop-node-<i>/daemons, so the shims they
  start and every container (under /pgop-node-<i>/kubepods) share one freezer subtree: freezing or
  killing that subtree stops or kills the whole node at once.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from . import cluster, containerd, images, paths, pki, proc
from .log import step

CGROUP_FS = Path("/sys/fs/cgroup")
FREEZER = CGROUP_FS / "freezer"
NAT_COMMENT = "pgop-env: pod to pod without NAT"
PARTITION_IN, PARTITION_OUT = "PGOP-PARTITION-IN", "PGOP-PARTITION-OUT"
DAEMONS = ("containerd", "kubelet", "kube-proxy")


@dataclass(frozen=True)
class Node:
    index: int

    @property
    def name(self) -> str:
        return f"{paths.NODE_NAME}-{self.index}"

    @property
    def ip(self) -> str:
        return f"10.243.0.{self.index}"

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def netns(self) -> str:
        return self.name

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    @property
    def veth(self) -> str:
        return f"pgop-n{self.index}"

    @property
    def state(self) -> Path:
        return paths.node_dir(self.name)

    @property
    def run(self) -> Path:
        return paths.RUN / "nodes" / self.name

    @property
    def sock(self) -> Path:
        return self.run / "containerd" / "containerd.sock"

    @property
    def freezer(self) -> Path:
        return FREEZER / self.name

    def proc_name(self, daemon: str) -> str:
        return f"{self.name}-{daemon}"


def by_name(name: str) -> Node:
    for n in registered():
        if n.name == name:
            return n
    if name == paths.NODE_NAME:
        raise SystemExit(f"{name} is the host node: it carries the control plane and the services, "
                         "so the fault commands work on the extra nodes only "
                         f"({', '.join(n.name for n in registered()) or 'none: up --nodes 3'})")
    raise SystemExit(f"no extra node {name!r} (have: {', '.join(n.name for n in registered()) or 'none'})")


def containerd_address(name: str) -> Path:
    """The containerd socket of a node (the host node's or an extra node's), for `ctr --address`."""
    if name == paths.NODE_NAME:
        return paths.CONTAINERD_SOCK
    return Node(int(name.rsplit("-", 1)[1])).sock


def registered() -> list[Node]:
    try:
        return [Node(i) for i in json.loads(paths.NODES_JSON.read_text())["indexes"]]
    except FileNotFoundError:
        return []


def _register(nodes: list[Node]) -> None:
    paths.NODES_JSON.write_text(json.dumps({"indexes": [n.index for n in nodes],
                                            "names": [n.name for n in nodes]}) + "\n")


# ---------------------------------------------------------------------------------------------
def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return proc.run(list(argv), check=check)


def _in_ns(node: Node, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return proc.run(["nsenter", f"--net={node.netns_path}", "--", *argv], check=check)


def _iptables_ensure(prefix: list[str], table: str, chain: str, rule: list[str],
                     position: int | None = None) -> None:
    """Adds a rule unless it is there (-C first), appended or inserted at `position`."""
    if proc.run([*prefix, "iptables", "-w", "-t", table, "-C", chain, *rule], check=False).returncode:
        where = ["-I", chain, str(position)] if position else ["-A", chain]
        proc.run([*prefix, "iptables", "-w", "-t", table, *where, *rule])


def _ns_prefix(node: Node) -> list[str]:
    return ["nsenter", f"--net={node.netns_path}", "--"]


def _link_exists(name: str, ns: Node | None = None) -> bool:
    argv = ["ip", "link", "show", name]
    return (_in_ns(ns, *argv, check=False) if ns else _run(*argv, check=False)).returncode == 0


def setup_host_network(nodes: list[Node]) -> None:
    """Routes from the host to every node and its pods, and host pods reaching other nodes' pods
    with their own address (the bridge plugin would masquerade everything off the host's range)."""
    _run("ip", "route", "replace", paths.NODES_NET, "dev", paths.NODE_BRIDGE, "src", paths.NODE_IP)
    for n in nodes:
        _run("ip", "route", "replace", n.pod_cidr, "via", n.ip, "dev", paths.NODE_BRIDGE)
    _iptables_ensure([], "nat", "POSTROUTING",
                     ["-s", paths.NODE_POD_CIDR, "-d", paths.POD_CIDR, "-m", "mark", "!", "--mark",
                      "0x4000/0x4000", "-m", "comment", "--comment", NAT_COMMENT, "-j", "RETURN"],
                     position=1)


def setup_netns(node: Node, nodes: list[Node]) -> None:
    if not Path(node.netns_path).exists():
        _run("ip", "netns", "add", node.netns)
    if not _link_exists("eth0", node):
        if _link_exists(node.veth):
            _run("ip", "link", "del", node.veth)
        _run("ip", "link", "add", node.veth, "type", "veth", "peer", "name", "eth0",
             "netns", node.netns)
    _run("ip", "link", "set", node.veth, "master", paths.NODE_BRIDGE, "up")
    _in_ns(node, "ip", "link", "set", "lo", "up")
    _in_ns(node, "ip", "addr", "replace", f"{node.ip}/24", "dev", "eth0")
    _in_ns(node, "ip", "link", "set", "eth0", "up")
    _in_ns(node, "ip", "route", "replace", "default", "via", paths.NODE_IP, "dev", "eth0")
    for other in nodes:
        if other != node:
            _in_ns(node, "ip", "route", "replace", other.pod_cidr, "via", other.ip, "dev", "eth0")
    _in_ns(node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
           "net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1")
    # Pods leaving the pod network (to the host's services, DNS, the API server) use the node's
    # address; pod to pod keeps the pod's address, as in a real cluster.
    _iptables_ensure(_ns_prefix(node), "nat", "POSTROUTING",
                     ["-s", node.pod_cidr, "!", "-d", paths.POD_CIDR, "-j", "MASQUERADE"])


def _cgroup_roots() -> list[Path]:
    return sorted(p for p in CGROUP_FS.iterdir() if (p / "cgroup.procs").exists() and not p.is_symlink())


def setup_cgroups(node: Node) -> None:
    """The node's cgroup root in every hierarchy (the kubelet wants its --cgroup-root to exist),
    and the freezer group of its daemons."""
    for root in _cgroup_roots():
        d = root / node.name
        d.mkdir(exist_ok=True)
        if root.name == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (d / f).read_text().strip():
                    (d / f).write_text((root / f).read_text())
    (node.freezer / "daemons").mkdir(exist_ok=True)


def _daemon_argv(node: Node, argv: list[str]) -> list[str]:
    """argv in the node's freezer cgroup and network namespace (same PID: sh and nsenter exec)."""
    return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(node.freezer / "daemons" / "cgroup.procs"),
            "nsenter", f"--net={node.netns_path}", "--", *argv]


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as r:
        return r.status == 200


def start_containerd(node: Node) -> None:
    for d in (node.state, node.run, node.sock.parent):
        d.mkdir(parents=True, exist_ok=True)
    cni = node.state / "cni" / "net.d"
    containerd.write_cni(cni, node.pod_cidr, node.state / "cni" / "ipam", ip_masq=False)
    cfg = containerd.write_config(node.state / "containerd.toml", root=node.state / "containerd",
                                  state=node.run / "containerd-state", sock=node.sock,
                                  cni_conf_dir=cni, sandbox_image=images.PAUSE_IMAGE,
                                  runc_root=node.run / "runc")
    name = node.proc_name("containerd")
    proc.start(name, _daemon_argv(node, ["containerd", "--config", str(cfg)]))
    proc.wait_for(lambda: containerd.ctr("version", address=node.sock, check=False).returncode == 0,
                  f"{name}", 60, log_name=name)


def start_kubelet(node: Node) -> None:
    server = f"https://{paths.NODE_IP}:{paths.APISERVER_PORT}"
    kc = pki.kubeconfig(f"kubelet-{node.name}", f"system:node:{node.name}", "system:nodes",
                        server=server)
    srv_crt, srv_key = pki.cert(f"kubelet-serving-{node.name}", f"system:node:{node.name}",
                                "system:nodes", sans=[f"IP:{node.ip}", f"DNS:{node.name}"],
                                server=True)
    root = node.state / "kubelet"
    root.mkdir(parents=True, exist_ok=True)
    cfg = cluster.kubelet_config(
        node.state / "kubelet-config.yaml", sock=node.sock, address=node.ip, healthz=node.ip,
        srv_crt=srv_crt, srv_key=srv_key, pod_cidr=node.pod_cidr,
        # Its own cgroup subtree, and its own pod log directory: a kubelet removes the log
        # directories of pods it does not know, which would be the other nodes' pods.
        cgroupRoot=f"/{node.name}", podLogsDir=str(node.state / "pod-logs"))
    name = node.proc_name("kubelet")
    proc.start(name, _daemon_argv(node, [
        cluster.k8s_bin("kubelet"), f"--config={cfg}", f"--kubeconfig={kc}", f"--root-dir={root}",
        f"--hostname-override={node.name}", f"--node-ip={node.ip}", "--v=1"]))
    proc.wait_for(lambda: _http_ok(f"http://{node.ip}:10248/healthz"), f"{name} healthz", 90,
                  log_name=name)


def start_kube_proxy(node: Node) -> None:
    kc = pki.kubeconfig(f"kube-proxy-{node.name}", "system:kube-proxy",
                        server=f"https://{paths.NODE_IP}:{paths.APISERVER_PORT}")
    name = node.proc_name("kube-proxy")
    proc.start(name, _daemon_argv(node, [
        cluster.k8s_bin("kube-proxy"), f"--kubeconfig={kc}", f"--hostname-override={node.name}",
        f"--cluster-cidr={paths.POD_CIDR}", "--proxy-mode=iptables", "--conntrack-max-per-core=0",
        f"--metrics-bind-address={node.ip}:10249", f"--healthz-bind-address={node.ip}:10256",
        "--v=1"]))
    proc.wait_for(lambda: _http_ok(f"http://{node.ip}:10256/healthz"), name, 60, log_name=name)


def node_ready(name: str, since: float = 0) -> bool:
    """Ready, by a status the kubelet posted at or after `since` (a killed node's Node object still
    says Ready until the node-monitor grace period ends)."""
    out = cluster.kubectl("get", "node", name, "-o", "json", check=False)
    if out.returncode != 0:
        return False
    for c in json.loads(out.stdout)["status"].get("conditions", []):
        if c["type"] == "Ready" and c["status"] == "True":
            beat = datetime.fromisoformat(c["lastHeartbeatTime"].replace("Z", "+00:00")).timestamp()
            return beat > since
    return False


def wait_ready(nodes: list[Node], timeout: float = 120, since: float = 0) -> None:
    with step(f"nodes {', '.join(n.name for n in nodes)} Ready"):
        for n in nodes:
            proc.wait_for(lambda n=n: node_ready(n.name, since), f"node {n.name} Ready", timeout,
                          log_name=n.proc_name("kubelet"))


def _start_daemons(node: Node) -> None:
    start_kubelet(node)
    start_kube_proxy(node)


def up(count: int) -> list[Node]:
    """Extra nodes 2..count next to the host node (count = nodes in all); idempotent: a running
    node is left alone, a killed or half-dead one is powered on again."""
    if not 1 <= count <= paths.MAX_NODES:
        raise SystemExit(f"--nodes must be 1..{paths.MAX_NODES}")
    old = registered()
    nodes = [Node(i) for i in range(2, count + 1)]
    if old and count == 1:
        # A single-node `up` leaves the extra nodes alone, whatever their state: `up` never stops
        # anything, and `down` is what removes them. Their images follow the host's, though.
        step(f"extra nodes {', '.join(n.name for n in old)} are left as they are (`down` removes them)")
        refresh_images(old)
        return old
    if not old:
        _forget_stale_node_objects(keep={n.name for n in nodes})
    if not nodes:
        return []
    for n in old:
        if n not in nodes:
            raise SystemExit(f"{n.name} runs from an earlier `up --nodes {len(old) + 1}`: "
                             "`down` first to change the number of nodes")
    for n in nodes:
        _clear_faults(n)
    todo = [n for n in nodes if not running(n)]
    t0 = time.time()
    if not todo:
        step(f"extra nodes {', '.join(n.name for n in nodes)}: running")
        refresh_images(nodes)
        return nodes
    names = ", ".join(n.name for n in todo)
    with step(f"extra nodes {names}: network, cgroups, containerd"):
        _register(nodes)
        setup_host_network(nodes)
        for n in todo:
            _power_on(n, nodes)
    refresh_images(nodes)
    with step(f"extra nodes {names}: kubelet, kube-proxy"):
        for n in todo:
            _start_daemons(n)
    wait_ready(todo, since=t0)
    return nodes


def _forget_stale_node_objects(keep: set[str]) -> None:
    """Node objects of extra nodes that no longer run (an earlier environment whose API server was
    stopped, or killed, before `down` could delete them) stay in etcd as NotReady nodes: the
    scheduler would skip them but a test counting the nodes would not. Deleted here."""
    out = cluster.kubectl("get", "nodes", "-o", "name", check=False)
    stale = [line.split("/", 1)[1] for line in out.stdout.split()
             if line.startswith("node/pgop-node-") and line.split("/", 1)[1] not in keep]
    if stale:
        with step(f"stale Node objects {', '.join(stale)} deleted"):
            cluster.kubectl("delete", "node", "--wait=false", "--ignore-not-found", *stale,
                            check=False)


def refresh_images(nodes: list[Node]) -> None:
    """The images of this checkout into every extra node whose containerd runs (a rebuild after a
    code change reaches all nodes, not only the host's; unchanged images cost one `ctr images ls`)."""
    live = [n for n in nodes if proc.running(n.proc_name("containerd"))]
    if live:
        images.import_all([(n.sock, n.state / "images") for n in live])


def _power_on(node: Node, nodes: list[Node]) -> None:
    """What a boot does up to containerd: leftovers of a killed run gone (what a reboot loses:
    containerd's state dir, runc state, the node's mounts), network and cgroups set, link up."""
    if processes(node):
        kill(node)
    _unmount_all(node.run, node.state / "kubelet")
    shutil.rmtree(node.run, ignore_errors=True)
    setup_netns(node, nodes)
    _clear_faults(node)
    setup_cgroups(node)
    start_containerd(node)


def _clear_faults(node: Node) -> None:
    """A fault a killed test run left behind (a frozen cgroup, partition rules in the node's
    namespace) undone: `up` means healthy nodes, and a reused namespace keeps its iptables rules."""
    if freezer_state(node) == "FROZEN":
        thaw(node)
    if partition_state(node) in ("full", "apiserver"):
        heal(node)


# ---------------------------------------------------------------------------------------------
# What runs on a node, and the faults.
def _cgroup_pids(top: Path) -> list[int]:
    pids: list[int] = []
    if not top.exists():
        return pids
    for d, _, _ in os.walk(top):
        try:
            pids += [int(p) for p in (Path(d) / "cgroup.procs").read_text().split()]
        except (FileNotFoundError, ValueError):
            pass
    return pids


def processes(node: Node) -> list[int]:
    """Every process of the node: its daemons, the shims, the containers."""
    return _cgroup_pids(node.freezer)


def running(node: Node) -> bool:
    return all(proc.running(node.proc_name(d)) for d in DAEMONS)


def freezer_state(node: Node) -> str:
    try:
        return (node.freezer / "freezer.state").read_text().strip()
    except FileNotFoundError:
        return "THAWED"


def _set_freezer(node: Node, state: str, timeout: float = 20) -> None:
    (node.freezer / "freezer.state").write_text(state)
    deadline = time.monotonic() + timeout
    while freezer_state(node) != state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{node.name}: freezer still {freezer_state(node)}, wanted {state}")
        (node.freezer / "freezer.state").write_text(state)
        time.sleep(0.05)


def freeze(node: Node) -> None:
    """Every process of the node stopped (cgroup v1 freezer): no heartbeat, no answer, no exit."""
    _set_freezer(node, "FROZEN")


def thaw(node: Node) -> None:
    _set_freezer(node, "THAWED")


def link_up(node: Node) -> bool:
    out = _run("ip", "-br", "link", "show", node.veth, check=False).stdout.split()
    return len(out) > 1 and out[1] != "DOWN"


def kill(node: Node, keep_link: bool = False) -> int:
    """Power off: the node's processes frozen, SIGKILLed all at once, then its link cut so nothing
    of it answers (a dead machine answers no ARP, no SYN); with keep_link the link stays up (the
    pods' network namespaces then refuse connections instead). Returns how many processes died."""
    pids: list[int] = []
    if node.freezer.exists():
        _set_freezer(node, "FROZEN")           # nothing forks or exits while we collect
        pids = processes(node)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _set_freezer(node, "THAWED")           # frozen tasks take their SIGKILL when thawed
        deadline = time.monotonic() + 20
        while processes(node) and time.monotonic() < deadline:
            time.sleep(0.05)
    if not keep_link and _link_exists(node.veth):
        _run("ip", "link", "set", node.veth, "down")
    for d in DAEMONS:
        proc.pidfile(node.proc_name(d)).unlink(missing_ok=True)
    return len(pids)


def _mounts_under(*tops: Path) -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].encode().decode("unicode_escape")
        if any(mp == str(t) or mp.startswith(str(t) + "/") for t in tops):
            out.append(mp)
    return sorted(out, key=len, reverse=True)


def _unmount_all(*tops: Path) -> None:
    for _ in range(3):
        mps = _mounts_under(*tops)
        if not mps:
            return
        for mp in mps:
            subprocess.run(["umount", "-l", mp], capture_output=True)


def restart(node: Node, wait: bool = True) -> None:
    """Power on again with the node's disk state (kubelet root, images, volumes); what a reboot
    loses is gone. A node still running is killed first."""
    t0 = time.time()
    with step(f"{node.name}: restart"):
        _power_on(node, registered())
        refresh_images([node])
        _start_daemons(node)
    if wait:
        wait_ready([node], since=t0)


def partition(node: Node, apiserver_only: bool = False) -> None:
    """Drops the node's traffic at its own link, both directions: everything, or only what goes
    between the node (kubelet, kube-proxy, its pods) and the API server. Traffic between the pods
    of the node itself still flows, as on a real machine cut off from the network."""
    pre = _ns_prefix(node)
    for chain in (PARTITION_IN, PARTITION_OUT):
        proc.run([*pre, "iptables", "-w", "-t", "mangle", "-N", chain], check=False)
        proc.run([*pre, "iptables", "-w", "-t", "mangle", "-F", chain])
    api = ["-p", "tcp"]
    if apiserver_only:
        rules_in = [["-s", paths.NODE_IP, *api, "--sport", str(paths.APISERVER_PORT)],
                    ["-s", paths.NODE_IP, *api, "--dport", "10250"]]    # API server -> kubelet
        rules_out = [["-d", paths.NODE_IP, *api, "--dport", str(paths.APISERVER_PORT)],
                     ["-d", paths.NODE_IP, *api, "--sport", "10250"]]
    else:
        rules_in, rules_out = [[]], [[]]
    for r in rules_in:
        proc.run([*pre, "iptables", "-w", "-t", "mangle", "-A", PARTITION_IN, "-i", "eth0", *r, "-j", "DROP"])
    for r in rules_out:
        proc.run([*pre, "iptables", "-w", "-t", "mangle", "-A", PARTITION_OUT, "-o", "eth0", *r, "-j", "DROP"])
    _iptables_ensure(pre, "mangle", "PREROUTING", ["-j", PARTITION_IN], position=1)
    _iptables_ensure(pre, "mangle", "POSTROUTING", ["-j", PARTITION_OUT], position=1)


def heal(node: Node) -> None:
    pre = _ns_prefix(node)
    for hook, chain in (("PREROUTING", PARTITION_IN), ("POSTROUTING", PARTITION_OUT)):
        while proc.run([*pre, "iptables", "-w", "-t", "mangle", "-D", hook, "-j", chain],
                       check=False).returncode == 0:
            pass
        proc.run([*pre, "iptables", "-w", "-t", "mangle", "-F", chain], check=False)
        proc.run([*pre, "iptables", "-w", "-t", "mangle", "-X", chain], check=False)


def partition_state(node: Node) -> str:
    if not Path(node.netns_path).exists():
        return "-"
    out = _in_ns(node, "iptables", "-w", "-t", "mangle", "-S", PARTITION_OUT, check=False).stdout
    if "-j DROP" not in out:
        return "none"
    return "apiserver" if "--dport" in out else "full"


def describe(node: Node) -> dict:
    alive = bool(processes(node))
    return {"name": node.name, "ip": node.ip, "podCIDR": node.pod_cidr,
            "running": running(node), "processes": len(processes(node)),
            "state": ("frozen" if freezer_state(node) == "FROZEN" else
                      "running" if running(node) else "killed" if not alive else "degraded"),
            "link": "up" if link_up(node) else "down", "partition": partition_state(node),
            "containerd": str(node.sock), "netns": node.netns, "stateDir": str(node.state)}


# ---------------------------------------------------------------------------------------------
def teardown(nodes: list[Node] | None = None, delete_node_objects: bool = True) -> None:
    """Stops the extra nodes (by PID and by their cgroup), removes what `up` made for them: network
    namespaces, veths, routes, iptables rules, cgroups. Disk state (images, volumes) stays."""
    nodes = registered() if nodes is None else nodes
    if not nodes:
        return
    for n in nodes:
        if freezer_state(n) != "THAWED":
            thaw(n)
        if proc.stop(n.proc_name("kubelet")):
            step(f"stopped {n.proc_name('kubelet')}")
        if proc.running(n.proc_name("containerd")):
            containerd.remove_tasks(n.sock)
        for d in ("kube-proxy", "containerd"):
            if proc.stop(n.proc_name(d)):
                step(f"stopped {n.proc_name(d)}")
        if processes(n):
            step(f"{n.name}: killed {kill(n)} leftover process(es)")
        _unmount_all(n.run, n.state / "kubelet")
        if Path(n.netns_path).exists():
            _run("ip", "netns", "del", n.netns, check=False)
        if _link_exists(n.veth):
            _run("ip", "link", "del", n.veth, check=False)
        _run("ip", "route", "del", n.pod_cidr, check=False)
        _remove_cgroups(n)
        shutil.rmtree(n.run, ignore_errors=True)
    if delete_node_objects and proc.running("kube-apiserver"):
        cluster.kubectl("delete", "node", "--wait=false", "--ignore-not-found",
                        *[n.name for n in nodes], check=False)
    _run("ip", "route", "del", paths.NODES_NET, "dev", paths.NODE_BRIDGE, check=False)
    while _run("iptables", "-w", "-t", "nat", "-D", "POSTROUTING", "-s", paths.NODE_POD_CIDR, "-d",
               paths.POD_CIDR, "-m", "mark", "!", "--mark", "0x4000/0x4000", "-m", "comment",
               "--comment", NAT_COMMENT, "-j", "RETURN", check=False).returncode == 0:
        pass
    _remove_orphan_pod_netns()
    paths.NODES_JSON.unlink(missing_ok=True)
    step(f"extra nodes {', '.join(n.name for n in nodes)} removed")


def _remove_cgroups(node: Node) -> None:
    for root in _cgroup_roots():
        top = root / node.name
        if not top.exists():
            continue
        for d, _, _ in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
            try:
                os.rmdir(d)
            except OSError:
                pass


def _remove_orphan_pod_netns() -> None:
    """Pod network namespaces the extra nodes' containerd made and never removed (a killed node
    tears nothing down): once the node's namespace is gone they hold only `lo` and no process."""
    in_use = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                in_use.add(os.stat(p / "ns" / "net").st_ino)
            except OSError:
                pass
    for ns in Path("/run/netns").glob("cni-*"):
        try:
            if os.stat(ns).st_ino in in_use:
                continue
        except OSError:
            continue
        links = proc.run(["ip", "-n", ns.name, "-o", "link", "show"], check=False)
        if links.returncode == 0 and all(": lo:" in line for line in links.stdout.splitlines()):
            proc.run(["ip", "netns", "del", ns.name], check=False)
