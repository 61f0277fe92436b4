"""Helpers that django-apscheduler 0.7.0 exposed: datetime conversion and DB decorators.

Also the one place that turns the datetimes the database stores back into
instants (:func:`stored_instant`). With ``USE_TZ = True`` Django stores
instants. With ``USE_TZ = False`` it stores naive local times of
``TIME_ZONE`` (as django-apscheduler 0.7.0 did, and as the admin and an
operator's SQL expect); such a time names two instants in the hour when
clocks are set back, so a job's next run time is disambiguated by the aware
time its pickled state holds.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any, Callable, Generic, TypeVar, overload

from django.conf import settings
from django.db import InterfaceError, OperationalError, connections
from django.db import close_old_connections as _close_old
from django.utils import formats, timezone

from django_apscheduler import conf, signing

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: More than any UTC offset change a time zone makes at once (DST shifts are
#: 30 minutes to 2 hours): naive local times further apart than this are in
#: the same order as the instants they stand for.
MAX_OFFSET_CHANGE = timedelta(hours=3)

#: A stored next run time this close to the one in the job's pickled state is
#: the same one: a column may keep whole seconds only (MySQL tables from before
#: 5.6.4), while the state keeps microseconds.
STORED_PRECISION = timedelta(seconds=1)


def get_dt_format() -> str:
    """Return the date format used to show datetimes (``APSCHEDULER_DATETIME_FORMAT``)."""
    return formats.get_format(conf.datetime_format())


def get_local_dt_format(dt: datetime) -> str:
    """Format ``dt`` for display, in the current time zone when ``USE_TZ`` is on."""
    if settings.USE_TZ and timezone.is_aware(dt):
        dt = timezone.localtime(dt)
    return formats.date_format(dt, get_dt_format())


@overload
def get_django_internal_datetime(dt: datetime) -> datetime: ...
@overload
def get_django_internal_datetime(dt: None) -> None: ...
@overload
def get_django_internal_datetime(dt: datetime | None) -> datetime | None: ...


def get_django_internal_datetime(dt: datetime | None) -> datetime | None:
    """Return ``dt`` as Django stores it: aware under ``USE_TZ``, naive otherwise."""
    if not dt:
        return dt
    if settings.USE_TZ:
        if timezone.is_naive(dt):
            return timezone.make_aware(dt)
        return dt
    if timezone.is_aware(dt):
        # Through UTC: a time APScheduler computed in a gap of TIME_ZONE itself
        # (02:15+01:00 on the spring-forward night) becomes the local time of
        # its instant (03:15), not a local time that does not exist.
        return timezone.make_naive(dt.astimezone(dt_timezone.utc))
    return dt


@overload
def stored_instant(value: datetime, hint: datetime | None = None) -> datetime: ...
@overload
def stored_instant(value: None, hint: datetime | None = None) -> None: ...
@overload
def stored_instant(value: datetime | None, hint: datetime | None = None) -> datetime | None: ...


def stored_instant(value: datetime | None, hint: datetime | None = None) -> datetime | None:
    """The instant (an aware datetime) that a datetime read from the database stands for.

    An aware ``value`` (``USE_TZ = True``) is returned as it is. A naive one is
    a local time of ``TIME_ZONE``; ``hint``, an aware datetime such as the
    job's next run time from its pickled state, picks which of the two
    instants an ambiguous local time (the repeated hour of autumn) names, when
    it shows the same local time (within :data:`STORED_PRECISION`). Otherwise
    the local time is read as Django reads it (the earlier instant if
    ambiguous).
    """
    if value is None or timezone.is_aware(value):
        return value
    if hint is not None and timezone.is_aware(hint):
        local = get_django_internal_datetime(hint)
        if local is not None and abs(local - value) < STORED_PRECISION:
            # In UTC: adding to a local time would drop its fold.
            return hint.astimezone(dt_timezone.utc) + (value - local)
    return timezone.make_aware(value)


def same_instant(
    a: datetime | None, b: datetime | None, tolerance: timedelta = timedelta(0)
) -> bool:
    """True if two aware datetimes (or Nones) are the same instant, give or take ``tolerance``.

    Compared in UTC: Python compares datetimes that share a ``tzinfo`` by
    their wall times, which is wrong for a time in a gap or fold.
    """
    if a is None or b is None:
        return a is b
    return abs(a.astimezone(dt_timezone.utc) - b.astimezone(dt_timezone.utc)) <= tolerance


def utc(dt: datetime) -> datetime:
    """``dt`` (aware) in UTC, so that comparisons and sorting follow the instants."""
    return dt.astimezone(dt_timezone.utc)


def is_ambiguous(value: datetime) -> bool:
    """True if ``value``, a naive local time of ``TIME_ZONE``, names two instants (or none)."""
    zone = timezone.get_default_timezone()
    return (
        value.replace(fold=0).replace(tzinfo=zone).utcoffset()
        != value.replace(fold=1).replace(tzinfo=zone).utcoffset()
    )


def local_time_margin(now: datetime) -> timedelta | None:
    """None if stored datetimes can be compared with the instant ``now`` in SQL, as they are.

    That holds with ``USE_TZ = True``, and with naive local times except near
    a UTC offset change of ``TIME_ZONE``: around the night clocks are set
    back, local times do not follow the order of the instants. There the
    candidates must be compared one by one (:func:`stored_instant`), and the
    returned margin is how far past the local time of ``now`` a time that is
    already due may stand (the shift, within the hours after a set-back).
    """
    if settings.USE_TZ:
        return None
    zone = timezone.get_default_timezone()
    now = now.astimezone(dt_timezone.utc)
    before, current, after = (
        (now + delta).astimezone(zone).utcoffset()
        for delta in (-MAX_OFFSET_CHANGE, timedelta(0), MAX_OFFSET_CHANGE)
    )
    if before == current == after:
        return None
    return max(timedelta(0), before - current)  # type: ignore[operator]


def state_next_run_time(
    job_id: str, job_state: bytes | memoryview, job_signature: str | None
) -> datetime | None:
    """The next run time a row's pickled state holds, or None if it cannot be read.

    Only a state whose signature verifies is unpickled (see ``signing``).
    """
    try:
        value = signing.load_state(job_id, job_state, job_signature).get("next_run_time")
    except Exception:  # a broken state: the job store reports it when it restores the job
        return None
    return value if isinstance(value, datetime) else None


def get_apscheduler_datetime(dt: datetime | None, scheduler: Any) -> datetime | None:
    """Make a naive ``dt`` aware in the scheduler's time zone; leave other values alone."""
    if not dt:
        return dt
    if timezone.is_naive(dt):
        return timezone.make_aware(dt, timezone=scheduler.timezone)
    return dt


