"""The restore by hand of docs/backup-layout.md, run as the page writes it.

A PostgreSQL 15 archives its WAL with `pgop agent wal-push` and has a base backup taken by pgop into
the local S3 server. Then the fenced ```sh block under "Restoring by hand" runs as a shell script,
its placeholders filled in, as the postgres OS user with nothing but /usr/bin on PATH: Debian's
`aws`, `zstd`, `tar` and `pg_ctl`, no pgop and no boto3. The restored server is checked as a person
would check it, with psql. When pgop's layout and the page part ways, this test fails.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from e2e.harness.pg import OS_USER, LocalPostgres, _as_user
from e2e.harness.services import free_port, pg_bindir
from pgop.backup import basebackup
from tests.integration.test_backup_wal import (  # noqa: F401  (fixtures)
    CLUSTER,
    archive_env,
    archiving_postgres,
    launcher,
    s3,
    storage,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "backup-layout.md"
BACKUP = "by-hand"
# Debian's aws, never a pip-installed one earlier on root's PATH; and no pgop launcher.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


# ------------------------------------------------------------------ setup: pgop writes the archive

def _source(pg: LocalPostgres) -> basebackup.Source:
    prefix = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []
    return basebackup.Source(host=str(pg.socket_dir), port=pg.port, user="postgres", bindir=pg.bindir,
                             prefix=prefix)


def _wait_archived(pg: LocalPostgres, segment: str) -> None:
    def archived():
        return pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") >= segment
    wait_for(archived, f"{segment} archived")


def write_history(pg: LocalPostgres, storage, layout) -> str:
    """Rows 1-100 in the base backup, 101-200 after it, then the target time T, then 201-300, all
    archived. Returns T, read from the database's clock, the one commit timestamps come from."""
    pg.psql("CREATE TABLE orders (id int); INSERT INTO orders SELECT generate_series(1, 100)")
    basebackup.take_base_backup(storage, layout, BACKUP, _source(pg), archive_wait=60)
    pg.psql("INSERT INTO orders SELECT generate_series(101, 200)")
    target = pg.psql("SELECT now()")
    time.sleep(1.1)  # so the next commit is clearly after T
    pg.psql("INSERT INTO orders SELECT generate_series(201, 300)")
    _wait_archived(pg, pg.psql("SELECT pg_walfile_name(pg_switch_wal())"))
    return target


# --------------------------------------------------------------- the documented steps, filled in

def documented_steps() -> str:
    """The first ```sh block under "## Restoring by hand"."""
    text = DOC.read_text()
    section = text[text.index("## Restoring by hand"):]
    match = re.search(r"^```sh\n(.*?)^```", section, re.S | re.M)
    assert match, f"no ```sh block under 'Restoring by hand' in {DOC}"
    return match.group(1)


def fill_in(steps: str, values: dict[str, str]) -> str:
    # Every placeholder must be there: a reworded page fails here instead of running unfilled.
    for placeholder, value in values.items():
        assert placeholder in steps, f"{DOC.name}: 'Restoring by hand' no longer has {placeholder!r}"
        steps = steps.replace(placeholder, value)
    return steps


def aim_at(steps: str, target_time: str) -> str:
    """Uncomment the documented recovery_target lines, with T as the time."""
    steps, times = re.subn(r"^# (recovery_target_time = )'[^']*'", lambda m: f"{m.group(1)}'{target_time}'",
                           steps, flags=re.M)
    steps, actions = re.subn(r"^# (recovery_target_action = 'promote')", r"\1", steps, flags=re.M)
    assert times == actions == 1, f"{DOC.name}: the commented recovery_target lines are gone"
    return steps


# ----------------------------------------------------------------------- the restored server

class Restored:
    """The directory a person restores into (the page's /restore), owned by the postgres user."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="pgop-by-hand-", dir="/var/tmp"))
        self.port = free_port()
        self.bindir = pg_bindir()
        if os.geteuid() == 0:
            shutil.chown(self.root, OS_USER, OS_USER)

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text()[-4000:] if path.exists() else "(no postgres.log)"

    def run_script(self, script: str):
        path = self.root / "restore.sh"
        path.write_text(script)
        if os.geteuid() == 0:
            shutil.chown(path, OS_USER, OS_USER)
        env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "HOME": pwd.getpwnam(OS_USER).pw_dir}
        # pipefail: a wrong key must not pass as an empty tar
        return _as_user(["bash", "-e", "-o", "pipefail", str(path)], cwd=self.root, env=env, timeout=120)

    def psql(self, sql: str) -> str:
        p = _as_user([f"{self.bindir}/psql", "-h", str(self.root), "-p", str(self.port), "-U", "postgres",
                      "-XAtq", "-c", sql], timeout=30)
        assert p.returncode == 0, f"psql: {p.stderr}\n{self.log()}"
        return p.stdout.strip()

    def wait_promoted(self) -> None:
        def promoted():
            assert (self.pgdata / "postmaster.pid").exists(), f"the restored server stopped:\n{self.log()}"
            return self.psql("SELECT pg_is_in_recovery()") == "f"
        wait_for(promoted, "the restored server to promote")

    def cleanup(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            _as_user([f"{self.bindir}/pg_ctl", "-D", str(self.pgdata), "-m", "immediate", "-w", "stop"],
                     timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def restored():
    target = Restored()
    yield target
    target.cleanup()


# ------------------------------------------------------------------------------------- the test

def test_the_documented_restore_by_hand_reaches_the_target_time(archiving_postgres, archive_env, storage, s3,
                                                                 restored):
    layout = archive_env["layout"]
    target_time = write_history(archiving_postgres, storage, layout)

    steps = fill_in(documented_steps(), {
        "AWS_ACCESS_KEY_ID=...": f"AWS_ACCESS_KEY_ID={s3['access']}",
        "AWS_SECRET_ACCESS_KEY=...": f"AWS_SECRET_ACCESS_KEY={s3['secret']}",
        "https://s3.example": s3["endpoint"],
        "s3://pg-backups/shop/sales/orders": f"s3://{s3['bucket']}/{layout.root.rstrip('/')}",
        "<backup name>": BACKUP,
        "/usr/lib/postgresql/15/bin": restored.bindir,
        "port = 5433": f"port = {restored.port}",
        "-p 5433": f"-p {restored.port}",
        "/restore": str(restored.root),
    })
    done = restored.run_script(aim_at(steps, target_time))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{restored.log()}"
    # what steps 1 and 2 show a person choosing a backup
    assert "PRE 00000001/" in done.stdout and f"PRE {BACKUP}/" in done.stdout, done.stdout
    assert '"completedAt"' in done.stdout, done.stdout

    restored.wait_promoted()
    assert restored.psql("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM orders") == "200|200|1|200"
    assert restored.psql("SELECT pg_is_in_recovery()") == "f"
    assert restored.psql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)") == "00000002"
    assert "recovery stopping before commit" in restored.log()
