"""Coordination of several schedulers sharing one database, deterministically in one process.

Two ``DjangoJobStore`` objects on two schedulers that are not started stand
for two processes. The "dispatching" store calls ``get_due_jobs`` and then,
from the same thread, writes back like APScheduler's ``_process_jobs``
(``job._modify(next_run_time=...)`` then ``update_job``, or ``remove_job``
for a one-shot job that will not fire again). The other store changes the
job in between, through the same calls APScheduler's public API makes.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.jobstores.base import ConflictingIdError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from django.db import connections
from django.test.utils import override_settings
from django.utils import timezone

from django_apscheduler import coordination
from django_apscheduler.jobstores import DjangoJobStore
from django_apscheduler.models import DjangoJob, DjangoJobExecution, DjangoSchedulerInstance
from django_apscheduler.replacing import declared_sync
from tests import jobs
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

UTC = dt_timezone.utc


def at(seconds: float) -> datetime:
    return datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


@pytest.fixture
def make_store():
    """Build stores on schedulers that are not started; all are shut down after the test."""
    made: list[DjangoJobStore] = []

    def make() -> DjangoJobStore:
        store = DjangoJobStore()
        store.start(BackgroundScheduler(timezone="UTC"), "default")
        made.append(store)
        return store

    yield make
    for store in made:
        store.shutdown()


@pytest.fixture
def a(make_store):
    return make_store()


@pytest.fixture
def b(make_store):
    return make_store()


def make_job(store, *, id="job", trigger=None, next_run_time=at(0), args=(), seconds=60):
    job = Job(
        store._scheduler,
        id=id,
        func=jobs.record,
        trigger=trigger or IntervalTrigger(seconds=seconds, start_date=at(0), timezone="UTC"),
        executor="default",
        args=args,
        kwargs={},
        name=id,
        misfire_grace_time=1,
        coalesce=True,
        max_instances=1,
        next_run_time=next_run_time,
    )
    job._jobstore_alias = "default"
    return job


def dispatch(store, job, next_run_time):
    """What APScheduler's loop does after submitting a due recurring job.

    The store writes a round's jobs back together, at the latest when the
    round ends; flushing here writes this one back at once, round still open.
    """
    job._modify(next_run_time=next_run_time)
    store.update_job(job)
    store._flush_write_backs()


def finish(store, job_id):
    """What APScheduler's loop does after the last fire of a one-shot job."""
    store.remove_job(job_id)
    store._flush_write_backs()


def row(job_id="job") -> DjangoJob:
    return DjangoJob.objects.get(id=job_id)


def claimed_by(store) -> list[str]:
    instance = store._coordinator.instance_id
    return sorted(DjangoJob.objects.filter(acquired_by=instance).values_list("id", flat=True))


def expire_claims(store) -> None:
    DjangoJob.objects.filter(acquired_by=store._coordinator.instance_id).update(
        acquired_until=timezone.now() - timedelta(seconds=1)
    )


# --- claims ---------------------------------------------------------------------------


def test_second_store_skips_live_claims_and_takes_expired_ones(a, b):
    """A job claimed by one instance is neither dispatched nor waited for by another until the
    claim expires (get_due_jobs and get_next_run_time skip it)."""
    a.add_job(make_job(a, id="j1", next_run_time=at(0)))
    a.add_job(make_job(a, id="j2", next_run_time=at(5)))
    assert sorted(j.id for j in a.get_due_jobs(at(10))) == ["j1", "j2"]
    assert claimed_by(a) == ["j1", "j2"]
    assert row("j1").acquired_until > timezone.now()

    assert b.get_due_jobs(at(10)) == []
    assert claimed_by(b) == []
    assert b.get_next_run_time() is None  # nothing B could claim
    b.add_job(make_job(b, id="free", next_run_time=at(20)))
    assert b.get_next_run_time() == at(20)
    assert a.get_next_run_time() == at(0)  # its own claims count

    expire_claims(a)
    assert sorted(j.id for j in b.get_due_jobs(at(10))) == ["j1", "j2"]
    assert claimed_by(b) == ["j1", "j2"] and claimed_by(a) == []


