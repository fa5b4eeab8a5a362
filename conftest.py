# Fixtures for the real components (Kubernetes, S3, Vault, Consul, moto, PostgreSQL).
pytest_plugins = ["e2e.harness.fixtures"]

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def no_operator_of_make_up():
    """Tests must not race an operator the user started with `make up`: it would act on the
    objects the tests create (e.g. write a PgBackup's status while a test does). It is stopped for
    the run and started again afterwards; e2e tests start the operator of this checkout themselves."""
    from e2e.harness import envfile, proc
    was_running = proc.running("operator")
    if was_running:
        proc.stop("operator")
    yield
    if was_running and not proc.running("operator"):
        from e2e.harness.__main__ import start_operator
        start_operator(envfile.load())
