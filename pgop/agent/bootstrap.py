"""Give an empty volume its first data directory: initdb, or a clone of the primary.

Runs in the agent of a Postgres pod before it starts Postgres (before_postgres), or, for a
restore, in a short-lived bootstrap pod of its own (`pgop agent bootstrap --mode ...`). A bootstrap that
completed leaves a marker next to PGDATA and is never repeated; one that was interrupted leaves
no marker, and the next attempt empties PGDATA and starts over (the volume holds nothing else).
"""
from __future__ import annotations

import enum
import json
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql

from pgop.agent import config, credentials, local
from pgop.agent import replication as replication_sql
from pgop.agent.commands import CommandError, Runner
from pgop.agent.postmaster import Postmaster
from pgop.agent.settings import AgentSettings
from pgop.kernel import pgconfig
from pgop.kernel.conditions import rfc3339
from pgop.kernel.model import InitdbSpec, InstanceSpec

log = logging.getLogger(__name__)


class BootstrapMode(str, enum.Enum):
    INITDB = "initdb"
    BASEBACKUP = "basebackup"
    RECOVERY = "recovery"


class BootstrapError(RuntimeError):
    pass


@dataclass(frozen=True)
class BootstrapResult:
    mode: BootstrapMode
    already_done: bool = False


def unwritable_volume(mode: int, owner: tuple[int, int], user: tuple[int, int, frozenset[int]]) -> str | None:
    """Why the user `(uid, gid, supplementary gids)` cannot create PGDATA in a volume root of this
    mode and owner, or None. The pod's fsGroup normally hands the root to the postgres group; a
    storage class whose volumes do not support that leaves it as the provisioner made it."""
    uid, gid, groups = user
    if uid == 0:
        return None
    if owner[0] == uid:
        needed = stat.S_IWUSR | stat.S_IXUSR
    elif owner[1] == gid or owner[1] in groups:
        needed = stat.S_IWGRP | stat.S_IXGRP
    else:
        needed = stat.S_IWOTH | stat.S_IXOTH
    if mode & needed == needed:
        return None
    return (f"owned by {owner[0]}:{owner[1]} with mode {stat.S_IMODE(mode):04o}, not writable by uid {uid} "
            f"(groups {', '.join(str(g) for g in sorted({gid, *groups}))}): its storage class does not apply "
            f"the pod's fsGroup; use a storage class whose volumes support ownership management "
            f"(CSI drivers, local volumes) or make the provisioner create group-writable directories")


def check_volume(directory: Path) -> None:
    info = directory.stat()
    problem = unwritable_volume(info.st_mode, (info.st_uid, info.st_gid),
                                (os.geteuid(), os.getegid(), frozenset(os.getgroups())))
    if problem:
        raise BootstrapError(f"the volume at {directory} is {problem}")


def is_bootstrapped(settings: AgentSettings) -> bool:
    return settings.bootstrap_marker.exists() and (settings.pgdata / "PG_VERSION").exists()


def empty_data_directory(settings: AgentSettings, runner: Runner) -> None:
    """PGDATA as an empty directory of mode 0700, owned by the postgres user."""
    pgdata = settings.pgdata
    if pgdata.exists():
        if any(pgdata.iterdir()):
            log.warning("emptying %s, left behind by an interrupted bootstrap", pgdata)
        for entry in pgdata.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    else:
        pgdata.mkdir(parents=True)
    pgdata.chmod(0o700)
    runner.chown(pgdata)


def prepare_runtime_dirs(settings: AgentSettings, runner: Runner) -> None:
    """The socket and runtime directories (emptyDirs in a pod), made and handed to postgres."""
    for directory in {settings.socket_dir, settings.runtime_dir}:
        if not directory.exists():
            directory.mkdir(parents=True, mode=0o755)
            runner.chown(directory)


def write_passfile(settings: AgentSettings, runner: Runner, kinds=(credentials.SUPERUSER, credentials.REPLICATION)) -> None:
    """The agent's passfile: libpq reads the passwords from it (the replica's walreceiver too)."""
    prepare_runtime_dirs(settings, runner)
    entries = []
    for kind in kinds:
        try:
            entries.append(credentials.read_credentials(settings.secrets_dir, kind))
        except credentials.CredentialsError:
            if kind == credentials.REPLICATION:
                raise
    credentials.write_private(settings.passfile, credentials.pgpass_text(entries), runner.owner)


