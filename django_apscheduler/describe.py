"""A job's schedule in words, for people: "every 10 seconds", "at 03:00 on weekdays (UTC)".

:func:`describe_trigger` covers every trigger APScheduler 3 ships: interval,
calendar interval, cron (every field and expression form: ``*``, ``*/5``,
ranges with and without steps, lists, month and weekday names, ``last``,
``2nd fri``, ``last fri``), date, and the combining ``AndTrigger`` and
``OrTrigger``, nested to any depth. Wall-clock schedules (cron, date,
calendar interval) name their time zone, because "at 03:00" means nothing
without one. A trigger this module does not know is shown as its ``str()``.

It reads only the triggers' public attributes (``interval``, ``fields``,
``expressions``, ``run_date``, ``triggers``...) and, for the calendar interval
trigger, its pickled state (``__getstate__``): no private attribute. All text
goes through gettext, so the admin shows it translated.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, tzinfo
from typing import Any, Sequence

from apscheduler.triggers.calendarinterval import CalendarIntervalTrigger
from apscheduler.triggers.combining import AndTrigger, OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.cron.expressions import (
    AllExpression,
    LastDayOfMonthExpression,
    RangeExpression,
    WeekdayPositionExpression,
)
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

__all__ = ["describe_trigger", "describe_interval", "zone_name"]

#: How many explicit times of day a cron schedule lists before it is described field by field.
MAX_LISTED_TIMES = 8


def describe_trigger(trigger: Any) -> str:
    """The schedule of ``trigger`` in words, in the active language."""
    if isinstance(trigger, IntervalTrigger):
        return _interval(trigger)
    if isinstance(trigger, CalendarIntervalTrigger):
        return _calendar_interval(trigger)
    if isinstance(trigger, CronTrigger):
        return _cron(trigger)
    if isinstance(trigger, DateTrigger):
        return _("once at %(time)s (%(zone)s)") % {
            "time": _when(trigger.run_date),
            "zone": zone_name(trigger.run_date.tzinfo),
        }
    if isinstance(trigger, (AndTrigger, OrTrigger)):
        return _combining(trigger)
    return str(trigger)


# ---------------------------------------------------------------- shared words


def zone_name(zone: tzinfo | None) -> str:
    """``"Europe/Berlin"`` for a zoneinfo/pytz zone, its ``tzname`` otherwise, "local" for None."""
    if zone is None:
        return _("local time")
    key = getattr(zone, "key", None) or getattr(zone, "zone", None)
    if key:
        return str(key)
    return str(zone.tzname(None) or zone)


def _when(value: datetime | date) -> str:
    """``2026-12-24 18:00`` (seconds only when not zero), in the value's own time zone."""
    if not isinstance(value, datetime):
        return value.isoformat()
    text = value.strftime("%Y-%m-%d %H:%M")
    if value.second or value.microsecond:
        text += value.strftime(":%S")
    return text


def _join(items: Sequence[str], word: str | None = None) -> str:
    """``a``, ``a and b``, ``a, b and c`` (or with ``or``)."""
    word = _("and") if word is None else word
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


def _bounds(trigger: Any, start_shown: bool = False) -> str:
    """`` until 2027-01-01 00:00`` (and `` from ...`` when asked), plus the jitter."""
    text = ""
    if start_shown and getattr(trigger, "start_date", None) is not None:
        text += " " + _("from %(time)s") % {"time": _when(trigger.start_date)}
    if getattr(trigger, "end_date", None) is not None:
        text += " " + _("until %(time)s") % {"time": _when(trigger.end_date)}
    jitter = getattr(trigger, "jitter", None)
    if jitter:
        text += " " + ngettext(
            "with up to %(count)s second of jitter",
            "with up to %(count)s seconds of jitter",
            jitter,
        ) % {"count": jitter}
    return text


# ---------------------------------------------------------------- interval


def describe_interval(interval: timedelta) -> str:
    """``every 10 seconds``, ``every hour``, ``every 2 days, 3 hours and 30 minutes``."""
    seconds = int(interval.total_seconds())
    units = [
        (7 * 86400, "week"),
        (86400, "day"),
        (3600, "hour"),
        (60, "minute"),
        (1, "second"),
    ]
    parts: list[tuple[int, str]] = []
    for size, unit in units:
        count, seconds = divmod(seconds, size)
        if count:
            parts.append((count, unit))
    if not parts:  # below one second: APScheduler makes that one second
        parts = [(1, "second")]
    if len(parts) == 1 and parts[0][0] == 1:
        return _every_one(parts[0][1])
    return _("every %(amount)s") % {"amount": _join([_amount(n, unit) for n, unit in parts])}


