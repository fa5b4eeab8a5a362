"""The operator process: kopf with the handlers of pgop (PgCluster, PgInstance), rds (MysqlDb)
and backup (PgBackup) registered."""
from __future__ import annotations

import asyncio
import faulthandler
import functools
import importlib
import logging
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import kopf

from pgop.runtime import api_session
from pgop.runtime.config import is_pattern
from pgop.runtime.diffbase import SlimDiffBaseStorage

# Each package registers its handlers when imported; a package with no handlers yet is skipped.
HANDLER_MODULES = ("pgop.cluster.handlers", "pgop.rds.handlers", "pgop.backup.handlers")

# Threads that run the (sync) handlers; pgop.runtime.kube keeps a connection for each.
HANDLER_THREADS = 24

log = logging.getLogger("pgop.operator")


def load_handlers() -> list[str]:
    loaded = []
    for name in HANDLER_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real import error inside the module: surface it
                raise
            continue
        loaded.append(name)
    return loaded


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    # State lives on the objects under our own prefix, so `kubectl get -o yaml` shows it and a
    # restarted operator resumes where the last one stopped.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="pgop.io")
    # kopf's own annotation storage, minus its copy of every status and managedFields per event.
    settings.persistence.diffbase_storage = SlimDiffBaseStorage(
        prefix="pgop.io", key="last-handled-configuration")
    settings.persistence.finalizer = "pgop.io/finalizer"
    settings.posting.level = logging.INFO
    # kopf logs every handler run at INFO; keep the log for what pgop does (logger "pgop").
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    # Sync handlers run in this pool; the default (cores + 4) is six threads on a small node,
    # and every handler here waits on the API server rather than on a CPU.
    settings.execution.max_workers = HANDLER_THREADS
    # A deleted PgCluster's finalizer runs once its timed passes have stopped (pgop.runtime.paced).
    # One caught mid-pass (in a thread kopf cannot cancel) was looked at again only after kopf's
    # default of 60 s, which held `kubectl delete` for a minute; wait for the pass to end instead.
    settings.background.instant_exit_timeout = 2.0
    settings.background.cancellation_polling = 0.5


def settings_for(namespaces: Sequence[str]) -> kopf.OperatorSettings:
    """kopf's settings before start-up. Watching only namespaces named exactly (namespaced mode),
    kopf must neither list nor watch Namespaces nor CustomResourceDefinitions: those are cluster-wide
    reads the operator's RBAC does not grant there (deploy/operator-namespaced.yaml). The CRDs are
    then looked up once, at start (install crds/ before the operator). A pattern ('!solo-*') needs
    kopf to watch Namespaces, so it keeps kopf's scanning (and needs deploy/operator.yaml's RBAC)."""
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = bool(namespaces) and not any(is_pattern(ns) for ns in namespaces)
    return settings


def _watch_nodes_if_allowed() -> None:
    """Cordoned nodes come from a watch of Nodes where the operator may watch them (not with
    deploy/operator-namespaced.yaml): an index kopf cannot fill would hold every handler."""
    from pgop.cluster import indexes
    from pgop.runtime.kube import Kube
    if indexes.may_watch_nodes(Kube()):
        indexes.watch_nodes()
    else:
        log.info("Nodes may not be watched: switchovers ahead of node drains are off")


def _watch_leases(namespaces: Sequence[str]) -> None:
    """The agents' liveness Leases, listed before kopf starts (pgop.cluster.leases). An operator
    that may not read them would take every agent that renews its Lease for a silent one (and
    fail its primary over), so it does not start: its RBAC is older than its code."""
    from kubernetes.client.rest import ApiException

    from pgop.cluster import leases
    from pgop.runtime.kube import Kube
    for wait in (1, 2, 4, 8, 0):
        try:
            leases.start(Kube(), namespaces)
            return
        except Exception as error:  # noqa: BLE001 - the API server may not answer yet at start
            if isinstance(error, ApiException) and error.status in (401, 403):
                raise SystemExit("pgop: this operator may not list and watch Leases (coordination.k8s.io), "
                                 "where the agents renew their liveness: apply the RBAC of deploy/operator.yaml "
                                 "(or deploy/operator-namespaced.yaml) of this version") from None
            if not wait:
                raise
            log.warning("cannot list the agents' Leases yet (%s); again in %ss", error, wait)
            time.sleep(wait)


@dataclass(frozen=True)
class LeaderElection:
    """Run as one of several replicas: act only while holding this Lease."""
    namespace: str
    name: str = "pgop-operator"


def run(namespaces: Sequence[str], liveness: str | None = None, verbose: bool = False,
        leader_election: LeaderElection | None = None, metrics: str | None = None) -> None:
    """Watches `namespaces`, or every namespace when there are none."""
    from pgop.runtime import logs
    chosen = logs.choose_format(os.environ.get(logs.ENV_LOG_FORMAT), sys.stderr.isatty())
    # kopf's JSON lines carry the object each handler works on (`object`: kind, namespace, name).
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if chosen == logs.JSON else kopf.LogFormat.FULL)
    # `kill -USR1 <pid>` prints every thread's stack to stderr: what a stuck handler waits on.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.captureWarnings(True)  # a library's warning becomes a log line like any other
    loaded = load_handlers()
    api_session.register(namespaces)
    if "pgop.cluster.handlers" in loaded:
        _watch_nodes_if_allowed()
        _watch_leases(namespaces)
    if metrics:
        from pgop import operator_metrics
        operator_metrics.register()
        operator_metrics.serve(metrics)
    log.info("pgop operator starting with handlers from %s, watching %s", ", ".join(loaded) or "nothing",
             ", ".join(namespaces) if namespaces else "all namespaces")
    operator = functools.partial(kopf.operator, clusterwide=not namespaces, namespaces=list(namespaces),
                                 standalone=True, settings=settings_for(namespaces), liveness_endpoint=liveness)
    if leader_election is None:
        asyncio.run(operator())
    else:
        asyncio.run(_run_as_leader(operator, leader_election, liveness))


async def _run_as_leader(operator: Callable[[], Coroutine[Any, Any, None]], election: LeaderElection,
                         liveness: str | None) -> None:
    """Waits for the Lease (answering the liveness probe meanwhile: a candidate is healthy), then
    runs the operator while renewing it. Losing the Lease ends the process at once, with no
    handler left running: the container restarts as a candidate."""
    from pgop.runtime import leader
    from pgop.runtime.kube import Kube

    elector = leader.Elector(Kube(), election.namespace, election.name)
    probe = await _serve_candidate_liveness(liveness) if liveness else None
    try:
        await elector.acquire()
    finally:
        if probe is not None:
            await probe.cleanup()
    keeper = asyncio.create_task(elector.keep())
    running = asyncio.create_task(operator())
    done, _ = await asyncio.wait({keeper, running}, return_when=asyncio.FIRST_COMPLETED)
    if keeper in done:
        log.error("leader election: %s; stopping now", keeper.exception())
        logging.shutdown()
        os._exit(1)
    keeper.cancel()
    await asyncio.to_thread(elector.release)
    running.result()


async def _serve_candidate_liveness(url: str) -> aiohttp.web.AppRunner:
    parsed = urllib.parse.urlparse(url)
    app = aiohttp.web.Application()

    async def candidate(_: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        return aiohttp.web.json_response({"leader": False})
    app.router.add_get(parsed.path or "/", candidate)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, parsed.hostname, parsed.port or 80).start()
    return runner
