"""The schedule in words (django_apscheduler.describe), over every APScheduler 3 trigger."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.calendarinterval import CalendarIntervalTrigger
from apscheduler.triggers.combining import AndTrigger, OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from django_apscheduler.describe import describe_interval, describe_trigger, zone_name

BERLIN = "Europe/Berlin"


def cron(**fields):
    fields.setdefault("timezone", "UTC")
    return CronTrigger(**fields)


@pytest.mark.parametrize(
    "trigger, expected",
    [
        (IntervalTrigger(seconds=10), "every 10 seconds"),
        (IntervalTrigger(seconds=1), "every second"),
        (IntervalTrigger(minutes=1), "every minute"),
        (IntervalTrigger(hours=1), "every hour"),
        (IntervalTrigger(days=1), "every day"),
        (IntervalTrigger(weeks=1), "every week"),
        (IntervalTrigger(weeks=2), "every 2 weeks"),
        (IntervalTrigger(minutes=90), "every 1 hour and 30 minutes"),
        (IntervalTrigger(days=2, hours=3, minutes=30), "every 2 days, 3 hours and 30 minutes"),
        (IntervalTrigger(hours=1, seconds=5), "every 1 hour and 5 seconds"),
        (IntervalTrigger(), "every second"),  # APScheduler makes a zero interval one second
        (IntervalTrigger(minutes=5, jitter=3), "every 5 minutes with up to 3 seconds of jitter"),
        (IntervalTrigger(minutes=5, jitter=1), "every 5 minutes with up to 1 second of jitter"),
        (
            IntervalTrigger(weeks=1, end_date="2027-01-01 12:30:00", timezone=BERLIN),
            "every week until 2027-01-01 12:30",
        ),
    ],
)
def test_interval(trigger, expected):
    assert describe_trigger(trigger) == expected


def test_interval_of_a_timedelta():
    assert describe_interval(timedelta(hours=25)) == "every 1 day and 1 hour"
    assert describe_interval(timedelta(milliseconds=10)) == "every second"


@pytest.mark.parametrize(
    "trigger, expected",
    [
        # The example.
        (
            cron(hour=3, day_of_week="mon-fri", timezone=BERLIN),
            "at 03:00 on weekdays (Europe/Berlin)",
        ),
        (cron(hour=3), "at 03:00 every day (UTC)"),
        (cron(hour=3, minute=30, second=15), "at 03:30:15 every day (UTC)"),
        (cron(hour="8,20", minute=30), "at 08:30 and 20:30 every day (UTC)"),
        (cron(day_of_week="0-4", hour=6), "at 06:00 on weekdays (UTC)"),
        (cron(day_of_week="mon,tue,wed,thu,fri", hour=6), "at 06:00 on weekdays (UTC)"),
        (cron(day_of_week="sat,sun", hour=10), "at 10:00 on weekends (UTC)"),
        (cron(day_of_week="sat-sun", hour=10), "at 10:00 on weekends (UTC)"),
        (cron(day_of_week="mon", hour=9), "at 09:00 on Mondays (UTC)"),
        (
            cron(day_of_week="mon,wed,fri", hour=9),
            "at 09:00 on Mondays, Wednesdays and Fridays (UTC)",
        ),
        (cron(day_of_week="tue-thu", hour=12), "at 12:00 on Tuesday to Thursday (UTC)"),
        (cron(day_of_week="*/2", hour=12), "at 12:00 on every 2nd day of the week (UTC)"),
        (
            cron(day_of_week="0-6/2", hour=12),
            "at 12:00 on every 2nd day from Monday to Sunday (UTC)",
        ),
        # Seconds, minutes and hours not fixed.
        (cron(second="*"), "every second (UTC)"),
        (cron(second="*/10"), "every 10 seconds (UTC)"),
        (cron(second=30), "at second 30 of every minute (UTC)"),
        (cron(second="15,45"), "at seconds 15 and 45 of every minute (UTC)"),
        (cron(second="5-10"), "every second from 5 to 10 (UTC)"),
        (cron(second="0-30/10"), "every 10 seconds from 0 to 30 (UTC)"),
        (cron(minute="*"), "every minute (UTC)"),
        (cron(minute="*/5"), "every 5 minutes (UTC)"),
        (cron(minute="5/10"), "every 10 minutes from 5 (UTC)"),
        (cron(minute="10-20"), "every minute from 10 to 20 (UTC)"),
        (cron(minute=15), "at minute 15 of every hour (UTC)"),
        (cron(minute="0,30"), "at minutes 0 and 30 of every hour (UTC)"),
        (cron(minute="*/5", hour="9,17"), "every 5 minutes during hours 9 and 17 (UTC)"),
        (cron(minute="*/5", hour=9), "every 5 minutes during hour 9 (UTC)"),
        (cron(minute="*/15", hour="0-5"), "every 15 minutes between 00:00 and 05:59 (UTC)"),
        (cron(minute=0, hour="9-17"), "at minute 0 between 09:00 and 17:59 (UTC)"),
        (cron(minute=15, hour="*/2"), "at minute 15 of every 2 hours (UTC)"),
        (cron(minute=0, hour="1-23/2"), "at minute 0 of every 2 hours from 1 to 23 (UTC)"),
        (cron(hour="*/6"), "at minute 0 of every 6 hours (UTC)"),
        (
            cron(second="*", minute="0,30"),
            "every second during minutes 0 and 30 of every hour (UTC)",
        ),
        (
            cron(second=0, minute="0,10,20,30,40,50", hour="0,12"),
            "at minutes 0, 10, 20, 30, 40 and 50 during hours 0 and 12 (UTC)",
        ),
        # Days of the month, weeks, months, years.
        (cron(day="last", hour=23, minute=59), "at 23:59 on the last day of the month (UTC)"),
        (cron(day="2nd fri", hour=8), "at 08:00 on the 2nd Friday of the month (UTC)"),
        (cron(day="last sun", hour=8), "at 08:00 on the last Sunday of the month (UTC)"),
        (cron(day=1), "at 00:00 on day 1 of the month (UTC)"),
        (cron(day="1,15"), "at 00:00 on days 1 and 15 of the month (UTC)"),
        (cron(day="1-7"), "at 00:00 on days 1 to 7 of the month (UTC)"),
        (cron(day="*/2", hour=0), "at 00:00 on every 2nd day of the month (UTC)"),
        (cron(day="3/10"), "at 00:00 on every 10th day from day 3 of the month (UTC)"),
        (cron(day="1-20/5"), "at 00:00 on every 5th day from day 1 to 20 of the month (UTC)"),
        (cron(month="jan-mar", day=1), "at 00:00 on day 1 of the month in January to March (UTC)"),
        (cron(month=6, day=1), "at 00:00 on day 1 of the month in June (UTC)"),
        (cron(month="*/3", day=1), "at 00:00 on day 1 of the month in every 3rd month (UTC)"),
        (
            cron(month="1-12/6", day=1),
            "at 00:00 on day 1 of the month in every 6th month from January to December (UTC)",
        ),
        (cron(month="jan,jul", day=1), "at 00:00 on day 1 of the month in January and July (UTC)"),
        (cron(year=2027, month=6), "at 00:00 on day 1 of the month in June in 2027 (UTC)"),
        (cron(year="2027-2029", hour=1), "at 01:00 in 2027 to 2029 (UTC)"),
        (cron(year="*/2", hour=1), "at 01:00 in every 2nd year (UTC)"),
        (cron(week=1, hour=1), "at 01:00 in ISO week 1 (UTC)"),
        (cron(week="10-20", hour=1), "at 01:00 in ISO week 10 to 20 (UTC)"),
        (
            cron(day="13", day_of_week="fri", hour=0),
            "at 00:00 on Fridays on day 13 of the month (UTC)",
        ),
        # Start, end, jitter.
        (
            cron(day_of_week="tue-thu", hour=12, start_date="2027-01-01", end_date="2027-12-31"),
            "at 12:00 on Tuesday to Thursday from 2027-01-01 00:00 until 2027-12-31 00:00 (UTC)",
        ),
        (cron(minute="*/5", jitter=10), "every 5 minutes with up to 10 seconds of jitter (UTC)"),
        # A crontab line.
        (CronTrigger.from_crontab("*/5 * * * *", timezone="UTC"), "every 5 minutes (UTC)"),
        (
            CronTrigger.from_crontab("30 4 1 * *", timezone="UTC"),
            "at 04:30 on day 1 of the month (UTC)",
        ),
    ],
)
def test_cron(trigger, expected):
    assert describe_trigger(trigger) == expected


#: Each cron field with every expression form it accepts.
CRON_FORMS = {
    "year": ["*", "*/2", "2030", "2030-2035", "2030-2040/2", "2030/3", "2030,2032"],
    "month": ["*", "*/3", "6", "1-6", "1-12/2", "2/3", "jan", "jan-mar", "jan,jul"],
    "day": ["*", "*/2", "15", "1-10", "1-20/5", "3/10", "1,15", "last", "1st mon", "last fri"],
    "week": ["*", "*/2", "10", "1-10", "1-20/5", "2/4", "1,30"],
    "day_of_week": ["*", "*/2", "0", "0-4", "0-6/2", "1/2", "mon", "mon-fri", "sat,sun"],
    "hour": ["*", "*/2", "3", "9-17", "0-23/6", "1/3", "8,20"],
    "minute": ["*", "*/5", "15", "10-20", "0-59/15", "5/10", "0,30"],
    "second": ["*", "*/10", "30", "5-10", "0-59/20", "5/15", "15,45"],
}


@pytest.mark.parametrize(
    "field, form",
    [(field, form) for field, forms in CRON_FORMS.items() for form in forms],
)
def test_every_cron_field_and_form_is_described(field, form):
    """Each field in each form gives words (not APScheduler's repr) naming the time zone."""
    trigger = cron(**{field: form})
    text = describe_trigger(trigger)
    assert text.endswith(" (UTC)")
    assert "CronTrigger" not in text and "Expression" not in text
    assert len(text) > len(" (UTC)")


@pytest.mark.parametrize(
    "fields",
    [
        dict(zip(("second", "minute", "hour"), forms))
        for forms in itertools.product(
            CRON_FORMS["second"][:4], CRON_FORMS["minute"][:4], CRON_FORMS["hour"][:4]
        )
    ],
    ids=lambda fields: ",".join(f"{k}={v}" for k, v in fields.items()),
)
def test_every_combination_of_time_fields_is_described(fields):
    text = describe_trigger(cron(**fields))
    assert text.endswith(" (UTC)") and "Expression" not in text


@pytest.mark.parametrize(
    "trigger, expected",
    [
        (
            DateTrigger(datetime(2026, 12, 24, 18, 0, tzinfo=ZoneInfo(BERLIN))),
            "once at 2026-12-24 18:00 (Europe/Berlin)",
        ),
        (
            DateTrigger(datetime(2026, 12, 24, 18, 0, 5, tzinfo=ZoneInfo("UTC"))),
            "once at 2026-12-24 18:00:05 (UTC)",
        ),
        (
            DateTrigger("2026-12-24 18:00:00", timezone=BERLIN),
            "once at 2026-12-24 18:00 (Europe/Berlin)",
        ),
    ],
)
def test_date(trigger, expected):
    assert describe_trigger(trigger) == expected


def test_date_in_a_fixed_offset_zone():
    when = datetime(2026, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=2)))
    assert describe_trigger(DateTrigger(when)) == "once at 2026-01-02 03:04 (UTC+02:00)"


