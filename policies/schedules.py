"""Scheduled warm windows: cron expressions and iCalendar feeds (lecture timetables).

Both are expanded, timezone-aware, into `Occurrence`s over a horizon; `scheduled_replicas` then asks
for each occurrence's replicas from `lead_s` before its start (the expected cold start, so the model
is ready when the lecture begins) until its end. Expansion is a pure function of the text and the
horizon; the launcher re-expands a rolling horizon, the simulator expands the whole trace at once.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter
from dateutil.rrule import rrulestr

from policies.types import Occurrence


class ScheduleError(ValueError):
    """A cron expression or iCalendar feed could not be understood."""


@dataclass(frozen=True)
class CronSchedule:
    """Keep `replicas` warm for `duration_s` from every instant `expr` fires, in time zone `tz`."""

    name: str
    expr: str
    duration_s: float
    replicas: int = 1
    tz: str = "UTC"


def _utc(ts_s: float) -> datetime:
    return datetime.fromtimestamp(ts_s, tz=UTC)


def expand_cron(schedule: CronSchedule, start_s: float, end_s: float) -> tuple[Occurrence, ...]:
    """Occurrences of `schedule` that overlap [start_s, end_s)."""
    if not croniter.is_valid(schedule.expr):
        raise ScheduleError(f"invalid cron expression {schedule.expr!r}")
    zone = ZoneInfo(schedule.tz)
    # Start one duration early so that a window already open at start_s is included.
    base = _utc(start_s - schedule.duration_s).astimezone(zone)
    it = croniter(schedule.expr, base)
    out: list[Occurrence] = []
    while True:
        fire = it.get_next(datetime)
        fire_s = fire.timestamp()
        if fire_s >= end_s:
            break
        if fire_s + schedule.duration_s > start_s:
            out.append(Occurrence(fire_s, fire_s + schedule.duration_s, schedule.replicas, f"cron:{schedule.name}"))
    return tuple(out)


def _as_datetime(value: date | datetime, zone: ZoneInfo) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=zone)
    return datetime(value.year, value.month, value.day, tzinfo=zone)


def _exdates(component: object, zone: ZoneInfo) -> set[float]:
    raw = component.get("exdate")  # type: ignore[attr-defined]
    if raw is None:
        return set()
    lists = raw if isinstance(raw, list) else [raw]
    return {_as_datetime(d.dt, zone).timestamp() for lst in lists for d in lst.dts}


def expand_ical(
    text: str | bytes,
    start_s: float,
    end_s: float,
    *,
    default_replicas: int = 1,
    default_tz: str = "UTC",
    source: str = "ical",
) -> tuple[Occurrence, ...]:
    """Occurrences of every VEVENT in an iCalendar feed that overlap [start_s, end_s), sorted.

    RRULE, RDATE-free recurrence with EXDATE is expanded with dateutil in the event's own time zone
    (a weekly 10:15 lecture stays at 10:15 across daylight-saving changes). Floating times use
    `default_tz`. An event may carry `X-SLURMLESS-REPLICAS` to ask for more than `default_replicas`.
    """
    import icalendar

    try:
        cal = icalendar.Calendar.from_ical(text)
    except ValueError as exc:
        raise ScheduleError(f"unreadable iCalendar feed: {exc}") from exc
    zone = ZoneInfo(default_tz)
    out: list[Occurrence] = []
    for event in cal.walk("VEVENT"):
        if event.get("dtstart") is None:
            raise ScheduleError("VEVENT without DTSTART")
        dtstart = _as_datetime(event.get("dtstart").dt, zone)
        if event.get("dtend") is not None:
            duration = _as_datetime(event.get("dtend").dt, zone) - dtstart
        elif event.get("duration") is not None:
            duration = event.get("duration").dt
        else:
            duration = timedelta(hours=1)
        replicas = int(event.get("x-slurmless-replicas", default_replicas))
        summary = str(event.get("summary", "event"))
        excluded = _exdates(event, zone)
        rule = event.get("rrule")
        starts: Iterable[datetime]
        if rule is None:
            starts = [dtstart]
        else:
            rule_text = rule.to_ical().decode()
            window_lo = _utc(start_s) - duration
            starts = rrulestr(rule_text, dtstart=dtstart).between(window_lo, _utc(end_s), inc=True)
        for st in starts:
            s = st.timestamp()
            e = s + duration.total_seconds()
            if s in excluded or e <= start_s or s >= end_s:
                continue
            out.append(Occurrence(s, e, replicas, f"{source}:{summary}"))
    out.sort(key=lambda o: (o.start_s, o.end_s))
    return tuple(out)


def scheduled_replicas(occurrences: tuple[Occurrence, ...], now_s: float, lead_s: float) -> tuple[int, str, float]:
    """Replicas the schedules ask for at `now_s`: (replicas, reason, recheck_at_s).

    An occurrence asks from `start_s - lead_s` until `end_s`. `occurrences` must be sorted by start.
    """
    starts = [o.start_s - lead_s for o in occurrences]
    upto = bisect.bisect_right(starts, now_s)
    replicas = 0
    detail = "no scheduled window"
    recheck_s = starts[upto] if upto < len(starts) else float("inf")
    for occ in occurrences[:upto]:
        if occ.end_s > now_s:
            recheck_s = min(recheck_s, occ.end_s)
            if occ.replicas > replicas:
                replicas = occ.replicas
                when = "open" if now_s >= occ.start_s else f"starts in {occ.start_s - now_s:.0f}s"
                detail = f"{occ.source} {when}, until {_utc(occ.end_s).isoformat()}"
    return replicas, detail, recheck_s
