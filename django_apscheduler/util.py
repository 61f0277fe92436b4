"""Helpers that django-apscheduler 0.7.0 exposed: datetime conversion and DB decorators."""

from __future__ import annotations

import functools
import logging
from datetime import datetime
from typing import Any, Callable, TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connections
from django.db import close_old_connections as _close_old
from django.utils import formats, timezone

from django_apscheduler import conf

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def get_dt_format() -> str:
    """Return the date format used to show datetimes (``APSCHEDULER_DATETIME_FORMAT``)."""
    return formats.get_format(conf.get("APSCHEDULER_DATETIME_FORMAT"))


def get_local_dt_format(dt: datetime) -> str:
    """Format ``dt`` for display, in the current time zone when ``USE_TZ`` is on."""
    if settings.USE_TZ and timezone.is_aware(dt):
        dt = timezone.localtime(dt)
    return formats.date_format(dt, get_dt_format())


def get_django_internal_datetime(dt: datetime | None) -> datetime | None:
    """Return ``dt`` as Django stores it: aware under ``USE_TZ``, naive otherwise."""
    if not dt:
        return dt
    if settings.USE_TZ:
        if timezone.is_naive(dt):
            return timezone.make_aware(dt)
        return dt
    if timezone.is_aware(dt):
        return timezone.make_naive(dt)
    return dt


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
