"""Container images built offline: a debootstrap Debian base, then images/* with podman, imported
into the node's containerd (no registry exists here)."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

from . import build, paths, proc, versions
from .containerd import ctr
from .host import debian_mirror
from .log import step


def package_version() -> str:
    """pgop's version, from its one source (pyproject.toml): the operator image's tag, the Helm
    chart's appVersion and the tag in deploy/*.yaml (tests/unit/test_install_manifests.py)."""
    return tomllib.loads((paths.REPO / "pyproject.toml").read_text())["project"]["version"]


BASE_IMAGE = f"localhost/debian:{versions.DEBIAN_SUITE}"
PAUSE_IMAGE = "localhost/pgop-pause:1.0"
POSTGRES_IMAGE = "localhost/pgop-postgres:dev"
OPERATOR_IMAGE = f"localhost/pgop-operator:{package_version()}"
IMAGES_DIR = paths.REPO / "images"
STAMPS = paths.STATE / "images"
WHEELS = build.CACHE / "wheels"


def _podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return proc.run(["podman", *args], check=check)


def _podman_id(image: str) -> str | None:
    p = _podman("image", "inspect", "--format", "{{.Id}}", image, check=False)
    return p.stdout.strip() if p.returncode == 0 else None


def base() -> None:
    if _podman_id(BASE_IMAGE):
        step(f"{BASE_IMAGE}: present")
        return
    with step(f"{BASE_IMAGE}: debootstrap --variant=minbase {versions.DEBIAN_SUITE}"):
        root = Path(tempfile.mkdtemp(prefix="pgop-rootfs-", dir="/var/tmp"))
        try:
            proc.run(["debootstrap", "--variant=minbase", versions.DEBIAN_SUITE, str(root),
                      debian_mirror()])
            for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for f in (root / d).glob("*"):
                    if f.is_file():
                        f.unlink()
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            proc.run(["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, text=False)
            tar.wait()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _tree_hash(*roots: Path, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                     and "__pycache__" not in p.parts
                                                     and not p.name.endswith(".pyc"))
        for f in files:
            h.update(str(f.relative_to(paths.REPO)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def wheels(dest: Path) -> None:
    """The pgop wheel plus its pinned dependencies, so image builds need no package index."""
    pyproject = paths.REPO / "pyproject.toml"
    deps = WHEELS / _tree_hash(pyproject)
    pip = str(paths.REPO / ".venv" / "bin" / "pip")
    if not deps.exists():
        with step("wheels of the pinned dependencies"):
            tmp = deps.with_name(deps.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            proc.run([pip, "wheel", "-q", "--wheel-dir", str(tmp), str(paths.REPO)])
            for w in tmp.glob("pgop-*.whl"):
                w.unlink()
            tmp.rename(deps)
    dest.mkdir(parents=True, exist_ok=True)
    for w in deps.glob("*.whl"):
        shutil.copy2(w, dest / w.name)
    proc.run([pip, "wheel", "-q", "--no-deps", "--wheel-dir", str(dest), str(paths.REPO)])


def _build(name: str, tag: str, context_inputs: list[Path], with_wheels: bool) -> str:
    """podman build of images/<name>; skipped when its inputs did not change."""
    base_id = _podman_id(BASE_IMAGE) or ""
    inputs = [IMAGES_DIR / name]
    if with_wheels:
        inputs += [paths.REPO / "pyproject.toml", *context_inputs]
    digest = _tree_hash(*inputs, extra=base_id)
    label = f"io.pgop.inputs={digest}"
    current = _podman("image", "inspect", "--format",
                      '{{index .Labels "io.pgop.inputs"}}', tag, check=False)
    if current.returncode == 0 and current.stdout.strip() == digest:
        step(f"{tag}: up to date ({digest})")
        return digest
    with step(f"{tag}: podman build"):
        ctx = Path(tempfile.mkdtemp(prefix=f"pgop-ctx-{name}-", dir="/var/tmp"))
        try:
            shutil.copytree(IMAGES_DIR / name, ctx, dirs_exist_ok=True)
            if with_wheels:
                wheels(ctx / "wheels")
            proc.run(["podman", "build", "--network", "host", "--build-arg", f"BASE={BASE_IMAGE}",
                      "--label", label, "-t", tag, "-f", str(ctx / "Containerfile"), str(ctx)])
        finally:
            shutil.rmtree(ctx, ignore_errors=True)
    return digest


def import_into_containerd(tag: str, targets: list[tuple[Path, Path]] | None = None) -> None:
    """podman save | ctr import into each (containerd socket, stamp directory) of `targets` (the
    host node's by default) that does not have this exact image yet; one save for all of them."""
    from concurrent.futures import ThreadPoolExecutor
    targets = targets or [(paths.CONTAINERD_SOCK, STAMPS)]
    image_id = _podman_id(tag)
    todo: list[tuple[Path, Path]] = []
    for address, stamps in targets:
        stamps.mkdir(parents=True, exist_ok=True)
        stamp = stamps / (tag.replace("/", "_").replace(":", "_") + ".id")
        have = ctr("images", "ls", "-q", address=address, check=False).stdout.split()
        if not (tag in have and stamp.exists() and stamp.read_text() == image_id):
            todo.append((address, stamp))
    if not todo:
        return
    where = "" if len(targets) == 1 else f" of {len(todo)} node(s)"
    with step(f"{tag}: import into containerd{where}"):
        with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
            archive = Path(d) / "image.tar"
            _podman("save", "--format", "docker-archive", "-o", str(archive), tag)
            with ThreadPoolExecutor(max_workers=len(todo)) as pool:
                list(pool.map(lambda t: ctr("images", "import", "--no-unpack=false", str(archive),
                                            address=t[0]), todo))
        for _, stamp in todo:
            stamp.write_text(image_id or "")


SOURCES = [paths.REPO / p for p in ("pgop", "rds", "backup")]


def build_all() -> None:
    base()
    _build("pause", PAUSE_IMAGE, [], with_wheels=False)
    _build("postgres", POSTGRES_IMAGE, SOURCES, with_wheels=True)
    _build("operator", OPERATOR_IMAGE, SOURCES, with_wheels=True)
    # Each rebuild leaves the previous image untagged; drop those so the disk does not fill up.
    _podman("image", "prune", "-f", check=False)


def import_all(targets: list[tuple[Path, Path]] | None = None) -> None:
    for tag in (PAUSE_IMAGE, POSTGRES_IMAGE, OPERATOR_IMAGE):
        import_into_containerd(tag, targets)


def operator_image() -> str:
    """The operator image of this checkout, built if its inputs changed and imported into the host
    node's containerd (both no-ops when up to date): what an in-cluster install test runs."""
    base()
    _build("operator", OPERATOR_IMAGE, SOURCES, with_wheels=True)
    import_into_containerd(OPERATOR_IMAGE)
    return OPERATOR_IMAGE
