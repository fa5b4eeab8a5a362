"""Installing pgop as a user does (issue 14): with Helm (deploy/helm/pgop) and with kustomize
(deploy/kustomization.yaml), on the real cluster, with the operator image at the package version.

Helm: install (namespaced mode, in a namespace of its own that enforces the restricted Pod
Security Standard), a PgCluster Ready, an upgrade to a newer build (a second tag of the operator
image) that rolls the operator and leaves the database running with its data, uninstall (CRDs,
PgCluster and data kept), install again (it picks the cluster up and deletes it on request).
Kustomize: apply, a PgCluster Ready, delete. Install and upgrade times are printed (`-s`).

The environment's own admission policies (deploy/admission.yaml, applied by the harness) are the
same cluster-scoped objects the chart and the base install: each test removes them first and puts
them back afterwards, whatever happens. The operators these tests start run only inside a test and
are removed by its fixtures (the Helm one watches the test's namespace only)."""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from e2e.harness import build, images, nodes, paths
from e2e.harness.containerd import ctr
from e2e.harness.fixtures import create_test_namespace
from e2e.test_pgcluster import eventually, exec_psql, manifest, wait_ready

pytestmark = [pytest.mark.cluster, pytest.mark.clusterwide]

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "deploy" / "helm" / "pgop"
BASE = REPO / "deploy"
ADMISSION = REPO / "deploy" / "admission.yaml"
VERSION = images.package_version()
# The "newer build": the same image under a second tag, so the Deployment's pod template changes
# as it does for a real new version, without a second podman build.
UPGRADE_TAG = f"{VERSION}-e2e-upgrade"
CRDS = ("pgclusters.pgop.io", "pginstances.pgop.io", "pgbackups.pgop.io", "mysqldbs.pgop.io")
TIMINGS: dict[str, float] = {}


class Helm:
    def __init__(self, binary: Path, kubeconfig: str, home: Path):
        self.binary, self.kubeconfig = binary, kubeconfig
        self.env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"),
                    "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        p = subprocess.run([str(self.binary), "--kubeconfig", self.kubeconfig, *args], text=True,
                           capture_output=True, env=self.env, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
        return p

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(self.binary), "--kubeconfig", self.kubeconfig, *args], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env)


@pytest.fixture(scope="module")
def helm(local_env, tmp_path_factory) -> Helm:
    component = build.by_name()["helm"]
    if not component.built():  # `make up` builds it; an environment from before it did may not have it
        build.build(component)
    return Helm(component.bindir / "helm", local_env["KUBECONFIG"], tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="module")
def operator_image(local_env) -> str:
    """The operator image of this checkout at the package version, in the host node's containerd,
    plus the upgrade's second tag (removed afterwards)."""
    image = images.operator_image()
    nodes.refresh_images(nodes.registered())  # the kustomize base's pods may land on an extra node
    newer = f"{image.rsplit(':', 1)[0]}:{UPGRADE_TAG}"
    ctr("images", "tag", "--force", image, newer)
    yield image
    ctr("images", "rm", newer, check=False)


@pytest.fixture
def admission_by_the_install(kubectl):
    """Lets the install own the admission policies; the environment's come back afterwards."""
    kubectl("delete", "-f", str(ADMISSION), "--ignore-not-found", "--wait=true")
    yield
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ADMISSION))


def _operator_pods(kubectl, ns: str, terminating: bool = False) -> list[dict]:
    """The operator's pods (those on their way out too, if asked)."""
    return [p for p in kubectl.json("-n", ns, "get", "pods", "-l", "app=pgop-operator")["items"]
            if terminating or p["metadata"].get("deletionTimestamp") is None]


def _all_ready(kubectl, ns: str, count: int = 2) -> list[dict] | None:
    pods = _operator_pods(kubectl, ns)
    return pods if len(pods) == count and all(_ready(p) for p in pods) else None


def _ready(pod: dict) -> bool:
    return (any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])))


def _leader(kubectl, ns: str) -> str | None:
    """The operator pod holding the Lease (its identity is `<pod>_<uuid>`)."""
    p = kubectl("-n", ns, "get", "lease", "pgop-operator", "-o", "jsonpath={.spec.holderIdentity}", check=False)
    holder = p.stdout.strip() if p.returncode == 0 else ""
    for pod in _operator_pods(kubectl, ns):
        if holder.startswith(pod["metadata"]["name"] + "_"):
            return pod["metadata"]["name"]
    return None


def _log(kubectl, ns: str, pod: str) -> str:
    return kubectl("-n", ns, "logs", pod, check=False).stdout


def _strip_finalizers(kubectl, ns: str) -> None:
    """After a failed test with no operator left: the objects' kopf finalizers would hold the
    namespace in Terminating for good."""
    for kind in ("pgbackups", "pgclusters", "pginstances"):
        names = kubectl("-n", ns, "get", kind, "-o", "name", check=False).stdout.split()
        for name in names:
            kubectl("-n", ns, "patch", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)


