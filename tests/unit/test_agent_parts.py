"""The agent's pure parts: settings from the environment, config files, slots and quorum,
status, credentials, the in-memory store, stale pid files, zombie reaping and the loop's effects."""
from __future__ import annotations

import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pgop.agent import bootstrap, config, config_change, credentials, ha, kube, replication, status, streaming
from pgop.agent.commands import Children
from pgop.agent.loop import Agent
from pgop.agent.observed import PostgresState
from pgop.agent.postmaster import reap_orphans, remove_stale_pid_file
from pgop.agent.settings import AgentSettings, SettingsError
from pgop.kernel import pgconfig
from pgop.kernel.model import Instance, InstanceSpec

POD_ENV = {
    "PGOP_CLUSTER": "orders", "PGOP_INSTANCE": "orders-1", "PGOP_NAMESPACE": "shop",
    "PGOP_POD_NAME": "orders-1", "PGOP_POD_IP": "10.0.0.7", "PGOP_NODE_NAME": "node-a",
    "PGDATA": "/var/lib/postgresql/data/pgdata", "PGOP_AGENT_PORT": "8008",
    "PGOP_SECRETS_DIR": "/etc/pgop/secrets", "PATH": "/nonexistent",
}


def settings(**changes) -> AgentSettings:
    return AgentSettings.from_env({**POD_ENV, **{k: str(v) for k, v in changes.items()}})


def instance(name: str, role: str = "replica", deleting: bool = False, sync_state=None) -> Instance:
    meta = {"name": name, "generation": 1}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return Instance.from_object({"metadata": meta, "spec": {"cluster": "orders", "role": role},
                                 "status": {"syncState": sync_state} if sync_state else {}})


# ---------------------------------------------------------------------------------- settings

def test_settings_from_the_pod_environment_have_the_pod_defaults():
    s = settings()
    assert (s.cluster, s.instance, s.namespace, s.pod_ip, s.node_name) == ("orders", "orders-1", "shop", "10.0.0.7", "node-a")
    assert s.pg_port == 5432 and s.agent_port == 8008 and s.interval == 2.0 and s.isolation_timeout == 10.0
    assert s.socket_dir == Path(pgconfig.SOCKET_DIRECTORY)
    assert s.local_host == pgconfig.SOCKET_DIRECTORY  # peer authentication over the socket
    assert s.rw_host == "orders-rw.shop.svc"
    # a replica streams from the pod IP of the instance it follows; -rw only for a spec without one
    spec = InstanceSpec.from_dict({"cluster": "orders", "ordinal": 1, "role": "replica", "primary": "orders-2",
                                   "primaryHost": "10.244.0.12"})
    assert s.source_host(spec) == "10.244.0.12"
    assert s.source_host(InstanceSpec.from_dict({"cluster": "orders", "primary": "orders-2"})) == "orders-rw.shop.svc"
    assert s.passfile == Path(pgconfig.SOCKET_DIRECTORY) / "pgpass"
    assert s.bootstrap_marker == Path("/var/lib/postgresql/data/.pgdata.pgop-bootstrap")
    assert s.bindir == "/usr/lib/postgresql/15/bin" and s.run_as is None


def test_settings_overrides_for_a_machine_running_several_instances():
    s = settings(PGOP_PG_PORT=6000, PGOP_CONNECT_HOST="127.0.0.1", PGOP_PRIMARY_HOST="10.1.1.1",
                 PGOP_PRIMARY_PORT=6001, PGOP_HEARTBEAT_INTERVAL="0.5", PGOP_RUN_DIR="/run/x",
                 PGOP_ISOLATION_TIMEOUT="4.5")
    assert (s.pg_port, s.local_host, s.rw_host, s.primary_port, s.interval, s.isolation_timeout) == (
        6000, "127.0.0.1", "10.1.1.1", 6001, 0.5, 4.5)
    assert s.source_host(InstanceSpec.from_dict({"primaryHost": "10.244.0.12"})) == "10.1.1.1"
    assert s.passfile == Path("/run/x/pgpass")


