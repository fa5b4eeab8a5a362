"""Whose archive this is: the marker `<root>/archive.json`, and the check that keeps one database
system from archiving into another's archive.

The first server that archives (or backs up) to a root writes the marker, naming its database
system identifier (pg_control), namespace and cluster. Before a WAL file is archived and before a
base backup is uploaded, the server's system identifier is compared with the marker's. A
different one means another database owns this root: typically a cluster deleted and created
again from scratch with the same name, bucket and path, or a second cluster of the same name
archiving to a legacy (namespace-less) root. Its WAL and backups would mix with ours and a restore
could replay the wrong database's WAL, so the push is refused: archive_command fails (PostgreSQL
keeps the WAL in pg_wal and retries; nothing is lost) and the refusal is left where the agent reads
it (`last_refusal`), which the PgCluster shows as ContinuousArchiving False, reason
ArchiveBelongsToAnotherCluster.

A cluster restored into a new cluster shares its source's system identifier, but archives to a
root of its own, so the check does not stand in its way.

archive_command runs once per segment, as a process of its own: the verdict "ours" is cached in
PGDATA/pg_stat_tmp (pg_basebackup leaves that directory's files out, so a clone or a restore
never inherits it) for CACHE_SECONDS, keyed by the bucket, root and system identifier: one GET of
the marker per five minutes instead of one per segment. A refusal is never cached: once the user
has moved the old archive away, the next retry archives.
"""
from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgop.backup.layout import ArchiveLayout
from pgop.backup.s3 import S3Storage
from pgop.kernel.conditions import rfc3339
from pgop.kernel.model import REASON_FOREIGN_ARCHIVE

log = logging.getLogger(__name__)

FORMAT = "pgop.io/archive"
FORMAT_VERSION = 1
CACHE_FILE = Path("pg_stat_tmp") / "pgop-archive-check.json"
CACHE_SECONDS = 300.0

CLAIMED = "claimed"  # no marker was there: this server's is now
OURS = "ours"


class MarkerError(RuntimeError):
    """The marker cannot be read (not JSON, not pgop's)."""


class ForeignArchive(RuntimeError):
    """The archive root belongs to another database system. str() starts with the reason."""

    reason = REASON_FOREIGN_ARCHIVE

    def __init__(self, message: str):
        super().__init__(f"{REASON_FOREIGN_ARCHIVE}: {message}")
        self.message = message