def _mark_done(settings: AgentSettings, mode: BootstrapMode, runner: Runner) -> None:
    marker = settings.bootstrap_marker
    marker.write_text(json.dumps({"mode": mode.value, "instance": settings.instance,
                                  "at": rfc3339(datetime.now(UTC))}) + "\n")
    runner.chown(marker)


def refusal(mode: BootstrapMode, permit: str | None) -> str | None:
    """Why a bootstrap that found no bootstrapped data directory must not make one, or None.

    `permit`: None for a bootstrap pod (the operator makes one only for an unmarked volume); for
    the agent of a Postgres pod, the pod's annotation pgop.io/bootstrap-mode as the kubelet passed
    it at this start, "" once the operator marked the volume initialised and removed it. A marked volume without a data directory lost its data (a wiped local disk): making a new
    one would bring back an empty instance, a primary with none of its data."""
    if permit is None or permit == mode.value:
        return None
    if not permit:
        return ("the volume is marked initialised (this pod's annotation pgop.io/bootstrap-mode is gone) "
                "but holds no bootstrapped data directory: its data is lost; not filling it again. "
                "Delete the PVC to rebuild the instance from the primary")
    return f"this pod's annotation pgop.io/bootstrap-mode says {permit!r}, not {mode.value!r}; not bootstrapping"


def bootstrap(settings: AgentSettings, mode: BootstrapMode | str, spec: InstanceSpec | None = None,
              runner: Runner | None = None, source: SpecSource | None = None,
              permit: str | None = None) -> BootstrapResult:
    """`source`: the PgInstance as the operator updates it; a basebackup waits on it for its
    primary (wait_for_source). `permit`: see refusal()."""
    mode = BootstrapMode(mode)
    runner = runner or Runner(settings.run_as)
    if is_bootstrapped(settings):
        log.info("%s already holds a bootstrapped data directory; nothing to do", settings.pgdata)
        return BootstrapResult(mode, already_done=True)
    refused = refusal(mode, permit)
    if refused:
        raise BootstrapError(refused)
    log.info("bootstrap %s into %s", mode.value, settings.pgdata)
    spec = spec or InstanceSpec(cluster=settings.cluster, ordinal=0,
                                role="replica" if mode is BootstrapMode.BASEBACKUP else "primary",
                                bootstrap=mode.value)
    if settings.bootstrap_marker.parent.exists():
        check_volume(settings.bootstrap_marker.parent)
    settings.bootstrap_marker.parent.mkdir(parents=True, exist_ok=True)
    if mode is BootstrapMode.INITDB:
        initdb(settings, spec, runner)
    elif mode is BootstrapMode.RECOVERY:
        recovery(settings, spec, runner)
    else:
        basebackup(settings, wait_for_source(settings, spec, runner, source), runner)
    _mark_done(settings, mode, runner)
    return BootstrapResult(mode)


# ------------------------------------------------------------------------------------ initdb

def initdb(settings: AgentSettings, spec: InstanceSpec, runner: Runner) -> None:
    superuser = credentials.read_credentials(settings.secrets_dir, credentials.SUPERUSER)
    replication = credentials.read_credentials(settings.secrets_dir, credentials.REPLICATION)
    app = credentials.read_credentials(settings.secrets_dir, credentials.APP)
    wanted = spec.initdb or InitdbSpec(database="app", owner=app.username)
    if wanted.owner != app.username:
        log.warning("the app secret names role %r, the spec %r: creating %r, whose password is in the secret",
                    app.username, wanted.owner, app.username)

    empty_data_directory(settings, runner)
    write_passfile(settings, runner)
    # The superuser's password from its file (initdb reads the first line), not from argv.
    runner.run([
        settings.binary("initdb"), "-D", str(settings.pgdata), "-U", pgconfig.SUPERUSER,
        f"--pwfile={superuser.password_file}", "--auth-local=peer", "--auth-host=scram-sha-256",
        "--data-checksums", "--encoding=UTF8", "--locale=C.UTF-8",
    ], timeout=300)
    files = config.ConfigFiles(settings.pgdata)
    config.write(files, config.desired_settings(settings, spec, replica=False), config.hba_text(settings, spec), runner.owner)

    # Only the socket (or the test's loopback) while roles are made: no client can come in.
    listen = settings.connect_host if settings.connect_host and not settings.connect_host.startswith("/") else ""
    postmaster = Postmaster(settings, runner)
    postmaster.start(timeout=120, options=["-c", f"listen_addresses={listen}"])
    try:
        with local.connect(settings) as conn:
            create_roles(conn, replication, app, wanted.database)
        with local.connect(settings, dbname=wanted.database) as conn:
            # Before PG 15 everyone may create in public; make it the owner's, as 15 does.
            conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(app.username)))
    finally:
        postmaster.stop("fast")


