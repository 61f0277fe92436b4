"""run_now.run_jobs_now: running stored jobs once, now, in this process, on the real database."""

from __future__ import annotations

import pickle
from datetime import datetime, timezone

import pytest
from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from django_apscheduler import signing
from django_apscheduler.jobstores import DjangoJobStore
from django_apscheduler.models import DjangoJob, DjangoJobExecution
from django_apscheduler.run_now import RunStatus, run_jobs_now
from tests import jobs
from tests.helpers import wait_until

UTC = timezone.utc
FUTURE = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

pytestmark = pytest.mark.django_db(transaction=True)


def store_job(
    job_id: str,
    func=jobs.noop,
    *,
    args: tuple = (),
    kwargs: dict | None = None,
    next_run_time: datetime | None = FUTURE,
) -> DjangoJob:
    """Store a job through DjangoJobStore, as a scheduler would, and return its row."""
    scheduler = BackgroundScheduler(timezone="UTC")
    store = DjangoJobStore()
    store.start(scheduler, "default")
    job = Job(
        scheduler,
        id=job_id,
        func=func,
        trigger=IntervalTrigger(hours=1, timezone="UTC"),
        executor="default",
        args=args,
        kwargs=kwargs or {},
        name=job_id,
        misfire_grace_time=1,
        coalesce=True,
        max_instances=1,
        next_run_time=next_run_time,
    )
    store.add_job(job)
    return DjangoJob.objects.get(id=job_id)


def store_broken_job(job_id: str) -> DjangoJob:
    """A row whose pickled state names a function that does not exist (renamed in the code)."""
    row = store_job(job_id)
    state = pickle.loads(bytes(row.job_state))
    state["func"] = "tests.jobs:no_such_function"
    row.job_state = pickle.dumps(state)
    row.job_signature = signing.sign(job_id, row.job_state)  # broken, but signed
    row.save()
    return row


def store_finished_job(job_id: str) -> DjangoJob:
    """The kept record of a one-shot job that has run for the last time."""
    return DjangoJob.objects.create(id=job_id, next_run_time=None, job_state=b"")


def executions_of(job_id: str) -> list[DjangoJobExecution]:
    return list(DjangoJobExecution.objects.filter(job_id=job_id))


def test_success_is_reported_and_recorded_with_the_job_arguments():
    store_job("rec", jobs.record, args=("admin-run",))
    [outcome] = run_jobs_now(["rec"], timeout=30)

    assert outcome.job_id == "rec"
    assert outcome.status is RunStatus.SUCCEEDED
    assert outcome.succeeded
    assert [tag for tag, _ in jobs.calls] == ["admin-run"]
    [row] = executions_of("rec")
    assert row.id == outcome.execution_id
    assert row.status == DjangoJobExecution.SUCCESS
    assert row.duration is not None and row.duration >= 0
    assert row.finished is not None
    assert row.exception is None


def test_failure_is_reported_with_its_exception_and_recorded_with_traceback():
    store_job("bad", jobs.fail, kwargs={"message": "it broke"})
    [outcome] = run_jobs_now(["bad"], timeout=30)

    assert outcome.status is RunStatus.FAILED
    assert outcome.message == "ValueError: it broke"
    assert "raise ValueError(message)" in outcome.traceback
    [row] = executions_of("bad")
    assert row.id == outcome.execution_id
    assert row.status == DjangoJobExecution.ERROR
    assert row.exception == "it broke"
    assert "raise ValueError(message)" in row.traceback
    assert row.duration is not None


def test_timeout_reports_the_job_as_still_running_and_it_records_its_end_later():
    store_job("slow", jobs.sleep, args=(3,))
    store_job("quick", jobs.record, args=("quick",))
    slow, quick = run_jobs_now(["slow", "quick"], timeout=0.5)

    assert slow.status is RunStatus.TIMED_OUT
    assert quick.status is RunStatus.SUCCEEDED
    [row] = executions_of("slow")
    assert row.id == slow.execution_id
    assert row.status == DjangoJobExecution.SENT
    assert row.duration is None
    # The run goes on in the background and records its final status itself.
    wait_until(lambda: executions_of("slow")[0].status == DjangoJobExecution.SUCCESS)
    [row] = executions_of("slow")
    assert row.id == slow.execution_id
    assert row.duration is not None


