"""The one module that reads (or writes) private internals of APScheduler 3, Django and Python.

Everything here relies on something its owner does not promise to keep: an
attribute or hook with a leading underscore. Each function is small, typed,
names the versions it was checked against and says what it falls back to when
the internal is missing. ``tests/test_internals.py`` asserts that the installed
versions still have each of them, in the shape used here, and that no other
module of the package reads them; when a new release drops one, that test
fails and names it.

Checked against APScheduler 3.11, Django 4.2, 5.2 and 6.1, and
CPython 3.11 and 3.12.

Not counted as private: Django's documented ``Model._meta`` API, the pickle
protocol (``Job.__getstate__``/``__setstate__``), ``os._exit`` (documented),
and the ``_scheduler``/``_alias`` attributes that ``BaseJobStore.start`` sets
for its subclasses (the job-store subclassing contract).
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

# --- APScheduler 3 ------------------------------------------------------------------


def executors(scheduler: Any) -> dict[str, Any]:
    """The scheduler's executors by alias (``BaseScheduler._executors``).

    Checked against APScheduler 3.11, where it is a dict filled by
    ``add_executor`` (and by ``start`` for the default one). Falls back to an
    empty dict for an object without it (e.g. before ``start``, or a stand-in).
    """
    return getattr(scheduler, "_executors", {})


def running_instances(executor: Any) -> dict[str, int]:
    """Runs per job id that ``executor`` has started or queued and not yet finished.

    APScheduler 3.11 keeps this count in ``BaseExecutor._instances``
    (the one its ``max_instances`` check reads) in every executor. Falls back to
    an empty dict (nothing running) for an executor without it, or ``None``.
    """
    return getattr(executor, "_instances", None) or {}


def max_workers(executor: Any) -> int | None:
    """How many threads (or processes) ``executor``'s pool runs at once, if it can be told.

    APScheduler 3.11's pool executors keep a ``concurrent.futures``
    pool in ``_pool``, whose ``_max_workers`` is an int (CPython 3.11 and 3.12).
    Falls back to ``None`` (not countable) for any other executor.
    """
    workers = getattr(getattr(executor, "_pool", None), "_max_workers", None)
    return workers if isinstance(workers, int) else None


def create_lock(scheduler: Any) -> Any:
    """A new lock of the kind ``scheduler`` uses (``BaseScheduler._create_lock``).

    Checked against APScheduler 3.11, where every scheduler class
    defines it (an ``RLock`` for the threaded ones, a dummy for asyncio's).
    No fallback: a scheduler without it raises ``AttributeError``.
    """
    return scheduler._create_lock()


def bind_job(job: Any, scheduler: Any, alias: str | None) -> None:
    """Attach a restored job to ``scheduler`` and the job store ``alias``.

    ``Job.__setstate__`` leaves out ``Job._scheduler`` and ``Job._jobstore_alias``
    (both in ``Job.__slots__`` in APScheduler 3.11): a job store sets
    them, as APScheduler's own stores do, so that ``job.modify()``,
    ``job.pause()``... reach the scheduler. No fallback.
    """
    job._scheduler = scheduler
    job._jobstore_alias = alias


# --- CPython --------------------------------------------------------------------------


def caller_run_time() -> Any:
    """The ``run_time`` local of the frame that called the caller of this function.

    APScheduler 3.11's ``run_job`` and ``run_coroutine_job`` call the
    job function from a loop over ``run_time``: called directly from the job's
    wrapper, two frames up (``sys._getframe(2)``, CPython 3.11 and 3.12) is that
    loop. Falls back to ``None`` when there is no such frame or local.
    """
    # Frame 0 is this function, 1 the wrapper that calls it, 2 APScheduler's loop.
    frame = sys._getframe(2)
    return frame.f_locals.get("run_time") if frame is not None else None


def register_thread_exit_hook(hook: Callable[[], None]) -> None:
    """Run ``hook`` when the interpreter exits, before ``concurrent.futures`` stops its pools.

    ``threading._register_atexit`` (CPython 3.11 and 3.12) runs its hooks in
    reverse order of registration, before the pools' own hook, and before
    ``atexit``. Falls back to ``atexit.register`` on a Python without it.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(hook)
    else:  # pragma: no cover - Python without the hook
        import atexit

        atexit.register(hook)


# --- Django ---------------------------------------------------------------------------


@contextmanager
def sqlite_transaction_start(connection: Any, begin: Callable[[], None]) -> Iterator[None]:
    """While inside, the SQLite ``connection`` starts its next transaction by calling ``begin``.

    ``atomic()`` calls ``set_autocommit(False,
    force_begin_transaction_with_broken_autocommit=True)``, which starts the
    transaction with ``_start_transaction_under_autocommit()`` when the wrapper
    has it (SQLite's does, in Django 4.2, 5.2 and 6.1); an instance attribute
    of that name replaces it for this connection. No
    fallback: on a Django without the hook, ``begin`` is never called and
    the transaction starts with Django's own ``BEGIN``. Nested uses restore
    the enclosing one's ``begin`` on the way out.
    """
    # Set by an enclosing use of this, if any.
    outer = connection.__dict__.get("_start_transaction_under_autocommit")
    connection._start_transaction_under_autocommit = begin
    try:
        yield
    finally:
        if outer is None:
            del connection._start_transaction_under_autocommit
        else:
            connection._start_transaction_under_autocommit = outer
