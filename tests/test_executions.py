"""The execution log: one row per (job, run time), 0.7.0's statuses, real schedulers."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobExecutionEvent,
    JobSubmissionEvent,
)

from django_apscheduler import executions
from django_apscheduler.jobstores import DjangoJobStore, DjangoMemoryJobStore
from django_apscheduler.models import DjangoJob, DjangoJobExecution
from tests import jobs
from tests.helpers import wait_until

UTC = timezone.utc
RUN_TIME = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def job_row(db):
    return DjangoJob.objects.create(id="job", next_run_time=RUN_TIME, job_state=b"x")


def submitted(run_times=(RUN_TIME,), job_id="job", code=EVENT_JOB_SUBMITTED):
    return JobSubmissionEvent(code, job_id, "default", list(run_times))


def executed(run_time=RUN_TIME, job_id="job", code=EVENT_JOB_EXECUTED, **kwargs):
    return JobExecutionEvent(code, job_id, "default", run_time, **kwargs)


def only_row(job_id="job") -> DjangoJobExecution:
    rows = list(DjangoJobExecution.objects.filter(job_id=job_id))
    assert len(rows) == 1, rows
    return rows[0]


# --- the write rule, through 0.7.0's synchronous classmethods ----------------------


def test_submission_then_success_is_one_row(job_row):
    first = DjangoJobStore.handle_submission_event(submitted())
    assert isinstance(first, int)
    assert only_row().status == DjangoJobExecution.SENT
    assert only_row().duration is None and only_row().finished is None
    second = DjangoJobStore.handle_execution_event(executed())
    assert second == first
    row = only_row()
    assert row.status == DjangoJobExecution.SUCCESS
    assert row.finished is not None and row.duration is not None


def test_events_out_of_order_keep_the_final_status(job_row):
    DjangoJobStore.handle_error_event(
        executed(code=EVENT_JOB_ERROR, exception=ValueError("bad"), traceback="Traceback...")
    )
    DjangoJobStore.handle_submission_event(submitted())
    row = only_row()
    assert row.status == DjangoJobExecution.ERROR
    assert row.exception == "bad" and row.traceback == "Traceback..."


def test_error_without_exception_uses_070_text(job_row):
    DjangoJobStore.handle_error_event(executed(code=EVENT_JOB_ERROR))
    assert only_row().exception == "Job 'job' raised an error!"


def test_missed_and_max_instances_texts(job_row):
    DjangoJobStore.handle_error_event(executed(code=EVENT_JOB_MISSED))
    row = only_row()
    assert (row.status, row.exception) == (
        DjangoJobExecution.MISSED,
        "Run time of job 'job' was missed!",
    )
    later = RUN_TIME + timedelta(minutes=1)
    DjangoJobStore.handle_submission_event(submitted([later], code=EVENT_JOB_MAX_INSTANCES))
    row = DjangoJobExecution.objects.get(job_id="job", run_time=later)
    assert row.status == DjangoJobExecution.MAX_INSTANCES
    assert row.exception == (
        "Execution of job 'job' skipped: maximum number of running instances reached!"
    )


def test_every_run_time_of_a_submission_is_logged(job_row):
    times = [RUN_TIME + timedelta(minutes=i) for i in range(3)]
    DjangoJobStore.handle_submission_event(submitted(times))
    assert sorted(r.run_time for r in DjangoJobExecution.objects.all()) == times


def test_missing_job_is_skipped_with_a_warning(db, caplog):
    with caplog.at_level(logging.WARNING, logger="django_apscheduler"):
        assert DjangoJobStore.handle_execution_event(executed(job_id="gone")) is None
    assert "Job 'gone' no longer exists!" in caplog.text
    assert DjangoJobExecution.objects.count() == 0


def test_long_exception_text_is_truncated(job_row):
    DjangoJobStore.handle_error_event(
        executed(code=EVENT_JOB_ERROR, exception=RuntimeError("x" * 5000), traceback="t" * 100_000)
    )
    row = only_row()
    assert len(row.exception) == 1000 and row.exception.endswith("...")
    assert len(row.traceback) == 100_000


def test_unicode_exception_text_survives(job_row):
    DjangoJobStore.handle_error_event(
        executed(code=EVENT_JOB_ERROR, exception=RuntimeError("é😀" * 900))
    )
    assert len(only_row().exception) == 1000


def test_atomic_update_or_create_returns_the_instance(job_row):
    row = DjangoJobExecution.atomic_update_or_create(None, "job", RUN_TIME, DjangoJobExecution.SENT)
    assert isinstance(row, DjangoJobExecution) and row.status == DjangoJobExecution.SENT
    row = DjangoJobExecution.atomic_update_or_create(
        None, "job", RUN_TIME, DjangoJobExecution.ERROR, "oops", "tb"
    )
    assert (row.status, row.exception, row.traceback) == (DjangoJobExecution.ERROR, "oops", "tb")
    again = DjangoJobExecution.atomic_update_or_create(
        None, "job", RUN_TIME, DjangoJobExecution.SENT
    )
    assert again.pk == row.pk and again.status == DjangoJobExecution.ERROR
    assert DjangoJobExecution.atomic_update_or_create(None, "nope", RUN_TIME, "Executed") is None


def test_naive_run_time_is_taken_as_current_timezone(job_row):
    DjangoJobExecution.atomic_update_or_create(
        None, "job", datetime(2030, 1, 1, 13, 0), DjangoJobExecution.SUCCESS
    )
    # TIME_ZONE is Europe/Berlin (UTC+1 in January).
    assert only_row().run_time == RUN_TIME


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_of_one_run_leave_one_row():
    DjangoJob.objects.create(id="job", next_run_time=RUN_TIME, job_state=b"x")
    statuses = [DjangoJobExecution.SENT, DjangoJobExecution.SUCCESS] * 4
    errors = []
    barrier = threading.Barrier(len(statuses))

    def write(status):
        try:
            barrier.wait()
            executions.write_now(
                [executions.Record("job", RUN_TIME, status, finished=executions.now_epoch())]
            )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=write, args=(s,)) for s in statuses]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert only_row().status == DjangoJobExecution.SUCCESS


@pytest.mark.django_db(transaction=True)
def test_a_start_reported_after_its_end_is_not_written():
    """APScheduler reports submissions after its round, so a quick run's end usually comes first.

    The end's row is all there is to write: its start costs the recorder no statement.
    """
    from django.db.backends.signals import connection_created

    DjangoJob.objects.create(id="job", next_run_time=RUN_TIME, job_state=b"x")
    recorder = executions.ExecutionRecorder()
    statements: list[str] = []

    def counting(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    def count_the_recorders(sender, connection, **kwargs):
        if threading.current_thread() is recorder._thread:
            connection.execute_wrappers.append(counting)

    connection_created.connect(count_the_recorders)
    try:
        end = executions.Record(
            "job", RUN_TIME, DjangoJobExecution.SUCCESS, finished=RUN_TIME.timestamp() + 2
        )
        recorder.submit([end])
        assert recorder.flush(30)
        assert statements, "the recorder's statements are not counted"
        statements.clear()
        late_start = executions.Record(
            "job", RUN_TIME, DjangoJobExecution.SENT, event="job_submitted"
        )
        recorder.submit([late_start])
        assert recorder.flush(30)
        assert statements == []
        assert not late_start.logged
        # A start reported before the end is written as ever, and so is that end.
        later = RUN_TIME + timedelta(hours=1)
        start = executions.Record("job", later, DjangoJobExecution.SENT, event="job_submitted")
        recorder.submit([start])
        assert recorder.flush(30)
        assert start.logged and statements
        assert DjangoJobExecution.objects.get(run_time=later).status == DjangoJobExecution.SENT
        recorder.submit(
            [
                executions.Record(
                    "job", later, DjangoJobExecution.SUCCESS, finished=later.timestamp() + 1
                )
            ]
        )
        assert recorder.flush(30)
    finally:
        connection_created.disconnect(count_the_recorders)
        recorder.release_connection()
    rows = DjangoJobExecution.objects.order_by("run_time")
    assert [(r.run_time, r.status) for r in rows] == [
        (RUN_TIME, DjangoJobExecution.SUCCESS),
        (later, DjangoJobExecution.SUCCESS),
    ]
    assert rows[0].duration == Decimal("2.00")


@pytest.mark.django_db(transaction=True)
def test_the_recorder_skips_the_runs_of_a_job_that_is_gone(caplog):
    """The foreign key refuses a run of a removed job: the batch's other runs are written."""
    DjangoJob.objects.create(id="job", next_run_time=RUN_TIME, job_state=b"x")
    recorder = executions.ExecutionRecorder()
    later = RUN_TIME + timedelta(hours=1)
    records = [
        executions.Record("job", RUN_TIME, DjangoJobExecution.SENT),
        executions.Record("gone", RUN_TIME, DjangoJobExecution.SENT),
        executions.Record("gone", later, DjangoJobExecution.SUCCESS, finished=later.timestamp()),
        executions.Record("job", later, DjangoJobExecution.SUCCESS, finished=later.timestamp()),
    ]
    try:
        with caplog.at_level(logging.DEBUG, logger="django_apscheduler.executions"):
            recorder.submit(records)
            assert recorder.flush(30)
    finally:
        recorder.release_connection()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "Jobs {'gone'} were removed while their runs were logged" in caplog.text
    rows = DjangoJobExecution.objects.order_by("run_time")
    assert [(r.job_id, r.run_time, r.status) for r in rows] == [
        ("job", RUN_TIME, DjangoJobExecution.SENT),
        ("job", later, DjangoJobExecution.SUCCESS),
    ]


