"""Run holds (issue 9, defect 6): the lock primitive of each backend, and runs that take it.

Two lock sessions in one process stand for two processes: on PostgreSQL and
MariaDB they are two database connections, on SQLite two sets of open files.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest
from django.db import connection

from django_apscheduler import backends, executions, runlocks
from django_apscheduler.models import DjangoJob, DjangoJobExecution
from tests import jobs
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

UTC = timezone.utc


@pytest.fixture
def sessions():
    """Open lock sessions on the test database; all are closed after the test."""
    opened: list[backends.RunLockSession] = []

    def open_one() -> backends.RunLockSession:
        session = backends.for_alias("default").run_lock_session("default")
        opened.append(session)
        return session

    yield open_one
    for session in opened:
        session.close()


@pytest.fixture
def other_process():
    """A second RunLocks, as another process has; closed after the test."""
    locks = runlocks.RunLocks()
    yield locks
    locks.close()


@pytest.fixture(autouse=True)
def _fresh_process_locks():
    runlocks.locks.close()
    yield
    runlocks.locks.close()


def test_each_backend_has_session_locks_shared_between_processes(sessions):
    """The test database is a file, PostgreSQL or MariaDB: locks are never process-local there."""
    assert not isinstance(sessions(), backends._LocalRunLockSession)


def test_second_session_cannot_take_a_held_lock_until_the_first_releases(sessions):
    first, second = sessions(), sessions()
    assert first.try_lock("job-a")
    assert not second.try_lock("job-a")
    assert second.try_lock("job-b")  # other names are independent
    first.unlock("job-a")
    assert second.try_lock("job-a")
    assert not first.try_lock("job-a")


def test_lock_is_released_when_its_session_ends(sessions):
    first, second = sessions(), sessions()
    assert first.try_lock("job")
    assert not second.try_lock("job")
    first.close()  # as when the process ends, however it ends
    # The server frees a closed session's locks as it ends that session, a
    # moment after the client closed it.
    wait_until(lambda: second.try_lock("job"), timeout=10)


def test_holder_is_named(sessions):
    first, second = sessions(), sessions()
    assert first.try_lock("job")
    holder = second.holder("job")
    assert holder, "the holder of a lock should be named in messages"
    if connection.vendor in ("postgresql", "sqlite"):
        import os

        assert str(os.getpid()) in holder


def test_slots_follow_max_instances(other_process):
    here = runlocks.locks
    names = {here.acquire("job", 2), here.acquire("job", 2)}
    assert None not in names and len(names) == 2
    assert here.acquire("job", 2) is None  # both slots held here
    assert other_process.acquire("job", 2) is None  # and so, for the other process too
    here.release(names.pop())
    assert other_process.acquire("job", 2) is not None
    assert here.acquire("job", 2) is None


@pytest.mark.skipif("connection.vendor == 'sqlite'", reason="no lock connection on SQLite")
def test_lost_lock_connection_is_reopened_and_its_locks_taken_back(other_process):
    here = runlocks.locks
    name = here.acquire("job", 1)
    assert name is not None
    session = here._session
    # The server ends the lock connection (a restart, an idle timeout, an operator).
    with session._wrapper.cursor() as cursor:
        cursor.execute(
            "SELECT pg_backend_pid()"
            if connection.vendor == "postgresql"
            else "SELECT CONNECTION_ID()"
        )
        (backend_id,) = cursor.fetchone()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_terminate_backend(%s)", [backend_id])
        else:
            cursor.execute(f"KILL {int(backend_id)}")
    # Its lock is gone with it, until the next check (every heartbeat) takes it back.
    here.verify("default")
    assert here._session is not session
    assert other_process.acquire("job", 1) is None
    here.release(name)
    assert other_process.acquire("job", 1) is not None


def test_run_whose_slot_is_held_elsewhere_is_refused_and_logged_max_instances(
    make_scheduler, other_process
):
    """The job function is not called; the run is "Max instances!", naming the reason, not "Error!"."""
    slot = other_process.acquire("held", 1)
    assert slot is not None
    scheduler = make_scheduler()
    scheduler.add_job(jobs.record, "date", run_date=datetime.now(UTC), id="held", args=["held"])

    def logged():
        return list(
            DjangoJobExecution.objects.filter(job_id="held", status__in=executions.FAILURES)
        )

    (row,) = wait_until(logged)
    assert row.status == DjangoJobExecution.MAX_INSTANCES
    assert "still running in another process" in row.exception
    assert jobs.calls == []

    # Once the other run ended, the job runs here again.
    other_process.release(slot)
    scheduler.add_job(jobs.record, "date", run_date=datetime.now(UTC), id="free", args=["free"])
    wait_until(lambda: [tag for tag, _ in jobs.calls if tag == "free"])


def test_runs_release_their_slot(make_scheduler, other_process):
    scheduler = make_scheduler()
    done = threading.Event()
    scheduler.add_listener(lambda event: done.set(), executions.EVENT_JOB_EXECUTED)
    scheduler.add_job(jobs.record, "date", run_date=datetime.now(UTC), id="once", args=["once"])
    wait_until(done.is_set)
    wait_until(lambda: not runlocks.locks._held)
    assert other_process.acquire("once", 1) is not None


def test_forked_child_neither_keeps_nor_ends_the_parents_locks(sessions):
    """A process pool's worker or a pre-forking server's worker is forked with the locks open.

    Whatever the child does with what it inherited (SQLite: it lives on with
    copies of the lock files; a database: it drops the connection, and the
    driver says goodbye on the shared socket), the parent's run keeps its
    lock, and the lock is free once the parent releases it.
    """
    import os

    here = runlocks.locks
    name = here.acquire("job", 1)
    assert name is not None
    inherited = here._session
    ready_r, ready_w = os.pipe()
    quit_r, quit_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(quit_w)
            os.close(ready_r)
            if not isinstance(inherited, backends._FileRunLockSession):
                inherited.close()  # what dropping the inherited connection does
            os.write(ready_w, b"x")
            os.read(quit_r, 1)  # lives on until the parent is done
        finally:
            os._exit(0)
    try:
        os.close(ready_w)
        assert os.read(ready_r, 1) == b"x"
        other = sessions()
        assert not other.try_lock(name), "the child ended the parent's lock"
        here.release(name)
        assert other.try_lock(name), "the child still holds the parent's lock"
    finally:
        os.close(quit_w)
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(quit_r)


# --- Batched: a dispatch round takes its runs' locks at once (issue 10, item 7) --------------


@pytest.fixture
def unstarted_store():
    """A store on a scheduler that is never started: nothing it hands out is ever submitted."""
    from apscheduler.schedulers.background import BackgroundScheduler

    from django_apscheduler.jobstores import DjangoJobStore

    store = DjangoJobStore()
    store.start(BackgroundScheduler(timezone="UTC"), "default")
    yield store
    store.shutdown()


def _due_job(store, job_id):
    from apscheduler.job import Job
    from apscheduler.triggers.date import DateTrigger

    when = datetime(2030, 1, 1, tzinfo=timezone.utc)
    job = Job(
        store._scheduler,
        id=job_id,
        func=jobs.record,
        trigger=DateTrigger(run_date=when, timezone="UTC"),
        executor="default",
        args=(job_id,),
        kwargs={},
        name=job_id,
        misfire_grace_time=None,
        coalesce=True,
        max_instances=1,
        next_run_time=when,
    )
    job._jobstore_alias = "default"
    store.add_job(job)


def test_a_round_holds_the_run_locks_of_the_jobs_it_hands_out(unstarted_store, other_process):
    """Taken before APScheduler submits anything; given up once their runs will not come."""
    store = unstarted_store
    for job_id in ("one", "two", "three"):
        _due_job(store, job_id)
    handed = store.get_due_jobs(datetime(2030, 1, 1, 0, 1, tzinfo=timezone.utc))
    assert sorted(job.id for job in handed) == ["one", "three", "two"]
    # Another process can take none of them while this round's runs may still come.
    for job_id in ("one", "two", "three"):
        assert other_process.acquire(job_id, 1) is None, job_id
    # This scheduler never submits them (it was never started): the end of the
    # round gives their locks up.
    store.get_next_run_time()
    for job_id in ("one", "two", "three"):
        assert other_process.acquire(job_id, 1) is not None, job_id


def test_a_run_takes_the_lock_its_round_reserved_without_a_round_trip(other_process, monkeypatch):
    here = runlocks.locks
    here.reserve([("job", 1, lambda: True)])
    assert other_process.acquire("job", 1) is None
    calls = []
    monkeypatch.setattr(
        backends.RunLockSession, "try_lock", lambda self, name: calls.append(name) or True
    )
    with runlocks.holding("job", 1):
        assert calls == [], "the run asked the database again for a lock it already had"
        assert other_process.acquire("job", 1) is None


def test_an_ended_runs_lock_is_given_up_before_its_claim(
    unstarted_store, other_process, monkeypatch
):
    """However long the batch of ended runs' locks waits, the end of the round gives them up first."""
    # The batch that gives up ended runs' locks never comes in this test.
    monkeypatch.setattr(runlocks.locks, "_wake_releaser", lambda: None)
    store = unstarted_store
    _due_job(store, "ended")
    (job,) = store.get_due_jobs(datetime(2030, 1, 1, 0, 1, tzinfo=timezone.utc))
    with runlocks.holding("ended", 1):  # the run, as the job's wrapper takes it
        pass
    assert other_process.acquire("ended", 1) is None, "given up before the batch is due"
    store.remove_job("ended")  # what APScheduler's loop does after the fire
    store.get_next_run_time()  # the end of the round: the write-back releases the claim
    assert DjangoJob.objects.get(id="ended").acquired_by is None
    assert other_process.acquire("ended", 1) is not None


def test_locks_of_ended_runs_are_given_up_together_soon(other_process):
    here = runlocks.locks
    names = [here.acquire(f"job-{i}", 1) for i in range(5)]
    assert None not in names
    for name in names:
        here.release_soon(name)  # type: ignore[arg-type]
    # The releaser thread gives them up within a moment, in one statement.
    wait_until(lambda: not here._held, timeout=10)
    for i in range(5):
        assert other_process.acquire(f"job-{i}", 1) is not None


def test_a_lock_of_a_run_that_just_ended_passes_to_the_next_run_here(other_process):
    here = runlocks.locks
    name = here.acquire("job", 1)
    assert name is not None
    here.release_soon(name)
    assert here.acquire("job", 1) == name, "the next run here was refused its own job's lock"
    assert other_process.acquire("job", 1) is None
