"""Errors raised by django-apscheduler itself."""

from __future__ import annotations


class DjangoApschedulerError(Exception):
    """Base class of this app's errors."""


class UnrestorableJobError(DjangoApschedulerError, LookupError):
    """A stored job cannot be turned back into an APScheduler job.

    Typical causes: its function was renamed or removed from the code, or its
    pickled state was written by an incompatible version. The row is kept;
    fix the code and restart, re-add the job with ``replace_existing=True``,
    or remove it.
    """

    def __init__(self, job_id: str, reason: BaseException) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(
            f"Job {job_id!r} cannot be restored from the database "
            f"({type(reason).__name__}: {reason}). Fix or re-add the job "
            "(add_job(..., replace_existing=True)), or remove it."
        )


class DeclaredJobError(DjangoApschedulerError, ValueError):
    """A job declared in code (``@scheduled_job``) cannot be removed by hand.

    Its declaration would add it again at the next start of a scheduler. Pause
    it instead, or delete the declaration: the job is then removed by itself.
    """

    def __init__(self, job_id: str, declared_by: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"Job {job_id!r} is declared in code ({declared_by}); removed, it would be added "
            f"again at the next start of a scheduler. Pause it instead (client.pause_job or "
            f"`manage.py apscheduler pause {job_id}`), or delete its @scheduled_job "
            "declaration: the job is then removed by itself."
        )
