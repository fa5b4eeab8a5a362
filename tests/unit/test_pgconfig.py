import re
from pathlib import Path

import pytest
import yaml

from pgop.kernel import pgconfig
from pgop.kernel.pgconfig import (
    ReplicationSource,
    classify_change,
    hba_rules,
    is_owned,
    lowers_standby_minimums,
    postgresql_settings,
    primary_conninfo,
    render_pg_hba,
    render_postgresql_conf,
    slot_name,
    synchronous_standby_names,
)

REPLICAS = ["orders-1", "orders-2"]


# ------------------------------------------------------------------ synchronous_standby_names

def test_required_lists_every_replica_even_when_disconnected():
    assert synchronous_standby_names(1, "required", REPLICAS, connected=[]) == 'ANY 1 ("orders-1", "orders-2")'


def test_required_keeps_the_quorum_so_commits_wait_for_it():
    assert synchronous_standby_names(2, "required", REPLICAS, connected=["orders-1"]) == \
        'ANY 2 ("orders-1", "orders-2")'


def test_preferred_lists_only_streaming_replicas_and_shrinks_the_quorum():
    assert synchronous_standby_names(2, "preferred", REPLICAS, connected=["orders-2"]) == 'ANY 1 ("orders-2")'
    assert synchronous_standby_names(1, "preferred", REPLICAS, connected=REPLICAS) == \
        'ANY 1 ("orders-1", "orders-2")'


def test_preferred_with_no_replica_streaming_never_blocks_commits():
    assert synchronous_standby_names(1, "preferred", REPLICAS, connected=[]) == ""


@pytest.mark.parametrize("mode", ["required", "preferred"])
def test_zero_synchronous_replicas_is_asynchronous(mode):
    assert synchronous_standby_names(0, mode, REPLICAS, connected=REPLICAS) == ""


def test_names_are_quoted_and_in_ordinal_order():
    # Unquoted, '-' is a syntax error in synchronous_standby_names; and orders-10 comes after orders-9.
    names = ["orders-10", "orders-9", "orders-1"]
    assert synchronous_standby_names(1, "required", names) == 'ANY 1 ("orders-1", "orders-9", "orders-10")'


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        synchronous_standby_names(1, "sometimes", REPLICAS)


# ------------------------------------------------------------------------- postgresql.conf

def test_user_parameters_and_defaults_reach_the_config():
    settings = postgresql_settings(cluster_name="orders", parameters={"work_mem": "8MB", "wal_keep_size": "1GB"})
    assert settings["work_mem"] == "8MB"
    assert settings["wal_keep_size"] == "1GB"  # a default the user overrode
    assert settings["hot_standby_feedback"] == "on"  # a default left alone
    assert settings["cluster_name"] == "orders"


def test_owned_settings_win_over_parameters_that_slipped_through():
    settings = postgresql_settings(cluster_name="orders", parameters={
        "port": "6543", "wal_level": "minimal", "ARCHIVE_COMMAND": "rm -rf /", "ssl": "on"})
    assert settings["port"] == "5432"
    assert settings["wal_level"] == "logical"
    assert settings["archive_command"] == pgconfig.NO_ARCHIVE_COMMAND
    assert "ssl" not in settings and "ARCHIVE_COMMAND" not in settings


def test_archiving_is_always_on_so_enabling_backups_needs_no_restart():
    without = postgresql_settings(cluster_name="c", parameters={})
    with_s3 = postgresql_settings(cluster_name="c", parameters={}, wal_archiving=True, restore_from_archive=True)
    assert without["archive_mode"] == with_s3["archive_mode"] == "on"
    assert with_s3["archive_command"] == "pgop agent wal-push %p"
    assert with_s3["restore_command"] == "pgop agent wal-fetch %f %p"
    assert not classify_change(without, with_s3).needs_restart


def test_a_replica_streams_through_its_slot_without_a_password_in_the_config():
    source = ReplicationSource(host="orders-rw.shop.svc", application_name="orders-1",
                               slot_name=slot_name("orders-1"), passfile="/run/pgop/pgpass")
    settings = postgresql_settings(cluster_name="orders", parameters={}, replication_source=source)
    conninfo = settings["primary_conninfo"]
    assert "host=orders-rw.shop.svc" in conninfo
    assert "user=streaming_replica" in conninfo and "application_name=orders-1" in conninfo
    assert "passfile=/run/pgop/pgpass" in conninfo and "password" not in conninfo.replace("passfile", "")
    assert settings["primary_slot_name"] == "pgop_orders_1"
    primary = postgresql_settings(cluster_name="orders", parameters={})
    assert "primary_conninfo" not in primary


def test_conninfo_quotes_values_with_spaces():
    source = ReplicationSource(host="h", application_name="a b", slot_name="s", passfile="/x/it's")
    assert "application_name='a b'" in primary_conninfo(source)
    assert "passfile='/x/it\\'s'" in primary_conninfo(source)


def test_slot_names_use_only_characters_postgres_allows():
    assert slot_name("orders-12") == "pgop_orders_12"
    assert re.fullmatch(r"[a-z0-9_]+", slot_name("My-Cluster.x-3"))


