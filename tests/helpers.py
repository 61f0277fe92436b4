"""Small helpers shared by the tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
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


def exit_code(proc: subprocess.Popen, timeout: float, log: Path) -> int:
    """The exit code of ``proc``; if it has not exited within ``timeout`` s, fail with its threads.

    The process is started with ``PYTHONFAULTHANDLER=1``, so SIGABRT makes it
    write every thread's stack to its output (``log``) before it dies: a
    process that hangs on its way out says where.
    """
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise AssertionError(
            f"the process did not exit within {timeout} s; its output and threads:\n"
            + log.read_text(errors="replace")
        ) from None


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
