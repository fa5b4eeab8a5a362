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


def stopped(standby_signal=False, failed_starts=0, written=None, crashed=False) -> ha.Actual:
    return ha.Actual(running=False, written=written or WrittenConfig(dict(SETTINGS), HBA),
                     standby_signal=standby_signal, failed_starts=failed_starts, crashed=crashed)


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


def test_primary_wanted_replica_stops_at_once_then_rejoins_and_starts_as_replica():
    decision = ha.decide(wanted(role="replica", slots=None), running(role="primary"))
    assert decision.kinds() == [ha.STOP_NOW, ha.REJOIN, ha.START]
    assert decision.phase == ha.DEMOTING and not decision.applied


def test_demotion_in_a_switchover_is_a_fast_shutdown():
    # The replicas still follow this instance: they get all of its WAL before it stops.
    decision = ha.decide(wanted(role="replica", primary="", handover=True), running(role="primary"))
    assert decision.kinds() == [ha.STOP] and "switchover" in decision.actions[0].reason
    assert ha.decide(wanted(role="replica", primary="", handover=False),
                     running(role="primary")).kinds() == [ha.STOP_NOW]


def test_demotion_stops_first_even_with_a_config_change_pending():
    decision = ha.decide(wanted(role="replica", slots=None, settings={**SETTINGS, "work_mem": "1MB"}),
                         running(role="primary"))
    assert decision.kinds()[0] == ha.STOP_NOW


def test_demotion_with_spec_primary_empty_stops_and_waits_for_a_name():
    decision = ha.decide(wanted(role="replica", primary=""), running(role="primary"))
    assert decision.kinds() == [ha.STOP_NOW]
    then = ha.decide(wanted(role="replica", primary=""), stopped(standby_signal=False))
    assert then.actions == () and then.phase == ha.STOPPED and then.waiting


def test_a_crashed_former_primary_reports_its_position_as_a_standby_following_no_one():
    """Its pod was killed (or its agent, while it was being promoted): pg_control does not say
    where its WAL ends, so it recovers as a standby first; it is never started as a primary."""
    decision = ha.decide(wanted(role="replica", primary=""), stopped(standby_signal=False, crashed=True))
    assert decision.kinds() == [ha.STANDBY, ha.START]
    assert decision.kinds().index(ha.STANDBY) < decision.kinds().index(ha.START)
    # Once named, a primary to follow is joined by rewind, as for any former primary.
    assert ha.decide(wanted(role="replica", primary="orders-1", slots=None),
                     stopped(standby_signal=False, crashed=True)).kinds() == [ha.REJOIN, ha.START]


def test_a_former_primary_is_never_started_as_a_replica_without_rewind():
    decision = ha.decide(wanted(role="replica", slots=None), stopped(standby_signal=False))
    assert decision.kinds() == [ha.REJOIN, ha.START]  # never START alone: a second primary
    assert decision.phase == ha.REJOINING


def test_a_replica_that_diverged_rejoins():
    actual = ha.Actual(running=True, state=PostgresState(accepting=True, role="replica"),
                       written=WrittenConfig(dict(SETTINGS), HBA), standby_signal=True, diverged="stuck")
    assert ha.decide(wanted(role="replica", primary="orders-1"), actual).kinds() == [ha.REJOIN, ha.START]
    assert ha.decide(wanted(role="replica", primary=""), actual).kinds() == []


def test_isolated_primary_stops_at_once_and_stays_stopped():
    actual = ha.Actual(running=True, state=PostgresState(accepting=True, role="primary"),
                       written=WrittenConfig(dict(SETTINGS), HBA), isolated="isolated: no API")
    decision = ha.decide(wanted(), actual)
    assert decision.kinds() == [ha.STOP_NOW] and decision.phase == ha.ISOLATED
    then = ha.decide(wanted(), ha.Actual(running=False, written=WrittenConfig(dict(SETTINGS), HBA),
                                         isolated="isolated: no API"))
    assert then.actions == () and then.phase == ha.ISOLATED and "stays stopped" in then.message


