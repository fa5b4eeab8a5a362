"""One runner per key: calls that arrive while a run for their key is under way do not queue up a
thread each; they ask the running one for one more pass, which sees everything they would have."""
from __future__ import annotations

import threading
from collections.abc import Callable, Hashable


class Coalescer:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._running: set[Hashable] = set()
        self._again: set[Hashable] = set()

    def run(self, key: Hashable, work: Callable[[], object]) -> bool:
        """Runs `work` now, and again while calls for `key` came in meanwhile; returns False when a
        run for `key` was already under way in another thread (which will run once more)."""
        with self._guard:
            if key in self._running:
                self._again.add(key)
                return False
            self._running.add(key)
        try:
            while True:
                work()
                with self._guard:
                    if key not in self._again:
                        self._running.discard(key)
                        return True
                    self._again.discard(key)
        except BaseException:
            with self._guard:
                self._running.discard(key)
                self._again.discard(key)
            raise
