"""Small helpers shared by the tests."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")

#: The nine migrations of django-apscheduler 0.7.0, as ``django_migrations`` records them.
OLD_MIGRATIONS = [
    "0001_initial",
    "0002_auto_20180412_0758",
    "0003_auto_20200716_1632",
    "0004_auto_20200717_1043",
    "0005_migrate_name_to_id",
    "0006_remove_djangojob_name",
    "0007_auto_20200717_1404",
    "0008_remove_djangojobexecution_started",
    "0009_djangojobexecution_unique_job_executions",
]
#: Our migration that stands for them.
SQUASHED = "0001_squashed_0009_djangojobexecution_unique_job_executions"


def wait_until(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` s.

    This bounds how long a test waits for something that must happen; it is
    not a speed assertion (the timeout is generous on purpose).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def runapscheduler_env(overrides: dict[str, Any], **extra: str) -> dict[str, str]:
    """The environment of a ``manage.py runapscheduler`` subprocess on the test database.

    ``overrides`` are settings over ``tests.settings`` (``tests/settings.py``
    reads them from ``DJANGO_APSCHEDULER_TEST_SETTINGS``); ``extra`` are more
    environment variables.
    """
    from django.db import connection

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DJANGO_APSCHEDULER_TEST_DB_NAME=str(connection.settings_dict["NAME"]),
        DJANGO_APSCHEDULER_TEST_SETTINGS=json.dumps(overrides),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env
