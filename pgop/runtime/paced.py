"""Timed passes whose pace each pass decides, in place of kopf's fixed-interval timers.

A kopf timer runs its handler through kopf's whole handling machinery on every tick (progress
state, outcome, patch application): at a tick every 2 s per PgCluster and per PgInstance, that
machinery was most of an idle operator's CPU. Here a kopf daemon per object sleeps on its stop
flag and runs one pass in kopf's handler pool (with the context kopf's own sync handlers get,
so Events and warnings post as from a handler); the pass returns how long to wait before the
next (pgop.cluster.pace), or a steady pace: until its resync, the daemon only runs a cheap look
in the event loop at each deadline the pass named (no thread, no request), and a pass elsewhere
that finds the object moving cuts the sleep short (hurry). A pass that fails is logged and tried
again after ERROR_WAIT seconds, or after the delay of a kopf.TemporaryError.
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


class _Timer:
    """A daemon's sleep, which hurry() may cut short (in the event loop)."""

    def __init__(self) -> None:
        self.woken = asyncio.Event()
        self.within: float | None = None  # hurry(): the next pass within this many seconds


_timers: dict[Hashable, tuple[asyncio.AbstractEventLoop, _Timer]] = {}


def hurry(key: Hashable, within: float) -> None:
    """From any thread: the timed pass of `key` (run's `key`) within `within` seconds, whatever
    it was waiting for. A pass that an event started and that found the object moving calls it:
    the object's timed passes then keep the fast pace a steady wait would have missed."""
    entry = _timers.get(key)
    if entry is None:
        return
    loop, timer = entry

    def wake() -> None:
        timer.within = within if timer.within is None else min(timer.within, within)
        timer.woken.set()

    loop.call_soon_threadsafe(wake)


async def _sleep(stopped: Any, timer: _Timer, seconds: float) -> bool:
    """Sleeps `seconds`, less when `stopped` or when hurry() asks; whether hurry() asked."""
    loop = asyncio.get_running_loop()
    until, hurried = loop.time() + seconds, False
    while not stopped:
        if timer.within is not None:
            until, timer.within, hurried = min(until, loop.time() + timer.within), None, True
        left = until - loop.time()
        if left <= 0:
            break
        timer.woken.clear()
        stop, woken = asyncio.ensure_future(stopped.wait()), asyncio.ensure_future(timer.woken.wait())
        try:
            await asyncio.wait((stop, woken), timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            woken.cancel()
    return hurried


async def _pass(one_pass: Callable[[], Any], logger: logging.Logger | logging.LoggerAdapter) -> Any:
    try:
        return await in_pool(one_pass)
    except kopf.TemporaryError as error:
        wait = error.delay if error.delay is not None else ERROR_WAIT
        logger.warning("timed pass: %s; again in %.0fs", error, wait)
    except Exception as error:  # noqa: BLE001 - the next pass tries again, as kopf's timers did
        wait = ERROR_WAIT
        logger.error("timed pass failed (%s: %s); again in %.0fs", type(error).__name__, error, wait)
    return wait


async def run(stopped: Any, one_pass: Callable[[], Any], logger: logging.Logger | logging.LoggerAdapter, *,
              key: Hashable | None = None, look: Callable[[], float | None] | None = None) -> None:
    """Until `stopped` (kopf's daemon stop flag): run `one_pass` in a handler thread, then wait
    what it returned: seconds, or a steady pace (look, resync), pgop.cluster.pace.Steady. While
    steady, `look()` runs in the event loop instead of a pass (it must be cheap: the indexes, no
    request) and says how long to wait more, or None for a pass now; a pass runs at the resync
    at the latest, and at once when hurry(`key`, ...) asked."""
    loop = asyncio.get_running_loop()
    timer = _Timer()
    if key is not None:
        _timers[key] = (loop, timer)
    resync_at = 0.0
    try:
        while not stopped:
            again = look() if look is not None and loop.time() < resync_at else None
            if again is not None:
                wait = min(again, resync_at - loop.time())
            else:
                answer = await _pass(one_pass, logger)
                if isinstance(answer, tuple):  # steady: (look, resync)
                    wait, resync_at = answer[0], loop.time() + answer[1]
                else:
                    wait, resync_at = answer, 0.0
            if await _sleep(stopped, timer, wait):
                resync_at = 0.0  # hurried: a pass, not a look
    finally:
        if key is not None and _timers.get(key, (None, timer))[1] is timer:
            _timers.pop(key, None)