def _verifier(conn: psycopg.Connection, user: str, password: str) -> str:
    # Hashed by libpq on this side: the statement, should the server ever log it, has no password.
    return conn.pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256").decode()


def create_roles(conn: psycopg.Connection, replication: credentials.Credentials,
                 app: credentials.Credentials, database: str) -> None:
    conn.execute(sql.SQL("CREATE ROLE {} WITH LOGIN REPLICATION PASSWORD {}").format(
        sql.Identifier(replication.username),
        sql.Literal(_verifier(conn, replication.username, replication.password))))
    conn.execute(sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD {}").format(
        sql.Identifier(app.username), sql.Literal(_verifier(conn, app.username, app.password))))
    conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
        sql.Identifier(database), sql.Identifier(app.username)))
    replication_sql.grant_replication_role_rights(conn, replication.username)


# -------------------------------------------------------------------------------- basebackup

BASEBACKUP_ATTEMPTS = 5
SOURCE_WAIT = 600.0  # how long a replica's bootstrap waits for its primary, before it fails (and is run again)
READ_AGAIN = 5.0  # the spec is read on each change the watch reports, and at least this often


class SpecSource(Protocol):
    """The bootstrap's PgInstance, as the operator updates it."""

    def read(self) -> InstanceSpec | None:
        """The spec now; None while the API server cannot say."""

    def changed(self, within: float) -> bool:
        """Wait up to `within` seconds; True as soon as the spec may have changed."""


