"""One job-store contract suite, run over MemoryJobStore (the reference) and DjangoJobStore.

APScheduler 3 runs one suite over all of its job stores; this is that idea
for ours. Every test takes the ``store`` fixture, which is parametrized over
``memory`` (APScheduler's ``MemoryJobStore``, whose behaviour defines the
contract) and ``django`` (``DjangoJobStore`` on the database of this run:
SQLite, PostgreSQL or MariaDB, chosen by ``DJANGO_APSCHEDULER_TEST_DB``).
Each store is started on its own ``BackgroundScheduler`` started paused, so
its loop never dispatches; where a test needs a dispatch round it makes one
the way APScheduler's ``_process_jobs`` does (:func:`dispatch_round`).

The contract is APScheduler 3's ``BaseJobStore``: ``add_job``
(``ConflictingIdError`` on a duplicate), ``lookup_job`` (None when unknown),
``get_due_jobs`` (due jobs only, by next run time, paused ones never),
``get_next_run_time`` (the earliest, None when there is none),
``get_all_jobs`` (by next run time, paused last), ``update_job`` and
``remove_job`` (``JobLookupError`` when unknown), ``remove_all_jobs``, and
every field of a job surviving the store.

Where ``DjangoJobStore`` departs from ``MemoryJobStore`` on purpose, the
difference is a named flag of :class:`Traits`, and the test that shows it
asserts each side explicitly: nothing is skipped. The tests do not depend on
how the Django store works inside (claims, write-back); its own mechanisms
are tested in ``test_jobstore.py`` and the coordination tests.

Job objects: ``MemoryJobStore`` hands out the very objects it holds, the
Django store fresh copies. Tests change a job the way the scheduler does
(look it up, ``_modify`` it, ``update_job``), so both read the same.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import pytest
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.jobstores.base import BaseJobStore, ConflictingIdError, JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from django.test.utils import override_settings

from django_apscheduler.exceptions import InvalidJobIdError, UnpicklableJobError
from django_apscheduler.jobstores import DjangoJobStore
from django_apscheduler.models import DjangoJob
from tests import jobs

pytestmark = pytest.mark.django_db

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")
BERLIN = ZoneInfo("Europe/Berlin")
TOKYO = ZoneInfo("Asia/Tokyo")
#: Threads of the default executor of every scheduler here.
POOL_SIZE = 4
#: All times lie in 2030, far from the real clock, so nothing here is due by accident.
BASE = datetime(2030, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """``BASE`` plus ``seconds``."""
    return BASE + timedelta(seconds=seconds)


def takes_anything(*args: Any, **kwargs: Any) -> None:
    """A job function that accepts any arguments (APScheduler checks them against it)."""


@dataclass(frozen=True)
class Traits:
    """Where a store departs from MemoryJobStore on purpose; each flag names one difference."""

    #: The jobs outlive the store object: another store on the same database
    #: (another process) sees them, and ``shutdown()`` keeps them.
    persistent: bool
    #: ``add_job`` refuses a job whose state cannot be pickled (``UnpicklableJobError``).
    serializes_jobs: bool
    #: ``add_job`` refuses an id that some database cannot store (``InvalidJobIdError``).
    validates_ids: bool
    #: A one-shot job removed by its dispatch round leaves a record behind, so its
    #: execution history stays: not a job (never returned, its id free for a new
    #: job), but ``remove_job`` of its id deletes it instead of raising.
    keeps_finished_record: bool
    #: ``replace_existing`` with the same definition keeps the stored next run time
    #: (every process re-adds the same jobs at start-up, each with a time of its own).
    keeps_schedule_on_replace: bool
    #: The ``update_job``/``remove_job`` calls of a dispatch round land together when
    #: the round ends (``get_next_run_time``); until then lookups see the old job.
    defers_round_writes: bool
    #: ``get_due_jobs`` hands out no more jobs than the default executor has free
    #: threads, leaving the rest to idle schedulers (or the next round).
    round_limited_by_free_threads: bool
    #: ``get_due_jobs`` leaves out a job whose executor this scheduler lacks (for a
    #: process that has it) instead of handing it out to be removed by APScheduler.
    leaves_jobs_without_executor: bool
    #: ``get_next_run_time`` is in the scheduler's time zone, not the job's (the same instant).
    reports_in_scheduler_timezone: bool


TRAITS = {
    "memory": Traits(
        persistent=False,
        serializes_jobs=False,
        validates_ids=False,
        keeps_finished_record=False,
        keeps_schedule_on_replace=False,
        defers_round_writes=False,
        round_limited_by_free_threads=False,
        leaves_jobs_without_executor=False,
        reports_in_scheduler_timezone=False,
    ),
    "django": Traits(
        persistent=True,
        serializes_jobs=True,
        validates_ids=True,
        keeps_finished_record=True,
        keeps_schedule_on_replace=True,
        defers_round_writes=True,
        round_limited_by_free_threads=True,
        leaves_jobs_without_executor=True,
        reports_in_scheduler_timezone=True,
    ),
}
#: The Django store with naive local times in the database (``USE_TZ = False``): the same contract.
TRAITS["django-naive"] = TRAITS["django"]


def _new_store(kind: str) -> BaseJobStore:
    return MemoryJobStore() if kind == "memory" else DjangoJobStore()


@contextmanager
def _settings_of(kind: str) -> Iterator[None]:
    """The Django settings ``kind`` runs under (naive Berlin times for ``django-naive``)."""
    if kind != "django-naive":
        yield
        return
    with override_settings(USE_TZ=False, TIME_ZONE="Europe/Berlin"):
        yield


def _new_scheduler(store: BaseJobStore) -> BackgroundScheduler:
    """A scheduler on ``store`` started paused: it writes jobs but never dispatches them."""
    scheduler = BackgroundScheduler(
        timezone="UTC",
        jobstores={"default": store},
        executors={"default": ThreadPoolExecutor(POOL_SIZE), "other": ThreadPoolExecutor(1)},
    )
    scheduler.start(paused=True)
    return scheduler


@pytest.fixture(params=sorted(TRAITS))
def kind(request: pytest.FixtureRequest) -> str:
    """``memory``, ``django`` or ``django-naive``: the store under test."""
    return request.param


@pytest.fixture
def traits(kind: str) -> Traits:
    """The deliberate differences of the store under test."""
    return TRAITS[kind]


@pytest.fixture
def scheduler(kind: str) -> Iterator[BackgroundScheduler]:
    """A paused scheduler on a fresh store of ``kind``; shut down (stopping the store) after.

    Shut down once the settings are restored: leaving ``override_settings``
    resets the time zone of the connection, which shutting down closes.
    """
    with _settings_of(kind):
        scheduler = _new_scheduler(_new_store(kind))
        yield scheduler
    if scheduler.running:
        scheduler.shutdown(wait=True)


@pytest.fixture
def store(scheduler: BackgroundScheduler) -> BaseJobStore:
    """The started store under test (its scheduler's ``default`` store)."""
    return scheduler._lookup_jobstore("default")


def new_job(
    scheduler: BackgroundScheduler,
    job_id: str = "job",
    *,
    func: Any = jobs.noop,
    trigger: Any = None,
    next_run_time: datetime | None = None,
    **options: Any,
) -> Job:
    """A job of ``scheduler``'s default store, as the scheduler would hand it to the store."""
    job = Job(
        scheduler,
        id=job_id,
        func=func,
        trigger=trigger or IntervalTrigger(minutes=1, start_date=BASE, timezone="UTC"),
        executor=options.pop("executor", "default"),
        args=options.pop("args", ()),
        kwargs=options.pop("kwargs", {}),
        name=options.pop("name", job_id),
        misfire_grace_time=options.pop("misfire_grace_time", 1),
        coalesce=options.pop("coalesce", True),
        max_instances=options.pop("max_instances", 1),
        next_run_time=next_run_time,
    )
    assert not options, f"unknown job options: {options}"
    job._jobstore_alias = "default"
    return job


def add(store: BaseJobStore, job_id: str, next_run_time: datetime | None, **options: Any) -> Job:
    """Add a job with ``next_run_time`` (None: paused) to ``store``; return it."""
    job = new_job(store._scheduler, job_id, next_run_time=next_run_time, **options)
    store.add_job(job)
    return job


def ids(job_list: list[Job]) -> list[str]:
    return [job.id for job in job_list]


def change(store: BaseJobStore, job_id: str, **changes: Any) -> None:
    """Change a stored job the way ``BaseScheduler.modify_job`` does."""
    job = store.lookup_job(job_id)
    assert job is not None, job_id
    job._modify(**changes)
    store.update_job(job)


def dispatch_round(store: BaseJobStore, now: datetime) -> list[str]:
    """One dispatch round at ``now``, as APScheduler's ``_process_jobs`` makes it; nothing runs.

    Each due job gets the next fire time after its due run times, or (its
    trigger exhausted) is removed; ``get_next_run_time()`` ends the round.
    Returns the ids handed out.
    """
    handed_out = []
    for job in store.get_due_jobs(now):
        handed_out.append(job.id)
        run_times = job._get_run_times(now)
        following = job.trigger.get_next_fire_time(run_times[-1], now) if run_times else None
        if following is None:
            store.remove_job(job.id)
        else:
            job._modify(next_run_time=following)
            store.update_job(job)
    store.get_next_run_time()
    return handed_out


def view(job: Job) -> tuple[Any, ...]:
    """Everything that defines a stored job, comparable across stores (the function by reference)."""
    return (
        job.id,
        job.func_ref,
        str(job.trigger),
        job.args,
        job.kwargs,
        job.name,
        job.executor,
        job.misfire_grace_time,
        job.coalesce,
        job.max_instances,
        job.next_run_time,
    )


# --- add_job and lookup_job -------------------------------------------------------------


def test_lookup_of_an_unknown_id_is_none(store):
    assert store.lookup_job("nope") is None
    add(store, "there", at(0))
    assert store.lookup_job("nope") is None


def test_added_job_is_looked_up(store):
    add(store, "a", at(10))
    job = store.lookup_job("a")
    assert job is not None
    assert job.id == "a" and job.next_run_time == at(10)
    assert job._scheduler is store._scheduler


def test_duplicate_id_raises_conflicting_id_and_keeps_the_stored_job(store):
    add(store, "dup", at(0), args=())
    with pytest.raises(ConflictingIdError):
        add(store, "dup", at(5), func=jobs.record, args=("other",))
    kept = store.lookup_job("dup")
    assert (kept.func_ref, kept.args, kept.next_run_time) == ("tests.jobs:noop", (), at(0))
    assert ids(store.get_all_jobs()) == ["dup"]


@pytest.mark.parametrize("read", ["lookup_job", "get_all_jobs", "get_due_jobs"])
def test_every_field_of_a_job_survives_the_store(store, read):
    """Function, arguments, trigger, name, executor, options and next run time (with its zone)."""
    trigger = CronTrigger(day_of_week="mon-fri", hour=3, minute=15, timezone="Europe/Paris")
    next_run_time = datetime(2030, 1, 7, 3, 15, 0, 250_000, tzinfo=PARIS)
    original = new_job(
        store._scheduler,
        "nightly",
        func=takes_anything,
        trigger=trigger,
        next_run_time=next_run_time,
        args=("x", [1, 2], None),
        kwargs={"tag": "t", "nested": {"pair": (1, 2), "text": "é"}},
        name="Nightly report",
        executor="other",
        misfire_grace_time=None,
        coalesce=False,
        max_instances=3,
    )
    expected = view(original)
    store.add_job(original)

    if read == "lookup_job":
        job = store.lookup_job("nightly")
    elif read == "get_all_jobs":
        [job] = store.get_all_jobs()
    else:
        [job] = store.get_due_jobs(next_run_time + timedelta(seconds=1))

    assert view(job) == expected
    # A due job's function may come wrapped (the Django store notes each run's start).
    assert getattr(job.func, "__wrapped__", job.func) is takes_anything
    assert job.trigger.timezone == PARIS
    assert job.trigger.get_next_fire_time(None, next_run_time) == trigger.get_next_fire_time(
        None, next_run_time
    )
    assert job.next_run_time.utcoffset() == timedelta(hours=1)
    assert job.next_run_time.microsecond == 250_000
    assert job._scheduler is store._scheduler and job._jobstore_alias == "default"


@pytest.mark.parametrize(
    "trigger",
    [
        IntervalTrigger(hours=2, start_date=BASE, timezone="UTC"),
        DateTrigger(run_date=at(3600), timezone="UTC"),
        CronTrigger(minute="*/5", timezone="Asia/Tokyo"),
    ],
    ids=["interval", "date", "cron"],
)
def test_each_trigger_kind_survives_the_store(store, trigger):
    add(store, "t", at(3600), trigger=trigger, misfire_grace_time=30)
    job = store.lookup_job("t")
    assert type(job.trigger) is type(trigger) and str(job.trigger) == str(trigger)
    assert job.trigger.get_next_fire_time(None, at(0)) == trigger.get_next_fire_time(None, at(0))
    assert job.misfire_grace_time == 30


def test_a_paused_job_is_stored_paused(store):
    add(store, "p", None)
    assert store.lookup_job("p").next_run_time is None
    assert ids(store.get_all_jobs()) == ["p"]


# --- get_due_jobs -----------------------------------------------------------------------


def test_due_jobs_are_those_due_by_now_earliest_first(store):
    add(store, "late", at(30))
    add(store, "b", at(20))
    add(store, "a", at(10))
    add(store, "a2", at(10))  # same time: by id
    add(store, "paused", None)
    assert ids(store.get_due_jobs(at(5))) == []
    store.get_next_run_time()
    # A job due exactly now is due.
    assert ids(store.get_due_jobs(at(20))) == ["a", "a2", "b"]


def test_paused_jobs_are_never_due(store):
    add(store, "p1", None)
    add(store, "p2", None)
    assert store.get_due_jobs(at(10**9)) == []


def test_due_jobs_compare_instants_whatever_the_zone_of_now(store):
    add(store, "a", at(0))
    add(store, "b", at(60))
    now = at(30).astimezone(TOKYO)
    assert ids(store.get_due_jobs(now)) == ["a"]


def test_the_repeated_hour_of_autumn_is_ordered_by_instant(store):
    """Berlin's clocks go back from 03:00 CEST to 02:00 CET: wall-clock order is not time order.

    Naive local times in the database (``django-naive``) cannot tell the two
    02:30 apart; the store must still order, report and hand out by instant.
    """
    utc = datetime(2030, 10, 27, tzinfo=UTC)
    times = {
        "a": utc.replace(hour=0, minute=30),  # 02:30 CEST
        "b": utc.replace(hour=0, minute=45),  # 02:45 CEST
        "c": utc.replace(hour=1, minute=15),  # 02:15 CET
        "d": utc.replace(hour=1, minute=30),  # 02:30 CET
    }
    for job_id, instant in times.items():
        add(store, job_id, instant.astimezone(BERLIN))
    assert ids(store.get_all_jobs()) == ["a", "b", "c", "d"]
    assert store.get_next_run_time().astimezone(UTC) == times["a"]
    assert ids(store.get_due_jobs(utc.replace(hour=0, minute=50))) == ["a", "b"]
    store.get_next_run_time()
    store.remove_job("a")
    store.remove_job("b")
    assert store.get_next_run_time().astimezone(UTC) == times["c"]
    assert ids(store.get_due_jobs(utc.replace(hour=1, minute=20))) == ["c"]


def test_an_empty_store_has_no_due_jobs(store):
    assert store.get_due_jobs(at(0)) == []


# --- get_next_run_time ------------------------------------------------------------------


def test_next_run_time_is_none_for_an_empty_store(store):
    assert store.get_next_run_time() is None


def test_next_run_time_is_none_when_every_job_is_paused(store):
    add(store, "p1", None)
    add(store, "p2", None)
    assert store.get_next_run_time() is None


def test_next_run_time_is_the_earliest_one(store):
    add(store, "b", at(20))
    add(store, "p", None)
    add(store, "a", at(10))
    add(store, "c", at(30))
    next_run_time = store.get_next_run_time()
    assert next_run_time == at(10) and next_run_time.tzinfo is not None
    store.remove_job("a")
    assert store.get_next_run_time() == at(20)
    change(store, "c", next_run_time=at(5))
    assert store.get_next_run_time() == at(5)


def test_next_run_time_keeps_fractions_of_a_second(store):
    add(store, "a", at(10.123456))
    add(store, "b", at(10.5))
    assert store.get_next_run_time() == at(10.123456)
    assert ids(store.get_due_jobs(at(10.2))) == ["a"]


def test_next_run_time_zone(store, traits):
    """The same instant from both; in the scheduler's zone (UTC) or the job's (Tokyo)."""
    add(store, "tokyo", at(10).astimezone(TOKYO))
    next_run_time = store.get_next_run_time()
    assert next_run_time == at(10)
    if traits.reports_in_scheduler_timezone:
        assert next_run_time.utcoffset() == timedelta(0)
    else:
        assert next_run_time.utcoffset() == timedelta(hours=9)


# --- get_all_jobs -----------------------------------------------------------------------


def test_all_jobs_by_next_run_time_then_id_paused_last(store):
    add(store, "p2", None)
    add(store, "b", at(20))
    add(store, "p1", None)
    add(store, "a", at(10))
    add(store, "a0", at(20))
    assert ids(store.get_all_jobs()) == ["a", "a0", "b", "p1", "p2"]


def test_all_jobs_of_an_empty_store(store):
    assert store.get_all_jobs() == []


# --- update_job -------------------------------------------------------------------------


def test_update_moves_a_job_to_its_new_next_run_time(store):
    add(store, "a", at(10))
    add(store, "b", at(20))
    add(store, "c", at(30))
    change(store, "c", next_run_time=at(5))
    assert ids(store.get_all_jobs()) == ["c", "a", "b"]
    assert store.lookup_job("c").next_run_time == at(5)
    assert ids(store.get_due_jobs(at(5))) == ["c"]


def test_update_to_no_next_run_time_pauses_and_back_resumes(store):
    add(store, "a", at(10))
    add(store, "b", at(20))
    change(store, "a", next_run_time=None)
    assert ids(store.get_all_jobs()) == ["b", "a"]
    assert store.get_next_run_time() == at(20)
    assert ids(store.get_due_jobs(at(100))) == ["b"]
    store.get_next_run_time()
    change(store, "a", next_run_time=at(15))
    assert ids(store.get_all_jobs()) == ["a", "b"]
    assert store.get_next_run_time() == at(15)


def test_update_changes_every_other_field(store):
    add(store, "u", at(10))
    new_trigger = CronTrigger(hour=4, timezone="Europe/Paris")
    change(
        store,
        "u",
        func=takes_anything,
        trigger=new_trigger,
        args=(1, "two"),
        kwargs={"three": 3},
        name="renamed",
        executor="other",
        misfire_grace_time=600,
        coalesce=False,
        max_instances=5,
    )
    job = store.lookup_job("u")
    assert view(job) == (
        "u",
        "tests.test_store_contract:takes_anything",
        str(new_trigger),
        (1, "two"),
        {"three": 3},
        "renamed",
        "other",
        600,
        False,
        5,
        at(10),
    )


def test_update_of_an_unknown_job_raises_job_lookup_error(store):
    add(store, "there", at(10))
    with pytest.raises(JobLookupError):
        store.update_job(new_job(store._scheduler, "ghost", next_run_time=at(0)))
    assert ids(store.get_all_jobs()) == ["there"]
    assert store.lookup_job("ghost") is None


def test_update_of_a_removed_job_raises_job_lookup_error(store):
    add(store, "gone", at(10))
    job = store.lookup_job("gone")
    store.remove_job("gone")
    job._modify(next_run_time=at(20))
    with pytest.raises(JobLookupError):
        store.update_job(job)
    assert store.lookup_job("gone") is None and store.get_all_jobs() == []


def test_update_of_a_one_shot_job_that_finished_meanwhile_raises_job_lookup_error(store, traits):
    """Looked up to be changed, then finished by a dispatch round: the change must not revive it.

    ``modify_job`` and ``pause_job`` look the job up, change it and call
    ``update_job``; a scheduler (here, or in another process) may run the
    job's last fire in between. Reviving it would run that fire again.
    """
    add(store, "once", at(0), trigger=DateTrigger(at(0), timezone="UTC"))
    job = store.lookup_job("once")
    assert dispatch_round(store, at(10)) == ["once"]
    job._modify(args=())
    with pytest.raises(JobLookupError):
        store.update_job(job)
    job._modify(next_run_time=None)  # pause_job's write
    with pytest.raises(JobLookupError):
        store.update_job(job)
    assert store.lookup_job("once") is None
    assert store.get_all_jobs() == []
    assert store.get_due_jobs(at(20)) == []
    assert store.get_next_run_time() is None
    if traits.keeps_finished_record:
        assert DjangoJob.objects.get(id="once").is_finished


def test_a_change_made_while_another_scheduler_finishes_the_job_does_not_revive_it():
    """The same race across two Django schedulers on one database, as two processes meet it.

    (Only for the Django store: memory stores share nothing.) The application's
    scheduler looks the job up to pause it; a dispatching scheduler runs its
    last fire meanwhile. The pause must fail as for any job that is gone.
    """
    app, dispatcher = _new_scheduler(DjangoJobStore()), _new_scheduler(DjangoJobStore())
    try:
        app_store = app._lookup_jobstore("default")
        add(app_store, "once", at(0), trigger=DateTrigger(at(0), timezone="UTC"))
        job = app_store.lookup_job("once")
        assert dispatch_round(dispatcher._lookup_jobstore("default"), at(10)) == ["once"]
        job._modify(next_run_time=None)
        with pytest.raises(JobLookupError):
            app_store.update_job(job)
        assert DjangoJob.objects.get(id="once").is_finished
        assert app_store.lookup_job("once") is None
    finally:
        app.shutdown(wait=True)
        dispatcher.shutdown(wait=True)


# --- remove_job and remove_all_jobs ---------------------------------------------------


def test_remove_job_removes_that_job_only(store):
    add(store, "a", at(10))
    add(store, "b", at(20))
    add(store, "p", None)
    store.remove_job("b")
    assert store.lookup_job("b") is None
    assert ids(store.get_all_jobs()) == ["a", "p"]
    store.remove_job("p")
    assert ids(store.get_all_jobs()) == ["a"]
    store.remove_job("a")
    assert store.get_all_jobs() == [] and store.get_next_run_time() is None


def test_remove_of_an_unknown_job_raises_job_lookup_error(store):
    add(store, "there", at(10))
    with pytest.raises(JobLookupError):
        store.remove_job("ghost")
    store.remove_job("there")
    with pytest.raises(JobLookupError):
        store.remove_job("there")


def test_a_removed_id_can_be_added_again(store):
    add(store, "r", at(10))
    store.remove_job("r")
    add(store, "r", at(50), func=jobs.record, args=("again",))
    job = store.lookup_job("r")
    assert (job.func_ref, job.args, job.next_run_time) == ("tests.jobs:record", ("again",), at(50))


def test_remove_all_jobs(store):
    add(store, "a", at(10))
    add(store, "b", at(20))
    add(store, "p", None)
    store.remove_all_jobs()
    assert store.get_all_jobs() == []
    assert store.lookup_job("a") is None
    assert store.get_next_run_time() is None
    assert store.get_due_jobs(at(100)) == []
    add(store, "a", at(30))  # the ids are free again
    assert ids(store.get_all_jobs()) == ["a"]


def test_remove_all_jobs_of_an_empty_store(store):
    store.remove_all_jobs()
    assert store.get_all_jobs() == []


# --- a dispatch round, as the scheduler's loop makes it -------------------------------


def test_a_dispatch_round_advances_recurring_jobs_and_removes_finished_ones(store):
    add(store, "every-minute", at(0))
    add(store, "once", at(5), trigger=DateTrigger(at(5), timezone="UTC"))
    add(store, "later", at(3600))
    add(store, "paused", None)
    assert dispatch_round(store, at(30)) == ["every-minute", "once"]
    assert ids(store.get_all_jobs()) == ["every-minute", "later", "paused"]
    assert store.lookup_job("every-minute").next_run_time == at(60)
    assert store.lookup_job("once") is None
    assert store.get_next_run_time() == at(60)
    assert dispatch_round(store, at(30)) == []  # nothing is handed out twice


def test_the_writes_of_a_dispatch_round_land_by_its_end(store, traits):
    add(store, "r", at(0))
    add(store, "once", at(0), trigger=DateTrigger(at(0), timezone="UTC"))
    due = store.get_due_jobs(at(10))
    assert ids(due) == ["once", "r"]
    recurring = next(job for job in due if job.id == "r")
    recurring._modify(next_run_time=at(60))
    store.update_job(recurring)
    store.remove_job("once")
    during = store.lookup_job("r").next_run_time
    if traits.defers_round_writes:
        assert during == at(0)
    else:
        assert during == at(60)
    assert store.get_next_run_time() == at(60)  # ends the round
    assert store.lookup_job("r").next_run_time == at(60)
    assert store.lookup_job("once") is None
    assert ids(store.get_all_jobs()) == ["r"]


def test_due_jobs_beyond_the_free_threads_wait_for_the_next_round(store, traits):
    for i in range(POOL_SIZE + 2):
        add(store, f"j{i}", at(i))
    first = dispatch_round(store, at(100))
    if traits.round_limited_by_free_threads:
        assert first == [f"j{i}" for i in range(POOL_SIZE)]
        assert store.get_next_run_time() == at(POOL_SIZE)  # due already: the loop goes on
        assert dispatch_round(store, at(100)) == [f"j{i}" for i in range(POOL_SIZE, POOL_SIZE + 2)]
    else:
        assert first == [f"j{i}" for i in range(POOL_SIZE + 2)]
    # Each got the fire after its two due ones (at i and i + 60 s), wherever it was handed out.
    assert {job.id: job.next_run_time for job in store.get_all_jobs()} == {
        f"j{i}": at(i + 120) for i in range(POOL_SIZE + 2)
    }


def test_a_job_whose_executor_the_scheduler_lacks(store, traits):
    add(store, "elsewhere", at(0), executor="gpu")
    add(store, "here", at(1))
    due = ids(store.get_due_jobs(at(10)))
    if traits.leaves_jobs_without_executor:
        assert due == ["here"]
    else:
        assert due == ["elsewhere", "here"]
    assert store.lookup_job("elsewhere").executor == "gpu"


def test_finished_one_shot_job(store, traits):
    """Gone as a job on both stores; the Django store keeps a record of it, which remove_job deletes."""
    add(store, "once", at(0), trigger=DateTrigger(at(0), timezone="UTC"))
    assert dispatch_round(store, at(10)) == ["once"]
    assert store.lookup_job("once") is None
    assert store.get_all_jobs() == [] and store.get_next_run_time() is None
    if traits.keeps_finished_record:
        assert DjangoJob.objects.get(id="once").is_finished
        store.remove_job("once")  # deletes the record (and its history)
        assert not DjangoJob.objects.filter(id="once").exists()
    else:
        with pytest.raises(JobLookupError):
            store.remove_job("once")
    with pytest.raises(JobLookupError):
        store.remove_job("once")


def test_a_finished_one_shot_jobs_id_can_be_added_again(store):
    add(store, "once", at(0), trigger=DateTrigger(at(0), timezone="UTC"))
    dispatch_round(store, at(10))
    add(store, "once", at(50), trigger=DateTrigger(at(50), timezone="UTC"))
    assert store.lookup_job("once").next_run_time == at(50)
    assert dispatch_round(store, at(60)) == ["once"]


# --- through the scheduler's API --------------------------------------------------------


def test_scheduler_api_on_the_store(scheduler, store):
    """add, modify, reschedule, pause, resume, remove: what the scheduler asks of a store."""
    scheduler.add_job(jobs.record, "interval", minutes=5, start_date=BASE, id="i", args=["x"])
    scheduler.add_job(jobs.noop, "date", run_date=at(60), id="d")
    assert [job.id for job in scheduler.get_jobs()] == ["i", "d"]  # at BASE, then at(60)
    scheduler.modify_job("i", args=["y"], max_instances=2)
    assert store.lookup_job("i").args == ["y"] and store.lookup_job("i").max_instances == 2
    scheduler.pause_job("i")
    assert ids(store.get_all_jobs()) == ["d", "i"]
    assert store.lookup_job("i").next_run_time is None
    scheduler.resume_job("i")
    assert store.lookup_job("i").next_run_time == BASE
    scheduler.reschedule_job("i", trigger="cron", hour=6, start_date=BASE, timezone="UTC")
    assert store.lookup_job("i").next_run_time == at(6 * 3600)
    scheduler.remove_job("d")
    assert ids(store.get_all_jobs()) == ["i"]
    with pytest.raises(JobLookupError):
        scheduler.modify_job("d", args=[])
    with pytest.raises(ConflictingIdError):
        scheduler.add_job(jobs.noop, "date", run_date=at(60), id="i")


def test_replace_existing_with_a_new_definition_replaces(scheduler, store):
    scheduler.add_job(jobs.record, "interval", minutes=5, start_date=BASE, id="r", args=["old"])
    scheduler.add_job(
        jobs.record,
        "interval",
        hours=1,
        start_date=BASE,
        id="r",
        args=["new"],
        replace_existing=True,
    )
    job = store.lookup_job("r")
    assert job.args == ("new",) and job.trigger.interval == timedelta(hours=1)
    assert job.next_run_time == BASE
    assert ids(store.get_all_jobs()) == ["r"]


def test_replace_existing_with_the_same_definition(scheduler, store, traits):
    """Re-added unchanged at every start, with a next run time of its own making."""
    scheduler.add_job(jobs.noop, "interval", minutes=5, id="same", next_run_time=at(0))
    scheduler.add_job(
        jobs.noop, "interval", minutes=5, id="same", next_run_time=at(300), replace_existing=True
    )
    kept = store.lookup_job("same").next_run_time
    if traits.keeps_schedule_on_replace:
        assert kept == at(0)
    else:
        assert kept == at(300)


# --- what only some stores refuse or keep -----------------------------------------------


@pytest.mark.parametrize(
    "job_id",
    ["x" * 256, "nul\x00inside", "lone \udc80 surrogate"],
    ids=["too-long", "nul", "surrogate"],
)
def test_ids_that_a_database_cannot_store(store, traits, job_id):
    """(An empty id never reaches a store: APScheduler's ``Job`` makes one up instead.)"""
    if traits.validates_ids:
        with pytest.raises(InvalidJobIdError):
            add(store, job_id, at(0), name="named")
        assert store.get_all_jobs() == []
    else:
        add(store, job_id, at(0), name="named")
        assert store.lookup_job(job_id).id == job_id


def test_longest_id_is_stored(store):
    job_id = "é" * 255
    add(store, job_id, at(0))
    assert ids(store.get_all_jobs()) == [job_id]


@pytest.mark.parametrize("unpicklable", ["function", "argument"])
def test_jobs_that_cannot_be_pickled(store, traits, unpicklable):
    if unpicklable == "function":
        options: dict[str, Any] = {"func": lambda: None}
    else:
        options = {"func": takes_anything, "args": (threading.Lock(),)}
    if traits.serializes_jobs:
        with pytest.raises(UnpicklableJobError, match="'local'"):
            add(store, "local", at(0), **options)
        assert store.get_all_jobs() == []
    else:
        add(store, "local", at(0), **options)
        assert ids(store.get_all_jobs()) == ["local"]


@pytest.mark.django_db(transaction=True)  # a store's shutdown closes its connection
def test_jobs_outlive_the_store_object(kind, store, traits):
    add(store, "kept", at(10))
    other = _new_scheduler(_new_store(kind))  # another process, on the same database
    try:
        seen_by_other = ids(other._lookup_jobstore("default").get_all_jobs())
    finally:
        other.shutdown(wait=True)
    store._scheduler.shutdown(wait=True)
    again = _new_scheduler(_new_store(kind) if traits.persistent else store)
    try:
        after_shutdown = ids(again._lookup_jobstore("default").get_all_jobs())
    finally:
        again.shutdown(wait=True)
    if traits.persistent:
        assert seen_by_other == ["kept"] and after_shutdown == ["kept"]
    else:
        assert seen_by_other == [] and after_shutdown == []
