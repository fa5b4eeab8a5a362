from datetime import UTC, datetime, timedelta, timezone

import pytest

from pgop.kernel.model import MAX_CLUSTER_NAME
from pgop.kernel.schedule import (
    ScheduleError,
    arm,
    due_run,
    due_runs,
    latest_due,
    next_due,
    scheduled_backup_name,
    validate_schedule,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


DAILY = "0 3 * * *"


def run_operator(schedule: str, last: datetime | None, moments: list[datetime]) -> list[datetime]:
    """What a controller that remembers the last due time does at each reconcile."""
    made = []
    for now in moments:
        due = due_run(schedule, last, now)
        if due is not None:
            made.append(due)
            last = due
    return made


# ------------------------------------------------------------------------ exactly once

def test_a_due_time_fires_once_however_often_the_controller_looks():
    minutes = [utc(2026, 11, 22, 2, 58) + timedelta(seconds=20 * i) for i in range(20)]
    assert run_operator(DAILY, utc(2026, 11, 21, 3, 0), minutes) == [utc(2026, 11, 22, 3, 0)]


def test_due_exactly_at_the_due_minute_and_not_a_minute_before():
    last = utc(2026, 11, 21, 3, 0)
    assert due_run(DAILY, last, utc(2026, 11, 22, 2, 59, 59)) is None
    assert due_run(DAILY, last, utc(2026, 11, 22, 3, 0, 0)) == utc(2026, 11, 22, 3, 0)
    assert due_run(DAILY, last, utc(2026, 11, 22, 3, 0, 42)) == utc(2026, 11, 22, 3, 0)


def test_operator_down_three_days_makes_exactly_one_backup_when_it_returns():
    last = utc(2026, 11, 19, 3, 0)
    back = utc(2026, 11, 22, 14, 30)
    assert due_run(DAILY, last, back) == utc(2026, 11, 22, 3, 0)  # the latest missed, once
    assert run_operator(DAILY, last, [back, back + timedelta(minutes=1), back + timedelta(hours=5)]) == \
        [utc(2026, 11, 22, 3, 0)]


def test_after_catching_up_the_next_due_time_fires_normally():
    made = run_operator(DAILY, utc(2026, 11, 19, 3, 0),
                        [utc(2026, 11, 22, 14, 30), utc(2026, 11, 23, 2, 59), utc(2026, 11, 23, 3, 0, 5)])
    assert made == [utc(2026, 11, 22, 3, 0), utc(2026, 11, 23, 3, 0)]


def test_every_five_minutes_over_an_hour_of_reconciles_each_minute():
    start = utc(2026, 11, 22, 10, 0)
    minutes = [start + timedelta(minutes=i, seconds=7) for i in range(61)]
    made = run_operator("*/5 * * * *", start, minutes)
    assert made == [start + timedelta(minutes=5 * i) for i in range(1, 13)]


def test_the_brief_name_due_runs_is_the_same_function():
    assert due_runs is due_run


# ------------------------------------------------------------------------ first sight, skew

def test_first_sight_of_a_schedule_does_not_back_up_at_once():
    assert due_run(DAILY, None, utc(2026, 11, 22, 14, 0)) is None


def test_arming_remembers_the_latest_past_due_time_so_the_next_one_fires():
    now = utc(2026, 11, 22, 14, 0)
    armed = arm(DAILY, now)
    assert armed == utc(2026, 11, 22, 3, 0)
    assert due_run(DAILY, armed, now) is None
    assert due_run(DAILY, armed, utc(2026, 11, 23, 3, 0)) == utc(2026, 11, 23, 3, 0)


def test_created_before_a_missed_due_time_backs_up_once():
    # The cluster was created at 02:00; the operator first looks at 05:00: 03:00 was missed.
    assert due_run(DAILY, utc(2026, 11, 22, 2, 0), utc(2026, 11, 22, 5, 0)) == utc(2026, 11, 22, 3, 0)


def test_a_clock_that_went_back_makes_nothing_due():
    last = utc(2026, 11, 22, 3, 0)
    assert due_run("* * * * *", last, last - timedelta(minutes=10)) is None
    assert due_run(DAILY, last, utc(2026, 11, 21, 3, 0)) is None


def test_the_remembered_time_itself_never_fires_again():
    last = utc(2026, 11, 22, 3, 0)
    assert due_run(DAILY, last, last) is None
    assert due_run(DAILY, last, last + timedelta(seconds=59)) is None


# ------------------------------------------------------------------------ schedule changes, macros

def test_schedule_changed_to_a_later_hour_fires_once_for_what_the_new_one_missed():
    last = utc(2026, 11, 22, 3, 0)  # under "0 3 * * *"
    assert due_run("0 12 * * *", last, utc(2026, 11, 22, 14, 0)) == utc(2026, 11, 22, 12, 0)


def test_schedule_changed_from_hourly_to_daily_waits_for_the_daily_time():
    last = utc(2026, 11, 22, 5, 0)  # under "@hourly"
    assert due_run(DAILY, last, utc(2026, 11, 22, 5, 30)) is None
    assert due_run(DAILY, last, utc(2026, 11, 23, 3, 0)) == utc(2026, 11, 23, 3, 0)


@pytest.mark.parametrize("macro, now, due", [
    ("@daily", utc(2026, 11, 22, 14, 0), utc(2026, 11, 22, 0, 0)),
    ("@midnight", utc(2026, 11, 22, 14, 0), utc(2026, 11, 22, 0, 0)),
    ("@hourly", utc(2026, 11, 22, 14, 59), utc(2026, 11, 22, 14, 0)),
    ("@weekly", utc(2026, 11, 25, 9, 0), utc(2026, 11, 22, 0, 0)),  # Sunday midnight
    ("@monthly", utc(2026, 11, 22, 9, 0), utc(2026, 11, 1, 0, 0)),
    ("@yearly", utc(2026, 11, 22, 9, 0), utc(2026, 1, 1, 0, 0)),
    ("@annually", utc(2026, 11, 22, 9, 0), utc(2026, 1, 1, 0, 0)),
])
def test_macros(macro, now, due):
    assert latest_due(macro, now) == due
    assert due_run(macro, due - timedelta(minutes=1), now) == due


def test_times_are_utc_whatever_zone_now_is_given_in():
    paris = timezone(timedelta(hours=1))
    now = datetime(2026, 11, 22, 4, 30, tzinfo=paris)  # 03:30 UTC
    assert due_run(DAILY, utc(2026, 11, 21, 3, 0), now) == utc(2026, 11, 22, 3, 0)


def test_no_daylight_saving_gap_or_repeat_in_utc():
    # 2026-03-29 and 2026-10-25: Europe changes clocks at 01:00 UTC; a UTC schedule does not care.
    made = run_operator("30 1 * * *", utc(2026, 10, 24, 1, 30),
                        [utc(2026, 10, 25, 0, 0) + timedelta(minutes=15 * i) for i in range(12)])
    assert made == [utc(2026, 10, 25, 1, 30)]


def test_a_leap_day_schedule_fires_in_leap_years():
    assert latest_due("0 0 29 2 *", utc(2027, 6, 1)) == utc(2024, 2, 29)
    assert next_due("0 0 29 2 *", utc(2027, 6, 1)) == utc(2028, 2, 29)


def test_next_due_is_strictly_after_now():
    assert next_due(DAILY, utc(2026, 11, 22, 3, 0)) == utc(2026, 11, 23, 3, 0)
    assert next_due(DAILY, utc(2026, 11, 22, 2, 59, 59)) == utc(2026, 11, 22, 3, 0)


def test_a_time_without_zone_is_refused():
    with pytest.raises(ValueError, match="zone"):
        due_run(DAILY, datetime(2026, 11, 21, 3, 0), utc(2026, 11, 22, 3, 0))


# ------------------------------------------------------------------------ validation

@pytest.mark.parametrize("schedule", [
    "0 3 * * *", "*/15 * * * *", "0 3 * * MON-FRI", "0 3 1,15 * *", "@daily", "@hourly", "  0  3 * * *  ",
])
def test_valid_schedules(schedule):
    assert validate_schedule(schedule) is None


@pytest.mark.parametrize("schedule, words", [
    ("61 * * * *", "not a valid cron expression"),
    ("0 25 * * *", "not a valid cron expression"),
    ("*/0 * * * *", "not a valid cron expression"),
    ("every day", "has 2 field(s)"),
    ("0 3 * * * *", "has 6 field(s)"),  # croniter reads a 6th field as seconds
    ("0 3 * *", "has 4 field(s)"),
    ("@reboot", "not a known macro"),
    ("", "is empty"),
    ("0 0 31 2 *", "never matches"),
    ("0 0 31 4 *", "never matches"),
])
def test_refused_schedules_name_the_field(schedule, words):
    message = validate_schedule(schedule)
    assert message is not None
    assert message.startswith("spec.backup.schedule: ")
    assert words in message


def test_due_run_raises_a_field_named_error_for_a_bad_schedule():
    with pytest.raises(ScheduleError) as caught:
        due_run("61 * * * *", utc(2026, 11, 21), utc(2026, 11, 22))
    assert caught.value.field == "spec.backup.schedule"
    assert isinstance(caught.value, ValueError)


# ------------------------------------------------------------------------ names

def test_backup_name_is_the_cluster_and_the_due_minute_in_utc():
    assert scheduled_backup_name("orders", utc(2026, 11, 22, 3, 0)) == "orders-202611220300"
    plus_two = timezone(timedelta(hours=2))
    assert scheduled_backup_name("orders", datetime(2026, 11, 22, 5, 0, tzinfo=plus_two)) == "orders-202611220300"


def test_backup_name_is_the_same_on_a_retry_and_different_per_due_time():
    due = utc(2026, 11, 22, 3, 0)
    assert scheduled_backup_name("orders", due) == scheduled_backup_name("orders", due)
    assert scheduled_backup_name("orders", due) != scheduled_backup_name("orders", due + timedelta(minutes=5))


def test_backup_name_of_the_longest_cluster_name_fits_a_dns_label():
    name = scheduled_backup_name("a" * MAX_CLUSTER_NAME, utc(2026, 11, 22, 3, 0))
    assert len(name) == 63


def test_backup_name_refuses_a_cluster_name_too_long():
    with pytest.raises(ValueError, match="too long"):
        scheduled_backup_name("a" * 51, utc(2026, 11, 22, 3, 0))