def wait_for_source(settings: AgentSettings, spec: InstanceSpec, runner: Runner,
                    source: SpecSource | None = None, timeout: float = SOURCE_WAIT, every: float = 0.25,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> InstanceSpec:
    """Wait until the primary to clone is named and up; the spec last read.

    A new cluster's replicas are made while its primary still runs initdb, so their bootstrap pods
    start alongside it. The clone waits for two things. First, the operator names the primary's
    pod: spec.primaryHost, written once that pod has an IP and seen here through a watch of the
    PgInstance. Never -rw while waiting: it may route to a deposed primary. Second, Postgres there
    accepts connections (pg_isready, every `every` seconds). The clone thus comes from a primary
    that is up, as before, only without a pod start in between. A test machine's
    settings.primary_host names the host for every instance. With neither named and no way to
    read the spec, pg_basebackup goes on at once through -rw, as before primaryHost existed.
    After `timeout`, BootstrapError: the pod's container fails and runs again."""
    began = clock()
    deadline = began + timeout
    read_again = began + READ_AGAIN
    told = None
    while True:
        named = settings.primary_host or spec.primary_host
        if named and _accepting(settings, named, runner):
            if told is not None:
                log.info("the primary %s is up at %s after %.1fs; cloning it", spec.primary or "?", named,
                         clock() - began)
            return spec
        if not named and source is None:
            return spec
        if told != named:
            log.info("waiting for the primary %s: %s", spec.primary or "?",
                     f"Postgres at {named}:{settings.primary_port} to accept connections" if named
                     else "the operator to name its pod (spec.primaryHost)")
            told = named
        if clock() >= deadline:
            where = (f"{named}:{settings.primary_port} does not accept connections" if named else
                     "the operator has not named its pod (spec.primaryHost is empty)")
            raise BootstrapError(f"waited {timeout:.0f}s for the primary {spec.primary or '?'} to clone: {where}")
        if source is None:
            sleep(every)
            continue
        if source.changed(every) or clock() >= read_again:
            spec = source.read() or spec
            read_again = clock() + READ_AGAIN


class WatchedSpec:
    """SpecSource of a PgInstance in the API server: a watch, started on the first wait, wakes
    the reader on each spec change (the operator's patch of spec.primaryHost)."""

    def __init__(self, store: Any, name: str) -> None:
        self.store, self.name = store, name
        self.news, self.stopping = threading.Event(), threading.Event()
        self.thread: threading.Thread | None = None

    def read(self) -> InstanceSpec | None:
        from pgop.kernel.model import Instance
        try:
            body = self.store.get_instance(self.name)
        except Exception as error:  # the API server busy or away: the wait goes on
            log.warning("cannot read PgInstance %s: %s", self.name, error)
            return None
        return Instance.from_object(body).spec if body else None

    def changed(self, within: float) -> bool:
        if self.thread is None:
            self.thread = threading.Thread(target=self.store.watch, args=(self.name, self.news.set, self.stopping),
                                           name=f"watch-{self.name}", daemon=True)
            self.thread.start()
        news = self.news.wait(within)
        self.news.clear()
        return news

    def close(self) -> None:
        self.stopping.set()


def _accepting(settings: AgentSettings, host: str, runner: Runner) -> bool:
    """pg_isready: the server answers (even one that would refuse this client's password)."""
    try:
        done = runner.run([settings.binary("pg_isready"), "-q", "-h", host, "-p", str(settings.primary_port),
                           "-t", "2"], check=False, timeout=10)
    except CommandError:
        return False
    return done.returncode == 0


def basebackup(settings: AgentSettings, spec: InstanceSpec, runner: Runner,
               attempts: int = BASEBACKUP_ATTEMPTS, retry_delay: float = 2.0) -> None:
    """Clone the primary with pg_basebackup as the replication role, streaming the WAL it needs,
    into a physical slot kept for this instance, then mark it a standby."""
    replication = credentials.read_credentials(settings.secrets_dir, credentials.REPLICATION)
    write_passfile(settings, runner)
    slot = pgconfig.slot_name(settings.instance)
    host = settings.source_host(spec)
    create_slot = True
    last_error: Exception | None = None
    for attempt in range(1, attempts + 1):
        empty_data_directory(settings, runner)
        argv = [
            settings.binary("pg_basebackup"), "-D", str(settings.pgdata),
            "-h", host, "-p", str(settings.primary_port),
            "-U", replication.username, "--no-password",
            "-X", "stream", "--checkpoint=fast", "-S", slot,
        ]
        if create_slot:
            argv.append("--create-slot")
        try:
            runner.run(argv, env={"PGPASSFILE": str(settings.passfile),
                                  "PGAPPNAME": f"{settings.instance}-basebackup",
                                  "PGCONNECT_TIMEOUT": "10", **settings.client_env(host)}, timeout=3600)
            break
        except CommandError as error:
            last_error = error
            if create_slot and "already exists" in error.stderr:
                # The primary's agent made the slot first: clone into it.
                log.info("replication slot %s exists on the primary; using it", slot)
                create_slot = False
                continue
            log.warning("pg_basebackup attempt %d/%d failed: %s", attempt, attempts, error)
            time.sleep(retry_delay * attempt)
    else:
        empty_data_directory(settings, runner)
        raise BootstrapError(f"pg_basebackup from {host}:{settings.primary_port} "
                             f"failed {attempts} times: {last_error}")

    files = config.ConfigFiles(settings.pgdata)
    config.write(files, config.desired_settings(settings, spec, replica=True), config.hba_text(settings, spec), runner.owner)
    config.write_standby_signal(files, runner.owner)
    # The clone carries the primary's files that describe the primary, not this instance.
    for leftover in ("postmaster.opts", "backup_label.old"):
        (settings.pgdata / leftover).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- recovery

def recovery(settings: AgentSettings, spec: InstanceSpec, runner: Runner, env=None, store=None,
             sleep=time.sleep) -> None:
    """Restore a base backup of the source cluster from S3 and replay its archived WAL to the
    target (the PgInstance's spec.recovery, pgop.agent.backups), promote onto a new timeline,
    stop; then this instance's own configuration, as after initdb.

    No time limit ends a restore that makes progress (pgop.backup.recovery_progress). A failed
    attempt is retried after a pause, at most MAX_ATTEMPTS times for one spec.recovery; then the
    volume is left alone and status.restore says Failed with the last error."""
    from pgop.agent.backups import restore_local
    from pgop.agent.restore_status import RestoreReporter, load_attempts, save_attempts
    from pgop.backup import recovery_progress as rules
    from pgop.kernel.meta import stable_hash
    if spec.recovery is None or not spec.recovery.source:
        raise BootstrapError(f"bootstrap mode 'recovery' needs spec.recovery.source in PgInstance "
                             f"{settings.instance}: the operator sets it from the cluster's "
                             "spec.bootstrap.recovery")
    if store is None:
        from pgop.agent.kube import store_from_env

        def store() -> Any:
            return store_from_env(settings.namespace, env)
    report = RestoreReporter(store, settings.instance)
    wanted = stable_hash(spec.recovery.to_dict())
    recorded = load_attempts(settings.pgdata)
    action, attempt = rules.next_attempt(recorded, wanted)
    last_error = recorded.last_error if recorded is not None and recorded.spec == wanted else None
    if action == "give-up":
        tried = "the restore failed and cannot succeed as specified" if recorded is not None and recorded.final \
            else f"the restore failed {attempt} times"
        message = (f"{tried}; the last error: {last_error or 'unknown'}. Not trying "
                   "again: change spec.bootstrap.recovery (e.g. another backup or target) or give the instance "
                   "a new volume")
        report(rules.RestoreProgress(phase=rules.FAILED, attempt=attempt, message=message[:4000]))
        raise BootstrapError(message)
    delay = rules.retry_delay(attempt)
    if delay:
        report(rules.RestoreProgress(phase=rules.RETRYING, attempt=attempt,
                                     message=f"attempt {attempt - 1} failed: {last_error}"[:4000]))
        log.info("restore attempt %d in %.0fs (the previous one failed: %s)", attempt, delay, last_error)
        sleep(delay)
    # Counted before it starts: an attempt killed with its pod counts too.
    save_attempts(settings.pgdata, rules.Attempts(wanted, attempt, last_error), runner.owner)
    empty_data_directory(settings, runner)
    prepare_runtime_dirs(settings, runner)
    try:
        result = restore_local(settings, spec.recovery, env, progress=report, attempt=attempt)
    except Exception as error:
        text = str(error)[-2000:] or type(error).__name__
        hopeless = rules.is_final(text)  # e.g. the wrong key: another attempt fails the same way
        save_attempts(settings.pgdata, rules.Attempts(wanted, attempt, text, hopeless), runner.owner)
        final = hopeless or attempt >= rules.MAX_ATTEMPTS
        said = (f"not retried, another attempt would fail the same way: {text}" if hopeless
                else f"attempt {attempt} of {rules.MAX_ATTEMPTS} failed: {text}")
        report(rules.RestoreProgress(phase=rules.FAILED if final else rules.RETRYING, attempt=attempt,
                                     message=said[:4000]))
        raise
    log.info("restored backup %s (%d bytes in %.1fs), now on timeline %s", result.backup.backup_name,
             result.bytes_unpacked, result.seconds_unpack, result.timeline)
    files = config.ConfigFiles(settings.pgdata)
    config.write(files, config.desired_settings(settings, spec, replica=False), config.hba_text(settings, spec), runner.owner)
    for leftover in ("postmaster.opts", "backup_label.old"):
        (settings.pgdata / leftover).unlink(missing_ok=True)
    adopt_credentials(settings, runner)


def adopt_credentials(settings: AgentSettings, runner: Runner) -> None:
    """The restored roles carry the source cluster's passwords; this cluster's Secrets have their
    own. Give the superuser, replication and app roles the passwords of this cluster's Secrets
    (creating a role the source did not have), so replicas, the agent and the applications get in."""
    import dataclasses
    superuser = credentials.read_credentials(settings.secrets_dir, credentials.SUPERUSER)
    replication = credentials.read_credentials(settings.secrets_dir, credentials.REPLICATION)
    app = credentials.read_credentials(settings.secrets_dir, credentials.APP)
    prepare_runtime_dirs(settings, runner)
    # No password in force is known here, so for this one start: no network listener, and the
    # socket (inside this pod) trusted, through a pg_hba of its own that is gone afterwards.
    hba = settings.runtime_dir / "pg_hba.restore.conf"
    hba.write_text("local all all trust\n")
    runner.chown(hba)
    on_socket = dataclasses.replace(settings, connect_host="")
    postmaster = Postmaster(on_socket, runner)
    # No archiving yet: these few writes belong to no archive until the Postgres pod runs.
    postmaster.start(timeout=300, options=["-c", "listen_addresses=", "-c", "archive_mode=off",
                                           "-c", f"hba_file={hba}"])
    try:
        with local.connect(on_socket, user=superuser.username) as conn:
            for role, attributes in ((superuser, "SUPERUSER LOGIN"), (replication, "LOGIN REPLICATION"),
                                     (app, "LOGIN")):
                set_password(conn, role, attributes)
    finally:
        postmaster.stop("fast")
        hba.unlink(missing_ok=True)


def set_password(conn: psycopg.Connection, role: credentials.Credentials, attributes: str) -> None:
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role.username,)).fetchone()
    verb = "ALTER" if exists else "CREATE"
    conn.execute(sql.SQL(f"{verb} ROLE {{}} WITH {attributes} PASSWORD {{}}").format(
        sql.Identifier(role.username), sql.Literal(_verifier(conn, role.username, role.password))))