def test_delete_old_job_executions(job_row):
    from django.utils import timezone as dj_tz

    now = dj_tz.now()
    for age in (10, 100, 1000):
        DjangoJobExecution.objects.create(
            job=job_row, run_time=now - timedelta(seconds=age), status=DjangoJobExecution.SUCCESS
        )
    finished = DjangoJob.objects.create(id="done", next_run_time=None, job_state=b"")
    DjangoJobExecution.objects.create(
        job=finished, run_time=now - timedelta(seconds=1000), status=DjangoJobExecution.SUCCESS
    )
    paused = DjangoJob.objects.create(id="paused", next_run_time=None, job_state=b"state")
    deleted = DjangoJobExecution.objects.delete_old_job_executions(max_age=500)
    assert deleted == 2
    ages = sorted(
        round((now - r.run_time).total_seconds()) for r in DjangoJobExecution.objects.all()
    )
    assert ages == [10, 100]
    # The record of a finished one-shot job goes with its last execution; real jobs stay.
    assert not DjangoJob.objects.filter(id="done").exists()
    assert DjangoJob.objects.filter(id__in=["job", "paused"]).count() == 2
    del paused


# --- real schedulers ---------------------------------------------------------------

pytestmark_tx = pytest.mark.django_db(transaction=True)


def logged(job_id, status=None):
    executions.recorder.flush(30)
    rows = DjangoJobExecution.objects.filter(job_id=job_id)
    return list(rows.filter(status=status) if status else rows)


