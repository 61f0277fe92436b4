"""Time zones tested, not assumed (issue 9, defects 1 and 2, and "Also").

Jobs stored in ``DjangoJobStore`` must fire exactly the instants that
APScheduler's ``MemoryJobStore`` fires for the same jobs, across DST changes,
with ``USE_TZ`` on and off: with it off, the database holds naive local times,
which name two instants in the hour clocks are set back.

The stores are driven with a fake clock by :func:`drive`, which does what
APScheduler's ``_process_jobs`` does with a store (due jobs, their run times,
the next fire time written back, the time to wake up at), without executors
or real waiting.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

import pytest
from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from django.test.utils import override_settings
from django.utils import timezone as dj_timezone

from django_apscheduler.jobstores import DjangoJobStore
from django_apscheduler.models import DjangoJob
from tests import jobs
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

UTC = timezone.utc
ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]
#: A local date of each zone's spring-forward and fall-back in 2025.
CHANGES = {
    "Europe/Berlin": {"spring": (2025, 3, 30), "autumn": (2025, 10, 26)},
    "America/New_York": {"spring": (2025, 3, 9), "autumn": (2025, 11, 2)},
    # Southern hemisphere, and a 30-minute shift: 02:00 -> 01:30 in April, 02:00 -> 02:30 in October.
    "Australia/Lord_Howe": {"spring": (2025, 10, 5), "autumn": (2025, 4, 6)},
}
#: The zone a second set of jobs is scheduled in (a per-job ``timezone``).
OTHER = {"Europe/Berlin": "America/New_York", "America/New_York": "Australia/Lord_Howe"}
OTHER["Australia/Lord_Howe"] = "Europe/Berlin"
WINDOW = timedelta(hours=3)


def transition(zone: str, season: str) -> datetime:
    """The instant (UTC) of ``zone``'s offset change on its ``season`` date."""
    tz = ZoneInfo(zone)
    day = datetime(*CHANGES[zone][season], tzinfo=UTC) - timedelta(days=1)
    step = timedelta(minutes=15)
    at = day
    while (at + step).astimezone(tz).utcoffset() == at.astimezone(tz).utcoffset():
        at += step
        assert at < day + timedelta(days=3), f"no offset change found for {zone} {season}"
    return at + step


def store_on(zone: str, store: Any) -> tuple[BackgroundScheduler, Any]:
    """``store`` started on a scheduler (never started) whose time zone is ``zone``."""
    scheduler = BackgroundScheduler(timezone=zone)
    store.start(scheduler, "default")
    return scheduler, store