def _read_spec(store: Any, settings: AgentSettings, mode: BootstrapMode) -> InstanceSpec | None:
    from pgop.kernel.model import Instance
    try:
        body = store.get_instance(settings.instance)
        return Instance.from_object(body).spec if body else None
    except Exception as error:
        _spec_unreadable(settings, mode, error)
        return None


def _spec_unreadable(settings: AgentSettings, mode: BootstrapMode, error: Exception) -> None:
    """A restore cannot go on without its PgInstance (what to restore is only in the spec: the
    pod tries again later); initdb and basebackup can (the spec only names the database, the
    secrets suffice)."""
    if mode is BootstrapMode.RECOVERY:
        raise BootstrapError(f"cannot read PgInstance {settings.instance}, which says what to "
                             f"restore: {error}") from None
    log.warning("cannot read PgInstance %s (%s); using the defaults", settings.instance, error)


def before_postgres(settings: AgentSettings, store: Any, runner: Runner) -> BootstrapResult | None:
    """The agent of a Postgres pod made for a volume not yet marked initialised fills it, before
    it starts Postgres in the same container, with the bootstrap the pod's annotation
    pgop.io/bootstrap-mode ($PGOP_BOOTSTRAP_PERMIT) names. None when there is nothing to do: no
    permission (a volume already marked: a missing data directory is then the loop's to report),
    or a data directory already made (the marker next to PGDATA)."""
    permit = settings.bootstrap_permit
    if not permit or is_bootstrapped(settings):
        return None
    try:
        mode = BootstrapMode(permit)
    except ValueError:
        raise BootstrapError(f"this pod's annotation pgop.io/bootstrap-mode says {permit!r}, not a bootstrap "
                             "mode (initdb, basebackup)") from None
    if mode is BootstrapMode.RECOVERY:
        raise BootstrapError("a restore runs in a bootstrap pod of its own, not in the Postgres pod")
    source = WatchedSpec(store, settings.instance)
    try:
        return bootstrap(settings, mode, _read_spec(store, settings, mode), runner, source=source, permit=permit)
    finally:
        source.close()


