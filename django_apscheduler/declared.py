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
once their declaration is gone from every live release. Only jobs declared in
code are ever removed (their rows are marked ``declared_in_code``); jobs added
at run time are never touched. Many processes syncing at once neither
duplicate nor flap the jobs: an unchanged declaration leaves its stored row,
next run time included, as it is, and a paused declared job stays paused.

During a rolling deploy two releases run at once, each declaring its own set
of jobs. Each scheduler instance records the ids its code declares
(``DjangoSchedulerInstance.declared_ids``, written when it registers, before
it syncs), and a declared job is removed only when neither the syncing code
nor any live instance declares it; the runner re-checks periodically, so a
job dropped by the new release goes once the old release's processes are gone.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TypeVar

from apscheduler.jobstores.base import JobLookupError
from apscheduler.triggers.interval import IntervalTrigger
from django.core.exceptions import ImproperlyConfigured
from django.db import router
from django.utils.module_loading import autodiscover_modules, module_has_submodule

from django_apscheduler import conf
from django_apscheduler.exceptions import DeclaredJobError

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

    @property
    def job_function(self) -> Any:
        """What is stored as the job's function: ``func``, or the reference naming its task."""
        from django_apscheduler import handoff

        return handoff.as_job_function(self.func)

    @property
    def fingerprint(self) -> str:
        """A digest of this definition, the same in every process that declares it alike.

        Recorded with the scheduler instance, so that a sync can tell whether
        a live process of another release declares the job differently. An
        interval trigger instance's start (``now + interval`` by default, so
        different in every process) and object addresses do not count.
        """
        trigger = self.trigger
        if not isinstance(trigger, str):
            state = dict(trigger.__getstate__()) if hasattr(trigger, "__getstate__") else {}
            if isinstance(trigger, IntervalTrigger):
                state.pop("start_date", None)
            trigger = (type(trigger).__qualname__, sorted(state.items()))
        parts = (
            _path(self.func),
            trigger,
            sorted(self.trigger_args.items()),
            sorted(self.options.items()),
        )
        text = _ADDRESS.sub("", repr(parts))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


#: " at 0x7f..." in reprs: differs between processes, says nothing of the definition.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


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
        from django_apscheduler import handoff

        if handoff.is_task(func):
            # A Django Tasks Task or a Celery task (@scheduled_job over @task or
            # @shared_task): each fire is handed to the task's workers.
            pass
        elif "<locals>" in func.__qualname__ or not func.__module__:
            raise ImproperlyConfigured(
                f"@scheduled_job: {func.__qualname__} must be defined at module level, so "
                "schedulers in other processes can import it."
            )
        job_id = id or _path(func)
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
    """``module.qualname`` of a function; a task's import path for a task."""
    from django_apscheduler import handoff

    engine = handoff.engine_of(func)
    if engine is not None:
        return engine.task_path(func)
    return f"{func.__module__}.{func.__qualname__}"


def discover() -> dict[str, Declaration]:
    """Import every installed app's jobs module; return every declaration, by id."""
    autodiscover_modules(conf.jobs_module())
    with _lock:
        return dict(_registry)


def searched_modules() -> list[tuple[str, bool]]:
    """The modules discovery looks for, one per installed app, and whether each exists.

    ``("myapp.jobs", True)``: the names :func:`discover` imports. An app that
    is not in ``INSTALLED_APPS`` is not searched, whatever its ``jobs.py``.
    """
    from django.apps import apps

    name = conf.jobs_module()
    found = []
    for app_config in apps.get_app_configs():
        module = f"{app_config.name}.{name}"
        try:
            exists = module_has_submodule(app_config.module, name)
        except Exception:  # a broken app package: discovery would report it when importing
            exists = False
        found.append((module, exists))
    return found


