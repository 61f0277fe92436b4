"""The APScheduler 3 job-store contract of DjangoJobStore, on the real database."""

from __future__ import annotations

import logging
import pickle
from datetime import datetime, timedelta, timezone

import pytest
from apscheduler.job import Job
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings

from django_apscheduler import signing
from django_apscheduler.exceptions import UnrestorableJobError
from django_apscheduler.jobstores import DjangoJobStore
from django_apscheduler.models import DjangoJob, DjangoJobExecution
from tests import jobs

UTC = timezone.utc


@pytest.fixture
def store():
    """A DjangoJobStore started on a scheduler that is not running (no dispatch thread)."""
    scheduler = BackgroundScheduler(timezone="UTC")
    jobstore = DjangoJobStore()
    jobstore.start(scheduler, "default")
    yield jobstore
    jobstore.shutdown()


def make_job(store, func=jobs.noop, *, id="job", trigger=None, next_run_time=None, **options):
    trigger = trigger or IntervalTrigger(seconds=60, timezone="UTC")
    job = Job(
        store._scheduler,
        id=id,
        func=func,
        trigger=trigger,
        executor="default",
        args=options.pop("args", ()),
        kwargs=options.pop("kwargs", {}),
        name=options.pop("name", id),
        misfire_grace_time=options.pop("misfire_grace_time", 1),
        coalesce=options.pop("coalesce", True),
        max_instances=options.pop("max_instances", 1),
        next_run_time=next_run_time,
    )
    assert not options, options
    job._jobstore_alias = "default"
    return job


def at(seconds: float) -> datetime:
    return datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


def add_broken_row(job_id: str, next_run_time: datetime | None, state: bytes | None = None):
    """A row whose function no longer exists (as after a refactoring)."""
    if state is None:
        good = make_job_state(job_id, next_run_time)
        state = good.replace(b"tests.jobs:noop", b"tests.jobs:gone")
    return DjangoJob.objects.create(
        id=job_id,
        next_run_time=next_run_time,
        job_state=state,
        job_signature=signing.sign(job_id, state),  # broken, but not for its signature
    )


def make_job_state(job_id: str, next_run_time: datetime | None) -> bytes:
    scheduler = BackgroundScheduler(timezone="UTC")
    job = Job(
        scheduler,
        id=job_id,
        func=jobs.noop,
        trigger=IntervalTrigger(seconds=60, timezone="UTC"),
        executor="default",
        args=(),
        kwargs={},
        name=job_id,
        misfire_grace_time=1,
        coalesce=True,
        max_instances=1,
        next_run_time=next_run_time,
    )
    return pickle.dumps(job.__getstate__(), pickle.HIGHEST_PROTOCOL)


pytestmark = pytest.mark.django_db


def test_add_and_lookup_round_trip(store):
    trigger = CronTrigger(hour=3, minute=15, timezone="Europe/Paris")
    job = make_job(
        store,
        jobs.record,
        id="nightly",
        trigger=trigger,
        next_run_time=at(0),
        args=("x",),
        kwargs={},
        name="Nightly",
        misfire_grace_time=30,
        coalesce=False,
        max_instances=3,
    )
    row = store.add_job(job)
    assert isinstance(row, DjangoJob) and row.id == "nightly"

    restored = store.lookup_job("nightly")
    assert restored.id == "nightly"
    assert restored.func is jobs.record
    assert restored.func_ref == "tests.jobs:record"
    assert str(restored.trigger) == str(trigger)
    assert restored.args == ("x",)
    assert (
        restored.name,
        restored.misfire_grace_time,
        restored.coalesce,
        restored.max_instances,
    ) == (
        "Nightly",
        30,
        False,
        3,
    )
    assert restored.next_run_time == at(0)
    assert restored._scheduler is store._scheduler and restored._jobstore_alias == "default"
    assert DjangoJob.objects.get(id="nightly").next_run_time == at(0)


def test_lookup_missing_job_returns_none(store):
    assert store.lookup_job("nope") is None


def test_add_duplicate_raises_conflicting_id(store):
    store.add_job(make_job(store, id="dup", next_run_time=at(0)))
    with pytest.raises(ConflictingIdError):
        store.add_job(make_job(store, id="dup", next_run_time=at(5)))
    assert DjangoJob.objects.get(id="dup").next_run_time == at(0)


