"""Fires handed to task workers (Django Tasks, Celery), exactly once per fire.

A job whose function is a task is not run by the scheduler: at each fire the
scheduler records the hand-off and enqueues the task; a worker runs it. This
module is the engine-neutral part; ``tasks_django`` and ``tasks_celery`` know
each engine, and are imported only when a task of theirs is used.

**Naming a task.** APScheduler 3 stores a job's function as a text reference
and accepts only callables or such references; a Django Tasks ``Task`` is not
callable and a Celery task called directly runs where it is called. So a task
job's function is a :class:`TaskRef`, named by the text reference that
:func:`task_ref` returns (``"django_apscheduler.handoff:task.myapp.tasks.send"``),
which resolves to the task at each fire. The ``client`` API and
``@scheduled_job`` make it from a task themselves.

**Exactly once.** At a fire, :func:`hand_off`:

1. inserts the (job, run time) execution row, status "Queued", and commits it.
   The row is unique (``unique_job_executions``): of several schedulers or
   retries, only the one whose insert succeeds goes on;
2. locks the row, notes the enqueue on it (``handed_off_at``, the task id)
   and enqueues the task once, in one transaction that commits the note
   (Celery: with a ``task_id`` derived from the job and the run time; Django
   Tasks' database backend on the same database: the task commits with it).

The executor's run of a task job only queues these steps for the process's
hand-off threads, so ``max_instances`` never refuses a fire. A scheduler that
dies between 1 and 3 leaves a "Queued" row without ``handed_off_at`` (and
with the fire's call, ``task_call``). The next housekeeping of another scheduler (:func:`sweep`),
once the dead one's instance is retired, enqueues it: the fire is not lost. It
is not doubled either: the dead process cannot enqueue any more, and on Celery
a repeated publish carries the same task id, which the worker's signals map to
the same row (the second delivery finds it started and says so).

**Recording.** The worker process has this app installed; its ready() connects
the engines' signals, which move the row to "Started execution" (naming the
worker's host and pid) and then "Executed" or "Error!". A task enqueued but
not ended within ``APSCHEDULER_HANDOFF_LOST_AFTER`` seconds is marked "Lost"
by :func:`sweep`; if it still ends later, its end is recorded over "Lost".
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib
import inspect
import logging
import os
import pickle
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote, unquote

from django.db import IntegrityError, close_old_connections, router, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from django_apscheduler import backends, conf, db, executions, internals, signing, util
from django_apscheduler.exceptions import TaskHandoffError

logger = logging.getLogger(__name__)

#: The attribute of this module that starts every task reference.
ROOT = "task"
#: How every stored task reference begins.
REF_PREFIX = f"{__name__}:{ROOT}."
#: The path segment that carries a reference's options (queue, priority, backend).
_OPTIONS_MARK = "@"
#: The options a task job may set.
OPTION_NAMES = ("queue", "priority", "backend")

#: Test hook: with this environment variable naming a file, the first hand-off of
#: the process that creates that file exits the process right after its "Queued"
#: row is committed (the crash between commit and publish, in a real process).
CRASH_AFTER_COMMIT_ENV = "DJANGO_APSCHEDULER_TEST_EXIT_AFTER_QUEUED"

#: Seconds a worker waits for the row of a task it starts (the publisher notes
#: the task id right after the enqueue: a fast worker may be there first).
ROW_WAIT = 10.0


class Engine(Protocol):
    """What ``tasks_django`` and ``tasks_celery`` provide."""

    name: str

    def is_task(self, obj: Any) -> bool: ...

    def task_path(self, task: Any) -> str: ...

    def problem(self, task: Any, options: dict[str, Any]) -> str | None: ...

    def signature(self, task: Any) -> inspect.Signature | None: ...

    def argument_problem(self, task: Any, args: tuple, kwargs: dict) -> str | None: ...

    def task_id_for(self, job_id: str, run_time: datetime) -> str | None: ...

    def label(self, task: Any, options: dict[str, Any]) -> str: ...

    def transactional(self, task: Any, options: dict[str, Any], using: str) -> bool: ...

    def runs_inline(self, task: Any, options: dict[str, Any]) -> bool: ...

    def enqueue(
        self, task: Any, args: tuple, kwargs: dict, options: dict[str, Any], task_id: str | None
    ) -> str: ...

    def connect_signals(self) -> None: ...


_ENGINE_MODULES = ("django_apscheduler.tasks_django", "django_apscheduler.tasks_celery")


@functools.cache
def engines() -> list[Engine]:
    """The task engines installed here (each module's ``ENGINE``, or none if it cannot import)."""
    found = []
    for name in _ENGINE_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        found.append(module.ENGINE)
    return found


def engine_of(obj: Any) -> Engine | None:
    """The engine whose task ``obj`` is, or None if it is no task."""
    if isinstance(obj, TaskRef):
        return None
    for engine in engines():
        if engine.is_task(obj):
            return engine
    return None


def is_task(obj: Any) -> bool:
    """True if ``obj`` is a Django Tasks ``Task`` or a Celery task (or a reference to one)."""
    return isinstance(obj, TaskRef) or engine_of(obj) is not None


# --- references --------------------------------------------------------------------


def _encode_options(options: dict[str, Any]) -> str:
    parts = [f"{k}={quote(str(options[k]), safe='')}" for k in sorted(options)]
    return _OPTIONS_MARK + "&".join(parts).replace(".", "%2E")


def _decode_options(segment: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for part in segment[len(_OPTIONS_MARK) :].split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        value = unquote(value)
        options[key] = int(value) if key == "priority" else value
    return options


class TaskRef:
    """A job function that names a task by import path, with the job's enqueue options.

    APScheduler resolves the stored reference to one of these, attribute by
    attribute (``task`` -> ``task.myapp`` -> ...), without importing anything:
    the task is imported at the fire. Called directly (by a scheduler on
    another job store), it enqueues the task without a hand-off record; the
    ``DjangoJobStore`` hands it off through :func:`hand_off` instead.
    """

    __slots__ = ("path", "options")

    def __init__(self, path: str = "", options: dict[str, Any] | None = None) -> None:
        self.path = path
        self.options = dict(options or {})

    def __getattr__(self, name: str) -> TaskRef:
        if name.startswith("__"):
            raise AttributeError(name)
        if name.startswith(_OPTIONS_MARK):
            return TaskRef(self.path, _decode_options(name))
        return TaskRef(f"{self.path}.{name}" if self.path else name, self.options)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TaskRef) and other.path == self.path and other.options == self.options
        )

    def __hash__(self) -> int:
        return hash((self.path, tuple(sorted(self.options.items()))))

    def __repr__(self) -> str:
        return f"<TaskRef {self.reference}>"

    @property
    def reference(self) -> str:
        """The text reference APScheduler stores for this job function."""
        ref = REF_PREFIX + self.path
        return ref + "." + _encode_options(self.options) if self.options else ref

    def resolve(self) -> tuple[Any, Engine]:
        """The task this names and its engine; ``TaskHandoffError`` if it is not one."""
        try:
            task = import_string(self.path)
        except ImportError as exc:
            raise TaskHandoffError(
                None, f"the task {self.path!r} cannot be imported ({exc})"
            ) from exc
        engine = engine_of(task)
        if engine is None:
            raise TaskHandoffError(
                None,
                f"{self.path!r} is not a Django Tasks Task nor a Celery task (or its engine is "
                "not installed: pip install 'django-apscheduler[tasks]' or '[celery]')",
            )
        return task, engine

    @property
    def __signature__(self) -> inspect.Signature | None:
        # APScheduler checks a job's arguments against its function's signature.
        if not self.path:
            return None
        task, engine = self.resolve()
        return engine.signature(task)

    @property
    def __name__(self) -> str:  # type: ignore[override]
        return self.path.rpartition(".")[2]

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        task, engine = self.resolve()
        return engine.enqueue(task, args, kwargs, self.options, None)


