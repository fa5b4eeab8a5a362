"""Names pgop gives to things in AWS RDS.

A DBInstanceIdentifier must be 1-63 letters, digits or hyphens, start with a letter, and contain
no double hyphen nor end with one. Namespace and name are both DNS labels, so joining them with a
hyphen is readable but ambiguous ("a-b"/"c" and "a"/"b-c"), and long pairs must be cut: a short
hash of the exact pair keeps every derived identifier distinct and stable across restarts.
"""

from __future__ import annotations

import hashlib
import re

MAX_IDENTIFIER_LENGTH = 63
HASH_LENGTH = 8
MAX_SNAPSHOT_IDENTIFIER_LENGTH = 255

_IDENTIFIER = re.compile(r"^[a-z](?:[a-z0-9]|-(?!-))*$")


def short_hash(text: str, length: int = HASH_LENGTH) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower())
    return re.sub(r"-{2,}", "-", slug).strip("-")


def is_valid_identifier(identifier: str) -> bool:
    return (
        0 < len(identifier) <= MAX_IDENTIFIER_LENGTH
        and bool(_IDENTIFIER.match(identifier))
        and not identifier.endswith("-")
    )


def db_instance_identifier(namespace: str, name: str, *, scope: str = "") -> str:
    """The stable RDS identifier of the MysqlDb `namespace/name`.

    `scope` (e.g. a cluster name) goes into the hash only, so two Kubernetes clusters sharing one
    AWS account can keep the same readable prefix without colliding.
    """
    if not namespace or not name:
        raise ValueError("namespace and name are required")
    digest = short_hash(f"{scope}/{namespace}/{name}" if scope else f"{namespace}/{name}")
    readable = _slug(f"{namespace}-{name}")
    if not readable or not readable[0].isalpha():
        readable = f"db-{readable}".strip("-")
    room = MAX_IDENTIFIER_LENGTH - HASH_LENGTH - 1
    readable = readable[:room].rstrip("-")
    identifier = f"{readable}-{digest}"
    assert is_valid_identifier(identifier), identifier
    return identifier


def final_snapshot_identifier(instance_identifier: str, uid: str) -> str:
    """Name of the snapshot taken when a MysqlDb with deletionPolicy Snapshot is deleted.

    Derived from the object's uid, so a retried deletion asks for the same snapshot and a later
    MysqlDb of the same name gets a different one.
    """
    suffix = f"final-{short_hash(uid)}"
    room = MAX_SNAPSHOT_IDENTIFIER_LENGTH - len(suffix) - 1
    return f"{instance_identifier[:room].rstrip('-')}-{suffix}"