def test_pickle_protocol_is_used_and_shown(store):
    store2 = DjangoJobStore(pickle_protocol=2)
    store2.start(store._scheduler, "other")
    store2.add_job(make_job(store2, id="p2", next_run_time=at(0)))
    store.add_job(make_job(store, id="p5", next_run_time=at(0)))
    assert bytes(DjangoJob.objects.get(id="p2").job_state)[:2] == b"\x80\x02"
    assert bytes(DjangoJob.objects.get(id="p5").job_state)[:2] == bytes(
        [0x80, pickle.HIGHEST_PROTOCOL]
    )
    assert repr(store2) == "<DjangoJobStore(pickle_protocol=2)>"
    # The stored value is the pickle of Job.__getstate__(), as 0.7.0 wrote it.
    state = pickle.loads(bytes(DjangoJob.objects.get(id="p2").job_state))
    assert state["id"] == "p2" and state["func"] == "tests.jobs:noop" and state["version"] == 1


def test_update_job(store):
    job = make_job(store, id="u", next_run_time=at(0))
    store.add_job(job)
    job._modify(next_run_time=at(100), max_instances=5)
    store.update_job(job)
    assert store.lookup_job("u").max_instances == 5
    assert DjangoJob.objects.get(id="u").next_run_time == at(100)


def test_update_missing_job_raises(store):
    with pytest.raises(JobLookupError):
        store.update_job(make_job(store, id="ghost", next_run_time=at(0)))


def test_remove_job_removes_its_executions(store):
    store.add_job(make_job(store, id="r", next_run_time=at(0)))
    DjangoJobExecution.objects.create(job_id="r", run_time=at(0), status=DjangoJobExecution.SUCCESS)
    store.remove_job("r")
    assert not DjangoJob.objects.filter(id="r").exists()
    assert not DjangoJobExecution.objects.filter(job_id="r").exists()
    with pytest.raises(JobLookupError):
        store.remove_job("r")


def test_remove_all_jobs(store):
    for i in range(3):
        store.add_job(make_job(store, id=f"j{i}", next_run_time=at(i)))
    DjangoJobExecution.objects.create(
        job_id="j1", run_time=at(0), status=DjangoJobExecution.SUCCESS
    )
    store.remove_all_jobs()
    assert DjangoJob.objects.count() == 0
    assert DjangoJobExecution.objects.count() == 0
    assert store.get_all_jobs() == []


def test_get_due_jobs_returns_due_jobs_in_order(store):
    store.add_job(make_job(store, id="late", next_run_time=at(30)))
    store.add_job(make_job(store, id="b", next_run_time=at(20)))
    store.add_job(make_job(store, id="a", next_run_time=at(10)))
    store.add_job(make_job(store, id="paused", next_run_time=None))
    due = store.get_due_jobs(at(20))
    assert [job.id for job in due] == ["a", "b"]
    assert store.get_due_jobs(at(5)) == []


def test_get_due_jobs_claims_in_one_select_and_one_update(store, vendor):
    for i in range(5):
        store.add_job(make_job(store, id=f"j{i}", next_run_time=at(i)))
    store.get_due_jobs(at(-100))  # the first call registers the scheduler instance
    with CaptureQueriesContext(connection) as queries:
        due = store.get_due_jobs(at(2))
    assert [j.id for j in due] == ["j0", "j1", "j2"]
    bookkeeping = ("begin", "savepoint", "release savepoint")
    statements = [q["sql"].lower() for q in queries]
    statements = [sql for sql in statements if not sql.startswith(bookkeeping)]
    assert len(statements) == 2, statements
    select, update = statements
    select_list = select.split(" from ")[0]
    assert "job_state" in select_list and "version" in select_list
    assert "where" in select and "next_run_time" in select.split(" where ")[1]
    if vendor == "postgresql":  # the lock an UPDATE takes: logging runs is not held up
        assert select.endswith("for no key update skip locked")
    elif vendor == "mysql":
        assert select.endswith("for update skip locked")
    assert update.startswith("update") and "acquired_by" in update
    instance = store._coordinator.instance_id
    claimed = DjangoJob.objects.filter(acquired_by=instance).values_list("id", flat=True)
    assert sorted(claimed) == ["j0", "j1", "j2"]


