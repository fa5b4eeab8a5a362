"""pgop, pgBackRest and barman-cloud side by side: a base backup of the same pgbench database to the
same local S3 server with each tool, and a restore of each, in one run.

    make bench-backup             # installs pgbackrest, barman-cli-cloud (and socat) if missing; scale 135
    .venv/bin/python -m bench.backup_compare [--scale 135] [--tools pgop,pgbackrest,barman] [--jobs N]
        [--barman-compression gzip|bzip2|snappy|none] [--no-replay] [--wal-mb 1024] [--keep]

Needs the local environment up (`make env-up`: its S3 server; or another versitygw named by
PGOP_BENCH_S3_ENDPOINT, PGOP_BENCH_S3_ACCESS_KEY and PGOP_BENCH_S3_SECRET_KEY), openssl, socat and the Debian
packages pgbackrest and barman-cli-cloud (apt-get installs what is missing when this runs as root;
otherwise it says how). --scale 135 makes a database of about 2 GB; the run then takes about
4 minutes on 2 cores (most of it barman-cloud's gzip) and needs about 6 GB in /var/tmp for a
while, removed at the end, as are the S3 objects of the run (in a bucket of its own) unless --keep
is given.

Set-up: one PostgreSQL 15 (Debian's, as the postgres OS user) loaded by `pgbench -i -s SCALE`
while archive_command is /bin/true (no backup needs the load's WAL). Then archive_command becomes
one script that runs the archivers of all three tools in parallel for each segment (`pgop agent
wal-push`, `pgbackrest archive-push`, `barman-cloud-wal-archive`) and fails if any fails: each tool
archives the WAL its own backup needs into its own prefix of the run's bucket. pgBackRest 2.45
speaks only https to S3, so all three tools reach the S3 server through the same TLS terminator
(socat, a self-signed certificate for localhost): one path, one cost of TLS, for everyone.

Settings, as comparable as the tools allow (JOBS: --jobs, default the number of cores):
- pgop: one pg_basebackup stream (-X none, fast checkpoint), zstd level 3 in one worker thread
  (1 MiB jobs), multipart upload in 8 MiB parts, 1 in flight besides the one being filled.
- pgBackRest: --type=full, compress-type=zst, compress-level=3, process-max=JOBS, start-fast,
  archive-check on (its default: the backup waits for its WAL in its archive).
- barman-cloud: --immediate-checkpoint, -J JOBS upload processes, --gzip: bookworm's barman 3.4 has
  neither zstd nor lz4; gzip is the one whose ratio compares with zstd -3 (Python's tarfile
  streams it at level 9, in one thread); --snappy is faster but needs python3-snappy.
All three wait until the backup's last WAL segment is archived before they call it done.

Figures, per tool and phase:
- backup: wall seconds of the tool's command (checkpoint, copying the data directory, waiting for
  the last WAL segment of the backup in the tool's archive).
- restore: fetch + unpack of the base backup into an empty directory by the tool's own command,
  without WAL replay: pgop `python -m bench.pgop_unpack` (backup.restore.unpack, the part of
  backup.restore.restore before replay), `pgbackrest restore`, `barman-cloud-restore`.
  Every tool restores --restores times (default 3), the tools taking turns and each round
  started by the next tool; before each restore the source is checkpointed and the disk's
  write-back finished (`sync`), so no tool pays for what ran before it. "restore+fsync" is the
  median of the rounds (every round is printed); the phase table shows the last round.
- fsync: fsync of every restored file afterwards, timed alike for all. pgBackRest and pgop
  (pgop.backup.durable) sync what they write during their restore; barman's tarfile leaves that
  to the kernel, so "restore + fsync" is the comparable figure for a restore that is on disk.
- replay: PostgreSQL started on the restored directory with the tool's restore_command (pgop's
  as a restore writes it: the shell takes a prefetched file) and recovery_target = 'immediate'
  until it promoted (only the WAL of the backup); then the rows of pgbench_accounts are counted
  (a restore that lost rows counts as failed). With so little WAL the figure is mostly the
  start-up of the restore_command, once per file PostgreSQL asks for. Its CPU and RSS are those
  of the restore_command's processes (see the WAL-heavy case).
- MB/s: the database size (pg_database_size of the pgbench database) / wall seconds.
- tool CPU: user + system seconds of the tool's command and all its child processes (os.wait4):
  pg_basebackup for pgop, pgBackRest's local processes, barman's upload processes, tar, runuser.
- server CPU: user + system seconds of the source PostgreSQL meanwhile (postmaster and all its
  processes, exited ones included, from /proc), without the archiver and its archive_command,
  which archive for all three tools at once. It matters for pgop, whose data the server's walsender
  reads and sends, while pgBackRest and barman read the data files themselves.
- proxy CPU: the TLS terminator's CPU meanwhile. versitygw answers every request with
  "Connection: close", so each request is a new TCP + TLS connection (a fork of socat): a tool that
  makes many small requests pays more here than it would against AWS (pgBackRest: one per file).
- RSS max: the largest single process of the tool's process tree (ru_maxrss from wait4); RSS tree:
  the largest sum of RSS over the tree, sampled every 0.2 s (a shorter peak can be missed, so it
  can be below RSS max). pgop is measured as a process of its own (`pgop agent backup`, as a backup
  pod runs it; bench.pgop_unpack), never this process.
- in S3: the bytes under each tool's backup prefix (the base backup with its manifests or
  catalog), the ratio data directory size (without pg_wal: what every tool copies) / those bytes,
  and the bytes of WAL each tool's archive holds at the end (the same segments for all).
The WAL-heavy case (--wal-mb, default 1024; 0 skips it), after the restores: pgbench with a script
that updates ranges of 2000 accounts (WAL_SCRIPT) until that much WAL is written, archived by
all three tools as above, a named restore point, 2 s more of load. Each tool then (once, after
the source's checkpoint and a `sync`: the load leaves gigabytes to write; the source runs
without autovacuum, which would otherwise vacuum the updated table meanwhile) restores its base
backup again and replays to the restore point (recovery_target_name, then promotion); the
rows of pgbench_history must be those at the restore point. Per tool: restore + fsync, replay
seconds, WAL MB/s (the WAL from the start of the load to the restore point / replay seconds),
the time to a consistent database (the sum), PostgreSQL's replay CPU (its startup process) and
the restore_command's CPU (the startup process's reaped children, which it runs once per file,
plus helpers that left its session: pgop's prefetcher) and RSS (every process with the tool's
marker in its command line, sampled every 0.1 s: the largest one, and the largest sum at once;
a per-file process can live shorter than that and be missed).
A benchmark, not a test: it never fails on a slow figure; a tool that fails is reported as failed
and the others go on.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from bench.backup_throughput import (
    PREFIX,
    REPO,
    _archive_all,
    _credentials,
    _drop_bucket,
    _launcher,
    _pgbench_init,
    _s3_client,
)
from e2e.harness import envfile
from e2e.harness.pg import OS_USER, LocalPostgres, _as_user
from e2e.harness.services import free_port
from pgop.backup import basebackup, restore
from pgop.backup import layout as keys
from pgop.backup.layout import ArchiveLayout
from pgop.kernel import pgconfig

CLUSTER = "bench"       # pgop's cluster, pgBackRest's stanza, barman's server name
BACKUP = "base"         # the name of each tool's backup
REGION = "us-east-1"
TOOLS = ("pgop", "pgbackrest", "barman")
PACKAGES = {"pgbackrest": "pgbackrest", "barman-cloud-backup": "barman-cli-cloud", "socat": "socat",
            "openssl": "openssl"}
BARMAN_COMPRESSION = {"gzip": ["--gzip"], "bzip2": ["--bzip2"], "snappy": ["--snappy"], "none": []}
RUN_AS = OS_USER if os.geteuid() == 0 else None
PHASE_TIMEOUT = 3600.0
SAMPLE_INTERVAL = 0.2
RESTORE_SAMPLE_INTERVAL = 0.1
RESTORE_POINT = "pgop-bench-pitr"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MB = 2**20


class ToolError(RuntimeError):
    pass


# ----------------------------------------------------------------- processes: CPU and memory

def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on, or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _tree(root: int, skip: Callable[[int], bool] = lambda pid: False) -> list[int]:
    """root and its descendants, as /proc tells now; `skip` drops a process with its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if not skip(pid):
            found.append(pid)
            todo.extend(children.get(pid, ()))
    return found


