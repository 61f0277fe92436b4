"""Tasks for the hand-off tests, for Django Tasks (where installed) and Celery.

Each task appends one JSON line to ``path`` when it runs: the pid of the
process that ran it, the task id, and ``tag`` (so a test can tell which fire
it was). The test compares those pids with its workers' and schedulers'.
"""

from __future__ import annotations

import json
import os
import time
from importlib.util import find_spec
from typing import Any

from celery import Celery, current_task, shared_task

import tests.celery_app  # noqa: F401  (makes the test app current)

try:
    from django.tasks import task  # Django 6
except ImportError:
    try:
        from django_tasks import task  # the backport
    except ImportError:  # Django Tasks not installed: only the Celery tasks exist
        task = None  # type: ignore[assignment]


def _note(path: str, tag: str, task_id: Any) -> None:
    line = json.dumps({"pid": os.getpid(), "tag": tag, "task_id": str(task_id), "t": time.time()})
    with open(path, "a") as out:
        out.write(line + "\n")


def _sleep_until(marker: str) -> None:
    deadline = time.time() + 300
    while not os.path.exists(marker) and time.time() < deadline:
        time.sleep(0.1)


#: The Django Tasks tests need django-tasks-db's backend and worker (Django 5.2+).
HAS_TASKS_DB = task is not None and find_spec("django_tasks_db") is not None


# --- Celery ----------------------------------------------------------------------


def _note_transaction(path: str) -> None:
    """Note whether this runs inside a transaction of the default database."""
    from django.db import connection

    with open(path, "a") as file:
        file.write(json.dumps({"pid": os.getpid(), "atomic": connection.in_atomic_block}) + "\n")


@shared_task
def celery_in_transaction(path: str) -> None:
    _note_transaction(path)


@shared_task
def celery_note(path: str, tag: str = "") -> int:
    _note(path, tag, current_task.request.id)
    return os.getpid()


@shared_task
def celery_fail(path: str, tag: str = "") -> None:
    _note(path, tag, current_task.request.id)
    raise ValueError(f"celery task failed on purpose ({tag})")


@shared_task
def celery_hang(path: str, marker: str) -> None:
    """Note the start, then wait for ``marker`` (the test kills the worker meanwhile)."""
    _note(path, "hang", current_task.request.id)
    _sleep_until(marker)


#: An app whose broker nobody listens on, publishing without retries: every enqueue fails.
unreachable = Celery("unreachable", broker="redis://127.0.0.1:1/0", set_as_current=False)
unreachable.conf.task_publish_retry = False


@unreachable.task
def celery_unreachable(path: str) -> None:
    _note(path, "unreachable", current_task.request.id)


# --- Django Tasks ----------------------------------------------------------------

if HAS_TASKS_DB:  # the test settings' TASKS (with its queues) exist only then

    @task(takes_context=True)
    def tasks_note(context: Any, path: str, tag: str = "") -> int:
        _note(path, tag, context.task_result.id)
        return os.getpid()

    @task(takes_context=True)
    def tasks_fail(context: Any, path: str, tag: str = "") -> None:
        _note(path, tag, context.task_result.id)
        raise ValueError(f"django task failed on purpose ({tag})")

    @task(takes_context=True)
    def tasks_hang(context: Any, path: str, marker: str) -> None:
        _note(path, "hang", context.task_result.id)
        _sleep_until(marker)

    @task(queue_name="reports", priority=5)
    def tasks_report(path: str) -> None:
        _note(path, "report", "")

    @task()
    def tasks_in_transaction(path: str) -> None:
        _note_transaction(path)