def test_fencing_wins_over_isolation():
    actual = ha.Actual(running=True, state=PostgresState(accepting=True, role="primary"), isolated="x")
    assert ha.decide(wanted(fenced=True), actual).kinds() == [ha.STOP]


def test_stop_streaming_is_a_reload():
    # spec.primary "": the rendered settings lose primary_conninfo; a reload ends the receiver.
    written = WrittenConfig({**SETTINGS, "primary_conninfo": "host=orders-rw", "primary_slot_name": "pgop_x"}, HBA)
    decision = ha.decide(wanted(role="replica", primary="",
                                settings={**SETTINGS, "primary_conninfo": "", "primary_slot_name": ""}),
                         running(role="replica", written=written))
    assert decision.kinds() == [ha.WRITE_CONFIG, ha.RELOAD]


# ------------------------------------------------------------------------------ isolation

@pytest.mark.parametrize("now, api_ok, replica_ok, peers, isolated", [
    (100.0, 95.0, 80.0, 2, False),   # the API server answered 5 s ago
    (100.0, 80.0, 95.0, 2, False),   # a replica streamed 5 s ago
    (100.0, 90.0, 90.0, 2, True),    # neither for 10 s: the timeout
    (100.0, 50.0, 60.0, 1, True),
    (100.0, 50.0, 60.0, 0, False),   # nobody to fail over to: never
    (100.0, 90.1, 0.0, 1, False),
])
def test_isolation_with_a_fake_clock(now, api_ok, replica_ok, peers, isolated):
    why = ha.isolation(now, api_ok, replica_ok, 10.0, peers)
    assert (why is not None) == isolated
    if why:
        assert "API server" in why and "streaming replica" in why


def test_isolation_timeout_zero_disables_it():
    assert ha.isolation(1000.0, 0.0, 0.0, 0.0, 3) is None


def test_isolation_over_time_as_the_loop_sees_it():
    clock, api_ok, replica_ok, timeout = 0.0, 0.0, 0.0, 10.0
    seen = []
    for step in range(30):  # one turn a second: the API server goes away at 5 s, replicas at 8 s
        clock = float(step)
        if clock < 5:
            api_ok = clock
        if clock < 8:
            replica_ok = clock
        seen.append(ha.isolation(clock, api_ok, replica_ok, timeout, peers=2) is not None)
    assert seen.index(True) == 17  # 10 s after the last sign of either (a replica, seen at 7 s)
    assert all(seen[17:])


# --------------------------------------------------------------------------------- rejoin

def test_rejoin_rewinds_only_from_a_primary_of_the_same_system():
    assert ha.rejoin_step("7", ha.Source(True, False, "7", 2))[0] == ha.REWIND
    assert ha.rejoin_step(None, ha.Source(True, False, "7", 2))[0] == ha.REWIND
    assert ha.rejoin_step("7", ha.Source(False, error="connection refused"))[0] == ha.WAIT
    assert ha.rejoin_step("7", ha.Source(True, True, "7", 1))[0] == ha.WAIT  # not promoted yet
    step, why = ha.rejoin_step("7", ha.Source(True, False, "8", 1))
    assert step == ha.REFUSE and "another database" in why


def test_diverged_replica():
    from pgop.agent.streaming import ReceiverState
    stuck = PostgresState(accepting=True, role="replica", timeline=1, receiver=None)
    assert ha.diverged(stuck, primary_timeline=2, not_streaming_for=20, patience=15)
    assert not ha.diverged(stuck, primary_timeline=2, not_streaming_for=5, patience=15)
    assert not ha.diverged(stuck, primary_timeline=1, not_streaming_for=20, patience=15)
    assert not ha.diverged(stuck, primary_timeline=None, not_streaming_for=20, patience=15)
    streaming = PostgresState(accepting=True, role="replica", timeline=1,
                              receiver=ReceiverState("streaming", 2, "h"))
    assert not ha.diverged(streaming, primary_timeline=2, not_streaming_for=20, patience=15)
    # A receiver caught in the moment between its start and the primary's refusal says
    # "streaming" on its own old timeline: after 15 s of no progress that is divergence too.
    refused = PostgresState(accepting=True, role="replica", timeline=1,
                            receiver=ReceiverState("streaming", 1, "h"))
    assert ha.diverged(refused, primary_timeline=2, not_streaming_for=20, patience=15)