def tree_cpu(root: int, skip: Callable[[int], bool] = lambda pid: False) -> float:
    """User + system seconds of a process tree so far, exited descendants included: a process's
    cutime and cstime hold those of the children it reaped."""
    ticks = 0
    for pid in _tree(root, skip):
        if fields := _stat(pid):
            ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / CLOCK_TICKS


def tree_rss(root: int) -> int:
    total = 0
    for pid in _tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    return total


def _is_archiver(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"postgres: archiver")
    except OSError:
        return False


class PeakRss:
    """The largest RSS sum of a process tree, sampled in a thread while the tree runs."""

    def __init__(self, root: int):
        self.root, self.peak = root, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.root))
            self._stop.wait(SAMPLE_INTERVAL)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@dataclass
class Measured:
    seconds: float
    cpu: float | None = None         # the tool's process tree, user + system
    server_cpu: float | None = None
    proxy_cpu: float | None = None
    max_rss: int | None = None       # bytes, the largest process
    tree_rss: int | None = None      # bytes, the largest sampled sum over the tree


@dataclass
class Meters:
    """CPU of what serves every tool: the source server (without its archiver) and the TLS proxy."""
    source: LocalPostgres
    proxy_pid: int

    def read(self) -> tuple[float, float]:
        try:
            postmaster = int((self.source.pgdata / "postmaster.pid").read_text().split()[0])
            server = tree_cpu(postmaster, skip=_is_archiver)
        except (OSError, IndexError, ValueError):
            server = 0.0
        return server, tree_cpu(self.proxy_pid)


def _kill_session(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Command:
    argv: list[str]
    as_postgres: bool = False   # as the postgres OS user: it reads or writes a data directory
    env: Mapping[str, str] = field(default_factory=dict)


def _identity(command: Command) -> dict:
    if not (command.as_postgres and RUN_AS):
        return {}
    user = pwd.getpwnam(RUN_AS)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def run_measured(command: Command, log: Path, meters: Meters, timeout: float = PHASE_TIMEOUT) -> Measured:
    """Run a tool's command to its end: wall time, CPU and memory of its process tree."""
    env = {**os.environ, **command.env}
    if command.as_postgres and RUN_AS:
        env["HOME"] = pwd.getpwnam(RUN_AS).pw_dir
    before = meters.read()
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w+") as err:
        started = time.monotonic()
        process = subprocess.Popen(command.argv, stdout=out, stderr=err, env=env, cwd=REPO,
                                   start_new_session=True, **_identity(command))
        peak = PeakRss(process.pid)
        # A hung tool costs its phase, not the whole run (its own session: only what it started).
        watchdog = threading.Timer(timeout, _kill_session, [process.pid])
        watchdog.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        watchdog.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        tree_peak = peak.stop()
        after = meters.read()
        err.seek(0)
        stderr = err.read()
    if process.returncode:
        raise ToolError(f"`{shlex.join(command.argv[:4])} ...` exited {process.returncode}: "
                        f"{stderr.strip()[-1500:]}")
    return Measured(seconds, usage.ru_utime + usage.ru_stime, after[0] - before[0], after[1] - before[1],
                    usage.ru_maxrss * 1024, tree_peak)


# ------------------------------------------------------------------------ the run's scaffolding

class TlsProxy:
    """https in front of the S3 server, for pgBackRest 2.45, which speaks nothing else to S3: socat
    with a self-signed certificate for `localhost` (pgBackRest checks host names, not addresses)."""

    def __init__(self, directory: Path, upstream: str):
        directory.mkdir(mode=0o755)
        self.ca_file, key = directory / "cert.pem", directory / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(self.ca_file)], check=True, capture_output=True)
        self.ca_file.chmod(0o644)
        self.port = free_port()
        # nodelay on both sides: without it, Nagle's algorithm and delayed ACKs hold each small
        # request for ~40 ms (pgBackRest's backup of 80 MB took 28 s instead of 6).
        listen = (f"OPENSSL-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork,cert={self.ca_file},"
                  f"key={key},verify=0,nodelay")
        upstream_address = f"TCP:{urlsplit(upstream).netloc},nodelay"
        with open(directory / "socat.log", "w") as log:
            self.process = subprocess.Popen(["socat", "-b", "131072", listen, upstream_address],
                                            stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
                break
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"socat does not listen on {self.port}: {(directory / 'socat.log').read_text()}")
            time.sleep(0.1)

    @property
    def endpoint(self) -> str:
        return f"https://localhost:{self.port}"

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)  # socat and its per-connection children
        self.process.wait(10)


