"""Schedules: iCalendar RRULE expansion with EXDATE and DST, cron with a time zone, lead time."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from policies.schedules import CronSchedule, ScheduleError, expand_cron, expand_ical, scheduled_replicas

BERLIN = ZoneInfo("Europe/Berlin")
ICS = (Path(__file__).parents[1] / "data" / "lecture.ics").read_text()


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN).timestamp()


def test_ical_weekly_rrule_with_exdate() -> None:
    occ = expand_ical(ICS, ts(2024, 10, 14), ts(2024, 11, 4))
    ml = [o for o in occ if "Machine Learning" in o.source]
    lab = [o for o in occ if "NLP" in o.source]
    assert len(ml) == 6  # Mondays and Wednesdays, three weeks
    assert len(lab) == 2  # Thursdays, minus the excluded 31 October
    assert all(o.replicas == 2 for o in ml)
    assert all(o.replicas == 1 for o in lab)
    assert all(o.end_s - o.start_s == 5400.0 for o in occ)
    assert [o.start_s for o in occ] == sorted(o.start_s for o in occ)


def test_ical_keeps_wall_clock_across_dst() -> None:
    occ = expand_ical(ICS, ts(2024, 10, 14), ts(2024, 11, 4))
    starts = [datetime.fromtimestamp(o.start_s, BERLIN) for o in occ if "Machine" in o.source]
    assert {(s.hour, s.minute) for s in starts} == {(10, 0)}
    # ... which is 08:00 UTC before 27 October and 09:00 UTC after.
    utc_hours = {datetime.fromtimestamp(o.start_s, ZoneInfo("UTC")).hour for o in occ if "Machine" in o.source}
    assert utc_hours == {8, 9}


def test_scheduled_replicas_from_lead_to_end() -> None:
    occ = expand_ical(ICS, ts(2024, 10, 14), ts(2024, 10, 21))
    start = ts(2024, 10, 14, 10)
    lead = 400.0
    assert scheduled_replicas(occ, start - lead - 1.0, lead)[0] == 0
    replicas, why, recheck = scheduled_replicas(occ, start - lead, lead)
    assert replicas == 2
    assert "starts in" in why
    assert recheck == start + 5400.0
    assert scheduled_replicas(occ, start + 5399.0, lead)[0] == 2
    replicas, _, recheck = scheduled_replicas(occ, start + 5400.0, lead)
    assert replicas == 0
    assert recheck == ts(2024, 10, 16, 10) - lead


def test_cron_in_a_time_zone() -> None:
    sched = CronSchedule(name="office", expr="0 9 * * MON-FRI", duration_s=8 * 3600.0, replicas=3, tz="Europe/Berlin")
    occ = expand_cron(sched, ts(2024, 10, 14), ts(2024, 10, 21))
    assert len(occ) == 5
    assert datetime.fromtimestamp(occ[0].start_s, BERLIN).hour == 9
    assert scheduled_replicas(occ, ts(2024, 10, 15, 12), 300.0)[0] == 3
    assert scheduled_replicas(occ, ts(2024, 10, 19, 12), 300.0)[0] == 0


def test_cron_window_open_at_horizon_start_is_included() -> None:
    sched = CronSchedule(name="x", expr="0 9 * * *", duration_s=3 * 3600.0, tz="UTC")
    start = datetime(2024, 10, 14, 10, tzinfo=ZoneInfo("UTC")).timestamp()
    occ = expand_cron(sched, start, start + 3600.0)
    assert len(occ) == 1
    assert occ[0].start_s < start < occ[0].end_s


def test_bad_input_raises_schedule_error() -> None:
    with pytest.raises(ScheduleError):
        expand_cron(CronSchedule(name="x", expr="not cron", duration_s=1.0), 0.0, 1.0)
    with pytest.raises(ScheduleError):
        expand_ical("BEGIN:VCALENDAR\nBEGIN:VEVENT\nSUMMARY:x\nEND:VEVENT\nEND:VCALENDAR\n", 0.0, 1.0)
