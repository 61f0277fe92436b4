"""Issue 2, "survives lost connections": the database drops connections while a scheduler runs.

On PostgreSQL and MariaDB the server really drops them: another connection
terminates every backend of the test database (``pg_terminate_backend``,
``KILL``), a few times or as a storm that lands mid-query and mid-commit;
the server closes idle sessions itself (``idle_session_timeout``,
``wait_timeout``); or (PostgreSQL) it refuses all connections to the test
database for a while. That hits the scheduler thread's, the recorder
thread's, the job threads' and the test's own connections. On SQLite, which
has no server, another connection holds the database lock for longer than
the busy timeout instead.

In every case the jobs must keep firing, the scheduler thread must stay
alive, nothing may give up, and every run a job made must end up in the
execution log. Store operations from the calling thread must succeed right
after their connection was killed."""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
import time
import traceback
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection
from django.db.backends.signals import connection_created

from django_apscheduler import executions
from django_apscheduler.models import DjangoJob, DjangoJobExecution
from tests import jobs
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

SCHEDULER_THREAD = "APScheduler"
RECORDER_THREAD = "django_apscheduler-recorder"


def _calls(tag: str) -> int:
    return sum(1 for t, _ in list(jobs.calls) if t == tag)


def _close_own_connection() -> None:
    """Drop the test thread's connection, which the killer may have killed too."""
    try:
        connection.close()
    except Exception:
        pass


class Killer:
    """Drops every connection to the test database but its own, over a raw connection.

    The raw connection is not a connection to the test database (PostgreSQL:
    the ``postgres`` database; MariaDB: no default database), and it is
    excluded by id as well, so the killer never kills itself nor anything
    outside the test database.
    """

    def __init__(self, vendor: str, settings: dict) -> None:
        self.vendor = vendor
        self.database = settings["NAME"]
        if vendor == "postgresql":
            import psycopg

            self._conn = psycopg.connect(
                host=settings["HOST"],
                port=settings["PORT"] or 5432,
                user=settings["USER"],
                password=settings["PASSWORD"] or None,
                dbname="postgres",
                autocommit=True,
            )
        else:
            import MySQLdb

            self._conn = MySQLdb.connect(
                host=settings["HOST"],
                port=int(settings["PORT"] or 3306),
                user=settings["USER"],
                passwd=settings["PASSWORD"] or "",
                autocommit=True,
            )
        self.killed = 0

    def others(self) -> list[int]:
        """Ids of the live connections to the test database, the killer's excluded."""
        cursor = self._conn.cursor()
        if self.vendor == "postgresql":
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [self.database],
            )
        else:
            cursor.execute(
                "SELECT id FROM information_schema.processlist "
                "WHERE db = %s AND id <> CONNECTION_ID() AND command <> 'Killed'",
                [self.database],
            )
        return [row[0] for row in cursor.fetchall()]

    def kill(self) -> int:
        """Terminate every other connection to the test database; return how many went."""
        count = 0
        cursor = self._conn.cursor()
        for ident in self.others():
            if self.vendor == "postgresql":
                cursor.execute("SELECT pg_terminate_backend(%s)", [ident])
                count += bool(cursor.fetchone()[0])
            else:
                import MySQLdb

                try:
                    cursor.execute(f"KILL CONNECTION {int(ident)}")
                    count += 1
                except MySQLdb.OperationalError as exc:
                    if exc.args[0] != 1094:  # "Unknown thread id": it went by itself
                        raise
        self.killed += count
        return count

    def close(self) -> None:
        self._conn.close()


@pytest.fixture
def killer(vendor):
    if vendor == "sqlite":
        pytest.skip("SQLite has no server that could drop a connection")
    k = Killer(vendor, connection.settings_dict)
    yield k
    k.close()
    # The test's own connection may be dead; pytest-django's flush needs a working one.
    _close_own_connection()


@pytest.fixture
def new_connections():
    """Counts the database connections opened from now on, per thread name.

    A scheduler or recorder thread never closes its connection by itself, so
    a new connection in such a thread means it found the old one broken and
    reconnected.
    """
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def opened(sender, connection, **kwargs):
        with lock:
            counts[threading.current_thread().name] += 1

    connection_created.connect(opened, weak=False)
    yield counts
    connection_created.disconnect(opened)