def test_get_next_run_time(store):
    assert store.get_next_run_time() is None
    store.add_job(make_job(store, id="paused", next_run_time=None))
    assert store.get_next_run_time() is None
    store.add_job(make_job(store, id="b", next_run_time=at(20)))
    store.add_job(make_job(store, id="a", next_run_time=at(10)))
    with CaptureQueriesContext(connection) as queries:
        next_run_time = store.get_next_run_time()
    assert next_run_time == at(10)
    assert next_run_time.tzinfo is not None
    assert len(queries) == 1


def test_get_all_jobs_puts_paused_jobs_last(store):
    store.add_job(make_job(store, id="p1", next_run_time=None))
    store.add_job(make_job(store, id="b", next_run_time=at(20)))
    store.add_job(make_job(store, id="p2", next_run_time=None))
    store.add_job(make_job(store, id="a", next_run_time=at(10)))
    assert [job.id for job in store.get_all_jobs()] == ["a", "b", "p1", "p2"]


def _explain(sql: str) -> str:
    prefix = "EXPLAIN QUERY PLAN " if connection.vendor == "sqlite" else "EXPLAIN "
    with connection.cursor() as cursor:
        cursor.execute(prefix + sql)
        return "\n".join(" ".join(str(col) for col in row) for row in cursor.fetchall())


@pytest.mark.django_db(transaction=True)
def test_due_and_next_run_time_queries_use_the_next_run_time_index(store):
    """With many future jobs, both scheduler queries are answered from the index."""
    state = make_job_state("x", at(0))
    DjangoJob.objects.bulk_create(
        [
            DjangoJob(
                id=f"job{i:05d}",
                next_run_time=at(3600 + i),
                job_state=state,
                job_signature=signing.sign(f"job{i:05d}", state),
            )
            for i in range(3000)
        ]
        + [
            DjangoJob(
                id=f"due{i}",
                next_run_time=at(i),
                job_state=state,
                job_signature=signing.sign(f"due{i}", state),
            )
            for i in range(3)
        ]
    )
    with connection.cursor() as cursor:
        cursor.execute(
            {"sqlite": "ANALYZE", "mysql": "ANALYZE TABLE django_apscheduler_djangojob"}.get(
                connection.vendor, "ANALYZE django_apscheduler_djangojob"
            )
        )
        if connection.vendor == "mysql":
            cursor.fetchall()
    store.get_due_jobs(at(-100))  # the first call registers the scheduler instance
    with CaptureQueriesContext(connection) as queries:
        assert len(store.get_due_jobs(at(10))) == 3
        assert store.get_next_run_time() == at(0)
    selects = [q for q in queries if q["sql"].lower().startswith("select")]
    assert len(selects) == 2, [q["sql"] for q in queries]
    for query in selects:
        plan = _explain(query["sql"])
        assert "next_run_time" in plan, plan


def test_unrestorable_row_is_skipped_logged_and_kept(store, caplog):
    store.add_job(make_job(store, id="good", next_run_time=at(1)))
    add_broken_row("broken", at(0))
    with caplog.at_level(logging.ERROR, logger="django_apscheduler"):
        due = store.get_due_jobs(at(10))
    assert [job.id for job in due] == ["good"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("'broken'" in m and "gone" in m for m in messages), messages
    assert DjangoJob.objects.filter(id="broken").exists()
    # The broken row must not make the scheduler wake up again and again.
    assert store.get_next_run_time() == at(1)
    # Logged once per reason, not at every round.
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="django_apscheduler"):
        store.get_all_jobs()
    assert not [r for r in caplog.records if "'broken'" in r.getMessage()]
    assert [job.id for job in store.get_all_jobs()] == ["good"]
    with pytest.raises(UnrestorableJobError, match="'broken'"):
        store.lookup_job("broken")


def test_corrupt_pickle_is_kept_too(store):
    add_broken_row("garbage", at(0), state=b"\x80\x05not a pickle")
    assert store.get_due_jobs(at(10)) == []
    assert DjangoJob.objects.filter(id="garbage").exists()


