"""A former primary becomes a replica of the primary again: pg_rewind, or a fresh clone.

The I/O of the rejoin `ha` decides: look at the primary behind the replication host (the -rw
Service), read this data directory's system identifier, run `pg_rewind` against the primary as
the superuser (wal_log_hints is on, so any former primary can be rewound), then write the
replica's configuration and standby.signal. If pg_rewind itself fails (the primary answered, the
rewind did not work out), the volume is emptied and cloned with pg_basebackup
(`bootstrap.basebackup`), as a lost volume would be. When the primary does not answer, or is
another database, nothing is touched: the next turn looks again.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pgop.agent import bootstrap, config, ha
from pgop.agent.commands import CommandError, Runner
from pgop.agent.settings import AgentSettings
from pgop.kernel import pgconfig
from pgop.kernel.model import InstanceSpec

log = logging.getLogger(__name__)

REWOUND = "Rewound"
RECLONED = "Recloned"


@dataclass(frozen=True)
class Outcome:
    done: bool
    how: str | None  # REWOUND | RECLONED when done
    message: str
    seconds: float = 0.0


def source_conninfo(settings: AgentSettings, host: str) -> str:
    """libpq conninfo of the primary at `host` (AgentSettings.source_host), for pg_rewind (it reads files of
    the source) and the probe before it. With TLS: as the replication role, by certificate (it has
    the grants pg_rewind needs; the superuser has no network login); without: as the superuser,
    the password from the agent's passfile."""
    tls = settings.client_options(host)
    fields = {"host": host, "port": str(settings.primary_port),
              "user": pgconfig.REPLICATION_USER if tls else pgconfig.SUPERUSER, "dbname": "postgres",
              "passfile": str(settings.passfile), "connect_timeout": "5",
              "application_name": f"{settings.instance}-rewind", **tls}
    return " ".join(f"{key}='{_quoted(value)}'" for key, value in fields.items())


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def probe_source(settings: AgentSettings, host: str) -> ha.Source:
    """The primary at `host`. Right after a promotion its pg_control still names
    the old timeline until the first checkpoint, and pg_rewind (before PostgreSQL 16) reads the
    timeline from there and finds "no rewind required": so a checkpoint first, in that case."""
    try:
        with psycopg.connect(source_conninfo(settings, host), autocommit=True) as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(), (SELECT system_identifier::text FROM pg_control_system()),"
                " (SELECT timeline_id FROM pg_control_checkpoint()),"
                " CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END"
                ).fetchone()
            assert row is not None
            in_recovery, system_identifier, checkpoint_timeline, walfile = row
            timeline = int(walfile[:8], 16) if walfile else checkpoint_timeline
            if not in_recovery and timeline != checkpoint_timeline:
                log.info("a checkpoint on the primary first: its pg_control still says timeline %s, not %s",
                         checkpoint_timeline, timeline)
                conn.execute("CHECKPOINT")
    except psycopg.Error as error:
        return ha.Source(reachable=False, error=str(error).strip().splitlines()[0] if str(error).strip() else
                         type(error).__name__)
    return ha.Source(reachable=True, in_recovery=bool(in_recovery), system_identifier=system_identifier,
                     timeline=timeline)


def local_system_identifier(settings: AgentSettings, runner: Runner) -> str | None:
    """From pg_control of the (stopped) data directory; None if it cannot be read."""
    try:
        out = runner.run([settings.binary("pg_controldata"), "-D", str(settings.pgdata)], timeout=30,
                         env={"LC_ALL": "C"}).stdout
    except CommandError as error:
        log.warning("pg_controldata: %s", error)
        return None
    for line in out.splitlines():
        if line.startswith("Database system identifier:"):
            return line.split(":", 1)[1].strip()
    return None


