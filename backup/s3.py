"""The S3 adapter: a bucket behind an explicit endpoint, region and credentials.

Path-style addressing (bucket in the path, not the host name) works with every S3-compatible
server and with AWS; standard retry mode retries throttling and 5xx with backoff, a bounded
number of times, so a command that PostgreSQL runs (archive_command) always returns. Checksums
are asked of boto only where S3 requires them: pgop verifies its own sha256 of the content, and
S3-compatible servers differ in which of the newer flexible checksums they accept.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from pgop.backup.encryption import Key, Keyring
from pgop.kernel import podenv

# Files of the projected credentials Secret (spec.backup.s3.credentialsSecret). The AWS_* names
# (the usual keys of such Secrets) are read when the short ones are absent.
ACCESS_KEY_FILES = ("ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
SECRET_KEY_FILES = ("ACCESS_SECRET_KEY", "AWS_SECRET_ACCESS_KEY")

# What the pod tells `pgop agent wal-push` / `wal-fetch` (the pod contract, pgop/kernel/podenv.py).
ENV_BUCKET = podenv.ENV_S3_BUCKET
ENV_PATH = podenv.ENV_S3_PATH
ENV_CREDENTIALS_DIR = podenv.ENV_S3_CREDENTIALS_DIR
ENV_ARCHIVE_CLUSTER = podenv.ENV_S3_CLUSTER  # whose archive; default PGOP_CLUSTER (a restore sets it)

DELETE_BATCH = 1000  # the most keys S3's DeleteObjects takes in one request
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
PRECONDITION_CODES = frozenset({"412", "PreconditionFailed", "ConditionalRequestConflict"})


class S3Error(RuntimeError):
    pass


class CredentialsError(S3Error):
    pass


def describe_error(error: Exception) -> str:
    """One line for a log, a status or an Event: S3's error code and message, or why S3 could not
    be reached (botocore's text names the endpoint, never the keys)."""
    from botocore.exceptions import BotoCoreError
    if isinstance(error, ClientError):
        info = error.response.get("Error") or {}
        return f"S3 {info.get('Code', '?')}: {info.get('Message', '')}".strip()
    if isinstance(error, BotoCoreError):
        return f"S3 unreachable: {error}"
    return str(error) or type(error).__name__


def error_code(error: ClientError) -> str:
    return str((error.response.get("Error") or {}).get("Code") or
               (error.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or "")


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)

    @classmethod
    def from_directory(cls, directory: Path) -> Credentials:
        def first(names: tuple[str, ...]) -> str:
            for name in names:
                try:
                    value = (directory / name).read_text().strip()
                except FileNotFoundError:
                    continue
                if value:
                    return value
            raise CredentialsError(f"no {' or '.join(names)} file in {directory}: the credentials Secret "
                                   f"needs the keys {ACCESS_KEY_FILES[0]} and {SECRET_KEY_FILES[0]}")
        return cls(first(ACCESS_KEY_FILES), first(SECRET_KEY_FILES))

    @classmethod
    def from_secret(cls, secret: Mapping[str, Any]) -> Credentials:
        """From a Secret object as the API returns it (base64 `data`), for the operator and the CLI."""
        import base64
        data = secret.get("data") or {}
        name = (secret.get("metadata") or {}).get("name", "?")

        def first(names: tuple[str, ...]) -> str:
            for key in names:
                value = base64.b64decode(data.get(key) or "").decode(errors="replace").strip()
                if value:
                    return value
            raise CredentialsError(f"Secret {name} has no key {' or '.join(names)}: it needs "
                                   f"{ACCESS_KEY_FILES[0]} and {SECRET_KEY_FILES[0]}")
        return cls(first(ACCESS_KEY_FILES), first(SECRET_KEY_FILES))


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    path: str = ""
    endpoint: str | None = None
    region: str | None = None
    credentials: Credentials | None = None  # None: boto's default chain (e.g. an IAM role)
    # The keys to encrypt what is written (the first) and decrypt what is read; None: write plain.
    keyring: Keyring | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if env is None else env
        archive = podenv.ArchiveEnv.from_env(env)
        if archive is None:
            raise S3Error(f"{ENV_BUCKET} is not set: this pod has no spec.backup.s3 to archive to")
        directory = archive.credentials_dir
        credentials = None
        if directory and Path(directory).is_dir():
            credentials = Credentials.from_directory(Path(directory))
        elif directory:
            raise CredentialsError(f"{ENV_CREDENTIALS_DIR}={directory} is not a directory: the credentials "
                                   "Secret is not mounted")
        keyring = Keyring((Key.from_file(archive.encryption_key_file),)) if archive.encryption_key_file else None
        return cls(bucket=archive.bucket, path=archive.path, endpoint=archive.endpoint, region=archive.region,
                   credentials=credentials, keyring=keyring)


class S3Storage:
    """One bucket. Keys are whole object names; the layout (pgop.backup.layout) makes them."""

    def __init__(self, bucket: str, *, endpoint: str | None = None, region: str | None = None,
                 credentials: Credentials | None = None, max_attempts: int = 5,
                 connect_timeout: float = 5.0, read_timeout: float = 60.0, client: Any = None,
                 keyring: Keyring | None = None):
        self.bucket = bucket
        # Not used by this class: the streams above it (wal, basebackup, restore) encrypt and decrypt.
        self.keyring = keyring
        if client is None:
            config = Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": max_attempts},
                connect_timeout=connect_timeout, read_timeout=read_timeout,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            kwargs: dict[str, Any] = {"endpoint_url": endpoint, "region_name": region or "us-east-1",
                                      "config": config}
            if credentials is not None:
                kwargs.update(aws_access_key_id=credentials.access_key_id,
                              aws_secret_access_key=credentials.secret_access_key)
            client = boto3.session.Session().client("s3", **kwargs)
        self.client = client

    @classmethod
    def from_settings(cls, settings: S3Settings, **kwargs) -> S3Storage:
        return cls(settings.bucket, endpoint=settings.endpoint, region=settings.region,
                   credentials=settings.credentials, keyring=settings.keyring, **kwargs)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            found = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error_code(error) in NOT_FOUND_CODES:
                return None
            raise
        return ObjectInfo(key, int(found.get("ContentLength", 0)), dict(found.get("Metadata") or {}))

    def put_new(self, key: str, body: IO[bytes], size: int, metadata: Mapping[str, str],
                content_type: str = "application/octet-stream") -> bool:
        """Create the object only if no object of that name exists (If-None-Match: *). False when
        one appeared meanwhile; on a server that ignores the condition, a racing writer wins last."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentLength=size,
                                   Metadata=dict(metadata), ContentType=content_type, IfNoneMatch="*")
        except ClientError as error:
            if error_code(error) in PRECONDITION_CODES:
                return False
            raise
        return True

    def get(self, key: str) -> tuple[ObjectInfo, Any] | None:
        """The object's info and its streaming body (read it in chunks, then close it), or None."""
        try:
            found = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error_code(error) in NOT_FOUND_CODES:
                return None
            raise
        info = ObjectInfo(key, int(found.get("ContentLength", 0)), dict(found.get("Metadata") or {}))
        return info, found["Body"]

    def list(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        for page in paginator.paginate(**kwargs):
            for item in page.get("Contents") or ():
                yield ObjectInfo(item["Key"], int(item.get("Size", 0)), {})

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_many(self, keys: Sequence[str]) -> int:
        """Deletes `keys` with one DeleteObjects request per DELETE_BATCH of them (retention of a
        long archive: thousands of WAL segments in a few requests, not one each). A key that is
        already gone counts as deleted, as with DeleteObject. Raises S3Error naming how many keys
        S3 refused and its first error code; the keys are never in the text. Returns the requests sent."""
        requests = 0
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            answer = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            requests += 1
            refused = [e for e in answer.get("Errors") or () if str(e.get("Code")) not in NOT_FOUND_CODES]
            if refused:
                raise S3Error(f"S3 refused to delete {len(refused)} of {len(batch)} object(s): "
                              f"{refused[0].get('Code', '?')}: {refused[0].get('Message', '')}".rstrip(": "))
        return requests
