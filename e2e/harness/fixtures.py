"""pytest fixtures for the real components of the local environment (a pytest plugin)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from . import envfile, lanes, paths
from .pg import LocalPostgres


@pytest.fixture(scope="session")
def local_env(no_operator_of_make_up) -> dict[str, str]:
    """The environment's endpoints and credentials (env.json of `make up`)."""
    try:
        return envfile.load()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def no_operator_of_make_up():
    """Tests that use the cluster must not race an operator the user started with `make up`: it
    would act on the objects the tests create (e.g. write a PgBackup's status while a test does).
    It is stopped for the run and started again afterwards, as it was (same command, environment
    and directory); e2e tests start the operator of this checkout themselves. In a lane of a
    parallel run it stays stopped (a lane that ends first would start it beside the other lane's
    tests); `make test` does not start it, `make up` does."""
    from pathlib import Path

    from . import proc
    pid = proc.pid_of("operator")
    before = None
    if pid:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().rstrip(b"\0").split(b"\0")
            before = ([a.decode() for a in argv],
                      dict(e.decode().split("=", 1) for e in environ if b"=" in e),
                      str(Path(f"/proc/{pid}/cwd").resolve()))
        except OSError:
            before = None
        proc.stop("operator")
    yield
    if before is not None and lanes.lane():
        print("the operator of `make up` was stopped for the tests: `make up` starts it again")
    elif before is not None and not proc.running("operator"):
        argv, environ, cwd = before
        proc.start("operator", argv, env=environ, cwd=cwd)


@pytest.fixture(scope="module")
def operator(local_env, tmp_path_factory):
    """The operator of this checkout, as `make up` runs it (its identity, moto, Vault with a
    least-privilege token, Consul), for one test module; its log in the module's tmp dir."""
    from e2e.operator import OperatorProcess

    from .__main__ import operator_env
    op = OperatorProcess(operator_env(local_env), tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    yield op
    op.stop()


@pytest.fixture(scope="session")
def kube_api(local_env):
    from kubernetes import config
    return config.new_client_from_config(config_file=local_env["KUBECONFIG"])


class Kubectl:
    def __init__(self, env: dict[str, str]):
        self.binary, self.kubeconfig = env["KUBECTL"], env["KUBECONFIG"]

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess:
        p = subprocess.run([self.binary, "--kubeconfig", self.kubeconfig, *args], input=input,
                           text=True, capture_output=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
        return p

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "-o", "json").stdout)

    def wait_for(self, predicate, what: str, timeout: float = 120, interval: float = 1.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture(scope="session")
def kubectl(local_env) -> Kubectl:
    return Kubectl(local_env)


# Every namespace a test makes carries this label: a run killed midway (a CI timeout) leaves its
# namespaces, and the clusters in them, behind; the next run deletes them before it starts
# (leftovers_of_killed_runs), so they take no CPU from it.
TEST_NAMESPACE_LABEL = ("app.kubernetes.io/part-of", "pgop-tests")


def create_test_namespace(kubectl, name: str, labels: dict[str, str] | None = None) -> str:
    """Creates a namespace labelled as a test's (plus `labels`, e.g. a Pod Security level)."""
    key, value = TEST_NAMESPACE_LABEL
    kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {key: value, **(labels or {})}}}))
    return name


PGOP_KINDS = "pgclusters.pgop.io,pgbackups.pgop.io,mysqldbs.pgop.io,pginstances.pgop.io"


def delete_test_namespace(kubectl, name: str, timeout: int = 60) -> None:
    """The namespace's pgop objects first, while the test's operator still runs and can finish
    them (their finalizers: published credentials, backups with deletionPolicy Delete), then the
    namespace itself without waiting. A namespace deleted with its finalizers still pending stays
    Terminating, and in a lane it would stall the next operator's start (see wait_for_lane_namespaces)."""
    kubectl("-n", name, "delete", PGOP_KINDS, "--all", "--wait=true", f"--timeout={timeout}s",
            check=False, timeout=timeout + 30)
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def wait_for_lane_namespaces(kubectl, timeout: float = 90) -> None:
    """Before a lane's operator starts: no namespace of the lane may be Terminating. kopf watches
    a lane's namespaces by pattern and holds every handler until each watched kind is indexed; a
    namespace deleted while it lists leaves the indexing unfinished and the operator idle for
    good (seen in the first parallel run). A namespace still Terminating after `timeout` (pgop
    finalizers no operator processed, e.g. after a killed test) has them removed: its test is over."""
    prefix = lanes.namespace_prefix()
    deadline = time.monotonic() + timeout
    while True:
        found = kubectl("get", "namespaces", "-o", "json", check=False)
        terminating = [ns["metadata"]["name"] for ns in (json.loads(found.stdout)["items"] if found.returncode == 0 else [])
                       if ns["metadata"]["name"].startswith(prefix) and ns["metadata"].get("deletionTimestamp")]
        if not terminating:
            return
        if time.monotonic() > deadline:
            for ns in terminating:
                release_finalizers(kubectl, ns)
            deadline = time.monotonic() + timeout
        time.sleep(1)