def make_jobs(scheduler: BackgroundScheduler, zone: str, start: datetime) -> list[Job]:
    """Cron, interval and date jobs in ``zone``, scheduled as if added at ``start``."""
    tz = ZoneInfo(zone)
    local = start.astimezone(tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    triggers = {
        "cron-quarter": CronTrigger(minute="*/15", timezone=tz),
        "cron-0215": CronTrigger(hour=2, minute=15, timezone=tz),
        "cron-0145": CronTrigger(hour=1, minute=45, timezone=tz),
        "interval-25m": IntervalTrigger(minutes=25, start_date=start, timezone=tz),
        "interval-1h-local": IntervalTrigger(hours=1, start_date=midnight, timezone=tz),
        "date-before": DateTrigger(start + WINDOW - timedelta(minutes=10), timezone=tz),
        "date-after": DateTrigger(start + WINDOW + timedelta(minutes=10), timezone=tz),
        # A wall time (naive, in the job's zone): ambiguous or skipped on change nights.
        "date-wall-0215": DateTrigger(
            midnight.replace(day=(start + WINDOW).astimezone(tz).day, hour=2, minute=15),
            timezone=tz,
        ),
    }
    made = []
    for name, trigger in triggers.items():
        job = Job(
            scheduler,
            id=f"{zone}:{name}",
            func=jobs.noop,
            trigger=trigger,
            executor="default",
            args=(),
            kwargs={},
            name=name,
            misfire_grace_time=None,
            coalesce=False,
            max_instances=1,
            next_run_time=trigger.get_next_fire_time(None, start),
        )
        job._jobstore_alias = "default"
        made.append(job)
    return made


def drive(store: Any, start: datetime, end: datetime) -> tuple[list[tuple[str, datetime]], int]:
    """Dispatch ``store``'s jobs from ``start`` to ``end`` on a fake clock, as APScheduler does.

    Returns the fires (job id, instant in UTC) in order, and the number of
    dispatch rounds. Each round starts at the time the store said to wake up
    at; a store that keeps saying "now" without handing out a job that fires
    is a busy loop, stopped (and failed) after far more rounds than needed.
    """
    fires: list[tuple[str, datetime]] = []
    rounds = 0
    now = start
    while True:
        rounds += 1
        assert rounds < 500, f"dispatch loops at {now.astimezone(UTC)}: {fires[-5:]}"
        for job in store.get_due_jobs(now):
            run_times = job._get_run_times(now)
            if run_times and job.coalesce:
                run_times = run_times[-1:]
            fires.extend((job.id, run_time.astimezone(UTC)) for run_time in run_times)
            if not run_times:
                continue
            following = job.trigger.get_next_fire_time(run_times[-1], now)
            if following is None:
                store.remove_job(job.id)
            else:
                job._modify(next_run_time=following)
                store.update_job(job)
        wake = store.get_next_run_time()
        if wake is None or wake.astimezone(UTC) > end:
            return fires, rounds
        now = max(now.astimezone(UTC), wake.astimezone(UTC))


def run_both(
    settings_zone: str, start: datetime, end: datetime, build: Callable[..., list[Job]]
) -> tuple[tuple[list, int], tuple[list, int], DjangoJobStore, MemoryJobStore]:
    """Drive the same jobs through a MemoryJobStore and a DjangoJobStore."""
    scheduler, memory = store_on(settings_zone, MemoryJobStore())
    for job in build(scheduler):
        memory.add_job(job)
    expected = drive(memory, start, end)

    scheduler, store = store_on(settings_zone, DjangoJobStore())
    for job in build(scheduler):
        store.add_job(job)
    actual = drive(store, start, end)
    return expected, actual, store, memory


CASES = [
    pytest.param(zone, season, use_tz, id=f"{zone}-{season}-{'tz' if use_tz else 'naive'}")
    for zone in ZONES
    for season in ("spring", "autumn")
    for use_tz in (True, False)
]


@pytest.mark.parametrize("zone,season,use_tz", CASES)
def test_jobs_fire_the_instants_memory_store_fires_across_dst(zone, season, use_tz):
    """Cron, interval and date jobs, in TIME_ZONE's zone and in a per-job zone, across a change."""
    change = transition(zone, season)
    start, end = change - WINDOW, change + WINDOW
    other = OTHER[zone]

    def build(scheduler):
        return make_jobs(scheduler, zone, start) + make_jobs(scheduler, other, start)

    # The store's housekeeping runs on the real clock: to it the window's jobs
    # are years overdue, and marking them raced the fake clock's rounds (one
    # round more, seen in CI). No allowance runs out here.
    with override_settings(USE_TZ=use_tz, TIME_ZONE=zone, APSCHEDULER_OVERDUE_AFTER=10**12):
        (expected, expected_rounds), (actual, rounds), store, memory = run_both(
            zone, start, end, build
        )
        try:
            assert len(expected) > 40  # the window holds the fires this test is about
            assert sorted(actual) == sorted(expected)
            repeated = {fire: n for fire, n in Counter(actual).items() if n > 1}
            assert not repeated, f"fired more than once: {repeated}"
            assert rounds == expected_rounds
            # Every job comes back from the database as the memory store has it.
            left = {job.id: job.next_run_time for job in memory.get_all_jobs()}
            assert {job.id: job.next_run_time for job in store.get_all_jobs()} == left
            for job_id, next_run_time in left.items():
                assert store.lookup_job(job_id).next_run_time == next_run_time
        finally:
            store.shutdown()


@pytest.fixture
def berlin_naive():
    with override_settings(USE_TZ=False, TIME_ZONE="Europe/Berlin"):
        scheduler, store = store_on("Europe/Berlin", DjangoJobStore())
        yield scheduler, store
        store.shutdown()


def _date_job(scheduler, job_id: str, run_date: datetime) -> Job:
    trigger = DateTrigger(run_date)
    job = Job(
        scheduler,
        id=job_id,
        func=jobs.noop,
        trigger=trigger,
        executor="default",
        args=(),
        kwargs={},
        name=job_id,
        misfire_grace_time=None,
        coalesce=True,
        max_instances=1,
        next_run_time=trigger.get_next_fire_time(None, run_date),
    )
    job._jobstore_alias = "default"
    return job


def test_second_pass_of_the_repeated_hour_is_not_due_an_hour_early(berlin_naive):
    """Defect 2: USE_TZ=False, a job due at the second 02:15 of 2025-10-26, clock at 02:20 CEST."""
    scheduler, store = berlin_naive
    due = datetime(2025, 10, 26, 1, 15, tzinfo=UTC)  # 02:15 CET, fold=1
    now = datetime(2025, 10, 26, 0, 20, tzinfo=UTC)  # 02:20 CEST
    store.add_job(_date_job(scheduler, "second-pass", due))
    assert DjangoJob.objects.get().next_run_time == datetime(2025, 10, 26, 2, 15)  # local, naive

    # (Compared in UTC: Python's == across zones is False for any time with fold=1.)
    assert store.get_next_run_time().astimezone(UTC) == due
    assert store.get_due_jobs(now) == []
    fires, rounds = drive(store, now, due + timedelta(hours=1))
    assert fires == [("second-pass", due)]
    assert rounds == 2  # at 00:20 (nothing due) and at 01:15 UTC: no loop from 00:15 UTC on


def test_first_pass_job_is_due_during_the_second_pass(berlin_naive):
    """USE_TZ=False: a job of 02:50 CEST still unrun at 02:10 CET is due, though 02:50 > 02:10."""
    scheduler, store = berlin_naive
    due = datetime(2025, 10, 26, 0, 50, tzinfo=UTC)  # 02:50 CEST
    later = datetime(2025, 10, 26, 1, 30, tzinfo=UTC)  # 02:30 CET
    store.add_job(_date_job(scheduler, "first-pass", due))
    store.add_job(_date_job(scheduler, "second-pass", later))
    now = datetime(2025, 10, 26, 1, 10, tzinfo=UTC)  # 02:10 CET
    assert store.get_next_run_time().astimezone(UTC) == due
    assert [job.id for job in store.get_due_jobs(now)] == ["first-pass"]
    store.get_next_run_time()  # ends the round; nothing was fired
    fires, _ = drive(store, now, later + timedelta(hours=1))
    assert fires == [("first-pass", due), ("second-pass", later)]


def test_poll_without_use_tz_wakes_the_scheduler(berlin_naive, monkeypatch):
    """Defect 1: the poll compared a naive database time with an aware one, and raised."""
    scheduler, store = berlin_naive
    store.add_job(_date_job(scheduler, "later", datetime(2030, 1, 1, tzinfo=UTC)))
    store.get_due_jobs(datetime(2029, 1, 1, tzinfo=UTC))
    assert store.get_next_run_time() == datetime(2030, 1, 1, tzinfo=UTC)
    # Only this thread's wake-ups count (on PostgreSQL, NOTIFY wakes from housekeeping too).
    woken = []
    monkeypatch.setattr(store, "wake", lambda: woken.append(threading.get_ident()))

    # Another process adds a job due sooner than the scheduler's planned wake-up.
    _, writer = store_on("UTC", DjangoJobStore())
    writer.add_job(_date_job(writer._scheduler, "sooner", datetime(2029, 6, 1, tzinfo=UTC)))
    writer.shutdown()
    store._coordinator._poll()
    assert threading.get_ident() in woken


def test_burst_sees_what_is_due_without_use_tz():
    """The runner's --burst check compares the store's instants with its own start time."""
    from django_apscheduler.runner import Runner

    with override_settings(USE_TZ=False, TIME_ZONE="Europe/Berlin"):
        runner = Runner()
        runner.start()
        try:
            runner.scheduler.add_job(
                jobs.noop, "date", run_date=datetime.now(UTC) + timedelta(hours=1), id="later"
            )
            wait_until(lambda: runner.store._coordinator.instance_id)
            now = dj_timezone.now()  # naive local time, as the runner takes it
            assert runner.due_left(now) is False
            assert runner.due_left(now + timedelta(hours=2)) is True
        finally:
            runner.stop(timeout=5)
