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
    # Seconds a scheduler instance holds a job it has taken from the database
    # (while it dispatches it, and for as long as the job runs in it). An
    # instance that stops heartbeating loses its jobs to the others after this
    # long, and its unfinished runs are marked "Interrupted".
    "APSCHEDULER_LEASE_TIME": 10,
    # Seconds between two heartbeats of a scheduler instance; each one also
    # extends the leases it holds. Must be well below the lease time.
    "APSCHEDULER_HEARTBEAT_INTERVAL": 4,
    # Seconds between two checks, by every running scheduler, for jobs that
    # another process added or changed (one indexed query). On PostgreSQL such
    # changes also arrive at once through LISTEN/NOTIFY.
    "APSCHEDULER_POLL_INTERVAL": 2,
    # Most due jobs one scheduler takes from the database in one dispatch round;
    # the rest wait for its next round or go to other schedulers.
    "APSCHEDULER_DISPATCH_BATCH_SIZE": 500,
}


def get(name: str) -> Any:
    """Return the value of setting ``name``, or its default."""
    return getattr(settings, name, DEFAULTS[name])