@pytestmark_tx
def test_one_shot_job_keeps_its_history(make_scheduler):
    scheduler = make_scheduler()
    scheduler.add_job(jobs.record, "date", run_date=datetime.now(UTC), id="once", args=["once"])
    wait_until(lambda: logged("once", DjangoJobExecution.SUCCESS))
    row = only_row("once")
    assert row.status == DjangoJobExecution.SUCCESS
    record = DjangoJob.objects.get(id="once")
    assert record.is_finished and record.next_run_time is None
    assert scheduler.get_job("once") is None
    assert scheduler.get_jobs() == []
    # The id can be used again.
    scheduler.add_job(jobs.record, "date", run_date=datetime.now(UTC), id="once", args=["again"])
    wait_until(lambda: len(logged("once", DjangoJobExecution.SUCCESS)) == 2)


@pytestmark_tx
def test_removing_a_job_still_removes_its_history(make_scheduler):
    scheduler = make_scheduler()
    scheduler.add_job(jobs.record, "interval", seconds=30, id="r", next_run_time=datetime.now(UTC))
    wait_until(lambda: logged("r", DjangoJobExecution.SUCCESS))
    scheduler.remove_job("r")
    assert not DjangoJob.objects.filter(id="r").exists()
    assert logged("r") == []


@pytestmark_tx
def test_error_is_logged_with_traceback(make_scheduler):
    scheduler = make_scheduler()
    scheduler.add_job(jobs.fail, "date", run_date=datetime.now(UTC), id="f", args=["kaputt" * 300])
    wait_until(lambda: logged("f", DjangoJobExecution.ERROR))
    row = only_row("f")
    assert row.exception.startswith("kaputt") and len(row.exception) == 1000
    assert "ValueError" not in row.exception
    assert "in fail" in row.traceback
    assert row.duration is not None and row.duration >= 0


