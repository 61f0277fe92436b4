"""The private internals of APScheduler, Django and Python that ``internals.py`` relies on.

Each test asserts that the installed version still has one of them, in the
shape ``django_apscheduler.internals`` uses, and fails naming the internal and
the installed version when a release drops or changes it. The last tests check
that no other module of the package reads private internals itself.
"""

from __future__ import annotations

import ast
import asyncio
import pathlib
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import apscheduler
import django
import pytest
from apscheduler.executors.base import run_coroutine_job, run_job
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from django.db.backends.sqlite3.base import DatabaseWrapper as SQLiteDatabaseWrapper
from django.db.utils import ConnectionHandler

from django_apscheduler import internals

APSCHEDULER = f"APScheduler {getattr(apscheduler, '__version__', '?')}"
DJANGO = f"Django {django.get_version()}"
PYTHON = f"Python {sys.version.split()[0]}"

PACKAGE = pathlib.Path(internals.__file__).parent


def noop() -> None:
    """A job function."""


@pytest.fixture
def scheduler() -> Iterator[BackgroundScheduler]:
    """A started (paused) background scheduler with a 3-thread pool and a memory store."""
    sched = BackgroundScheduler(
        jobstores={"default": MemoryJobStore()},
        executors={"default": ThreadPoolExecutor(3)},
        timezone="UTC",
    )
    sched.start(paused=True)
    yield sched
    sched.shutdown(wait=True)


def wait_for(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


# --- APScheduler --------------------------------------------------------------------


def test_scheduler_executors_is_a_dict_of_executors(scheduler):
    raw = getattr(scheduler, "_executors", None)
    assert isinstance(raw, dict), (
        f"BaseScheduler._executors is {raw!r} in {APSCHEDULER}, not a dict of executors by "
        "alias: update django_apscheduler.internals.executors"
    )
    assert internals.executors(scheduler) is raw
    assert isinstance(raw.get("default"), ThreadPoolExecutor)


def test_executor_instances_counts_runs_until_they_end(scheduler):
    executor = internals.executors(scheduler)["default"]
    raw = getattr(executor, "_instances", None)
    assert isinstance(raw, dict), (
        f"BaseExecutor._instances is {raw!r} in {APSCHEDULER}, not a dict of runs per job id: "
        "update django_apscheduler.internals.running_instances"
    )
    release = threading.Event()
    scheduler.add_job(release.wait, id="blocking", args=[10])
    job = scheduler.get_job("blocking")
    executor.submit_job(job, [datetime.now(timezone.utc)])
    wait_for(
        lambda: internals.running_instances(executor).get("blocking") == 1,
        f"BaseExecutor._instances to count the running job ({APSCHEDULER})",
    )
    release.set()
    wait_for(
        lambda: "blocking" not in internals.running_instances(executor),
        f"BaseExecutor._instances to forget the finished job ({APSCHEDULER})",
    )
    assert internals.running_instances(None) == {}


def test_pool_max_workers_is_the_thread_count(scheduler):
    executor = internals.executors(scheduler)["default"]
    pool = getattr(executor, "_pool", None)
    workers = getattr(pool, "_max_workers", None)
    assert workers == 3, (
        f"ThreadPoolExecutor._pool._max_workers is {workers!r} (pool {pool!r}) in {APSCHEDULER} "
        f"on {PYTHON}, not the thread count 3: update django_apscheduler.internals.max_workers"
    )
    assert internals.max_workers(executor) == 3
    assert internals.max_workers(object()) is None


def test_scheduler_create_lock_makes_a_lock(scheduler):
    assert callable(getattr(scheduler, "_create_lock", None)), (
        f"BaseScheduler._create_lock is gone in {APSCHEDULER}: "
        "update django_apscheduler.internals.create_lock"
    )
    lock = internals.create_lock(scheduler)
    with lock:
        pass
    assert callable(lock.acquire) and callable(lock.release)


def test_a_bound_restored_job_reaches_its_scheduler(scheduler):
    slots = set(getattr(Job, "__slots__", ()))
    assert {"_scheduler", "_jobstore_alias"} <= slots, (
        f"Job.__slots__ has no _scheduler/_jobstore_alias in {APSCHEDULER} (it has {sorted(slots)}): "
        "update django_apscheduler.internals.bind_job"
    )
    scheduler.add_job(noop, "interval", hours=1, id="bound", name="before")
    restored = Job.__new__(Job)
    restored.__setstate__(scheduler.get_job("bound").__getstate__())
    internals.bind_job(restored, scheduler, "default")
    restored.modify(name="after")
    assert scheduler.get_job("bound").name == "after"


# --- CPython -------------------------------------------------------------------------


def test_caller_run_time_is_the_run_time_apscheduler_runs(scheduler):
    assert callable(getattr(sys, "_getframe", None)), f"sys._getframe is gone in {PYTHON}"
    seen: list[Any] = []

    def wrapper() -> None:
        seen.append(internals.caller_run_time())

    async def async_wrapper() -> None:
        seen.append(internals.caller_run_time())

    scheduler.add_job(noop, id="framed", misfire_grace_time=None)
    job = scheduler.get_job("framed")
    run_time = datetime.now(timezone.utc) - timedelta(seconds=1)
    job.func = wrapper
    run_job(job, "default", [run_time], __name__)
    job.func = async_wrapper
    asyncio.run(run_coroutine_job(job, "default", [run_time], __name__))
    assert seen == [run_time, run_time], (
        f"Two frames above a job's function is no longer APScheduler's loop over run_time "
        f"({APSCHEDULER}, {PYTHON}): update django_apscheduler.internals.caller_run_time"
    )


def test_threading_register_atexit_exists():
    assert callable(getattr(threading, "_register_atexit", None)), (
        f"threading._register_atexit is gone in {PYTHON}: internals.register_thread_exit_hook "
        "falls back to atexit, which runs after the thread pools refuse work"
    )


@pytest.mark.slow
def test_thread_exit_hook_runs_while_the_pools_still_take_work():
    script = textwrap.dedent(
        """
        import concurrent.futures
        from django_apscheduler import internals

        pool = concurrent.futures.ThreadPoolExecutor(1)
        pool.submit(int).result()  # its thread runs (Python 3.12 starts none at exit)

        def hook():
            print("hook ran:", pool.submit(lambda: 42).result(), flush=True)

        internals.register_thread_exit_hook(hook)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "hook ran: 42" in result.stdout, (
        f"The hook did not run before concurrent.futures stopped its pools ({PYTHON}): "
        f"{result.stderr}"
    )


# --- Django --------------------------------------------------------------------------


def test_sqlite_transaction_start_hook_starts_atomic_transactions(tmp_path, django_db_blocker):
    assert callable(getattr(SQLiteDatabaseWrapper, "_start_transaction_under_autocommit", None)), (
        f"SQLite DatabaseWrapper._start_transaction_under_autocommit is gone in {DJANGO}: "
        "update django_apscheduler.internals.sqlite_transaction_start (BEGIN IMMEDIATE)"
    )
    handler = ConnectionHandler(
        {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "x.sqlite3")}}
    )
    conn = handler["default"]
    begun: list[str] = []

    def begin() -> None:
        begun.append("BEGIN IMMEDIATE")
        conn.cursor().execute("BEGIN IMMEDIATE")

    # A SQLite database of its own, whatever the test database is.
    with django_db_blocker.unblock():
        try:
            with internals.sqlite_transaction_start(conn, begin):
                # What transaction.atomic() calls to open its transaction.
                conn.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
            assert begun == ["BEGIN IMMEDIATE"], (
                "atomic() no longer starts a SQLite transaction through "
                f"_start_transaction_under_autocommit in {DJANGO}: "
                "update django_apscheduler.internals.sqlite_transaction_start"
            )
            assert conn.connection.in_transaction
            assert "_start_transaction_under_autocommit" not in vars(conn)
            conn.rollback()
            conn.set_autocommit(True)
        finally:
            handler.close_all()


# --- No other module reads them ------------------------------------------------------

#: Private names of others that the package may use anywhere: Django's documented
#: ``Model._meta`` API and the documented ``os._exit``.
PUBLIC_PRIVATES = frozenset({"_meta", "_exit"})

#: ``BaseJobStore.start`` sets these for its subclasses: the store reads them on ``self``.
STORE_CONTRACT = frozenset({"_scheduler", "_alias"})


def _private_reads(tree: ast.AST) -> Iterator[tuple[int, str, str]]:
    """(line, base, name) of each ``base._name`` and ``getattr(base, "_name")`` in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            if not node.attr.startswith("__"):
                yield node.lineno, ast.unparse(node.value), node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "setattr", "hasattr", "delattr"}
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and node.args[1].value.startswith("_")
            and not node.args[1].value.startswith("__")
        ):
            yield node.lineno, ast.unparse(node.args[0]), node.args[1].value


