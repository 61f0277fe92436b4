"""Issue 9, "tests that hold the guarantees": each test fails if the library loses what it checks.

An audit changed the library on purpose and the whole suite stayed green.
Every test here names the change (the "mutation") it catches; each was run
against its mutation and failed, then passed on the real code:

1. the heartbeat no longer extends the leases of running jobs;
2. SQLite's ``BEGIN IMMEDIATE`` replaced by a plain ``atomic``;
3. every ``DatabaseError`` taken as retryable;
4. the health check ignoring a job's ``misfire_grace_time``;
5. ``close_old_connections`` made a no-op around job runs;
6. the poll never waking the scheduler.

All of them touch the database and run on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor as FuturesPool
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, OperationalError, connection, connections, transaction
from django.db.models import F
from django.utils import timezone

from django_apscheduler import backends, coordination, db, util
from django_apscheduler.jobstores import DjangoJobStore
from django_apscheduler.models import DjangoJob, DjangoSchedulerInstance
from tests import guarantee_jobs, jobs
from tests.helpers import wait_until
from tests.scheduler_process import read_lines
from tests.test_resilience import Killer

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


def _close_own_connection() -> None:
    try:
        connection.close()
    except Exception:
        pass


@pytest.fixture
def kill_connections(vendor) -> Iterator[Callable[[], int]]:
    """A function that drops every connection to the test database (None on SQLite)."""
    if vendor == "sqlite":
        yield None  # type: ignore[misc]
        return
    killer = Killer(vendor, connection.settings_dict)
    yield killer.kill
    killer.close()
    _close_own_connection()  # pytest-django's flush needs a working connection


def _store_instance(store: DjangoJobStore) -> str | None:
    return store._coordinator.instance_id


# --- 1. a run longer than the lease, with a second scheduler present -----------------------


@pytest.mark.slow
def test_a_run_longer_than_the_lease_keeps_its_job_held_by_its_instance(
    settings, make_scheduler, tmp_path
):
    """Mutation 1 (no lease extension in ``Coordinator._heartbeat``).

    Scheduler A (this process) runs a job for several lease times while
    scheduler B, a real process on the same database, is dispatching. For
    three lease times after B is up, the job's row stays held by A's instance
    with a deadline in the future, and B never runs the job. The row is
    checked directly, not only the absence of an overlap: a hold that lapses
    lets B claim the job even where something else would stop B running it.
    """
    lease, beat = 2.0, 0.4
    overrides = {
        "APSCHEDULER_LEASE_TIME": lease,
        "APSCHEDULER_HEARTBEAT_INTERVAL": beat,
        "APSCHEDULER_POLL_INTERVAL": 0.2,
    }
    for name, value in overrides.items():
        setattr(settings, name, value)
    runs, flag = tmp_path / "runs.jsonl", tmp_path / "keep-running"
    flag.touch()

    a = make_scheduler()
    a.add_job(
        guarantee_jobs.run_while,
        # Fires every 3 leases: a dispatch of the job (even one refused for
        # max_instances) renews its hold too, so between two fires only the
        # heartbeat keeps it.
        IntervalTrigger(seconds=3 * lease, timezone="UTC"),
        id="long",
        args=[str(runs), str(flag)],
        max_instances=1,
        coalesce=True,
        misfire_grace_time=60,
        next_run_time=timezone.now(),
    )
    wait_until(lambda: read_lines(str(runs)), timeout=30)
    holder = _store_instance(a._jobstores["default"])
    assert holder is not None

    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["DJANGO_APSCHEDULER_TEST_DB_NAME"] = connection.settings_dict["NAME"]
    env["DJANGO_APSCHEDULER_TEST_SETTINGS"] = json.dumps(overrides)
    config = {"events": str(tmp_path / "events.jsonl"), "until": time.time() + 90, "jobs": []}
    with open(tmp_path / "b.log", "w") as out:
        b = subprocess.Popen(
            [sys.executable, "-m", "tests.scheduler_process", json.dumps(config)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: DjangoSchedulerInstance.objects.exclude(id=holder).exists(), timeout=60)
        checked = 0
        watch_until = time.monotonic() + 3 * lease
        while time.monotonic() < watch_until:
            row = DjangoJob.objects.values("acquired_by", "acquired_until").get(id="long")
            now = timezone.now()
            assert row["acquired_by"] == holder, f"job 'long' not held by {holder} at {now}: {row}"
            assert row["acquired_until"] is not None and row["acquired_until"] > now, (
                f"the hold of job 'long' lapsed while it ran: {row}, now {now}"
            )
            checked += 1
            time.sleep(0.1)
        assert checked >= 10
        assert DjangoSchedulerInstance.objects.exclude(id=holder).exists(), "B stopped early"
    finally:
        flag.unlink()
        b.kill()
        b.wait()
    starts = [line for line in read_lines(str(runs)) if line["event"] == "start"]
    assert {line["pid"] for line in starts} == {os.getpid()}, (
        f"another process ran job 'long': {starts}\n{(tmp_path / 'b.log').read_text()}"
    )
    submitted_by_b = [e for e in read_lines(config["events"]) if e["job"] == "long"]
    assert submitted_by_b == []


# --- 2. concurrent claims on SQLite need BEGIN IMMEDIATE ----------------------------------


def test_concurrent_claims_never_fail_nor_hand_a_job_out_twice():
    """Mutation 2 (``SQLiteBackend.write_transaction`` as a plain ``atomic``).

    Four threads, each with its own connection and instance id, claim 120
    due jobs in small batches at the same time, calling ``claim_due``
    directly (no retry around it). Every job is claimed exactly once and no
    claim fails. On SQLite a deferred transaction reads first and then
    upgrades to a write lock, and two connections upgrading together get
    "database is locked" at once, without waiting for the busy timeout.
    """
    now = timezone.now()
    ids = [f"job-{i:03d}" for i in range(120)]
    DjangoJob.objects.bulk_create(
        DjangoJob(id=job_id, next_run_time=now - timedelta(minutes=1), job_state=b"state")
        for job_id in ids
    )
    start = threading.Barrier(4)
    claimed: dict[str, list[str]] = {}
    errors: list[str] = []

    def claimer(instance: str) -> None:
        mine: list[str] = []
        claimed[instance] = mine
        try:
            start.wait(timeout=30)
            for _ in range(200):
                claims = coordination.claim_due("default", instance, now, mine, 3)
                if not claims:
                    break
                mine.extend(c.job_id for c in claims)
        except Exception as exc:
            errors.append(f"{instance}: {type(exc).__name__}: {exc}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=claimer, args=(f"instance-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)

    assert errors == []
    everything = [job_id for mine in claimed.values() for job_id in mine]
    assert sorted(everything) == ids, "a job was claimed twice or not at all"
    holders = dict(DjangoJob.objects.values_list("id", "acquired_by"))
    assert all(holders[job_id] == inst for inst, mine in claimed.items() for job_id in mine)


# --- 3. which errors are retried, for how long, and not inside a transaction ---------------


def _short_lock_wait(vendor: str) -> None:
    """Make this connection give up waiting for a lock after a fraction of a second (1 s on MariaDB)."""
    statement = {
        "postgresql": "SET lock_timeout = '150ms'",
        "mysql": "SET SESSION innodb_lock_wait_timeout = 1",
        "sqlite": "PRAGMA busy_timeout = 100",
    }[vendor]
    with connection.cursor() as cursor:
        cursor.execute(statement)


def _write_locked_row() -> None:
    DjangoJob.objects.filter(id="locked").update(version=F("version") + 1)


@contextmanager
def _row_locked_elsewhere() -> Iterator[None]:
    """Hold a write lock on the row "locked" from another thread (its own connection)."""
    DjangoJob.objects.create(id="locked", next_run_time=None, job_state=b"state", version=0)
    holding, done = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def hold() -> None:
        try:
            with transaction.atomic():
                _write_locked_row()  # a write: the SQLite database lock, a row lock elsewhere
                holding.set()
                done.wait(timeout=120)
        except BaseException as exc:
            failure.append(exc)
            holding.set()
        finally:
            connections.close_all()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(timeout=30) and not failure, failure
        yield
    finally:
        done.set()
        thread.join(timeout=30)


def _raised(statement: str) -> DatabaseError:
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    except DatabaseError as exc:
        return exc
    raise AssertionError(f"{statement!r} did not fail")


@pytest.mark.parametrize(
    "statement",
    [
        "SELEC 1",
        "SELECT * FROM no_such_table_anywhere",
        "SELECT no_such_column FROM django_apscheduler_djangojob",
    ],
    ids=["syntax-error", "missing-table", "missing-column"],
)
def test_errors_in_the_sql_or_the_schema_are_not_retryable(statement):
    """Mutation 3 (every DatabaseError retryable): a real error of this kind from the server is final."""
    exc = _raised(statement)
    assert not backends.for_alias("default").is_retryable(exc), repr(exc)


def test_a_constraint_violation_is_not_retryable():
    """A duplicate primary key (IntegrityError) is an error in the data: no retry."""
    DjangoJob.objects.create(id="twice", job_state=b"state")
    try:
        DjangoJob.objects.create(id="twice", job_state=b"state")
    except DatabaseError as exc:
        assert not backends.for_alias("default").is_retryable(exc), repr(exc)
    else:
        raise AssertionError("a duplicate id was accepted")


def test_a_lock_wait_timeout_is_retryable(vendor):
    """Waiting too long for another session's lock (SQLite: "database is locked") is retryable."""
    with _row_locked_elsewhere():
        _short_lock_wait(vendor)
        try:
            _write_locked_row()
        except DatabaseError as exc:
            error = exc
        else:
            raise AssertionError("the locked row was written")
    assert isinstance(error, OperationalError), repr(error)
    assert backends.for_alias("default").is_retryable(error), repr(error)