#: What every stored task reference starts from (``django_apscheduler.handoff:task...``).
task = TaskRef()


def task_ref(task_or_path: Any, **options: Any) -> str:
    """The text reference that names a task as a job function, for ``scheduler.add_job``.

    ``task_or_path`` is a Django Tasks ``Task``, a Celery task, or its import
    path (``"myapp.tasks.send_report"``). ``options`` may set ``queue``,
    ``priority`` and ``backend`` (Django Tasks' backend alias) for this job's
    enqueues, over the task's own. ::

        scheduler.add_job(task_ref(send_report, queue="reports"), "cron", hour=3, id="report")
    """
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(
            f"task_ref(): unknown options {', '.join(unknown)}; use {', '.join(OPTION_NAMES)}"
        )
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(task_or_path, TaskRef):
        return TaskRef(task_or_path.path, {**task_or_path.options, **options}).reference
    if isinstance(task_or_path, str):
        path = task_or_path.replace(":", ".")
    else:
        engine = engine_of(task_or_path)
        if engine is None:
            raise TypeError(
                f"task_ref(): {task_or_path!r} is not a Django Tasks Task nor a Celery task"
            )
        path = engine.task_path(task_or_path)
    for segment in path.split("."):
        if not segment.isidentifier():
            raise ValueError(f"task_ref(): {path!r} is not an import path")
    return TaskRef(path, options).reference


