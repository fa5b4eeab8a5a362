"""pgop.runtime.paced.soon: an event handler queues a pass and returns at once; one queued run per
key; what fails is logged. With a real thread pool and event loop (no server)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading

import pytest

from pgop.runtime import paced


@pytest.fixture
def pool(monkeypatch):
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    monkeypatch.setattr(paced, "_executor", executor)
    monkeypatch.setattr(paced, "_queued", set())
    yield executor
    executor.shutdown(wait=True)


def test_an_event_handler_does_not_wait_for_its_pass_while_the_pool_is_busy(pool):
    release, ran = threading.Event(), []

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        pool.submit(release.wait)  # the only thread is busy
        started = loop.time()
        paced.soon("a", lambda: ran.append("a"), logging.getLogger("test"))
        returned_after = loop.time() - started
        await asyncio.sleep(0.05)
        assert ran == [], "the pass ran although no thread was free"
        release.set()
        for _ in range(100):
            if ran:
                break
            await asyncio.sleep(0.01)
        return returned_after

    assert asyncio.run(scenario()) < 0.05
    assert ran == ["a"]


def test_events_before_the_queued_pass_starts_fold_into_it_and_later_ones_queue_again(pool):
    release, ran = threading.Event(), []

    async def scenario() -> None:
        pool.submit(release.wait)
        log = logging.getLogger("test")
        for n in range(5):
            paced.soon("cluster-1", lambda n=n: ran.append(("cluster-1", n)), log)
        paced.soon("cluster-2", lambda: ran.append(("cluster-2", 0)), log)
        release.set()
        for _ in range(100):
            if len(ran) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        paced.soon("cluster-1", lambda: ran.append(("cluster-1", "later")), log)
        for _ in range(100):
            if len(ran) == 3:
                break
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert ran == [("cluster-1", 0), ("cluster-2", 0), ("cluster-1", "later")]


def test_a_failing_pass_is_logged_and_the_next_one_for_its_key_still_runs(pool, caplog):
    ran = []

    def fails() -> None:
        raise RuntimeError("the API server said no")

    async def scenario() -> None:
        log = logging.getLogger("test")
        paced.soon("k", fails, log)
        for _ in range(100):
            if "event pass failed" in caplog.text:
                break
            await asyncio.sleep(0.01)
        paced.soon("k", lambda: ran.append(1), log)
        for _ in range(100):
            if ran:
                break
            await asyncio.sleep(0.01)

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert "event pass failed (RuntimeError: the API server said no)" in caplog.text
    assert ran == [1]


class Stop:
    """kopf's daemon stop flag, as paced.run uses it."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> None:
        await self.event.wait()


def _daemon(one_pass, look, key="k"):
    """paced.run as a task, with its stop flag."""
    stop = Stop()
    task = asyncio.ensure_future(paced.run(stop, one_pass, logging.getLogger("test"), key=key, look=look))
    return stop, task


async def _until(condition, seconds: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not condition() and loop.time() < end:
        await asyncio.sleep(0.005)


def test_a_steady_object_is_looked_at_in_the_loop_and_passed_over_only_at_its_resync(pool):
    """Between a steady pass and its resync, the daemon only looks (no thread, no pass)."""
    passes, looks = [], []

    async def scenario() -> None:
        stop, task = _daemon(lambda: passes.append(threading.current_thread().name) or (0.02, 0.4),
                             lambda: looks.append(threading.current_thread().name) or 0.02)
        await asyncio.sleep(0.25)
        assert len(passes) == 1 and len(looks) >= 5
        await _until(lambda: len(passes) == 2)
        assert len(passes) == 2  # the resync came
        stop.event.set()
        await asyncio.wait_for(task, 1)

    asyncio.run(scenario())
    assert all(name == threading.main_thread().name for name in looks)  # in the event loop
    assert all(name != threading.main_thread().name for name in passes)  # in the pool


def test_a_look_that_finds_a_pass_due_runs_it_at_once(pool):
    passes, answers = [], [0.02, 0.02, None]

    async def scenario() -> None:
        stop, task = _daemon(lambda: passes.append(1) or (0.02, 30.0), lambda: answers.pop(0) if answers else 30.0)
        await _until(lambda: len(passes) == 2)
        stop.event.set()
        await asyncio.wait_for(task, 1)

    asyncio.run(scenario())
    assert len(passes) == 2 and answers == []


def test_a_pass_elsewhere_that_finds_the_object_moving_hurries_its_timed_pass(pool):
    """hurry() from another thread (an event's pass): the timed pass runs within the time asked,
    not after the steady wait of 30 s."""
    passes = []

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        stop, task = _daemon(lambda: passes.append(loop.time()) or (30.0, 60.0), lambda: 30.0, key=("cluster", "x"))
        await _until(lambda: len(passes) == 1)
        asked = loop.time()
        threading.Thread(target=paced.hurry, args=(("cluster", "x"), 0.05)).start()
        await _until(lambda: len(passes) == 2)
        paced.hurry(("cluster", "someone else"), 0.0)  # no daemon of that key: nothing happens
        stop.event.set()
        await asyncio.wait_for(task, 1)
        return passes[1] - asked

    waited = asyncio.run(scenario())
    assert len(passes) == 2 and 0.05 <= waited < 1.0
    assert ("cluster", "x") not in paced._timers  # a stopped daemon leaves nothing behind


def test_a_stopped_daemon_ends_without_waiting_out_its_sleep(pool):
    async def scenario() -> None:
        stop, task = _daemon(lambda: (300.0, 600.0), lambda: 300.0)
        await asyncio.sleep(0.05)
        stop.event.set()
        await asyncio.wait_for(task, 1)  # raises TimeoutError if it slept on

    asyncio.run(scenario())