@override_settings(APSCHEDULER_LEASE_TIME=0.4, APSCHEDULER_HEARTBEAT_INTERVAL=60)
def test_claim_lapses_after_the_lease_time_and_a_late_write_back_does_not_land(a, b):
    """After APSCHEDULER_LEASE_TIME another store takes the job; the first one's late write loses."""
    a.add_job(make_job(a, next_run_time=at(0)))
    (job,) = a.get_due_jobs(at(10))
    assert b.get_due_jobs(at(10)) == []
    time.sleep(0.6)
    # B's claim lasts until after A's late write-back, however loaded the machine.
    with override_settings(APSCHEDULER_LEASE_TIME=60):
        assert [j.id for j in b.get_due_jobs(at(10))] == ["job"]
    dispatch(a, job, at(60))  # A took longer than its lease: B holds the job now
    assert row().acquired_by == b._coordinator.instance_id
    assert row().next_run_time == at(0)


@override_settings(APSCHEDULER_DISPATCH_BATCH_SIZE=2)
def test_batch_size_limits_a_round_and_leaves_the_rest_to_others(a, b):
    """One round claims at most APSCHEDULER_DISPATCH_BATCH_SIZE jobs, earliest first."""
    for i in range(5):
        a.add_job(make_job(a, id=f"j{i}", next_run_time=at(i)))
    first = a.get_due_jobs(at(10))
    assert [j.id for j in first] == ["j0", "j1"]
    assert [j.id for j in b.get_due_jobs(at(10))] == ["j2", "j3"]
    for job in first:
        dispatch(a, job, at(100))
    a.get_next_run_time()  # ends A's round
    assert [j.id for j in a.get_due_jobs(at(10))] == ["j4"]


@override_settings(APSCHEDULER_DISPATCH_BATCH_SIZE=7)
def test_concurrent_claims_from_two_threads_are_disjoint(a, b):
    """Two stores dispatching at the same moment from two threads never get the same job."""
    for i in range(60):
        a.add_job(make_job(a, id=f"j{i:02d}", next_run_time=at(i)))
    got: dict[str, list[str]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def claim(name, store):
        try:
            barrier.wait()
            while batch := store.get_due_jobs(at(100)):
                got[name].extend(j.id for j in batch)
                for job in batch:
                    dispatch(store, job, at(1000))
                store.get_next_run_time()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=claim, args=item) for item in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert not set(got["a"]) & set(got["b"])
    assert sorted(got["a"] + got["b"]) == [f"j{i:02d}" for i in range(60)]
    assert not DjangoJob.objects.filter(acquired_by__isnull=False).exists()
    assert set(DjangoJob.objects.values_list("next_run_time", flat=True)) == {at(1000)}


# --- write-back after dispatch: lost-update races --------------------------------------


def test_write_back_releases_the_claim_and_every_write_bumps_the_version(a, b):
    """The dispatcher's write advances the job and frees it; each write increases ``version``."""
    a.add_job(make_job(a, next_run_time=at(0)))
    versions = [row().version or 0]  # NULL counts as 0
    (job,) = a.get_due_jobs(at(10))
    dispatch(a, job, at(60))
    stored = row()
    assert stored.next_run_time == at(60)
    assert (stored.acquired_by, stored.acquired_until) == (None, None)
    assert a._coordinator.held == {}
    versions.append(stored.version)
    b_job = b.lookup_job("job")
    b_job._modify(args=("x",))
    b.update_job(b_job)
    versions.append(row().version)
    (job,) = a.get_due_jobs(at(60))
    dispatch(a, job, at(120))
    versions.append(row().version)
    assert versions == sorted(set(versions)), versions
    assert a.lookup_job("job").next_run_time == at(120)


def test_pause_during_dispatch_stands(a, b):
    """Paused by B between A's claim and A's write-back: the job stays paused."""
    a.add_job(make_job(a, next_run_time=at(0)))
    (job,) = a.get_due_jobs(at(10))
    b_job = b.lookup_job("job")
    b_job._modify(next_run_time=None)
    b.update_job(b_job)
    dispatch(a, job, at(60))
    assert row().next_run_time is None
    assert a.lookup_job("job").next_run_time is None
    assert row().acquired_by is None
    assert a.get_next_run_time() is None


def test_removal_during_dispatch_stands(a, b):
    """Removed by B meanwhile: A's write-back neither resurrects it nor raises nor leaves a record."""
    a.add_job(make_job(a, next_run_time=at(0)))
    (job,) = a.get_due_jobs(at(10))
    b.remove_job("job")
    dispatch(a, job, at(60))
    assert not DjangoJob.objects.filter(id="job").exists()
    assert a.get_next_run_time() is None