def _own_names(trees: list[ast.AST]) -> set[str]:
    """Private names the package defines itself: functions, classes, attributes it assigns."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}:
                    names.add(node.attr)
    return names


def _violations(sources: dict[str, str], internal_names: set[str]) -> list[str]:
    trees = {name: ast.parse(text) for name, text in sources.items()}
    own = _own_names(list(trees.values())) - internal_names
    found = []
    for name, tree in trees.items():
        for line, base, attr in _private_reads(tree):
            if attr in STORE_CONTRACT and base == "self":
                continue
            if attr in internal_names or (
                attr not in own and attr not in PUBLIC_PRIVATES and base not in {"self", "cls"}
            ):
                found.append((name, line, f"{name}:{line}: {base}.{attr}"))
    return [entry for _, _, entry in sorted(found)]


def _internal_names() -> set[str]:
    tree = ast.parse((PACKAGE / "internals.py").read_text())
    return {attr for _, _, attr in _private_reads(tree)}


def test_internals_reads_what_it_documents():
    assert _internal_names() == {
        "_executors",
        "_instances",
        "_pool",
        "_max_workers",
        "_create_lock",
        "_scheduler",
        "_jobstore_alias",
        "_getframe",
        "_register_atexit",
        "_start_transaction_under_autocommit",
    }


def test_no_other_module_reads_private_internals():
    sources = {
        str(path.relative_to(PACKAGE)): path.read_text()
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "internals.py" and "migrations" not in path.parts
    }
    assert len(sources) > 10
    found = _violations(sources, _internal_names())
    assert not found, (
        "Private internals of APScheduler, Django or Python read outside "
        "django_apscheduler/internals.py (add a function there and call it): " + ", ".join(found)
    )


def test_the_scan_catches_private_reads():
    sample = textwrap.dedent(
        """
        import sys, threading

        class Store:
            def _mine(self):
                return self._scheduler

        def f(scheduler, executor, job, conn):
            scheduler._executors
            getattr(executor, "_instances", None)
            job._jobstore_alias = "x"
            sys._getframe(1)
            threading._shutdown_locks
            conn._start_transaction_under_autocommit = None
            Store()._mine()
        """
    )
    found = _violations({"sample.py": sample}, _internal_names())
    assert [entry.split(": ", 1)[1] for entry in found] == [
        "scheduler._executors",
        "executor._instances",
        "job._jobstore_alias",
        "sys._getframe",
        "threading._shutdown_locks",
        "conn._start_transaction_under_autocommit",
    ], found