def as_job_function(func: Any) -> Any:
    """``func``, or the reference naming it when it is a task (``client`` and ``@scheduled_job``)."""
    if not isinstance(func, str) and is_task(func):
        return task_ref(func)
    return func


def job_task_ref(job: Any) -> TaskRef | None:
    """The task reference ``job`` runs, or None for a job that runs in the scheduler."""
    func = getattr(job, "func", None)
    return func if isinstance(func, TaskRef) and func.path else None


# --- checks at add_job -----------------------------------------------------------------


def check_job(job: Any) -> None:
    """Refuse a job whose task cannot be handed off, naming the job (and the argument).

    Called by ``DjangoJobStore.add_job``/``update_job``: the task's engine is
    installed and configured, its options are valid, and its arguments survive
    the engine's serialisation. A Celery task given as the function itself
    would run in the scheduler: it is refused with the way to name it.
    """
    ref = job_task_ref(job)
    if ref is None:
        engine = engine_of(getattr(job, "func", None))
        if engine is not None:
            raise TaskHandoffError(
                job.id,
                f"its function is the {engine.name} task {job.func_ref!r}, which would run in "
                "the scheduler; name it with django_apscheduler.handoff.task_ref(...) to hand "
                "it to the workers",
            )
        return
    problem = task_problem(ref)
    if problem:
        raise TaskHandoffError(job.id, problem)
    task, engine = ref.resolve()
    problem = engine.argument_problem(task, tuple(job.args), dict(job.kwargs))
    if problem:
        raise TaskHandoffError(job.id, problem)


def task_problem(ref: TaskRef) -> str | None:
    """Why ``ref``'s task cannot be handed off here (engine missing, not configured), or None."""
    unknown = sorted(set(ref.options) - set(OPTION_NAMES))
    if unknown:
        return f"unknown task options {', '.join(unknown)}"
    try:
        task, engine = ref.resolve()
    except TaskHandoffError as exc:
        return exc.problem
    return engine.problem(task, ref.options)


# --- the hand-off ----------------------------------------------------------------------

_task_jobs: set[str] = set()
_task_jobs_lock = threading.Lock()


def note_dispatch(job_id: str, handed_off: bool) -> None:
    """Note whether the job being dispatched here is handed off (its events are not logged)."""
    with _task_jobs_lock:
        if handed_off:
            _task_jobs.add(job_id)
        else:
            _task_jobs.discard(job_id)


def handed_off(job_id: str) -> bool:
    """True if this process hands ``job_id``'s fires to workers (see :func:`note_dispatch`)."""
    return job_id in _task_jobs


#: Threads of each process that record and enqueue its fires' hand-offs.
HANDOFF_THREADS = 4
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _handoff_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():  # a forked child has no threads
            # Not db.serve_scheduler's: a hand-off waits for the broker inside its
            # row's transaction, for as long as the broker takes.
            _pool = concurrent.futures.ThreadPoolExecutor(
                HANDOFF_THREADS, thread_name_prefix="django_apscheduler-handoff"
            )
            _pool_pid = os.getpid()
        return _pool


def _hand_off_logged(
    job_id: str, run_time: Any, ref: TaskRef, args: Any, kwargs: Any, instance: str | None
) -> None:
    try:
        hand_off(job_id, run_time, ref, args, kwargs, instance)
    except Exception:
        logger.exception("Could not hand off job %r's fire at %s", job_id, run_time)
    finally:
        close_old_connections()


