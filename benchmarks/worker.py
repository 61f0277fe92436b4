"""The processes the benchmarks start: ``python -m benchmarks.worker TASK 'PARAMS as JSON'``.

Django is set up from ``DJANGO_SETTINGS_MODULE`` (the benchmarks' settings, or
the test suite's for the smoke test). The last line starting with
``BENCH-RESULT`` of the output is the task's result, as JSON.

Tasks:

- ``driver``: all benchmarks of one backend (``suite.run_backend``).
- ``idle``: B2, one idle scheduler that counts its statements.
- ``scheduler``: a scheduler on ``DjangoJobStore`` that starts paused, says it
  is ready, resumes at the time in the "go" file (or at once), and stops when
  the "stop" file exists (B3, B5).
- ``dispatch``: a scheduler that runs the due jobs and reports the time until
  every run is logged, and its peak memory (B4).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

RESULT_PREFIX = "BENCH-RESULT "


# --- B2: counting statements at the database connections ------------------------------------


class StatementCounter:
    """Counts what this process sends to the database, on every Django connection of every thread.

    - SQL statements: every ``cursor.execute``/``executemany`` through a Django
      cursor, via an execute wrapper installed on each connection as it is
      created (``connection_created``), so the scheduler thread's, the
      housekeeping thread's, the recorder's and PostgreSQL's LISTEN connection
      are all counted;
    - transaction ends: ``COMMIT``/``ROLLBACK`` sent by the driver when Django
      commits or rolls back (``_commit``/``_rollback``), which do not go
      through cursors;
    - autocommit switches (``_set_autocommit``): a ``SET autocommit`` round trip
      on MySQL/MariaDB only (psycopg and sqlite3 switch on the client side).

    PostgreSQL's driver also sends a ``BEGIN`` before the first statement of
    each transaction; that is counted as one per transaction end.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counting = False
        self.statements: Counter[str] = Counter()
        self.tx_ends = 0
        self.autocommit_switches = 0
        self.threads: Counter[str] = Counter()

    def install(self) -> None:
        from django.db.backends.signals import connection_created

        connection_created.connect(self._connected, weak=False)
        patched: set[type] = set()
        from django.db import connections

        for alias in connections:
            self._patch(type(connections[alias]), patched)

    def _patch(self, cls: type, patched: set[type]) -> None:
        if cls in patched:
            return
        patched.add(cls)
        counter = self
        commit, rollback, set_autocommit = cls._commit, cls._rollback, cls._set_autocommit

        def _commit(wrapper: Any) -> Any:
            counter._note_tx(wrapper)
            return commit(wrapper)

        def _rollback(wrapper: Any) -> Any:
            counter._note_tx(wrapper)
            return rollback(wrapper)

        def _set_autocommit(wrapper: Any, autocommit: bool) -> Any:
            if counter.counting:
                with counter.lock:
                    counter.autocommit_switches += 1
            return set_autocommit(wrapper, autocommit)

        cls._commit, cls._rollback, cls._set_autocommit = _commit, _rollback, _set_autocommit

    def _note_tx(self, wrapper: Any) -> None:
        if self.counting and wrapper.connection is not None:
            with self.lock:
                self.tx_ends += 1

    def _connected(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        connection.execute_wrappers.append(self._wrapper)

    def _wrapper(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if self.counting:
            with self.lock:
                self.statements[_kind(sql)] += 1
                self.threads[threading.current_thread().name] += 1
        return execute(sql, params, many, context)

    def start(self) -> None:
        with self.lock:
            self.statements.clear()
            self.threads.clear()
            self.tx_ends = self.autocommit_switches = 0
            self.counting = True

    def stop(self) -> dict[str, Any]:
        with self.lock:
            self.counting = False
            return {
                "sql_statements": sum(self.statements.values()),
                "tx_ends": self.tx_ends,
                "autocommit_switches": self.autocommit_switches,
                "by_statement": dict(self.statements.most_common()),
                "by_thread": dict(self.threads.most_common()),
            }


def _kind(sql: str) -> str:
    """``SELECT django_apscheduler_djangojob``-like label of a statement."""
    words = sql.split(None, 1)
    verb = words[0].upper() if words else "?"
    match = re.search(r'(?:FROM|UPDATE|INTO)\s+[`"]?(\w+)', sql, re.IGNORECASE)
    return f"{verb} {match.group(1)}" if match else sql.strip()[:40]


def idle(window: float, warmup: float, sa_url: str | None = None) -> dict[str, Any]:
    """B2: one scheduler, one job due in an hour, default settings; statements per minute.

    Reference in the same process: APScheduler's SQLAlchemyJobStore under a
    scheduler of its own with the same job, counted with SQLAlchemy's engine
    events (statements, commits, rollbacks).
    """
    from datetime import datetime, timedelta, timezone

    from django.db import connection

    from benchmarks import jobs
    from benchmarks.suite import clear_django_tables, make_scheduler
    from django_apscheduler.jobstores import DjangoJobStore

    counter = StatementCounter()
    counter.install()
    clear_django_tables()
    connection.close()  # a new connection from here on, so it is counted too

    later = datetime.now(timezone.utc) + timedelta(hours=1)
    scheduler = make_scheduler(DjangoJobStore(), 10)
    scheduler.add_job(jobs.noop, "interval", hours=1, next_run_time=later, id="b2-idle")

    sa_counts = {"statements": 0, "tx_ends": 0}
    sa_scheduler = None
    if sa_url:
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from sqlalchemy import event

        sa_store = SQLAlchemyJobStore(url=sa_url, tablename="dja_bench_sa_idle_jobs")
        counting = {"on": False}

        @event.listens_for(sa_store.engine, "before_cursor_execute")
        def _sa_stmt(*args: Any) -> None:
            if counting["on"]:
                sa_counts["statements"] += 1

        @event.listens_for(sa_store.engine, "commit")
        def _sa_commit(*args: Any) -> None:
            if counting["on"]:
                sa_counts["tx_ends"] += 1

        @event.listens_for(sa_store.engine, "rollback")
        def _sa_rollback(*args: Any) -> None:
            if counting["on"]:
                sa_counts["tx_ends"] += 1

        sa_scheduler = make_scheduler(sa_store, 10)
        sa_scheduler.add_job(
            jobs.noop, "interval", hours=1, next_run_time=later, id="b2-idle", replace_existing=True
        )

    scheduler.start()
    if sa_scheduler is not None:
        sa_scheduler.start()
    time.sleep(warmup)
    counter.start()
    if sa_url:
        counting["on"] = True
    started = time.monotonic()
    time.sleep(window)
    counts = counter.stop()
    if sa_url:
        counting["on"] = False
    elapsed = time.monotonic() - started
    scheduler.shutdown()
    if sa_scheduler is not None:
        sa_scheduler.shutdown()
        sa_store.engine.dispose()

    vendor = connection.vendor
    implicit_begins = counts["tx_ends"] if vendor == "postgresql" else 0
    switches = counts["autocommit_switches"] if vendor == "mysql" else 0
    total = counts["sql_statements"] + counts["tx_ends"] + implicit_begins + switches
    per_minute = 60 / elapsed
    return {
        "window_s": elapsed,
        **counts,
        "implicit_begins": implicit_begins,
        "counted_switches": switches,
        "total": total,
        "per_minute": total * per_minute,
        "sql_per_minute": counts["sql_statements"] * per_minute,
        "sqlalchemy_reference": {
            "statements": sa_counts["statements"],
            "tx_ends": sa_counts["tx_ends"],
            "per_minute": (sa_counts["statements"] + sa_counts["tx_ends"]) * per_minute,
        }
        if sa_url
        else None,
    }


# --- B3, B5: a scheduler process ------------------------------------------------------------


def scheduler(ready: str, stop: str, go: str | None = None, threads: int = 10) -> dict[str, Any]:
    from benchmarks.suite import RunCounter, make_scheduler, wait_for
    from django_apscheduler import executions
    from django_apscheduler.jobstores import DjangoJobStore

    sched = make_scheduler(DjangoJobStore(), threads)
    counter = RunCounter(expect=0)
    counter.attach(sched)
    sched.start(paused=True)
    Path(ready).touch()
    if go:
        wait_for(lambda: Path(go).exists() and Path(go).read_text(), timeout=600, interval=0.005)
        start = float(Path(go).read_text())
        time.sleep(max(0.0, start - time.time()))
    sched.resume()
    wait_for(lambda: Path(stop).exists(), timeout=3600, interval=0.05)
    sched.shutdown(wait=True)
    executions.recorder.flush(timeout=60)
    return {"executed": counter.executed, "errors": counter.errors, "missed": counter.missed}


# --- B4: dispatch the due jobs and report ---------------------------------------------------


def dispatch(expect: int, threads: int, prefix: str) -> dict[str, Any]:
    from benchmarks.suite import (
        RunCounter,
        dispatch_until_done,
        logged_runs,
        make_scheduler,
        peak_rss_mib,
    )
    from django_apscheduler.jobstores import DjangoJobStore
    from django_apscheduler.models import DjangoJobExecution

    sched = make_scheduler(DjangoJobStore(), threads)
    counter = RunCounter(expect)
    counter.attach(sched)
    sched.start(paused=True)
    base = peak_rss_mib()
    try:
        times = dispatch_until_done(sched, counter, django_log=True, timeout=600)
    finally:
        sched.shutdown(wait=True)
    peak = peak_rss_mib()
    logged = logged_runs(prefix)
    return {
        **times,
        "base_rss_mib": base,
        "peak_rss_mib": peak,
        "executed": counter.executed,
        "logged": logged,
        "all_logged": logged.get(DjangoJobExecution.SUCCESS, 0) == expect
        and logged["distinct_jobs"] == expect,
    }


def fill(prefix: str, count: int) -> dict[str, Any]:
    """Empty this database's job tables, then store ``count`` jobs due later (B4's setup)."""
    from benchmarks.suite import clear_django_tables, insert_jobs

    clear_django_tables()
    insert_jobs(prefix, count, due=False)
    return {"stored": count}


def prepare(prefix: str, count: int) -> dict[str, Any]:
    """Empty the log and store ``count`` jobs due now, replacing those of ``prefix`` (B4)."""
    from django.db import connection

    from benchmarks.suite import insert_jobs
    from django_apscheduler.models import DjangoJob, DjangoJobExecution

    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {quote(DjangoJobExecution._meta.db_table)}")
        cursor.execute(
            f"DELETE FROM {quote(DjangoJob._meta.db_table)} WHERE {quote('id')} LIKE %s",
            [prefix + "%"],
        )
    insert_jobs(prefix, count, due=True)
    return {"due": count}


def driver(**params: Any) -> dict[str, Any]:
    from benchmarks.suite import run_backend

    return run_backend(params)


TASKS = {
    "driver": driver,
    "idle": idle,
    "scheduler": scheduler,
    "dispatch": dispatch,
    "fill": fill,
    "prepare": prepare,
}


def main(argv: list[str]) -> int:
    task, params = argv[1], json.loads(argv[2])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    django.setup()
    result = TASKS[task](**params)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
