"""pgop.runtime.coalesce: a burst of calls for one key holds one thread and ends in one more pass."""
import threading

import pytest

from pgop.runtime.coalesce import Coalescer


def test_calls_during_a_run_become_one_more_pass_in_the_running_thread():
    c = Coalescer()
    started, release = threading.Event(), threading.Event()
    passes = []

    def work():
        passes.append(threading.current_thread().name)
        if len(passes) == 1:
            started.set()
            release.wait(5)

    first = threading.Thread(target=c.run, args=("k", work), name="first")
    first.start()
    assert started.wait(5)
    # ten events while the first pass runs: none runs itself, none blocks
    assert [c.run("k", work) for _ in range(10)] == [False] * 10
    release.set()
    first.join(5)
    assert passes == ["first", "first"]
    assert c.run("k", work) is True  # idle again: the next call runs in its own thread
    assert passes[-1] == threading.current_thread().name


def test_other_keys_run_at_once():
    c = Coalescer()
    inside = threading.Event()
    ran = []

    def slow():
        inside.set()
        threading.Event().wait(0.2)

    t = threading.Thread(target=c.run, args=("a", slow))
    t.start()
    assert inside.wait(5)
    assert c.run("b", lambda: ran.append("b")) is True
    assert ran == ["b"]
    t.join(5)


def test_a_failing_pass_frees_the_key():
    c = Coalescer()

    def boom():
        raise RuntimeError("API server said no")

    with pytest.raises(RuntimeError):
        c.run("k", boom)
    assert c.run("k", lambda: None) is True