def instrument(job: Any, instance: Any) -> None:
    """Make ``job``'s run, in the executor, hand the fire off instead of running the task.

    The executor's run only queues the hand-off for this process's hand-off
    threads and returns: a task job's ``max_instances`` never refuses a fire
    because an earlier hand-off is still writing (the engine runs the task;
    its concurrency is the engine's). ``instance`` returns the scheduler
    instance the hand-off is credited to.
    """
    ref = job_task_ref(job)
    assert ref is not None
    job_id = job.id

    def hand_off_fire(*args: Any, **kwargs: Any) -> None:
        run_time = internals.caller_run_time()
        _handoff_pool().submit(_hand_off_logged, job_id, run_time, ref, args, kwargs, instance())

    job.func = hand_off_fire


@dataclass(frozen=True)
class HandOff:
    """One fire handed off: its execution row, where it went and its task id."""

    execution_id: int
    backend: str
    task_id: str


def _crash_hook() -> None:
    marker = os.environ.get(CRASH_AFTER_COMMIT_ENV)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    logger.warning("Test hook %s: exiting after the Queued row's commit", CRASH_AFTER_COMMIT_ENV)
    os._exit(17)


def hand_off(
    job_id: str,
    run_time: datetime | None,
    ref: TaskRef,
    args: Any,
    kwargs: Any,
    instance: str | None = None,
) -> HandOff | None:
    """Record the fire of ``job_id`` at ``run_time`` as "Queued", then enqueue its task once.

    Returns None when the fire was handed off already (another scheduler,
    or an earlier attempt, inserted its row) or the job is gone.
    """
    from django_apscheduler.models import DjangoJobExecution

    if run_time is None:
        run_time = timezone.now()
    try:
        task, engine = ref.resolve()
    except TaskHandoffError as exc:
        # The task is gone, or its engine is not installed here: the fire is
        # logged as failed, with the reason, rather than skipped without a trace.
        logger.error("Job %r's fire at %s cannot be handed off: %s", job_id, run_time, exc)
        executions.write_now(
            [
                executions.Record(
                    job_id,
                    run_time,
                    DjangoJobExecution.ERROR,
                    exception=str(exc),
                    finished=executions.now_epoch(),
                    instance=instance,
                )
            ]
        )
        return None
    stored_run_time = util.get_django_internal_datetime(run_time)
    using = router.db_for_write(DjangoJobExecution)
    label = engine.label(task, ref.options)
    task_id = engine.task_id_for(job_id, stored_run_time)

    attempts = 0

    def insert() -> int | None:
        nonlocal attempts
        attempts += 1
        try:
            with transaction.atomic(using=using):
                row = DjangoJobExecution.objects.using(using).create(
                    job_id=job_id,
                    run_time=stored_run_time,
                    status=DjangoJobExecution.QUEUED,
                    instance=instance,
                    task_backend=label,
                    task_id=task_id,
                    task_call=signing.seal(
                        f"handoff-call:{job_id}",
                        pickle.dumps((ref.reference, tuple(args), dict(kwargs))),
                    ),
                )
            return row.pk
        except IntegrityError:
            if attempts > 1:
                # A retry after a lost connection: the first attempt's commit may
                # have gone through. Then the row is ours, still to be enqueued.
                mine = (
                    DjangoJobExecution.objects.using(using)
                    .unpublished()
                    .filter(job_id=job_id, run_time=stored_run_time, instance=instance)
                    .values_list("pk", flat=True)
                    .first()
                )
                if mine is not None:
                    return mine
            return None  # handed off already, or the job was removed

    execution_id = db.run_resiliently(insert, using=using, description="record a hand-off")
    if execution_id is None:
        logger.debug("Job %r's fire at %s was handed off already", job_id, run_time)
        return None
    _crash_hook()
    return publish(
        execution_id, task, engine, ref.options, tuple(args), dict(kwargs), task_id, instance
    )


