"""The three-node local cluster itself (make up NODES=3): nodes, pod network across nodes, DNS,
node-local volumes, and the harness's node faults (kill/restart, freeze/thaw, partition/heal).

A small HTTP server pod runs on every node. The test process (on the host, which routes to every
node's pods) and `kubectl exec` from the pods call them; each answer names the node that served it
and the address it saw the caller at, so pod-to-pod traffic is shown to keep its source address.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
import urllib.request
import uuid
from datetime import datetime

import pytest

from e2e.harness.fixtures import create_test_namespace
from e2e.harness.images import POSTGRES_IMAGE

pytestmark = [pytest.mark.cluster, pytest.mark.nodes, pytest.mark.usefixtures("node_faults_alone")]

SERVER = r'''
import http.server, os, socket, urllib.parse
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        if u.path == "/probe":   # can this pod open a TCP connection to host:port?
            q = dict(urllib.parse.parse_qsl(u.query))
            try:
                socket.create_connection((q["host"], int(q["port"])), timeout=2).close()
                body = "ok"
            except OSError as e:
                body = "fail " + type(e).__name__
        else:
            body = os.environ["NODE_NAME"] + " " + self.client_address[0]
        b = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
'''

CLIENT = r'''
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read().decode())
except Exception as e:
    print("fail", type(e).__name__)
'''


def web_pod(name: str, node: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web", "node": node}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "web", "image": POSTGRES_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["python3", "-c", SERVER],
                "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
            }],
        },
    }


def service(name: str, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": "web", "node": node},
                     "ports": [{"port": 8080, "targetPort": 8080}]}}


def http_get(url: str, timeout: float = 3) -> str:
    """From the test process on the host (which routes to every node's pod range)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode()
    except Exception as e:  # noqa: BLE001 - the kind of failure is the answer
        return f"fail {type(e).__name__}"


class Web:
    def __init__(self, kubectl, namespace: str, nodes: list[str]):
        self.kubectl, self.ns, self.nodes = kubectl, namespace, nodes
        self.pod = {n: f"web-{i}" for i, n in enumerate(nodes)}
        self.svc = {n: f"svc-{i}" for i, n in enumerate(nodes)}

    def pod_json(self, node: str) -> dict:
        return self.kubectl.json("get", "pod", "-n", self.ns, self.pod[node])

    def ip(self, node: str) -> str:
        return self.pod_json(node)["status"]["podIP"]

    def url(self, node: str, path: str = "/") -> str:
        return f"http://{self.ip(node)}:8080{path}"

    def exec_get(self, from_node: str, url: str, timeout: float = 3) -> str:
        """An HTTP GET made inside the pod on `from_node`."""
        p = self.kubectl("exec", "-n", self.ns, self.pod[from_node], "--", "python3", "-c", CLIENT,
                         url, str(timeout), timeout=60)
        return p.stdout.strip()

    def wait_answering(self, node: str, timeout: float = 120) -> None:
        def answers() -> bool:
            ip = self.pod_json(node)["status"].get("podIP")
            return bool(ip) and http_get(f"http://{ip}:8080/", 2).startswith(node + " ")
        self.kubectl.wait_for(answers, f"the web pod on {node} answering", timeout)


@pytest.fixture(scope="module")
def web(kubectl, cluster_nodes):
    ns = f"t-nodes-{uuid.uuid4().hex[:5]}"
    create_test_namespace(kubectl, ns)
    w = Web(kubectl, ns, cluster_nodes.all)
    items = [web_pod(w.pod[n], n) for n in w.nodes] + [service(w.svc[n], n) for n in w.nodes]
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                             "items": items}))
    for n in w.nodes:
        kubectl("wait", "-n", ns, "--for=condition=Ready", f"pod/{w.pod[n]}", "--timeout=180s",
                timeout=200)
    yield w
    kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def faults(cluster_nodes, web):
    """The node fault commands; every extra node is back (thawed, healed, running, Ready) after
    the test, and its web pod answering, whatever the test did."""
    yield cluster_nodes
    cluster_nodes.reset()
    for n in cluster_nodes.extra:
        web.wait_answering(n, timeout=180)


