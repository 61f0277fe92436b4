"""The jobs the demo scheduler runs.

A stored job refers to its function by import path (``example.demo.jobs:demo_job``),
so job functions live at module level in an importable module.
"""

from django.utils import timezone

from django_apscheduler import util
from django_apscheduler.models import DjangoJob, DjangoJobExecution

#: A week, in seconds: how long the run log is kept.
MAX_AGE = 604_800


# ``close_old_connections`` replaces database connections that have gone stale
# before and after each run, as Django does around each request. Wrap every job
# that uses the database with it.
@util.close_old_connections
def demo_job() -> None:
    """Stand-in for real work: print the time and how many jobs are stored."""
    now = timezone.localtime()
    print(
        f"demo_job: hello at {now:%H:%M:%S %Z} ({DjangoJob.objects.count()} jobs stored)",
        flush=True,
    )


@util.close_old_connections
def delete_old_job_executions(max_age: int = MAX_AGE) -> None:
    """Delete the logged runs older than ``max_age`` seconds, so the log doesn't grow forever."""
    DjangoJobExecution.objects.delete_old_job_executions(max_age)