def no_data_directory(settings: AgentSettings) -> str:
    """What the agent reports when there is no data directory to run Postgres on."""
    if settings.bootstrap_permit == "":  # the volume is marked: it had one
        return str(refusal(BootstrapMode.BASEBACKUP, ""))
    return (f"no data directory in {settings.pgdata}: no bootstrap made one (or its data is lost); "
            "nothing to run")


def main(mode: str, primary_host: str | None = None, env=None) -> int:
    """`pgop agent bootstrap --mode ...` (a restore's bootstrap pod, or by hand): settings from
    the pod, the spec from its PgInstance."""
    import dataclasses

    from pgop.agent.kube import store_from_env
    from pgop.agent.settings import AgentSettings

    try:
        chosen = BootstrapMode(mode)
    except ValueError:
        raise BootstrapError(f"unknown bootstrap mode {mode!r}: expected "
                             + ", ".join(m.value for m in BootstrapMode)) from None
    settings = AgentSettings.from_env(env)
    settings.check_user()
    if primary_host:
        settings = dataclasses.replace(settings, primary_host=primary_host)
    spec = None
    store = None
    try:
        store = store_from_env(settings.namespace, env)
    except Exception as error:
        _spec_unreadable(settings, chosen, error)
    if store is not None:
        spec = _read_spec(store, settings, chosen)
    source = WatchedSpec(store, settings.instance) if store is not None else None
    try:
        result = bootstrap(settings, chosen, spec, source=source)
    finally:
        if source is not None:
            source.close()
    log.info("bootstrap %s %s", result.mode.value, "was already done" if result.already_done else "done")
    return 0