def test_broken_job_can_be_fixed_by_replacing_it(store):
    add_broken_row("fixme", at(0))
    assert store.get_due_jobs(at(10)) == []
    fixed = make_job_state("fixme", at(0))
    DjangoJob.objects.filter(id="fixme").update(
        job_state=fixed, job_signature=signing.sign("fixme", fixed)
    )
    # Fixed through the store (replace_existing goes through update_job): usable at once.
    job = make_job(store, id="fixme", next_run_time=at(0))
    store.update_job(job)
    assert [j.id for j in store.get_due_jobs(at(10))] == ["fixme"]
    assert store.get_next_run_time() == at(0)


@pytest.mark.django_db(transaction=True)
def test_scheduler_runs_good_jobs_next_to_a_broken_one(make_scheduler):
    from tests.helpers import wait_until

    add_broken_row("broken", datetime.now(UTC) - timedelta(seconds=1))
    scheduler = make_scheduler()
    scheduler.add_job(jobs.record, "date", run_date=datetime.now(UTC), id="fine", args=["fine"])
    wait_until(lambda: jobs.calls)
    assert DjangoJob.objects.filter(id="broken").exists()
    assert scheduler.running


def test_scheduler_facing_datetimes_are_in_scheduler_timezone(store):
    store._scheduler.configure(timezone="Asia/Tokyo")
    store.add_job(make_job(store, id="a", next_run_time=at(10)))
    next_run_time = store.get_next_run_time()
    assert next_run_time == at(10)
    assert next_run_time.utcoffset() == timedelta(hours=9)


@pytest.mark.django_db(transaction=True)
def test_works_without_use_tz(store):
    with override_settings(USE_TZ=False, TIME_ZONE="America/New_York"):
        store.add_job(make_job(store, id="naive", next_run_time=at(10)))
        stored = DjangoJob.objects.get(id="naive").next_run_time
        assert stored.tzinfo is None
        assert store.get_next_run_time() == at(10)
        assert [j.id for j in store.get_due_jobs(at(10))] == ["naive"]
        assert store.get_due_jobs(at(9)) == []


def test_job_added_through_scheduler_before_start(make_scheduler):
    scheduler = make_scheduler(start=False)
    scheduler.add_job(jobs.noop, "interval", minutes=5, id="pending")
    scheduler.start(paused=True)
    assert [j.id for j in scheduler.get_jobs()] == ["pending"]
    scheduler.add_job(jobs.noop, "interval", minutes=5, id="pending", replace_existing=True)
    assert DjangoJob.objects.count() == 1


def test_finished_one_shot_record_is_not_a_job_and_its_id_can_be_reused(store):
    DjangoJob.objects.create(id="once", next_run_time=None, job_state=b"")
    assert store.lookup_job("once") is None
    assert store.get_all_jobs() == []
    with pytest.raises(JobLookupError):
        store.update_job(make_job(store, id="missing", next_run_time=at(0)))
    store.add_job(make_job(store, id="once", trigger=DateTrigger(at(50)), next_run_time=at(50)))
    assert store.lookup_job("once").next_run_time == at(50)


def test_job_removed_during_dispatch_neither_comes_back_nor_breaks_the_loop(store):
    """Another process may remove a job between get_due_jobs and the scheduler's write."""
    store.add_job(make_job(store, id="recurring", next_run_time=at(0)))
    store.add_job(make_job(store, id="one-shot", trigger=DateTrigger(at(0)), next_run_time=at(0)))
    due = store.get_due_jobs(at(10))
    assert sorted(j.id for j in due) == ["one-shot", "recurring"]
    DjangoJob.objects.all().delete()  # removed elsewhere, meanwhile
    recurring = next(j for j in due if j.id == "recurring")
    recurring._modify(next_run_time=at(60))
    store.update_job(recurring)  # no JobLookupError: the scheduler's loop goes on
    store.remove_job("one-shot")
    assert store.get_next_run_time() is None
    assert DjangoJob.objects.count() == 0
    # Outside a dispatch round the contract is unchanged.
    with pytest.raises(JobLookupError):
        store.update_job(recurring)
