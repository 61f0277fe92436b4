"""Adding and changing jobs from application code: views, the shell, tasks.

Unknown ids raise :class:`JobNotFound`; a stored job that cannot be restored
(its function is gone) raises ``UnrestorableJobError`` naming it, except for
:func:`remove_job`, which deletes it.

::

    from django_apscheduler import client

    client.add_job(send_report, "date", run_date=when, id=f"report-{pk}", args=[pk])
    client.pause_job("nightly-cleanup")
    client.run_job_now("nightly-cleanup")

Every call writes to the database through a ``DjangoJobStore`` and wakes the
running schedulers: the one autostarted in this process at once, the others
at once on PostgreSQL and within ``APSCHEDULER_POLL_INTERVAL`` elsewhere. It
works the same whether or not a scheduler runs in the calling process, and it
never runs a job itself. An id that the database cannot hold, or arguments
that cannot be pickled, raise an error naming the job before anything is
written. The
functions are thin wrappers over APScheduler's scheduler methods of the same
names, on a scheduler that is started paused and never dispatches; jobs get
the app's job defaults (``APSCHEDULER_JOB_DEFAULTS``).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Callable, Iterator

from apscheduler.job import Job
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.base import BaseScheduler
from django.db import router
from django.utils import timezone

from django_apscheduler import conf, declared, handoff, runner
from django_apscheduler.jobstores import DjangoJobStore, validate_job_id
from django_apscheduler.models import DjangoJob, DjangoSchedulerInstance

logger = logging.getLogger(__name__)


class JobNotFound(JobLookupError):
    """No job with this id is stored; the message names the id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"No job with the id {self.job_id!r} is stored."


class _WriterScheduler(BaseScheduler):
    """A scheduler that only writes: started paused, it has no thread and dispatches nothing.

    APScheduler wakes a scheduler after a write only while it runs, and this
    one never does: its writes wake the scheduler autostarted in this process
    themselves (:meth:`wakeup`), or a job added for now would wait for that
    scheduler's next poll. ``pause_job``, ``resume_job``, ``reschedule_job``
    and ``run_job_now`` all write through ``modify_job``.
    """

    def wakeup(self) -> None:
        scheduler = runner.autostarted()
        if scheduler is not None and scheduler.scheduler.running:
            scheduler.scheduler.wakeup()

    def add_job(self, *args: Any, **kwargs: Any) -> Job:
        job = super().add_job(*args, **kwargs)
        self.wakeup()
        return job

    def modify_job(self, *args: Any, **kwargs: Any) -> Job:
        job = super().modify_job(*args, **kwargs)
        self.wakeup()
        return job

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait=False)


_writer: _WriterScheduler | None = None
_writer_config: tuple[Any, ...] = ()
_lock = threading.Lock()


def scheduler() -> BaseScheduler:
    """The process's writing scheduler, built again when its settings changed."""
    global _writer, _writer_config
    config = (conf.timezone_name(), sorted(conf.job_defaults().items()))
    with _lock:
        if _writer is None or config != _writer_config:
            writer = _WriterScheduler(timezone=config[0], job_defaults=dict(config[1]))
            writer.add_jobstore(DjangoJobStore(), "default")
            writer.start(paused=True)
            _writer, _writer_config = writer, config
        return _writer


@contextmanager
def _not_found_as(job_id: str) -> Iterator[None]:
    """APScheduler's ``JobLookupError`` for an unknown id, as :class:`JobNotFound`."""
    try:
        yield
    except JobNotFound:
        raise
    except JobLookupError:
        raise JobNotFound(job_id) from None