@dataclass
class Run:
    """One run: its scratch directory, its bucket, the source server and how tools reach S3."""
    workspace: Path
    bucket: str
    endpoint: str        # https, through the proxy: what every tool uses
    ca_file: Path
    source: LocalPostgres
    launcher: Path       # holds the `pgop` command
    jobs: int

    @property
    def logs(self) -> Path:
        return self.workspace / "logs"

    def own(self, *paths: Path) -> None:
        if RUN_AS:
            for path in paths:
                shutil.chown(path, RUN_AS, RUN_AS)


def _tool_environment(run: Run, access: str, secret: str, credentials: Path) -> None:
    """What the tools read from the environment, set here so that the server, whose
    archive_command runs all three archivers, inherits it too."""
    os.environ.update({
        "PATH": f"{run.launcher}:{os.environ['PATH']}",
        "PGOP_CLUSTER": CLUSTER, "PGOP_S3_BUCKET": run.bucket, "PGOP_S3_PATH": "pgop",
        "PGOP_S3_ENDPOINT": run.endpoint, "PGOP_S3_REGION": REGION, "PGOP_S3_CREDENTIALS_DIR": str(credentials),
        "PGBACKREST_REPO1_S3_KEY": access, "PGBACKREST_REPO1_S3_KEY_SECRET": secret,
        "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": REGION,
        "AWS_CA_BUNDLE": str(run.ca_file),
    })
    if RUN_AS:
        os.environ["PGOP_RUN_AS"] = RUN_AS
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        os.environ.pop(name, None)


# ------------------------------------------------------------------------------ the three tools

class Tool(Protocol):
    key: str          # in --tools, file names and the archive script's name
    label: str
    settings: str     # compression and parallelism, for the report

    def setup(self) -> None: ...
    def archive_push(self) -> str: ...           # a shell command archiving the segment "$1"
    def backup(self) -> Command: ...
    def restore(self, pgdata: Path) -> Command: ...
    def restore_command(self, pgdata: Path) -> str: ...  # PostgreSQL's, for the replay
    restore_marker: str  # in the command line of every process of its restore_command
    def prefixes(self) -> tuple[str, str]: ...   # S3 prefixes of its base backups and of its WAL


class Pgop:
    key, label = "pgop", "pgop"
    restore_marker = "wal-fetch"

    def __init__(self, run: Run):
        self.run = run
        self.layout = ArchiveLayout(CLUSTER, "pgop")

    @property
    def settings(self) -> str:
        return f"zstd -{basebackup.COMPRESSION_LEVEL}, {basebackup.COMPRESSION_THREADS} worker, 1 stream"

    def setup(self) -> None:
        pass

    def archive_push(self) -> str:
        return pgconfig.WAL_PUSH_COMMAND.replace("%p", '"$1"')

    def backup(self) -> Command:
        source = self.run.source
        # `pgop agent backup` as a backup pod runs it, here against the local socket.
        return Command([str(self.run.launcher / "pgop"), "agent", "backup", "--name", BACKUP], env={
            "PGOP_INSTANCE": f"{CLUSTER}-0", "PGOP_NAMESPACE": CLUSTER, "PGDATA": str(source.pgdata),
            "PGOP_PG_PORT": str(source.port), "PGOP_SOCKET_DIR": str(source.socket_dir),
            "PGOP_PG_BINDIR": source.bindir, "PGOP_RUN_DIR": str(self.run.workspace / "pgop-run")})

    def restore(self, pgdata: Path) -> Command:
        return Command([sys.executable, "-m", "bench.pgop_unpack", CLUSTER, BACKUP, str(pgdata)])

    def restore_command(self, pgdata: Path) -> str:
        # What a restore writes: the shell takes a prefetched file, Python runs only for the others.
        return restore.restore_command(CLUSTER, self.layout.path, server_env=os.environ)

    def prefixes(self) -> tuple[str, str]:
        return keys.base_root(self.layout), self.layout.wal_root


