"""Client-side encryption at rest of what pgop writes to S3 (base backups, WAL, history files).

Optional: a location whose spec.backup.s3.encryption names a key Secret gets the key file mounted
in its pods (PGOP_S3_ENCRYPTION_KEY_FILE) and every object it writes from then on is the zstd stream
sealed in this format. Reading is decided by the object itself: one that starts with MAGIC is
decrypted (and needs its key), any other is read as before, so an archive that turned encryption on
keeps its older objects readable.

The format (version 1; docs/encryption.md for people), a streaming AEAD in the STREAM
construction of Hoang, Reyhanitabar, Rogaway and Vizar (as age and Tink use it):

    header  = MAGIC (8: b"PGOPENC" + version 1) | key id (8) | salt (32)
    body    = chunk_0 | chunk_1 | ... | chunk_n       (at least one chunk; the last may be empty)
    chunk_i = AES-256-GCM(file key, nonce_i, plaintext_i (CHUNK bytes, the last <= CHUNK), aad=header)
              = ciphertext_i | tag (16)
    nonce_i = i as 11 bytes big-endian | 0x01 for the last chunk, 0x00 otherwise
    file key = HKDF-SHA256(key material, salt, info=b"pgop.io/encryption/v1 file key", 32 bytes)
    key id   = HKDF-SHA256(key material, no salt, info=b"pgop.io/encryption/v1 key id", 8 bytes)

The key material is the Secret's value (surrounding whitespace removed, at least 32 bytes, e.g.
`openssl rand -base64 32`). A fresh salt per object gives every object its own key, so counter
nonces never repeat under one key. The header is authenticated by every chunk; a chunk moved,
dropped, or a stream cut at a chunk boundary fails (the nonce carries the position and "last").
Nothing is released to the caller before its chunk's tag was checked, so a tampered object never
yields a byte of unauthenticated plaintext; memory is one chunk.

The key id names the key without revealing it (a one-way function of the key); the catalog and the
object metadata carry it, so a restore knows which key it needs before it downloads gigabytes.
"""
from __future__ import annotations

import hmac
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pgop.kernel.conditions import REASON_ENCRYPTION_KEY_MISMATCH

MAGIC = b"PGOPENC\x01"
ALGORITHM = "pgop-aes256gcm-stream-v1"  # what the catalog and the object metadata say
KEY_ID_SIZE = 8
SALT_SIZE = 32
HEADER_SIZE = len(MAGIC) + KEY_ID_SIZE + SALT_SIZE
CHUNK = 64 << 10
TAG = 16
MIN_KEY_BYTES = 32

# Object metadata (x-amz-meta-*) of an encrypted object, next to wal.META_*.
META_ENCRYPTION = "encryption"
META_KEY_ID = "encryption-key-id"


class EncryptionError(RuntimeError):
    """An object that cannot be decrypted with the keys at hand, or that is not intact. The text
    names key ids and objects, never key material."""


