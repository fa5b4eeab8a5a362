"""The single-node Kubernetes cluster: etcd, control plane, containerd, kubelet, kube-proxy, DNS."""
from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from pathlib import Path

from . import build, containerd, paths, pki, proc
from .containerd import ctr
from .images import PAUSE_IMAGE
from .log import step

ADMIN_KUBECONFIG = paths.PKI / "admin.kubeconfig"
# The host-run operator's identity: group pgop:operators, the only non-ServiceAccount identity the
# admission policy (deploy/admission.yaml) lets change who is primary; cluster-admin by binding.
OPERATOR_KUBECONFIG = paths.PKI / "operator.kubeconfig"
OPERATOR_GROUP = "pgop:operators"
OPERATOR_BINDING = f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: pgop-local-operators}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "{OPERATOR_GROUP}"}}]
"""


def k8s_bin(name: str) -> str:
    return str(build.by_name()["kubernetes"].bindir / name)


def kubectl(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return proc.run([k8s_bin("kubectl"), "--kubeconfig", str(ADMIN_KUBECONFIG), *args],
                    input=input, check=check)


def _https_ok(url: str, cert: Path | None = None, key: Path | None = None) -> bool:
    ctx = ssl.create_default_context(cafile=str(pki.ca()[0]))
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    with urllib.request.urlopen(url, context=ctx, timeout=3) as r:
        return r.status == 200


def _https_insecure_ok(url: str) -> bool:
    """Health of a component serving its own self-signed certificate (on loopback)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url, context=ctx, timeout=3) as r:
        return r.status == 200


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as r:
        return r.status == 200


# ---------------------------------------------------------------------------------------------
def start_etcd() -> None:
    data = paths.STATE / "etcd"
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    etcd = build.by_name()["etcd"].bindir / "etcd"
    with step("etcd"):
        proc.start("etcd", [str(etcd), "--name", "pgop", "--data-dir", str(data),
                            "--listen-client-urls", f"http://127.0.0.1:{paths.ETCD_CLIENT_PORT}",
                            "--advertise-client-urls", f"http://127.0.0.1:{paths.ETCD_CLIENT_PORT}",
                            "--listen-peer-urls", f"http://127.0.0.1:{paths.ETCD_PEER_PORT}",
                            "--initial-advertise-peer-urls", f"http://127.0.0.1:{paths.ETCD_PEER_PORT}",
                            "--initial-cluster", f"pgop=http://127.0.0.1:{paths.ETCD_PEER_PORT}",
                            "--quota-backend-bytes", str(4 << 30), "--log-level", "warn"])
        proc.wait_for(lambda: _http_ok(f"http://127.0.0.1:{paths.ETCD_CLIENT_PORT}/health"),
                      "etcd health", 60, log_name="etcd")


