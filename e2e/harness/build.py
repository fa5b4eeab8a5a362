"""Builds the Go binaries of the local environment from the Go module proxy, cached by version.

Each component gets a tiny wrapper module under ~/.cache/pgop/src/<name>-<version> that requires the
upstream module (upstream go.mod files use `replace` directives, which `go install mod@ver`
refuses), and its binaries land in ~/.cache/pgop/bin/<name>-<version>/.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from . import versions
from .log import step

CACHE = Path(os.environ.get("PGOP_CACHE", Path.home() / ".cache" / "pgop"))


@dataclass
class GoComponent:
    name: str
    module: str
    version: str
    # package path -> output binary name
    packages: dict[str, str]
    ldflags: str = ""
    tags: str = ""
    # extra files to write in the wrapper module (relative path -> content)
    extra_files: dict[str, str] = field(default_factory=dict)
    replace_staging: bool = False
    # Pin every module upstream's go.mod requires to exactly that version (a wrapper module's MVS
    # would otherwise let other dependencies raise them past what upstream was built with).
    pin_upstream: bool = False
    # Built only when named (`python -m e2e.harness build NAME`, `up --only ...`): a cold
    # build too long for every fresh machine's `make up`; what needs it skips without it.
    lazy: bool = False

    @property
    def key(self) -> str:
        if not self.extra_files:
            return f"{self.name}-{self.version}"
        digest = hashlib.sha256(repr(sorted(self.extra_files.items())).encode()).hexdigest()[:8]
        return f"{self.name}-{self.version}-{digest}"

    @property
    def bindir(self) -> Path:
        return CACHE / "bin" / self.key

    @property
    def srcdir(self) -> Path:
        return CACHE / "src" / self.key

    def built(self) -> bool:
        return all((self.bindir / b).exists() for b in self.packages.values())


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOTOOLCHAIN", "local")
    env["CGO_ENABLED"] = env.get("CGO_ENABLED", "0")
    env.setdefault("GOFLAGS", "-buildvcs=false")
    return env


def _go(args: list[str], cwd: Path, env: dict | None = None) -> str:
    proc = subprocess.run(["go", *args], cwd=cwd, env=env or _go_env(), text=True,
                          capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr[-6000:]}")
    return proc.stdout


def _staging_replaces(module: str, version: str, workdir: Path) -> list[str]:
    """k8s.io/kubernetes replaces each staging module with ./staging/...; map them to v0.<minor>.<patch>."""
    info = json.loads(_go(["mod", "download", "-json", f"{module}@{version}"], workdir))
    gomod = Path(info["GoMod"]).read_text()
    staging_version = "v0." + version.lstrip("v").split(".", 1)[1]
    mods = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", gomod, re.M)))
    return [f"{m}={m}@{staging_version}" for m in mods]


def _upstream_pins(module: str, version: str, workdir: Path) -> list[str]:
    info = json.loads(_go(["mod", "download", "-json", f"{module}@{version}"], workdir))
    gomod = Path(info["GoMod"]).read_text()
    # Upstream's go.sum vouches for the exact versions it was built with, some of which the
    # checksum database no longer answers for.
    upstream_sum = Path(info["Dir"]) / "go.sum"
    if upstream_sum.exists():
        (workdir / "go.sum").write_text(upstream_sum.read_text())
    pins = [f"{module}={module}@{version}"]
    for mod, ver in re.findall(r"^\s*(?:require\s+)?([\w./~-]+\.[\w./~-]+)\s+(v[\w.+-]+)(?:\s*//.*)?$",
                               gomod, re.M):
        pins.append(f"{mod}={mod}@{ver}")
    return pins


def build(c: GoComponent) -> Path:
    if c.built():
        step(f"{c.key}: cached in {c.bindir}")
        return c.bindir
    with step(f"{c.key}: building {', '.join(c.packages.values())} (cold builds take minutes)"):
        c.srcdir.mkdir(parents=True, exist_ok=True)
        (c.srcdir / "go.mod").write_text(f"module pgop.local/build/{c.name}\n\ngo 1.24\n")
        for rel, content in c.extra_files.items():
            p = c.srcdir / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content)
        if c.replace_staging:
            for r in _staging_replaces(c.module, c.version, c.srcdir):
                _go(["mod", "edit", "-replace", r], c.srcdir)
        if c.pin_upstream:
            pins = _upstream_pins(c.module, c.version, c.srcdir)
            _go(["mod", "edit", *[f"-replace={r}" for r in pins]], c.srcdir)
        _go(["get", f"{c.module}@{c.version}"], c.srcdir)
        if c.extra_files:
            _go(["mod", "tidy"], c.srcdir)
        tmp = c.bindir.with_name(c.bindir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # One `go build` per binary would link each from scratch; building them in one process
        # shares the compiled packages, which is most of the time on 2 cores.
        env = _go_env()
        args = ["build", "-mod=mod", "-trimpath", "-ldflags", f"-s -w -checklinkname=0 {c.ldflags}".strip()]
        if c.tags:
            args += ["-tags", c.tags]
        if len(c.packages) == 1:
            pkg, binname = next(iter(c.packages.items()))
            _go(args + ["-o", str(tmp / binname), pkg], c.srcdir, env)
        else:
            _go(args + ["-o", str(tmp) + "/", *c.packages], c.srcdir, env)
            for pkg, binname in c.packages.items():
                produced = tmp / pkg.rstrip("/").rsplit("/", 1)[-1]
                if produced.name != binname:
                    produced.rename(tmp / binname)
        shutil.rmtree(c.bindir, ignore_errors=True)
        tmp.rename(c.bindir)
    return c.bindir


def _k8s_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    pkg = "k8s.io/component-base/version"
    vals = {"gitVersion": version, "gitMajor": major, "gitMinor": minor,
            "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z"}
    flags = []
    for base in (pkg, "k8s.io/client-go/pkg/version"):
        flags += [f"-X {base}.{k}={v}" for k, v in vals.items()]
    return " ".join(flags)


COREDNS_MAIN = '''package main

// A CoreDNS with only the plugins a cluster DNS needs: it builds in a fraction of the time of the
// full plugin set (the upstream-documented way to build CoreDNS with a chosen set of plugins).
import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// Directive order follows upstream plugin.cfg: it is the order plugins see a query.
func init() {
	dnsserver.Directives = []string{
		"reload", "bind", "ready", "health", "errors", "log", "cache", "kubernetes", "loop", "forward",
	}
}

func main() { coremain.Run() }
'''


def components() -> list[GoComponent]:
    v = versions
    return [
        GoComponent("etcd", "go.etcd.io/etcd/server/v3", v.ETCD,
                    {"go.etcd.io/etcd/server/v3": "etcd"}),
        GoComponent("kubernetes", "k8s.io/kubernetes", v.KUBERNETES,
                    {f"k8s.io/kubernetes/cmd/{n}": n for n in (
                        "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                        "kubelet", "kube-proxy", "kubectl")},
                    ldflags=_k8s_ldflags(v.KUBERNETES), replace_staging=True),
        GoComponent("versitygw", "github.com/versity/versitygw", v.VERSITYGW,
                    {"github.com/versity/versitygw/cmd/versitygw": "versitygw"}),
        GoComponent("coredns", "github.com/coredns/coredns", v.COREDNS,
                    {"pgop.local/build/coredns": "coredns"},
                    extra_files={"main.go": COREDNS_MAIN}),
        GoComponent("consul", "github.com/hashicorp/consul", v.CONSUL,
                    {"github.com/hashicorp/consul": "consul"}),
        GoComponent("vault", "github.com/hashicorp/vault", v.VAULT,
                    {"github.com/hashicorp/vault": "vault"}, pin_upstream=True),
        # No web UI assets (the `builtinassets` tag needs the npm build): the API, the scrapes and
        # the rule evaluation are what the tests use. Lazy: its cold build took 25 min on 2 cores
        # (shared with a Kubernetes build; empty module and build caches).
        GoComponent("prometheus", "github.com/prometheus/prometheus", v.PROMETHEUS,
                    {"github.com/prometheus/prometheus/cmd/prometheus": "prometheus",
                     "github.com/prometheus/prometheus/cmd/promtool": "promtool"}, lazy=True),
        # The Helm CLI: renders and installs deploy/helm/pgop. Stamped as upstream's Makefile does:
        # its version, and the Kubernetes version `helm template`/`lint` assume without a cluster
        # (1.<minor of its client-go>; unstamped it is 1.20, older than the chart's kubeVersion).
        GoComponent("helm", "helm.sh/helm/v3", v.HELM, {"helm.sh/helm/v3/cmd/helm": "helm"},
                    ldflags=" ".join([f"-X helm.sh/helm/v3/internal/version.version={v.HELM}",
                                      "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
                                      *(f"-X helm.sh/helm/v3/pkg/{pkg}.k8sVersion{part}={value}"
                                        for pkg in ("chartutil", "lint/rules")
                                        for part, value in (("Major", "1"), ("Minor", v.HELM_KUBE_MINOR)))])),
    ]


def optional_components() -> list[GoComponent]:
    """Built only when named (`python -m e2e.harness build kwok`, `make bench-scale`), never by
    `up` or a plain `build`: a fresh machine's CI has no time to spare for them."""
    return [
        # Simulated nodes (kubelets that place pods without running them) for bench/scale.py.
        GoComponent("kwok", "sigs.k8s.io/kwok", versions.KWOK, {"sigs.k8s.io/kwok/cmd/kwok": "kwok"}),
    ]


def by_name() -> dict[str, GoComponent]:
    return {c.name: c for c in components() + optional_components()}


def build_all(names: list[str] | None = None) -> dict[str, Path]:
    out = {}
    for c in components():
        if (names and c.name not in names) or (not names and c.lazy):
            continue
        out[c.name] = build(c)
    for c in optional_components():
        if names and c.name in names:
            out[c.name] = build(c)
    return out
