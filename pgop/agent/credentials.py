"""Passwords come from the mounted secret files, and go only where libpq reads them: a passfile.

Never into argv (visible in `ps`), an environment variable, a log line or a status.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "superuser"
REPLICATION = "replication"
APP = "app"


class CredentialsError(RuntimeError):
    pass


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    password_file: Path | None = None


def read_credentials(secrets_dir: Path, kind: str) -> Credentials:
    """`<secrets_dir>/<kind>/{username,password}`, as the pod projects the cluster's Secrets."""
    directory = Path(secrets_dir) / kind
    try:
        username = (directory / "username").read_text().strip()
        password = (directory / "password").read_text().rstrip("\r\n")
    except OSError as error:
        raise CredentialsError(f"cannot read the {kind} credentials from {directory}: {error.strerror}") from None
    if not username or not password:
        raise CredentialsError(f"the {kind} credentials in {directory} are empty")
    return Credentials(username, password, directory / "password")


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def pgpass_text(entries: list[Credentials]) -> str:
    """One line per role, any host, port and database (the role is what tells them apart)."""
    return "".join(f"*:*:*:{_pgpass_field(c.username)}:{_pgpass_field(c.password)}\n" for c in entries)


def write_private(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Write a file only its owner can read, atomically (libpq ignores a passfile others can read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    if owner is not None:
        os.chown(temporary, *owner)
    os.replace(temporary, path)