@pytest.fixture
def session_setup():
    """Run SQL on every new database connection (registered via the returned function)."""
    handlers = []

    def register(*statements: str) -> None:
        def run(sender, connection, **kwargs):
            with connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)

        connection_created.connect(run, weak=False)
        handlers.append(run)

    yield register
    for run in handlers:
        connection_created.disconnect(run)


def _assert_every_run_logged(tags: tuple[str, ...], allow_connection_errors: tuple[str, ...] = ()):
    """After shutdown: each job's calls match its "Executed" rows one to one.

    ``allow_connection_errors`` names jobs that query the database themselves:
    a kill in the middle of such a query makes that run fail (the job's own
    query is not ours to retry), which must be logged as "Error!" with the
    connection error, and no call was recorded for it.
    """
    assert executions.recorder.flush(timeout=120), "recorder did not catch up"
    _close_own_connection()
    for tag in tags:
        rows = list(DjangoJobExecution.objects.filter(job_id=tag))
        statuses = Counter(row.status for row in rows)
        assert statuses[DjangoJobExecution.SUCCESS] == _calls(tag), (tag, statuses)
        assert statuses[DjangoJobExecution.SENT] == 0, (tag, statuses)
        errors = [row for row in rows if row.status == DjangoJobExecution.ERROR]
        if tag not in allow_connection_errors:
            assert not errors, [row.exception for row in errors]
        for row in errors:
            # The stored traceback holds the frames only (as in 0.7.0): the run failed
            # inside the database driver, i.e. in the job's own query.
            assert "/django/db/" in row.traceback, (row.exception, row.traceback)
        # A run slowed by the storm (reconnecting on a loaded machine) may still be
        # going at its next fire: that fire is refused and logged as such, which
        # is a truthful record, not a lost run.
        refused = {DjangoJobExecution.MAX_INSTANCES, DjangoJobExecution.MISSED}
        assert set(statuses) <= {DjangoJobExecution.SUCCESS, DjangoJobExecution.ERROR} | refused, (
            statuses
        )


def _assert_nothing_given_up(caplog, jobs_may_fail: bool = False) -> None:
    """No store operation or log write gave up, and the scheduler never saw a store error.

    ``jobs_may_fail``: a job's own query may fail (APScheduler logs that run's
    error); that is the job's business, not the store's.
    """
    bad = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if (r.levelno >= logging.ERROR or "job store" in r.getMessage())
        and r.name.startswith(("django_apscheduler", "apscheduler"))
        and not (jobs_may_fail and r.name.startswith("apscheduler.executors"))
    ]
    assert not bad, bad


def _add_ticks(scheduler, seconds_by_tag: dict[str, tuple]) -> None:
    start = datetime.now(timezone.utc)
    for tag, (func, seconds) in seconds_by_tag.items():
        scheduler.add_job(
            func,
            "interval",
            seconds=seconds,
            id=tag,
            args=[tag],
            next_run_time=start,
            misfire_grace_time=None,
        )


