"""Running stored jobs once, right now, in the calling process (the admin's "run" action).

The admin lets a user run selected jobs immediately, outside their schedule.
:func:`run_jobs_now` does that without a scheduler: it restores each job from
its ``DjangoJob`` row, calls the job function in a thread pool made for this
call alone, and records each run in ``DjangoJobExecution`` exactly like a
scheduled run ("Started execution" first, then "Executed" or "Error!"), with
the moment of the request as the run time. The stored job (its schedule, its
next run time, its pickled state) is not touched.

The caller waits at most ``timeout`` seconds. Jobs still running then are not
stopped (Python cannot stop a thread); they finish in the background and
record their final status when they do. Each call returns one
:class:`JobRunOutcome` per job, so the caller can say what happened to each.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from apscheduler.job import Job
from django.db import connections, router
from django.utils import timezone

from django_apscheduler import conf, executions, handoff
from django_apscheduler.models import DjangoJob, DjangoJobExecution, classify_job

logger = logging.getLogger(__name__)

#: Most jobs of one call that run at the same time; the others wait for a free thread.
MAX_WORKERS = 10


class RunStatus(str, enum.Enum):
    """What became of one job that was asked to run now."""

    SUCCEEDED = "succeeded"
    #: The job function raised; ``JobRunOutcome.message`` names the exception.
    FAILED = "failed"
    #: Still running (or waiting for a thread) when the timeout expired.
    TIMED_OUT = "timed_out"
    #: No row with this id.
    NOT_FOUND = "not_found"
    #: The kept record of a one-shot job that has run for the last time: not a job any more.
    FINISHED = "finished"
    #: The row cannot be turned back into a job; ``message`` gives the reason.
    BROKEN = "broken"
    #: A task job: its task was enqueued for a worker; ``message`` names where and its id.
    HANDED_OFF = "handed_off"


@dataclass(frozen=True)
class JobRunOutcome:
    """The result of asking one job to run now.

    ``message`` is the exception (``"ValueError: boom"``) for a failed run and
    the reason for a broken row; empty otherwise. ``execution_id`` is the
    ``DjangoJobExecution`` row of this run, when one was written.
    """

    job_id: str
    status: RunStatus
    message: str = ""
    traceback: str | None = None
    execution_id: int | None = None

    @property
    def succeeded(self) -> bool:
        """True if the job ran to its end without raising."""
        return self.status is RunStatus.SUCCEEDED


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load(job_ids: list[str]) -> tuple[list[Job], dict[str, JobRunOutcome]]:
    """Restore the jobs ``job_ids`` name; the ones that cannot run get their outcome at once."""
    using = router.db_for_read(DjangoJob)
    rows = {
        job_id: (job_id, state, signature, next_run_time)
        for job_id, state, signature, next_run_time in DjangoJob.objects.using(using)
        .filter(id__in=job_ids)
        .values_list("id", "job_state", "job_signature", "next_run_time")
    }
    jobs: list[Job] = []
    early: dict[str, JobRunOutcome] = {}
    for job_id in job_ids:
        if job_id not in rows:
            early[job_id] = JobRunOutcome(job_id, RunStatus.NOT_FOUND)
            continue
        state = classify_job(*rows[job_id])
        if state.name == "finished":
            early[job_id] = JobRunOutcome(job_id, RunStatus.FINISHED)
        elif state.job is None:
            assert state.error is not None
            logger.warning("Job %r cannot be restored, not running it: %s", job_id, state.error)
            early[job_id] = JobRunOutcome(job_id, RunStatus.BROKEN, message=_describe(state.error))
        else:
            jobs.append(state.job)
    return jobs, early


def _call(job: Job) -> None:
    """Call the job function; a coroutine function runs in an event loop of its own."""
    result: Any = job.func(*job.args, **job.kwargs)
    if inspect.iscoroutine(result):
        asyncio.run(result)


def _run_one(job: Job, run_time: datetime, execution_id: int | None) -> JobRunOutcome:
    """Run ``job`` in this worker thread and record its final status.

    Runs in a pool thread: whatever database connections the job or the
    recording opened in this thread are closed before the thread is reused or
    ends, so none is left idle.
    """
    started = executions.now_epoch()
    try:
        executions.send_signals(
            [
                executions.Record(
                    job.id,
                    run_time,
                    DjangoJobExecution.SENT,
                    started=started,
                    event="job_started",
                    logged=False,
                )
            ]
        )
        try:
            logger.info("Running job %r now (run time %s)", job.id, run_time)
            _call(job)
        except BaseException as exc:  # recorded like APScheduler does, not re-raised
            finished = executions.now_epoch()
            tb = "".join(traceback.format_tb(exc.__traceback__))
            logger.warning("Job %r raised an error when run now: %s", job.id, _describe(exc))
            outcome = JobRunOutcome(
                job.id, RunStatus.FAILED, _describe(exc), traceback=tb, execution_id=execution_id
            )
            record = executions.Record(
                job.id,
                run_time,
                DjangoJobExecution.ERROR,
                exception=str(exc) or type(exc).__name__,
                traceback=tb,
                started=started,
                finished=finished,
                event="job_failed",
                error=exc,
            )
        else:
            finished = executions.now_epoch()
            outcome = JobRunOutcome(job.id, RunStatus.SUCCEEDED, execution_id=execution_id)
            record = executions.Record(
                job.id,
                run_time,
                DjangoJobExecution.SUCCESS,
                started=started,
                finished=finished,
                event="job_succeeded",
            )
        try:
            executions.write_now([record])
        except Exception:
            logger.exception("Could not record the run of job %r at %s", job.id, run_time)
        executions.send_signals([record])  # in this thread: a run now has no recorder round
        return outcome
    finally:
        try:
            connections.close_all()
        except Exception:
            logger.exception("Could not close the database connections of a run-now thread")


def _hand_off(job: Job, run_time: datetime) -> JobRunOutcome:
    """Hand a task job's run to its worker (recorded "Queued" first), not run it here."""
    ref = handoff.job_task_ref(job)
    assert ref is not None
    try:
        done = handoff.hand_off(job.id, run_time, ref, job.args, job.kwargs)
    except Exception as exc:
        logger.warning("Job %r could not be handed off now: %s", job.id, _describe(exc))
        return JobRunOutcome(job.id, RunStatus.FAILED, _describe(exc))
    if done is None:
        return JobRunOutcome(job.id, RunStatus.FAILED, "the task could not be enqueued")
    logger.info("Job %r handed to %s as task %s", job.id, done.backend, done.task_id)
    return JobRunOutcome(
        job.id,
        RunStatus.HANDED_OFF,
        f"{done.backend}, task {done.task_id}",
        execution_id=done.execution_id,
    )


