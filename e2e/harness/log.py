"""Progress lines with the time each step took (cold set-up takes many minutes)."""
from __future__ import annotations

import sys
import time


class _Step:
    def __init__(self, msg: str):
        self.msg = msg
        print(f"[pgop-env] {msg}", file=sys.stderr, flush=True)

    def __enter__(self):
        self.t0 = time.monotonic()
        return self

    def __exit__(self, exc_type, exc, tb):
        dt = time.monotonic() - self.t0
        status = "done" if exc_type is None else f"FAILED ({exc_type.__name__})"
        print(f"[pgop-env]   {status} in {dt:.1f}s: {self.msg}", file=sys.stderr, flush=True)
        return False


def step(msg: str) -> _Step:
    """Prints msg at once; used as a context manager it also prints the elapsed time."""
    return _Step(msg)