class PgBackRest:
    key, label = "pgbackrest", "pgBackRest"
    restore_marker = "archive-get"

    def __init__(self, run: Run):
        self.run = run
        self.home = run.workspace / "pgbackrest"
        self.config = self.home / "pgbackrest.conf"

    @property
    def settings(self) -> str:
        return f"zst -3, process-max={self.run.jobs}"

    def setup(self) -> None:
        for path in (self.home, self.home / "log", self.home / "lock"):
            path.mkdir(mode=0o750)
            self.run.own(path)
        source, port = self.run.source, urlsplit(self.run.endpoint).port
        self.config.write_text(f"""[global]
repo1-type=s3
repo1-path=/pgbackrest
repo1-s3-bucket={self.run.bucket}
repo1-s3-endpoint=localhost
repo1-storage-port={port}
repo1-s3-region={REGION}
repo1-s3-uri-style=path
repo1-storage-ca-file={self.run.ca_file}
compress-type=zst
compress-level=3
process-max={self.run.jobs}
start-fast=y
archive-timeout=300
repo1-retention-full=9999999
log-path={self.home / "log"}
lock-path={self.home / "lock"}
log-level-console=warn
log-level-file=info

[{CLUSTER}]
pg1-path={source.pgdata}
pg1-port={source.port}
pg1-socket-path={source.socket_dir}
""")
        self.config.chmod(0o644)
        done = subprocess.run([*PREFIX, *self._argv("stanza-create")], capture_output=True, text=True)
        if done.returncode:
            raise ToolError(f"pgbackrest stanza-create: {done.stdout}{done.stderr}")

    def _argv(self, *args: str) -> list[str]:
        return ["pgbackrest", f"--config={self.config}", f"--stanza={CLUSTER}", *args]

    def archive_push(self) -> str:
        return shlex.join(self._argv("archive-push")) + ' "$1"'

    def backup(self) -> Command:
        return Command(self._argv("--type=full", "backup"), as_postgres=True)

    def restore(self, pgdata: Path) -> Command:
        return Command(self._argv(f"--pg1-path={pgdata}", "restore"), as_postgres=True)

    def restore_command(self, pgdata: Path) -> str:
        return shlex.join(self._argv(f"--pg1-path={pgdata}", "archive-get")) + ' %f "%p"'

    def prefixes(self) -> tuple[str, str]:
        return f"pgbackrest/backup/{CLUSTER}/", f"pgbackrest/archive/{CLUSTER}/"


class BarmanCloud:
    key, label = "barman", "barman-cloud"
    restore_marker = "barman-cloud-wal-restore"

    def __init__(self, run: Run, compression: str):
        self.run, self.compression = run, compression
        self.url = f"s3://{run.bucket}/barman"
        self.cloud = ["--cloud-provider", "aws-s3", "--endpoint-url", run.endpoint]

    @property
    def settings(self) -> str:
        level = {"gzip": "gzip -9", "bzip2": "bzip2 -9"}.get(self.compression, self.compression)
        return f"{level}, -J {self.run.jobs}"

    def setup(self) -> None:
        pass

    def archive_push(self) -> str:
        return shlex.join(["barman-cloud-wal-archive", *self.cloud, *BARMAN_COMPRESSION[self.compression],
                           self.url, CLUSTER]) + ' "$1"'

    def backup(self) -> Command:
        source = self.run.source
        return Command(["barman-cloud-backup", *self.cloud, *BARMAN_COMPRESSION[self.compression],
                        "--immediate-checkpoint", "-J", str(self.run.jobs), "-h", str(source.socket_dir),
                        "-p", str(source.port), "-U", "postgres", "-n", BACKUP, self.url, CLUSTER], as_postgres=True)

    def restore(self, pgdata: Path) -> Command:
        return Command(["barman-cloud-restore", *self.cloud, self.url, CLUSTER, BACKUP, str(pgdata)],
                       as_postgres=True)

    def restore_command(self, pgdata: Path) -> str:
        return shlex.join(["barman-cloud-wal-restore", *self.cloud, self.url, CLUSTER]) + " %f %p"

    def prefixes(self) -> tuple[str, str]:
        return f"barman/{CLUSTER}/base/", f"barman/{CLUSTER}/wals/"


# ------------------------------------------------------------------------------ the source

@dataclass
class Outcome:
    """What one tool did: its phases, what failed, what it stored."""
    tool: Tool
    phases: dict[str, Measured] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    stored: tuple[int, int] | None = None       # bytes, objects under the backup prefix
    wal_stored: tuple[int, int] | None = None
    rows: int | None = None
    pitr: dict[str, Measured] = field(default_factory=dict)   # the WAL-heavy case's phases
    pitr_replay: RestoreSide | None = None
    pitr_ok: bool | None = None
    restores: list[float] = field(default_factory=list)  # restore + fsync seconds of each round


@dataclass
class Database:
    size: int           # pg_database_size of the pgbench database
    data_size: int      # the data directory without pg_wal
    load_seconds: float


def _archive_script(run: Run, tools: Sequence[Tool]) -> Path:
    # The name says who archives; it also has to contain "pgbackrest": pgBackRest refuses to back
    # up a server whose archive_command does not.
    script = run.workspace / "-".join(["archive-push", *(tool.key for tool in tools)])
    lines = ["#!/bin/sh", "# archive_command: every tool archives the segment $1 into its own prefix, in parallel;",
             "# anything but success of all makes PostgreSQL try the segment again.", "pids="]
    lines += [f'{tool.archive_push()} & pids="$pids $!"' for tool in tools]
    lines += ["status=0", 'for pid in $pids; do wait "$pid" || status=1; done', "exit $status"]
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return script


def _data_size(pgdata: Path) -> int:
    total = 0
    for directory, subdirectories, files in os.walk(pgdata):
        if Path(directory) == pgdata:
            subdirectories[:] = [name for name in subdirectories if name != "pg_wal"]
        total += sum(os.lstat(os.path.join(directory, name)).st_size for name in files)
    return total


