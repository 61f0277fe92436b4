from __future__ import annotations

import os

import pytest
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from django.db import connection

from django_apscheduler import executions, runlocks
from django_apscheduler.jobstores import DjangoJobStore
from tests import jobs


def pytest_report_header(config):
    return f"database backend: {os.environ.get('DJANGO_APSCHEDULER_TEST_DB', 'sqlite')}"


@pytest.fixture(scope="session", autouse=True)
def _close_run_lock_session(django_db_setup, django_db_blocker):
    """End the process's run-lock connection before pytest-django drops the test database."""
    yield
    runlocks.locks.close()


@pytest.fixture
def vendor() -> str:
    """The vendor of the database under test: 'sqlite', 'postgresql' or 'mysql'."""
    return connection.vendor


@pytest.fixture(autouse=True)
def _clear_job_calls():
    jobs.calls.clear()
    yield
    jobs.calls.clear()


@pytest.fixture
def make_scheduler():
    """Build background schedulers on a DjangoJobStore; all are shut down after the test."""
    made: list[BackgroundScheduler] = []

    def make(*, start: bool = True, threads: int = 10, **kwargs) -> BackgroundScheduler:
        kwargs.setdefault("jobstores", {"default": DjangoJobStore()})
        kwargs.setdefault("executors", {"default": ThreadPoolExecutor(threads)})
        kwargs.setdefault("timezone", "UTC")
        # The app's own grace time (conf.JOB_DEFAULTS), not APScheduler's 1 s: a job
        # added to run "now" is reported missed on a loaded machine otherwise.
        # A test about misses gives its jobs a grace time of their own.
        kwargs.setdefault("job_defaults", {"misfire_grace_time": 30})
        scheduler = BackgroundScheduler(**kwargs)
        made.append(scheduler)
        if start:
            scheduler.start()
        return scheduler

    yield make
    for scheduler in made:
        if scheduler.running:
            scheduler.shutdown(wait=True)
    executions.recorder.flush(timeout=30)