def test_settings_missing_variables_are_named():
    with pytest.raises(SettingsError, match="PGOP_CLUSTER, PGDATA"):
        AgentSettings.from_env({"PGOP_INSTANCE": "a", "PGOP_NAMESPACE": "b"})
    with pytest.raises(SettingsError, match="PGOP_PG_PORT"):
        settings(PGOP_PG_PORT="many")


def test_root_without_a_user_to_switch_to_is_refused():
    with pytest.raises(SettingsError, match="PGOP_RUN_AS"):
        settings().check_user(euid=0)
    settings().check_user(euid=999)
    settings(PGOP_RUN_AS="postgres").check_user(euid=0)


# ------------------------------------------------------------------------------------ config

def test_rendered_postgresql_conf_parses_back_exactly():
    values = {"a": "plain", "b": "it's", "c": "back\\slash", "d": 'ANY 1 ("orders-1", "orders-2")', "e": ""}
    assert config_change.parse_postgresql_conf(pgconfig.render_postgresql_conf(values)) == values


def test_a_file_the_agent_did_not_write_is_unknown():
    assert config_change.parse_postgresql_conf("# initdb's file\nmax_connections = 100\n") is None


def test_desired_settings_of_a_replica_stream_from_the_rw_service_into_its_slot():
    spec = InstanceSpec(cluster="orders", ordinal=1, role="replica", bootstrap="basebackup",
                        parameters={"work_mem": "8MB", "port": "1"})
    replica = config.desired_settings(settings(), spec, replica=True, synchronous_standby_names="ANY 1 (x)")
    assert replica["primary_slot_name"] == "pgop_orders_1"
    assert "host=orders-rw.shop.svc" in replica["primary_conninfo"]
    assert "application_name=orders-1" in replica["primary_conninfo"]
    assert "passfile=/var/run/postgresql/pgpass" in replica["primary_conninfo"]
    assert "password" not in replica["primary_conninfo"].replace("passfile", "")
    assert replica["synchronous_standby_names"] == ""  # a replica confirms, it does not wait
    assert replica["work_mem"] == "8MB" and replica["port"] == "5432"  # owned settings win
    primary = config.desired_settings(settings(), spec, replica=False, synchronous_standby_names="ANY 1 (x)")
    assert "primary_conninfo" not in primary and primary["synchronous_standby_names"] == "ANY 1 (x)"


def _archiving_spec(role: str = "replica", archiving: bool = True) -> InstanceSpec:
    from pgop.kernel.model import S3Spec
    return InstanceSpec(cluster="orders", ordinal=1, role=role, bootstrap="basebackup",
                        s3=S3Spec(bucket="b", credentials_secret="s3"), wal_archiving=archiving)


ARCHIVE_ENV = {"PGOP_S3_BUCKET": "b", "PGOP_CLUSTER": "orders", "PGOP_S3_ENDPOINT": "http://s3:9000"}


def test_a_streaming_replica_of_an_archiving_cluster_also_reads_the_archive():
    from pgop.backup import prefetch
    replica = config.desired_settings(settings(), _archiving_spec(), replica=True, env=ARCHIVE_ENV)
    command = replica["restore_command"]
    # Its own archive through the prefetching wal-fetch, a prefetched file taken by the shell.
    assert command.endswith("pgop agent wal-fetch %f %p")
    assert command.startswith(f"{{ mv -f pg_wal/{prefetch.SPOOL_PREFIX}{prefetch.archive_identity(ARCHIVE_ENV)}/%f %p ")
    assert command == prefetch.shell_fast_path(ARCHIVE_ENV) + "pgop agent wal-fetch %f %p"
    assert "PGOP_S3_CLUSTER" not in command  # the pod's own cluster, as wal-push archives it
    assert replica["primary_conninfo"]  # and still streams
    # The retry stays short: it is most of a switchover's write gap; the timeline is PostgreSQL's
    # default (latest), not written: a postmaster setting would restart every running instance.
    assert replica["wal_retrieve_retry_interval"] == "500ms"
    assert "recovery_target_timeline" not in replica
    # Adding it is a reload, not a restart.
    before = config.desired_settings(settings(), _archiving_spec(archiving=False), replica=True, env=ARCHIVE_ENV)
    assert "restore_command" not in before
    assert not pgconfig.classify_change(before, replica).needs_restart


