"""``python manage.py runapscheduler``: run the demo's jobs until Ctrl-C.

This is the pattern django-apscheduler users write: a ``BlockingScheduler`` in
its own process, a ``DjangoJobStore`` keeping the jobs in the database, jobs
(re)declared with ``replace_existing=True`` on every start, a weekly job that
deletes old run logs, and a clean shutdown on Ctrl-C. Run only one such
scheduler process at a time.

On top of the usual pattern, a listener prints each run as it was logged in
``DjangoJobExecution``, and ``--seconds`` stops the scheduler after a while.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_SCHEDULER_STARTED
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from django.conf import settings
from django.core.management.base import BaseCommand

from django_apscheduler import executions, util
from django_apscheduler.jobstores import DjangoJobStore
from django_apscheduler.models import DjangoJobExecution
from example.demo import jobs

logger = logging.getLogger(__name__)

#: How many logged runs the listener prints after each run.
SHOWN_RUNS = 3


class Command(BaseCommand):
    help = "Runs the demo's APScheduler jobs until Ctrl-C (or for --seconds)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--seconds",
            type=float,
            default=None,
            help="Shut the scheduler down after this many seconds (for demos and tests).",
        )

    def handle(self, *args: Any, seconds: float | None = None, **options: Any) -> None:
        scheduler = BlockingScheduler(timezone=settings.TIME_ZONE)
        scheduler.add_jobstore(DjangoJobStore(), "default")

        scheduler.add_job(
            jobs.demo_job,
            trigger=CronTrigger(second="*/10"),  # every 10 seconds
            id="demo_job",  # job ids must be unique; they are the table's primary key
            max_instances=1,
            replace_existing=True,  # the job is declared again on every start
        )
        logger.info("Added job 'demo_job' (every 10 seconds).")

        scheduler.add_job(
            jobs.delete_old_job_executions,
            trigger=CronTrigger(day_of_week="mon", hour="00", minute="00"),  # Monday midnight
            id="delete_old_job_executions",
            max_instances=1,
            replace_existing=True,
        )
        logger.info("Added weekly job 'delete_old_job_executions'.")

        stopper = None
        if seconds is not None:
            stopper = threading.Timer(seconds, self._stop, args=(scheduler,))
            stopper.daemon = True

        def on_started(event: Any) -> None:
            # Added only now, so that it runs after the listener the job store
            # registered when it started (the one that logs the run).
            scheduler.add_listener(self._show_logged_runs, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
            if stopper is not None:
                stopper.start()

        scheduler.add_listener(on_started, EVENT_SCHEDULER_STARTED)

        try:
            logger.info("Starting scheduler... (press Ctrl-C to stop)")
            scheduler.start()  # blocks until the scheduler is shut down
        except KeyboardInterrupt:
            logger.info("Stopping scheduler...")
            if stopper is not None:
                stopper.cancel()
            if scheduler.running:
                scheduler.shutdown()  # waits for running jobs
        if stopper is not None and stopper.is_alive():
            stopper.join()  # --seconds: the timer thread is still shutting down
        self.stdout.write("Scheduler shut down successfully!")

    @staticmethod
    def _stop(scheduler: BlockingScheduler) -> None:
        logger.info("Stopping scheduler (--seconds elapsed)...")
        try:
            scheduler.shutdown()
        except SchedulerNotRunningError:
            pass  # Ctrl-C came first

    @util.close_old_connections
    def _show_logged_runs(self, event: Any) -> None:
        # The job store's listener only queued the run; a background thread
        # writes it. Wait for that write, then read the log back.
        executions.recorder.flush(timeout=10)
        runs = DjangoJobExecution.objects.filter(job_id=event.job_id).order_by("-run_time")
        lines = [f"Logged runs of '{event.job_id}' ({runs.count()} in total, newest first):"]
        for run in runs[:SHOWN_RUNS]:
            took = "" if run.duration is None else f", took {run.duration} s"
            when = util.get_local_dt_format(run.run_time)
            lines.append(f"  #{run.id} {run.status}, scheduled for {when}{took}")
        self.stdout.write("\n".join(lines))