def stopped_position(settings: AgentSettings, runner: Runner) -> tuple[str, int, str] | None:
    """(last checkpoint LSN, its timeline, system identifier) of a cleanly stopped data directory,
    from pg_control: where a primary stopped by a switchover ended (its shutdown checkpoint is
    the last WAL it wrote, which its walsenders sent before it stopped). None for a crashed or
    unreadable one."""
    try:
        out = runner.run([settings.binary("pg_controldata"), "-D", str(settings.pgdata)], timeout=30,
                         env={"LC_ALL": "C"}).stdout
    except CommandError as error:
        log.debug("pg_controldata: %s", error)
        return None
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    if fields.get("Database cluster state") not in ("shut down", "shut down in recovery"):
        return None
    try:
        return (fields["Latest checkpoint location"], int(fields["Latest checkpoint's TimeLineID"]),
                fields["Database system identifier"])
    except (KeyError, ValueError):
        return None


def rewind(settings: AgentSettings, runner: Runner, host: str) -> str:
    """pg_rewind's output (it says "no rewind required" when the histories did not diverge)."""
    done = runner.run([settings.binary("pg_rewind"), f"--target-pgdata={settings.pgdata}",
                f"--source-server={source_conninfo(settings, host)}", "--progress"],
               env={"PGPASSFILE": str(settings.passfile), "LC_ALL": "C"}, timeout=3600)
    return (done.stdout or "") + (done.stderr or "")


def become_replica(settings: AgentSettings, runner: Runner, wanted_settings: dict[str, str], hba: str) -> None:
    files = config.ConfigFiles(settings.pgdata)
    config.write(files, wanted_settings, hba, runner.owner)
    config.write_standby_signal(files, runner.owner)
    # What a copy from the primary carries that describes the primary, not this instance.
    for leftover in ("postmaster.opts", "backup_label.old"):
        (settings.pgdata / leftover).unlink(missing_ok=True)


def rewind_failed_marker(settings: AgentSettings) -> Path:
    """Next to PGDATA (like the bootstrap marker): a pg_rewind that failed may have left PGDATA
    half rewritten, so the next attempt, even after a restart of the agent, clones."""
    return settings.pgdata.parent / f".{settings.pgdata.name}.pgop-rewind-failed"


def rejoin(settings: AgentSettings, runner: Runner, spec: InstanceSpec, wanted_settings: dict[str, str],
           hba: str, clone_attempts: int = bootstrap.BASEBACKUP_ATTEMPTS) -> Outcome:
    """Postgres must be stopped. Rewinds (or clones) this data directory into a replica."""
    started = time.monotonic()
    bootstrap.write_passfile(settings, runner)
    host = settings.source_host(spec)
    source = probe_source(settings, host)
    marker = rewind_failed_marker(settings)
    mine = None if marker.exists() else local_system_identifier(settings, runner)
    step, why = ha.rejoin_step(mine, source)
    if step != ha.REWIND:
        return Outcome(False, None, why)
    if marker.exists():
        failed = marker.read_text().strip() or "pg_rewind failed before"
    else:
        log.info("rejoining: pg_rewind from %s:%s (primary on timeline %s)", host,
                 settings.primary_port, source.timeline)
        try:
            output = rewind(settings, runner, host)
            become_replica(settings, runner, wanted_settings, hba)
            verdict = "no rewind was required" if "no rewind required" in output else "rewound"
            return Outcome(True, REWOUND, f"pg_rewind from the primary (timeline {source.timeline}): {verdict}, "
                                          f"in {time.monotonic() - started:.1f}s; started as a replica",
                           time.monotonic() - started)
        except CommandError as error:
            failed = _first_line(str(error))
            log.error("pg_rewind failed (%s); the volume is emptied and the primary cloned", failed)
            marker.write_text(failed + "\n")
        if not probe_source(settings, host).reachable:
            return Outcome(False, None, f"pg_rewind failed ({failed}) and the primary answers no more; "
                                        "cloning it once it answers")
    try:
        bootstrap.basebackup(settings, spec, runner, attempts=clone_attempts)
    except bootstrap.BootstrapError as error:
        return Outcome(False, None, f"pg_rewind failed ({failed}) and so did the clone: {error}")
    become_replica(settings, runner, wanted_settings, hba)
    marker.unlink(missing_ok=True)
    return Outcome(True, RECLONED, f"pg_rewind failed ({failed}); cloned the primary with pg_basebackup in "
                                   f"{time.monotonic() - started:.1f}s", time.monotonic() - started)


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else text[:300]