def test_reschedule_during_dispatch_stands(a, b):
    """Rescheduled by B to another time: B's time wins over the dispatcher's."""
    a.add_job(make_job(a, next_run_time=at(0)))
    (job,) = a.get_due_jobs(at(10))
    b_job = b.lookup_job("job")
    b_job._modify(next_run_time=at(500))
    b.update_job(b_job)
    dispatch(a, job, at(60))
    assert row().next_run_time == at(500)
    assert a.lookup_job("job").next_run_time == at(500)
    assert row().acquired_by is None


def test_args_changed_during_dispatch_are_kept_and_the_time_advanced(a, b):
    """B changes only the arguments: they are kept, and the next run time is A's (no repeat)."""
    a.add_job(make_job(a, next_run_time=at(0), args=("old",)))
    (job,) = a.get_due_jobs(at(10))
    b_job = b.lookup_job("job")
    b_job._modify(args=("new",))
    b.update_job(b_job)
    dispatch(a, job, at(60))
    restored = a.lookup_job("job")
    assert restored.args == ("new",)
    assert restored.next_run_time == at(60)
    assert row().next_run_time == at(60) and row().acquired_by is None


def test_finished_one_shot_does_not_overwrite_a_replacement(a, b):
    """A finishes a one-shot job while B replaced it with another run date: B's job stands."""
    a.add_job(make_job(a, trigger=DateTrigger(at(0)), next_run_time=at(0)))
    (job,) = a.get_due_jobs(at(10))
    again = make_job(b, trigger=DateTrigger(at(300)), next_run_time=at(300))
    with pytest.raises(ConflictingIdError):
        b.add_job(again)
    b.update_job(again)  # replace_existing=True
    finish(a, "job")  # the one-shot job will not fire again
    restored = a.lookup_job("job")
    assert restored is not None and restored.trigger.run_date == at(300)
    assert row().next_run_time == at(300) and row().acquired_by is None


def test_finished_one_shot_does_not_overwrite_a_re_added_job(a, b):
    """B removed the one-shot job and added a new one with the same id: A's finish leaves it."""
    a.add_job(make_job(a, trigger=DateTrigger(at(0)), next_run_time=at(0)))
    (job,) = a.get_due_jobs(at(10))
    b.remove_job("job")
    b.add_job(make_job(b, trigger=DateTrigger(at(300)), next_run_time=at(300)))
    finish(a, "job")
    assert a.lookup_job("job").trigger.run_date == at(300)
    assert b.get_next_run_time() == at(300)


def test_finished_one_shot_leaves_an_empty_record(a):
    """Without interference a finished one-shot job is kept as an empty, unclaimed record."""
    a.add_job(make_job(a, trigger=DateTrigger(at(0)), next_run_time=at(0)))
    a.get_due_jobs(at(10))
    finish(a, "job")
    stored = row()
    assert stored.is_finished and stored.next_run_time is None and stored.acquired_by is None
    assert a.lookup_job("job") is None


def test_running_job_keeps_its_claim_until_it_finished(a, b):
    """While the job still runs in A, B cannot dispatch its next fire (max_instances holds)."""
    executor = ThreadPoolExecutor()
    a._scheduler.add_executor(executor, "default")  # not started: only looked up
    a.add_job(make_job(a, next_run_time=at(0)))
    (job,) = a.get_due_jobs(at(10))
    executor._instances["job"] = 1  # as if submitted and still running
    dispatch(a, job, at(60))
    assert row().next_run_time == at(60)
    assert row().acquired_by == a._coordinator.instance_id
    assert row().acquired_until > timezone.now()
    assert "job" in a._coordinator.held
    assert b.get_due_jobs(at(100)) == []

    a._coordinator._release_idle()  # still running: kept
    assert row().acquired_by == a._coordinator.instance_id
    executor._instances["job"] = 0  # the run finished
    a._coordinator._release_idle()
    assert row().acquired_by is None and a._coordinator.held == {}
    assert [j.id for j in b.get_due_jobs(at(100))] == ["job"]


# --- replace_existing ------------------------------------------------------------------


def replace(store, job):
    """What ``scheduler.add_job(..., replace_existing=True)`` does when the id exists."""
    with pytest.raises(ConflictingIdError):
        store.add_job(job)
    store.update_job(job)


def test_replace_identical_definition_keeps_a_future_next_run_time(a, b):
    """Re-adding the same job at start-up must not move its stored (future) schedule."""
    a.add_job(make_job(a, next_run_time=at(100)))
    replace(b, make_job(b, next_run_time=at(50)))
    assert row().next_run_time == at(100)
    assert b.lookup_job("job").next_run_time == at(100)
    # A plain update (modify/reschedule) still writes the given time.
    b.update_job(make_job(b, next_run_time=at(50)))
    assert row().next_run_time == at(50)


