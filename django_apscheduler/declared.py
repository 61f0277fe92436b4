"""Jobs declared in code with :func:`scheduled_job`, found in each app's ``jobs`` module.

::

    # myapp/jobs.py
    from django_apscheduler import scheduled_job

    @scheduled_job("cron", hour=3, minute=0)
    def nightly_cleanup():
        ...

Like ``admin.py``, every installed app's ``jobs`` module (the name is the
``APSCHEDULER_JOBS_MODULE`` setting) is imported when a scheduler built by
this app starts. :func:`sync` then makes the database match the code: declared
jobs are added, updated when their trigger or options changed, and removed
once their declaration is gone. Only jobs declared in code are ever removed
(their rows are marked ``declared_in_code``); jobs added at run time are never
touched. Many processes syncing at once neither duplicate nor flap the jobs: an
unchanged declaration leaves its stored row, next run time included, as it is.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from apscheduler.jobstores.base import JobLookupError
from django.core.exceptions import ImproperlyConfigured
from django.db import router
from django.utils.module_loading import autodiscover_modules

from django_apscheduler import conf

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Declaration:
    """One job declared in code: its function, trigger and ``add_job`` options."""

    id: str
    func: Callable[..., Any]
    trigger: str | Any
    trigger_args: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


_registry: dict[str, Declaration] = {}
_lock = threading.Lock()


def scheduled_job(trigger: str | Any, *, id: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """Declare the decorated function as a job, run on ``trigger``.

    ``trigger`` and the keyword arguments are those of APScheduler's
    ``add_job``: a trigger name (``"cron"``, ``"interval"``, ``"date"``) with its
    fields, or a trigger instance; plus job options such as ``args``,
    ``kwargs``, ``max_instances``, ``coalesce``, ``misfire_grace_time``,
    ``name`` and ``executor``. The job id is ``id``, or the function's import
    path (``"myapp.jobs.nightly_cleanup"``). The function itself is returned
    unchanged.
    """
    option_names = {
        "args",
        "kwargs",
        "name",
        "misfire_grace_time",
        "coalesce",
        "max_instances",
        "next_run_time",
        "executor",
    }
    options = {k: v for k, v in kwargs.items() if k in option_names}
    trigger_args = {k: v for k, v in kwargs.items() if k not in option_names}

    def register(func: F) -> F:
        if "<locals>" in func.__qualname__ or not func.__module__:
            raise ImproperlyConfigured(
                f"@scheduled_job: {func.__qualname__} must be defined at module level, so "
                "schedulers in other processes can import it."
            )
        job_id = id or f"{func.__module__}.{func.__qualname__}"
        declaration = Declaration(job_id, func, trigger, trigger_args, options)
        with _lock:
            existing = _registry.get(job_id)
            if existing is not None and existing.func is not func:
                raise ImproperlyConfigured(
                    f"@scheduled_job: the id {job_id!r} is declared twice, by "
                    f"{_path(existing.func)} and by {_path(func)}. Give one of them another id."
                )
            _registry[job_id] = declaration
        return func

    return register


def _path(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def discover() -> dict[str, Declaration]:
    """Import every installed app's jobs module; return every declaration, by id."""
    autodiscover_modules(conf.get("APSCHEDULER_JOBS_MODULE"))
    with _lock:
        return dict(_registry)


@dataclass
class SyncReport:
    """What :func:`sync` did: ids of the jobs declared and of the ones removed."""

    declared: list[str]
    removed: list[str]


def sync(scheduler: Any, jobstore: str = "default") -> SyncReport:
    """Make the jobs declared in code the database's declared jobs.

    ``scheduler`` must be started (paused or running) with a ``DjangoJobStore``
    as ``jobstore``. Every declaration is added with ``replace_existing=True``;
    then declared jobs whose declaration is gone are removed.
    """
    from django_apscheduler.models import DjangoJob  # not at import: the package imports this

    declarations = discover()
    for declaration in declarations.values():
        scheduler.add_job(
            declaration.func,
            declaration.trigger,
            id=declaration.id,
            jobstore=jobstore,
            replace_existing=True,
            **declaration.trigger_args,
            **declaration.options,
        )
    using = router.db_for_write(DjangoJob)
    ids = sorted(declarations)
    if ids:
        (
            DjangoJob.objects.using(using)
            .filter(id__in=ids)
            .exclude(declared_in_code=True)
            .update(declared_in_code=True)
        )
    stale = list(
        DjangoJob.objects.using(using)
        .filter(declared_in_code=True)
        .exclude(id__in=ids)
        .values_list("id", flat=True)
    )
    removed = []
    for job_id in stale:
        try:
            scheduler.remove_job(job_id, jobstore)
        except JobLookupError:  # another process removed it first
            continue
        removed.append(job_id)
        logger.info("Removed job %r: its @scheduled_job declaration is gone", job_id)
    if declarations or removed:
        logger.info(
            "Jobs declared in code: %d in the database, %d removed", len(declarations), len(removed)
        )
    return SyncReport(declared=ids, removed=removed)