@pytest.fixture(scope="session", autouse=True)
def leftovers_of_killed_runs(request):
    """Namespaces an earlier, killed test run left (labelled as tests', or named as the namespace
    fixture names them): deleted before this run starts, without waiting. Only when the run uses
    the environment (a unit-only run touches nothing), and not in a lane of a parallel run: the
    other lane's namespaces are new, not left over (`make test` cleans before it starts the lanes:
    `python -m e2e.harness forget-tests`)."""
    if lanes.lane() or request.config.pluginmanager.hasplugin("dsession"):
        return
    if not any("integration" in str(item.path) or "/e2e/" in str(item.path) for item in request.session.items):
        return
    from . import proc
    if any(proc.running(pidfile.stem) for pidfile in paths.PIDS.glob("operator-test*.pid")):
        return  # another test run is going on (its operator runs): its namespaces are not leftovers
    try:
        env = envfile.load()
    except RuntimeError:
        return
    delete_leftover_namespaces(Kubectl(env))


def delete_leftover_namespaces(kubectl) -> list[str]:
    """Deletes (without waiting) every test namespace: labelled as one, or named as the namespace
    fixture named them before the label. Returns their names."""
    key, value = TEST_NAMESPACE_LABEL
    found = kubectl("get", "namespaces", "-o", "json", check=False)
    if found.returncode != 0:
        return []
    tests = [ns for ns in json.loads(found.stdout)["items"]
             if (ns["metadata"].get("labels") or {}).get(key) == value or ns["metadata"]["name"].startswith("t-")]
    stale = [ns["metadata"]["name"] for ns in tests if not ns["metadata"].get("deletionTimestamp")]
    if stale:
        print(f"deleting {len(stale)} namespace(s) left by an earlier test run: {', '.join(stale)}")
        kubectl("delete", "namespace", "--wait=false", "--ignore-not-found", *stale, check=False)
    # Already Terminating, held by pgop finalizers no operator will process now (the run that
    # made them was killed): released, their tests are over.
    for ns in [ns["metadata"]["name"] for ns in tests if ns["metadata"].get("deletionTimestamp")]:
        release_finalizers(kubectl, ns)
    return stale


def release_finalizers(kubectl, namespace: str) -> None:
    for obj in kubectl("-n", namespace, "get", PGOP_KINDS, "-o", "name", check=False).stdout.split():
        kubectl("-n", namespace, "patch", obj, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)


@pytest.fixture
def namespace(kubectl, request):
    """A fresh namespace for one test, deleted afterwards."""
    name = f"{lanes.namespace_prefix()}{request.node.name[:30].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    name = "".join(c for c in name if c.isalnum() or c == "-")
    create_test_namespace(kubectl, name)
    yield name
    delete_test_namespace(kubectl, name)


@pytest.fixture
def local_postgres():
    """A fresh PostgreSQL 15 server (Debian's) as the postgres OS user on a free loopback port."""
    pg = LocalPostgres()
    pg.initdb()
    pg.start()
    yield pg
    pg.cleanup()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "nodes: needs the three-node local cluster (make up NODES=3); `make test` runs "
                   "these as its second tier, after bringing up the two extra nodes")
    config.addinivalue_line(
        "markers", "clusterwide: needs the cluster to itself (an operator installed in it, leader "
                   "election, the environment's admission policies replaced); `make test` runs these "
                   "after the parallel lanes (e2e.harness.lanes), alone")