def publish(
    execution_id: int,
    task: Any,
    engine: Engine,
    options: dict[str, Any],
    args: tuple,
    kwargs: dict,
    task_id: str | None,
    owner: str | None,
) -> HandOff | None:
    """Enqueue the task of the "Queued" row ``execution_id`` and note it on the row.

    ``owner`` is the scheduler instance the row names: the row is enqueued
    only while it still does (a sweep takes a dead scheduler's rows over by
    naming itself). The row stays locked from that check until the note,
    written before the enqueue, commits, whatever the engine: a sweep that
    takes a scheduler for dead while it enqueues leaves the locked row (on
    SQLite it waits for the write lock), then finds it noted, so the task is
    never enqueued twice. The enqueue itself is never repeated (a
    failure that hid a success would enqueue twice); a failed one marks the
    row "Error!" with the reason.
    """
    from django_apscheduler.models import DjangoJobExecution

    using = router.db_for_write(DjangoJobExecution)
    label = engine.label(task, options)
    executions_ = DjangoJobExecution.objects.using(using)
    rows = executions_.unpublished().filter(pk=execution_id, instance=owner)
    # Django Tasks' database backend on this database: the task and the note
    # commit together (a crash leaves neither). Other engines enqueue outside
    # the transaction; the lock still keeps other publishers out meanwhile.
    transactional = engine.transactional(task, options, using)
    backend = backends.for_alias(using)
    enqueued: str | None = None  # set once an enqueue outside the transaction went through

    def fail(exc: Exception) -> None:
        reason = f"Could not hand the fire to {label}: {type(exc).__name__}: {exc}"
        logger.error("Execution %s: %s", execution_id, reason)
        db.run_resiliently(
            lambda: rows.fail_handoff(reason),
            using=using,
            description="record a failed hand-off",
        )

    def taken_over() -> None:
        logger.warning(
            "Execution %s was taken over by another scheduler (this one was taken for "
            "dead); not enqueueing it here",
            execution_id,
        )

    if engine.runs_inline(task, options):
        # This enqueue runs the task here and now (Django Tasks' ImmediateBackend,
        # Celery's task_always_eager): not under the row's lock, which would be
        # held for the whole run (on SQLite, the database's write lock).
        if not db.run_resiliently(rows.exists, using=using, description="check a hand-off"):
            taken_over()
            return None
        _inline.execution_id = execution_id  # the run's signals, in this thread, write this row
        try:
            enqueued = engine.enqueue(task, args, kwargs, options, task_id)
        except Exception as exc:
            fail(exc)
            return None
        finally:
            _inline.execution_id = _inline.task_id = None

    def enqueue_and_note() -> str | None:
        nonlocal enqueued
        with backend.write_transaction(using):
            if not backend.locked_keys(rows, using, skip_locked=False):
                noted = executions_.filter(pk=execution_id, instance=owner)
                # A retry whose first attempt committed: enqueued already, as noted.
                return noted.exclude(handed_off_at=None).values_list("task_id", flat=True).first()
            if enqueued is not None:
                rows.note_enqueued(enqueued, label)  # a retry after the enqueue: only the note
                return enqueued
            # The note is written before the enqueue, so that every lock it takes
            # is held before the one step that cannot be undone. Written after,
            # its update of the hand-off index could deadlock on MariaDB with a
            # sweep that had locked the index entry and waited for the row: the
            # server then rolled the note back, the sweep took the row over and
            # the task was enqueued twice.
            rows.note_enqueued(task_id, label)
            new_id = engine.enqueue(task, args, kwargs, options, task_id)
            if not transactional:
                enqueued = new_id
            if new_id != task_id:  # the engine named the task itself (Django Tasks)
                # The one write after the enqueue: it changes only the task-id
                # index, through which nothing takes a lock.
                executions_.filter(pk=execution_id).rename_task(new_id)
        return new_id

    try:
        new_id = db.run_resiliently(enqueue_and_note, using=using, description="enqueue")
    except Exception as exc:
        if enqueued is not None:
            # Enqueued, but the row still reads "not enqueued": should this process
            # die before the database is back, a sweep would enqueue it again.
            logger.exception(
                "Execution %s was handed to %s as task %s, but that could not be noted",
                execution_id,
                label,
                enqueued,
            )
            return HandOff(execution_id, label, enqueued)
        fail(exc)
        return None
    if new_id is None:
        if enqueued is None:
            taken_over()
            return None
        # Ran inline: its run already moved the row past "Queued" (or a sweep took it).
        new_id = enqueued
    logger.info("Execution %s handed to %s as task %s", execution_id, label, new_id)
    return HandOff(execution_id, label, new_id)


# --- the sweep: unpublished and lost hand-offs -----------------------------------------