def prepare_source(run: Run, outcomes: Sequence[Outcome], scale: int) -> Database:
    """Load pgbench, set each tool up and have the server archive with those that could be."""
    source = run.source
    source.initdb()
    with open(source.pgdata / "postgresql.conf", "a") as conf:
        # No backup needs the load's WAL: archiving it three times over would only lengthen the run.
        conf.write("archive_mode = on\narchive_command = '/bin/true'\n")
        # After the WAL-heavy load autovacuum would work through the updated table for minutes,
        # on the cores and the disk of whichever tool restores first.
        conf.write("autovacuum = off\n")
    source.start()
    load_seconds = _pgbench_init(source, scale)
    for outcome in outcomes:
        try:
            outcome.tool.setup()
        except Exception as error:  # one tool's failure is a line in the report, not the end of the run
            outcome.errors.append(f"setup: {error}")
    script = _archive_script(run, [outcome.tool for outcome in outcomes if not outcome.errors])
    source.psql(f"ALTER SYSTEM SET archive_command = '{script} %p'")
    source.psql("SELECT pg_reload_conf()")
    _archive_all(source)  # from here on, every tool's archive has every segment
    return Database(int(source.psql("SELECT pg_database_size('postgres')")), _data_size(source.pgdata),
                    load_seconds)


# ------------------------------------------------------------------------------ the phases

def _fsync_tree(root: Path) -> float:
    started = time.monotonic()
    for directory, _, files in os.walk(root):
        for name in [*files, "."]:
            path = os.path.join(directory, name)
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode) and name != ".":
                    continue  # a socket (pgop's WAL prefetcher listens in pg_wal), a symlink
                handle = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # renamed since listed: pgop's prefetcher fetching into its spool meanwhile

            try:
                os.fsync(handle)
            finally:
                os.close(handle)
    return time.monotonic() - started


@dataclass
class RestoreSide:
    """CPU and memory of a replay: PostgreSQL's startup process (the replay itself) and the
    processes of the tool's restore_command, which the startup process runs once per file."""
    replay_cpu: float = 0.0        # the startup process, user + system
    command_cpu: float = 0.0       # its reaped children (the restore_command's processes), and helpers
    max_rss: int = 0               # bytes, the largest restore_command process seen
    tree_rss: int = 0              # bytes, the largest sum over them seen at once


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class RestoreSampler:
    """Samples a recovering server every RESTORE_SAMPLE_INTERVAL seconds: the startup process's
    CPU and its reaped children's (exact for what it waited for, up to the last sample before it
    exits at the promotion), and every process whose command line has the tool's marker: the
    per-file commands (short-lived: a peak between samples can be missed) and helpers that
    detached into a session of their own (pgop's prefetcher), whose CPU is added."""

    def __init__(self, pgdata: Path, marker: str):
        self.pgdata, self.marker = pgdata, marker
        self.side = RestoreSide()
        self._helpers: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _postmaster(self) -> int | None:
        with contextlib.suppress(OSError, IndexError, ValueError):
            return int((self.pgdata / "postmaster.pid").read_text().split()[0])
        return None

    def _sample(self, postmaster: int) -> None:
        fields = _stat(postmaster)
        session = fields[3] if fields else None
        rss_sum = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            line = _cmdline(pid)
            fields = _stat(pid)
            if fields is None:
                continue
            if line.startswith("postgres: startup") and fields[1] == str(postmaster):
                self.side.replay_cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
                self.side.command_cpu = (int(fields[13]) + int(fields[14])) / CLOCK_TICKS
            elif self.marker in line and not line.startswith("postgres"):
                with contextlib.suppress(OSError, IndexError, ValueError):
                    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
                    rss_sum += rss
                    self.side.max_rss = max(self.side.max_rss, rss)
                if fields[3] != session:  # detached: its CPU is nobody's child's
                    self._helpers[pid] = sum(int(value) for value in fields[11:15]) / CLOCK_TICKS
        self.side.tree_rss = max(self.side.tree_rss, rss_sum)

    def _run(self) -> None:
        while not self._stop.is_set():
            if (postmaster := self._postmaster()) is not None:
                self._sample(postmaster)
            self._stop.wait(RESTORE_SAMPLE_INTERVAL)

    def stop(self) -> RestoreSide:
        postmaster = self._postmaster()
        if postmaster is not None:
            self._sample(postmaster)   # the helpers outlive the server for a while
        self._stop.set()
        self._thread.join()
        self.side.command_cpu += sum(self._helpers.values())
        return self.side


def _replay(tool: Tool, target: LocalPostgres, targets: Mapping[str, str] | None = None) -> tuple[float, RestoreSide]:
    """Recovery with the tool's restore_command to `targets` (default: consistency), then promotion."""
    for leftover in ("postmaster.pid", "postmaster.opts", "standby.signal"):
        (target.pgdata / leftover).unlink(missing_ok=True)
    with open(target.pgdata / "postgresql.conf", "a") as conf:
        conf.write("archive_mode = off  # a restored copy must not archive into the source's archives\n")
    restore.write_recovery(target.pgdata, {"restore_command": tool.restore_command(target.pgdata),
                                           **(targets or {"recovery_target": "immediate"}),
                                           "recovery_target_action": "promote"})
    sampler = RestoreSampler(target.pgdata, tool.restore_marker)
    started = time.monotonic()
    try:
        restore.recover(target.pgdata, bindir=target.bindir, prefix=PREFIX,
                        options=f"-p {target.port} -k {target.socket_dir} -c listen_addresses=''")
        seconds = time.monotonic() - started
    finally:
        side = sampler.stop()
    return seconds, side


def _count_rows(target: LocalPostgres) -> int:
    target.start()
    try:
        return int(target.psql("SELECT count(*) FROM pgbench_accounts"))
    finally:
        target.stop()


def take_backup(tool: Tool, run: Run, meters: Meters, outcome: Outcome) -> None:
    _say(f"{tool.label}: backup")
    try:
        outcome.phases["backup"] = run_measured(tool.backup(), run.logs / f"{tool.key}-backup", meters)
    except Exception as error:  # one tool's failure is a line in the report, not the end of the run
        outcome.errors.append(f"backup: {error}")


def _quiesce(source: LocalPostgres) -> None:
    """Before a measured restore: the source's dirty buffers written (a checkpoint after a load
    would otherwise write gigabytes while the next tool restores) and the disk's write-back done,
    so every tool starts from the same state."""
    source.psql("CHECKPOINT")
    os.sync()