# ---------------------------------------------------------------------------------------------
def test_three_nodes_ready(kubectl, cluster_nodes):
    nodes = kubectl.json("get", "nodes")["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert set(cluster_nodes.all) <= set(by_name) and len(cluster_nodes.all) == 3
    ips = set()
    for name in cluster_nodes.all:
        assert cluster_nodes.ready(name), f"{name} is not Ready"
        addrs = {a["type"]: a["address"] for a in by_name[name]["status"]["addresses"]}
        ips.add(addrs["InternalIP"])
        assert by_name[name]["metadata"]["labels"]["kubernetes.io/hostname"] == name
    assert len(ips) == 3


def test_pods_run_on_each_node(web, cluster_nodes):
    cidrs = set()
    for n in web.nodes:
        pod = web.pod_json(n)
        assert pod["spec"]["nodeName"] == n
        assert cluster_nodes.node_of(web.ns, web.pod[n]) == n
        cidrs.add(ipaddress.ip_network(pod["status"]["podIP"] + "/24", strict=False))
        assert http_get(web.url(n)).startswith(n + " ")
    assert len(cidrs) == 3, f"each node has its own pod range: {cidrs}"


def test_each_node_runs_only_its_own_containers(web, cluster_nodes, local_env):
    """Each node's containerd holds exactly the containers of the pods bound to that node, and an
    extra node's containers live in that node's cgroup subtree."""
    assert cluster_nodes.containerd_address(cluster_nodes.all[0]) == local_env["PGOP_CONTAINERD_ADDRESS"]
    for n in web.nodes:
        sock = cluster_nodes.containerd_address(n)
        ids = subprocess.run(["ctr", "--address", sock, "-n", "k8s.io", "containers", "ls", "-q"],
                             text=True, capture_output=True, check=True).stdout.split()
        mine = web.pod_json(n)["status"]["containerStatuses"][0]["containerID"].split("//")[1]
        assert mine in ids
        for other in web.nodes:
            if other != n:
                theirs = web.pod_json(other)["status"]["containerStatuses"][0]["containerID"]
                assert theirs.split("//")[1] not in ids, f"{n}'s containerd has {other}'s container"
        if n in cluster_nodes.extra:
            cgroups = subprocess.run(["sh", "-c", f"cat /sys/fs/cgroup/freezer/{n}/kubepods/*/*/{mine}/cgroup.procs"
                                      f" /sys/fs/cgroup/freezer/{n}/kubepods/*/{mine}/cgroup.procs 2>/dev/null"],
                                     text=True, capture_output=True).stdout.split()
            assert cgroups, f"no process of {mine[:12]} under /{n}/kubepods"


def test_pod_to_pod_across_nodes(web):
    """Every pod reaches every other node's pod, which sees the caller's own pod address."""
    for src in web.nodes:
        src_ip = web.ip(src)
        for dst in web.nodes:
            if dst != src:
                assert web.exec_get(src, web.url(dst)) == f"{dst} {src_ip}"


def test_pod_to_service_across_nodes_and_dns(web):
    """Every pod reaches the Service of every other node's pod by its DNS name (cluster DNS on the
    host, seen from every node) and by its ClusterIP."""
    for src in web.nodes:
        for dst in web.nodes:
            if dst == src:
                continue
            by_name = web.exec_get(src, f"http://{web.svc[dst]}.{web.ns}.svc.cluster.local:8080/")
            assert by_name.startswith(dst + " "), (src, dst, by_name)
            ip = web.kubectl.json("get", "svc", "-n", web.ns, web.svc[dst])["spec"]["clusterIP"]
            assert web.exec_get(src, f"http://{ip}:8080/").startswith(dst + " ")


def test_dns_from_every_node(web):
    for n in web.nodes:
        out = web.kubectl("exec", "-n", web.ns, web.pod[n], "--", "python3", "-c",
                          "import socket; print(socket.gethostbyname('kubernetes.default.svc.cluster.local'))"
                          ).stdout.strip()
        assert out == "10.96.0.1", (n, out)


def test_local_volume_is_bound_to_its_node(kubectl, cluster_nodes, namespace, local_env):
    """A pgop-local claim gets a volume on the node of its first pod; a second pod of the claim,
    with no node constraint, lands on that node and reads the data; deleting the claim removes it."""
    node = cluster_nodes.extra[-1]
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"storageClassName": "pgop-local", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "16Mi"}}}}))
    time.sleep(1)
    assert kubectl.json("get", "pvc", "-n", namespace, "data")["status"]["phase"] == "Pending", \
        "WaitForFirstConsumer: no volume before a pod"

    def pod(name: str, script: str, node_selector: dict | None) -> str:
        return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
            "restartPolicy": "Never", **({"nodeSelector": node_selector} if node_selector else {}),
            "containers": [{"name": "c", "image": POSTGRES_IMAGE, "imagePullPolicy": "IfNotPresent",
                            "command": ["sh", "-c", script],
                            "volumeMounts": [{"name": "d", "mountPath": "/data"}]}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}})

    def finished(name: str) -> str:
        def phase():
            p = kubectl.json("get", "pod", "-n", namespace, name)["status"].get("phase")
            return p if p in ("Succeeded", "Failed") else None
        return kubectl.wait_for(phase, f"pod {name} finished", 120)

    kubectl("apply", "-n", namespace, "-f", "-",
            input=pod("writer", "echo written-by-writer > /data/f",
                      {"kubernetes.io/hostname": node}))
    assert finished("writer") == "Succeeded"
    pvc = kubectl.json("get", "pvc", "-n", namespace, "data")
    assert pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == node
    pv = kubectl.json("get", "pv", pvc["spec"]["volumeName"])
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == [node]
    path = pv["spec"]["local"]["path"]
    assert path.startswith(f"{local_env['PGOP_ENV_DIR']}/nodes/{node}/volumes/"), path

    kubectl("delete", "pod", "-n", namespace, "writer", "--wait=true", timeout=120)
    kubectl("apply", "-n", namespace, "-f", "-", input=pod("reader", "cat /data/f", None))
    assert finished("reader") == "Succeeded"
    assert cluster_nodes.node_of(namespace, "reader") == node
    assert kubectl("logs", "-n", namespace, "reader").stdout.strip() == "written-by-writer"

    kubectl("delete", "pod", "-n", namespace, "reader", "--wait=true", timeout=120)
    kubectl("delete", "pvc", "-n", namespace, "data", "--wait=true", timeout=120)
    kubectl.wait_for(lambda: kubectl("get", "pv", pv["metadata"]["name"], check=False).returncode != 0
                     and not os.path.exists(path), "the released volume and its directory removed", 60)


