"""What the admin's operations console does to jobs, and what it shows about them.

The admin (``admin.py``) only renders and checks permissions; the work is
here, so each operation is written once and tested without a browser:

- :func:`summaries`: each listed job's state, last run, durations, recent
  failures and whether it is overdue, for a whole page in two queries;
- :func:`pause`, :func:`resume`, :func:`run_in_scheduler`, :func:`remove`:
  through ``client`` (the store path), so running schedulers see each change
  at once;
- :func:`fire_times`: the next fire times of a trigger, for the form's preview.

"Overdue": a scheduled job whose next run time is past by more than its
``misfire_grace_time`` (``APSCHEDULER_LEASE_TIME`` for a job without one) while
no live scheduler instance holds it. Such a fire will be logged "Missed!" or
run late, and usually means no scheduler is running.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterable

from django.db import router
from django.utils import timezone

from django_apscheduler import backends, client, declared, overdue
from django_apscheduler.models import (
    DjangoJob,
    DjangoJobExecution,
    DjangoSchedulerInstance,
    JobState,
    classify_job,
)

logger = logging.getLogger(__name__)

#: How many recent runs the list's failure count covers.
RECENT_RUNS = 20


@dataclass(frozen=True)
class Summary:
    """What the jobs list shows about one job beyond its row."""

    state: JobState
    overdue: bool
    last_run_time: datetime | None = None
    last_status: str | None = None
    last_duration: Decimal | None = None
    recent_runs: int = 0
    recent_failures: int = 0


def _live_instances(using: str, now: datetime) -> set[str]:
    return set(DjangoSchedulerInstance.objects.using(using).alive(now).values_list("id", flat=True))


def is_overdue(
    row: DjangoJob, state: JobState, live: set[str], now: datetime | None = None
) -> bool:
    """True when ``row`` is overdue (:mod:`django_apscheduler.overdue`) and no live scheduler holds it.

    The lateness rule is the one the health command and the alerts use: past
    its next run time by more than its allowance (its grace time plus the
    time a scheduler takes to notice, or ``APSCHEDULER_OVERDUE_AFTER``).
    """
    if state.name != "scheduled" or row.next_run_time is None or state.job is None:
        return False
    if row.acquired_by and row.acquired_by in live:
        return False
    grace = state.job.misfire_grace_time
    return overdue.overdue_job(row.id, row.next_run_time, grace, now) is not None


def summaries(rows: Iterable[DjangoJob], now: datetime | None = None) -> dict[str, Summary]:
    """Each row's :class:`Summary`, by job id: one query for the runs, one for the instances."""
    rows = list(rows)
    if not rows:
        return {}
    now = now or timezone.now()
    using = router.db_for_read(DjangoJob)
    live = _live_instances(using, now)
    runs: dict[str, list[dict]] = {}
    for run in DjangoJobExecution.objects.using(using).latest_per_job(
        [row.id for row in rows], RECENT_RUNS
    ):
        runs.setdefault(run["job_id"], []).append(run)
    result = {}
    for row in rows:
        state = row.classify()
        recent = runs.get(row.id, [])
        last = recent[0] if recent else None
        result[row.id] = Summary(
            state=state,
            overdue=is_overdue(row, state, live, now),
            last_run_time=last["run_time"] if last else None,
            last_status=last["status"] if last else None,
            last_duration=last["duration"] if last else None,
            recent_runs=len(recent),
            recent_failures=sum(
                1 for r in recent if r["status"] in DjangoJobExecution.FAILURE_STATUSES
            ),
        )
    return result


def overdue_ids(queryset: Any, now: datetime | None = None) -> list[str]:
    """The ids of the overdue jobs among ``queryset``."""
    now = now or timezone.now()
    live = _live_instances(queryset.db, now)
    found = []
    for row in queryset.past_due(now):
        if is_overdue(row, row.classify(), live, now):
            found.append(row.id)
    return found


def ids_in_state(queryset: Any, name: str) -> list[str]:
    """The ids of the jobs among ``queryset`` whose state is ``name`` (unpickling each)."""
    return [
        job_id
        for job_id, job_state, signature, next_run_time in queryset.values_list(
            "id", "job_state", "job_signature", "next_run_time"
        )
        if classify_job(job_id, job_state, signature, next_run_time).name == name
    ]


