"""The prefetching restore_command's decisions (pgop.backup.prefetch): which segments come next,
what the spool downloads and drops, what PostgreSQL is told, and that the client stays light."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pgop.backup import prefetch
from pgop.backup.prefetch import (
    ABORT_RECOVERY,
    ERROR,
    MISSING,
    NOT_FOUND,
    OK,
    READY,
    Window,
    archive_identity,
    depth_from_env,
    exit_code,
    next_segments,
    plan_spool,
    spool_directory,
)

REPO = Path(__file__).resolve().parents[2]
MB16 = 16 << 20


def seg(timeline: int, number: int, segment_size: int = MB16) -> str:
    per_id = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_id:08X}{number % per_id:08X}"


def test_the_next_segments_follow_the_timeline_across_a_log_id():
    assert next_segments("0000000100000000000000FE", 3, MB16) == [
        "0000000100000000000000FF", "000000010000000100000000", "000000010000000100000001"]
    # 1 GB segments: four per log id
    assert next_segments("000000020000000000000003", 2, 1 << 30) == [
        "000000020000000100000000", "000000020000000100000001"]


@pytest.mark.parametrize("name", ["00000002.history", "000000010000000000000003.partial",
                                  "000000010000000000000003.00000028.backup", "RECOVERYHISTORY", ""])
def test_only_segments_have_next_segments(name):
    assert next_segments(name, 8, MB16) == []


def test_the_window_downloads_the_next_segments_nearest_first_a_few_at_a_time():
    window = Window(position=seg(1, 10))
    plan = plan_spool(window, depth=8, segment_size=MB16, now=100.0, parallel=4)
    assert plan.fetch == (seg(1, 11), seg(1, 12), seg(1, 13), seg(1, 14))
    assert plan.evict == ()


def test_nothing_is_planned_before_the_segment_size_is_known_or_with_prefetch_off():
    window = Window(position=seg(1, 10))
    assert plan_spool(window, 8, None, 0.0) == prefetch.SpoolPlan()
    assert plan_spool(window, 0, MB16, 0.0) == prefetch.SpoolPlan()
    assert plan_spool(Window(), 8, MB16, 0.0) == prefetch.SpoolPlan()


def test_what_is_ready_or_on_its_way_is_not_fetched_again_and_the_spool_stays_bounded():
    window = Window(position=seg(1, 10), ready={seg(1, 11), seg(1, 12)}, in_flight={seg(1, 13), seg(1, 14)})
    plan = plan_spool(window, depth=4, segment_size=MB16, now=0.0, parallel=4)
    assert plan.fetch == ()  # 11..14 is the whole window
    window = Window(position=seg(1, 10), ready={seg(1, 11)}, in_flight={seg(1, 12)})
    assert plan_spool(window, 8, MB16, 0.0, parallel=3).fetch == (seg(1, 13), seg(1, 14))


def test_files_the_replay_moved_past_or_of_another_timeline_are_dropped():
    window = Window(position=seg(2, 20), ready={seg(1, 19), seg(1, 21), seg(2, 20), seg(2, 21), seg(2, 40)})
    plan = plan_spool(window, depth=8, segment_size=MB16, now=0.0)
    assert set(plan.evict) == {seg(1, 19), seg(1, 21), seg(2, 40)}  # the asked one and its window stay


def test_the_end_of_the_archive_stops_the_window_until_the_name_is_worth_asking_again():
    window = Window(position=seg(1, 10), missing={seg(1, 12): 100.0})
    assert plan_spool(window, 8, MB16, now=101.0).fetch == (seg(1, 11),)
    assert plan_spool(window, 8, MB16, now=100.0 + prefetch.MISSING_TTL).fetch[:2] == (seg(1, 11), seg(1, 12))


@pytest.mark.parametrize(("answer", "standby", "code"), [
    (READY, False, OK), (READY, True, OK),
    (MISSING, False, NOT_FOUND), (MISSING, True, NOT_FOUND),
    (ERROR, False, ABORT_RECOVERY),  # never "the end of the archive" by mistake
    (ERROR, True, NOT_FOUND),  # a standby streams and asks again
])
def test_what_postgres_is_told(answer, standby, code):
    assert exit_code(answer, standby) == code


def test_the_depth_comes_from_the_environment_and_bad_values_name_the_variable():
    assert depth_from_env({}) == prefetch.DEFAULT_DEPTH
    assert depth_from_env({"PGOP_WAL_PREFETCH": "0"}) == 0
    assert depth_from_env({"PGOP_WAL_PREFETCH": "32"}) == 32
    for bad in ("-1", "many", str(prefetch.MAX_DEPTH + 1)):
        with pytest.raises(ValueError, match="PGOP_WAL_PREFETCH"):
            depth_from_env({"PGOP_WAL_PREFETCH": bad})


def test_each_archive_has_its_own_spool_next_to_the_target():
    base = {"PGOP_S3_BUCKET": "b", "PGOP_S3_PATH": "p", "PGOP_CLUSTER": "orders"}
    one = spool_directory("/data/pgdata/pg_wal/RECOVERYXLOG", base)
    assert one.parent == Path("/data/pgdata/pg_wal")
    assert one.name.startswith(prefetch.SPOOL_PREFIX)
    for other in ({**base, "PGOP_S3_CLUSTER": "source"}, {**base, "PGOP_S3_NAMESPACE": "sales"},
                  {**base, "PGOP_S3_BUCKET": "b2"}, {**base, "PGOP_S3_ENDPOINT": "https://elsewhere"}):
        assert archive_identity(other) != archive_identity(base)
    # rotating the credentials' mount does not change which archive it is
    assert archive_identity({**base, "PGOP_S3_CREDENTIALS_DIR": "/x"}) == archive_identity(base)


def test_a_file_in_the_spool_is_renamed_into_place_without_loading_anything_heavy(tmp_path):
    """The fast path, run as PostgreSQL runs it: `pgop agent wal-fetch` through pgop.entry with
    the file already in the spool loads no boto3, zstandard, typer or kubernetes."""
    env = {"PGOP_S3_BUCKET": "b", "PGOP_CLUSTER": "orders"}
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    spool = spool_directory(pg_wal / "RECOVERYXLOG", env)
    spool.mkdir()
    (spool / seg(1, 5)).write_bytes(b"segment five")
    probe = ("import sys; sys.argv = ['pgop', 'agent', 'wal-fetch', 'NAME', 'pg_wal/RECOVERYXLOG']\n"
             "from pgop.entry import main\n"
             "try:\n    main()\nexcept SystemExit as done:\n    code = done.code\n"
             "heavy = sorted(m for m in ('boto3', 'botocore', 'zstandard', 'typer', 'kubernetes', 'psycopg')"
             " if m in sys.modules)\n"
             "print(code, heavy)\n").replace("NAME", seg(1, 5))
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert done.stdout.strip() == "0 []", done.stdout + done.stderr
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == b"segment five"
    assert not (spool / seg(1, 5)).exists()


# ------------------------------------------------------------------------------ archive_command

def test_each_server_and_environment_has_its_own_pusher():
    from pgop.backup.pusher import address
    env = {"PGOP_S3_BUCKET": "b", "PGOP_CLUSTER": "orders", "PGOP_S3_CREDENTIALS_DIR": "/etc/pgop/s3"}
    one = address("pg_wal/000000010000000000000001", env)
    assert one.startswith("\0pgop-wal-push-")  # abstract: nothing on disk in PGDATA
    assert address("pg_wal/000000010000000000000002", env) == one  # the same server's next segment
    assert address("/elsewhere/pg_wal/000000010000000000000001", env) != one
    for key in ("PGOP_CLUSTER", "PGOP_S3_BUCKET", "PGOP_S3_CREDENTIALS_DIR", "PGOP_NAMESPACE"):
        assert address("pg_wal/000000010000000000000001", {**env, key: "other"}) != one


def test_the_pusher_can_be_turned_off(monkeypatch):
    from pgop.backup import commands, pusher
    pushed = []
    monkeypatch.setattr(commands, "wal_push", lambda path, env=None, target=None: pushed.append(path) or 0)
    assert pusher.push("pg_wal/000000010000000000000001", {"PGOP_WAL_PUSHER": "0"}) == 0
    assert pushed == ["pg_wal/000000010000000000000001"]


# ------------------------------------------------------------------------------ the shell fast path

FALLBACK = 7  # what the test's stand-in for `pgop agent wal-fetch` exits with: "Python ran"


def _placeholders(command: str, name: str, path: str) -> str:
    """What PostgreSQL does to a restore_command: %f, %p, %% (a literal %); since PostgreSQL 16 any
    other placeholder is an error."""
    out, rest = [], command
    while "%" in rest:
        before, _, rest = rest.partition("%")
        out.append(before)
        code, rest = rest[:1], rest[1:]
        if code not in "fp%" or not code:
            raise ValueError(f"unexpected placeholder %{code} in {command!r}")
        out.append({"f": name, "p": path, "%": "%"}[code])
    return "".join(out) + rest


def test_the_fast_path_has_only_placeholders_postgres_knows():
    env = {"PGOP_S3_BUCKET": "b", "PGOP_CLUSTER": "orders"}
    command = _placeholders(prefetch.shell_fast_path(env), "000000010000000000000001", "pg_wal/RECOVERYXLOG")
    assert "date +%s" in command and "%f" not in command and "%p" not in command


def _restore_command(pgdata: Path, env: dict[str, str], name: str) -> int:
    """The restore_command a restore writes, with PostgreSQL's %f and %p filled in, run as
    PostgreSQL runs it (`sh -c` in PGDATA); the part after the fast path only exits FALLBACK."""
    command = _placeholders(prefetch.shell_fast_path(env) + f"exit {FALLBACK}", name, "pg_wal/RECOVERYXLOG")
    return subprocess.run(["sh", "-c", command], cwd=pgdata, timeout=30).returncode


def _spooled(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    env = {"PGOP_S3_BUCKET": "b", "PGOP_CLUSTER": "orders"}
    (tmp_path / "pg_wal").mkdir()
    spool = spool_directory(tmp_path / "pg_wal" / "RECOVERYXLOG", env)
    spool.mkdir()
    return tmp_path, spool, env


def test_the_shell_hands_over_a_prefetched_file_and_the_same_file_again_while_postgres_keeps_it(tmp_path):
    pgdata, spool, env = _spooled(tmp_path)
    name = seg(1, 5)
    (spool / name).write_bytes(b"segment five")
    assert _restore_command(pgdata, env, name) == OK
    delivered = pgdata / "pg_wal" / "RECOVERYXLOG"
    assert delivered.read_bytes() == b"segment five" and not (spool / name).exists()
    # PostgreSQL keeps a restored segment under its own name, then (end of recovery) asks again
    delivered.rename(pgdata / "pg_wal" / name)
    assert _restore_command(pgdata, env, name) == OK
    assert delivered.read_bytes() == b"segment five"
    assert delivered.stat().st_ino == (pgdata / "pg_wal" / name).stat().st_ino  # a link, no copy
    # once pg_wal's file under that name is another one (recycled, rewritten), Python answers
    delivered.unlink()
    (pgdata / "pg_wal" / name).unlink()
    (pgdata / "pg_wal" / name).write_bytes(b"another file")
    assert _restore_command(pgdata, env, name) == FALLBACK
    assert not delivered.exists()
    # a segment never delivered is Python's too, even if pg_wal has a file of that name
    assert _restore_command(pgdata, env, seg(1, 9)) == FALLBACK


@pytest.mark.parametrize("mark, code", [
    ("fresh", NOT_FOUND),        # S3 said "not there" just now: the shell says so
    ("stale", FALLBACK),         # too long ago: ask again
    ("garbage", FALLBACK),
    (None, FALLBACK),
])
def test_the_shell_says_a_history_file_is_not_there_only_on_a_fresh_mark(tmp_path, mark, code):
    import time
    pgdata, spool, env = _spooled(tmp_path)
    name = "00000002.history"
    if mark is not None:
        text = {"fresh": prefetch.missing_mark(time.time()), "stale": prefetch.missing_mark(time.time() - 60),
                "garbage": "soon\n"}[mark]
        (spool / f"{name}{prefetch.MISSING_MARK}").write_text(text)
    assert _restore_command(pgdata, env, name) == code
    assert not (pgdata / "pg_wal" / "RECOVERYXLOG").exists()


def test_the_history_file_probed_is_the_next_timeline_s():
    assert prefetch.next_history(seg(1, 300)) == "00000002.history"
    assert prefetch.next_history(seg(0x1F, 3)) == "00000020.history"
    assert prefetch.next_history("00000002.history") is None
    assert prefetch.is_history("0000000A.history") and not prefetch.is_history(seg(1, 1))
    assert not prefetch.is_history("0000000G.history")


def test_only_the_newest_segment_keeps_its_taken_link():
    names = [f"{seg(1, 7)}.taken", f"{seg(1, 9)}.taken", f"{seg(2, 9)}.taken", "00000002.history.taken",
             seg(1, 10), "prefetcher.sock"]
    assert prefetch.stale_taken(names) == [f"{seg(1, 7)}.taken", f"{seg(1, 9)}.taken"]
    assert prefetch.stale_taken([f"{seg(1, 7)}.taken"]) == []


def test_the_prefetcher_marks_a_missing_segment_only_on_a_standby_and_history_files_always(tmp_path):
    """A restore's recovery ends at the first segment said missing: S3 must answer each time there.
    A standby only streams meanwhile, so a mark may answer for it."""
    from pgop.backup.prefetcher import Prefetcher
    spool = tmp_path / "pg_wal" / "spool"
    spool.mkdir(parents=True)
    prefetcher = Prefetcher(None, None, spool, depth=8)  # type: ignore[arg-type]  (no S3 asked here)
    try:
        def marked(name: str) -> bool:
            return (spool / f"{name}{prefetch.MISSING_MARK}").exists()
        prefetcher._mark(seg(1, 7), MISSING)
        prefetcher._mark("00000002.history", MISSING)
        assert not marked(seg(1, 7)) and marked("00000002.history")
        (tmp_path / "standby.signal").touch()
        prefetcher._mark(seg(1, 7), MISSING)
        assert marked(seg(1, 7))
        prefetcher._mark(seg(1, 7), READY)  # S3 has it now
        prefetcher._mark("00000002.history", ERROR)  # S3 could not say
        assert not marked(seg(1, 7)) and not marked("00000002.history")
    finally:
        prefetcher.pool.shutdown()