def test_a_receiver_streams_when_on_the_primarys_timeline_or_making_progress():
    from pgop.agent.streaming import ReceiverState

    def replica(tli, received="0/5000000", status="streaming"):
        return PostgresState(accepting=True, role="replica", timeline=1, received_lsn=received,
                             receiver=ReceiverState(status, tli, "h") if status else None)
    assert ha.receiving(replica(2), primary_timeline=2, previous_received="0/5000000")
    assert ha.receiving(replica(1), primary_timeline=None, previous_received="0/5000000")
    # catching up on the older timeline's WAL: it moves
    assert ha.receiving(replica(1, "0/5000100"), primary_timeline=2, previous_received="0/5000000")
    # a diverged replica's receiver, restarted every retry: "streaming", never moving
    assert not ha.receiving(replica(1), primary_timeline=2, previous_received="0/5000000")
    assert not ha.receiving(replica(2, status=None), primary_timeline=2, previous_received=None)
    assert not ha.receiving(replica(2, status="waiting"), primary_timeline=2, previous_received=None)


# ------------------------------------------------------------------------------ reporting

def test_wal_receiver_and_following():
    from pgop.agent.streaming import ReceiverState
    conninfo = "host=orders-rw"
    streaming = PostgresState(accepting=True, role="replica", primary_conninfo=conninfo,
                              receiver=ReceiverState("streaming", 1, "h"))
    assert ha.wal_receiver(streaming) == "streaming"
    assert ha.wal_receiver(PostgresState(accepting=True, role="replica")) == "stopped"
    assert ha.wal_receiver(PostgresState(accepting=True, role="primary")) is None
    # Asked to stop: not applied while the old conninfo is in effect, or while a receiver is left.
    assert ha.following("", streaming, "", previous="orders-0") == "orders-0"
    still = PostgresState(accepting=True, role="replica", primary_conninfo="",
                          receiver=ReceiverState("stopping", 1, "h"))
    assert ha.following("", still, "", previous="orders-0") == "orders-0"
    gone = PostgresState(accepting=True, role="replica", primary_conninfo="")
    assert ha.following("", gone, "", previous="orders-0") == ""
    no_row = PostgresState(accepting=True, role="replica", primary_conninfo="",
                           receiver=ReceiverState(None, None, None))  # what read_receiver says without one
    assert ha.following("", no_row, "", previous="orders-0") == ""
    assert ha.wal_receiver(no_row) == "stopped"
    # Asked to follow: once the conninfo is in effect.
    assert ha.following("orders-1", gone, conninfo, previous="") == ""
    assert ha.following("orders-1", streaming, conninfo, previous="") == "orders-1"
    assert ha.following(None, streaming, conninfo, previous="x") is None
    assert ha.following("orders-0", PostgresState(accepting=True, role="primary"), "", None) == "orders-0"


def test_received_lsn_keeps_the_last_known_one():
    assert ha.received_lsn(PostgresState(received_lsn="0/5000000"), "0/4000000") == "0/5000000"
    assert ha.received_lsn(PostgresState(received_lsn=None), "0/4000000") == "0/4000000"
    restarted = PostgresState(role="replica", received_lsn=None, lsn="0/3000000")
    assert ha.received_lsn(restarted, None) == "0/3000000"


def test_readiness_tells_the_truth():
    from pgop.agent.streaming import ReceiverState
    def ready(role="replica", primary=None, state_role="replica", receiver="streaming", sysid="1", primary_sysid="1",
              fenced=False, running=True):
        state = PostgresState(accepting=True, role=state_role, system_identifier=sysid,
                              receiver=ReceiverState(receiver, 1, "h") if receiver else None)
        return ha.readiness(role=role, primary=primary, fenced=fenced, running=running, state=state,
                            system_identifier=primary_sysid)
    assert ready() == (True, "postgres accepts connections as replica")
    assert ready(primary="orders-0")[0]
    assert not ready(receiver=None)[0] and "stopped" in ready(receiver=None)[1]
    assert not ready(receiver="waiting")[0]
    assert not ready(primary="")[0] and "failover" in ready(primary="")[1]
    assert not ready(sysid="2")[0] and "system identifier" in ready(sysid="2")[1]
    assert ready(primary_sysid=None)[0]  # the primary's is unknown: no judgement
    assert ready(role="primary", state_role="primary", receiver=None)[0]
    assert not ready(role="primary", state_role="replica")[0]
    assert not ready(fenced=True)[0] and not ready(running=False)[0]