def sweep(instance: str | None = None) -> tuple[int, int]:
    """Enqueue the hand-offs dead schedulers left unpublished; mark overdue ones "Lost".

    Returns (enqueued, lost). Run by every scheduler's housekeeping (at each
    retirement round) and safe from several processes at once: each row is
    taken over first, under its row lock, and a row another session holds is
    left to a later sweep.
    """
    from django_apscheduler.models import DjangoJobExecution, DjangoSchedulerInstance

    using = router.db_for_write(DjangoJobExecution)
    executions_ = DjangoJobExecution.objects.using(using)
    now = timezone.now()
    unpublished = list(executions_.unpublished().order_by("run_time"))
    alive = (
        set(DjangoSchedulerInstance.objects.using(using).alive().values_list("id", flat=True))
        if unpublished
        else set()
    )
    settle_by = now - timedelta(seconds=conf.lease_time())
    orphans = [
        row
        for row in unpublished
        if row.instance not in alive
        and (
            row.instance is not None or row.run_time <= util.get_django_internal_datetime(settle_by)
        )
    ]
    enqueued = 0
    for row in orphans:
        if not _take_over(row, instance, using):
            continue
        row.instance = instance
        if _republish(row):
            enqueued += 1
    cutoff = now - timedelta(seconds=conf.handoff_lost_after())
    lost = _mark_lost(
        executions_.unfinished_handoffs(cutoff),
        f"Lost: the task was enqueued and its worker did not report its end within "
        f"APSCHEDULER_HANDOFF_LOST_AFTER ({conf.handoff_lost_after():g} s).",
        using,
    )
    if enqueued or lost:
        logger.warning(
            "Hand-offs: %d left unpublished by a stopped scheduler enqueued, %d marked Lost",
            enqueued,
            lost,
        )
    return enqueued, lost


def _take_over(row: Any, instance: str | None, using: str) -> bool:
    """Name ``instance`` as the scheduler of an orphaned hand-off; False if it is not to be had.

    Not to be had: another sweep took it, or a session holds its row, which
    is its own scheduler enqueueing it (taken for dead, it is not). That row is
    skipped, not waited for: the sweep runs in the housekeeping thread, whose
    heartbeat must not wait on a broker. A later sweep looks at it again.
    (Where the database cannot skip locked rows, and on SQLite, it waits.)
    """
    from django_apscheduler.models import DjangoJobExecution

    backend = backends.for_alias(using)
    executions_ = DjangoJobExecution.objects.using(using)
    with backend.write_transaction(using):
        orphan = executions_.unpublished().filter(pk=row.pk, instance=row.instance)
        if not backend.locked_keys(orphan, using, skip_locked=True):
            return False
        executions_.filter(pk=row.pk).take_over(instance)
    return True


def _mark_lost(overdue: Any, reason: str, using: str) -> int:
    """Mark the ``overdue`` hand-offs "Lost", leaving those whose rows another session holds.

    A plain read first, which waits for nobody: an idle sweep costs one
    statement. An UPDATE over the hand-off index waited on MariaDB for every
    row a publisher held, even one far from overdue; the rows are locked
    skipping those instead (a later sweep looks at them again).
    """
    from django_apscheduler.models import DjangoJobExecution

    if not overdue.exists():
        return 0
    backend = backends.for_alias(using)
    with backend.write_transaction(using):
        ids = backend.locked_keys(overdue, using, skip_locked=True)
        if not ids:
            return 0
        return DjangoJobExecution.objects.using(using).filter(pk__in=ids).mark_lost(reason)


def _republish(row: Any) -> bool:
    """Enqueue the task of an unpublished "Queued" row, as its fire had it (``task_call``)."""
    from apscheduler.util import ref_to_obj

    from django_apscheduler.models import DjangoJobExecution

    using = router.db_for_write(DjangoJobExecution)
    try:
        # Signed like job states: a planted row is refused, never unpickled.
        call = signing.unseal(f"handoff-call:{row.job_id}", row.task_call)
        reference, args, kwargs = signing.loads(call)
        ref = ref_to_obj(reference)
        task, engine = ref.resolve()
    except Exception as exc:
        DjangoJobExecution.objects.using(using).unpublished().filter(pk=row.pk).fail_handoff(
            f"Could not enqueue a hand-off left unpublished: {exc}"
        )
        return False
    logger.warning(
        "Job %r's fire at %s was recorded Queued by a scheduler that stopped before "
        "enqueueing it; enqueueing it now",
        row.job_id,
        row.run_time,
    )
    return (
        publish(row.pk, task, engine, ref.options, args, kwargs, row.task_id, row.instance)
        is not None
    )