def test_no_archive_reading_for_a_primary_a_replica_without_archive_or_one_a_failover_holds():
    primary = config.desired_settings(settings(), _archiving_spec("primary"), replica=False, env=ARCHIVE_ENV)
    assert "restore_command" not in primary
    no_s3 = InstanceSpec(cluster="orders", ordinal=1, role="replica", bootstrap="basebackup")
    assert "restore_command" not in config.desired_settings(settings(), no_s3, replica=True, env=ARCHIVE_ENV)
    off = config.desired_settings(settings(), _archiving_spec(archiving=False), replica=True, env=ARCHIVE_ENV)
    assert "restore_command" not in off
    # spec.primary "" (a failover decides): it must not replay on from the archive past what the
    # candidates reported.
    held = config.desired_settings(settings(), _archiving_spec(), replica=True, streaming=False, env=ARCHIVE_ENV)
    assert "restore_command" not in held and held["primary_conninfo"] == ""


def test_a_replica_replaying_from_the_archive_is_not_taken_for_diverged():
    catching_up = PostgresState(accepting=True, role="replica", timeline=1, lsn="0/5000000")
    assert ha.replaying(catching_up, "0/4000000")
    assert not ha.replaying(catching_up, "0/5000000")
    assert not ha.replaying(catching_up, None)  # nothing to compare with yet
    assert not ha.replaying(PostgresState(accepting=True, role="primary", lsn="0/6000000"), "0/5000000")


def test_desired_settings_listen_where_the_machine_says():
    s = settings(PGOP_PG_PORT=6000, PGOP_SOCKET_DIR="/tmp/s", PGOP_LISTEN_ADDRESSES="127.0.0.1")
    rendered = config.desired_settings(s, InstanceSpec("orders", 0, "primary", "initdb"), replica=False)
    assert (rendered["port"], rendered["unix_socket_directories"], rendered["listen_addresses"]) == (
        "6000", "/tmp/s", "127.0.0.1")