def ids_running(queryset: Any, text: str) -> list[str]:
    """The ids of the jobs among ``queryset`` whose function reference contains ``text``.

    The reference lives in the pickled state; a cheap byte test picks the
    candidates, then each candidate is restored and its ``func_ref`` checked.
    """
    needle = text.lower()
    found = []
    for job_id, job_state, signature, next_run_time in queryset.unfinished().values_list(
        "id", "job_state", "job_signature", "next_run_time"
    ):
        if needle.encode() not in bytes(job_state).lower():
            continue
        job = classify_job(job_id, job_state, signature, next_run_time).job
        if job is not None and needle in str(job.func_ref).lower():
            found.append(job_id)
    return found


def fire_times(
    trigger: Any, count: int = 5, now: datetime | None = None, first: datetime | None = None
) -> list[datetime]:
    """The next ``count`` fire times of ``trigger`` from ``now`` (fewer if it ends sooner).

    ``first``: a stored job's next run time, which the following ones are
    computed from (it may have been moved by hand).
    """
    now = now or timezone.now()
    if timezone.is_naive(now):
        now = timezone.make_aware(now)
    times: list[datetime] = []
    previous = None
    if first is not None:
        if timezone.is_naive(first):
            first = timezone.make_aware(first)
        zone = getattr(trigger, "timezone", None)
        if zone is not None:  # shown in the trigger's zone, like the ones after it
            first = first.astimezone(zone)
        times, previous, now = [first], first, first
    while len(times) < count:
        fire = trigger.get_next_fire_time(previous, now)
        if fire is None or (previous is not None and fire <= previous):
            break
        times.append(fire)
        previous = fire
        now = fire
    return times


# ----------------------------------------------------------------- operations


def pause(job_id: str, note: str = "") -> None:
    """Pause ``job_id`` through the store (schedulers stop running it) and keep ``note``."""
    client.pause_job(job_id)
    DjangoJob.objects.using(router.db_for_write(DjangoJob)).filter(id=job_id).set_pause_note(note)


def resume(job_id: str) -> DjangoJob:
    """Resume ``job_id`` from its trigger's next fire time and drop its pause note."""
    client.resume_job(job_id)
    using = router.db_for_write(DjangoJob)
    DjangoJob.objects.using(using).filter(id=job_id).set_pause_note(None)
    return DjangoJob.objects.using(using).get(id=job_id)


def run_in_scheduler(job_id: str) -> DjangoJob:
    """Have the running schedulers run ``job_id`` now, without waiting for it.

    The job's next run time becomes now (``client.run_job_now``), which wakes
    the schedulers; after that run its trigger gives the next fire time from
    then on. A cron or date schedule is unchanged; an interval schedule counts
    its next interval from this run. A paused job is refused (``ValueError``).
    """
    client.run_job_now(job_id)
    return DjangoJob.objects.using(router.db_for_write(DjangoJob)).get(id=job_id)


def remove(job_id: str) -> str:
    """Remove ``job_id``, keeping its execution history; return "retired" or "deleted".

    A job with recorded runs becomes a kept record (empty state, no next run
    time), like a finished one-shot job, so its runs stay listed until the
    retention setting or ``prune`` deletes them (with the record). A job
    without runs is deleted. A job declared in code is refused with
    ``DeclaredJobError``: the code owns it.
    """
    declared.check_removable(job_id)
    using = router.db_for_write(DjangoJob)
    if not DjangoJobExecution.objects.using(using).filter(job_id=job_id).exists():
        client.remove_job(job_id)
        return "deleted"
    backend = backends.for_alias(using)
    with backend.write_transaction(using):
        rows = DjangoJob.objects.using(using).filter(id=job_id)
        list(backend.lock_for_removal(rows, using).values_list("id"))
        changed = rows.unfinished().retire()
        if changed:
            backend.notify(using)
    if not changed:
        raise client.JobNotFound(job_id)
    writer = client.scheduler()
    writer.wakeup()
    logger.info("Removed job %r; its execution history is kept", job_id)
    return "retired"
