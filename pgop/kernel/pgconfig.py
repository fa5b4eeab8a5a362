"""What goes into postgresql.conf and pg_hba.conf, and what a change of settings costs.

Pure: the agent decides *when* to render, write and reload; this module only says *what*.
The operator owns the settings that wire an instance into its cluster (ports, paths, replication,
archiving, recovery, TLS files); users tune everything else through spec.parameters.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

POSTGRES_PORT = 5432
SOCKET_DIRECTORY = "/var/run/postgresql"
SUPERUSER = "postgres"
REPLICATION_USER = "streaming_replica"

# The CRD's CEL rule refuses the same names (crds/pgclusters.yaml); tests keep the two in step.
OWNED_PARAMETERS = frozenset({
    "listen_addresses", "port",
    "unix_socket_directories", "unix_socket_group", "unix_socket_permissions",
    "data_directory", "config_file", "hba_file", "ident_file", "external_pid_file",
    "include", "include_dir", "include_if_exists",
    "wal_level", "hot_standby", "wal_log_hints", "full_page_writes",
    "max_wal_senders", "max_replication_slots",
    "primary_conninfo", "primary_slot_name", "synchronous_standby_names",
    "promote_trigger_file", "restore_command", "recovery_end_command",
    "ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file", "ssl_crl_file", "ssl_crl_dir",
    "ssl_passphrase_command",
})
OWNED_PREFIXES = ("archive_", "recovery_target")

# Sized for the CRD's maximum of 32 instances plus base backups, so scaling never needs a restart
# (both are postmaster settings) and a replica never has fewer than its primary (hot standby rule).
MAX_WAL_SENDERS = 40
MAX_REPLICATION_SLOTS = 40

WAL_PUSH_COMMAND = "pgop agent wal-push %p"
WAL_FETCH_COMMAND = "pgop agent wal-fetch %f %p"
# archive_mode stays 'on' even without S3, so enabling backups later is a reload, not a restart;
# ':' then "archives" by doing nothing, where an empty archive_command would keep WAL forever.
NO_ARCHIVE_COMMAND = ":"

ARCHIVE_RETRY_INTERVAL = "1s"

# Defaults a user may override in spec.parameters.
DEFAULT_PARAMETERS: Mapping[str, str] = {
    "hot_standby_feedback": "on",
    "wal_keep_size": "512MB",
    # A slot whose replica is gone for long (its PgInstance still there) keeps at most this much
    # WAL, not a full disk; a replica that fell further behind is rebuilt (pg_basebackup).
    "max_slot_wal_keep_size": "1GB",
    # A primary drops a replica that stopped answering after 5 s (not 60): the agent's isolation
    # watchdog reads pg_stat_replication, and a cut-off primary must see its replicas go. A
    # replica gives up on a silent primary as fast, so it reports a stopped receiver.
    "wal_sender_timeout": "5s",
    "wal_receiver_timeout": "5s",
    # A replica whose primary went away (restarted in place, replaced by a promotion) tries again
    # after 0.5 s, not 5: with synchronous replicas no commit is acknowledged until one is back,
    # so this wait is most of the write gap of a postmaster restart or a switchover. (1 s when
    # it also reads the archive: each try runs restore_command, a process of its own.)
    "wal_retrieve_retry_interval": "500ms",
    "password_encryption": "scram-sha-256",
    "logging_collector": "off",  # the container runtime collects stderr
    "log_destination": "stderr",
}

# Settings PostgreSQL reads only at server start (pg_settings.context = 'postmaster'), PG 13-17.
# Used to plan the order of a rollout; the agent still asks pg_settings.pending_restart after a
# reload, which also covers extensions' postmaster settings that no list can know.
POSTMASTER_PARAMETERS = frozenset({
    "archive_mode", "autovacuum_freeze_max_age", "autovacuum_max_workers",
    "autovacuum_multixact_freeze_max_age", "bonjour", "bonjour_name", "cluster_name",
    "commit_timestamp_buffers", "config_file", "data_directory", "data_sync_retry",
    "dynamic_shared_memory_type", "event_source", "external_pid_file", "hba_file",
    "hot_standby", "huge_page_size", "huge_pages", "ident_file", "ignore_invalid_pages",
    "io_max_concurrency", "io_method", "jit_provider", "listen_addresses", "logging_collector",
    "max_connections", "max_files_per_process", "max_locks_per_transaction",
    "max_logical_replication_workers", "max_notify_queue_pages", "max_pred_locks_per_transaction",
    "max_prepared_transactions", "max_replication_slots", "max_wal_senders",
    "max_worker_processes", "min_dynamic_shared_memory", "multixact_member_buffers",
    "multixact_offset_buffers", "notify_buffers", "old_snapshot_threshold", "port",
    "recovery_target", "recovery_target_action", "recovery_target_inclusive",
    "recovery_target_lsn", "recovery_target_name", "recovery_target_time",
    "recovery_target_timeline", "recovery_target_xid", "reserved_connections",
    "serializable_buffers", "shared_buffers", "shared_memory_type", "shared_preload_libraries",
    "subtransaction_buffers", "superuser_reserved_connections", "track_activity_query_size",
    "track_commit_timestamp", "transaction_buffers", "unix_socket_directories",
    "unix_socket_group", "unix_socket_permissions", "wal_buffers", "wal_decode_buffer_size",
    "wal_level", "wal_log_hints",
})
# Became reloadable in PostgreSQL 14.
_POSTMASTER_BEFORE_14 = frozenset({"restore_command", "archive_cleanup_command", "recovery_end_command"})

# A hot standby refuses to run with less of these than its primary has, so raising them must
# reach the replicas first and lowering them the primary first.
# The values are PostgreSQL's defaults, which apply when spec.parameters leaves one out.
HOT_STANDBY_MINIMUMS: Mapping[str, int] = {
    "max_connections": 100,
    "max_prepared_transactions": 0,
    "max_locks_per_transaction": 64,
    "max_wal_senders": MAX_WAL_SENDERS,
    "max_worker_processes": 8,
}


# Values that give up durability (the CRD's CEL rules hold the same regexes; tests compare them).
# fsync is a boolean: PostgreSQL reads any case and any unique prefix of off/false/no, and 0.
_READS_AS_OFF = re.compile(r"\s*(0|of|off|f|fa|fal|fals|false|n|no)\s*", re.IGNORECASE)
# synchronous_commit is an enum (whole words, any case); off and local acknowledge a commit
# before any replica has it.
_COMMITS_BEFORE_REPLICAS = re.compile(r"\s*(0|off|false|no|local)\s*", re.IGNORECASE)


def unsafe_settings(parameters: Mapping[str, str], *, synchronous_mode: str) -> list[tuple[str, str]]:
    """(name as written, why) of each setting that can lose acknowledged commits or corrupt the
    data files, for spec.parameters to refuse unless spec.allowUnsafeParameters is true.

    full_page_writes is not here: the operator owns it (pg_rewind needs it on), so it is refused
    whatever the spec says.
    """
    found = []
    for name, value in parameters.items():
        key = name.lower()
        if key == "fsync" and _READS_AS_OFF.fullmatch(value):
            found.append((name, "fsync off lets a crash of a node corrupt the data files"))
        elif (key == "synchronous_commit" and synchronous_mode == "required"
              and _COMMITS_BEFORE_REPLICAS.fullmatch(value)):
            found.append((name, f"synchronous_commit {value.strip()} acknowledges commits before a synchronous "
                                "replica has them, which synchronousMode required promises not to do"))
    return found


def is_owned(name: str) -> bool:
    """True for a setting the operator controls and spec.parameters may not set."""
    key = name.lower()
    return key in OWNED_PARAMETERS or key.startswith(OWNED_PREFIXES)


def effective_parameters(parameters: Mapping[str, str]) -> dict[str, str]:
    """The user-tunable settings an instance runs with: defaults, overridden by spec.parameters."""
    merged = dict(DEFAULT_PARAMETERS)
    merged.update({key.lower(): value for key, value in parameters.items()})
    return merged


# ---------------------------------------------------------------------------------- replication

@dataclass(frozen=True)
class TlsFiles:
    """The certificate files of an instance (pgop.specs.tls makes them; the pod mounts them): the
    server's, the CAs trusted for client certificates (`ca.crt`, Postgres' ssl_ca_file), the CAs
    that check the server (`server-ca.crt` when the server's certificate has its own issuer, a
    Secret the user brings; else `ca.crt`: the cluster's CA signs both), and the replication role's
    client certificate."""

    directory: str
    separate_server_ca: bool = False  # server-ca.crt is mounted (spec.tls is set)

    @property
    def server_cert(self) -> str:
        return f"{self.directory}/server.crt"

    @property
    def server_key(self) -> str:
        return f"{self.directory}/server.key"

    @property
    def ca(self) -> str:
        return f"{self.directory}/ca.crt"

    @property
    def server_ca(self) -> str:
        return f"{self.directory}/server-ca.crt" if self.separate_server_ca else self.ca

    @property
    def client_cert(self) -> str:
        return f"{self.directory}/replication.crt"

    @property
    def client_key(self) -> str:
        return f"{self.directory}/replication.key"

    def client_options(self, host: str = "") -> dict[str, str]:
        """libpq options of a connection as the replication role: TLS, the server checked against
        the CAs that sign its certificate, and the role's certificate instead of a password. The
        server's name is checked too (verify-full) unless `host` is an IP address, which no
        certificate of the cluster names (an instance's pod IP): then the CA alone (verify-ca)."""
        return {"sslmode": "verify-ca" if is_ip_address(host) else "verify-full", "sslrootcert": self.server_ca,
                "sslcert": self.client_cert, "sslkey": self.client_key}


_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


def certificate_fingerprints(pem: str) -> list[str]:
    """SHA-256 of each certificate (DER) in a PEM text, in hex: how the agent reports which CAs
    and certificates it loaded, and how the operator compares them with its Secrets."""
    out = []
    for block in _PEM_CERTIFICATE.findall(pem or ""):
        try:
            der = base64.b64decode("".join(block.split()), validate=True)
        except ValueError:
            continue
        out.append(hashlib.sha256(der).hexdigest())
    return out


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class ReplicationSource:
    """Where a replica streams from. The password stays in `passfile`, never in the config; with
    `tls`, the replica logs in with its certificate and checks the primary's."""

    host: str
    application_name: str
    slot_name: str
    passfile: str
    port: int = POSTGRES_PORT
    user: str = REPLICATION_USER
    tls: TlsFiles | None = None


def slot_name(instance_name: str) -> str:
    """The physical replication slot the primary keeps for a replica (slot names allow [a-z0-9_])."""
    return "pgop_" + re.sub(r"[^a-z0-9_]", "_", instance_name.lower())


def primary_conninfo(source: ReplicationSource) -> str:
    fields = {
        "host": source.host,
        "port": str(source.port),
        "user": source.user,
        "passfile": source.passfile,
        "application_name": source.application_name,
        "sslmode": "prefer",
    }
    if source.tls is not None:
        fields.update(source.tls.client_options(source.host))
    return " ".join(f"{key}={_conninfo_value(value)}" for key, value in fields.items())


def _conninfo_value(value: str) -> str:
    if value and re.fullmatch(r"[A-Za-z0-9_./:@-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ordinal_key(name: str) -> tuple[str, int]:
    # orders-10 after orders-9: sort by the ordinal, not by the text.
    stem, _, number = name.rpartition("-")
    return (stem, int(number)) if number.isdigit() else (name, -1)


def synchronous_standby_names(
    count: int, mode: str, replicas: Iterable[str], connected: Iterable[str] = ()
) -> str:
    """The quorum `ANY n ("r1", "r2")` over replica application names, or '' for none.

    required: every known replica is listed and n stays n, so commits wait when fewer than n
    replicas confirm (the guarantee the user asked for).
    preferred: only the replicas streaming now are listed and n shrinks to how many there are,
    so commits never wait for a replica that is not there; with none connected it is ''.
    """
    known = sorted(set(replicas), key=_ordinal_key)
    if mode == "required":
        names, quorum = known, count
    elif mode == "preferred":
        streaming = set(connected)
        names = [name for name in known if name in streaming]
        quorum = min(count, len(names))
    else:
        raise ValueError(f"unknown synchronous mode {mode!r} (expected required or preferred)")
    if quorum <= 0 or not names:
        return ""
    listed = ", ".join('"' + name.replace('"', '""') + '"' for name in names)
    return f"ANY {quorum} ({listed})"


# ------------------------------------------------------------------------------ postgresql.conf

def postgresql_settings(
    *,
    cluster_name: str,
    parameters: Mapping[str, str],
    synchronous_standby_names: str = "",
    wal_archiving: bool = False,
    restore_from_archive: bool = False,
    replica_restore_command: str | None = None,
    replication_source: ReplicationSource | None = None,
    tls: TlsFiles | None = None,
) -> dict[str, str]:
    """Every setting an instance runs with: defaults < user parameters < operator-owned settings.

    Owned settings win even if a parameter slipped past validation, so a user cannot unplug an
    instance from its cluster. A replica is one with a `replication_source`; the agent adds
    standby.signal next to it.

    `replica_restore_command`: a streaming replica's restore_command (its cluster's own archive),
    so a replica that fell behind what the primary keeps catches up from S3 and then streams
    again. Unlike a restore it keeps the short wal_retrieve_retry_interval: on a standby a retry
    that asks the archive is answered by the prefetcher (or the shell's `mv`), and that interval is
    most of the write gap of a switchover. recovery_target_timeline is left at PostgreSQL's default,
    `latest` (since 12): setting it, a postmaster setting, would restart every running instance.
    """
    settings = {"cluster_name": cluster_name}
    settings.update(effective_parameters(parameters))
    for key in [key for key in settings if is_owned(key)]:
        del settings[key]
    settings.update({
        "listen_addresses": "*",
        "port": str(POSTGRES_PORT),
        "unix_socket_directories": SOCKET_DIRECTORY,
        "wal_level": "logical",
        "hot_standby": "on",
        "wal_log_hints": "on",  # pg_rewind of a former primary needs it
        "full_page_writes": "on",
        "max_wal_senders": str(MAX_WAL_SENDERS),
        "max_replication_slots": str(MAX_REPLICATION_SLOTS),
        "archive_mode": "on",
        "archive_command": WAL_PUSH_COMMAND if wal_archiving else NO_ARCHIVE_COMMAND,
        "synchronous_standby_names": synchronous_standby_names,
    })
    if tls is not None:
        # Re-read on reload: a renewed certificate needs no restart.
        settings.update({"ssl": "on", "ssl_cert_file": tls.server_cert, "ssl_key_file": tls.server_key,
                         "ssl_ca_file": tls.ca, "ssl_min_protocol_version": "TLSv1.2"})
    if restore_from_archive:
        settings["restore_command"] = WAL_FETCH_COMMAND
        if "wal_retrieve_retry_interval" not in {key.lower() for key in parameters}:
            settings["wal_retrieve_retry_interval"] = ARCHIVE_RETRY_INTERVAL
    elif replica_restore_command:
        settings["restore_command"] = replica_restore_command
    if replication_source is not None:
        settings["primary_conninfo"] = primary_conninfo(replication_source)
        settings["primary_slot_name"] = replication_source.slot_name
    return settings


def _quote_setting(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def render_postgresql_conf(settings: Mapping[str, str]) -> str:
    lines = ["# Written by the pgop agent; edit spec.parameters of the PgCluster instead."]
    lines += [f"{key} = {_quote_setting(str(settings[key]))}" for key in sorted(settings)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- pg_hba.conf

def hba_rules(superuser: str = SUPERUSER, replication_user: str = REPLICATION_USER, *, tls: bool = False,
              superuser_over_network: bool = False) -> list[str]:
    """Client authentication, first match wins.

    Only the OS user `postgres` gets in without a password (`kubectl exec ... psql`); every network
    login uses scram; the replication protocol is open to the replication role alone, as no later
    line matches `replication` for anyone else.

    With `tls` (every pod of a cluster): nothing in plaintext over the network; the replication
    role logs in with its certificate only (replication, and the plain connections of pg_rewind
    and backups); the superuser not over the network at all unless `superuser_over_network`.
    """
    if not tls:
        return [
            f"local   all           {superuser:<18}          peer",
            "local   all           all                         scram-sha-256",
            f"host    replication   {replication_user:<18} all      scram-sha-256",
            "host    all           all                all      scram-sha-256",
        ]
    rules = [
        f"local     all           {superuser:<18}          peer",
        "local     all           all                         scram-sha-256",
        "hostnossl replication   all                all      reject",
        "hostnossl all           all                all      reject",
        f"hostssl   replication   {replication_user:<18} all      cert",
        f"hostssl   all           {replication_user:<18} all      cert",
    ]
    if not superuser_over_network:
        rules.append(f"hostssl   all           {superuser:<18} all      reject")
    rules.append("hostssl   all           all                all      scram-sha-256")
    return rules


def render_pg_hba(rules: Iterable[str]) -> str:
    header = "# Written by the pgop agent.\n# TYPE  DATABASE      USER               ADDRESS  METHOD\n"
    return header + "\n".join(rules) + "\n"


# ------------------------------------------------------------------------ what a change costs

@dataclass(frozen=True)
class SettingsChange:
    changed: frozenset[str]
    needs_restart_for: frozenset[str]

    @property
    def needs_restart(self) -> bool:
        return bool(self.needs_restart_for)

    @property
    def reload_only(self) -> bool:
        return bool(self.changed) and not self.needs_restart_for


def classify_change(
    old: Mapping[str, str], new: Mapping[str, str], postgres_version: int = 15
) -> SettingsChange:
    """Which settings differ, and which of them only a restart applies (the rest: a reload)."""
    before = {key.lower(): str(value) for key, value in old.items()}
    after = {key.lower(): str(value) for key, value in new.items()}
    changed = frozenset(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
    postmaster = POSTMASTER_PARAMETERS | (_POSTMASTER_BEFORE_14 if postgres_version < 14 else frozenset())
    return SettingsChange(changed=changed, needs_restart_for=changed & postmaster)


def lowers_standby_minimums(old: Mapping[str, str], new: Mapping[str, str]) -> bool:
    """True when a change lowers a setting a standby needs at least as much of as its primary."""
    before = {key.lower(): value for key, value in old.items()}
    after = {key.lower(): value for key, value in new.items()}
    for key, default in HOT_STANDBY_MINIMUMS.items():
        try:
            if int(after.get(key, default)) < int(before.get(key, default)):
                return True
        except ValueError:
            continue  # not a plain integer: Postgres will say so; no ordering to decide
    return False
