"""Timed passes whose pace each pass decides, in place of kopf's fixed-interval timers.

A kopf timer runs its handler through kopf's whole handling machinery on every tick (progress
state, outcome, patch application): at a tick every 2 s per PgCluster and per PgInstance, that
machinery was most of an idle operator's CPU. Here a kopf daemon per object sleeps on its stop
flag and runs one pass in kopf's handler pool (with the context kopf's own sync handlers get,
so Events and warnings post as from a handler); the pass returns how long to wait before the
next (pgop.cluster.pace). A pass that fails is logged and tried again after ERROR_WAIT seconds,
or after the delay of a kopf.TemporaryError.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
from collections.abc import Callable, Hashable
from typing import Any

import kopf

ERROR_WAIT = 10.0

_executor: concurrent.futures.Executor | None = None


@kopf.on.startup()
def use_handler_pool(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Passes run in the pool of kopf's sync handlers (pgop.operator sizes it)."""
    global _executor
    _executor = settings.execution.executor


async def in_pool(work: Callable[[], Any]) -> Any:
    """`work()` in a handler thread, with the context kopf's own sync handlers get."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_executor, context.run, work)


_queued: set[Hashable] = set()


def soon(key: Hashable, work: Callable[[], Any], logger: logging.Logger | logging.LoggerAdapter) -> None:
    """`work()` in a handler thread, without waiting for it: an event handler that awaited a pass
    held kopf's worker of that object (and so its index updates) until a thread was free and the
    pass done; with the pool busy, the indexes fell a minute behind the API server and every pass
    planned from them saw failures that were not there. One queued run per key: what comes in
    before it starts is folded into it (it reads the indexes when it starts, after kopf updated
    them for every event that asked for it)."""
    if key in _queued:
        return
    _queued.add(key)
    context = contextvars.copy_context()

    def one() -> None:
        _queued.discard(key)
        try:
            context.run(work)
        except Exception as error:  # noqa: BLE001 - logged; the timed passes go on regardless
            logger.error("event pass failed (%s: %s)", type(error).__name__, error)

    asyncio.get_running_loop().run_in_executor(_executor, one)


async def run(stopped: Any, one_pass: Callable[[], float], logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Until `stopped` (kopf's daemon stop flag): run `one_pass` in a handler thread, then wait
    the seconds it returned."""
    while not stopped:
        try:
            wait = await in_pool(one_pass)
        except kopf.TemporaryError as error:
            wait = error.delay if error.delay is not None else ERROR_WAIT
            logger.warning("timed pass: %s; again in %.0fs", error, wait)
        except Exception as error:  # noqa: BLE001 - the next pass tries again, as kopf's timers did
            wait = ERROR_WAIT
            logger.error("timed pass failed (%s: %s); again in %.0fs", type(error).__name__, error, wait)
        await stopped.wait(wait)