def _every_one(unit: str) -> str:
    return {
        "week": _("every week"),
        "day": _("every day"),
        "hour": _("every hour"),
        "minute": _("every minute"),
        "second": _("every second"),
        "month": _("every month"),
        "year": _("every year"),
    }[unit]


def _amount(count: int, unit: str) -> str:
    forms = {
        "year": ngettext("%(count)d year", "%(count)d years", count),
        "month": ngettext("%(count)d month", "%(count)d months", count),
        "week": ngettext("%(count)d week", "%(count)d weeks", count),
        "day": ngettext("%(count)d day", "%(count)d days", count),
        "hour": ngettext("%(count)d hour", "%(count)d hours", count),
        "minute": ngettext("%(count)d minute", "%(count)d minutes", count),
        "second": ngettext("%(count)d second", "%(count)d seconds", count),
    }
    return forms[unit] % {"count": count}


def _interval(trigger: IntervalTrigger) -> str:
    return describe_interval(trigger.interval) + _bounds(trigger)


def _calendar_interval(trigger: CalendarIntervalTrigger) -> str:
    state = trigger.__getstate__()
    years, months, weeks, days = state["interval"]
    hour, minute, second = state["time"]
    parts = [
        (n, unit)
        for n, unit in ((years, "year"), (months, "month"), (weeks, "week"), (days, "day"))
        if n
    ]
    if len(parts) == 1 and parts[0][0] == 1:
        every = _every_one(parts[0][1])
    else:
        every = _("every %(amount)s") % {"amount": _join([_amount(n, u) for n, u in parts])}
    text = _("%(every)s at %(time)s") % {"every": every, "time": _clock(hour, minute, second)}
    text += " " + _("from %(time)s") % {"time": _when(trigger.start_date)}
    return f"{text}{_bounds(trigger)} ({zone_name(trigger.timezone)})"


# ---------------------------------------------------------------- cron


def _weekday_name(number: int, plural: bool = False) -> str:
    names = [
        (_("Monday"), _("Mondays")),
        (_("Tuesday"), _("Tuesdays")),
        (_("Wednesday"), _("Wednesdays")),
        (_("Thursday"), _("Thursdays")),
        (_("Friday"), _("Fridays")),
        (_("Saturday"), _("Saturdays")),
        (_("Sunday"), _("Sundays")),
    ]
    return names[number][1 if plural else 0]


def _month_name(number: int) -> str:
    return [
        _("January"),
        _("February"),
        _("March"),
        _("April"),
        _("May"),
        _("June"),
        _("July"),
        _("August"),
        _("September"),
        _("October"),
        _("November"),
        _("December"),
    ][number - 1]


def _ordinal(position: int) -> str:
    return [_("1st"), _("2nd"), _("3rd"), _("4th"), _("5th"), _("last")][position]


def _clock(hour: int, minute: int, second: int = 0) -> str:
    return f"{hour:02d}:{minute:02d}" + (f":{second:02d}" if second else "")


def _is_all(field: Any) -> bool:
    """``*`` without a step: the field does not restrict anything."""
    exprs = field.expressions
    return len(exprs) == 1 and type(exprs[0]) is AllExpression and not exprs[0].step


def _fixed_values(field: Any) -> list[int] | None:
    """The field's values when it lists single values only (``3``, ``1,15``), else None."""
    values = []
    for expr in field.expressions:
        if not isinstance(expr, RangeExpression) or expr.step or expr.first != expr.last:
            return None
        values.append(expr.first)
    return sorted(set(values))


def _every_step(step: int, unit: str) -> str:
    if step == 1:
        return _every_one(unit)
    return _("every %(amount)s") % {"amount": _amount(step, unit)}


def _time_expression(expr: Any, unit: str, show: Any) -> str:
    """One expression of the second, minute or hour field, as a phrase."""
    if type(expr) is AllExpression:
        return _every_step(expr.step or 1, unit)
    if expr.last is None:  # "5/10": from 5 to the end, every 10
        return _("%(every)s from %(first)s") % {
            "every": _every_step(expr.step, unit),
            "first": show(expr.first),
        }
    if expr.first == expr.last:
        return show(expr.first)
    return _("%(every)s from %(first)s to %(last)s") % {
        "every": _every_step(expr.step or 1, unit),
        "first": show(expr.first),
        "last": show(expr.last),
    }