def nothing_declared_message() -> str:
    """What to say when discovery found no ``@scheduled_job``: the modules it searched.

    A new user's most common mistake is a ``jobs.py`` in an app missing from
    ``INSTALLED_APPS``, which otherwise shows only as "0 jobs declared in code".
    """
    modules = searched_modules()
    present = [module for module, exists in modules if exists]
    name = conf.jobs_module()
    text = (
        f"No job is declared in code: discovery looked for a {name!r} module "
        f"(APSCHEDULER_JOBS_MODULE) in each of the {len(modules)} installed apps: "
        + ", ".join(module for module, _ in modules)
        + ". "
    )
    if present:
        text += "Found " + ", ".join(present) + ", but none declares a job with @scheduled_job. "
    else:
        text += "None of them exists. "
    text += (
        f"A {name}.py in an app that is not in INSTALLED_APPS is not searched; add the app "
        "there, or set APSCHEDULER_JOBS_MODULE to your module's name."
    )
    return text


@dataclass
class SyncReport:
    """What :func:`sync` did: ids of the jobs declared, removed, and kept for other releases."""

    declared: list[str]
    removed: list[str]
    #: Declared jobs this code does not declare, kept because a live scheduler
    #: instance (another release, during a rolling deploy) still declares them.
    kept: list[str] = field(default_factory=list)
    #: Declarations not written because a live instance of another release
    #: declares the job differently; the stored definition stays until it is gone.
    contested: list[str] = field(default_factory=list)


def fingerprints(declarations: dict[str, Declaration]) -> dict[str, str]:
    """What a scheduler instance records of its declarations: id -> fingerprint."""
    return {job_id: d.fingerprint for job_id, d in sorted(declarations.items())}


def declared_by_live_instances(using: str) -> dict[str, dict[str, str | None]]:
    """Job id -> {live scheduler instance whose code declares it: its fingerprint}."""
    from django_apscheduler.models import DjangoSchedulerInstance

    found: dict[str, dict[str, str | None]] = {}
    rows = DjangoSchedulerInstance.objects.using(using).alive().values_list("id", "declared_ids")
    for instance, declared_ids in rows:
        items: Iterable[tuple[str, str | None]]
        if isinstance(declared_ids, dict):
            items = declared_ids.items()
        else:  # a plain list of ids: fingerprints unknown
            items = ((job_id, None) for job_id in declared_ids or ())
        for job_id, fingerprint in items:
            found.setdefault(job_id, {})[instance] = fingerprint
    return found


def sync(
    scheduler: Any,
    jobstore: str = "default",
    *,
    declarations: dict[str, Declaration] | None = None,
    only: Iterable[str] | None = None,
) -> SyncReport:
    """Make the jobs declared in code the database's declared jobs.

    ``scheduler`` must be started (paused or running) with a ``DjangoJobStore``
    as ``jobstore``. Every declaration is added with ``replace_existing=True``:
    an unchanged one keeps its stored next run time (a fire that is due is run
    or logged "Missed!" by the scheduler, never skipped), a changed one is
    rewritten, and a job an operator paused stays paused either way. A job
    added at run time under a declared id becomes the declared job (a warning
    says so). Then :func:`remove_undeclared` removes the declared jobs that
    neither this code nor any live scheduler instance declares.

    A stored declared job that a live scheduler instance of another release
    declares differently (its fingerprint differs) is left as it is and
    reported in ``contested``: two releases running at once would otherwise
    rewrite it at each start, in turn. The runner syncs those again later,
    once no such instance is left.

    ``declarations`` defaults to :func:`discover`'s; ``only`` limits the
    writes to these ids (the removal still considers every declaration).
    """
    from django_apscheduler.models import DjangoJob  # not at import: the package imports this
    from django_apscheduler.replacing import declared_sync

    if declarations is None:
        declarations = discover()
    using = router.db_for_write(DjangoJob)
    ids = sorted(declarations)
    wanted = ids if only is None else sorted(set(only) & set(declarations))
    stored = dict(
        DjangoJob.objects.using(using).filter(id__in=wanted).values_list("id", "declared_in_code")
    )
    added_at_run_time = [job_id for job_id, marked in stored.items() if not marked]
    if added_at_run_time:
        rows = DjangoJob.objects.using(using).filter(id__in=added_at_run_time)
        for job_id, state in rows.order_by("id").values_list("id", "job_state"):
            if state:  # not the kept record of a finished one-shot job
                logger.warning(
                    "Job %r was added at run time and is now declared in code by "
                    "@scheduled_job on %s: the declaration replaces it, and removing the "
                    "declaration removes the job. Give one of them another id if they are "
                    "different jobs.",
                    job_id,
                    _path(declarations[job_id].func),
                )
    elsewhere = declared_by_live_instances(using) if len(added_at_run_time) < len(stored) else {}
    contested = []
    for job_id in wanted:
        if not stored.get(job_id):  # new, or added at run time: this declaration is written
            continue
        mine = declarations[job_id].fingerprint
        rivals = sorted(i for i, theirs in elsewhere.get(job_id, {}).items() if theirs != mine)
        if rivals:
            contested.append(job_id)
            logger.info(
                "Job %r is declared differently by the live scheduler instances %s (another "
                "release): its stored definition stays until they stop, then this one is written",
                job_id,
                ", ".join(rivals),
            )
    with declared_sync():
        for job_id in wanted:
            if job_id in contested:
                continue
            declaration = declarations[job_id]
            scheduler.add_job(
                declaration.job_function,
                declaration.trigger,
                id=declaration.id,
                jobstore=jobstore,
                replace_existing=True,
                **declaration.trigger_args,
                **declaration.options,
            )
    if wanted:
        (
            DjangoJob.objects.using(using)
            .filter(id__in=wanted)
            .exclude(declared_in_code=True)
            .update(declared_in_code=True)
        )
    removed, kept = remove_undeclared(scheduler, ids, jobstore)
    if (declarations and only is None) or removed or kept:
        logger.info(
            "Jobs declared in code: %d in the database, %d removed, %d kept and %d left as "
            "stored for other releases",
            len(declarations),
            len(removed),
            len(kept),
            len(contested),
        )
    return SyncReport(declared=ids, removed=removed, kept=kept, contested=contested)