def test_jobs_keep_firing_while_connections_are_killed(
    make_scheduler, killer, new_connections, caplog
):
    scheduler = make_scheduler()
    _add_ticks(scheduler, {"tick": (jobs.record, 0.3), "dbtick": (jobs.record_db, 0.4)})
    # Bounds for a loaded machine (nine shards at once), like the waits below.
    wait_until(lambda: _calls("tick") >= 3 and _calls("dbtick") >= 3, timeout=60)
    # The recorder has a connection: opened now, or still open from an earlier
    # test in this process (test_overdue's leaves one) and used for these runs.
    wait_until(
        lambda: (
            new_connections[RECORDER_THREAD] >= 1
            or DjangoJobExecution.objects.filter(job_id__in=["tick", "dbtick"]).exists()
        ),
        timeout=60,
    )
    _close_own_connection()

    rounds = 6
    for _ in range(rounds):
        scheduler_before = new_connections[SCHEDULER_THREAD]
        recorder_before = new_connections[RECORDER_THREAD]
        assert killer.kill() >= 2  # at least the scheduler's and the recorder's
        # Both threads found their connection dead and opened a new one.
        wait_until(
            lambda s=scheduler_before, r=recorder_before: (
                new_connections[SCHEDULER_THREAD] > s and new_connections[RECORDER_THREAD] > r
            ),
            timeout=60,
        )
        time.sleep(0.3)

    after_kills = {tag: _calls(tag) for tag in ("tick", "dbtick")}
    wait_until(lambda: all(_calls(tag) >= n + 3 for tag, n in after_kills.items()), timeout=60)
    assert scheduler.running
    assert scheduler._thread.is_alive()

    # The runs after the kills are logged while the scheduler still runs.
    assert executions.recorder.flush(timeout=120)
    _close_own_connection()
    executed = DjangoJobExecution.objects.filter(status=DjangoJobExecution.SUCCESS)
    assert executed.filter(job_id="tick").count() >= after_kills["tick"] + 3

    scheduler.shutdown(wait=True)
    _assert_every_run_logged(("tick", "dbtick"), allow_connection_errors=("dbtick",))
    _assert_nothing_given_up(caplog, jobs_may_fail=True)


def _threads_report(new_connections: Counter[str]) -> str:
    """What the scheduler's and the recorder's threads are doing now, for a failed assertion."""
    recorder = executions.recorder
    lines = [
        f"new connections per thread: {dict(new_connections)}",
        f"recorder: {len(recorder._queue)} queued, {recorder._pending} pending, "
        f"thread alive: {recorder._thread is not None and recorder._thread.is_alive()}",
    ]
    frames = sys._current_frames()
    for thread in threading.enumerate():
        if thread.name in (SCHEDULER_THREAD, RECORDER_THREAD) and thread.ident in frames:
            stack = "".join(traceback.format_stack(frames[thread.ident])[-12:])
            lines.append(f"--- {thread.name}:\n{stack}")
    return "\n".join(lines)


def test_jobs_keep_firing_through_a_kill_storm(make_scheduler, killer, new_connections, caplog):
    """Connections are killed every few milliseconds, so kills land mid-query and mid-commit."""
    scheduler = make_scheduler()
    tags = {f"storm{i}": (jobs.record_db if i % 2 else jobs.record, 0.2) for i in range(20)}
    _add_ticks(scheduler, tags)
    wait_until(lambda: all(_calls(tag) >= 2 for tag in tags))
    # The recorder gets work all through the storm, whatever the dispatch manages:
    # a loaded machine's scheduler may claim nothing between two kills, and an
    # idle recorder has no connection to lose (seen twice in CI, with the report
    # below showing it idle, nothing queued).
    DjangoJob.objects.create(id="storm-log", next_run_time=None, job_state=b"")
    _close_own_connection()
    logged_directly = []

    end = time.monotonic() + 5
    while time.monotonic() < end:
        killer.kill()
        record = executions.Record(
            "storm-log",
            datetime(2030, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=len(logged_directly)),
            DjangoJobExecution.SUCCESS,
            finished=executions.now_epoch(),
        )
        executions.recorder.submit([record])
        logged_directly.append(record.run_time)
        time.sleep(0.03)
    assert new_connections[SCHEDULER_THREAD] >= 3, _threads_report(new_connections)
    assert new_connections[RECORDER_THREAD] >= 3, _threads_report(new_connections)

    after_kills = {tag: _calls(tag) for tag in tags}
    wait_until(lambda: all(_calls(tag) >= n + 2 for tag, n in after_kills.items()), timeout=60)
    assert scheduler.running
    assert scheduler._thread.is_alive()
    scheduler.shutdown(wait=True)
    db_jobs = tuple(tag for tag, (func, _) in tags.items() if func is jobs.record_db)
    _assert_every_run_logged(tuple(tags), allow_connection_errors=db_jobs)
    written = DjangoJobExecution.objects.filter(
        job_id="storm-log", status=DjangoJobExecution.SUCCESS
    )
    assert sorted(written.values_list("run_time", flat=True)) == logged_directly
    _assert_nothing_given_up(caplog, jobs_may_fail=True)


