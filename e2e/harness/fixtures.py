"""pytest fixtures for the real components of the local environment (a pytest plugin)."""
from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest

from . import envfile
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
    and directory); e2e tests start the operator of this checkout themselves."""
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
    if before is not None and not proc.running("operator"):
        argv, environ, cwd = before
        proc.start("operator", argv, env=environ, cwd=cwd)


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


@pytest.fixture
def namespace(kubectl, request):
    """A fresh namespace for one test, deleted afterwards."""
    name = f"t-{request.node.name[:30].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    name = "".join(c for c in name if c.isalnum() or c == "-")
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def local_postgres():
    """A fresh PostgreSQL 15 server (Debian's) as the postgres OS user on a free loopback port."""
    pg = LocalPostgres()
    pg.initdb()
    pg.start()
    yield pg
    pg.cleanup()
