"""The shape of the code, pinned: which part of pgop may import which, and no circles.

Layers, from the inside out (docs/architecture.md says why):

- kernel   (pgop.kernel): the API model and types, LSN/WAL naming, pgconfig, the pod contract,
           actions/plans, conditions, schedule, readiness. Pure: no I/O library, no other part.
- specs    (pgop.specs): pure builders of the manifests of an instance's pods and the cluster's objects.
- runtime  (pgop.runtime): what every handler shares: the API client, applying plans, Events,
           operator configuration, the Vault/Consul adapters.
- features (pgop.cluster, pgop.backup, pgop.rds): the controllers. A feature never imports another
           feature: what they share is in the kernel (or runtime), and a feature that adds to
           another's reconcile registers a hook in the runtime.
- programs (pgop.agent, the program in the Postgres pod, which runs the backup engine of
           pgop.backup there; pgop.cli*, pgop.operator): the outermost layer.

Planners and builders are pure: importing them loads no I/O library (checked in a fresh
interpreter, so an import hidden inside a function or behind another module counts too).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"pgop": REPO / "pgop", "pgop.backup": REPO / "backup", "pgop.rds": REPO / "rds"}
IO_LIBRARIES = {"kopf", "kubernetes", "psycopg", "boto3", "botocore", "hvac", "consul", "requests", "urllib3"}

# part -> the parts it may import (besides itself)
ALLOWED = {
    "kernel": set(),
    "specs": {"kernel"},
    "runtime": {"kernel"},
    "cluster": {"kernel", "specs", "runtime"},
    "backup": {"kernel", "specs", "runtime"},
    "rds": {"kernel", "runtime"},
    "agent": {"kernel", "runtime", "backup"},
    "programs": {"kernel", "specs", "runtime", "cluster", "backup", "rds", "agent"},
}

PURE_MODULES = [
    "pgop.kernel.actions", "pgop.kernel.conditions", "pgop.kernel.diagnose", "pgop.kernel.lsn",
    "pgop.kernel.hibernation", "pgop.kernel.meta", "pgop.kernel.model", "pgop.kernel.names", "pgop.kernel.pgconfig",
    "pgop.kernel.podenv", "pgop.kernel.readiness", "pgop.kernel.schedule", "pgop.kernel.tenancy",
    "pgop.specs.instance", "pgop.specs.pdb", "pgop.specs.pods", "pgop.specs.pvc", "pgop.specs.rbac",
    "pgop.specs.secrets", "pgop.specs.services",
    "pgop.cluster.plan", "pgop.cluster.status", "pgop.cluster.failover", "pgop.cluster.pace",
    "pgop.backup.plan", "pgop.backup.pgbackup", "pgop.backup.pod", "pgop.backup.retention",
    "pgop.backup.catalog", "pgop.backup.layout", "pgop.backup.deletion",
    "pgop.rds.policy", "pgop.rds.diff", "pgop.rds.spec", "pgop.rds.identifier", "pgop.rds.classes",
    "pgop.rds.instance",
    "pgop.agent.ha",
]


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for prefix, root in ROOTS.items():
        for path in root.rglob("*.py"):
            relative = path.relative_to(root).with_suffix("")
            if prefix == "pgop" and relative.parts[0] in ("backup", "rds"):
                continue  # the links to ../backup and ../rds: counted under their own names
            parts = [p for p in relative.parts if p != "__init__"]
            found[".".join([prefix, *parts])] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """Every module this file imports, at top level or inside a function, absolute or relative."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def part_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "pgop":
        return None
    if len(parts) == 1:
        return "programs"
    second = parts[1]
    if second in ("kernel", "specs", "runtime", "cluster", "backup", "rds", "agent"):
        return second
    return "programs"  # pgop.cli, pgop.cli_*, pgop.operator


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        for imported in imports_of(name, path):
            if imported in known and imported != name:
                edges[name].add(imported)
    return edges


def test_every_import_goes_inward():
    wrong = []
    for source, targets in graph().items():
        for target in targets:
            a, b = part_of(source), part_of(target)
            if a != b and b not in ALLOWED[a]:
                wrong.append(f"{source} ({a}) imports {target} ({b})")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_circles_between_modules():
    edges = graph()
    seen: dict[str, int] = {}
    stack: list[str] = []
    circles: list[str] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            # a package's __init__ importing its own modules is not a circle of meaning
            if seen.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = 2

    for node in sorted(edges):
        if node not in seen:
            visit(node)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_wheel_installs_one_namespace(tmp_path):
    """What the images install: pgop, pgop.backup and pgop.rds, and no top-level backup or rds."""
    import shutil
    import zipfile
    source = tmp_path / "source"  # a copy: the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "pgop", "backup", "rds"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(
            REPO / name, source / name, **({"symlinks": True, "ignore": shutil.ignore_patterns("__pycache__")}
                                          if (REPO / name).is_dir() else {}))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("pgop-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"pgop"}
    for module in ("pgop/backup/s3.py", "pgop/rds/policy.py", "pgop/kernel/podenv.py", "pgop/agent/ha.py"):
        assert module in names


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_load_no_io_library(module):
    code = (f"import sys, json; import {module}; "
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout)) & IO_LIBRARIES
    assert not loaded, f"{module} loads {sorted(loaded)}"
