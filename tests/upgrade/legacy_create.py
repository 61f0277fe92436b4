"""Builds a django-apscheduler 0.7.0 database, with the real 0.7.0.

Runs inside the throwaway virtual environment of ``tests/test_upgrade_070.py``
(``DJANGO_SETTINGS_MODULE=upgrade_settings``, only this folder on the path),
so everything here is done by 0.7.0 itself: its migrations, its
DjangoJobStore and its execution log. Writes what it made as JSON to the file
named by the first argument.

Usage: python legacy_create.py OUTPUT.json
"""

import json
import pickle
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from importlib import metadata

import django

#: The jobs that run once while 0.7.0 is in charge, and the status 0.7.0 must log.
RUN_NOW = {"interval": "Executed", "cron": "Executed", "with_args": "Executed", "failing": "Error!"}


def add_jobs(scheduler, store, now):
    import upgrade_jobs
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.date import DateTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    # A row written by a store built with pickle_protocol=2 (added first, and
    # never due here, so that no later update rewrites it with protocol 5).
    store.pickle_protocol = 2
    scheduler.add_job(upgrade_jobs.mark, "interval", days=1, id="protocol_2", args=["protocol_2"])
    store.pickle_protocol = pickle.HIGHEST_PROTOCOL

    scheduler.add_job(
        upgrade_jobs.mark,
        IntervalTrigger(hours=1),
        id="interval",
        args=["interval"],
        next_run_time=now,
    )
    scheduler.add_job(
        upgrade_jobs.mark,
        CronTrigger(day_of_week="mon-fri", hour=3, minute=30, timezone="Europe/Berlin"),
        id="cron",
        args=["cron"],
        next_run_time=now,
    )
    scheduler.add_job(
        upgrade_jobs.mark,
        "interval",
        minutes=30,
        id="with_args",
        name="A job with arguments",
        args=["with_args", 1, "two", [3, 4.5]],
        kwargs={"flag": True, "nested": {"a": None, "b": [1, 2]}},
        misfire_grace_time=120,
        coalesce=False,
        max_instances=2,
        next_run_time=now,
    )
    scheduler.add_job(
        upgrade_jobs.fail,
        "interval",
        hours=1,
        id="failing",
        args=["failing", "legacy boom"],
        next_run_time=now,
    )
    scheduler.add_job(
        upgrade_jobs.mark,
        DateTrigger(now + timedelta(days=30)),
        id="date_future",
        args=["date_future"],
    )
    scheduler.add_job(upgrade_jobs.mark, "interval", minutes=5, id="paused", args=["paused"])
    scheduler.pause_job("paused")


def wait_for_runs(timeout=60.0):
    """Waits (bounded) until 0.7.0 logged the final status of every RUN_NOW job."""
    from django.db import close_old_connections

    from django_apscheduler.models import DjangoJobExecution

    deadline = time.monotonic() + timeout
    while True:
        logged = dict(
            DjangoJobExecution.objects.filter(job_id__in=RUN_NOW).values_list("job_id", "status")
        )
        if logged == RUN_NOW:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"0.7.0 did not log the runs within {timeout} s: {logged}")
        close_old_connections()
        time.sleep(0.1)


def add_history(now):
    """Older executions, written through 0.7.0's own atomic_update_or_create."""
    from django_apscheduler.models import DjangoJobExecution as E

    lock = threading.RLock()
    history = [
        ("interval", now - timedelta(hours=3), E.SUCCESS, None, None),
        ("interval", now - timedelta(hours=2), E.SUCCESS, None, None),
        ("cron", now - timedelta(days=1), E.SENT, None, None),
        (
            "failing",
            now - timedelta(hours=2),
            E.ERROR,
            "older boom",
            'Traceback (most recent call last):\n  File "upgrade_jobs.py", line 40, in fail\n'
            "ValueError: older boom\n",
        ),
        (
            "paused",
            now - timedelta(hours=5),
            E.MISSED,
            "Run time of job 'paused' was missed!",
            None,
        ),
        (
            "with_args",
            now - timedelta(hours=4, microseconds=123456),
            E.MAX_INSTANCES,
            "Execution of job 'with_args' skipped: maximum number of running instances reached!",
            None,
        ),
    ]
    for job_id, run_time, status, exception, traceback in history:
        E.atomic_update_or_create(lock, job_id, run_time, status, exception, traceback)


def main(output):
    django.setup()

    import upgrade_common
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler
    from django.core.management import call_command

    import django_apscheduler
    from django_apscheduler.jobstores import DjangoJobStore

    version = metadata.version("django-apscheduler")
    if version != "0.7.0":
        raise SystemExit(f"expected django-apscheduler 0.7.0 here, found {version}")

    call_command("migrate", verbosity=1)

    store = DjangoJobStore()
    scheduler = BackgroundScheduler(
        jobstores={"default": store},
        executors={"default": ThreadPoolExecutor(4)},
        # No misfires however slow the machine: the jobs made due must run.
        job_defaults={"misfire_grace_time": None},
        timezone="UTC",
    )
    scheduler.start()
    now = datetime.now(timezone.utc)
    add_jobs(scheduler, store, now)
    wait_for_runs()
    scheduler.shutdown(wait=True)

    add_history(now)

    from django.db import connection

    result = {
        "django_apscheduler": {"version": version, "file": django_apscheduler.__file__},
        "django": metadata.version("django"),
        "apscheduler": metadata.version("apscheduler"),
        "python": sys.version,
        "prefix": sys.prefix,
        "vendor": connection.vendor,
        "migrations": upgrade_common.recorded_migrations(),
        "schema": upgrade_common.schema_snapshot(),
        "executions": upgrade_common.execution_rows(),
        "job_rows": upgrade_common.job_rows(),
        "jobs": upgrade_common.stored_jobs(),
        "run_now": RUN_NOW,
    }
    with open(output, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