@pytestmark_tx
def test_duration_counts_from_the_actual_start(make_scheduler):
    """A run that waited in the executor's queue is not charged for the wait."""
    scheduler = make_scheduler(threads=1)
    now = datetime.now(UTC)
    scheduler.add_job(
        jobs.sleep, "date", run_date=now, id="blocker", args=[1.0], misfire_grace_time=None
    )
    scheduler.add_job(jobs.noop, "date", run_date=now, id="waiter", misfire_grace_time=None)
    wait_until(
        lambda: (
            logged("waiter", DjangoJobExecution.SUCCESS)
            and logged("blocker", DjangoJobExecution.SUCCESS)
        )
    )
    waiter = only_row("waiter")
    blocker = only_row("blocker")
    # Both were due at the same instant and the pool has one thread, so whichever
    # ran second waited at least the blocker's full second before it started.
    first, second = sorted([waiter, blocker], key=lambda r: r.finished)
    assert second.run_time == first.run_time
    waited_and_ran = second.finished - Decimal(str(second.run_time.timestamp()))
    if second.job_id == "waiter":
        assert second.duration <= waited_and_ran - Decimal("0.99")
    else:
        assert first.duration <= Decimal("0.5") and second.duration >= Decimal("0.99")


@pytestmark_tx
def test_missed_run_is_logged(make_scheduler):
    scheduler = make_scheduler(start=False)
    scheduler.add_job(
        jobs.record,
        "interval",
        minutes=10,
        id="m",
        next_run_time=datetime.now(UTC) - timedelta(seconds=30),
        misfire_grace_time=1,
    )
    scheduler.start()
    wait_until(lambda: logged("m", DjangoJobExecution.MISSED))
    row = only_row("m")
    assert row.exception == "Run time of job 'm' was missed!"
    assert jobs.calls == []


@pytestmark_tx
def test_max_instances_is_logged(make_scheduler):
    scheduler = make_scheduler()
    scheduler.add_job(
        jobs.sleep,
        "interval",
        seconds=0.2,
        id="slow",
        args=[1.5],
        max_instances=1,
        next_run_time=datetime.now(UTC),
    )
    wait_until(lambda: logged("slow", DjangoJobExecution.MAX_INSTANCES))
    scheduler.shutdown(wait=True)
    statuses = {r.status for r in logged("slow")}
    assert DjangoJobExecution.MAX_INSTANCES in statuses


def test_instrumented_coroutine_job_stays_a_coroutine_function_only_where_awaited():
    # APScheduler's AsyncIOExecutor only awaits coroutine functions; elsewhere the
    # wrapper must run the coroutine itself.
    import inspect

    from apscheduler.job import Job

    for awaited in (True, False):
        job = Job.__new__(Job)
        job.id = "a"
        job.func = jobs.async_record
        executions.instrument(job, awaits_coroutines=awaited)
        assert inspect.iscoroutinefunction(job.func) is awaited


@pytestmark_tx
def test_memory_store_logs_runs_of_jobs_that_have_a_row(make_scheduler):
    DjangoJob.objects.create(id="mem", next_run_time=None, job_state=b"x")
    scheduler = make_scheduler(jobstores={"default": DjangoMemoryJobStore()})
    scheduler.add_job(jobs.record, "date", run_date=datetime.now(UTC), id="mem")
    scheduler.add_job(jobs.record, "date", run_date=datetime.now(UTC), id="no-row")
    wait_until(lambda: logged("mem", DjangoJobExecution.SUCCESS))
    wait_until(lambda: len(jobs.calls) == 2)
    assert logged("no-row") == []


@pytestmark_tx
def test_events_of_other_job_stores_are_not_logged(make_scheduler):
    from apscheduler.jobstores.memory import MemoryJobStore

    DjangoJob.objects.create(id="same-id", next_run_time=None, job_state=b"x")
    scheduler = make_scheduler(jobstores={"default": DjangoJobStore(), "mem": MemoryJobStore()})
    scheduler.add_job(jobs.record, "date", run_date=datetime.now(UTC), id="same-id", jobstore="mem")
    wait_until(lambda: jobs.calls)
    scheduler.shutdown(wait=True)
    assert logged("same-id") == []


@pytestmark_tx
def test_async_job_functions_run_in_the_thread_pool(make_scheduler):
    scheduler = make_scheduler()
    now = datetime.now(UTC)
    scheduler.add_job(jobs.async_record, "date", run_date=now, id="a-ok", args=["a-ok"])
    scheduler.add_job(jobs.async_fail, "date", run_date=now, id="a-bad", args=["nope"])
    wait_until(lambda: logged("a-ok", DjangoJobExecution.SUCCESS))
    wait_until(lambda: logged("a-bad", DjangoJobExecution.ERROR))
    assert [tag for tag, _ in jobs.calls] == ["a-ok"]
    assert only_row("a-bad").exception == "nope"