def restore_rounds(outcomes: Sequence[Outcome], run: Run, meters: Meters, rounds: int, replay: bool,
                   expected_rows: int) -> None:
    """Every tool restores its base backup `rounds` times, taking turns, each round starting with
    the next tool (a disk slower for a while, or the first turn after the backups, falls on every
    tool alike); the last round also replays. The figure is the median of the rounds."""
    for number in range(rounds):
        first = number % len(outcomes)
        for outcome in [*outcomes[first:], *outcomes[:first]]:
            restore_backup(outcome.tool, run, meters, outcome, replay and number == rounds - 1, expected_rows)


def restore_backup(tool: Tool, run: Run, meters: Meters, outcome: Outcome, replay: bool, expected_rows: int) -> None:
    target = LocalPostgres(root=run.workspace / f"restore-{tool.key}")
    try:
        target._chown()
        target.pgdata.mkdir(mode=0o700)
        run.own(target.pgdata)
        _say(f"{tool.label}: restore")
        _quiesce(run.source)
        outcome.phases["restore"] = run_measured(tool.restore(target.pgdata), run.logs / f"{tool.key}-restore", meters)
        outcome.phases["fsync"] = Measured(_fsync_tree(target.pgdata))
        outcome.restores.append(outcome.phases["restore"].seconds + outcome.phases["fsync"].seconds)
        if replay:
            _say(f"{tool.label}: replay to consistency")
            seconds, side = _replay(tool, target)
            outcome.phases["replay"] = Measured(seconds, side.command_cpu, max_rss=side.max_rss or None,
                                                tree_rss=side.tree_rss or None)
            outcome.rows = _count_rows(target)
            if outcome.rows != expected_rows:
                outcome.errors.append(f"restored {outcome.rows} rows of pgbench_accounts, not {expected_rows}")
    except Exception as error:
        outcome.errors.append(f"restore: {error}")
    finally:
        target.cleanup()


# ------------------------------------------------------------------------ the WAL-heavy case

@dataclass
class WalLoad:
    """What pgbench wrote after the base backups, and the restore point near its end."""
    written: int            # bytes of WAL from the start of the load to the restore point
    after: int              # bytes written after the restore point (not replayed)
    load_seconds: float
    archive_seconds: float  # from the end of the load until every tool had archived all of it
    history_rows: int       # rows of pgbench_history at the restore point


def _wal_bytes_since(source: LocalPostgres, start: str) -> int:
    return int(source.psql(f"SELECT pg_current_wal_lsn() - '{start}'::pg_lsn"))


# WAL-heavy on purpose: pgbench's own TPC-B-like transaction writes ~0.5 kB of WAL, so 1 GB would
# take this machine half an hour; this one updates a range of 2000 accounts (with the full-page
# images after each checkpoint) and keeps pgbench_history as the count a restore is checked by.
WAL_SCRIPT = """\\set aid random(1, :accounts - 2000)
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN :aid AND :aid + 1999;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :aid, 1, CURRENT_TIMESTAMP);
"""


def _pgbench(source: LocalPostgres, seconds: int) -> None:
    script = source.root / "wal-heavy.sql"
    script.write_text(WAL_SCRIPT)
    script.chmod(0o644)
    accounts = source.psql("SELECT max(aid) FROM pgbench_accounts")
    done = _as_user([f"{source.bindir}/pgbench", "-n", "-c", "2", "-j", "2", "-T", str(seconds), "-f", str(script),
                     "-D", f"accounts={accounts}",
                     "-h", str(source.socket_dir), "-p", str(source.port), "postgres"])
    if done.returncode:
        raise ToolError(f"pgbench: {done.stderr.strip()[-500:]}")


def make_wal(source: LocalPostgres, megabytes: int) -> WalLoad:
    """pgbench (WAL_SCRIPT, 2 clients) until `megabytes` of WAL are written, a named restore point,
    a few seconds more of it (the target is near the end of the archive, not at it); then until
    each tool's archive has all of it (the server's archive_command runs all three)."""
    start = source.psql("SELECT pg_current_wal_lsn()")
    started = time.monotonic()
    while (left := megabytes * MB - _wal_bytes_since(source, start)) > 0:
        _pgbench(source, 5 if left < 64 * MB else 15)
    rows = int(source.psql("SELECT count(*) FROM pgbench_history"))
    point = source.psql(f"SELECT pg_create_restore_point('{RESTORE_POINT}')")
    written = int(source.psql(f"SELECT '{point}'::pg_lsn - '{start}'::pg_lsn"))
    _pgbench(source, 2)
    after = _wal_bytes_since(source, point)
    load_seconds = time.monotonic() - started
    started = time.monotonic()
    _archive_all(source, timeout=PHASE_TIMEOUT)
    return WalLoad(written, after, load_seconds, time.monotonic() - started, rows)


def restore_to_point(tool: Tool, run: Run, meters: Meters, outcome: Outcome, load: WalLoad) -> None:
    """The base backup restored again, then replayed through the load's WAL to the restore point."""
    target = LocalPostgres(root=run.workspace / f"pitr-{tool.key}")
    try:
        target._chown()
        target.pgdata.mkdir(mode=0o700)
        run.own(target.pgdata)
        _say(f"{tool.label}: point-in-time restore through {load.written / MB:.0f} MB of WAL")
        _quiesce(run.source)
        outcome.pitr["restore"] = run_measured(tool.restore(target.pgdata), run.logs / f"{tool.key}-pitr-restore",
                                               meters)
        outcome.pitr["fsync"] = Measured(_fsync_tree(target.pgdata))
        seconds, outcome.pitr_replay = _replay(tool, target, {"recovery_target_name": RESTORE_POINT,
                                                              "recovery_target_inclusive": "on"})
        outcome.pitr["replay"] = Measured(seconds)
        target.start()
        try:
            rows = int(target.psql("SELECT count(*) FROM pgbench_history"))
        finally:
            target.stop()
        outcome.pitr_ok = rows == load.history_rows
        if not outcome.pitr_ok:
            outcome.errors.append(f"point-in-time restore: {rows} rows of pgbench_history at the restore point, "
                                  f"not {load.history_rows}")
    except Exception as error:
        outcome.errors.append(f"point-in-time restore: {error}")
    finally:
        target.cleanup()


