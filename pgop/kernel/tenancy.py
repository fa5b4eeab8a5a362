"""Where a namespace's objects may publish: under that namespace's own prefix in Vault and Consul.

A namespace is a tenant. Its MysqlDbs and PgClusters put credentials in Vault KV v2 under
`secret/data/k8s/<namespace>/` and connection config in Consul under `config/k8s/<namespace>/`,
and nowhere else. The operator's Vault and Consul identities may write every namespace's entries,
so the operator, not the store, has to keep one tenant out of another's. Paths are compared
segment by segment: a substring or string-prefix test lets `secret/data/k8s/<other>/k8s/<own>/db`
or `secret/data/k8s/<own>x/db` through. Empty, `.` and `..` segments are refused whatever Vault or
Consul would make of them.

deploy/admission.yaml refuses the same objects at admission (a ValidatingAdmissionPolicy sees the
namespace; a CRD rule does not). This check is the operator's own, for objects stored before that
policy or where it is not installed, and for `pgop plan`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# The condition and Event reason of a refused path.
REASON = "PathOutsideNamespace"

VAULT_ROOT = ("secret", "data", "k8s")
CONSUL_ROOT = ("config", "k8s")

# A segment as the CRDs allow it (crds/*.yaml): no other characters, no leading dot.
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def vault_prefix(namespace: str) -> str:
    """`secret/data/k8s/<namespace>/`: every Vault path of the namespace starts with it."""
    return "/".join((*VAULT_ROOT, namespace)) + "/"


def consul_prefix(namespace: str) -> str:
    """`config/k8s/<namespace>/`: every Consul prefix of the namespace starts with it."""
    return "/".join((*CONSUL_ROOT, namespace)) + "/"


def default_vault_path(namespace: str, name: str) -> str:
    return f"{vault_prefix(namespace)}{name}/db"


def default_consul_prefix(namespace: str, name: str) -> str:
    return f"{consul_prefix(namespace)}{name}/db"


def outside_namespace(path: str, root: tuple[str, ...], namespace: str) -> str | None:
    """Why `path` is not inside `namespace`'s part of the store rooted at `root`, or None if it is.

    Inside means: every segment non-empty and neither `.` nor `..`, the first segments equal to
    root + namespace, and at least one segment below them.
    """
    own = (*root, namespace)
    segments = path.split("/")
    if not namespace:
        return "cannot be judged: the object has no namespace"
    if "" in segments:
        return "has an empty segment (a leading, trailing or doubled '/')"
    if any(s in (".", "..") for s in segments):
        return "has a '.' or '..' segment"
    odd = next((s for s in segments if not _SEGMENT.fullmatch(s)), None)
    if odd is not None:
        return f"has a segment of other characters than letters, digits, '_', '-' and a '.' not first: {odd!r}"
    if tuple(segments[:len(own)]) != own or len(segments) == len(own):
        return f"is not below {'/'.join(own)}/, the prefix of this object's namespace"
    return None


@dataclass(frozen=True)
class RefusedPath:
    field: str  # where the path comes from, e.g. spec.vaultPath
    path: str
    why: str

    def __str__(self) -> str:
        return f"{self.field} {self.path!r} {self.why}"


def refused_paths(namespace: str, *, vault: tuple[str, str], consul: tuple[str, str]) -> list[RefusedPath]:
    """The paths an object of `namespace` asks to publish to that the operator must not touch.

    `vault` and `consul` are (field, path): ("spec.vaultPath", "secret/data/k8s/shop/orders/db").
    """
    refused = []
    for (field, path), root in ((vault, VAULT_ROOT), (consul, CONSUL_ROOT)):
        why = outside_namespace(path, root, namespace)
        if why is not None:
            refused.append(RefusedPath(field, path, why))
    return refused


def refusal_message(refused: list[RefusedPath]) -> str:
    """What a condition and an Event say: each field, its path and why; what the operator does."""
    return ("; ".join(str(r) for r in refused)
            + ": pgop reads, writes and deletes nothing there (use a path below this namespace's prefix)")