def _helm_args(db_ns: str, tag: str | None = None) -> list[str]:
    args = [str(CHART), "--set", f"watchNamespaces={{{db_ns}}}",
            # the images of this test are in the host node's containerd
            "--set-string", f"nodeSelector.kubernetes\\.io/hostname={paths.NODE_NAME}",
            "--wait", "--timeout", "180s"]
    return args + (["--set", f"image.tag={tag}"] if tag else [])


def test_helm_install_upgrade_uninstall_keeps_crds_and_data(kubectl, namespace, helm, operator_image,
                                                             admission_by_the_install):
    db_ns, name = namespace, "helm"
    release_ns = f"pgop-helm-{uuid.uuid4().hex[:5]}"
    create_test_namespace(kubectl, release_ns, {"pod-security.kubernetes.io/enforce": "restricted"})
    try:
        # --- install -------------------------------------------------------------------------------
        t0 = time.monotonic()
        helm("install", "pgop", *_helm_args(db_ns), "-n", release_ns)
        TIMINGS["helm install (to both operator pods Ready)"] = time.monotonic() - t0
        [release] = json.loads(helm("list", "-n", release_ns, "-o", "json").stdout)
        assert (release["status"], release["chart"], release["app_version"]) == ("deployed", f"pgop-{VERSION}", VERSION)
        pods = kubectl.wait_for(lambda: _all_ready(kubectl, release_ns), "two operator pods Ready", 30)
        assert {p["spec"]["containers"][0]["image"] for p in pods} == {operator_image}
        for crd in CRDS:
            kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s")
        leader = kubectl.wait_for(lambda: _leader(kubectl, release_ns), "an operator pod holds the Lease", 60)
        kubectl.wait_for(lambda: f"watching {db_ns}" in _log(kubectl, release_ns, leader),
                         f"the leader watches {db_ns} only", 60)

        t0 = time.monotonic()
        kubectl("apply", "-f", "-", input=manifest(name, db_ns, instances=1, sync=0))
        wait_ready(kubectl, db_ns, name, 1, timeout=240)
        TIMINGS["PgCluster (1 instance) Ready under the Helm-installed operator"] = time.monotonic() - t0
        pod = f"{name}-0"
        # The chart's admission policy names the release's ServiceAccount; a person is refused.
        refused = kubectl("-n", db_ns, "patch", "pginstance", pod, "--type=merge", "--dry-run=server",
                          "-p", '{"spec":{"fenced":true}}', check=False)
        assert refused.returncode != 0 and "decided by the operator" in refused.stderr, refused.stderr
        exec_psql(kubectl, db_ns, pod, "create table kept (n int); insert into kept select generate_series(1, 100)")
        uid = kubectl.json("-n", db_ns, "get", "pod", pod)["metadata"]["uid"]
        started = exec_psql(kubectl, db_ns, pod, "select pg_postmaster_start_time()")

        # --- upgrade to a newer build: the operator rolls, the database does not ----------------------
        before = {p["metadata"]["name"] for p in pods}
        t0 = time.monotonic()
        upgrade = helm.popen("upgrade", "pgop", *_helm_args(db_ns, UPGRADE_TAG), "-n", release_ns)
        phases, answers = set(), []
        while upgrade.poll() is None:
            phases.add((kubectl.json("-n", db_ns, "get", "pgcluster", name).get("status") or {}).get("phase"))
            answers.append(kubectl("-n", db_ns, "exec", pod, "-c", "postgres", "--", "psql", "-XAtq", "-d", "app",
                                   "-c", "select count(*) from kept", check=False).stdout.strip())
            time.sleep(0.5)
        output = upgrade.stdout.read() if upgrade.stdout else ""
        assert upgrade.returncode == 0, output
        TIMINGS["helm upgrade (new operator image, rolled, both pods Ready)"] = time.monotonic() - t0
        pods = kubectl.wait_for(lambda: _all_ready(kubectl, release_ns), "two operator pods Ready", 60)
        assert not before & {p["metadata"]["name"] for p in pods}, "the operator pods were not replaced"
        assert {p["spec"]["containers"][0]["image"] for p in pods} == {f"{operator_image.rsplit(':', 1)[0]}:{UPGRADE_TAG}"}
        kubectl.wait_for(lambda: (_leader(kubectl, release_ns) or "") not in before | {""},
                         "a new operator pod holds the Lease", 60)
        # The database stayed up through it: no phase but Ready, every query answered, same process.
        assert phases == {"Ready"}, phases
        assert answers and set(answers) == {"100"}, answers
        assert kubectl.json("-n", db_ns, "get", "pod", pod)["metadata"]["uid"] == uid
        assert exec_psql(kubectl, db_ns, pod, "select pg_postmaster_start_time()") == started
        # and the new leader does the work: a reloadable setting reaches the instance
        kubectl("-n", db_ns, "patch", "pgcluster", name, "--type=merge", "-p", '{"spec":{"parameters":{"work_mem":"8MB"}}}')
        eventually(lambda: exec_psql(kubectl, db_ns, pod, "show work_mem") == "8MB", "work_mem from the new operator", 90)
        # and records it as done: the cluster is Ready again (Updating until the instance reports the new spec)
        eventually(lambda: (kubectl.json("-n", db_ns, "get", "pgcluster", name).get("status") or {}).get("phase") == "Ready",
                   "the PgCluster Ready again after the change", 60)
        assert exec_psql(kubectl, db_ns, pod, "select pg_postmaster_start_time()") == started

        # --- uninstall: the operator goes, the CRDs, the cluster and its data stay --------------------
        t0 = time.monotonic()
        helm("uninstall", "pgop", "-n", release_ns, "--wait", "--timeout", "120s")
        TIMINGS["helm uninstall"] = time.monotonic() - t0
        kubectl.wait_for(lambda: not _operator_pods(kubectl, release_ns, terminating=True), "the operator pods gone", 120)
        for gone in (["clusterrole", "pgop-operator-namespaced"], ["validatingadmissionpolicy", "pgop-pginstance-roles"],
                     ["-n", db_ns, "rolebinding", "pgop-operator"]):
            assert "NotFound" in kubectl("get", *gone, check=False).stderr, gone
        for crd in CRDS:
            kubectl("get", "crd", crd)
        assert (kubectl.json("-n", db_ns, "get", "pgcluster", name).get("status") or {}).get("phase") == "Ready"
        assert kubectl.json("-n", db_ns, "get", "pod", pod)["metadata"]["uid"] == uid
        assert exec_psql(kubectl, db_ns, pod, "select count(*) from kept") == "100"

        # --- install again: the kept cluster is the new operator's to manage, and to delete ------------
        t0 = time.monotonic()
        helm("install", "pgop", *_helm_args(db_ns), "-n", release_ns)
        TIMINGS["helm install again (CRDs present)"] = time.monotonic() - t0
        wait_ready(kubectl, db_ns, name, 1, timeout=120)
        assert exec_psql(kubectl, db_ns, pod, "select pg_postmaster_start_time()") == started
        kubectl("-n", db_ns, "delete", "pgcluster", name, "--timeout=120s", timeout=150)
        helm("uninstall", "pgop", "-n", release_ns, "--wait", "--timeout", "120s")
    finally:
        helm("uninstall", "pgop", "-n", release_ns, "--wait", "--timeout", "120s", check=False)
        _strip_finalizers(kubectl, db_ns)
        kubectl("delete", "namespace", release_ns, "--wait=true", "--timeout=120s", check=False)
        _print_timings()