def test_missing_finished_and_broken_rows_are_reported_and_not_run():
    store_broken_job("broken")
    store_finished_job("done")
    outcomes = run_jobs_now(["gone", "done", "broken"], timeout=30)

    assert [(o.job_id, o.status) for o in outcomes] == [
        ("gone", RunStatus.NOT_FOUND),
        ("done", RunStatus.FINISHED),
        ("broken", RunStatus.BROKEN),
    ]
    assert "no_such_function" in outcomes[2].message
    assert not DjangoJobExecution.objects.exists()
    assert DjangoJob.objects.filter(id="broken").exists()  # nothing deletes the row


def test_async_job_function_runs_in_its_own_event_loop():
    store_job("async", jobs.async_record, args=("from-async",))
    [outcome] = run_jobs_now(["async"], timeout=30)

    assert outcome.status is RunStatus.SUCCEEDED
    assert [tag for tag, _ in jobs.calls] == ["from-async"]
    assert executions_of("async")[0].status == DjangoJobExecution.SUCCESS


def test_async_job_failure_is_reported():
    store_job("async-bad", jobs.async_fail)
    [outcome] = run_jobs_now(["async-bad"], timeout=30)

    assert outcome.status is RunStatus.FAILED
    assert outcome.message == "RuntimeError: async boom"
    assert executions_of("async-bad")[0].exception == "async boom"


def test_job_using_the_orm_in_its_worker_thread():
    store_job("orm", jobs.count_jobs, args=("orm-count",))
    store_job("other")
    [outcome] = run_jobs_now(["orm"], timeout=30)

    assert outcome.status is RunStatus.SUCCEEDED
    assert jobs.calls[0][0] == "orm-count:2"


def test_schedule_and_state_are_left_alone():
    before = store_job("keep", jobs.noop)
    state = bytes(before.job_state)
    run_jobs_now(["keep"], timeout=30)

    after = DjangoJob.objects.get(id="keep")
    assert after.next_run_time == FUTURE
    assert bytes(after.job_state) == state


def test_outcomes_follow_the_given_order_and_ignore_repeats():
    store_job("a", jobs.record, args=("a",))
    store_job("b", jobs.fail)
    outcomes = run_jobs_now(["b", "a", "b"], timeout=30)

    assert [(o.job_id, o.status) for o in outcomes] == [
        ("b", RunStatus.FAILED),
        ("a", RunStatus.SUCCEEDED),
    ]
    assert len(executions_of("b")) == 1


def test_each_run_gets_its_own_execution_row():
    store_job("twice", jobs.record)
    first = run_jobs_now(["twice"], timeout=30)[0]
    second = run_jobs_now(["twice"], timeout=30)[0]

    assert first.execution_id != second.execution_id
    rows = executions_of("twice")
    assert len(rows) == 2
    assert {r.status for r in rows} == {DjangoJobExecution.SUCCESS}


def test_default_timeout_comes_from_the_setting(settings):
    settings.APSCHEDULER_RUN_NOW_TIMEOUT = 0.3
    store_job("slow", jobs.sleep, args=(2,))
    [outcome] = run_jobs_now(["slow"])

    assert outcome.status is RunStatus.TIMED_OUT
    wait_until(lambda: executions_of("slow")[0].status == DjangoJobExecution.SUCCESS)


def test_run_time_is_now_and_not_the_scheduled_time():
    store_job("now", jobs.noop)
    before = datetime.now(UTC)
    run_jobs_now(["now"], timeout=30)

    [row] = executions_of("now")
    assert before <= row.run_time < FUTURE