def test_jobs_keep_firing_through_an_outage(
    make_scheduler, killer, new_connections, vendor, caplog
):
    """For a few seconds the server refuses every connection to the test database."""
    if vendor != "postgresql":
        pytest.skip(
            "needs a way to refuse connections to one database only; MariaDB has none "
            "short of touching the shared server's users"
        )
    caplog.set_level(logging.DEBUG, logger="django_apscheduler.db")  # every retry
    scheduler = make_scheduler()
    _add_ticks(scheduler, {"tick": (jobs.record, 0.3)})
    wait_until(lambda: _calls("tick") >= 3)

    admin = killer._conn
    database = killer.database
    admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    try:
        killer.kill()
        time.sleep(4)
        during = new_connections[SCHEDULER_THREAD]
    finally:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')

    released = _calls("tick")
    wait_until(lambda: _calls("tick") >= released + 3, timeout=60)
    assert new_connections[SCHEDULER_THREAD] > during
    assert any("not currently accepting connections" in r.getMessage() for r in caplog.records)
    assert scheduler.running
    assert scheduler._thread.is_alive()
    scheduler.shutdown(wait=True)
    _assert_every_run_logged(("tick",))
    _assert_nothing_given_up(caplog)


def test_jobs_keep_firing_when_the_server_closes_idle_connections(
    make_scheduler, killer, new_connections, session_setup, vendor, caplog
):
    # The server closes every session idle for a second; the job fires every 2.5 s,
    # so the scheduler's and the recorder's connections are gone at each run.
    if vendor == "postgresql":
        session_setup("SET idle_session_timeout = 1000")
    else:
        session_setup("SET SESSION wait_timeout = 1")
    killer.kill()  # whatever is still connected reconnects with the timeout
    _close_own_connection()

    scheduler = make_scheduler()
    _add_ticks(scheduler, {"idle": (jobs.record_db, 2.5)})
    wait_until(lambda: new_connections[SCHEDULER_THREAD] >= 3, timeout=90)
    wait_until(lambda: new_connections[RECORDER_THREAD] >= 3, timeout=90)
    reached = _calls("idle")
    wait_until(lambda: _calls("idle") >= reached + 2, timeout=60)
    assert scheduler.running
    assert scheduler._thread.is_alive()
    scheduler.shutdown(wait=True)
    _assert_every_run_logged(("idle",))
    _assert_nothing_given_up(caplog)


def test_store_operations_survive_a_killed_connection(
    make_scheduler, killer, new_connections, caplog
):
    """Each operation runs right after the calling thread's connection was killed."""
    scheduler = make_scheduler(start=False)
    scheduler.start(paused=True)  # the scheduler's own thread stays off the database
    DjangoJob.objects.exists()  # the test thread is connected

    def kill() -> None:
        opened = new_connections["MainThread"]
        assert killer.kill() >= 1
        kill.expected = opened + 1  # type: ignore[attr-defined]

    def reconnected() -> bool:
        # (Django's atomic() may reconnect once more while it cleans up after the error.)
        return new_connections["MainThread"] >= kill.expected  # type: ignore[attr-defined]

    kill()
    scheduler.add_job(jobs.record, "interval", minutes=5, id="a", args=["a"])
    assert reconnected()

    kill()
    assert tuple(scheduler.get_job("a").args) == ("a",)
    assert reconnected()

    kill()
    assert [job.id for job in scheduler.get_jobs()] == ["a"]
    assert reconnected()

    kill()
    scheduler.modify_job("a", args=["b"])
    assert reconnected()
    assert tuple(scheduler.get_job("a").args) == ("b",)

    kill()
    scheduler.reschedule_job("a", trigger="interval", minutes=10)
    assert reconnected()
    assert scheduler.get_job("a").trigger.interval.total_seconds() == 600

    kill()
    scheduler.pause_job("a")
    assert reconnected()
    assert DjangoJob.objects.get(id="a").next_run_time is None

    kill()
    scheduler.resume_job("a")
    assert reconnected()
    assert DjangoJob.objects.get(id="a").next_run_time is not None

    kill()
    scheduler.remove_job("a")
    assert reconnected()
    assert not DjangoJob.objects.filter(id="a").exists()

    scheduler.add_job(jobs.record, "interval", minutes=5, id="b")
    kill()
    scheduler.remove_all_jobs()
    assert reconnected()
    assert not DjangoJob.objects.exists()
    _assert_nothing_given_up(caplog)