def start_apiserver() -> None:
    crt, key = pki.cert("apiserver", "kube-apiserver", sans=pki.apiserver_sans(), server=True)
    kc_crt, kc_key = pki.cert("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                              "system:masters")
    sa_key, sa_pub = pki.service_account_keys()
    ca_crt, _ = pki.ca()
    with step("kube-apiserver"):
        proc.start("kube-apiserver", [
            k8s_bin("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{paths.ETCD_CLIENT_PORT}",
            # Pods reach the apiserver through the `kubernetes` Service at the node address.
            "--bind-address=0.0.0.0", f"--secure-port={paths.APISERVER_PORT}",
            f"--advertise-address={paths.NODE_IP}",
            f"--tls-cert-file={crt}", f"--tls-private-key-file={key}",
            f"--client-ca-file={ca_crt}",
            f"--kubelet-client-certificate={kc_crt}", f"--kubelet-client-key={kc_key}",
            f"--kubelet-certificate-authority={ca_crt}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--service-account-key-file={sa_pub}", f"--service-account-signing-key-file={sa_key}",
            f"--service-account-issuer=https://kubernetes.default.svc.{paths.CLUSTER_DOMAIN}",
            f"--service-cluster-ip-range={paths.SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            "--enable-admission-plugins=NodeRestriction",
            "--event-ttl=2h", "--profiling=false", "--v=1",
        ])
        proc.wait_for(lambda: _https_ok(f"https://127.0.0.1:{paths.APISERVER_PORT}/readyz",
                                        *pki.cert("admin", "pgop-admin", "system:masters")),
                      "kube-apiserver /readyz", 120, log_name="kube-apiserver")


def start_controller_manager() -> None:
    kc = pki.kubeconfig("kube-controller-manager", "system:kube-controller-manager")
    sa_key, _ = pki.service_account_keys()
    ca_crt, ca_key = pki.ca()
    with step("kube-controller-manager"):
        proc.start("kube-controller-manager", [
            k8s_bin("kube-controller-manager"),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}", "--bind-address=127.0.0.1",
            "--leader-elect=false", "--cluster-name=pgop-local",
            f"--root-ca-file={ca_crt}", f"--service-account-private-key-file={sa_key}",
            f"--cluster-signing-cert-file={ca_crt}", f"--cluster-signing-key-file={ca_key}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={paths.SERVICE_CIDR}",
            "--controllers=*,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
            "--v=1",
        ])
        proc.wait_for(lambda: _https_insecure_ok("https://127.0.0.1:10257/healthz"),
                      "kube-controller-manager /healthz", 60, log_name="kube-controller-manager")


def start_scheduler() -> None:
    kc = pki.kubeconfig("kube-scheduler", "system:kube-scheduler")
    with step("kube-scheduler"):
        proc.start("kube-scheduler", [
            k8s_bin("kube-scheduler"), f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", "--leader-elect=false", "--v=1"])
        # /readyz, not an open port: a scheduler whose informers have not synced yet can miss
        # a claim's binding and leave a pod unschedulable for minutes.
        proc.wait_for(lambda: _https_insecure_ok("https://127.0.0.1:10259/readyz"), "kube-scheduler /readyz", 60,
                      log_name="kube-scheduler")


def _tcp_open(host: str, port: int) -> bool:
    import socket
    with socket.create_connection((host, port), timeout=2):
        return True


# ---------------------------------------------------------------------------------------------
CNI_DIR = paths.STATE / "cni" / "net.d"


def _write_containerd_config() -> Path:
    containerd.write_cni(CNI_DIR, paths.NODE_POD_CIDR, paths.STATE / "cni" / "ipam")
    return containerd.write_config(paths.STATE / "containerd.toml", root=paths.STATE / "containerd",
                                   state=paths.RUN / "containerd-state", sock=paths.CONTAINERD_SOCK,
                                   cni_conf_dir=CNI_DIR, sandbox_image=PAUSE_IMAGE)


def start_containerd() -> None:
    cfg = _write_containerd_config()
    paths.CONTAINERD_SOCK.parent.mkdir(parents=True, exist_ok=True)
    with step("containerd"):
        proc.start("containerd", ["containerd", "--config", str(cfg)])
        proc.wait_for(lambda: ctr("version", check=False).returncode == 0, "containerd", 60,
                      log_name="containerd")


def kubelet_config(cfg: Path, *, sock: Path, address: str, healthz: str, srv_crt: Path,
                   srv_key: Path, pod_cidr: str, **extra) -> Path:
    """A kubelet's KubeletConfiguration; `extra` adds fields (an extra node's cgroup root, ...)."""
    ca_crt, _ = pki.ca()
    cfg.write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs", "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{sock}",
        "address": address, "healthzBindAddress": healthz, "healthzPort": 10248,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca_crt)}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(srv_crt), "tlsPrivateKeyFile": str(srv_key),
        "clusterDomain": paths.CLUSTER_DOMAIN, "clusterDNS": [paths.NODE_IP],
        "resolvConf": "/etc/resolv.conf", "failSwapOn": False, "podCIDR": pod_cidr,
        # Images are built locally and cannot be pulled again: never garbage-collect them.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%",
                         "imagefs.available": "2%"},
        "serializeImagePulls": False, "maxPods": 110,
        "nodeStatusUpdateFrequency": "4s", "syncFrequency": "10s",
        "fileCheckFrequency": "10s", "volumeStatsAggPeriod": "30s",
        **extra,
    }, indent=1))
    return cfg


def start_kubelet() -> None:
    kc = pki.kubeconfig("kubelet", f"system:node:{paths.NODE_NAME}", "system:nodes")
    srv_crt, srv_key = pki.cert("kubelet-serving", f"system:node:{paths.NODE_NAME}",
                                "system:nodes", sans=[f"IP:{paths.NODE_IP}",
                                                      f"DNS:{paths.NODE_NAME}"], server=True)
    root = paths.STATE / "kubelet"
    root.mkdir(parents=True, exist_ok=True)
    cfg = kubelet_config(paths.STATE / "kubelet-config.yaml", sock=paths.CONTAINERD_SOCK,
                         address=paths.NODE_IP, healthz="127.0.0.1", srv_crt=srv_crt,
                         srv_key=srv_key, pod_cidr=paths.NODE_POD_CIDR)
    with step("kubelet"):
        proc.start("kubelet", [
            k8s_bin("kubelet"), f"--config={cfg}", f"--kubeconfig={kc}",
            f"--root-dir={root}", f"--hostname-override={paths.NODE_NAME}",
            f"--node-ip={paths.NODE_IP}", "--v=1"])
        proc.wait_for(lambda: _http_ok("http://127.0.0.1:10248/healthz"), "kubelet healthz", 90,
                      log_name="kubelet")