def test_async_job_functions_stay_coroutines_for_asyncio_executors():
    import asyncio

    from apscheduler.executors.asyncio import AsyncIOExecutor
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    loop = asyncio.new_event_loop()
    try:
        scheduler = AsyncIOScheduler(event_loop=loop, executors={"default": AsyncIOExecutor()})
        store = DjangoJobStore()
        store._scheduler = scheduler
        scheduler._executors["default"] = AsyncIOExecutor()
        assert store._awaits_coroutines("default")
        assert not DjangoJobStore()._awaits_coroutines("default")
    finally:
        loop.close()


# --- issue 9: texts every database stores, and no stale error on a finished run -------


@pytestmark_tx
@pytest.mark.parametrize(
    "message, stored",
    [
        ("nul\x00byte", "nul\\x00byte"),  # PostgreSQL rejects NUL in text
        ("lone \ud800 surrogate", "lone \ufffd surrogate"),  # not UTF-8 anywhere
        ("pair \ud83d\ude00 of halves", "pair \ufffd\ufffd of halves"),
    ],
)
def test_failure_with_unstorable_text_is_logged_sanitised(make_scheduler, message, stored):
    """The run is "Error!" with the text made storable, not left "Started execution"."""
    scheduler = make_scheduler()
    scheduler.add_job(jobs.fail, "date", run_date=datetime.now(UTC), id="f", args=[message])
    wait_until(lambda: logged("f", DjangoJobExecution.ERROR), timeout=30)
    row = only_row("f")
    assert row.exception == stored
    assert "in fail" in row.traceback
    scheduler.shutdown(wait=True)
    assert only_row("f").status == DjangoJobExecution.ERROR  # not "Interrupted" at shutdown


def test_traceback_with_unstorable_text_is_stored_sanitised(job_row):
    DjangoJobStore.handle_error_event(
        executed(
            code=EVENT_JOB_ERROR,
            exception=ValueError("x\x00\udc80"),
            traceback='  File "job\x00.py", line 1, in \udcff\n',
        )
    )
    row = only_row()
    assert row.exception == "x\\x00\ufffd"
    assert row.traceback == '  File "job\\x00.py", line 1, in \ufffd\n'


def test_finished_run_keeps_no_interrupted_text(job_row):
    """A run marked Interrupted (its scheduler taken for dead) that then finishes is just Executed."""
    from django_apscheduler import coordination

    DjangoJobStore.handle_submission_event(submitted())
    DjangoJobExecution.objects.update(instance="host:1:gone", traceback="stale")
    assert coordination.interrupt_runs("default", "host:1:gone", "Interrupted: gone") == 1
    assert only_row().status == DjangoJobExecution.INTERRUPTED
    DjangoJobStore.handle_execution_event(executed())
    row = only_row()
    assert row.status == DjangoJobExecution.SUCCESS
    assert row.exception is None and row.traceback is None


def test_failed_run_after_interrupted_keeps_its_own_error(job_row):
    from django_apscheduler import coordination

    DjangoJobStore.handle_submission_event(submitted())
    DjangoJobExecution.objects.update(instance="host:1:gone")
    coordination.interrupt_runs("default", "host:1:gone", "Interrupted: gone")
    DjangoJobStore.handle_error_event(
        executed(code=EVENT_JOB_ERROR, exception=ValueError("real"), traceback="Traceback...")
    )
    row = only_row()
    assert (row.status, row.exception, row.traceback) == (
        DjangoJobExecution.ERROR,
        "real",
        "Traceback...",
    )


@pytest.mark.django_db(transaction=True)
def test_the_run_wrapper_notes_the_start_under_the_run_time_apscheduler_runs():
    """The wrapper object ``instrument`` puts in ``job.func`` reads the run time two frames up."""
    from apscheduler.executors.base import run_job
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.start(paused=True)
    try:
        scheduler.add_job(jobs.noop, id="wrapped", misfire_grace_time=None)
        job = scheduler.get_job("wrapped")
        executions.instrument(job)
        assert job.func.__wrapped__ is jobs.noop and repr(job.func) == repr(jobs.noop)
        run_time = datetime.now(timezone.utc) - timedelta(seconds=1)
        events = run_job(job, "default", [run_time], __name__)
        assert [e.code for e in events] == [EVENT_JOB_EXECUTED]
        assert executions.pop_start("wrapped", run_time) is not None
    finally:
        scheduler.shutdown()
