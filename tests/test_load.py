"""Issue 2, "under load it must keep up": 1,000 jobs due at once on a 10-thread pool.

Every run must be executed and logged, on every backend; on SQLite the
scheduler's job updates and the recorder's batches compete for the one write
lock ("database is locked" must not lose runs). Misfire grace is off, so no
run may be skipped for waiting in the executor's queue.

The wall times are printed for information only; nothing asserts on them.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection, transaction
from django.db.backends.signals import connection_created

from django_apscheduler import db, executions
from django_apscheduler.models import DjangoJob, DjangoJobExecution
from tests import jobs
from tests.helpers import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

JOBS = 1000
THREADS = 10


@pytest.mark.parametrize("trigger", ["date", "interval"])
def test_a_thousand_jobs_due_at_once_are_all_run_and_logged(make_scheduler, trigger, capsys):
    _run_a_thousand_jobs(make_scheduler, trigger, capsys)


@pytest.fixture
def no_busy_timeout(vendor):
    """SQLite connections that answer "database is locked" at once instead of waiting."""
    if vendor != "sqlite":
        pytest.skip("SQLite's busy timeout")

    def no_wait(sender, connection, **kwargs):
        connection.cursor().execute("PRAGMA busy_timeout = 0")

    connection_created.connect(no_wait, weak=False)
    connection.close()
    yield
    connection_created.disconnect(no_wait)
    connection.close()


@pytest.mark.parametrize("trigger", ["date", "interval"])
def test_database_is_locked_loses_no_run(make_scheduler, trigger, capsys, no_busy_timeout, caplog):
    """With no busy timeout, every collision of the scheduler's job updates, the
    recorder's batches and the scheduler's reads is a "database is locked" error.
    """
    _run_a_thousand_jobs(make_scheduler, trigger, capsys, label=" (busy_timeout=0)")
    assert any("locked" in record.getMessage() for record in caplog.records), (
        "no lock collision happened: the test proves nothing"
    )


def _run_a_thousand_jobs(make_scheduler, trigger, capsys, label=""):
    scheduler = make_scheduler(start=False, threads=THREADS)
    scheduler.start(paused=True)  # nothing runs while the jobs are added
    due = datetime.now(timezone.utc) - timedelta(seconds=1)
    ids = [f"load-{i:04d}" for i in range(JOBS)]
    if trigger == "date":
        # One-shot jobs: after its run, the scheduler marks each one finished.
        trigger_args = {"trigger": "date", "run_date": due}
    else:
        # Repeating jobs: after its run, the scheduler stores each one's next run time.
        trigger_args = {"trigger": "interval", "hours": 1, "next_run_time": due}

    started = time.monotonic()
    # One transaction for all the inserts: without it, each add_job commits on its own.
    with transaction.atomic():
        for job_id in ids:
            scheduler.add_job(
                jobs.record, id=job_id, args=[job_id], misfire_grace_time=None, **trigger_args
            )
    added = time.monotonic()
    assert DjangoJob.objects.filter(next_run_time__lte=due).count() == JOBS

    scheduler.resume()
    wait_until(lambda: len(jobs.calls) >= JOBS, timeout=600, interval=0.2)
    ran = time.monotonic()
    assert executions.recorder.flush(timeout=600), "the recorder did not catch up"
    logged = time.monotonic()

    # Executed in this process: every job exactly once.
    assert sorted(tag for tag, _ in jobs.calls) == ids

    # Logged: one "Executed" row per job, none left at "Started execution".
    # The test's own reads collide with the still running scheduler's writes
    # too (no busy timeout): they are retried like the store's.
    statuses = _read(
        lambda: Counter(
            DjangoJobExecution.objects.filter(job_id__in=ids).values_list("status", flat=True)
        )
    )
    assert statuses == {DjangoJobExecution.SUCCESS: JOBS}
    distinct = _read(
        lambda: (
            DjangoJobExecution.objects.filter(job_id__in=ids).values("job_id").distinct().count()
        )
    )
    assert distinct == JOBS

    # The scheduler's own bookkeeping of the round is complete too.
    wait_until(
        lambda: not _read(lambda: DjangoJob.objects.filter(next_run_time__lte=due).exists()),
        timeout=120,
    )
    assert scheduler.running and scheduler._thread.is_alive()

    with capsys.disabled():
        print(
            f"\n[load] {connection.vendor}{label}, {trigger} jobs: add {JOBS} jobs {added - started:.1f} s;"
            f" resume -> all {JOBS} run {ran - added:.1f} s;"
            f" all logged {logged - added:.1f} s after resume"
        )


def _read(query):
    """Run a read of the test's own, retried after "database is locked" as the store retries."""
    return db.run_resiliently(query, using="default", description="read the test's results")