def run_jobs_now(job_ids: Iterable[str], timeout: float | None = None) -> list[JobRunOutcome]:
    """Run the stored jobs ``job_ids`` once, now, and return one outcome per job, in order.

    Waits at most ``timeout`` seconds (default: the ``APSCHEDULER_RUN_NOW_TIMEOUT``
    setting) for the runs; the ones still going then are reported as
    ``TIMED_OUT`` and finish in the background. Every run is recorded in
    ``DjangoJobExecution`` with the time of this call as its run time.
    """
    ids = list(dict.fromkeys(job_ids))  # unique, in the given order
    if timeout is None:
        timeout = conf.run_now_timeout()
    jobs, outcomes = _load(ids)
    run_time = timezone.now()
    for job in [job for job in jobs if handoff.job_task_ref(job) is not None]:
        jobs.remove(job)
        outcomes[job.id] = _hand_off(job, run_time)
    if jobs:
        sent = [
            executions.Record(job.id, run_time, DjangoJobExecution.SENT, event="job_submitted")
            for job in jobs
        ]
        execution_ids = executions.write_now(sent)
        executions.send_signals(sent)
        # A pool per call: nothing is shared between concurrent requests.
        pool = ThreadPoolExecutor(
            max_workers=min(len(jobs), MAX_WORKERS),
            thread_name_prefix="django_apscheduler-run-now",
        )
        futures: dict[str, Future[JobRunOutcome]] = {}
        try:
            for job, record in zip(jobs, sent):
                futures[job.id] = pool.submit(
                    _run_one, job, run_time, execution_ids.get(record.key)
                )
            done, _ = wait_for_futures(futures.values(), timeout=timeout)
        finally:
            # Do not wait for jobs still running: they record their own end.
            pool.shutdown(wait=False)
        for job, record in zip(jobs, sent):
            future = futures.get(job.id)
            if future is not None and future in done:
                outcomes[job.id] = future.result()
            else:
                logger.warning(
                    "Job %r still runs after %s s; it goes on in the background", job.id, timeout
                )
                outcomes[job.id] = JobRunOutcome(
                    job.id, RunStatus.TIMED_OUT, execution_id=execution_ids.get(record.key)
                )
    return [outcomes[job_id] for job_id in ids]
