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