class ClusterNodes:
    """The nodes of the local cluster and the harness's fault commands, for tests.

    `extra` are the nodes a test may fault (the host node carries the control plane). Each fault
    is the CLI a person uses, `python -m e2e.harness node ACTION NODE`."""

    def __init__(self, env: dict[str, str], kubectl: Kubectl):
        self.kubectl = kubectl
        self.all = [n for n in env.get("PGOP_NODES", "").split(",") if n]
        self.extra = [n for n in env.get("PGOP_EXTRA_NODES", "").split(",") if n]

    def harness(self, *args: str, timeout: float = 300) -> str:
        p = subprocess.run([sys.executable, "-m", "e2e.harness", "node", *args], cwd=str(paths.REPO),
                           text=True, capture_output=True, timeout=timeout)
        if p.returncode != 0:
            raise AssertionError(f"harness node {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
        return p.stdout

    def kill(self, node: str, keep_link: bool = False) -> None:
        self.harness("kill", node, *(["--keep-link"] if keep_link else []))

    def restart(self, node: str, wait: bool = True) -> None:
        self.harness("restart", node, *([] if wait else ["--no-wait"]))

    def freeze(self, node: str) -> None:
        self.harness("freeze", node)

    def thaw(self, node: str) -> None:
        self.harness("thaw", node)

    def partition(self, node: str, apiserver_only: bool = False) -> None:
        self.harness("partition", node, *(["--from-apiserver-only"] if apiserver_only else []))

    def heal(self, node: str) -> None:
        self.harness("heal", node)

    def state(self) -> dict[str, dict]:
        """name -> {state: running|frozen|killed|degraded, link, partition, processes, ip, ...}"""
        return {r["name"]: r for r in json.loads(self.harness("list", "--json"))}

    def drain(self, node: str, timeout: float = 240) -> subprocess.CompletedProcess:
        """`kubectl drain` as a person runs it before node maintenance: cordon, then evict every
        pod (evictions a PodDisruptionBudget refuses are retried until `timeout`)."""
        return self.kubectl("drain", node, "--ignore-daemonsets", "--delete-emptydir-data",
                            f"--timeout={int(timeout)}s", check=False, timeout=timeout + 30)

    def uncordon(self, node: str) -> None:
        self.kubectl("uncordon", node)

    def reset(self) -> None:
        """Every extra node thawed, healed, uncordoned, running and Ready again (after a test, pass
        or fail)."""
        for name in self.extra:
            self.uncordon(name)
        for name, st in self.state().items():
            if st["state"] == "frozen":
                self.thaw(name)
            if st["partition"] not in ("none", "-"):
                self.heal(name)
            if st["state"] != "running" or st["link"] != "up":
                self.restart(name)
        for name in self.extra:
            self.wait_ready(name)

    def containerd_address(self, node: str) -> str:
        """The node's containerd socket (`ctr --address ... -n k8s.io task ls` finds a container's
        host PID on that node; every node's processes are visible from the host)."""
        from .nodes import containerd_address
        return str(containerd_address(node))

    def node_of(self, namespace: str, pod: str) -> str:
        return self.kubectl("get", "pod", "-n", namespace, pod, "-o",
                            "jsonpath={.spec.nodeName}").stdout.strip()

    def ready(self, node: str) -> bool:
        p = self.kubectl("get", "node", node, "-o", "json", check=False)
        if p.returncode != 0:
            return False
        conds = json.loads(p.stdout)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    def wait_ready(self, node: str, ready: bool = True, timeout: float = 180) -> float:
        """Waits until the node's Ready condition is `ready`; returns the seconds it took."""
        t0 = time.monotonic()
        self.kubectl.wait_for(lambda: self.ready(node) == ready,
                              f"node {node} {'Ready' if ready else 'NotReady'}", timeout)
        return time.monotonic() - t0


@pytest.fixture(scope="module")
def node_faults_alone():
    """Held by a test module that cuts, freezes or kills nodes, for the whole module: another such
    module (another xdist worker, another pytest) waits for it. Two at once break each other's
    fixtures: one's partition cuts the node the other's primary runs on."""
    import fcntl
    paths.STATE.mkdir(parents=True, exist_ok=True)
    with open(paths.STATE / "node-faults.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("another test module injects node faults: waiting for it to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def cluster_nodes(local_env, kubectl) -> ClusterNodes:
    """The three nodes (fails, never skips, when fewer run: `make up NODES=3`)."""
    nodes = ClusterNodes(local_env, kubectl)
    if len(nodes.all) < 3:
        pytest.fail(f"the node-level tests need three nodes, this environment has {nodes.all}: "
                    "run `make up NODES=3` (or `make test-nodes`)", pytrace=False)
    return nodes
