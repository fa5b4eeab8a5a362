"""Metrics end to end: a real Prometheus (built by the harness from the Go module proxy) scrapes a
PgCluster's pods on their `metrics` port and the operator's /metrics, evaluates
deploy/prometheus/pgop-alerts.yaml, and the alerts fire after a fault:

- S3 cut off (a relay taken down, as in e2e/test_backup.py) -> PgopArchivingFailing, naming the segment;
- the primary fenced (Postgres stopped, never failed over) -> PgopPrimaryDown (the operator's
  view) and PgopPrimaryNotRunning (the agent's view).

The rules are the shipped file with every `for:` cut to 10 s (promtool's unit tests in
tests/unit/test_alert_rules.py hold the real durations); Prometheus scrapes and evaluates every 2 s.
Static targets: the pod's IP (the node's pod network is routed on this machine) and the operator's
loopback port.
"""
from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from e2e.harness import build
from e2e.harness.services import free_port
from e2e.relay import Relay
from e2e.test_backup import BUCKET, s3_secret
from e2e.test_pgcluster import eventually

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "pgop-alerts.yaml"
NAME = "mon"
METRICS_PORT = 9187


def manifest(ns: str, endpoint: str) -> str:
    return f"""
apiVersion: pgop.io/v1
kind: PgCluster
metadata: {{name: {NAME}, namespace: {ns}}}
spec:
  instances: 1
  postgresVersion: 15
  storage: {{size: 1Gi}}
  bootstrap: {{initdb: {{database: app, owner: app}}}}
  backup:
    s3: {{bucket: {BUCKET}, path: metrics-{ns}, endpoint: "{endpoint}", credentialsSecret: s3-creds}}
"""


class Prometheus:
    def __init__(self, workdir: Path, targets: dict[str, list[str]]):
        binary = build.by_name()["prometheus"].bindir / "prometheus"
        if not binary.exists():
            pytest.skip("prometheus is not built (python -m e2e.harness build prometheus)")
        self.port = free_port()
        rules = re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 10s", RULES.read_text())
        (workdir / "rules.yaml").write_text(rules)
        scrape_configs = [{"job_name": job, "static_configs": [{"targets": hosts}]} for job, hosts in targets.items()]
        (workdir / "prometheus.yml").write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "2s", "evaluation_interval": "2s", "scrape_timeout": "2s"},
            "rule_files": [str(workdir / "rules.yaml")],
            "scrape_configs": scrape_configs,
        }))
        self.log = open(workdir / "prometheus.log", "ab")
        self.process = subprocess.Popen(
            [str(binary), f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        eventually(lambda: self.get("/-/ready") is not None, "prometheus ready", timeout=60)

    def get(self, path: str, **params: str):
        url = f"http://127.0.0.1:{self.port}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
        return json.loads(body) if path.startswith("/api/") else body

    def query(self, promql: str) -> list[dict]:
        return self.get("/api/v1/query", query=promql)["data"]["result"]

    def firing(self, alert: str, namespace: str) -> list[dict]:
        """The alert's firing instances for one namespace (the operator reports every namespace's
        clusters, other tests' and benchmarks' too)."""
        alerts = self.get("/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"].get("alertname") == alert and a["state"] == "firing"
                and a["labels"].get("namespace") == namespace]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def test_prometheus_scrapes_the_pods_and_the_operator_and_the_alerts_fire(kubectl, namespace, operator, local_env,
                                                                         tmp_path, request):
    ns = namespace
    host, port = local_env["AWS_ENDPOINT_URL_S3"].split("//")[1].split(":")
    relay = Relay((host, int(port)), bind=local_env["PGOP_NODE_IP"])
    request.addfinalizer(relay.close)
    s3_secret(kubectl, ns, local_env)
    kubectl("apply", "-f", "-", input=manifest(ns, f"http://{local_env['PGOP_NODE_IP']}:{relay.port}"))
    pod = f"{NAME}-0"
    eventually(lambda: kubectl.json("-n", ns, "get", "pgcluster", NAME).get("status", {}).get("phase") == "Ready",
               "the PgCluster Ready", timeout=300, interval=2)
    pod_ip = kubectl.json("-n", ns, "get", "pod", pod)["status"]["podIP"]
    ports = {p["name"]: p["containerPort"]
             for p in kubectl.json("-n", ns, "get", "pod", pod)["spec"]["containers"][0]["ports"]}
    assert ports["metrics"] == METRICS_PORT

    prometheus = Prometheus(tmp_path, {"pgop-instances": [f"{pod_ip}:{METRICS_PORT}"],
                                       "pgop-operator": [f"127.0.0.1:{operator.metrics_port}"]})
    try:
        # both targets up; what a user checks first: the role, and the operator's view
        eventually(lambda: len(prometheus.query("up == 1")) == 2, "both targets scraped", timeout=60)
        [role] = prometheus.query(f'pgop_postgres_role{{cluster="{NAME}", role="primary"}}')
        assert role["metric"]["pginstance"] == pod and role["metric"]["namespace"] == ns
        assert role["value"][1] == "1"
        eventually(lambda: prometheus.query(f'pgop_cluster_primary_ready{{namespace="{ns}", cluster="{NAME}"}} == 1'),
                   "the operator reports the primary ready", timeout=60)
        assert prometheus.query(f'pgop_objects{{kind="PgCluster", namespace="{ns}", phase="Ready"}} == 1')
        assert prometheus.query('sum(pgop_reconciles_total{kind="PgCluster"}) > 0')

        # S3 away: a closed segment fails to reach it
        relay.down()
        kubectl("-n", ns, "exec", pod, "-c", "postgres", "--", "psql", "-XAtq", "-d", "app", "-c",
                "CREATE TABLE t AS SELECT generate_series(1, 1000) AS n; SELECT pg_switch_wal()")
        failing = eventually(lambda: prometheus.firing("PgopArchivingFailing", ns), "PgopArchivingFailing fires",
                             timeout=180, interval=2)
        assert failing[0]["labels"]["pginstance"] == pod
        assert re.fullmatch(r"[0-9A-F]{24}", failing[0]["labels"]["segment"])
        assert not prometheus.firing("PgopPrimaryDown", ns)

        # the primary fenced: Postgres stops, no failover (one instance; a fenced primary stays)
        kubectl("-n", ns, "annotate", "pgcluster", NAME, 'pgop.io/fenced-instances=["*"]', "--overwrite")
        down = eventually(lambda: prometheus.firing("PgopPrimaryDown", ns), "PgopPrimaryDown fires",
                          timeout=180, interval=2)
        assert down[0]["labels"]["cluster"] == NAME and down[0]["labels"]["namespace"] == ns
        not_running = eventually(lambda: prometheus.firing("PgopPrimaryNotRunning", ns), "PgopPrimaryNotRunning fires",
                                 timeout=120, interval=2)
        assert not_running[0]["labels"]["pginstance"] == pod
        [up] = prometheus.query(f'pgop_postgres_up{{pginstance="{pod}"}}')
        assert up["value"][1] == "0"
        assert not prometheus.firing("PgopInstanceDown", ns)  # fenced on purpose

        size = len(prometheus.get("/federate", **{"match[]": '{job="pgop-instances"}'}))
        print(f"one instance's scrape, as federated: {size} bytes")
    finally:
        prometheus.stop()
