"""The operator process: kopf with the handlers of pgop (PgCluster, PgInstance), rds (MysqlDb)
and backup (PgBackup) registered."""
from __future__ import annotations

import asyncio
import faulthandler
import importlib
import logging
import signal

import kopf

# Each package registers its handlers when imported; a package with no handlers yet is skipped.
HANDLER_MODULES = ("pgop.cluster.handlers", "pgop.rds.handlers", "pgop.backup.handlers")

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
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="pgop.io", key="last-handled-configuration")
    settings.persistence.finalizer = "pgop.io/finalizer"
    settings.posting.level = logging.INFO
    # kopf logs every timer run at INFO; keep the log for what pgop does (logger "pgop").
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    # Sync handlers run in this pool; the default (cores + 4) is six threads on a small node,
    # and every handler here waits on the API server rather than on a CPU.
    settings.execution.max_workers = 24
    # A deleted PgCluster's finalizer runs once its timer has stopped. A timer caught mid-pass
    # (one runs every 2 s, in a thread kopf cannot cancel) was looked at again only after kopf's
    # default of 60 s, which held `kubectl delete` for a minute; wait for the pass to end instead.
    settings.background.instant_exit_timeout = 2.0
    settings.background.cancellation_polling = 0.5


def run(namespaces: list[str], clusterwide: bool, liveness: str | None = None,
        verbose: bool = False, metrics: str | None = None) -> None:
    kopf.configure(verbose=verbose)
    # `kill -USR1 <pid>` prints every thread's stack to stderr: what a stuck handler waits on.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    loaded = load_handlers()
    if metrics:
        from pgop import operator_metrics
        operator_metrics.register()
        operator_metrics.serve(metrics)
    log.info("pgop operator starting with handlers from %s", ", ".join(loaded) or "nothing")
    asyncio.run(kopf.operator(
        clusterwide=clusterwide, namespaces=list(namespaces), standalone=True,
        liveness_endpoint=liveness))
