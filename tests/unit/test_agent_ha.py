"""The agent's decision (pgop.agent.ha.decide): what is wanted + what runs -> actions."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pgop.agent import config, ha
from pgop.agent.config_change import WrittenConfig
from pgop.agent.observed import PostgresState
from pgop.agent.streaming import Slot, Standby

SETTINGS = {"port": "5432", "work_mem": "4MB", "shared_buffers": "128MB", "synchronous_standby_names": ""}
HBA = config.hba_text()


def wanted(**changes) -> ha.Wanted:
    base = dict(role="primary", fenced=False, settings=dict(SETTINGS), hba=HBA, slots=frozenset())
    base.update(changes)
    return ha.Wanted(**base)


def running(role="primary", written=None, **state) -> ha.Actual:
    return ha.Actual(
        running=True,
        state=PostgresState(accepting=True, role=role, **state),
        written=written or WrittenConfig(dict(SETTINGS), HBA),
        standby_signal=role == "replica",
    )


def stopped(standby_signal=False, failed_starts=0, written=None) -> ha.Actual:
    return ha.Actual(running=False, written=written or WrittenConfig(dict(SETTINGS), HBA),
                     standby_signal=standby_signal, failed_starts=failed_starts)


def test_converged_primary_does_nothing_and_has_applied_its_spec():
    decision = ha.decide(wanted(), running())
    assert decision.actions == ()
    assert decision.phase == ha.RUNNING and decision.applied


def test_not_running_starts_after_writing_changed_config():
    decision = ha.decide(wanted(settings={**SETTINGS, "work_mem": "8MB"}), stopped())
    assert decision.kinds() == [ha.WRITE_CONFIG, ha.START]
    assert decision.phase == ha.STARTING and not decision.applied


def test_not_running_with_current_config_just_starts():
    assert ha.decide(wanted(), stopped()).kinds() == [ha.START]


def test_fresh_data_directory_config_unknown_is_written_before_start():
    decision = ha.decide(wanted(), stopped(written=WrittenConfig(None, None)))
    assert decision.kinds() == [ha.WRITE_CONFIG, ha.START]


def test_gives_up_after_too_many_failed_starts():
    decision = ha.decide(wanted(), stopped(failed_starts=3), max_start_attempts=3)
    assert decision.kinds() == [ha.GIVE_UP]
    assert decision.phase == ha.FAILED and "3 times" in decision.message


def test_retries_below_the_limit():
    decision = ha.decide(wanted(), stopped(failed_starts=2), max_start_attempts=3)
    assert decision.kinds() == [ha.START]
    assert "attempt 3 of 3" in decision.actions[0].reason


def test_reloadable_change_reloads():
    decision = ha.decide(wanted(settings={**SETTINGS, "work_mem": "8MB"}), running())
    assert decision.kinds() == [ha.WRITE_CONFIG, ha.RELOAD]
    assert "work_mem" in decision.actions[1].reason
    assert decision.phase == ha.RECONFIGURING and not decision.applied


def test_restart_only_change_restarts():
    decision = ha.decide(wanted(settings={**SETTINGS, "shared_buffers": "256MB", "work_mem": "8MB"}), running())
    assert decision.kinds() == [ha.WRITE_CONFIG, ha.RESTART]
    assert "shared_buffers" in decision.actions[1].reason
    assert "work_mem" not in decision.actions[1].reason


def test_hba_only_change_reloads():
    decision = ha.decide(wanted(hba=HBA + "# more\n"), running())
    assert decision.kinds() == [ha.WRITE_CONFIG, ha.RELOAD]


def test_pending_restart_after_a_reload_restarts():
    # A setting no list knows (an extension's postmaster setting): pg_settings tells.
    decision = ha.decide(wanted(), running(pending_restart=frozenset({"pg_stat_statements.max"})))
    assert decision.kinds() == [ha.RESTART]
    assert "pg_stat_statements.max" in decision.actions[0].reason


def test_config_of_a_running_postgres_that_the_agent_did_not_write_needs_a_restart():
    decision = ha.decide(wanted(), running(written=WrittenConfig(None, None)))
    assert decision.kinds() == [ha.WRITE_CONFIG, ha.RESTART]


def test_running_but_not_accepting_waits():
    actual = ha.Actual(running=True, state=PostgresState(accepting=False), written=WrittenConfig(dict(SETTINGS), HBA))
    decision = ha.decide(wanted(), actual)
    assert decision.actions == () and decision.phase == ha.STARTING and not decision.applied


def test_fenced_stops_a_running_postgres_and_stays_stopped():
    first = ha.decide(wanted(fenced=True), running())
    assert first.kinds() == [ha.STOP] and first.phase == ha.FENCED and not first.applied
    then = ha.decide(wanted(fenced=True), stopped())
    assert then.actions == () and then.phase == ha.FENCED and then.applied


def test_replica_wanted_primary_is_promoted():
    decision = ha.decide(wanted(role="primary"), running(role="replica"))
    assert decision.kinds() == [ha.PROMOTE]
    assert decision.phase == ha.PROMOTING and not decision.applied


def test_stopped_replica_wanted_primary_starts_first_then_promotes():
    assert ha.decide(wanted(role="primary"), stopped(standby_signal=True)).kinds() == [ha.START]


def test_primary_wanted_replica_is_the_demotion_seam():
    decision = ha.decide(wanted(role="replica", slots=None), running(role="primary"))
    assert decision.kinds() == [ha.DEMOTE]
    assert decision.phase == ha.FAILED and "not implemented" in decision.message


def test_a_former_primary_is_never_started_as_a_replica_without_rewind():
    decision = ha.decide(wanted(role="replica", slots=None), stopped(standby_signal=False))
    assert decision.kinds() == [ha.DEMOTE]  # no START: it would run as a second primary


def test_slots_created_for_new_instances_and_dropped_for_gone_ones_only_if_managed():
    actual = running(slots=(Slot("pgop_orders_1", True), Slot("pgop_orders_9", False), Slot("barman", False)))
    decision = ha.decide(wanted(slots=frozenset({"pgop_orders_1", "pgop_orders_2"})), actual)
    assert [(a.kind, a.target) for a in decision.actions] == [
        (ha.CREATE_SLOT, "pgop_orders_2"), (ha.DROP_SLOT, "pgop_orders_9")]
    assert decision.applied  # slots do not hold up a rollout


def test_unknown_cluster_leaves_slots_alone():
    actual = running(slots=(Slot("pgop_orders_1", True),))
    assert ha.decide(wanted(slots=None), actual).actions == ()


def test_replicas_do_not_manage_slots():
    actual = running(role="replica", slots=(Slot("pgop_orders_9", False),))
    assert ha.decide(wanted(role="replica", slots=frozenset()), actual).actions == ()


def test_order_of_actions_config_then_role_then_slots():
    decision = ha.decide(wanted(settings={**SETTINGS, "work_mem": "1MB"}, slots=frozenset({"pgop_x"})),
                         running(role="replica"))
    assert decision.kinds() == [ha.WRITE_CONFIG, ha.RELOAD, ha.PROMOTE]


@pytest.mark.parametrize("role_wanted, role_actual, expected", [
    ("primary", "primary", []), ("replica", "replica", []), ("primary", "replica", [ha.PROMOTE]),
    ("replica", "primary", [ha.DEMOTE]), ("primary", None, []),
])
def test_role_actions(role_wanted, role_actual, expected):
    assert [a.kind for a in ha.role_actions(role_wanted, role_actual)] == expected


def test_actions_print_as_a_person_reads_them():
    assert str(ha.Action(ha.CREATE_SLOT, "why", "pgop_a")) == "create-slot pgop_a: why"


def test_standbys_are_part_of_the_state_only():
    # Sync names are computed before deciding (they are in wanted.settings): a new name reloads.
    state = running(standbys=(Standby("orders-1", "streaming", "async"),))
    decision = ha.decide(wanted(settings={**SETTINGS, "synchronous_standby_names": 'ANY 1 ("orders-1")'}), state)
    assert decision.kinds() == [ha.WRITE_CONFIG, ha.RELOAD]


def test_config_change_waits_while_postgres_is_not_accepting():
    actual = ha.Actual(running=True, state=PostgresState(accepting=False), written=WrittenConfig(dict(SETTINGS), HBA))
    decision = ha.decide(wanted(settings={**SETTINGS, "work_mem": "8MB"}), actual)
    assert decision.actions == () and decision.waiting


def test_settings_postgres_refuses_hold_the_spec_unapplied():
    decision = ha.decide(wanted(), running(config_errors=("work_mem: setting could not be applied",)))
    assert decision.actions == () and decision.phase == ha.RUNNING and not decision.applied
    assert "work_mem" in decision.message


def test_the_decision_imports_no_driver_or_client():
    # In a fresh interpreter: what this one has imported already does not count.
    code = ("import sys, pgop.agent.ha; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'psycopg', 'kubernetes', 'kopf', 'boto3', 'hvac', 'consul'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
