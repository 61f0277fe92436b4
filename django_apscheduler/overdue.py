"""Overdue jobs: a job that should have started and did not, because no scheduler ran it.

A job is overdue when its stored next run time is past by more than its
allowance and no run has started (a started run moves the next run time on).
The allowance is ``APSCHEDULER_OVERDUE_AFTER`` (for every job, or per job id),
by default the job's ``misfire_grace_time`` plus the lease time and poll
interval: the time a live scheduler may take to pick a job up. It usually
means that no live scheduler holds the job, or that all are saturated.

:func:`find_overdue` reads the database only, so the health command and the
admin report overdue jobs with no scheduler alive. Live schedulers call
:func:`report_overdue` from their housekeeping thread (it runs whether or not
their executors are saturated): the first one to see an episode marks the row
(``DjangoJob.overdue_reported``, one conditional update) and only that one
logs an ERROR and sends ``signals.job_overdue``. An episode ends when the next
run time changes (the job ran, was paused, resumed or rescheduled).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import router
from django.utils import timezone

from django_apscheduler import conf, executions, util
from django_apscheduler.models import DjangoJob, DjangoJobExecution, classify_job

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OverdueJob:
    """One overdue job: its id, the run that has not started, how late it is and its allowance."""

    job_id: str
    #: The next run time as stored (the value the episode is recorded with).
    next_run_time: datetime
    late: timedelta
    allowance: timedelta


def pickup_slack() -> timedelta:
    """How long a live scheduler may take to notice a due job: lease time plus poll interval."""
    return timedelta(seconds=conf.lease_time() + conf.poll_interval())


def allowance(job_id: str, misfire_grace_time: float | None) -> timedelta:
    """How late ``job_id`` may start before it is overdue (see the module docstring)."""
    configured = conf.overdue_after(job_id)
    if configured is not None:
        return timedelta(seconds=configured)
    return pickup_slack() + timedelta(seconds=misfire_grace_time or 0)


def _aware(value: datetime) -> datetime:
    return util.utc(value if timezone.is_aware(value) else timezone.make_aware(value))


def find_overdue(
    now: datetime | None = None, using: str | None = None, *, unreported: bool = False
) -> list[OverdueJob]:
    """The jobs overdue at ``now``, most late first; broken and paused jobs are not.

    One indexed query for the candidates (next run time before ``now`` minus
    the smallest allowance); only those are unpickled, for their grace time.
    ``unreported`` leaves out the episodes already reported, in the query: a
    backlog of overdue jobs, once reported, costs a scheduler's housekeeping
    this one query, not an unpickle and an ``UPDATE`` per job.
    """
    now = util.utc(now or timezone.now())
    using = using or router.db_for_read(DjangoJob)
    smallest = min([pickup_slack().total_seconds(), *conf.overdue_after_values()])
    before = util.get_django_internal_datetime(now - timedelta(seconds=smallest))
    candidates = DjangoJob.objects.using(using).late(before)  # type: ignore[arg-type]
    if unreported:
        candidates = candidates.unreported_late()
    rows = candidates.order_by("next_run_time", "id").values_list(
        "id", "next_run_time", "job_state", "job_signature"
    )
    found = []
    for job_id, next_run_time, state, signature in rows.iterator():
        classified = classify_job(job_id, state, signature, next_run_time)
        if classified.job is None or classified.name != "scheduled":
            continue  # broken (reported as such), or paused
        job = overdue_job(job_id, next_run_time, classified.job.misfire_grace_time, now)
        if job is not None:
            found.append(job)
    return found


def overdue_job(
    job_id: str,
    next_run_time: datetime | None,
    misfire_grace_time: float | None,
    now: datetime | None = None,
) -> OverdueJob | None:
    """``job_id`` as an :class:`OverdueJob` if its next run time makes it overdue, else None.

    For one row already at hand (the admin's job list): no query.
    """
    if next_run_time is None:
        return None
    late = util.utc(now or timezone.now()) - _aware(next_run_time)
    limit = allowance(job_id, misfire_grace_time)
    return OverdueJob(job_id, next_run_time, late, limit) if late > limit else None


def report_overdue(now: datetime | None = None, using: str | None = None) -> list[OverdueJob]:
    """Report each overdue episode nobody reported yet: an ERROR and ``job_overdue``.

    Returns the jobs this call reported. Any number of schedulers may call it
    at once: each episode is reported by exactly one of them.
    """
    using = using or router.db_for_write(DjangoJob)
    reported = []
    for job in find_overdue(now, using, unreported=True):
        if not DjangoJob.objects.using(using).mark_overdue_reported(job.job_id, job.next_run_time):
            continue  # reported before, by this or another scheduler
        reported.append(job)
        logger.error(
            "Job %r is overdue: its run at %s has not started %.0f s later (allowance %.0f s). "
            "No live scheduler holds it, or all are saturated: see `manage.py apscheduler "
            "health --jobs` and the scheduler instances in the admin.",
            job.job_id,
            util.get_local_dt_format(job.next_run_time),
            job.late.total_seconds(),
            job.allowance.total_seconds(),
        )
        # Sent from the recorder's thread, like the run signals: a slow receiver must
        # not delay this thread's heartbeats.
        executions.recorder.submit(
            [
                executions.Record(
                    job.job_id,
                    job.next_run_time,
                    DjangoJobExecution.SENT,
                    event="job_overdue",
                    logged=False,
                    extra={"late": job.late},
                )
            ]
        )
    return reported