def test_replace_with_another_definition_replaces(a, b):
    """A changed trigger is a new definition: it is written, with its own next run time."""
    a.add_job(make_job(a, next_run_time=at(100), seconds=60))
    replace(b, make_job(b, next_run_time=at(50), seconds=30))
    restored = b.lookup_job("job")
    assert restored.trigger.interval == timedelta(seconds=30)
    assert restored.next_run_time == at(50) and row().next_run_time == at(50)


def test_replace_unpauses_a_paused_job(a, b):
    """As in APScheduler, replacing a paused job with the same definition schedules it again."""
    a.add_job(make_job(a, next_run_time=None))
    replace(b, make_job(b, next_run_time=at(50)))
    assert row().next_run_time == at(50)
    assert b.get_next_run_time() == at(50)


def test_replace_keeps_a_past_time_with_or_without_live_instances(a, b):
    """A past stored time is a due fire: kept, so the scheduler runs it or logs it Missed! (#9.16).

    It used to be replaced when no instance was alive (after a downtime), which
    dropped the fire without a trace: a --burst start never ran the job.
    """
    past = timezone.now() - timedelta(hours=1)
    a.add_job(make_job(a, next_run_time=past))
    replace(b, make_job(b, next_run_time=at(50)))  # no scheduler instance alive
    assert row().next_run_time == past
    assert b.lookup_job("job").next_run_time == past

    now = timezone.now()
    DjangoSchedulerInstance.objects.create(
        id="alive", host="h", pid=1, started=now, last_heartbeat=now
    )
    replace(b, make_job(b, next_run_time=at(50)))
    assert row().next_run_time == past


def test_replace_keeps_a_pause_inside_declared_sync(a, b):
    """The declared-job sync keeps an operator's pause, also when the definition changed (#9.5)."""
    a.add_job(make_job(a, next_run_time=None, seconds=60))
    with declared_sync():
        replace(b, make_job(b, next_run_time=at(50), seconds=60))  # same definition
        assert row().next_run_time is None
        job = make_job(b, next_run_time=at(50), seconds=30)
        replace(b, job)  # another definition: written, still paused
    assert job.next_run_time is None
    restored = b.lookup_job("job")
    assert restored.trigger.interval == timedelta(seconds=30)
    assert restored.next_run_time is None and row().next_run_time is None
    # Outside the block, replace_existing unpauses as APScheduler does.
    replace(b, make_job(b, next_run_time=at(50), seconds=30))
    assert row().next_run_time == at(50)


@pytest.mark.parametrize(
    "trigger",
    [{"trigger": "cron", "minute": "*/5"}, {"trigger": "interval", "minutes": 5}],
    ids=["cron", "interval-without-start-date"],
)
def test_start_up_re_add_through_the_scheduler_keeps_the_schedule(make_scheduler, trigger):
    """Every process re-adding the same job at start-up (replace_existing) keeps the stored time.

    ``add_job(func, "interval", minutes=5)`` is the most common form; APScheduler gives
    each new interval trigger its own ``start_date = now + interval``.
    """
    for process in range(2):
        scheduler = make_scheduler(start=False)
        scheduler.start(paused=True)
        scheduler.add_job(jobs.record, id="every", replace_existing=True, **trigger)
        if process == 0:  # the stored schedule moved on (another scheduler dispatched)
            moved = row("every").next_run_time + timedelta(hours=1)
            DjangoJob.objects.filter(id="every").update(next_run_time=moved)
        time.sleep(0.05)
    assert row("every").next_run_time == moved


# --- dead instances, paused schedulers, shutdown ----------------------------------------


def test_the_heartbeat_says_whether_another_instance_is_dead_where_one_statement_can(vendor):
    """PostgreSQL answers in the heartbeat's own statement; elsewhere the answer is "unknown"."""
    from django_apscheduler import backends

    now = timezone.now()
    beat = backends.for_alias("default").heartbeat
    instances = DjangoSchedulerInstance.objects.using("default")
    cutoff = now - timedelta(seconds=10)
    assert beat(instances, "host:1:me", now, cutoff) == (False, None)  # no row: register again
    DjangoSchedulerInstance.objects.create(
        id="host:1:me", host="host", pid=1, started=now, last_heartbeat=now - timedelta(hours=1)
    )
    DjangoSchedulerInstance.objects.create(
        id="host:2:other", host="host", pid=2, started=now, last_heartbeat=now
    )
    none_dead = beat(instances, "host:1:me", now, cutoff)
    assert DjangoSchedulerInstance.objects.get(id="host:1:me").last_heartbeat == now
    DjangoSchedulerInstance.objects.filter(id="host:2:other").update(
        last_heartbeat=now - timedelta(minutes=1)
    )
    one_dead = beat(instances, "host:1:me", now, cutoff)
    if vendor == "postgresql":
        assert (none_dead, one_dead) == ((True, False), (True, True))
    else:
        assert (none_dead, one_dead) == ((True, None), (True, None))