def _hkdf(material: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(material)


@dataclass(frozen=True)
class Key:
    """Key material and its id. repr shows the id only."""

    material: bytes = field(repr=False)
    key_id: str = ""

    @classmethod
    def from_bytes(cls, material: bytes, where: str = "the key") -> Key:
        material = material.strip()
        if len(material) < MIN_KEY_BYTES:
            raise EncryptionError(f"{where} is too short ({len(material)} bytes): an encryption key needs at "
                                  f"least {MIN_KEY_BYTES} bytes, e.g. `openssl rand -base64 32`")
        return cls(material, _hkdf(material, None, b"pgop.io/encryption/v1 key id", KEY_ID_SIZE).hex())

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Key:
        try:
            material = Path(path).read_bytes()
        except FileNotFoundError:
            raise EncryptionError(f"the encryption key file {path} does not exist: is the key Secret "
                                  "(spec.backup.s3.encryption.keySecret) there and does it have that key?") from None
        return cls.from_bytes(material, f"the encryption key in {path}")

    def file_key(self, salt: bytes) -> AESGCM:
        return AESGCM(_hkdf(self.material, salt, b"pgop.io/encryption/v1 file key", 32))


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class EncryptingWriter:
    """A write-only file: what is written to it goes to `target` encrypted. finish() writes the
    last chunk (required: a stream without it does not decrypt); it does not close `target`."""

    def __init__(self, target: IO[bytes] | Any, key: Key):
        salt = os.urandom(SALT_SIZE)
        self.header = MAGIC + bytes.fromhex(key.key_id) + salt
        self._aead = key.file_key(salt)
        self._target = target
        self._buffer = bytearray()
        self._counter = 0
        self._written = 0  # plaintext bytes
        self._finished = False
        target.write(self.header)

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._finished:
            raise ValueError("write after finish()")
        view = memoryview(data).cast("B")
        size = len(view)
        self._written += size
        if self._buffer:  # top up the chunk begun by an earlier write
            take = min(size, CHUNK - len(self._buffer))
            self._buffer += view[:take]
            view = view[take:]
            if not view:  # keep a full chunk back: it may be the last
                return size
            self._seal(bytes(self._buffer), last=False)
            self._buffer.clear()
        # Whole chunks straight from the caller's buffer; at least one byte stays back, since the
        # last chunk must be sealed as the last.
        while len(view) > CHUNK:
            self._seal(view[:CHUNK], last=False)
            view = view[CHUNK:]
        self._buffer += view
        return size

    def flush(self) -> None:
        flush = getattr(self._target, "flush", None)
        if flush is not None:
            flush()

    def _seal(self, plaintext: bytes | memoryview, last: bool) -> None:
        self._target.write(self._aead.encrypt(_nonce(self._counter, last), plaintext, self.header))
        self._counter += 1

    def finish(self) -> None:
        if not self._finished:
            self._seal(bytes(self._buffer), last=True)
            self._buffer.clear()
            self._finished = True
            self.flush()


def encrypted_size(size: int) -> int:
    """The size of the encrypted form of `size` bytes."""
    chunks = max(1, -(-size // CHUNK))
    return HEADER_SIZE + size + chunks * TAG


class DecryptingReader:
    """A read-only file over an encrypted stream. Each chunk is authenticated before any of it is
    returned; a wrong key, a changed byte, a missing or moved chunk, or a stream cut short raise
    EncryptionError. `source` is read in whole ciphertext chunks (one chunk in memory)."""

    def __init__(self, source: IO[bytes] | Any, header: bytes, key: Key, name: str = "the object"):
        self._source = source
        self._header = header
        self._aead = key.file_key(header[len(MAGIC) + KEY_ID_SIZE:])
        self._name = name
        self._counter = 0
        self._done = False
        self._plain = b""
        self._offset = 0
        self._pending = _read_exactly(source, CHUNK + TAG)

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> None:
        sealed = self._pending
        self._pending = _read_exactly(self._source, CHUNK + TAG) if len(sealed) == CHUNK + TAG else b""
        last = not self._pending
        if len(sealed) < TAG:
            raise EncryptionError(f"{self._name} is truncated: the encrypted stream ends inside a chunk")
        try:
            self._plain = self._aead.decrypt(_nonce(self._counter, last), sealed, self._header)
        except InvalidTag:
            if last:
                raise EncryptionError(f"{self._name} does not authenticate at chunk {self._counter}: it was "
                                      "changed or cut short (or not encrypted with this key)") from None
            raise EncryptionError(f"{self._name} does not authenticate at chunk {self._counter}: it was "
                                  "changed (or not encrypted with this key)") from None
        self._offset = 0
        self._counter += 1
        self._done = last

    def read(self, size: int = -1) -> bytes:
        pieces: list[bytes] = []
        wanted = size if size >= 0 else 1 << 62
        while wanted > 0:
            left = len(self._plain) - self._offset
            if left <= 0:
                if self._done:
                    break
                self._next_chunk()
                continue
            take = min(wanted, left)
            pieces.append(self._plain if take == len(self._plain) else
                          self._plain[self._offset:self._offset + take])
            self._offset += take
            wanted -= take
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


class _Prefixed:
    """A read-only file: `head` (bytes already read from `source`), then the rest of `source`."""

    def __init__(self, head: bytes, source: IO[bytes] | Any):
        self._head = head
        self._source = source

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                data, self._head = self._head + self._source.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._source.read(size)

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


def _read_exactly(source: IO[bytes] | Any, size: int) -> bytes:
    """`size` bytes, fewer only at the end of the stream (S3 bodies may return short reads)."""
    parts: list[bytes] = []
    wanted = size
    while wanted > 0:
        data = source.read(wanted)
        if not data:
            break
        parts.append(data)
        wanted -= len(data)
    return b"".join(parts)


@dataclass(frozen=True)
class Keyring:
    """The keys a reader may use, by key id, and the one a writer uses (the first)."""

    keys: tuple[Key, ...] = ()

    @property
    def writing(self) -> Key | None:
        return self.keys[0] if self.keys else None

    def find(self, key_id: str) -> Key | None:
        return next((k for k in self.keys if hmac.compare_digest(k.key_id, key_id)), None)

    def ids(self) -> list[str]:
        return [k.key_id for k in self.keys]


def key_mismatch(what: str, key_id: str | None, keyring: Keyring | None) -> str | None:
    """Why `what`, encrypted with the key of `key_id` (None: not encrypted), cannot be read with
    `keyring`; None when it can (pure: the operator and the restore decide with it)."""
    if not key_id or (keyring is not None and keyring.find(key_id) is not None):
        return None
    if keyring is None or not keyring.keys:
        return (f"{REASON_ENCRYPTION_KEY_MISMATCH}: {what} is encrypted with the key of id {key_id} and no encryption key is given: set "
                "spec.backup.s3.encryption.keySecret (or the recovery's s3.encryption.keySecret) to its Secret")
    return (f"{REASON_ENCRYPTION_KEY_MISMATCH}: {what} is encrypted with the key of id {key_id}, the given key has id {', '.join(keyring.ids())}: "
            "name the Secret of the key it was made with")


def is_encrypted(head: bytes) -> bool:
    return head[:len(MAGIC)] == MAGIC


def open_reader(source: IO[bytes] | Any, keyring: Keyring | None, name: str = "the object",
                require: bool = False) -> Any:
    """A reader of `source`'s plaintext: decrypted when it starts with MAGIC, else `source` as it
    is (an object written before encryption was turned on), unless `require` (the catalog says the
    object is encrypted: a plain one there is a replaced object)."""
    head = _read_exactly(source, HEADER_SIZE)
    if not is_encrypted(head):
        if require:
            raise EncryptionError(f"{name} should be encrypted (its catalog says so) but is not: "
                                  "it was replaced; refusing it")
        return _Prefixed(head, source)
    if len(head) < HEADER_SIZE:
        raise EncryptionError(f"{name} is truncated: its encryption header is incomplete")
    key_id = head[len(MAGIC):len(MAGIC) + KEY_ID_SIZE].hex()
    key = keyring.find(key_id) if keyring else None
    if key is None:
        have = (f"the configured key has id {', '.join(keyring.ids())}" if keyring and keyring.keys
                else "no encryption key is configured (spec.backup.s3.encryption.keySecret)")
        raise EncryptionError(f"{name} is encrypted with the key of id {key_id}; {have}")
    return DecryptingReader(source, head, key, name)


def writing_key(storage: Any) -> Key | None:
    """The key what `storage` (an S3Storage) writes is encrypted with; None: written plain."""
    keyring: Keyring | None = getattr(storage, "keyring", None)
    return keyring.writing if keyring is not None else None


def reading_keys(storage: Any) -> Keyring | None:
    return getattr(storage, "keyring", None)


def metadata(key: Key) -> dict[str, str]:
    return {META_ENCRYPTION: ALGORITHM, META_KEY_ID: key.key_id}


# ---------------------------------------------------------------- by hand: python -m pgop.backup.encryption


USAGE = """usage: python -m pgop.backup.encryption decrypt KEY_FILE   < encrypted > plain
       python -m pgop.backup.encryption encrypt KEY_FILE   < plain > encrypted
       python -m pgop.backup.encryption key-id KEY_FILE
An object that is not encrypted passes through decrypt unchanged. Exit 0 only when the whole
stream authenticated; anything written to stdout before a failure is to be thrown away."""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("decrypt", "encrypt", "key-id"):
        print(USAGE, file=sys.stderr)
        return 2
    command, key_file = args
    try:
        key = Key.from_file(key_file)
        if command == "key-id":
            print(key.key_id)
            return 0
        source, target = sys.stdin.buffer, sys.stdout.buffer
        if command == "encrypt":
            writer = EncryptingWriter(target, key)
            while data := source.read(1 << 20):
                writer.write(data)
            writer.finish()
        else:
            reader = open_reader(source, Keyring((key,)), "stdin")
            while data := reader.read(1 << 20):
                target.write(data)
        target.flush()
    except EncryptionError as error:
        print(f"pgop encryption: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