# --- the worker side -------------------------------------------------------------------


def worker_identity() -> str:
    """``host:pid:worker``: the worker process that runs a handed-off task, as the admin shows it."""
    return f"{socket.gethostname()[:200]}:{os.getpid()}:worker"


#: The row of the hand-off whose task this thread runs inline (``Engine.runs_inline``).
_inline = threading.local()

#: The row each task that started in this process runs for, from its start to
#: its end: task id -> (pk, job id, run time, status). Its end is then recorded
#: without looking the row up again.
_rows_of_running: util.Recent[str, tuple[Any, str, datetime, str]] = util.Recent(10_000)


def _wait_for_row(task_id: str, label: str | None, wait: float) -> Any:
    """The hand-off row of task ``task_id``: (pk, job id, run time, status), or None.

    A publisher notes a Django Tasks task id right after the enqueue (in the
    same transaction for the database backend on this database); a worker
    that is faster waits for it, but only while some hand-off to ``label`` is
    still unnoted, so tasks that are no hand-offs never wait.
    """
    from django_apscheduler.models import DjangoJobExecution

    using = router.db_for_write(DjangoJobExecution)
    executions_ = DjangoJobExecution.objects.using(using)
    inline = getattr(_inline, "execution_id", None)
    if inline is not None:
        # Run inline by this thread's enqueue, before its id could be noted: the
        # first task that starts here is that hand-off's (not one it enqueues).
        if getattr(_inline, "task_id", None) is None:
            _inline.task_id = task_id
        if _inline.task_id == task_id:
            fields = ("pk", "job_id", "run_time", "status")
            return executions_.filter(pk=inline).values_list(*fields).first()
    deadline = time.monotonic() + wait
    while True:
        row = executions_.of_task(task_id).values_list("pk", "job_id", "run_time", "status").first()
        if row is not None or time.monotonic() >= deadline:
            return row
        if label is None or not executions_.unpublished().filter(task_backend=label).exists():
            return None
        time.sleep(0.05)


def worker_started(task_id: str, label: str | None = None, wait: float = ROW_WAIT) -> bool:
    """A worker starts task ``task_id``: its hand-off row becomes "Started execution" here.

    Returns False for tasks that are no hand-off (no row names them).
    """
    from django_apscheduler.models import DjangoJobExecution

    found = _wait_for_row(task_id, label, wait)
    if found is None:
        return False
    _rows_of_running.put(task_id, found)
    pk, job_id, run_time, status = found
    using = router.db_for_write(DjangoJobExecution)
    started = db.run_resiliently(
        lambda: (
            DjangoJobExecution.objects.using(using).filter(pk=pk).mark_started(worker_identity())
        ),
        using=using,
        description="record a task's start",
    )
    if not started:
        logger.warning(
            "Task %s (job %r, run time %s) started again, on %s, although its run is %r: "
            "a repeated delivery",
            task_id,
            job_id,
            run_time,
            worker_identity(),
            status,
        )
    return True


def worker_finished(
    task_id: str,
    succeeded: bool,
    *,
    exception: str | None = None,
    traceback: str | None = None,
    started: float | None = None,
    label: str | None = None,
    wait: float = ROW_WAIT,
) -> bool:
    """Task ``task_id`` ended on this worker: record "Executed" or "Error!" on its row."""
    from django_apscheduler.models import DjangoJobExecution

    found = _rows_of_running.pop(task_id) or _wait_for_row(task_id, label, wait)
    if found is None:
        return False
    _, job_id, run_time, _ = found
    record = executions.Record(
        job_id,
        run_time,
        DjangoJobExecution.SUCCESS if succeeded else DjangoJobExecution.ERROR,
        exception=None if succeeded else (exception or f"Task {task_id} failed"),
        traceback=traceback,
        started=started,
        finished=executions.now_epoch(),
    )
    executions.write_now([record])
    return True


def connect_worker_signals() -> None:
    """Connect every installed engine's signals (called by the app's ``ready()``)."""
    for engine in engines():
        try:
            engine.connect_signals()
        except Exception:  # an engine installed but broken must not stop the app loading
            logger.exception("Could not connect the %s signals", engine.name)
