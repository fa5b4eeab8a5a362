"""A restore's files reach the disk while tar writes them (pgop.backup.durable), and a restore
warms the restore_command's spool before PostgreSQL asks (pgop.backup.prefetch.warm)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pgop.backup import durable, prefetch, walget
from pgop.backup.durable import SyncBehind, member_name

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("line,name", [
    ("base/1/1259\n", "base/1/1259"),
    ("global/pg_control", "global/pg_control"),
    ("base/1/\n", None),          # a directory: synced with the others at the end
    ("\n", None),
    ("/etc/passwd\n", None),      # never a path outside PGDATA
    ("base/../../x\n", None),
])
def test_tar_lines_name_the_members_to_sync(line, name):
    assert member_name(line) == name


def _tar_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_every_member_tar_names_is_synced_and_the_restore_is_complete(tmp_path):
    """tar -x -v as a restore runs it: every file lands, each named member is fsynced once the
    next starts (the last at finish), and finish waits for all of them."""
    files = {f"base/1/{n}": os.urandom(1000 + n) for n in range(50)} | {"global/pg_control": b"c" * 8192}
    tar = subprocess.Popen(["tar", "-x", "-v", "-f", "-", "-C", str(tmp_path)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE)
    syncer = SyncBehind(tmp_path)
    synced: list[str] = []
    original = durable.fsync_path

    def counting(path):
        synced.append(os.path.relpath(path, tmp_path))
        original(path)

    durable.fsync_path = counting
    try:
        out, _ = tar.communicate(_tar_of(files))
        for line in out.decode().splitlines(keepends=True):
            syncer.feed(line)
        syncer.written()
        syncer.finish()
    finally:
        durable.fsync_path = original
    assert tar.returncode == 0
    assert {name: (tmp_path / name).read_bytes() for name in files} == files
    assert set(files) <= set(synced)
    assert {"base", "base/1", "global", "."} <= set(synced)  # the directories too


def test_a_member_that_cannot_be_synced_fails_the_restore(tmp_path):
    syncer = SyncBehind(tmp_path)
    syncer.feed("base/1/never-written\n")
    with pytest.raises(FileNotFoundError):
        syncer.finish()


def test_the_member_being_written_is_written_back_early_and_may_not_exist_yet(tmp_path, monkeypatch):
    """While a member is written only its write-back starts (an fsync of a file still growing
    costs a journal commit and a cache flush each time); it is fsynced once complete."""
    (tmp_path / "big").write_bytes(b"x" * 4096)
    (tmp_path / "pg_tblspc").mkdir()
    (tmp_path / "pg_tblspc" / "16384").symlink_to("/nonexistent")
    fsynced, started = [], []
    original_fsync, original_start = durable.fsync_path, durable.start_write_back
    monkeypatch.setattr(durable, "fsync_path", lambda p: (fsynced.append(os.path.relpath(p, tmp_path)),
                                                          original_fsync(p)))
    monkeypatch.setattr(durable, "start_write_back", lambda p: (started.append(os.path.relpath(p, tmp_path)),
                                                                original_start(p)))
    syncer = SyncBehind(tmp_path)
    syncer.feed("not-yet\n")
    syncer.written()       # tar named it but has not created it: no error
    for future in syncer.pending:
        future.result()
    (tmp_path / "not-yet").write_bytes(b"y")
    syncer.feed("big\n")   # not-yet is complete now: synced
    syncer.written()
    for future in syncer.pending:
        future.result()
    assert started == ["not-yet", "big"] and fsynced == ["not-yet"]  # big is still being written
    syncer.feed("pg_tblspc/16384\n")  # a symlink: neither followed nor an error
    syncer.written()
    syncer.finish()
    assert "big" in fsynced and "pg_tblspc/16384" in started


def test_write_back_starts_on_what_is_written_and_leaves_the_content_alone(tmp_path):
    data = os.urandom(1 << 20)
    (tmp_path / "f").write_bytes(data)
    durable.start_write_back(tmp_path / "f")
    durable.start_write_back(tmp_path / "missing")  # not created yet: nothing to do
    assert (tmp_path / "f").read_bytes() == data


def test_no_warm_prefetch_when_prefetching_is_off_or_the_name_is_no_segment(tmp_path):
    started = []
    serve = lambda *args: started.append(args)  # noqa: E731
    target = str(tmp_path / "pg_wal" / "000000010000000000000002")
    (tmp_path / "pg_wal").mkdir()
    assert not prefetch.warm("000000010000000000000002", target, {prefetch.ENV_DEPTH: "0"}, serve=serve)
    assert not prefetch.warm("00000002.history", target, {}, serve=serve)
    assert not prefetch.warm("000000010000000000000002", target, {prefetch.ENV_DEPTH: "x"}, serve=serve)
    assert started == []
    assert not any((tmp_path / "pg_wal").iterdir())


def test_the_warm_start_waits_for_the_unpack_and_ends_without_warming_when_it_failed(monkeypatch, tmp_path):
    """A restore starts `wal-fetch --prefetch` as the base backup begins to unpack: it warms only
    once its input ended empty (the unpack is over), and not at all when told the unpack failed."""
    warmed = []
    monkeypatch.setattr(prefetch, "warm", lambda first, target, env, serve: warmed.append(first) or True)
    first, target = "000000010000000000000002", str(tmp_path / "pg_wal" / "000000010000000000000002")
    assert not walget.warm_once_unpacked(first, target, {}, stream=io.BytesIO(b"stop\n"))
    assert warmed == []
    assert walget.warm_once_unpacked(first, target, {}, stream=io.BytesIO(b""))
    assert warmed == [first]
    assert not walget.warm_once_unpacked(first, target, {prefetch.ENV_DEPTH: "0"}, stream=io.BytesIO(b""))
    assert warmed == [first]


def test_the_warm_start_goes_through_the_small_entry_point(tmp_path):
    """`pgop agent wal-fetch --prefetch FIRST TARGET` (what a restore runs as the postgres user)
    reaches pgop.backup.walget without the command line framework; with prefetching off it says
    no (exit 1) and creates nothing."""
    probe = ("import sys; sys.argv = ['pgop', 'agent', 'wal-fetch', '--prefetch', "
             "'000000010000000000000002', 'pg_wal/000000010000000000000002']\n"
             "from pgop.entry import main\n"
             "try:\n    main()\nexcept SystemExit as done:\n    code = done.code\n"
             "print(code, sorted(m for m in ('boto3', 'typer', 'kubernetes') if m in sys.modules))\n")
    (tmp_path / "pg_wal").mkdir()
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PGOP_WAL_PREFETCH": "0", "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "1 []", done.stdout + done.stderr
    assert not any((tmp_path / "pg_wal").iterdir())
