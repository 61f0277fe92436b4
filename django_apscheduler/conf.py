"""The package's settings, read from ``django.conf.settings`` with their defaults.

Every setting is read at the moment it is needed, so ``override_settings`` in
tests and changes at start-up are honoured.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

#: Defaults of every ``APSCHEDULER_*`` setting this app reads.
DEFAULTS: dict[str, Any] = {
    # Format used to show datetimes in the admin (a Django date format string).
    "APSCHEDULER_DATETIME_FORMAT": "N j, Y, f:s a",
    # Seconds the admin's "Run the selected django jobs" action waits for the jobs.
    "APSCHEDULER_RUN_NOW_TIMEOUT": 15,
    # Seconds a store operation keeps retrying after the database connection was
    # lost before it gives up (the scheduler's own dispatch loop never gives up
    # while the scheduler runs).
    "APSCHEDULER_DB_RETRY_TIMEOUT": 30,
}


def get(name: str) -> Any:
    """Return the value of setting ``name``, or its default."""
    return getattr(settings, name, DEFAULTS[name])