def test_hba_lets_only_the_postgres_os_user_in_without_a_password():
    lines = [line.split() for line in config.hba_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == ["local", "all", "postgres", "peer"]
    assert all(line[-1] == "scram-sha-256" for line in lines[1:])
    assert ["host", "replication", "streaming_replica", "all", "scram-sha-256"] in lines


def test_change_cost():
    hba = config.hba_text()
    same = config_change.WrittenConfig({"work_mem": "4MB"}, hba)
    assert config_change.change_cost(same, {"work_mem": "4MB"}, hba, 15) is None
    reload = config_change.change_cost(same, {"work_mem": "8MB"}, hba, 15)
    assert reload.reload_only and reload.changed == {"work_mem"}
    restart = config_change.change_cost(same, {"work_mem": "4MB", "max_connections": "200"}, hba, 15)
    assert restart.needs_restart_for == {"max_connections"}
    assert config_change.change_cost(config_change.WrittenConfig({"work_mem": "4MB"}, "old"), {"work_mem": "4MB"}, hba, 15).reload_only
    assert config_change.change_cost(config_change.WrittenConfig(None, None), {"work_mem": "4MB"}, hba, 15).needs_restart


def test_config_files_are_written_private(tmp_path):
    files = config.ConfigFiles(tmp_path)
    config.write(files, {"work_mem": "4MB"}, config.hba_text())
    config.write_standby_signal(files)
    assert config.read_written(files) == config_change.WrittenConfig({"work_mem": "4MB"}, config.hba_text())
    for path in (files.postgresql_conf, files.pg_hba, files.standby_signal):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -------------------------------------------------------------------------------- replication

def test_wanted_slots_cover_every_other_live_instance():
    members = [instance("orders-0", "primary"), instance("orders-1"), instance("orders-2", deleting=True)]
    assert streaming.wanted_slots("orders-0", members) == {"pgop_orders_1"}


def test_slot_changes_never_touch_foreign_slots():
    existing = [streaming.Slot("pgop_orders_1", True), streaming.Slot("pgop_gone", False),
                streaming.Slot("backup_tool", False)]
    assert streaming.slot_changes(frozenset({"pgop_orders_1", "pgop_orders_3"}), existing) == (
        ["pgop_orders_3"], ["pgop_gone"])


def test_synchronous_names_preferred_lists_streaming_replicas():
    members = [instance("orders-0", "primary"), instance("orders-1"), instance("orders-2"), instance("orders-10")]
    standbys = [streaming.Standby("orders-10", "streaming", "async"), streaming.Standby("orders-1", "streaming", "async"),
                streaming.Standby("orders-2", "catchup", "async")]
    assert streaming.synchronous_names(1, "preferred", "orders-0", members, standbys) == 'ANY 1 ("orders-1", "orders-10")'
    assert streaming.synchronous_names(1, "required", "orders-0", members, []) == \
        'ANY 1 ("orders-1", "orders-2", "orders-10")'
    assert streaming.synchronous_names(0, "preferred", "orders-0", members, standbys) == ""
    assert streaming.synchronous_names(2, "preferred", "orders-0", members, []) == ""


# ------------------------------------------------------------------------------------- status

def test_status_of_a_ready_replica():
    now = datetime(2026, 11, 22, 5, 0, 0, tzinfo=UTC)
    state = PostgresState(accepting=True, role="replica", timeline=2, lsn="0/3000060", received_lsn="0/3000100",
                          system_identifier="7", pending_restart=frozenset())
    decision = ha.Decision((), ha.RUNNING)
    previous = [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-22T04:00:00Z"},
                {"type": "Scheduled", "status": "True"}]
    out = status.build_status(settings(), now=now, state=state, decision=decision, ready=True, generation=3,
                              applied_generation=3, previous_conditions=previous)
    assert out["lastHeartbeat"] == "2026-11-22T05:00:00Z"
    assert (out["role"], out["timeline"], out["lsn"], out["receivedLSN"], out["ready"], out["phase"]) == (
        "replica", 2, "0/3000060", "0/3000100", True, "Running")
    assert (out["pod"], out["podIP"], out["node"], out["observedGeneration"]) == ("orders-1", "10.0.0.7", "node-a", 3)
    assert out["message"] is None and out["pendingRestart"] is False and out["fenced"] is False
    conditions = {c["type"]: c for c in out["conditions"]}
    assert conditions["Scheduled"] == {"type": "Scheduled", "status": "True"}  # another writer's, kept
    assert conditions["Ready"]["lastTransitionTime"] == "2026-11-22T04:00:00Z"  # unchanged status
    assert conditions["ConfigurationApplied"]["status"] == "True"


def test_status_when_postgres_is_down():
    now = datetime(2026, 11, 22, 5, 0, 0, tzinfo=UTC)
    decision = ha.Decision((ha.Action(ha.START, "postgres is not running"),), ha.STARTING)
    out = status.build_status(settings(), now=now, state=None, decision=decision, ready=False, generation=3,
                              applied_generation=2, message="boom")
    assert out["ready"] is False and out["role"] is None and out["lsn"] is None and out["message"] == "boom"
    assert out["observedGeneration"] == 2
    conditions = {c["type"]: c for c in out["conditions"]}
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "Starting"
    assert "start: postgres is not running" in conditions["ConfigurationApplied"]["message"]


def test_replica_sync_states_of_the_members_a_primary_sees_and_the_gone_ones_removed():
    standbys = [streaming.Standby("orders-1", "streaming", "quorum"), streaming.Standby("pg_basebackup", "backup", "async")]
    members = [instance("orders-1"), instance("orders-2"), instance("orders-3")]
    assert status.replica_sync_states(standbys, members, {"orders-1": "quorum", "orders-2": "quorum"}) == {
        "orders-1": "quorum", "orders-2": None}
    assert status.replica_sync_states([], members, None) == {}


def test_each_replicas_sync_state_is_read_from_its_primarys_status():
    from pgop.kernel.model import with_sync_states_from_primary
    def inst(name, role, **st):
        return Instance.from_object({"metadata": {"name": name, "namespace": "shop"},
                                     "spec": {"cluster": "orders", "role": role},
                                     "status": {"role": role, **st}})
    primary = inst("orders-0", "primary", replicaSyncStates={"orders-1": "quorum"})
    view = {i.name: i.status.sync_state
            for i in with_sync_states_from_primary([primary, inst("orders-1", "replica"),
                                                    inst("orders-2", "replica", syncState="quorum")])}
    assert view == {"orders-0": None, "orders-1": "quorum", "orders-2": None}  # orders-2's own claim is not read
    legacy = [inst("orders-0", "primary"), inst("orders-1", "replica", syncState="async")]
    assert with_sync_states_from_primary(legacy)[1].status.sync_state == "async"  # an older primary's agent


def test_status_keeps_the_transition_time_until_the_status_flips():
    before = datetime(2026, 11, 22, 4, 0, 0, tzinfo=UTC)
    now = datetime(2026, 11, 22, 5, 0, 0, tzinfo=UTC)
    starting = ha.Decision((ha.Action(ha.START, "postgres is not running"),), ha.STARTING)
    first = status.build_status(settings(), now=before, state=None, decision=starting, ready=False, generation=3,
                                applied_generation=None)["conditions"]
    again = status.build_status(settings(), now=now, state=None, decision=starting, ready=False, generation=4,
                                applied_generation=None, previous_conditions=first)["conditions"]
    state = PostgresState(accepting=True, role="primary")
    flipped = status.build_status(settings(), now=now, state=state, decision=ha.Decision((), ha.RUNNING), ready=True,
                                  generation=4, applied_generation=4, previous_conditions=first)["conditions"]
    times = [{c["type"]: (c["status"], c["lastTransitionTime"], c["observedGeneration"]) for c in conditions}
             for conditions in (first, again, flipped)]
    assert times[0] == {"Ready": ("False", "2026-11-22T04:00:00Z", 3),
                        "ConfigurationApplied": ("False", "2026-11-22T04:00:00Z", 3)}
    assert times[1] == {"Ready": ("False", "2026-11-22T04:00:00Z", 4),
                        "ConfigurationApplied": ("False", "2026-11-22T04:00:00Z", 4)}
    assert times[2] == {"Ready": ("True", "2026-11-22T05:00:00Z", 4),
                        "ConfigurationApplied": ("True", "2026-11-22T05:00:00Z", 4)}


def test_pure_parts_are_still_reachable_under_their_old_names():
    from pgop.agent import state
    assert (config.WrittenConfig, config.change_cost, config.parse_postgresql_conf) == (
        config_change.WrittenConfig, config_change.change_cost, config_change.parse_postgresql_conf)
    assert (replication.Slot, replication.Standby, replication.slot_changes, replication.synchronous_names) == (
        streaming.Slot, streaming.Standby, streaming.slot_changes, streaming.synchronous_names)
    assert (state.PostgresState, state.Archiver) == (PostgresState, status.Archiver)


# ------------------------------------------------------------------------------------ effects

def test_every_action_kind_has_an_effect():
    agent = Agent(settings(), kube.MemoryInstanceStore())
    assert set(agent.effects) == set(ha.KINDS)


def test_an_unknown_action_kind_fails_before_any_action_runs():
    agent = Agent(settings(), kube.MemoryInstanceStore())
    ran: list[str] = []
    agent.effects = {kind: lambda action, decision, wanted: ran.append(action.kind) or True for kind in ha.KINDS}
    decision = ha.Decision((ha.Action(ha.STOP, "why"), ha.Action("fly", "why")), ha.RUNNING)
    with pytest.raises(LookupError, match="'fly'"):
        agent.act(decision, None)
    assert ran == []


def test_an_effect_that_fails_ends_the_turns_actions():
    agent = Agent(settings(), kube.MemoryInstanceStore())
    ran: list[str] = []
    agent.effects = {kind: lambda action, decision, wanted: ran.append(action.kind) or action.kind != ha.START
                     for kind in ha.KINDS}
    decision = ha.Decision(tuple(ha.Action(kind, "why") for kind in (ha.WRITE_CONFIG, ha.START, ha.PROMOTE)),
                           ha.STARTING)
    agent.act(decision, None)
    assert ran == [ha.WRITE_CONFIG, ha.START]


# -------------------------------------------------------------------------------- credentials

def test_credentials_from_files_and_passfile(tmp_path):
    (tmp_path / "replication").mkdir()
    (tmp_path / "replication" / "username").write_text("streaming_replica\n")
    (tmp_path / "replication" / "password").write_text("se:cr\\et\n")
    found = credentials.read_credentials(tmp_path, "replication")
    assert (found.username, found.password) == ("streaming_replica", "se:cr\\et")
    assert "se:cr" not in repr(found)
    assert credentials.pgpass_text([found]) == "*:*:*:streaming_replica:se\\:cr\\\\et\n"
    credentials.write_private(tmp_path / "run" / "pgpass", "x")
    assert stat.S_IMODE((tmp_path / "run" / "pgpass").stat().st_mode) == 0o600
    with pytest.raises(credentials.CredentialsError, match="app credentials"):
        credentials.read_credentials(tmp_path, "app")


# -------------------------------------------------------------------------------------- store

def test_memory_store_has_the_api_servers_semantics():
    store = kube.MemoryInstanceStore()
    store.put("orders-0", {"cluster": "orders", "role": "primary"})
    store.put("other-0", {"cluster": "other", "role": "primary"})
    assert store.get_instance("orders-0")["metadata"]["generation"] == 1
    assert store.update_spec("orders-0", parameters={"work_mem": "8MB"}) == 2
    assert store.update_spec("orders-0", parameters={"work_mem": "8MB"}) == 2  # no change, no new generation
    assert [b["metadata"]["name"] for b in store.list_instances("orders")] == ["orders-0"]
    store.patch_status("orders-0", {"ready": True, "message": "x", "conditions": [{"type": "A"}]})
    store.patch_status("orders-0", {"message": None, "conditions": [{"type": "B"}]})
    assert store.status("orders-0") == {"ready": True, "conditions": [{"type": "B"}]}
    with pytest.raises(LookupError):
        store.patch_status("gone", {})
    store.fail = True
    with pytest.raises(ConnectionError):
        store.get_instance("orders-0")


def test_kube_store_sends_merge_patches():
    from kubernetes import client
    store = kube.KubeInstanceStore("shop", configuration=client.Configuration())
    assert store.api_client.default_headers["Content-Type"] == "application/merge-patch+json"


# --------------------------------------------------------------------------------- processes

def test_stale_postmaster_pid_file_is_removed(tmp_path):
    (tmp_path / "postmaster.pid").write_text(f"{os.getpid()}\n{tmp_path}\n")  # a pid that is not a postmaster
    assert remove_stale_pid_file(tmp_path)
    assert not (tmp_path / "postmaster.pid").exists()
    assert not remove_stale_pid_file(tmp_path)


def test_orphans_are_reaped_but_registered_children_are_not():
    children = Children()
    orphan = os.fork()
    if orphan == 0:
        os._exit(0)
    ours = os.fork()
    if ours == 0:
        os._exit(3)
    children.pids.add(ours)
    deadline = time.monotonic() + 5
    reaped: list[int] = []
    while orphan not in reaped and time.monotonic() < deadline:
        reaped += reap_orphans(children)
        time.sleep(0.02)
    assert orphan in reaped and ours not in reaped
    assert os.waitpid(ours, 0)[1] >> 8 == 3  # its exit status is still there for its owner


def test_bootstrap_modes_and_recovery_refusal(tmp_path):
    assert [m.value for m in bootstrap.BootstrapMode] == ["initdb", "basebackup", "recovery"]
    s = AgentSettings(cluster="orders", instance="orders-0", namespace="shop", pgdata=tmp_path / "pgdata",
                      secrets_dir=tmp_path)
    with pytest.raises(bootstrap.BootstrapError, match="needs spec.recovery.source"):
        bootstrap.bootstrap(s, "recovery")
    with pytest.raises(ValueError):
        bootstrap.bootstrap(s, "snapshot")


def test_an_init_container_bootstraps_only_while_its_pod_permits_that_mode():
    mode = bootstrap.BootstrapMode.BASEBACKUP
    assert bootstrap.refusal(mode, None) is None  # a bootstrap pod: the operator made it for an unmarked volume
    assert bootstrap.refusal(mode, "basebackup") is None
    assert "its data is lost" in bootstrap.refusal(mode, "")
    assert "says 'initdb', not 'basebackup'" in bootstrap.refusal(mode, "initdb")


def test_a_volume_marked_initialised_whose_data_is_gone_is_not_filled_again(tmp_path):
    """A restarted init container (a new sandbox after a node reboot) on a wiped volume: the
    operator removed the pod's annotation when it marked the volume, so the kubelet passes ""."""
    s = AgentSettings(cluster="orders", instance="orders-0", namespace="shop", pgdata=tmp_path / "pgdata",
                      secrets_dir=tmp_path)
    with pytest.raises(bootstrap.BootstrapError, match="marked initialised .* its data is lost"):
        bootstrap.bootstrap(s, "initdb", permit="")
    assert not (tmp_path / "pgdata").exists()  # nothing made, nothing emptied
    # A volume it did fill: the marker says so, and a restart changes nothing, permitted or not.
    (tmp_path / "pgdata").mkdir()
    (tmp_path / "pgdata" / "PG_VERSION").write_text("16\n")
    s.bootstrap_marker.write_text("{}")
    assert bootstrap.bootstrap(s, "initdb", permit="").already_done


# ------------------------------------------------------------------ the volume the pod was given

POSTGRES = (999, 999, frozenset({999}))


@pytest.mark.parametrize("mode, owner", [
    (0o2775, (0, 999)),   # fsGroup applied: the postgres group may write
    (0o700, (999, 999)),  # handed to the postgres user
    (0o777, (0, 0)),      # a provisioner that makes world-writable directories
])
def test_a_volume_the_postgres_user_can_write_is_fine(mode, owner):
    assert bootstrap.unwritable_volume(stat.S_IFDIR | mode, owner, POSTGRES) is None


def test_a_root_owned_volume_without_fsgroup_is_named_with_what_to_do():
    problem = bootstrap.unwritable_volume(stat.S_IFDIR | 0o755, (0, 0), POSTGRES)
    assert problem and "owned by 0:0 with mode 0755" in problem and "uid 999" in problem
    assert "fsGroup" in problem and "storage class" in problem
    # the owner's bits do not count for another user, nor the group's for a stranger
    assert bootstrap.unwritable_volume(stat.S_IFDIR | 0o770, (0, 0), POSTGRES)
    assert bootstrap.unwritable_volume(stat.S_IFDIR | 0o705, (0, 999), POSTGRES)


# ------------------------------------------------------------------ a replica waits for its primary

class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class _PgIsReady:
    """pg_isready's answers: 0 (accepting) from `up_at` on, 2 (no answer) before."""

    def __init__(self, clock: _Clock, up_at: float) -> None:
        self.clock, self.up_at, self.asked = clock, up_at, []

    def run(self, argv, check=True, timeout=None, **_):
        import subprocess
        assert argv[0].endswith("/pg_isready") and not check
        self.asked.append((argv[argv.index("-h") + 1], self.clock.now))
        return subprocess.CompletedProcess(argv, 0 if self.clock.now >= self.up_at else 2, "", "")


def _replica_spec(host: str = "") -> InstanceSpec:
    return InstanceSpec.from_dict({"cluster": "orders", "ordinal": 1, "role": "replica", "primary": "orders-0",
                                   "primaryHost": host, "bootstrap": "basebackup"})


class _Operator:
    """SpecSource: the operator names the primary's pod at `named_at` (a watch reports it at once)."""

    def __init__(self, clock: _Clock, named_at: float) -> None:
        self.clock, self.named_at, self.reads = clock, named_at, []

    def read(self) -> InstanceSpec:
        self.reads.append(self.clock.now)
        return _replica_spec("10.244.0.10" if self.clock.now >= self.named_at else "")

    def changed(self, within: float) -> bool:
        if self.clock.now < self.named_at <= self.clock.now + within:
            self.clock.now = self.named_at
            return True
        self.clock.sleep(within)
        return False


def test_a_replica_bootstrap_waits_for_the_primary_to_be_named_then_up():
    clock = _Clock()
    runner = _PgIsReady(clock, up_at=9.0)
    operator = _Operator(clock, named_at=7.0)
    spec = bootstrap.wait_for_source(settings(), _replica_spec(), runner, operator, timeout=60,
                                     clock=clock, sleep=clock.sleep)
    assert spec.primary_host == "10.244.0.10"
    assert 9.0 <= clock.now <= 9.25
    # Never -rw while waiting: pg_isready asked only the named pod, from when it was named.
    assert {host for host, _ in runner.asked} == {"10.244.0.10"}
    assert min(at for _, at in runner.asked) == 7.0
    # Read every READ_AGAIN seconds, and at once when the watch says the spec changed.
    assert operator.reads == [bootstrap.READ_AGAIN, 7.0]


def test_a_replica_bootstrap_whose_primary_never_comes_fails_and_says_what_it_waited_for():
    clock = _Clock()
    with pytest.raises(bootstrap.BootstrapError, match=r"waited 30s for the primary orders-0.*spec.primaryHost is empty"):
        bootstrap.wait_for_source(settings(), _replica_spec(), _PgIsReady(clock, up_at=1e9), _Operator(clock, 1e9),
                                  timeout=30, clock=clock, sleep=clock.sleep)
    with pytest.raises(bootstrap.BootstrapError, match=r"10.244.0.10:5432 does not accept connections"):
        bootstrap.wait_for_source(settings(), _replica_spec("10.244.0.10"), _PgIsReady(clock, up_at=1e9), None,
                                  timeout=30, clock=clock, sleep=clock.sleep)


def test_a_replica_bootstrap_that_cannot_read_its_spec_clones_through_rw_at_once():
    """The PgInstance unreadable and no host named: as before spec.primaryHost existed."""
    clock = _Clock()
    runner = _PgIsReady(clock, up_at=1e9)
    spec = _replica_spec()
    assert bootstrap.wait_for_source(settings(), spec, runner, None, clock=clock, sleep=clock.sleep) is spec
    assert clock.now == 0 and runner.asked == []


class _UnreadableStore:
    def get_instance(self, name):
        raise OSError("connection refused")


def test_a_restore_without_its_pginstance_fails_and_a_new_volume_goes_on_with_the_defaults():
    # What to restore is only in the PgInstance's spec; initdb and basebackup need nothing from it.
    with pytest.raises(bootstrap.BootstrapError, match="cannot read PgInstance orders-1, which says what to restore: connection refused"):
        bootstrap._read_spec(_UnreadableStore(), settings(), bootstrap.BootstrapMode.RECOVERY)
    for mode in (bootstrap.BootstrapMode.INITDB, bootstrap.BootstrapMode.BASEBACKUP):
        assert bootstrap._read_spec(_UnreadableStore(), settings(), mode) is None