def retry_on_db_operational_error(func: F) -> F:
    """Run ``func`` again once if the database connection failed.

    Kept from 0.7.0 for user code. Inside a transaction nothing can be retried,
    so the error propagates there unchanged. The job store itself uses the
    more thorough ``django_apscheduler.db.run_resiliently``.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            if any(conn.in_atomic_block for conn in connections.all(initialized_only=True)):
                raise
            logger.warning(
                "DB error executing '%s' (%s). Retrying with a new DB connection...",
                func.__name__,
                exc,
            )
            for conn in connections.all(initialized_only=True):
                conn.close()
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def close_old_connections(func: F) -> F:
    """Close stale database connections before and after ``func`` runs.

    Meant for job functions: a scheduler thread lives far longer than a
    request, so connections that the server dropped or that passed
    ``CONN_MAX_AGE`` must be replaced around each run, as Django does around
    each request.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _close_old()
        try:
            return func(*args, **kwargs)
        finally:
            _close_old()

    return wrapper  # type: ignore[return-value]


K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    """A thread-safe mapping that keeps only its ``limit`` newest entries.

    For what one part of a process notes for another to take later (a run's
    start, a task's row) when the taker may never come: a lost entry costs
    a lookup, never memory without bound.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._limit:
                self._items.popitem(last=False)

    def pop(self, key: K) -> V | None:
        """The value noted for ``key``, forgotten here; None if there is none."""
        with self._lock:
            return self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)
