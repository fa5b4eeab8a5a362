"""Encryption at rest against the real S3 server and real PostgreSQL 15 servers.

A server archives its WAL unencrypted, then (restarted with the key file in its environment, as a pod
is replaced when spec.backup.s3 changes) encrypted: the archive mixes both, restores read both, the
objects in S3 hold no plaintext, a restore with the wrong key or none is refused before anything is
downloaded, and a changed object fails loudly. docs/encryption.md's restore by hand runs as written.
"""
from __future__ import annotations

import io
import os
import pwd
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import zstandard

from e2e.harness.pg import OS_USER, LocalPostgres, _as_user
from e2e.harness.services import free_port, pg_bindir
from pgop.backup import basebackup, encryption, wal
from pgop.backup import layout as keys
from pgop.backup.encryption import Key, Keyring
from pgop.backup.restore import RestoreError, restore
from pgop.backup.s3 import Credentials, S3Storage
from tests.integration.test_backup_wal import (  # noqa: F401  (fixtures)
    CLUSTER,
    archive_env,
    archiving_postgres,
    launcher,
    s3,
    storage,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "encryption.md"
PREFIX = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []
MARKER = "tell-nobody-4711"  # a row value that must never be readable in S3
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _owned_file(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    path.chmod(0o440)
    if os.geteuid() == 0:
        pw = pwd.getpwnam(OS_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)
        os.chown(directory, pw.pw_uid, pw.pw_gid)
    return path


@pytest.fixture
def key_files():
    directory = Path(tempfile.mkdtemp(prefix="pgop-key-", dir="/var/tmp"))
    directory.chmod(0o750)
    right = _owned_file(directory, "key", os.urandom(32).hex().encode() + b"\n")
    wrong = _owned_file(directory, "other", os.urandom(32).hex().encode())
    yield {"right": right, "wrong": wrong}
    shutil.rmtree(directory, ignore_errors=True)


def _storage(s3, key_file: Path | None) -> S3Storage:
    keyring = Keyring((Key.from_file(key_file),)) if key_file else None
    return S3Storage(s3["bucket"], endpoint=s3["endpoint"], credentials=Credentials(s3["access"], s3["secret"]),
                     keyring=keyring)


def _source(pg: LocalPostgres) -> basebackup.Source:
    return basebackup.Source(host=str(pg.socket_dir), port=pg.port, user="postgres", bindir=pg.bindir,
                             prefix=PREFIX)


def _empty_pgdata() -> LocalPostgres:
    target = LocalPostgres()
    target._chown()
    target.pgdata.mkdir(mode=0o700)
    if PREFIX:
        shutil.chown(target.pgdata, OS_USER, OS_USER)
    return target


def _archive_switch(pg: LocalPostgres, storage: S3Storage, layout) -> str:
    last = pg.psql("SELECT pg_walfile_name(pg_switch_wal())")
    wait_for(lambda: storage.head(layout.wal_key(last)) is not None, f"{last} archived")
    return last


def _raw(storage: S3Storage, key: str) -> bytes:
    found = storage.get(key)
    assert found is not None, key
    body = found[1]
    try:
        return body.read()
    finally:
        body.close()


def _restore_rows(storage: S3Storage, layout, backups, name: str, bindir: str) -> str:
    target = _empty_pgdata()
    try:
        restore(storage, layout, target.pgdata, backups, name=name, bindir=bindir, prefix=PREFIX, stall_after=120,
                options=f"-p {target.port} -k {target.socket_dir} -c listen_addresses=''")
        target.start()
        return target.psql(f"SELECT count(*), max(id), count(*) FILTER (WHERE note = '{MARKER}') FROM orders")
    finally:
        target.cleanup()


def test_turning_encryption_on_mixes_plain_and_encrypted_objects_and_restores_read_both(
        archiving_postgres, archive_env, s3, key_files, monkeypatch):
    pg, layout = archiving_postgres, archive_env["layout"]
    plain, sealed = _storage(s3, None), _storage(s3, key_files["right"])
    pg.psql(f"CREATE TABLE orders (id int, note text); INSERT INTO orders SELECT g, '{MARKER}' "
            "FROM generate_series(1, 100) g")
    basebackup.take_base_backup(plain, layout, "before", _source(pg), archive_wait=60)
    plain_segment = _archive_switch(pg, plain, layout)

    # encryption on: the pod is replaced with the key file in its environment
    monkeypatch.setenv("PGOP_S3_ENCRYPTION_KEY_FILE", str(key_files["right"]))
    pg.stop()
    pg.start()
    pg.psql(f"INSERT INTO orders SELECT g, '{MARKER}' FROM generate_series(101, 200) g")
    basebackup.take_base_backup(sealed, layout, "after", _source(pg), archive_wait=60)
    pg.psql(f"INSERT INTO orders SELECT g, '{MARKER}' FROM generate_series(201, 300) g")
    sealed_segment = _archive_switch(pg, plain, layout)

    # what is in S3: the old objects as they were, the new ones encrypted, none readable
    old, new = layout.wal_key(plain_segment), layout.wal_key(sealed_segment)
    assert _raw(plain, old)[:4] == b"\x28\xb5\x2f\xfd" and "encryption" not in plain.head(old).metadata
    new_bytes = _raw(plain, new)
    assert new_bytes[:8] == encryption.MAGIC
    assert plain.head(new).metadata["encryption-key-id"] == sealed.keyring.writing.key_id
    with pytest.raises(zstandard.ZstdError):  # not a zstd stream any more
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(new_bytes)).read(100)
    tar = _raw(plain, keys.base_archive_key(layout, "after"))
    assert tar[:8] == encryption.MAGIC and MARKER.encode() not in tar
    assert MARKER.encode() not in new_bytes
    backups = basebackup.list_backups(plain, layout.path, CLUSTER)
    by_name = {b.backup_name: b for b in backups}
    assert by_name["before"].key_id is None
    assert by_name["after"].key_id == sealed.keyring.writing.key_id
    assert by_name["after"].encryption["algorithm"] == encryption.ALGORITHM

    # a restore needs the key and says which; nothing is downloaded into PGDATA before that
    target = _empty_pgdata()
    try:
        with pytest.raises(RestoreError, match=f"key of id {by_name['after'].key_id}, the given key has id "):
            restore(_storage(s3, key_files["wrong"]), layout, target.pgdata, backups, name="after")
        with pytest.raises(RestoreError, match="no encryption key is given"):
            restore(plain, layout, target.pgdata, backups, name="after")
        assert not any(target.pgdata.iterdir())
    finally:
        target.cleanup()

    # the plain backup replays plain WAL, then encrypted WAL; the encrypted backup its own
    assert _restore_rows(sealed, layout, backups, "before", pg.bindir) == "300|300|300"
    assert _restore_rows(sealed, layout, backups, "after", pg.bindir) == "300|300|300"


def test_an_encrypted_segment_round_trips_and_a_changed_or_foreign_one_fails_loudly(
        local_postgres, s3, key_files, tmp_path):
    from tests.integration.test_backup_wal import _full_segment
    sealed, plain = _storage(s3, key_files["right"]), _storage(s3, None)
    layout = keys.ArchiveLayout(CLUSTER, f"enc-{uuid.uuid4().hex[:8]}")
    segment = _full_segment(local_postgres, tmp_path)
    started = time.monotonic()
    assert wal.push(sealed, layout, segment) == wal.PUSHED
    pushed = time.monotonic() - started
    key = layout.wal_key(segment.name)
    info = plain.head(key)
    assert info.metadata["sha256"] and info.metadata["encryption"] == encryption.ALGORITHM
    started = time.monotonic()
    assert wal.fetch(sealed, layout, segment.name, tmp_path / "back") == wal.FETCHED
    fetched = time.monotonic() - started
    assert (tmp_path / "back").read_bytes() == segment.read_bytes()
    print(f"\nencrypted 16 MB segment: push {16 / pushed:.0f} MB/s, fetch {16 / fetched:.0f} MB/s, "
          f"stored {info.size / 2**20:.1f} MB")
    assert wal.push(sealed, layout, segment) == wal.ALREADY_ARCHIVED  # same content: still success

    with pytest.raises(wal.WalCorrupt, match="no encryption key is configured"):
        wal.fetch(plain, layout, segment.name, tmp_path / "nokey")
    with pytest.raises(wal.WalCorrupt, match="the configured key has id"):
        wal.fetch(_storage(s3, key_files["wrong"]), layout, segment.name, tmp_path / "wrong")

    # someone with write access to the bucket changes one byte, keeping the metadata
    changed = bytearray(_raw(plain, key))
    changed[len(changed) // 2] ^= 0x40
    plain.delete(key)
    assert plain.put_new(key, io.BytesIO(bytes(changed)), len(changed), info.metadata)
    with pytest.raises(wal.WalCorrupt, match="does not authenticate"):
        wal.fetch(sealed, layout, segment.name, tmp_path / "changed")
    assert not (tmp_path / "changed").exists() and not list(tmp_path.glob(".changed.*"))


# --------------------------------------------------------------------- docs/encryption.md by hand

def _documented_steps() -> str:
    text = DOC.read_text()
    section = text[text.index("## Restoring an encrypted archive by hand"):]
    match = re.search(r"^```sh\n(.*?)^```", section, re.S | re.M)
    assert match, f"no ```sh block under 'Restoring an encrypted archive by hand' in {DOC}"
    return match.group(1)


def test_the_documented_restore_by_hand_decrypts_with_the_cli(archiving_postgres, archive_env, s3, key_files,
                                                              launcher, monkeypatch):
    pg, layout = archiving_postgres, archive_env["layout"]
    monkeypatch.setenv("PGOP_S3_ENCRYPTION_KEY_FILE", str(key_files["right"]))
    pg.stop()
    pg.start()
    sealed = _storage(s3, key_files["right"])
    pg.psql(f"CREATE TABLE orders (id int, note text); INSERT INTO orders SELECT g, '{MARKER}' "
            "FROM generate_series(1, 100) g")
    basebackup.take_base_backup(sealed, layout, "by-hand", _source(pg), archive_wait=60)
    pg.psql(f"INSERT INTO orders SELECT g, '{MARKER}' FROM generate_series(101, 250) g")
    _archive_switch(pg, sealed, layout)

    root = Path(tempfile.mkdtemp(prefix="pgop-by-hand-", dir="/var/tmp"))
    port, bindir = free_port(), pg_bindir()
    if os.geteuid() == 0:
        shutil.chown(root, OS_USER, OS_USER)
    steps = _documented_steps()
    for placeholder, value in {
        "AWS_ACCESS_KEY_ID=...": f"AWS_ACCESS_KEY_ID={s3['access']}",
        "AWS_SECRET_ACCESS_KEY=...": f"AWS_SECRET_ACCESS_KEY={s3['secret']}",
        "https://s3.example": s3["endpoint"],
        "s3://pg-backups/shop/sales/orders": f"s3://{s3['bucket']}/{layout.root.rstrip('/')}",
        "<backup name>": "by-hand",
        "/usr/lib/postgresql/15/bin": bindir,
        "port = 5433": f"port = {port}",
        "-p 5433": f"-p {port}",
        "/secret/backup.key": str(key_files["right"]),
        "/restore": str(root),
    }.items():
        assert placeholder in steps, f"{DOC.name}: the by-hand steps no longer have {placeholder!r}"
        steps = steps.replace(placeholder, value)
    script = root / "restore.sh"
    script.write_text(steps)
    if os.geteuid() == 0:
        shutil.chown(script, OS_USER, OS_USER)
    # `python3` with pgop's package installed: the system Python with this checkout and the venv's
    # packages on its path (the launcher's), for this command only: Debian's aws keeps its own botocore
    launcher_lines = (Path(launcher) / "pgop").read_text().splitlines()
    bindir_python = root / "bin"
    bindir_python.mkdir()
    (bindir_python / "python3").write_text(
        f"{launcher_lines[0]}\nimport runpy, sys\n{launcher_lines[2]}\n"
        "assert sys.argv[1] == '-m'\nsys.argv = sys.argv[2:]\n"
        "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n")
    (bindir_python / "python3").chmod(0o755)
    bindir_python.chmod(0o755)
    env = {"PATH": f"{bindir_python}:{SYSTEM_PATH}", "LANG": "C.UTF-8", "HOME": pwd.getpwnam(OS_USER).pw_dir}
    pgdata = root / "pgdata"
    try:
        done = _as_user(["bash", "-e", "-o", "pipefail", str(script)], cwd=root, env=env, timeout=180)
        log = (root / "postgres.log").read_text()[-3000:] if (root / "postgres.log").exists() else ""
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{log}"

        def promoted():
            p = _as_user([f"{bindir}/psql", "-h", str(root), "-p", str(port), "-U", "postgres", "-XAtq", "-c",
                          "SELECT pg_is_in_recovery()"], timeout=30)
            return p.returncode == 0 and p.stdout.strip() == "f"
        wait_for(promoted, "the restored server to promote", timeout=120)
        rows = _as_user([f"{bindir}/psql", "-h", str(root), "-p", str(port), "-U", "postgres", "-XAtq", "-c",
                         "SELECT count(*), max(id) FROM orders"], timeout=30)
        assert rows.stdout.strip() == "250|250"
        assert "restored log file" in (root / "postgres.log").read_text()
    finally:
        if (pgdata / "postmaster.pid").exists():
            _as_user([f"{bindir}/pg_ctl", "-D", str(pgdata), "-m", "immediate", "-w", "stop"], timeout=60)
        shutil.rmtree(root, ignore_errors=True)
