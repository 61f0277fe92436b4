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


class UntrustedJobStateError(DjangoApschedulerError, ValueError):
    """A stored job state whose signature is missing or wrong: it is never unpickled.

    ``problem`` is ``"unsigned"`` (no signature) or ``"signature mismatch"``
    (a signature that no key of ``SECRET_KEY`` and ``SECRET_KEY_FALLBACKS``
    made for this id and state). The row is kept and left out of dispatch.
    Whoever wrote it did not go through this app with this ``SECRET_KEY``:
    a backup restored from another environment (sign it on purpose with
    ``manage.py apscheduler sign JOB_ID``), or someone writing to the table.
    """

    UNSIGNED = "unsigned"
    MISMATCH = "signature mismatch"

    def __init__(self, job_id: str, problem: str) -> None:
        self.job_id = job_id
        self.problem = problem
        super().__init__(
            f"{problem}: the stored state of job {job_id!r} is not signed with SECRET_KEY or "
            "SECRET_KEY_FALLBACKS, so it is not unpickled. If the row is trusted (a backup "
            f"made under another SECRET_KEY), `manage.py apscheduler sign {job_id}` signs it; "
            "otherwise remove it."
        )


class InvalidJobIdError(DjangoApschedulerError, ValueError):
    """A job id the database cannot hold: not a string, empty, or longer than the column.

    Raised before anything is written, the same on every database (SQLite
    would store a 300-character id that PostgreSQL and MariaDB refuse).
    """

    def __init__(self, job_id: object, problem: str) -> None:
        self.job_id = job_id
        shown = repr(job_id)
        if len(shown) > 80:
            shown = f"{shown[:60]}...{shown[-10:]} ({len(job_id)} characters)"  # type: ignore[arg-type]
        super().__init__(f"Job id {shown} is not valid: {problem}.")


class UnpicklableJobError(DjangoApschedulerError, ValueError):
    """A job whose state cannot be pickled, so it cannot be stored; the message names the job.

    Usually an argument that cannot be pickled (a lock, a connection, a lambda,
    a model instance holding one): pass what the job needs to find it instead,
    such as a primary key.
    """

    #: What to do, unless the caller knows better.
    HINT = (
        "Give the job picklable arguments, for example ids to look objects up with, instead "
        "of the objects."
    )

    def __init__(
        self, job_id: str, part: str, reason: BaseException, hint: str | None = None
    ) -> None:
        self.job_id = job_id
        self.part = part
        self.reason = reason
        super().__init__(
            f"Job {job_id!r} cannot be stored: {part} cannot be pickled "
            f"({type(reason).__name__}: {reason}). {hint or self.HINT}"
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


class TaskHandoffError(DjangoApschedulerError, ValueError):
    """A job whose task cannot be handed to a worker; the message names the job and the problem.

    Raised when the job is added: its engine is not installed or not
    configured, an option is invalid, or an argument would not survive the
    engine's serialisation (see docs/workers.md).
    """

    def __init__(self, job_id: str | None, problem: str) -> None:
        self.job_id = job_id
        self.problem = problem
        if job_id is None:
            super().__init__(f"Cannot hand off: {problem}.")
        else:
            super().__init__(f"Job {job_id!r} cannot be handed to a worker: {problem}.")
