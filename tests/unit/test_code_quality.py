"""The linter and the type checker, as part of the unit tests (so of `make test` and CI).

ruff: pyflakes, pycodestyle errors, import order, bugbear, pyupgrade (pyproject.toml [tool.ruff]).
mypy: the whole pgop package; strict flags on the kernel, the builders and the pure planners
(pyproject.toml [tool.mypy]).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    done = run(str(BIN / "ruff"), "check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing():
    done = run(str(BIN / "mypy"), "--cache-dir", "/tmp/pgop-mypy-cache")
    assert done.returncode == 0, done.stdout + done.stderr