def start_kube_proxy() -> None:
    kc = pki.kubeconfig("kube-proxy", "system:kube-proxy")
    with step("kube-proxy"):
        proc.start("kube-proxy", [
            k8s_bin("kube-proxy"), f"--kubeconfig={kc}", f"--hostname-override={paths.NODE_NAME}",
            f"--cluster-cidr={paths.POD_CIDR}", "--proxy-mode=iptables",
            "--conntrack-max-per-core=0", "--metrics-bind-address=127.0.0.1:10249",
            "--healthz-bind-address=127.0.0.1:10256", "--v=1"])
        proc.wait_for(lambda: _http_ok("http://127.0.0.1:10256/healthz"), "kube-proxy", 60,
                      log_name="kube-proxy")


COREDNS_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "pgop-env:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "pgop-env:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "pgop-env:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "pgop-env:coredns"}
"""

# The default class: node-local volumes from the harness's provisioner (e2e/harness/provisioner.py),
# bound once the scheduler has picked the pod's node, as most real storage classes are.
STORAGE_CLASS_NAME = "standard"
STORAGE_PROVISIONER = "pgop.io/local"
STORAGE_CLASS = f"""
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: {STORAGE_CLASS_NAME}
  annotations: {{storageclass.kubernetes.io/is-default-class: "true"}}
provisioner: {STORAGE_PROVISIONER}
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
"""


def start_coredns() -> None:
    """Cluster DNS on the node address (what kubelet gives pods as their nameserver)."""
    kc = pki.kubeconfig("coredns", "pgop-env:coredns")
    kubectl("apply", "-f", "-", input=COREDNS_RBAC)
    corefile = paths.STATE / "Corefile"
    corefile.write_text(f""".:53 {{
    bind {paths.NODE_IP}
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes {paths.CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kc} pgop-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    forward . /etc/resolv.conf
    cache 5
    loop
    reload
}}
""")
    coredns = build.by_name()["coredns"].bindir / "coredns"
    with step("coredns"):
        proc.start("coredns", [str(coredns), "-conf", str(corefile)])
        proc.wait_for(lambda: _http_ok("http://127.0.0.1:18181/ready"), "coredns ready", 60,
                      log_name="coredns")


def wait_node_ready(timeout: float = 120) -> None:
    def ready() -> bool:
        out = kubectl("get", "node", paths.NODE_NAME, "-o", "json", check=False)
        if out.returncode != 0:
            return False
        conds = json.loads(out.stdout)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
    with step(f"node {paths.NODE_NAME} Ready"):
        proc.wait_for(ready, "node Ready", timeout, log_name="kubelet")


def bootstrap_objects() -> None:
    with step("default StorageClass, service account of `default`"):
        # A class is immutable: one left by an older harness (the built-in host-path provisioner,
        # whose volumes ignore fsGroup) is replaced.
        old = kubectl("get", "storageclass", STORAGE_CLASS_NAME, "-o", "jsonpath={.provisioner}", check=False)
        if old.returncode == 0 and old.stdout.strip() not in ("", STORAGE_PROVISIONER):
            kubectl("delete", "storageclass", STORAGE_CLASS_NAME)
        kubectl("apply", "-f", "-", input=STORAGE_CLASS)
        kubectl("apply", "-f", "-", input=OPERATOR_BINDING)
        proc.wait_for(lambda: kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
                      "default service account", 60)


CONTROL_PLANE = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
NODE = ["containerd", "kubelet", "kube-proxy", "coredns"]


def up_control_plane() -> None:
    pki.kubeconfig("admin", "pgop-admin", "system:masters")
    pki.kubeconfig("operator", "pgop-operator", OPERATOR_GROUP)
    start_etcd()
    start_apiserver()
    start_controller_manager()
    start_scheduler()


def up_node() -> None:
    start_kubelet()
    start_kube_proxy()
    start_coredns()
    wait_node_ready()
    bootstrap_objects()


def remove_pods() -> None:
    """Stops every pod sandbox of the node (so no container outlives `down`)."""
    if not proc.running("containerd"):
        return
    containerd.remove_tasks(paths.CONTAINERD_SOCK)


def install_crds() -> None:
    crds = paths.REPO / "crds"
    if not any(crds.glob("*.yaml")):
        return
    with step("pgop CRDs"):
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
        for f in sorted(crds.glob("*.yaml")):
            kubectl("wait", "--for=condition=Established", f"crd/{f.stem}.pgop.io", "--timeout=60s")
        admission = paths.REPO / "deploy" / "admission.yaml"
        # who may change who is primary (docs/high-availability.md); where a namespace's objects
        # may publish in Vault and Consul (README "Security")
        if admission.exists():
            kubectl("apply", "--server-side", "--force-conflicts", "-f", str(admission))