def _stored(client, bucket: str, prefix: str) -> tuple[int, int]:
    size = count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents") or ():
            size, count = size + int(item["Size"]), count + 1
    return size, count


# ------------------------------------------------------------------------------ the report

def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) if i < left else cell.rjust(width)
                         for i, (cell, width) in enumerate(zip(row, widths))).rstrip()
    return "\n".join([line(header), line(["-" * width for width in widths]), *map(line, rows)])


def _rate(database: Database, seconds: float | None) -> str:
    return _number(database.size / MB / seconds, 0) if seconds else "-"


def _ratio(database: Database, stored: tuple[int, int] | None) -> str:
    return _number(database.data_size / stored[0]) if stored and stored[0] else "-"


def _verdict(outcome: Outcome) -> str:
    if outcome.errors:
        return "FAILED"
    return "-" if outcome.rows is None else "yes"


def summary(outcomes: Sequence[Outcome], database: Database) -> str:
    rows = []
    for outcome in outcomes:
        phases = outcome.phases
        backup, replay = phases.get("backup"), phases.get("replay")
        restored = statistics.median(outcome.restores) if outcome.restores else None
        stored, wal = outcome.stored, outcome.wal_stored
        rows.append([outcome.tool.label, outcome.tool.settings,
                     _number(backup and backup.seconds), _rate(database, backup and backup.seconds),
                     _number(restored), _rate(database, restored), _number(replay and replay.seconds),
                     _number(stored and stored[0] / MB), _ratio(database, stored), _number(wal and wal[0] / MB),
                     _verdict(outcome)])
    return _table(["tool", "settings", "backup s", "MB/s", "restore+fsync s", "MB/s", "replay s",
                   "in S3 MB", "ratio", "WAL MB", "rows ok"], rows, left=2)


def details(outcomes: Sequence[Outcome], database: Database) -> str:
    rows = []
    for outcome in outcomes:
        for phase, measured in outcome.phases.items():
            rows.append([outcome.tool.label, phase, _number(measured.seconds, 2),
                         _rate(database, measured.seconds) if phase in ("backup", "restore") else "-",
                         _number(measured.cpu), _number(measured.server_cpu), _number(measured.proxy_cpu),
                         _number(measured.max_rss and measured.max_rss / MB, 0),
                         _number(measured.tree_rss and measured.tree_rss / MB, 0)])
    return _table(["tool", "phase", "wall s", "MB/s", "tool CPU s", "server CPU s", "proxy CPU s",
                   "RSS max MB", "RSS tree MB"], rows, left=2)


def pitr_summary(outcomes: Sequence[Outcome], load: WalLoad) -> str:
    rows = []
    for outcome in outcomes:
        pitr, side = outcome.pitr, outcome.pitr_replay
        restored = pitr["restore"].seconds + pitr["fsync"].seconds if "fsync" in pitr else None
        replay = pitr.get("replay")
        total = restored + replay.seconds if restored is not None and replay else None
        rate = _number(load.written / MB / replay.seconds, 0) if replay and replay.seconds else "-"
        rows.append([outcome.tool.label, _number(restored), _number(replay.seconds if replay else None), rate,
                     _number(total), _number(side.replay_cpu if side else None),
                     _number(side.command_cpu if side else None),
                     _number(side.max_rss / MB if side else None, 0), _number(side.tree_rss / MB if side else None, 0),
                     "-" if outcome.pitr_ok is None else ("yes" if outcome.pitr_ok else "NO")])
    return _table(["tool", "restore+fsync s", "replay s", "WAL MB/s", "to consistent s", "replay CPU s",
                   "restore_command CPU s", "RSS max MB", "RSS sum MB", "rows ok"], rows)


def versions() -> str:
    shown = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "pgbackrest", "barman-cli-cloud",
                            "postgresql-15", "socat"], capture_output=True, text=True).stdout.split("\n")
    from importlib import metadata
    with contextlib.suppress(metadata.PackageNotFoundError):
        shown.insert(0, f"pgop {metadata.version('pgop')}")
    return ", ".join(line for line in shown if line)


# ------------------------------------------------------------------------------ the run

def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def ensure_packages(barman_compression: str) -> None:
    missing = sorted({package for command, package in PACKAGES.items() if not shutil.which(command)})
    if barman_compression == "snappy" and subprocess.run(["/usr/bin/python3", "-c", "import snappy"],
                                                         capture_output=True).returncode:
        missing.append("python3-snappy")
    if not missing:
        return
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        raise SystemExit(f"missing Debian packages {', '.join(missing)}: install them with "
                         f"`sudo {shlex.join(install)}` (or run `make bench-backup` as root)")
    _say(f"installing {' '.join(missing)}")
    subprocess.run(install, check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=135, help="pgbench scale (135: about 2 GB)")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"a comma-separated subset of {','.join(TOOLS)}")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(),
                        help="pgBackRest process-max and barman-cloud -J (default: the number of cores)")
    parser.add_argument("--barman-compression", choices=sorted(BARMAN_COMPRESSION), default="gzip")
    parser.add_argument("--no-replay", dest="replay", action="store_false",
                        help="skip WAL replay to consistency and the row count after each restore")
    parser.add_argument("--wal-mb", type=int, default=1024,
                        help="the WAL-heavy case: MB of WAL pgbench writes after the base backups, archived by "
                             "every tool and replayed by each in a point-in-time restore (0: skip it)")
    parser.add_argument("--restores", type=lambda v: max(1, int(v)), default=3,
                        help="rounds of restores of the base backup, the tools taking turns (the median is reported)")
    parser.add_argument("--keep", action="store_true", help="keep the run's bucket and its objects in S3")
    args = parser.parse_args()
    args.tools = [name.strip() for name in args.tools.split(",") if name.strip()]
    if unknown := set(args.tools) - set(TOOLS):
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")
    return args