@override_settings(
    APSCHEDULER_LEASE_TIME=1, APSCHEDULER_HEARTBEAT_INTERVAL=0.3, APSCHEDULER_POLL_INTERVAL=0.2
)
def test_a_running_scheduler_retires_an_instance_once_it_stops_heartbeating(a):
    """Alive at first (the heartbeat says none is dead), then dead: it is retired all the same."""
    a.get_due_jobs(at(0))  # registers the instance and starts its housekeeping
    DjangoSchedulerInstance.objects.create(
        id="host:9:gone", host="host", pid=9, started=timezone.now(), last_heartbeat=timezone.now()
    )
    wait_until(
        lambda: not DjangoSchedulerInstance.objects.filter(id="host:9:gone").exists(), timeout=30
    )
    assert DjangoSchedulerInstance.objects.filter(id=a._coordinator.instance_id).exists()


def test_reap_dead_instances_interrupts_their_runs_and_frees_their_jobs():
    """A dead instance's started runs become Interrupted, its claims and row go; the living stay."""
    now = timezone.now()
    until = now + timedelta(minutes=5)
    dead = DjangoSchedulerInstance.objects.create(
        id="host:1:dead", host="host", pid=1, started=now, last_heartbeat=now - timedelta(minutes=5)
    )
    live = DjangoSchedulerInstance.objects.create(
        id="host:2:live", host="host", pid=2, started=now, last_heartbeat=now
    )
    for instance in (dead, live):
        DjangoJob.objects.create(
            id=instance.id,
            next_run_time=at(0),
            job_state=b"x",
            acquired_by=instance.id,
            acquired_until=until,
        )
        for status, seconds in ((DjangoJobExecution.SENT, 0), (DjangoJobExecution.SUCCESS, 1)):
            DjangoJobExecution.objects.create(
                job_id=instance.id, run_time=at(seconds), status=status, instance=instance.id
            )

    assert coordination.reap_dead_instances("default") == [dead.id]

    assert list(DjangoSchedulerInstance.objects.values_list("id", flat=True)) == [live.id]
    gone = DjangoJobExecution.objects.get(job_id=dead.id, run_time=at(0))
    assert gone.status == DjangoJobExecution.INTERRUPTED
    assert dead.id in gone.exception and gone.finished is not None
    done = DjangoJobExecution.objects.get(job_id=dead.id, run_time=at(1))
    assert done.status == DjangoJobExecution.SUCCESS
    assert (row(dead.id).acquired_by, row(dead.id).acquired_until) == (None, None)

    assert DjangoJobExecution.objects.get(job_id=live.id, run_time=at(0)).status == (
        DjangoJobExecution.SENT
    )
    assert row(live.id).acquired_by == live.id and row(live.id).acquired_until == until
    assert coordination.reap_dead_instances("default") == []


def test_paused_scheduler_writes_jobs_but_never_dispatches(make_scheduler, caplog):
    """A scheduler started paused (web process) adds jobs, registers no instance, claims nothing."""
    caplog.set_level(logging.DEBUG, logger="apscheduler.scheduler")
    scheduler = make_scheduler(start=False)
    scheduler.start(paused=True)
    due = datetime.now(UTC) - timedelta(seconds=5)
    scheduler.add_job(jobs.record, "interval", minutes=1, id="every", next_run_time=due)
    scheduler.add_job(jobs.record, "date", run_date=due, id="once")
    caplog.clear()
    scheduler.wakeup()
    # The scheduler's loop went round with the jobs due (and did nothing, being paused).
    wait_until(
        lambda: any(
            "Scheduler is paused -- not processing jobs" in r.getMessage() for r in caplog.records
        )
    )
    assert sorted(j.id for j in scheduler.get_jobs()) == ["every", "once"]
    assert sorted(DjangoJob.objects.values_list("id", flat=True)) == ["every", "once"]
    assert not DjangoSchedulerInstance.objects.exists()
    assert not DjangoJob.objects.filter(acquired_by__isnull=False).exists()
    assert jobs.calls == []
    scheduler.shutdown()
    assert not DjangoSchedulerInstance.objects.exists()
    assert DjangoJob.objects.get(id="once").next_run_time == due