def test_slots_created_for_new_instances_and_dropped_for_gone_ones_only_if_managed():
    actual = running(slots=(Slot("pgop_orders_1", True), Slot("pgop_orders_9", False), Slot("barman", False)))
    decision = ha.decide(wanted(slots=frozenset({"pgop_orders_1", "pgop_orders_2"})), actual)
    assert [(a.kind, a.target) for a in decision.actions] == [
        (ha.DROP_SLOT, "pgop_orders_9"), (ha.CREATE_SLOT, "pgop_orders_2")]
    assert decision.applied  # slots do not hold up a rollout


def test_a_slot_max_slot_wal_keep_size_invalidated_is_made_again():
    """A replica refuses to stream through a lost slot; it catches up from the archive, then
    streams through the new one (made at the primary's current WAL)."""
    actual = running(slots=(Slot("pgop_orders_1", False, None, "lost"), Slot("pgop_orders_2", True, "0/3000000",
                                                                             "reserved"),
                            Slot("barman", False, None, "lost")))
    decision = ha.decide(wanted(slots=frozenset({"pgop_orders_1", "pgop_orders_2"})), actual)
    assert [(a.kind, a.target) for a in decision.actions] == [
        (ha.DROP_SLOT, "pgop_orders_1"), (ha.CREATE_SLOT, "pgop_orders_1")]
    assert "invalidated" in decision.actions[0].reason
    # An active one is left to its walsender (it cannot be dropped while in use).
    busy = running(slots=(Slot("pgop_orders_1", True, None, "lost"),))
    assert ha.decide(wanted(slots=frozenset({"pgop_orders_1"})), busy).actions == ()


def test_unknown_cluster_leaves_slots_alone():
    actual = running(slots=(Slot("pgop_orders_1", True),))
    assert ha.decide(wanted(slots=None), actual).actions == ()


def test_a_replica_nobody_follows_drops_the_inactive_slots_it_made_and_nothing_else():
    """A promotion target deposed before it became primary (or a former primary) may still hold
    the slots it made for the others: they keep WAL on it that nobody fetches."""
    actual = running(role="replica", slots=(Slot("pgop_orders_9", False), Slot("pgop_orders_2", True),
                                            Slot("barman", False)))
    decision = ha.decide(wanted(role="replica", slots=frozenset()), actual)
    assert [(a.kind, a.target) for a in decision.actions] == [(ha.DROP_SLOT, "pgop_orders_9")]
    # others still follow it (a switchover's old primary hands over), or the cluster is unknown
    assert ha.decide(wanted(role="replica", slots=None), actual).actions == ()


def test_order_of_actions_config_then_slots_then_promotion():
    """A standby about to be promoted makes the slots first: the other replicas stream from it
    while it promotes. It never drops one (a standby's slots are not its to manage)."""
    decision = ha.decide(wanted(settings={**SETTINGS, "work_mem": "1MB"}, slots=frozenset({"pgop_x"})),
                         running(role="replica", slots=(Slot("pgop_orders_9", False),)))
    assert [(a.kind, a.target) for a in decision.actions] == [
        (ha.WRITE_CONFIG, None), (ha.RELOAD, None), (ha.CREATE_SLOT, "pgop_x"), (ha.PROMOTE, None)]


@pytest.mark.parametrize("role_wanted, role_actual, expected", [
    ("primary", "primary", []), ("replica", "replica", []), ("primary", "replica", [ha.PROMOTE]),
    ("replica", "primary", []), ("primary", None, []),
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
