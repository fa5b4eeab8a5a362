"""What a person (or a test) needs to use the environment: written as env.sh and env.json."""
from __future__ import annotations

import json
import shlex

from . import build, paths


def values() -> dict[str, str]:
    from .cluster import ADMIN_KUBECONFIG, OPERATOR_KUBECONFIG
    from .nodes import registered
    from .services import env as services_env
    extra = [n.name for n in registered()]
    kube_bin = str(build.by_name()["kubernetes"].bindir)
    return {
        "KUBECONFIG": str(ADMIN_KUBECONFIG),
        "PGOP_OPERATOR_KUBECONFIG": str(OPERATOR_KUBECONFIG),  # group pgop:operators
        "KUBECTL": f"{kube_bin}/kubectl",
        "PGOP_KUBE_BIN": kube_bin,
        "PGOP_PROMETHEUS_BIN": str(build.by_name()["prometheus"].bindir),  # prometheus, promtool
        "PGOP_NODE_IP": paths.NODE_IP,
        "PGOP_CONTAINERD_ADDRESS": str(paths.CONTAINERD_SOCK),
        "PGOP_ENV_DIR": str(paths.STATE),
        # every node, and the extra ones (the only ones `python -m e2e.harness node ...` faults)
        "PGOP_NODES": ",".join([paths.NODE_NAME, *extra]),
        "PGOP_EXTRA_NODES": ",".join(extra),
        **services_env(),
    }


def write() -> dict[str, str]:
    v = values()
    paths.ENV_JSON.write_text(json.dumps(v, indent=2) + "\n")
    lines = [f"export {k}={shlex.quote(val)}" for k, val in v.items()]
    lines.append(f'export PATH={shlex.quote(v["PGOP_KUBE_BIN"])}:{shlex.quote(str(paths.REPO / ".venv" / "bin"))}:"$PATH"')
    paths.ENV_SH.write_text("# source this file: . " + str(paths.ENV_SH) + "\n" + "\n".join(lines) + "\n")
    paths.ENV_JSON.chmod(0o600)
    paths.ENV_SH.chmod(0o600)
    return v


def load() -> dict[str, str]:
    try:
        return json.loads(paths.ENV_JSON.read_text())
    except FileNotFoundError:
        raise RuntimeError(f"{paths.ENV_JSON} is missing: the local environment is not up "
                           "(run `make up`)") from None
