"""Host preparation: Debian packages, kernel settings and the node's own address."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from . import paths, versions
from .log import step
from .proc import run


def _missing_packages() -> list[str]:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n",
                          *versions.APT_PACKAGES], text=True, capture_output=True).stdout
    installed = {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}
    return [p for p in versions.APT_PACKAGES if p not in installed]


def install_packages() -> None:
    missing = _missing_packages()
    if not missing:
        step("debian packages: all present")
        return
    with step(f"debian packages: installing {' '.join(missing)}"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-q"], env=env)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (so debootstrap goes the same way)."""
    for f in [Path("/etc/apt/sources.list.d/debian.sources"), *Path("/etc/apt/sources.list.d").glob("*.sources")]:
        if f.exists():
            for line in f.read_text().splitlines():
                if line.startswith("URIs:") and "security" not in line:
                    return line.split()[1]
    for line in Path("/etc/apt/sources.list").read_text().splitlines() if Path("/etc/apt/sources.list").exists() else []:
        parts = line.split()
        if parts and parts[0] == "deb" and "security" not in line:
            return next(p for p in parts[1:] if p.startswith("http"))
    raise RuntimeError("no Debian mirror found in /etc/apt/sources.list(.d)")


def sysctls() -> None:
    for key, value in {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1",
                       "net/bridge/bridge-nf-call-ip6tables": "1",
                       "fs/inotify/max_user_instances": "1024",
                       "fs/inotify/max_user_watches": "524288"}.items():
        p = Path("/proc/sys") / key
        if p.exists() and p.read_text().strip() != value:
            p.write_text(value)


def node_address() -> None:
    """A bridge with no ports carries the node IP (this kernel has no dummy links)."""
    link = subprocess.run(["ip", "-br", "addr", "show", paths.NODE_BRIDGE], text=True,
                          capture_output=True)
    if link.returncode != 0:
        run(["ip", "link", "add", paths.NODE_BRIDGE, "type", "bridge"])
    if paths.NODE_IP not in link.stdout:
        run(["ip", "addr", "replace", f"{paths.NODE_IP}/32", "dev", paths.NODE_BRIDGE])
    run(["ip", "link", "set", paths.NODE_BRIDGE, "up"])


def remove_node_address() -> None:
    subprocess.run(["ip", "link", "del", paths.NODE_BRIDGE], capture_output=True)


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        raise RuntimeError(f"missing tools on PATH: {', '.join(missing)}")