def remove_undeclared(
    scheduler: Any, own_ids: Iterable[str], jobstore: str = "default"
) -> tuple[list[str], list[str]]:
    """Remove the declared jobs nobody declares any more; return (removed, kept) ids.

    A declared job missing from ``own_ids`` (this code's declarations) is
    removed, execution log included, only when no live scheduler instance
    declares it either: during a rolling deploy the processes of the old
    release still declare the jobs the new one dropped (and the other way
    round), and those stay until the last such process is gone. The runner
    calls this at start and then periodically, so a job kept for an old
    release does go once that release stops.
    """
    from django_apscheduler.models import DjangoJob

    using = router.db_for_write(DjangoJob)
    own = set(own_ids)
    stale = sorted(
        set(
            DjangoJob.objects.using(using)
            .filter(declared_in_code=True)
            .values_list("id", flat=True)
        )
        - own
    )
    if not stale:
        return [], []
    elsewhere = declared_by_live_instances(using)
    removed, kept = [], []
    for job_id in stale:
        if job_id in elsewhere:
            kept.append(job_id)
            logger.info(
                "Job %r is not declared in this code, but scheduler instances %s still declare "
                "it; it is kept until none does",
                job_id,
                ", ".join(sorted(elsewhere[job_id])),
            )
            continue
        try:
            scheduler.remove_job(job_id, jobstore)
        except JobLookupError:  # another process removed it first
            continue
        removed.append(job_id)
        logger.info("Removed job %r: its @scheduled_job declaration is gone", job_id)
    return removed, kept


def check_removable(job_id: str) -> None:
    """Raise :class:`DeclaredJobError` if removing ``job_id`` by hand would not stick.

    A job declared in this code, or in the code of a live scheduler instance
    (another release), would be added again at the next start. Jobs added at
    run time, and declared jobs whose declaration is gone everywhere, pass.
    """
    from django_apscheduler.models import DjangoJob

    declaration = discover().get(job_id)
    if declaration is not None:
        raise DeclaredJobError(job_id, f"@scheduled_job on {_path(declaration.func)}")
    using = router.db_for_write(DjangoJob)
    instances = declared_by_live_instances(using).get(job_id)
    if instances:
        raise DeclaredJobError(
            job_id, f"by the code of the live scheduler instances {', '.join(sorted(instances))}"
        )