def _cron_time(second: Any, minute: Any, hour: Any) -> tuple[str, bool]:
    """The time-of-day part of a cron schedule, and whether it names fixed times of day."""
    s, m, h = _fixed_values(second), _fixed_values(minute), _fixed_values(hour)
    if (
        s is not None
        and m is not None
        and h is not None
        and len(s) * len(m) * len(h) <= (MAX_LISTED_TIMES)
    ):
        times = [_clock(hh, mm, ss) for hh in h for mm in m for ss in s]
        return _("at %(times)s") % {"times": _join(times)}, True

    parts: list[str] = []
    # Seconds: "every 10 seconds", "at second 30"; second 0 goes without saying.
    if s is None:
        parts.append(_join([_time_expression(e, "second", str) for e in second.expressions]))
    elif s != [0]:
        parts.append(
            ngettext("at second %(values)s", "at seconds %(values)s", len(s))
            % {"values": _join([str(v) for v in s])}
        )
    # Minutes.
    if m is None:
        if not (_is_all(minute) and s is None):  # every second covers every minute
            phrase = _join([_time_expression(e, "minute", str) for e in minute.expressions])
            parts.append(phrase if not parts else _("of %(minutes)s") % {"minutes": phrase})
    else:
        values = _join([str(v) for v in m])
        if s is None:
            parts.append(
                ngettext("during minute %(values)s", "during minutes %(values)s", len(m))
                % {"values": values}
            )
        else:
            parts.append(
                ngettext("at minute %(values)s", "at minutes %(values)s", len(m))
                % {"values": values}
            )
    # Hours.
    if h is None:
        hourly = [e for e in hour.expressions]
        if _is_all(hour):
            if m is not None:
                parts.append(_("of every hour"))
        elif len(hourly) == 1 and not hourly[0].step and type(hourly[0]) is RangeExpression:
            expr = hourly[0]
            parts.append(
                _("between %(first)s and %(last)s")
                % {"first": _clock(expr.first, 0), "last": _clock(expr.last, 59)}
            )
        else:
            phrase = _join([_time_expression(e, "hour", str) for e in hourly])
            parts.append(_("of %(hours)s") % {"hours": phrase} if m is not None else phrase)
    else:
        parts.append(
            ngettext("during hour %(values)s", "during hours %(values)s", len(h))
            % {"values": _join([str(v) for v in h])}
        )
    return " ".join(parts), False


def _day_expression(expr: Any) -> str:
    if isinstance(expr, LastDayOfMonthExpression):
        return _("the last day")
    if isinstance(expr, WeekdayPositionExpression):
        return _("the %(position)s %(weekday)s") % {
            "position": _ordinal(expr.option_num),
            "weekday": _weekday_name(expr.weekday),
        }
    if type(expr) is AllExpression:
        return _("every %(nth)s day") % {"nth": _nth(expr.step)}
    if expr.last is None:
        return _("every %(nth)s day from day %(first)s") % {
            "nth": _nth(expr.step),
            "first": expr.first,
        }
    if expr.first == expr.last:
        return _("day %(day)s") % {"day": expr.first}
    if expr.step:
        return _("every %(nth)s day from day %(first)s to %(last)s") % {
            "nth": _nth(expr.step),
            "first": expr.first,
            "last": expr.last,
        }
    return _("days %(first)s to %(last)s") % {"first": expr.first, "last": expr.last}


def _nth(step: int | None) -> str:
    step = step or 1
    if step == 1:
        return ""
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(step % 10 if step % 100 not in (11, 12, 13) else 0)
    return f"{step}{suffix or 'th'}"


def _weekday_expression(expr: Any) -> str:
    if type(expr) is AllExpression:
        return _("every %(nth)s day of the week") % {"nth": _nth(expr.step)}
    last = expr.first if expr.last is None else expr.last
    if expr.first == last and not expr.step:
        return _weekday_name(expr.first, plural=True)
    if expr.step:
        return _("every %(nth)s day from %(first)s to %(last)s") % {
            "nth": _nth(expr.step),
            "first": _weekday_name(expr.first),
            "last": _weekday_name(6 if expr.last is None else expr.last),
        }
    return _("%(first)s to %(last)s") % {
        "first": _weekday_name(expr.first),
        "last": _weekday_name(last),
    }


