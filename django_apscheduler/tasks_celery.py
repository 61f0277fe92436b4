"""Celery as a hand-off engine (see :mod:`django_apscheduler.handoff`).

Each fire is published with ``apply_async`` and a task id derived from the job
and the run time (:func:`derived_task_id`), so a repeated publish of one fire
carries the same id and is recorded on the same row. Importing this module
fails with ImportError when Celery is not installed (extra ``celery``).
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from datetime import datetime
from typing import Any

from celery import signals
from celery.app.task import Task

logger = logging.getLogger(__name__)

#: Every hand-off's task id starts with this, so the worker's signals skip other tasks
#: without a query.
TASK_ID_PREFIX = "apscheduler-"
_NAMESPACE = uuid.UUID("8d4f3c52-0a55-4d3e-9a8c-1b3f6f2e7c10")

#: Prefix of the backend labels on hand-off rows: ``celery:<queue>``.
LABEL_PREFIX = "celery:"


def derived_task_id(job_id: str, run_time: datetime) -> str:
    """The Celery task id of the fire of ``job_id`` at ``run_time`` (the same in every process)."""
    return TASK_ID_PREFIX + str(uuid.uuid5(_NAMESPACE, f"{job_id}\x00{run_time.isoformat()}"))


def _task_of(obj: Any) -> Any:
    """The Celery task ``obj`` is (``@shared_task`` gives a proxy), or None."""
    try:
        return obj if isinstance(obj, Task) else None
    except Exception:  # a proxy whose app is not ready
        return None


class CeleryEngine:
    """Hands fires to Celery workers with ``Task.apply_async``."""

    name = "Celery"

    def is_task(self, obj: Any) -> bool:
        return _task_of(obj) is not None

    def task_path(self, task: Any) -> str:
        # The decorated function's path (proxies of @shared_task and app.task forward ``run``).
        return f"{task.run.__module__}.{task.run.__name__}"

    def problem(self, task: Any, options: dict[str, Any]) -> str | None:
        if "backend" in options:
            return "the option backend is for Django Tasks; a Celery task takes queue and priority"
        if not task.app.conf.broker_url:
            return (
                f"its Celery task {task.name!r} belongs to a Celery app without a broker "
                "(set broker_url, e.g. CELERY_BROKER_URL with config_from_object)"
            )
        return None

    def signature(self, task: Any) -> inspect.Signature | None:
        try:
            return inspect.signature(task.run)
        except (TypeError, ValueError):
            return None

    def argument_problem(self, task: Any, args: tuple, kwargs: dict) -> str | None:
        from kombu.serialization import dumps, loads

        serializer = task.serializer or task.app.conf.task_serializer
        named = [(f"args[{i}]", v) for i, v in enumerate(args)]
        named += [(f"kwargs[{k!r}]", v) for k, v in kwargs.items()]
        for name, value in named:
            try:
                content_type, encoding, data = dumps(value, serializer=serializer)
                loads(data, content_type, encoding, accept={content_type})
            except Exception as exc:
                return (
                    f"its argument {name} ({value!r}) cannot be sent with Celery's {serializer!r} "
                    f"serializer ({type(exc).__name__}: {exc})"
                )
        return None

    def task_id_for(self, job_id: str, run_time: datetime) -> str | None:
        return derived_task_id(job_id, run_time)

    def label(self, task: Any, options: dict[str, Any]) -> str:
        queue = options.get("queue") or getattr(task, "queue", None)
        return LABEL_PREFIX + str(queue or task.app.conf.task_default_queue)

    def transactional(self, task: Any, options: dict[str, Any], using: str) -> bool:
        return False

    def runs_inline(self, task: Any, options: dict[str, Any]) -> bool:
        """True with ``task_always_eager``: ``apply_async`` then runs the task in this process."""
        return bool(task.app.conf.task_always_eager)

    def enqueue(
        self, task: Any, args: tuple, kwargs: dict, options: dict[str, Any], task_id: str | None
    ) -> str:
        extra = {k: options[k] for k in ("queue", "priority") if k in options}
        result = task.apply_async(args=list(args), kwargs=kwargs, task_id=task_id, **extra)
        return str(result.id)

    def connect_signals(self) -> None:
        signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid=_PRERUN_UID)
        signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid=f"{__name__}.postrun")
        signals.task_failure.connect(_on_failure, weak=False, dispatch_uid=f"{__name__}.failure")


_starts: dict[str, float] = {}
_failures: dict[str, tuple[str, str | None]] = {}


def _ours(task_id: Any) -> bool:
    return isinstance(task_id, str) and task_id.startswith(TASK_ID_PREFIX)


_PRERUN_UID = f"{__name__}.prerun"
_prerun_is_last = False


def _run_prerun_last() -> None:
    """Move :func:`_on_prerun` behind the ``task_prerun`` receivers connected after it.

    Celery's Django fixup, connected when the worker starts (after this app's
    ``ready()``), closes every database connection before each task and after
    it. Run before that close, the start's queries open a connection only to
    lose it, and the task and its end open another. Run after it, one
    connection serves the start, the task and the end, since
    :func:`_on_postrun` runs before the fixup's closing. Moved once, at the
    first task, when the worker has connected everything it connects.
    """
    global _prerun_is_last
    if _prerun_is_last:
        return
    _prerun_is_last = True
    signals.task_prerun.disconnect(dispatch_uid=_PRERUN_UID)
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid=_PRERUN_UID)


def _on_prerun(sender: Any = None, task_id: Any = None, **kwargs: Any) -> None:
    _run_prerun_last()  # from the next task on; Celery sends this one as it was
    if not _ours(task_id):
        return
    from django_apscheduler import handoff

    _starts[task_id] = time.time()
    try:
        handoff.worker_started(task_id)
    except Exception:
        logger.exception("Could not record the start of task %s", task_id)


def _on_failure(
    sender: Any = None, task_id: Any = None, exception: Any = None, einfo: Any = None, **kw: Any
) -> None:
    if _ours(task_id):
        text = f"{type(exception).__name__}: {exception}" if exception is not None else None
        _failures[task_id] = (text or "", str(einfo.traceback) if einfo is not None else None)


def _on_postrun(sender: Any = None, task_id: Any = None, state: Any = None, **kwargs: Any) -> None:
    if not _ours(task_id):
        return
    from django_apscheduler import handoff

    started = _starts.pop(task_id, None)
    failure = _failures.pop(task_id, None)
    if state in ("RETRY", "IGNORED", "REJECTED"):
        return  # not the end of the run: the engine runs it again, or dropped it on purpose
    try:
        handoff.worker_finished(
            task_id,
            state == "SUCCESS" and failure is None,
            exception=failure[0] if failure else None,
            traceback=failure[1] if failure else None,
            started=started,
        )
    except Exception:
        logger.exception("Could not record the end of task %s", task_id)


ENGINE = CeleryEngine()