def test_a_connection_killed_by_the_server_is_retryable(vendor, kill_connections):
    """``pg_terminate_backend`` / ``KILL``: the next statement's error is retryable."""
    if kill_connections is None:
        pytest.skip("SQLite has no server that could end a connection")
    DjangoJob.objects.exists()  # connected
    assert kill_connections() >= 1
    try:
        DjangoJob.objects.exists()
    except DatabaseError as exc:
        error = exc
    else:
        raise AssertionError("a killed connection still answered")
    _close_own_connection()
    assert backends.for_alias("default").is_retryable(error), repr(error)


def test_run_resiliently_gives_up_after_the_retry_timeout(settings, vendor, caplog):
    """A retryable error that persists is retried, then raised once APSCHEDULER_DB_RETRY_TIMEOUT passed."""
    settings.APSCHEDULER_DB_RETRY_TIMEOUT = 1.5  # MariaDB's shortest lock wait is 1 s
    attempts = 0

    def write() -> None:
        nonlocal attempts
        attempts += 1
        _short_lock_wait(vendor)  # again on every attempt: each retry is a new connection
        _write_locked_row()

    with _row_locked_elsewhere(), pytest.raises(OperationalError):
        db.run_resiliently(write, using="default", description="write the locked row")
    assert attempts >= 2, "a retryable error was not retried"
    gave_up = [r.getMessage() for r in caplog.records if "gave up after" in r.getMessage()]
    assert len(gave_up) == 1 and f"gave up after {attempts} attempts" in gave_up[0], gave_up