def _month_expression(expr: Any) -> str:
    if type(expr) is AllExpression:
        return _("every %(nth)s month") % {"nth": _nth(expr.step)}
    last = 12 if expr.last is None else expr.last
    if expr.first == last and not expr.step:
        return _month_name(expr.first)
    if expr.step:
        return _("every %(nth)s month from %(first)s to %(last)s") % {
            "nth": _nth(expr.step),
            "first": _month_name(expr.first),
            "last": _month_name(last),
        }
    return _("%(first)s to %(last)s") % {
        "first": _month_name(expr.first),
        "last": _month_name(last),
    }


def _plain_range(expr: Any, unit: str) -> str:
    """A week or year expression: ``ISO week 10``, ``2027 to 2029``, ``every 2nd year``."""
    label = {"year": "", "week": _("ISO week") + " "}[unit]
    every = {"year": _("every %(nth)s year"), "week": _("every %(nth)s ISO week")}[unit]
    if type(expr) is AllExpression:
        return every % {"nth": _nth(expr.step)}
    if expr.last is None:
        return _("%(every)s from %(first)s") % {
            "every": every % {"nth": _nth(expr.step)},
            "first": expr.first,
        }
    if expr.first == expr.last:
        return f"{label}{expr.first}"
    if expr.step:
        return _("%(every)s from %(first)s to %(last)s") % {
            "every": every % {"nth": _nth(expr.step)},
            "first": expr.first,
            "last": expr.last,
        }
    return _("%(label)s%(first)s to %(last)s") % {
        "label": label,
        "first": expr.first,
        "last": expr.last,
    }


def _cron_days(fields: dict[str, Any]) -> list[str]:
    """The calendar part of a cron schedule: days of the week and month, weeks, months, years."""
    parts = []
    weekday = fields["day_of_week"]
    if not _is_all(weekday):
        numbers = _fixed_values(weekday)
        if numbers == [0, 1, 2, 3, 4] or (
            len(weekday.expressions) == 1
            and type(weekday.expressions[0]) is not AllExpression
            and (weekday.expressions[0].first, weekday.expressions[0].last) == (0, 4)
            and not weekday.expressions[0].step
        ):
            parts.append(_("on weekdays"))
        elif numbers == [5, 6] or (
            len(weekday.expressions) == 1
            and type(weekday.expressions[0]) is not AllExpression
            and (weekday.expressions[0].first, weekday.expressions[0].last) == (5, 6)
            and not weekday.expressions[0].step
        ):
            parts.append(_("on weekends"))
        else:
            parts.append(
                _("on %(days)s")
                % {"days": _join([_weekday_expression(e) for e in weekday.expressions])}
            )
    day = fields["day"]
    days = _fixed_values(day)
    if days is not None and len(days) > 1:
        parts.append(_("on days %(days)s of the month") % {"days": _join([str(d) for d in days])})
    elif not _is_all(day):
        parts.append(
            _("on %(days)s of the month")
            % {"days": _join([_day_expression(e) for e in day.expressions])}
        )
    week = fields["week"]
    if not _is_all(week):
        parts.append(
            _("in %(weeks)s")
            % {"weeks": _join([_plain_range(e, "week") for e in week.expressions])}
        )
    month = fields["month"]
    if not _is_all(month):
        parts.append(
            _("in %(months)s")
            % {"months": _join([_month_expression(e) for e in month.expressions])}
        )
    year = fields["year"]
    if not _is_all(year):
        parts.append(
            _("in %(years)s")
            % {"years": _join([_plain_range(e, "year") for e in year.expressions])}
        )
    return parts


def _cron(trigger: CronTrigger) -> str:
    fields = {field.name: field for field in trigger.fields}
    time, fixed = _cron_time(fields["second"], fields["minute"], fields["hour"])
    days = _cron_days(fields)
    if fixed and not days:
        days = [_("every day")]
    text = " ".join([time, *days])
    return f"{text}{_bounds(trigger, start_shown=True)} ({zone_name(trigger.timezone)})"


# ---------------------------------------------------------------- combining


def _combining(trigger: AndTrigger | OrTrigger) -> str:
    parts = [f"[{describe_trigger(t)}]" for t in trigger.triggers]
    if isinstance(trigger, AndTrigger):
        text = _("when all of %(parts)s match") % {"parts": _join(parts)}
    else:
        text = _("whenever any of %(parts)s fires") % {"parts": _join(parts, _("or"))}
    return text + _bounds(trigger)