@pytest.mark.parametrize(
    "trigger, expected",
    [
        (
            CalendarIntervalTrigger(months=1, hour=9, timezone=BERLIN, start_date="2026-01-31"),
            "every month at 09:00 from 2026-01-31 (Europe/Berlin)",
        ),
        (
            CalendarIntervalTrigger(
                days=1, hour=6, minute=30, timezone="UTC", start_date="2026-01-01"
            ),
            "every day at 06:30 from 2026-01-01 (UTC)",
        ),
        (
            CalendarIntervalTrigger(
                years=1, weeks=2, timezone="UTC", start_date="2026-01-01", end_date="2030-01-01"
            ),
            "every 1 year and 2 weeks at 00:00 from 2026-01-01 until 2030-01-01 (UTC)",
        ),
        (
            CalendarIntervalTrigger(years=2, timezone="UTC", start_date="2026-01-01", jitter=5),
            "every 2 years at 00:00 from 2026-01-01 with up to 5 seconds of jitter (UTC)",
        ),
    ],
)
def test_calendar_interval(trigger, expected):
    assert describe_trigger(trigger) == expected


def test_and_trigger():
    trigger = AndTrigger([IntervalTrigger(hours=1), cron(day_of_week="mon-fri")])
    assert describe_trigger(trigger) == (
        "when all of [every hour] and [at 00:00 on weekdays (UTC)] match"
    )


def test_or_trigger_with_jitter():
    trigger = OrTrigger([cron(hour=3), cron(hour=15, minute=30)], jitter=5)
    assert describe_trigger(trigger) == (
        "whenever any of [at 03:00 every day (UTC)] or [at 15:30 every day (UTC)] fires "
        "with up to 5 seconds of jitter"
    )


def test_nested_combining_triggers():
    inner = OrTrigger([IntervalTrigger(seconds=10), IntervalTrigger(minutes=1)])
    trigger = AndTrigger([inner, cron(minute="*/5"), cron(hour=3)])
    assert describe_trigger(trigger) == (
        "when all of [whenever any of [every 10 seconds] or [every minute] fires], "
        "[every 5 minutes (UTC)] and [at 03:00 every day (UTC)] match"
    )


def test_unknown_trigger_is_its_str():
    class Custom:
        def __str__(self):
            return "custom<b>"

    assert describe_trigger(Custom()) == "custom<b>"


def test_zone_names():
    assert zone_name(ZoneInfo(BERLIN)) == BERLIN
    assert zone_name(timezone.utc) == "UTC"
    assert zone_name(None) == "local time"