# ---------------------------------------------------------------------------------------------
# Faults, on the last extra node; the first extra node and the host watch.
def last_heartbeat(kubectl, node: str) -> float:
    conds = kubectl.json("get", "node", node)["status"]["conditions"]
    beat = next(c["lastHeartbeatTime"] for c in conds if c["type"] == "Ready")
    return datetime.fromisoformat(beat.replace("Z", "+00:00")).timestamp()


def heartbeats_stop(kubectl, node: str, since: float, quiet: float = 10) -> None:
    """The node's kubelet posts its status every 4 s (nodeStatusUpdateFrequency): none arrives
    in the `quiet` seconds after `since` (the heartbeat times have whole seconds)."""
    time.sleep(max(0.0, since + quiet - time.time()))
    assert last_heartbeat(kubectl, node) <= since + 1, f"{node} still posts its status"


def test_partition_cuts_the_node_both_ways_until_heal(web, faults, kubectl):
    cut, peer = faults.extra[-1], faults.extra[0]
    t0 = time.time()
    faults.partition(cut)
    assert faults.state()[cut]["partition"] == "full"
    assert http_get(web.url(cut), 2).startswith("fail"), "host -> partitioned pod"
    assert web.exec_get(peer, web.url(cut), 2).startswith("fail"), "other node -> partitioned pod"
    heartbeats_stop(kubectl, cut, t0)   # and out of it: the kubelet reaches the API server no more
    faults.heal(cut)
    assert faults.state()[cut]["partition"] == "none"
    kubectl.wait_for(lambda: last_heartbeat(kubectl, cut) > t0 + 10, f"{cut} posting its status again", 30)
    assert http_get(web.url(cut)).startswith(cut + " ")
    assert web.exec_get(peer, web.url(cut)) == f"{cut} {web.ip(peer)}"


def test_partition_from_apiserver_only(web, faults, kubectl):
    cut, peer = faults.extra[-1], faults.extra[0]
    api = "host=10.96.0.1&port=443"
    assert http_get(web.url(cut, f"/probe?{api}")) == "ok"
    t0 = time.time()
    faults.partition(cut, apiserver_only=True)
    assert faults.state()[cut]["partition"] == "apiserver"
    # pods and the node still talk to everyone else ...
    assert http_get(web.url(cut)).startswith(cut + " ")
    assert web.exec_get(peer, web.url(cut)) == f"{cut} {web.ip(peer)}"
    assert http_get(web.url(cut, f"/probe?host={web.ip(peer)}&port=8080")) == "ok"
    # ... but not to the API server, nor the API server to its kubelet
    assert http_get(web.url(cut, f"/probe?{api}"), 5) == "fail TimeoutError"
    heartbeats_stop(kubectl, cut, t0)
    try:
        p = kubectl("logs", "-n", web.ns, web.pod[cut], "--request-timeout=5s", check=False, timeout=20)
        assert p.returncode != 0, "the API server read the pod's log from the kubelet"
    except subprocess.TimeoutExpired:
        pass
    faults.heal(cut)
    assert http_get(web.url(cut, f"/probe?{api}")) == "ok"


def test_freeze_stops_the_node_until_thaw(web, faults, kubectl):
    node = faults.extra[-1]
    restarts = web.pod_json(node)["status"]["containerStatuses"][0]["restartCount"]
    faults.freeze(node)
    st = faults.state()[node]
    assert st["state"] == "frozen" and st["processes"] > 0
    assert http_get(web.url(node), 2).startswith("fail"), "a frozen pod answers nothing"
    time.sleep(2)
    assert http_get(web.url(node), 2).startswith("fail")
    faults.thaw(node)
    assert http_get(web.url(node), 5).startswith(node + " "), "the same process answers after thaw"
    assert web.pod_json(node)["status"]["containerStatuses"][0]["restartCount"] == restarts


def test_kill_takes_the_node_down_until_restart(web, faults, kubectl):
    node = faults.extra[-1]
    assert faults.state()[node]["processes"] > 3
    faults.kill(node)
    st = faults.state()[node]
    assert st["state"] == "killed" and st["processes"] == 0 and st["link"] == "down", st
    assert http_get(web.url(node), 2).startswith("fail"), "nothing of a killed node answers"
    took = faults.wait_ready(node, ready=False, timeout=150)
    print(f"{node} NotReady {took:.0f}s after the kill")
    faults.restart(node)
    assert faults.state()[node]["state"] == "running"
    web.wait_answering(node, timeout=180)
    assert web.exec_get(faults.extra[0], web.url(node)).startswith(node + " ")