def test_kustomize_base_applies_runs_a_cluster_and_deletes(kubectl, namespace, operator_image,
                                                           admission_by_the_install):
    name = "kustomized"
    try:
        t0 = time.monotonic()
        kubectl("apply", "-k", str(BASE))
        kubectl("-n", "pgop-system", "rollout", "status", "deployment/pgop-operator", "--timeout=180s", timeout=200)
        TIMINGS["kubectl apply -k base (to rollout complete)"] = time.monotonic() - t0
        pods = kubectl.wait_for(lambda: _all_ready(kubectl, "pgop-system"), "two operator pods Ready", 60)
        assert {p["spec"]["containers"][0]["image"] for p in pods} == {operator_image}
        assert kubectl.json("get", "namespace", "pgop-system")["metadata"]["labels"][
            "pod-security.kubernetes.io/enforce"] == "restricted"

        t0 = time.monotonic()
        kubectl("apply", "-f", "-", input=manifest(name, namespace, instances=1, sync=0))
        wait_ready(kubectl, namespace, name, 1, timeout=240)
        TIMINGS["PgCluster (1 instance) Ready under the kustomize-installed operator"] = time.monotonic() - t0
        leader = kubectl.wait_for(lambda: _leader(kubectl, "pgop-system"), "an operator pod holds the Lease", 60)
        assert f"{namespace}/{name}: create PgInstance {name}-0" in _log(kubectl, "pgop-system", leader)
        kubectl("-n", namespace, "delete", "pgcluster", name, "--timeout=120s", timeout=150)

        t0 = time.monotonic()
        kubectl("delete", "-k", str(BASE), "--wait=true", "--timeout=120s", timeout=150)
        TIMINGS["kubectl delete -k base"] = time.monotonic() - t0
        assert "NotFound" in kubectl("get", "namespace", "pgop-system", check=False).stderr
        for crd in CRDS:  # the base has no CRDs: they were never its to delete
            kubectl("get", "crd", crd)
    finally:
        kubectl("delete", "-k", str(BASE), "--ignore-not-found", "--wait=true", "--timeout=120s", check=False,
                timeout=150)
        _strip_finalizers(kubectl, namespace)
        _print_timings()


def _print_timings() -> None:
    for what, seconds in TIMINGS.items():
        print(f"[install] {what}: {seconds:.1f} s")