@pytest.mark.parametrize(
    "statement",
    ["SELECT * FROM no_such_table_anywhere", "SELEC 1"],
    ids=["missing-table", "syntax-error"],
)
def test_run_resiliently_does_not_retry_an_error_in_the_sql(settings, statement):
    """Mutation 3: a non-retryable error propagates from the first attempt."""
    settings.APSCHEDULER_DB_RETRY_TIMEOUT = 0.5
    attempts = 0

    def broken() -> None:
        nonlocal attempts
        attempts += 1
        with connection.cursor() as cursor:
            cursor.execute(statement)

    with pytest.raises(DatabaseError):
        db.run_resiliently(broken, using="default", description="run broken SQL")
    assert attempts == 1


def test_run_resiliently_does_not_retry_inside_a_transaction(settings, vendor):
    """Inside ``atomic`` a retryable error propagates at once: a retry could not undo the rest."""
    settings.APSCHEDULER_DB_RETRY_TIMEOUT = 5
    attempts = 0

    def write() -> None:
        nonlocal attempts
        attempts += 1
        _short_lock_wait(vendor)
        _write_locked_row()

    with _row_locked_elsewhere():
        with pytest.raises(OperationalError) as raised, transaction.atomic():
            db.run_resiliently(write, using="default", description="write the locked row")
    assert attempts == 1
    assert backends.for_alias("default").is_retryable(raised.value)


# --- 4. the health check honours each job's grace time ------------------------------------


def _store_late_job(job_id: str, late: timedelta, grace: int | None) -> None:
    scheduler = BackgroundScheduler(timezone="UTC")
    store = DjangoJobStore()
    store.start(scheduler, "default")
    job = Job(
        scheduler,
        id=job_id,
        func=jobs.noop,
        trigger=IntervalTrigger(hours=1, timezone="UTC"),
        executor="default",
        args=(),
        kwargs={},
        name=job_id,
        misfire_grace_time=grace,
        coalesce=True,
        max_instances=1,
        next_run_time=timezone.now() - late,
    )
    store.add_job(job)


def _health(*args: str) -> tuple[bool, dict[str, Any]]:
    """Run ``apscheduler health --format json *args`` in-process: (healthy, report)."""
    out = io.StringIO()
    try:
        call_command("apscheduler", "health", "--format", "json", *args, stdout=out)
        healthy = True
    except CommandError:
        healthy = False
    return healthy, json.loads(out.getvalue())


