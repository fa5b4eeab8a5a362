"""When a scheduled base backup is due: cron (croniter) in UTC, exactly once per due time.

The cluster controller remembers the due time of the last scheduled PgBackup in PgCluster
`status.lastScheduledBackupTime`; `due_run` compares it with the schedule and the clock:

- A due time fires once: only a due time strictly after the last scheduled one is returned.
- Missed runs collapse: an operator that was down for three days with a daily schedule creates one
  backup when it returns (for the latest missed due time), not three. The same holds for a
  schedule changed between runs: the due times of the new schedule since the last scheduled
  backup count as missed, and the latest of them runs once (as a Kubernetes CronJob does).
- The first sight of a schedule (nothing remembered) does not back up at once: `due_run` returns
  None and `arm` gives the latest past due time to remember, so the next due time fires. A caller
  that knows when the schedule started (the cluster's creationTimestamp) passes it as
  `last_scheduled` instead: a due time between creation and now then fires once.
- A clock that went backwards (now before the last scheduled time) makes nothing due; the
  remembered time is kept, never moved back, so no due time fires twice.

Only the five-field form (minute resolution) and the @-macros are accepted, as the CRD says:
croniter would also read a sixth field as seconds, which would mean a backup every second.
Everything is UTC: no daylight saving time to skip or repeat an hour.

The PgBackup made for a due time has a name derived from the cluster and the due time only, so a
creation retried after a lost answer or an operator restart hits the API server's name
uniqueness instead of making a second backup.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from croniter import CroniterBadDateError, CroniterError, croniter

FIELD = "spec.backup.schedule"
MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MINUTE = timedelta(minutes=1)
# A valid expression that cannot match any date (February 31st) is found within croniter's
# search window; leap days (February 29th) are found too.
_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)


class ScheduleError(ValueError):
    """A schedule that cannot be used; str() names the field, for a condition or a refusal."""

    def __init__(self, schedule: str, reason: str) -> None:
        self.field = FIELD
        self.schedule = schedule
        self.reason = reason
        super().__init__(f"{FIELD}: {schedule!r} {reason}")


def validate_schedule(schedule: str | None) -> str | None:
    """None when `schedule` is usable, else a message naming the field (for a condition)."""
    try:
        _parse(schedule)
    except ScheduleError as error:
        return str(error)
    return None


def _parse(schedule: str | None) -> str:
    """The normalised expression; raises ScheduleError for what cron or the CRD would refuse."""
    if schedule is None or not str(schedule).strip():
        raise ScheduleError(str(schedule or ""), "is empty: give a cron expression such as '0 3 * * *'")
    text = " ".join(str(schedule).split())
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise ScheduleError(schedule, f"is not a known macro (one of {', '.join(MACROS)})")
        return text.lower()
    fields = text.split(" ")
    if len(fields) != 5:
        raise ScheduleError(
            schedule,
            f"has {len(fields)} field(s); a cron expression has exactly 5: "
            "minute hour day-of-month month day-of-week, e.g. '0 3 * * *'",
        )
    try:
        valid = croniter.is_valid(text)
    except Exception:  # croniter raises more than its own errors on some malformed input
        valid = False
    if not valid:
        try:
            croniter(text, _REFERENCE)
        except Exception as error:
            raise ScheduleError(schedule, f"is not a valid cron expression: {error}") from None
        raise ScheduleError(schedule, "is not a valid cron expression")
    try:
        croniter(text, _REFERENCE).get_next(datetime)
    except (CroniterBadDateError, CroniterError):
        raise ScheduleError(schedule, "never matches a date (e.g. February 31st)") from None
    return text


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"a time without a zone is ambiguous: {moment!r}")
    return moment.astimezone(UTC).replace(fold=0)


def latest_due(schedule: str, now: datetime) -> datetime | None:
    """The latest due time at or before `now` (None if the schedule never matched before)."""
    text = _parse(schedule)
    minute = _utc(now).replace(second=0, microsecond=0)
    try:
        # get_prev is strictly before its start: start a minute later so `now` itself counts.
        previous = croniter(text, minute + _MINUTE).get_prev(datetime)
    except CroniterBadDateError:
        return None
    return _utc(previous)


def next_due(schedule: str, now: datetime) -> datetime:
    """The first due time strictly after `now` (for status and `pgop status`)."""
    text = _parse(schedule)
    minute = _utc(now).replace(second=0, microsecond=0)
    return _utc(croniter(text, minute).get_next(datetime))


def due_run(schedule: str, last_scheduled: datetime | None, now: datetime) -> datetime | None:
    """The due time to back up for now, or None when nothing is due.

    Returns the latest due time in (last_scheduled, now]: one backup however many due times were
    missed. None when `last_scheduled` is None (first sight: see `arm`) or lies in the future
    (the clock went back). Raises ScheduleError for a schedule cron refuses.
    """
    text = _parse(schedule)
    if last_scheduled is None:
        return None
    last = _utc(last_scheduled)
    if _utc(now) < last:
        return None
    due = latest_due(text, now)
    if due is None or due <= last:
        return None
    return due


# The name the brief gives the function: one due time (or None) per call, never several.
due_runs = due_run


def arm(schedule: str, now: datetime) -> datetime:
    """What to remember on first sight of a schedule so that its next due time fires, not a
    past one: the latest due time up to now (or now itself when there is none yet)."""
    return latest_due(schedule, now) or _utc(now).replace(second=0, microsecond=0)


def scheduled_backup_name(cluster: str, due: datetime) -> str:
    """`<cluster>-<YYYYMMDDHHMM>` of the due time in UTC: at most 63 characters for cluster
    names of at most 50 (the operator's limit), and the same on every retry."""
    name = f"{cluster}-{_utc(due).strftime('%Y%m%d%H%M')}"
    if len(name) > 63:
        raise ValueError(f"cluster name {cluster!r} is too long for a backup name (max 50 characters)")
    return name
