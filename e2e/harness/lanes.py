"""Lanes: the e2e tests run in two pytest-xdist workers at once (`make test`), each module whole in
one worker (`--dist loadfile`). Each worker is a lane with its own namespaces (`t<lane>-...`) and
its own operator processes, which watch only those namespaces; so two modules' operators never act
on the same objects. Without xdist there is one lane: namespaces `t-...`, an operator on all of
them. Modules that need the whole cluster to themselves (an operator installed in the cluster,
leader election, the environment's admission policies replaced) are marked `clusterwide` and run
after the lanes, alone."""
from __future__ import annotations

import os

OPERATOR_PID = "operator-test"  # + the lane, e.g. operator-test-gw0 (`make down` stops any of them)


def lane() -> str:
    """The xdist worker's id (gw0, gw1, ...), or "" outside xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "")


def namespace_prefix() -> str:
    return f"t{lane()}-"


def operator_scope() -> list[str]:
    """`pgop run` arguments: the lane's namespaces (a kopf glob), or all of them."""
    return ["--namespace", f"{namespace_prefix()}*"] if lane() else ["--all-namespaces"]


def operator_pid_name(base: str = OPERATOR_PID) -> str:
    return f"{base}-{lane()}" if lane() else base
