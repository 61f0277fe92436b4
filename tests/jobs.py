"""Job functions used by the tests; importable by reference from every process."""

import threading
import time

calls: list[tuple[str, float]] = []
_lock = threading.Lock()


def noop() -> None:
    """Does nothing."""


def record(tag: str = "ran") -> None:
    """Notes that it ran (in this process)."""
    with _lock:
        calls.append((tag, time.time()))


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def fail(message: str = "boom") -> None:
    raise ValueError(message)


async def async_record(tag: str = "async") -> None:
    with _lock:
        calls.append((tag, time.time()))


def record_db(tag: str = "db") -> None:
    """Runs a query on the Django database, then notes that it ran (in this process)."""
    from django_apscheduler.models import DjangoJob

    DjangoJob.objects.filter(id=tag).exists()
    record(tag)


async def async_fail(message: str = "async boom") -> None:
    """An async job function that raises."""
    raise RuntimeError(message)


def count_jobs(tag: str = "count") -> None:
    """Uses the ORM from the job's thread: notes how many DjangoJob rows exist."""
    from django_apscheduler.models import DjangoJob

    with _lock:
        calls.append((f"{tag}:{DjangoJob.objects.count()}", time.time()))


# Functions the admin's form may schedule (its allow-list); see django_apscheduler.functions.
from django_apscheduler.functions import schedulable  # noqa: E402


@schedulable(label="Record a call (tests)")
def admin_record(tag: str = "admin") -> None:
    """Notes that it ran, like ``record``; on the admin's allow-list."""
    record(tag)


@schedulable
def admin_fail(message: str = "admin boom") -> None:
    """Raises ``ValueError(message)``; on the admin's allow-list."""
    raise ValueError(message)


def wait_for_file(path: str, timeout: float = 120.0) -> None:
    """Runs until ``path`` exists (or ``timeout`` s): a job the test releases when it wants."""
    import os

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)