def test_health_reports_a_job_only_once_it_is_late_beyond_its_own_grace_time():
    """Mutation 4 (grace time ignored): 10 minutes late is fine with an hour's grace, not with 60 s.

    Checked without requiring a live instance (``health --no-instance``,
    the job-problem side of the check).
    """
    _store_late_job("patient", timedelta(minutes=10), grace=3600)
    healthy, report = _health("--no-instance")
    assert healthy, report
    assert report["overdue"] == []

    _store_late_job("impatient", timedelta(minutes=10), grace=60)
    healthy, report = _health("--no-instance")
    assert not healthy
    assert [o["id"] for o in report["overdue"]] == ["impatient"]


# --- 5. job runs get fresh connections -----------------------------------------------------


def _uses(tag: str) -> list[tuple[str, Any, str | None]]:
    return [use for use in list(guarantee_jobs.connection_uses) if use[0] == tag]


@pytest.fixture
def _forget_connection_uses() -> Iterator[None]:
    guarantee_jobs.connection_uses.clear()
    yield
    guarantee_jobs.connection_uses.clear()


@pytest.mark.usefixtures("_forget_connection_uses")
def test_a_job_run_after_its_threads_connection_was_killed_gets_a_new_one(
    make_scheduler, kill_connections
):
    """Mutation 5 (no-op ``close_old_connections`` in ``executions.instrument``).

    One executor thread runs two jobs one after the other. Between them the
    server drops every connection to the test database (SQLite, without a
    server: nothing is dropped). With ``CONN_MAX_AGE = 0`` (the default) each
    run must get its own connection, as a request does, so the second run
    succeeds on a new connection instead of failing on the dead one.
    """
    scheduler = make_scheduler(threads=1)
    scheduler.add_job(guarantee_jobs.use_connection, "date", id="first", args=["first"])
    wait_until(lambda: _uses("first"), timeout=30)
    if kill_connections is not None:
        kill_connections()
        _close_own_connection()
    scheduler.add_job(guarantee_jobs.use_connection, "date", id="second", args=["second"])
    wait_until(lambda: _uses("second"), timeout=30)

    [(_, first, first_error)] = _uses("first")
    [(_, second, second_error)] = _uses("second")
    assert first_error is None and second_error is None, second_error
    assert first is not None and second is not None and second is not first


@pytest.mark.usefixtures("_forget_connection_uses")
def test_close_old_connections_decorator_gives_each_call_a_usable_connection(kill_connections):
    """Mutation 5 (no-op ``util.close_old_connections``): the decorator kept from 0.7.0."""
    job = util.close_old_connections(guarantee_jobs.use_connection)
    with FuturesPool(max_workers=1) as pool:  # one thread: the same Django connection slot
        pool.submit(job, "first").result(timeout=30)
        if kill_connections is not None:
            kill_connections()
            _close_own_connection()
        try:
            pool.submit(job, "second").result(timeout=30)
        finally:
            pool.submit(connections.close_all).result(timeout=30)
    [(_, first, _)] = _uses("first")
    [(_, second, second_error)] = _uses("second")
    assert second_error is None
    assert second is not first


# --- 6. the poll wakes a sleeping scheduler -------------------------------------------------


def test_a_job_added_elsewhere_wakes_a_scheduler_sleeping_until_a_far_job(
    settings, make_scheduler, monkeypatch
):
    """Mutation 6 (``Coordinator._poll`` never wakes the scheduler).

    Scheduler A sleeps until a job an hour away. Another store, on another
    connection and with PostgreSQL's LISTEN disabled (so the poll is the only
    way the news can travel), adds a job due now: A runs it within a few poll
    intervals.
    """
    settings.APSCHEDULER_POLL_INTERVAL = 0.2
    monkeypatch.setattr(backends.PostgreSQLBackend, "listener", lambda self, using: None)
    far = timezone.now() + timedelta(hours=1)
    a = make_scheduler()
    a.add_job(jobs.record, "date", run_date=far, id="far", args=["far"])
    coordinator = a._jobstores["default"]._coordinator
    wait_until(lambda: coordinator.has_reported and coordinator.reported_next == far, timeout=30)

    writer = make_scheduler(start=False)
    writer.start(paused=True)  # writes jobs, never dispatches
    writer.add_job(jobs.record, "date", run_date=timezone.now(), id="near", args=["near"])
    wait_until(lambda: any(tag == "near" for tag, _ in list(jobs.calls)), timeout=15)
    assert not any(tag == "far" for tag, _ in list(jobs.calls))
