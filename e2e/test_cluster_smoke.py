"""The local Kubernetes behaves like any cluster: a Ready node, pods from the locally built
images on dynamically provisioned volumes, Services reached by DNS name, the API from pods, and
pgop's CRDs with their validation rules."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

POSTGRES_IMAGE = "localhost/pgop-postgres:dev"
CRDS = Path(__file__).resolve().parents[1] / "crds"


def _pod_phase(kubectl, ns, name):
    return kubectl.json("-n", ns, "get", "pod", name)["status"].get("phase")


def _wait_pod_done(kubectl, ns, name, timeout=120):
    try:
        return kubectl.wait_for(lambda: _pod_phase(kubectl, ns, name) in ("Succeeded", "Failed")
                                and _pod_phase(kubectl, ns, name), f"pod {name} to finish", timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{kubectl('-n', ns, 'describe', 'pod', name, check=False).stdout}") from None


def test_nodes_are_ready(kubectl, local_env):
    """The host node, and the extra nodes of `make up NODES=3` when they are up: all Ready."""
    nodes = kubectl.json("get", "nodes")["items"]
    wanted = {n for n in local_env.get("PGOP_NODES", "").split(",") if n} or {"pgop-node"}
    assert {n["metadata"]["name"] for n in nodes} == wanted
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert ready["Ready"] == "True", node["status"]["conditions"]
        assert node["status"]["nodeInfo"]["kubeletVersion"].startswith("v1.34.")


def test_kubectl_reports_the_built_version(kubectl):
    v = json.loads(kubectl("version", "-o", "json").stdout)
    assert v["clientVersion"]["gitVersion"] == v["serverVersion"]["gitVersion"]
    assert v["serverVersion"]["gitVersion"].startswith("v1.34.")


def test_postgres_image_pod_writes_to_its_volume(kubectl, namespace):
    ns = namespace
    kubectl("-n", ns, "apply", "-f", "-", input=f"""
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data}}
spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: writer}}
spec:
  restartPolicy: Never
  # no root anywhere: the default class's volumes take the pod's fsGroup
  securityContext: {{runAsUser: 999, runAsGroup: 999, fsGroup: 999, runAsNonRoot: true}}
  containers:
  - name: postgres
    image: {POSTGRES_IMAGE}
    command: [sh, -c, "postgres --version | tee /data/version && id -u"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes: [{{name: data, persistentVolumeClaim: {{claimName: data}}}}]
""")
    assert _wait_pod_done(kubectl, ns, "writer") == "Succeeded"
    out = kubectl("-n", ns, "logs", "writer").stdout
    assert "postgres (PostgreSQL) 15." in out
    assert out.strip().splitlines()[-1] == "999"  # not root
    pvc = kubectl.json("-n", ns, "get", "pvc", "data")
    assert pvc["status"]["phase"] == "Bound"
    assert pvc["spec"]["storageClassName"] == "standard"
    # a second pod on the same claim sees what the first one wrote
    kubectl("-n", ns, "apply", "-f", "-", input=f"""
apiVersion: v1
kind: Pod
metadata: {{name: reader}}
spec:
  restartPolicy: Never
  securityContext: {{runAsUser: 999}}
  containers:
  - name: c
    image: {POSTGRES_IMAGE}
    command: [cat, /data/version]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes: [{{name: data, persistentVolumeClaim: {{claimName: data}}}}]
""")
    assert _wait_pod_done(kubectl, ns, "reader") == "Succeeded"
    assert "postgres (PostgreSQL) 15." in kubectl("-n", ns, "logs", "reader").stdout


def test_pod_reaches_a_service_by_dns_name(kubectl, namespace):
    ns = namespace
    kubectl("-n", ns, "apply", "-f", "-", input=f"""
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec:
  containers:
  - name: web
    image: {POSTGRES_IMAGE}
    command: [sh, -c, "mkdir -p /tmp/www && echo hello-from-web > /tmp/www/index.html && exec python3 -m http.server 8080 -d /tmp/www"]
    ports: [{{containerPort: 8080}}]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
""")
    kubectl("-n", ns, "wait", "--for=condition=Ready", "pod/web", "--timeout=120s")
    # kube-proxy programs the new endpoint a moment after the pod is Ready: retry like a client
    # would (bounded), and say how long it took.
    script = ("import socket,time,urllib.request\n"
              f"print(socket.gethostbyname('web.{ns}.svc.cluster.local'))\n"
              "for attempt in range(30):\n"
              "    try:\n"
              f"        print(urllib.request.urlopen('http://web.{ns}.svc.cluster.local/', timeout=5).read().decode()); break\n"
              "    except OSError as e:\n"
              "        last = e; time.sleep(1)\n"
              "else:\n"
              "    raise SystemExit(f'service unreachable: {last}')\n")
    kubectl("-n", ns, "run", "client", f"--image={POSTGRES_IMAGE}", "--restart=Never",
            "--command", "--", "python3", "-c", script)
    assert _wait_pod_done(kubectl, ns, "client") == "Succeeded", \
        kubectl("-n", ns, "logs", "client", check=False).stdout
    ip, body = kubectl("-n", ns, "logs", "client").stdout.split()[:2]
    svc_ip = kubectl.json("-n", ns, "get", "svc", "web")["spec"]["clusterIP"]
    assert ip == svc_ip
    assert body == "hello-from-web"


def test_pod_reaches_the_api_with_its_service_account(kubectl, namespace):
    ns = namespace
    script = ("import json,ssl,urllib.request;"
              "d='/var/run/secrets/kubernetes.io/serviceaccount/';"
              "ctx=ssl.create_default_context(cafile=d+'ca.crt');"
              "r=urllib.request.Request('https://kubernetes.default.svc/version',"
              "headers={'Authorization':'Bearer '+open(d+'token').read()});"
              "print(json.load(urllib.request.urlopen(r,context=ctx,timeout=10))['gitVersion'])")
    kubectl("-n", ns, "run", "api", f"--image={POSTGRES_IMAGE}", "--restart=Never",
            "--command", "--", "python3", "-c", script)
    assert _wait_pod_done(kubectl, ns, "api") == "Succeeded", \
        kubectl("-n", ns, "logs", "api", check=False).stdout
    assert kubectl("-n", ns, "logs", "api").stdout.strip().startswith("v1.34.")


@pytest.fixture(scope="module")
def crds(kubectl):
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    for f in sorted(CRDS.glob("*.yaml")):
        name = f.stem + ".pgop.io"
        kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


def test_crds_install_and_cel_refuses_bad_cluster(kubectl, namespace, crds):
    bad = f"""
apiVersion: pgop.io/v1
kind: PgCluster
metadata: {{name: orders, namespace: {namespace}}}
spec:
  instances: 2
  postgresVersion: 15
  synchronousReplicas: 2
  storage: {{size: 1Gi}}
  bootstrap: {{initdb: {{database: app, owner: app}}}}
"""
    p = kubectl("apply", "-f", "-", input=bad, check=False)
    assert p.returncode != 0
    assert "synchronousReplicas" in p.stderr, p.stderr
    good = bad.replace("synchronousReplicas: 2", "synchronousReplicas: 1")
    kubectl("apply", "-f", "-", input=good)
    got = kubectl.json("-n", namespace, "get", "pgcluster", "orders")
    assert got["spec"]["synchronousReplicas"] == 1