@pytest.mark.parametrize("lock", ["IMMEDIATE", "EXCLUSIVE"])
def test_jobs_survive_a_long_sqlite_lock(make_scheduler, vendor, lock, session_setup, caplog):
    """Another connection holds the database lock for much longer than the busy timeout.

    IMMEDIATE blocks writers (the scheduler's job updates, the recorder);
    EXCLUSIVE blocks readers as well (the scheduler's due-jobs query).
    """
    if vendor != "sqlite":
        pytest.skip("a SQLite database-file lock")
    session_setup("PRAGMA busy_timeout = 200")  # so "database is locked" really comes
    _close_own_connection()
    scheduler = make_scheduler()
    _add_ticks(scheduler, {"tick": (jobs.record, 0.3)})
    wait_until(lambda: _calls("tick") >= 3)

    blocker = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None, timeout=60)
    try:
        blocker.execute(f"BEGIN {lock}")
        time.sleep(3)  # 15 busy timeouts
    finally:
        blocker.execute("COMMIT")
        blocker.close()

    released = _calls("tick")
    wait_until(lambda: _calls("tick") >= released + 3, timeout=60)
    assert scheduler.running
    assert scheduler._thread.is_alive()
    assert any("locked" in record.getMessage() for record in caplog.records), (
        "the lock never got in the way: the test proves nothing"
    )
    scheduler.shutdown(wait=True)
    _assert_every_run_logged(("tick",))
    _assert_nothing_given_up(caplog)


def _idle_transaction_limit() -> str:
    """This thread's session's limit on idling inside a transaction, as the server says it."""
    query = {
        "postgresql": "SHOW idle_in_transaction_session_timeout",
        "mysql": "SELECT @@SESSION.idle_transaction_timeout",
    }[connection.vendor]
    with connection.cursor() as cursor:
        cursor.execute(query)
        return str(cursor.fetchone()[0])


_limits_seen: dict[str, str] = {}


def note_the_jobs_limit() -> None:
    _limits_seen["job"] = _idle_transaction_limit()


def test_only_the_schedulers_own_sessions_are_ended_when_idle_in_a_transaction(
    make_scheduler, vendor
):
    """The dispatch loop's session is limited (two leases); a job's and the caller's are not.

    A frozen scheduler must not keep the row locks of its transaction for
    ever (test_multiprocess: ``..._frozen_inside_a_row_lock_...``), but
    the transactions of job code and of the code that calls the store are
    the user's: they may idle as long as they like.
    """
    if vendor == "sqlite":
        pytest.skip("SQLite has no server to end a session")
    from apscheduler.events import EVENT_JOB_SUBMITTED

    from django_apscheduler import conf

    seen = _limits_seen
    seen.clear()
    unlimited = "0"

    def at_submission(event) -> None:  # APScheduler sends it from its dispatch loop's thread
        seen.setdefault("dispatch loop", _idle_transaction_limit())

    scheduler = make_scheduler(start=False)
    scheduler.add_listener(at_submission, EVENT_JOB_SUBMITTED)
    scheduler.start()
    scheduler.add_job(note_the_jobs_limit, "date", run_date=datetime.now(timezone.utc), id="limits")
    wait_until(lambda: "job" in seen and "dispatch loop" in seen, timeout=30)

    # A thread that calls the store (a view's): one that never ran a dispatch round.
    def call() -> None:
        seen["caller"] = _idle_transaction_limit()
        connection.close()

    caller = threading.Thread(target=call)
    caller.start()
    caller.join()
    limit = 2 * conf.lease_time()
    expected = f"{limit:g}s" if vendor == "postgresql" else f"{limit:g}"
    assert seen == {"job": unlimited, "dispatch loop": expected, "caller": unlimited}, seen
