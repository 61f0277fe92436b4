"""The demo's jobs, declared in code: ``manage.py runapscheduler`` finds and schedules them.

Every installed app's ``jobs`` module is imported when a scheduler starts, and
each ``@scheduled_job`` function becomes a stored job (added, updated or
removed to match this file). A stored job refers to its function by import
path, so job functions live at module level.
"""

from django.utils import timezone

from django_apscheduler import scheduled_job
from django_apscheduler.functions import schedulable
from django_apscheduler.models import DjangoJob, DjangoJobExecution


# Each run gets fresh database connections, as a request does; nothing to decorate.
@scheduled_job("cron", second="*/10", id="demo_job", max_instances=1)
def demo_job() -> None:
    """Stand-in for real work: print the time, the stored jobs and this job's logged runs."""
    now = timezone.localtime()
    logged = DjangoJobExecution.objects.filter(
        job_id="demo_job", status=DjangoJobExecution.SUCCESS
    ).count()
    print(
        f"demo_job: hello at {now:%H:%M:%S %Z} ({DjangoJob.objects.count()} jobs stored, "
        f"{logged} earlier runs logged)",
        flush=True,
    )


# Functions the admin may schedule (its allow-list), without a schedule of their own:
# the admin's "Add django job" form offers them.
@schedulable(label="Send the daily report")
def send_report(recipient: str = "ops@example.com") -> None:
    """Stand-in for real work: print who would get the report."""
    print(f"send_report: would mail the report to {recipient}", flush=True)


@schedulable
def refresh_cache(section: str = "all") -> None:
    """Stand-in for real work: print which cache section would be refreshed."""
    print(f"refresh_cache: would refresh {section}", flush=True)