def _existing(job_id: str) -> Job:
    """The stored job; ``JobNotFound`` if there is none, ``UnrestorableJobError`` if broken."""
    job = scheduler().get_job(job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def add_job(func: Callable[..., Any] | str, trigger: Any = None, **kwargs: Any) -> Job:
    """Store a new job (APScheduler's ``add_job``: trigger, ``id``, options, ``replace_existing``).

    An ``id`` that is not a string of 1 to 255 characters raises
    ``InvalidJobIdError`` naming it; arguments that cannot be pickled raise
    ``UnpicklableJobError`` naming the job and the argument. An executor the
    app's schedulers do not have is refused with a ``ValueError`` naming the
    job and the executor (such a job would never run).
    """
    if kwargs.get("id") is not None:
        validate_job_id(kwargs["id"])  # before APScheduler's own, unnamed, TypeError
    _check_executor(kwargs.get("id") or _name_of(func), kwargs.get("executor", "default"))
    # A Django Tasks or Celery task is handed to its workers at each fire (docs/workers.md).
    return scheduler().add_job(handoff.as_job_function(func), trigger, **kwargs)


def _name_of(func: Callable[..., Any] | str) -> str:
    if isinstance(func, str):
        return func
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}"


def _check_executor(job: str, executor: Any) -> None:
    problem = conf.executor_problem(job, executor)
    if problem:
        raise ValueError(problem)


def get_job(job_id: str) -> Job | None:
    """The stored job ``job_id``, or None."""
    return scheduler().get_job(job_id)


def get_jobs() -> list[Job]:
    """Every stored job, next to run first, paused ones last."""
    return scheduler().get_jobs()


def modify_job(job_id: str, **changes: Any) -> Job:
    """Change a stored job's options or arguments (APScheduler's ``modify_job``).

    An executor the app's schedulers do not have is refused (``ValueError``).
    """
    if "executor" in changes:
        _check_executor(job_id, changes["executor"])
    with _not_found_as(job_id):
        return scheduler().modify_job(job_id, **changes)


def reschedule_job(job_id: str, trigger: Any = None, **trigger_args: Any) -> Job:
    """Give a stored job a new trigger; its next run time follows from it."""
    with _not_found_as(job_id):
        return scheduler().reschedule_job(job_id, trigger=trigger, **trigger_args)


def pause_job(job_id: str) -> Job:
    """Stop a job from running until it is resumed."""
    with _not_found_as(job_id):
        return scheduler().pause_job(job_id)


def resume_job(job_id: str) -> Job | None:
    """Let a paused job run again from its trigger's next fire time (None if it has none left)."""
    with _not_found_as(job_id):
        return scheduler().resume_job(job_id)


def remove_job(job_id: str) -> None:
    """Delete a stored job and its execution log; also one that cannot be restored.

    A job declared in code (``@scheduled_job``) is refused with
    ``DeclaredJobError`` while this code or a live scheduler instance declares
    it: the next start would add it again. Pause it instead, or delete the
    declaration (the job is then removed by itself).
    """
    declared.check_removable(job_id)
    with _not_found_as(job_id):
        scheduler().remove_job(job_id)


def run_job_now(job_id: str) -> Job:
    """Have the running schedulers run a job now, once, then keep its schedule.

    The job's next run time becomes now; after that run the schedule goes on
    from its trigger. A paused job stays paused: it is refused with a
    ``ValueError``; resume it first, or run it in this process with
    ``django_apscheduler.run_now.run_jobs_now``.

    The request is stored, not run here: with no scheduler instance alive, a
    warning says so, and the next scheduler to start runs the job if it
    starts within the job's ``misfire_grace_time`` of now (and logs the run
    "Missed!" otherwise).
    """
    job = _existing(job_id)
    if job.next_run_time is None:
        raise ValueError(
            f"Job {job_id!r} is paused; resume it first (or run it here with "
            "django_apscheduler.run_now.run_jobs_now)."
        )
    now: datetime = timezone.now()
    modified = scheduler().modify_job(job_id, next_run_time=now)
    if not DjangoSchedulerInstance.objects.using(router.db_for_write(DjangoJob)).alive().exists():
        grace = modified.misfire_grace_time
        logger.warning(
            "Job %r is to run now, but no scheduler instance is alive to run it: it runs when "
            "a scheduler starts, %s. Start one (`manage.py runapscheduler`), or run the job in "
            "this process with `manage.py apscheduler run %s`.",
            job_id,
            "at any time"
            if grace is None
            else f"if that is within its misfire_grace_time of {grace} s (else it is logged "
            "Missed!)",
            job_id,
        )
    return modified
