"""Django Tasks as a hand-off engine (see :mod:`django_apscheduler.handoff`).

Django 6 has ``django.tasks``; on Django 4.2 and 5.2 the ``django-tasks``
backport provides the same API (extra ``tasks``). Importing this module fails
with ImportError when neither is installed, which ``handoff`` takes as "no
such engine".
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import router

logger = logging.getLogger(__name__)

#: (the package, its ``base`` module, its ``signals`` module) of each API installed.
_modules: list[tuple[Any, Any, Any]] = []
try:  # Django 6
    import django.tasks as _builtin
    from django.tasks import base as _builtin_base
    from django.tasks import signals as _builtin_signals

    _modules.append((_builtin, _builtin_base, _builtin_signals))
except ImportError:  # Django < 6
    pass
try:  # the backport (also usable on Django 6 by code written for it)
    import django_tasks as _backport
    from django_tasks import base as _backport_base
    from django_tasks import signals as _backport_signals

    _modules.append((_backport, _backport_base, _backport_signals))
except ImportError:
    pass
if not _modules:
    raise ImportError("Django Tasks is not installed (Django 6, or pip install django-tasks)")

#: Prefix of the backend labels on hand-off rows: ``django-tasks:<alias>``.
LABEL_PREFIX = "django-tasks:"


def _module_of(task: Any) -> Any:
    for module, base, _ in _modules:
        if isinstance(task, base.Task):
            return module
    return None


def _configured(task: Any, options: dict[str, Any]) -> Any:
    """``task`` with the job's options (queue, priority, backend) over its own."""
    changes: dict[str, Any] = {}
    if "queue" in options:
        changes["queue_name"] = options["queue"]
    if "priority" in options:
        changes["priority"] = options["priority"]
    if "backend" in options:
        changes["backend"] = options["backend"]
    return task.using(**changes) if changes else task


def _backend_of(task: Any, options: dict[str, Any]) -> Any:
    """The backend instance ``task`` is enqueued on, with the job's options."""
    return _module_of(task).task_backends[_configured(task, options).backend]


class DjangoTasksEngine:
    """Hands fires to a Django Tasks backend (``TASKS`` setting) with ``Task.enqueue``."""

    name = "Django Tasks"

    def is_task(self, obj: Any) -> bool:
        return _module_of(obj) is not None

    def task_path(self, task: Any) -> str:
        return str(task.module_path)

    def problem(self, task: Any, options: dict[str, Any]) -> str | None:
        module = _module_of(task)
        try:
            configured = _configured(task, options)
            backend = module.task_backends[configured.backend]
            backend.validate_task(configured)
        except Exception as exc:  # InvalidTaskBackend, InvalidTask, ImproperlyConfigured...
            return (
                f"its task {task.module_path!r} cannot be enqueued on Django Tasks backend "
                f"{options.get('backend', task.backend)!r} ({type(exc).__name__}: {exc}); "
                "check the TASKS setting"
            )
        return None

    def signature(self, task: Any) -> inspect.Signature | None:
        try:
            sig = inspect.signature(task.func)
        except (TypeError, ValueError):
            return None
        if task.takes_context:  # the context is the worker's to pass
            sig = sig.replace(parameters=list(sig.parameters.values())[1:])
        return sig

    def argument_problem(self, task: Any, args: tuple, kwargs: dict) -> str | None:
        # Django Tasks keeps arguments as JSON; what does not come back equal is refused.
        named = [(f"args[{i}]", v) for i, v in enumerate(args)]
        named += [(f"kwargs[{k!r}]", v) for k, v in kwargs.items()]
        for name, value in named:
            try:
                same = json.loads(json.dumps(value)) == _listed(value)
            except (TypeError, ValueError) as exc:
                return f"its argument {name} ({value!r}) is not JSON ({exc})"
            if not same:
                return f"its argument {name} ({value!r}) does not survive JSON unchanged"
        return None

    def task_id_for(self, job_id: str, run_time: datetime) -> str | None:
        return None  # the backend chooses it at the enqueue

    def label(self, task: Any, options: dict[str, Any]) -> str:
        return LABEL_PREFIX + str(options.get("backend", task.backend))

    def transactional(self, task: Any, options: dict[str, Any], using: str) -> bool:
        """True for django-tasks-db's backend writing to ``using``: enqueue and note in one commit."""
        try:
            from django_tasks_db.backend import DatabaseBackend
            from django_tasks_db.models import DBTaskResult
        except (ImportError, ValueError, ImproperlyConfigured):
            return False
        backend = _backend_of(task, options)
        return isinstance(backend, DatabaseBackend) and router.db_for_write(DBTaskResult) == using

    def runs_inline(self, task: Any, options: dict[str, Any]) -> bool:
        """True for the ``ImmediateBackend``, whose enqueue runs the task in this process."""
        backend = _backend_of(task, options)
        immediate = tuple(
            importlib.import_module(f"{package.__name__}.backends.immediate").ImmediateBackend
            for package, _, _ in _modules
        )
        return isinstance(backend, immediate)

    def enqueue(
        self, task: Any, args: tuple, kwargs: dict, options: dict[str, Any], task_id: str | None
    ) -> str:
        result = _configured(task, options).enqueue(*args, **kwargs)
        return str(result.id)

    def connect_signals(self) -> None:
        for _, _, signals in _modules:
            signals.task_started.connect(_on_started, dispatch_uid=f"{__name__}.started")
            signals.task_finished.connect(_on_finished, dispatch_uid=f"{__name__}.finished")


def _listed(value: Any) -> Any:
    """``value`` as JSON gives it back: tuples as lists, recursively."""
    if isinstance(value, (list, tuple)):
        return [_listed(v) for v in value]
    if isinstance(value, dict):
        return {k: _listed(v) for k, v in value.items()}
    return value


def _label_of(task_result: Any) -> str:
    return LABEL_PREFIX + str(task_result.backend)


def _on_started(sender: Any, task_result: Any, **kwargs: Any) -> None:
    from django_apscheduler import handoff

    try:
        handoff.worker_started(str(task_result.id), _label_of(task_result))
    except Exception:
        logger.exception("Could not record the start of task %s", task_result.id)


def _on_finished(sender: Any, task_result: Any, **kwargs: Any) -> None:
    from django_apscheduler import handoff

    try:
        status = str(getattr(task_result.status, "value", task_result.status))
        errors = list(getattr(task_result, "errors", []) or [])
        error = errors[-1] if errors else None
        started_at = getattr(task_result, "started_at", None)
        handoff.worker_finished(
            str(task_result.id),
            status == "SUCCESSFUL",
            exception=_exception_text(error),
            traceback=getattr(error, "traceback", None),
            started=started_at.timestamp() if started_at else None,
            label=_label_of(task_result),
        )
    except Exception:
        logger.exception("Could not record the end of task %s", task_result.id)


def _exception_text(error: Any) -> str | None:
    if error is None:
        return None
    # The message is the traceback's last line ("ValueError: boom").
    lines = [line for line in str(getattr(error, "traceback", "") or "").splitlines() if line]
    return lines[-1] if lines else str(getattr(error, "exception_class_path", "error"))


ENGINE = DjangoTasksEngine()