def test_shutdown_retires_the_instance_and_releases_its_claims(a, b):
    """A store that dispatched deletes its instance row and frees every claim when shut down."""
    executor = ThreadPoolExecutor()
    a._scheduler.add_executor(executor, "default")
    a.add_job(make_job(a, id="running", next_run_time=at(0)))
    a.add_job(make_job(a, id="pending", next_run_time=at(1)))
    due = {j.id: j for j in a.get_due_jobs(at(10))}
    executor._instances["running"] = 1
    dispatch(a, due["running"], at(60))  # kept: it still runs
    instance = a._coordinator.instance_id
    assert DjangoSchedulerInstance.objects.filter(id=instance).exists()
    assert claimed_by(a) == ["pending", "running"]
    DjangoJobExecution.objects.create(
        job_id="running", run_time=at(0), status=DjangoJobExecution.SENT, instance=instance
    )

    a.shutdown()

    assert not DjangoSchedulerInstance.objects.filter(id=instance).exists()
    assert not DjangoJob.objects.filter(acquired_by__isnull=False).exists()
    execution = DjangoJobExecution.objects.get(job_id="running")
    assert execution.status == DjangoJobExecution.INTERRUPTED and instance in execution.exception
    assert a.get_due_jobs(at(100)) == []
    assert sorted(j.id for j in b.get_due_jobs(at(100))) == ["pending", "running"]


# --- issue 9 (6d): row locks of other sessions never block dispatch or the heartbeat --------