def _workspace() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="pgop-compare-", dir="/var/tmp"))
    directory.chmod(0o755)  # the postgres user reaches its data directories, configuration and script
    (directory / "logs").mkdir()
    return directory


def main() -> None:
    args = _arguments()
    ensure_packages(args.barman_compression)
    endpoint, access, secret = s3_server()
    client = _s3_client(endpoint, access, secret)   # plain http: the run's bookkeeping bypasses the proxy
    with contextlib.ExitStack() as cleanup:
        workspace = _workspace()
        cleanup.callback(shutil.rmtree, workspace, ignore_errors=True)
        bucket = f"pgop-compare-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        if not args.keep:
            cleanup.callback(_drop_bucket_quietly, client, bucket)
        proxy = TlsProxy(workspace / "tls", endpoint)
        cleanup.callback(proxy.stop)
        launcher, credentials = _launcher(), _credentials(access, secret)
        cleanup.callback(shutil.rmtree, launcher, ignore_errors=True)
        cleanup.callback(shutil.rmtree, credentials, ignore_errors=True)
        source = LocalPostgres(root=workspace / "source")
        cleanup.callback(source.cleanup)
        run = Run(workspace, bucket, proxy.endpoint, proxy.ca_file, source, launcher, args.jobs)
        _tool_environment(run, access, secret, credentials)
        make = {"pgop": lambda: Pgop(run), "pgbackrest": lambda: PgBackRest(run),
                "barman": lambda: BarmanCloud(run, args.barman_compression)}
        outcomes = [Outcome(make[name]()) for name in args.tools]

        load_before = os.getloadavg()[0]  # other work on the machine shows in every figure
        _say(f"loading pgbench -i -s {args.scale} into PostgreSQL 15 in {workspace}; bucket {bucket}")
        database = prepare_source(run, outcomes, args.scale)
        _say(f"database {database.size / MB:.0f} MB, data directory {database.data_size / MB:.0f} MB "
             f"(without pg_wal), loaded in {database.load_seconds:.0f} s")
        meters = Meters(source, proxy.process.pid)
        for outcome in outcomes:
            if not outcome.errors:
                take_backup(outcome.tool, run, meters, outcome)
        backed_up = [outcome for outcome in outcomes if "backup" in outcome.phases]
        for outcome in backed_up:
            base, wal = outcome.tool.prefixes()
            outcome.stored, outcome.wal_stored = _stored(client, bucket, base), _stored(client, bucket, wal)
        restore_rounds(backed_up, run, meters, args.restores, args.replay, args.scale * 100_000)
        load = None
        if args.wal_mb > 0 and backed_up:
            _say(f"WAL-heavy case: pgbench until {args.wal_mb} MB of WAL, archived by every tool")
            load = make_wal(source, args.wal_mb)
            _say(f"{load.written / MB:.0f} MB of WAL to the restore point in {load.load_seconds:.0f} s, "
                 f"archived {load.archive_seconds:.0f} s after the load")
            for outcome in backed_up:
                restore_to_point(outcome.tool, run, meters, outcome, load)

        print(f"\npgbench scale {args.scale}: database {database.size / MB:.0f} MB, data directory "
              f"{database.data_size / MB:.0f} MB without pg_wal; {os.cpu_count()} cores, load average "
              f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; S3 versitygw through "
              f"a TLS proxy\n{versions()}\n")
        print(summary(outcomes, database))
        print("\nrestore + fsync, every round (s): " + "; ".join(
            f"{o.tool.label} {', '.join(f'{seconds:.1f}' for seconds in o.restores)}" for o in backed_up if o.restores)
              + "\n(the table below: the last round)")
        print()
        print(details(outcomes, database))
        if load is not None:
            print(f"\nWAL-heavy case: pgbench -c 2 (2000-account updates) wrote {load.written / MB:.0f} MB of WAL "
                  f"({load.written / (16 * MB):.0f} segments) after the base backups up to a restore point, "
                  f"{load.after / MB:.0f} MB after it; every tool archived it (the archiver ran all three per "
                  f"segment, done {load.archive_seconds:.0f} s after the load). Each tool restores its base backup "
                  "and replays to the restore point (recovery_target_name), then promotes:\n")
            print(pitr_summary(backed_up, load))
        for outcome in outcomes:
            for error in outcome.errors:
                print(f"\n{outcome.tool.label} failed: {error}")
        if args.keep:
            print(f"\nkept: s3://{bucket}/ (pgop/, pgbackrest/, barman/)")


def s3_server() -> tuple[str, str, str]:
    """(endpoint, access key, secret key): the environment's S3 server, or another one named by
    PGOP_BENCH_S3_ENDPOINT, PGOP_BENCH_S3_ACCESS_KEY and PGOP_BENCH_S3_SECRET_KEY (a run that must
    not share the environment's server with tests)."""
    names = ("PGOP_BENCH_S3_ENDPOINT", "PGOP_BENCH_S3_ACCESS_KEY", "PGOP_BENCH_S3_SECRET_KEY")
    if all(os.environ.get(name) for name in names):
        endpoint, access, secret = (os.environ[name] for name in names)
        return endpoint, access, secret
    env = envfile.load()
    return env["AWS_ENDPOINT_URL_S3"], env["S3_ACCESS_KEY_ID"], env["S3_SECRET_ACCESS_KEY"]


def _drop_bucket_quietly(client, bucket: str) -> None:
    try:
        _drop_bucket(client, bucket)
    except Exception as error:  # leftovers in a bucket of its own are no reason to hide the figures
        print(f"could not remove s3://{bucket}: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