@dataclass(frozen=True)
class Marker:
    system_identifier: str
    namespace: str = ""
    cluster: str = ""
    created_at: str = ""
    created_by: str = ""  # the instance (or backup) that wrote it

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "formatVersion": FORMAT_VERSION,
                           "systemIdentifier": self.system_identifier, "namespace": self.namespace,
                           "cluster": self.cluster, "createdAt": self.created_at,
                           "createdBy": self.created_by}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: bytes | str) -> Marker:
        try:
            document = json.loads(text)
        except ValueError as error:
            raise MarkerError(f"not JSON: {error}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise MarkerError(f"not a {FORMAT} document")
        if int(document.get("formatVersion") or 0) > FORMAT_VERSION:
            raise MarkerError(f"format version {document.get('formatVersion')} is newer than this pgop reads "
                              f"({FORMAT_VERSION})")
        system_identifier = str(document.get("systemIdentifier") or "")
        if not system_identifier:
            raise MarkerError("it has no systemIdentifier")
        return cls(system_identifier, str(document.get("namespace") or ""), str(document.get("cluster") or ""),
                   str(document.get("createdAt") or ""), str(document.get("createdBy") or ""))


def location(storage_bucket: str, layout: ArchiveLayout) -> str:
    return f"s3://{storage_bucket}/{layout.root}"


def foreign_message(where: str, marker: Marker, system_identifier: str) -> str:
    owner = "/".join(p for p in (marker.namespace, marker.cluster) if p) or "another cluster"
    since = f" since {marker.created_at}" if marker.created_at else ""
    return (f"the archive {where} belongs to database system {marker.system_identifier} ({owner}{since}), "
            f"this database system is {system_identifier}: refusing to mix their WAL and backups. "
            "Point spec.backup.s3.path elsewhere, or move the old archive away (with its archive.json) "
            "if it is no longer needed")


def judge(marker: Marker | None, system_identifier: str, where: str) -> str:
    """Whether a server may archive to a root (pure): CLAIMED when no marker is there (write ours),
    OURS when it names this system; ForeignArchive otherwise."""
    if marker is None:
        return CLAIMED
    if marker.system_identifier == system_identifier:
        return OURS
    raise ForeignArchive(foreign_message(where, marker, system_identifier))


def read_marker(storage: S3Storage, layout: ArchiveLayout) -> Marker | None:
    found = storage.get(layout.marker_key)
    if found is None:
        return None
    _, body = found
    try:
        text = body.read()
    finally:
        body.close()
    try:
        return Marker.from_json(text)
    except MarkerError as error:
        raise MarkerError(f"s3://{storage.bucket}/{layout.marker_key} cannot be read ({error}); it is not pgop's, "
                          "or damaged: remove it and pgop writes it anew") from None


def ensure_ours(storage: S3Storage, layout: ArchiveLayout, system_identifier: str, *,
                namespace: str = "", cluster: str = "", created_by: str = "") -> str:
    """CLAIMED or OURS; ForeignArchive when the root's marker names another database system."""
    where = location(storage.bucket, layout)
    verdict = judge(read_marker(storage, layout), system_identifier, where)
    if verdict == OURS:
        return OURS
    marker = Marker(system_identifier, namespace or layout.namespace, cluster or layout.cluster,
                    rfc3339(datetime.now(UTC)), created_by)
    body = marker.to_json().encode()
    if storage.put_new(layout.marker_key, io.BytesIO(body), len(body), {}, content_type="application/json"):
        log.info("claimed the archive %s for database system %s", where, system_identifier)
        return CLAIMED
    # Another server wrote one between our look and our write: judge theirs.
    theirs = read_marker(storage, layout)
    if theirs is None:
        raise MarkerError(f"{layout.marker_key} appeared and vanished while claiming the archive; try again")
    judge(theirs, system_identifier, where)
    return OURS


# ----------------------------------------------------------------- the cached check of wal-push

def _cache_key(storage: S3Storage, layout: ArchiveLayout, system_identifier: str) -> str:
    endpoint = getattr(getattr(storage.client, "meta", None), "endpoint_url", "") or ""
    return f"{endpoint}|{storage.bucket}|{layout.root}|{system_identifier}"


def _read_cache(pgdata: Path) -> dict[str, Any]:
    try:
        data = json.loads((pgdata / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(pgdata: Path, data: dict[str, Any]) -> None:
    """Atomically; a failure costs the cache, never the archiving."""
    path = pgdata / CACHE_FILE
    try:
        handle, temporary = tempfile.mkstemp(prefix=".pgop-archive-check.", dir=path.parent)
        with os.fdopen(handle, "w") as out:
            json.dump(data, out)
        os.replace(temporary, path)
    except OSError as error:
        log.debug("cannot write %s: %s", path, error)


def check_before_push(storage: S3Storage, layout: ArchiveLayout, system_identifier: str, pgdata: Path, *,
                      namespace: str = "", created_by: str = "", now: float | None = None) -> str:
    """ensure_ours, skipped while a recent "ours" for the same bucket, root and system is cached in
    PGDATA. A refusal is recorded there for the agent (last_refusal) and raised."""
    now = time.time() if now is None else now
    key = _cache_key(storage, layout, system_identifier)
    cached = _read_cache(pgdata)
    if cached.get("key") == key and cached.get("verdict") == OURS and \
            0 <= now - float(cached.get("checkedAt") or 0) < CACHE_SECONDS:
        return OURS
    try:
        verdict = ensure_ours(storage, layout, system_identifier, namespace=namespace, created_by=created_by)
    except ForeignArchive as refused:
        _write_cache(pgdata, {"key": key, "verdict": "refused", "checkedAt": now,
                              "reason": refused.reason, "message": refused.message})
        raise
    _write_cache(pgdata, {"key": key, "verdict": OURS, "checkedAt": now})
    return verdict


def last_refusal(pgdata: Path) -> tuple[str, str] | None:
    """(reason, message) when the last check of wal-push in this PGDATA refused the archive."""
    cached = _read_cache(pgdata)
    if cached.get("verdict") != "refused":
        return None
    return str(cached.get("reason") or REASON_FOREIGN_ARCHIVE), str(cached.get("message") or "")