class RowLockHolder:
    """Another session (a view inside ``atomic()``) that changes a job and keeps its row locked."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.locked = threading.Event()
        self.release = threading.Event()
        self.timed_out = False
        self.thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        from django.db import transaction
        from django.db.models import F

        try:
            with transaction.atomic():
                DjangoJob.objects.filter(id=self.job_id).update(version=F("version") + 1)
                self.locked.set()
                self.timed_out = not self.release.wait(30)
        finally:
            connections.close_all()

    def holding(self) -> bool:
        """True while the other session still keeps the row locked (nobody waited it out)."""
        return self.thread.is_alive() and not self.timed_out

    def __enter__(self) -> RowLockHolder:
        self.thread.start()
        assert self.locked.wait(30)
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.thread.join(60)


@pytest.fixture
def row_locks(vendor):
    if vendor == "sqlite":
        pytest.skip("SQLite locks the whole database, not rows: a writer waits for every other")


def test_write_back_of_a_row_locked_elsewhere_is_deferred_not_waited_for(a, b, row_locks):
    a.add_job(make_job(a, next_run_time=at(0)))
    a.add_job(make_job(a, id="other", next_run_time=at(0)))
    job, other = sorted(a.get_due_jobs(at(10)), key=lambda j: j.id)
    with RowLockHolder("job") as holder:
        job._modify(next_run_time=at(60))
        a.update_job(job)
        other._modify(next_run_time=at(60))
        a.update_job(other)
        a._flush_write_backs()  # returns while the row is still locked
        assert holder.holding()
        assert row("other").next_run_time == at(60)  # the rest of the round landed
        assert row("other").acquired_by is None
        assert a._coordinator.deferred_ids() == ["job"]
        assert row("job").acquired_by == a._coordinator.instance_id  # still ours
        # Not due again for A meanwhile: its next run time skips the deferred job.
        assert a.get_next_run_time() == at(60)
    assert not holder.timed_out
    a._flush_write_backs()  # the next round: the lock is gone, the write lands
    assert row("job").next_run_time == at(60)
    assert row("job").acquired_by is None and a._coordinator.deferred_ids() == []
    assert b.get_due_jobs(at(30)) == []


def test_heartbeat_is_not_held_up_by_a_row_locked_elsewhere(a, row_locks):
    executor = ThreadPoolExecutor()
    a._scheduler.add_executor(executor, "default")  # not started: only looked up
    a.add_job(make_job(a, next_run_time=at(0)))
    (job,) = a.get_due_jobs(at(10))
    executor._instances["job"] = 1  # as if submitted and still running
    dispatch(a, job, at(60))
    instance = a._coordinator.instance_id
    DjangoSchedulerInstance.objects.filter(id=instance).update(
        last_heartbeat=timezone.now() - timedelta(minutes=1)
    )
    with RowLockHolder("job") as holder:
        a._coordinator._heartbeat()
        assert holder.holding()
        beat = DjangoSchedulerInstance.objects.get(id=instance).last_heartbeat
        assert beat > timezone.now() - timedelta(seconds=30)
        executor._instances["job"] = 0
        a._coordinator._release_idle()  # left for later, not waited for
        assert "job" in a._coordinator.held
    assert not holder.timed_out
    a._coordinator._release_idle()
    assert row().acquired_by is None and a._coordinator.held == {}


def test_a_deferred_write_back_is_not_dispatched_again_meanwhile(a, row_locks):
    """While its write-back waits for another session's lock, the job is not claimed again.

    The row still holds the fire just dispatched (the write-back has not
    landed) and is still claimed by this instance: claiming it in the next
    round would dispatch the same fire twice.
    """
    a.add_job(make_job(a, next_run_time=at(0)))
    (job,) = a.get_due_jobs(at(10))
    with RowLockHolder("job") as holder:
        job._modify(next_run_time=at(60))
        a.update_job(job)
        a._flush_write_backs()
        assert a._coordinator.deferred_ids() == ["job"]
        assert a.get_due_jobs(at(20)) == []  # the next round: the lock is still there
        assert holder.holding()
    a._flush_write_backs()
    assert row("job").next_run_time == at(60)
    assert a.get_due_jobs(at(30)) == []


def test_a_write_back_deferred_at_the_start_of_a_round_is_not_claimed_in_that_round(
    a, row_locks, monkeypatch
):
    """The lock that deferred a write-back can be gone a moment later, when the round claims.

    A round first retries the deferred write-backs, then claims. When the
    other session's lock (on MariaDB, as brief as another scheduler's claim
    scan reading the row) is still there for the retry but gone for the claim,
    the row is claimable by this instance and still holds the fire already
    dispatched: claiming it dispatched that fire a second time (the storm
    test's duplicates on MariaDB).
    """
    a.add_job(make_job(a, next_run_time=at(0)))
    (job,) = a.get_due_jobs(at(10))
    holder = RowLockHolder("job").__enter__()
    try:
        job._modify(next_run_time=at(60))
        a.update_job(job)
        a._flush_write_backs()
        assert a._coordinator.deferred_ids() == ["job"]
        flush = a._flush_write_backs

        def flush_then_unlock() -> None:
            flush()  # the retry: still locked, deferred again
            assert a._coordinator.deferred_ids() == ["job"]
            holder.__exit__(None, None, None)  # the other session commits

        monkeypatch.setattr(a, "_flush_write_backs", flush_then_unlock)
        assert a.get_due_jobs(at(20)) == [], "the fire at(0) was dispatched a second time"
    finally:
        holder.__exit__(None, None, None)
    assert not holder.timed_out
    monkeypatch.undo()
    a._flush_write_backs()
    assert row("job").next_run_time == at(60)
    assert a._coordinator.deferred_ids() == []


def test_a_deferred_write_back_is_retried_soon_not_at_the_next_heartbeat(
    make_scheduler, monkeypatch, settings, vendor
):
    """Another session locks a dispatched job's row for a moment: the write-back lands soon after.

    The write-back found the row locked and was deferred, so the job is not
    due here meanwhile. Nothing else wakes the scheduler in this test (the
    heartbeat and the poll are a minute apart): it retries on its own,
    backing off while the row stays locked. Left to the heartbeat, the job's
    next fire was late by up to a heartbeat (4 s at the defaults). On SQLite
    the write waits for the lock instead of being deferred.
    """
    from django_apscheduler.dispatch import DispatchRound

    settings.APSCHEDULER_HEARTBEAT_INTERVAL = 60
    settings.APSCHEDULER_LEASE_TIME = 180
    settings.APSCHEDULER_POLL_INTERVAL = 60
    settings.APSCHEDULER_LISTEN_POLL_INTERVAL = 60
    holder = RowLockHolder("held")
    flush = DispatchRound.flush
    deferrals = []

    def flush_with_the_row_locked(round_: DispatchRound) -> None:
        if not holder.locked.is_set() and any(wb.job_id == "held" for wb in round_.pending):
            holder.__enter__()  # a view changes the job and has not committed yet
        flush(round_)
        if any(wb.job_id == "held" for wb in round_.pending):
            deferrals.append(time.monotonic())

    monkeypatch.setattr(DispatchRound, "flush", flush_with_the_row_locked)
    scheduler = make_scheduler()
    try:
        scheduler.add_job(
            jobs.noop, "interval", hours=1, next_run_time=timezone.now(), id="held",
            misfire_grace_time=None,
        )  # fmt: skip
        wait_until(holder.locked.is_set, timeout=30)
        if vendor == "sqlite":
            time.sleep(0.5)  # the database stays locked for a moment
        else:
            # Retried while the row stays locked: the first write-back, then
            # retries (one more round may come from add_job's own notification).
            wait_until(lambda: len(deferrals) >= 3, timeout=20)
    finally:
        if holder.thread.is_alive():
            holder.__exit__(None, None, None)
    assert not holder.timed_out
    # Well before the next heartbeat (a minute away): the write-back landed.
    wait_until(
        lambda: DjangoJob.objects.filter(
            id="held",
            acquired_by__isnull=True,
            next_run_time__gt=timezone.now() + timedelta(minutes=30),
        ).exists(),
        timeout=10,
    )


def test_a_job_deferred_while_another_waits_long_is_retried_soon(a):
    """One row locked for long has grown the retry wait; another job deferred now is retried soon."""
    coordinator = a._coordinator
    beat = 60.0
    coordinator.defer("long")
    now = time.monotonic()
    for _ in range(10):  # the row stays locked: each retry doubles the wait
        now = coordinator._write_back_retry_at()
        coordinator._retry_write_backs(now, beat)
    assert coordinator._write_back_retry_at() - now == pytest.approx(beat)
    coordinator.defer("brief")
    assert coordinator._write_back_retry_at() <= (
        time.monotonic() + coordination.WRITE_BACK_RETRY_INTERVAL
    )
    coordinator.settle("long", None)
    coordinator.settle("brief", None)
    assert coordinator._write_back_retry_at() == float("inf")


def test_a_write_back_that_failed_is_retried_not_dispatched_again(a, monkeypatch, caplog):
    """A write-back that fails (the database went away for longer than the retries) is kept.

    Dropped, it left the row claimed by this instance with the fire just
    dispatched: the next round claimed it again and dispatched that fire a
    second time.
    """
    from django.db import DatabaseError

    from django_apscheduler import db

    a.add_job(make_job(a, next_run_time=at(0)))
    (job,) = a.get_due_jobs(at(10))
    real_update_values = db.update_values

    def failing_update_values(*args, **kwargs):
        raise DatabaseError("the server went away (injected)")

    monkeypatch.setattr(db, "update_values", failing_update_values)
    job._modify(next_run_time=at(60))
    a.update_job(job)
    with caplog.at_level(logging.ERROR, logger="django_apscheduler"):
        a._flush_write_backs()
    assert "Could not write back 1 dispatched jobs" in caplog.text
    assert a._coordinator.deferred_ids() == ["job"]
    assert row().acquired_by == a._coordinator.instance_id  # still ours
    monkeypatch.setattr(db, "update_values", real_update_values)
    # The next round retries the write first, and does not claim the job again.
    assert a.get_due_jobs(at(20)) == [], "the fire at(0) was dispatched a second time"
    assert row().next_run_time == at(60)
    assert row().acquired_by is None and a._coordinator.deferred_ids() == []


def test_a_retried_add_never_takes_over_an_identical_job_another_process_claimed(a, b, monkeypatch):
    """An add whose first attempt failed retryably finds the row: it may be another process's.

    Processes that start together add byte-identical jobs (same definition,
    same next run time). When one's insert fails with a retryable error and
    its retry finds the other's row with the same state, that row may already
    be claimed and dispatched: taking it over (clearing the claim, moving the
    next run time back) let a third process dispatch the same fire again.
    """
    from django.db import OperationalError
    from django.db.models.query import QuerySet

    a.add_job(make_job(a, next_run_time=at(0)))
    assert len(a.get_due_jobs(at(10))) == 1  # dispatched by A, not yet written back
    before = row()
    real_create = QuerySet.create
    failures = []

    def create_failing_once(self, **kwargs):
        if self.model is DjangoJob and not failures:
            failures.append(kwargs["id"])
            raise OperationalError(2013, "Lost connection (database is locked), injected")
        return real_create(self, **kwargs)

    monkeypatch.setattr(QuerySet, "create", create_failing_once)
    b.add_job(make_job(b, next_run_time=at(0)))  # byte-identical to A's job: stored as asked
    assert failures == ["job"]
    after = row()
    assert after.acquired_by == a._coordinator.instance_id, "B took over A's claim"
    assert (after.version, after.next_run_time) == (before.version, before.next_run_time)