def test_rendered_values_cannot_break_out_of_their_quotes():
    text = render_postgresql_conf({"application_name": "it's", "search_path": "a\\b", "work_mem": "4MB"})
    assert "application_name = 'it''s'" in text
    assert "search_path = 'a\\\\b'" in text
    assert "work_mem = '4MB'" in text
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == sorted(lines)  # stable output: unchanged settings never rewrite the file


# ------------------------------------------------------------------------------ pg_hba.conf

def _hba(rules):
    return [line.split() for line in rules]


def test_only_the_postgres_os_user_logs_in_without_a_password():
    rules = _hba(hba_rules())
    assert rules[0] == ["local", "all", "postgres", "peer"]
    assert all(rule[-1] == "scram-sha-256" for rule in rules[1:])
    assert not any(method in ("trust", "md5", "password") for rule in rules for method in rule)


def test_replication_is_open_to_the_replication_role_only():
    # The keyword `all` in the database column does not match replication connections.
    replication = [rule for rule in _hba(hba_rules()) if rule[1] == "replication"]
    assert replication == [["host", "replication", "streaming_replica", "all", "scram-sha-256"]]


def test_rendered_hba_keeps_rule_order():
    text = render_pg_hba(hba_rules())
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body[0].startswith("local") and body[-1].startswith("host    all")


# --------------------------------------------------------------------------- what a change costs

def test_a_reloadable_setting_needs_no_restart():
    change = classify_change({"work_mem": "4MB"}, {"work_mem": "8MB"})
    assert change.changed == {"work_mem"} and change.reload_only and not change.needs_restart


@pytest.mark.parametrize("name", ["shared_buffers", "max_connections", "wal_level", "max_wal_senders",
                                  "max_replication_slots", "shared_preload_libraries", "max_worker_processes"])
def test_postmaster_settings_need_a_restart(name):
    change = classify_change({}, {name: "1"})
    assert change.needs_restart and change.needs_restart_for == {name}


def test_mixed_change_names_what_needs_the_restart_and_ignores_case():
    change = classify_change({"Work_Mem": "4MB", "shared_buffers": "128MB"},
                             {"work_mem": "8MB", "SHARED_BUFFERS": "256MB", "statement_timeout": "5s"})
    assert change.changed == {"work_mem", "shared_buffers", "statement_timeout"}
    assert change.needs_restart_for == {"shared_buffers"}


def test_no_change_is_neither_reload_nor_restart():
    change = classify_change({"work_mem": "4MB"}, {"WORK_MEM": "4MB"})
    assert not change.changed and not change.reload_only and not change.needs_restart


def test_restore_command_is_reloadable_from_postgres_14_only():
    assert classify_change({}, {"restore_command": "x"}, postgres_version=13).needs_restart
    assert not classify_change({}, {"restore_command": "x"}, postgres_version=15).needs_restart


def test_lowering_a_hot_standby_minimum_is_detected():
    assert lowers_standby_minimums({"max_connections": "200"}, {"max_connections": "150"})
    assert not lowers_standby_minimums({"max_connections": "150"}, {"max_connections": "200"})
    # Removing the override falls back to PostgreSQL's default of 100.
    assert lowers_standby_minimums({"max_connections": "200"}, {})
    assert not lowers_standby_minimums({"work_mem": "8MB"}, {"work_mem": "1MB"})
    assert not lowers_standby_minimums({"max_connections": "lots"}, {"max_connections": "1"})


# ------------------------------------------------------------------------- owned parameters

def test_owned_names_and_prefixes():
    assert is_owned("port") and is_owned("PORT")
    assert is_owned("archive_timeout") and is_owned("recovery_target_time")
    assert not is_owned("work_mem") and not is_owned("recovery_prefetch")


def test_owned_parameters_match_what_the_crd_refuses():
    """The API server (CEL) and the operator must refuse the same settings."""
    crd = yaml.safe_load((Path(__file__).parents[2] / "crds" / "pgclusters.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = schema["properties"]["spec"]["properties"]["parameters"]["x-kubernetes-validations"]
    text = " ".join(rule["rule"] for rule in rules)
    lists = re.findall(r"lowerAscii\(\) in \[([^\]]*)\]", text)
    listed = {name for names in lists for name in re.findall(r"'([a-z_]+)'", names)}
    prefixes = set(re.findall(r"startsWith\('([a-z_]+)'\)", text))
    assert listed == pgconfig.OWNED_PARAMETERS
    assert prefixes == set(pgconfig.OWNED_PREFIXES)


def test_replicas_retry_a_lost_primary_twice_a_second_and_the_archive_once():
    from pgop.kernel.pgconfig import postgresql_settings as build
    plain = build(cluster_name="orders", parameters={})
    assert plain["wal_retrieve_retry_interval"] == "500ms"
    archive = build(cluster_name="orders", parameters={}, restore_from_archive=True)
    assert archive["wal_retrieve_retry_interval"] == "1s"  # each try runs restore_command
    mine = build(cluster_name="orders", parameters={"wal_retrieve_retry_interval": "3s"}, restore_from_archive=True)
    assert mine["wal_retrieve_retry_interval"] == "3s"
