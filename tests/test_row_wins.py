"""Issue 9, defect 12: the row's columns and its pickled state disagree.

An operator edits the row with SQL: sets ``next_run_time`` to the past to
force a run, or copies the row under a new id. The store used to trust the
pickle, so the row stayed due while the job was not: the dispatch looped
(hundreds of rounds a second), and a copied job ran under the original's id.

The rule now: the row wins. Its id and ``next_run_time`` override the
pickle's, and the state is corrected when the job is written back.
"""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone

import pytest
from apscheduler.job import Job
from apscheduler.triggers.interval import IntervalTrigger
from django.db import connection
from django.test.utils import override_settings

from django_apscheduler import util
from django_apscheduler.jobstores import DjangoJobStore
from django_apscheduler.models import DjangoJob
from tests import jobs
from tests.helpers import wait_until
from tests.test_timezones import drive, store_on

pytestmark = pytest.mark.django_db(transaction=True)

UTC = timezone.utc
T0 = datetime(2030, 1, 1, 12, tzinfo=UTC)
TEN_MINUTES = timedelta(minutes=10)


def interval_job(scheduler, job_id: str, first: datetime) -> Job:
    job = Job(
        scheduler,
        id=job_id,
        func=jobs.noop,
        trigger=IntervalTrigger(minutes=10, start_date=first, timezone="UTC"),
        executor="default",
        args=(),
        kwargs={},
        name=job_id,
        misfire_grace_time=None,
        coalesce=True,
        max_instances=1,
        next_run_time=first,
    )
    job._jobstore_alias = "default"
    return job


def stored_state(job_id: str) -> dict:
    return pickle.loads(bytes(DjangoJob.objects.get(id=job_id).job_state))


def clone_row(source: str, new_id: str) -> None:
    """INSERT ... SELECT, as an operator copying a job would, then ``apscheduler sign`` it.

    The copy carries the original's signature, which does not verify under
    another id (tests/test_signing.py): the operator signs the copy on purpose.
    """
    table = connection.ops.quote_name(DjangoJob._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (id, next_run_time, job_state, job_signature) "
            f"SELECT %s, next_run_time, job_state, job_signature FROM {table} WHERE id = %s",
            [new_id, source],
        )
    assert [job_id for job_id, _ in DjangoJob.objects.filter(id=new_id).sign()] == [new_id]


@pytest.fixture(params=[True, False], ids=["tz", "naive"])
def store(request):
    with override_settings(USE_TZ=request.param, TIME_ZONE="Europe/Berlin"):
        _, jobstore = store_on("UTC", DjangoJobStore())
        yield jobstore
        jobstore.shutdown()


def test_next_run_time_forced_into_the_past_runs_the_job_once(store):
    """The column set to the past with SQL: the job fires then, once, and dispatch goes on."""
    store.add_job(interval_job(store._scheduler, "forced", T0 + TEN_MINUTES))
    forced = T0 - timedelta(seconds=30)
    # What an operator writes: the instant, or under USE_TZ=False the local time.
    DjangoJob.objects.filter(id="forced").update(
        next_run_time=util.get_django_internal_datetime(forced)
    )

    fires, rounds = drive(store, T0, T0 + timedelta(minutes=25))
    assert fires == [
        ("forced", forced),
        ("forced", forced + TEN_MINUTES),
        ("forced", forced + 2 * TEN_MINUTES),
    ]
    assert rounds == 3  # one per fire: the forced one did not loop
    # The state was corrected on write-back: column and pickle agree again.
    row = DjangoJob.objects.get(id="forced")
    state = stored_state("forced")
    assert state["next_run_time"].astimezone(UTC) == forced + 3 * TEN_MINUTES
    assert store.lookup_job("forced").next_run_time.astimezone(UTC) == forced + 3 * TEN_MINUTES
    assert row.next_run_time is not None


def test_row_copied_under_a_new_id_is_a_job_of_its_own(store):
    """INSERT ... SELECT under another id: each row fires on its own schedule, once per fire."""
    store.add_job(interval_job(store._scheduler, "original", T0))
    clone_row("original", "copy")
    assert stored_state("copy")["id"] == "original"  # what the copy holds before dispatch

    assert sorted(job.id for job in store.get_all_jobs()) == ["copy", "original"]
    assert store.lookup_job("copy").id == "copy"
    fires, rounds = drive(store, T0, T0 + timedelta(minutes=25))
    expected = [(job_id, T0 + n * TEN_MINUTES) for n in range(3) for job_id in ("copy", "original")]
    assert sorted(fires) == sorted(expected)
    assert rounds == 3
    assert stored_state("copy")["id"] == "copy"
    assert stored_state("original")["id"] == "original"


def test_forced_and_copied_jobs_with_a_running_scheduler(make_scheduler):
    """The same with a real scheduler: the forced run happens once, the copy runs too, no loop."""
    rounds = []

    class CountingStore(DjangoJobStore):
        def get_due_jobs(self, now):
            rounds.append(now)
            return super().get_due_jobs(now)

    scheduler = make_scheduler(jobstores={"default": CountingStore()})
    in_an_hour = datetime.now(UTC) + timedelta(hours=1)
    scheduler.add_job(
        jobs.record,
        "interval",
        minutes=10,
        start_date=in_an_hour,
        args=["forced"],
        id="forced",
        misfire_grace_time=600,
    )
    scheduler.add_job(
        jobs.record,
        "date",
        run_date=in_an_hour,
        args=["copied"],
        id="original",
        misfire_grace_time=600,
    )
    wait_until(lambda: rounds)  # the scheduler went through its first round
    before = len(rounds)

    DjangoJob.objects.filter(id="forced").update(next_run_time=datetime.now(UTC))
    clone_row("original", "copy")
    DjangoJob.objects.filter(id="copy").update(next_run_time=datetime.now(UTC))
    scheduler.wakeup()  # as the poll or a notification would

    wait_until(lambda: len(jobs.calls) >= 2, timeout=10)

    def written_back() -> bool:
        forced = DjangoJob.objects.get(id="forced")
        copy = DjangoJob.objects.get(id="copy")
        return (
            forced.acquired_by is None
            and stored_state("forced")["next_run_time"] > datetime.now(UTC)
            and copy.acquired_by is None
            and not copy.job_state  # a date job's record after its only run
        )

    wait_until(written_back, timeout=10)
    assert sorted(tag for tag, _ in jobs.calls) == ["copied", "forced"]
    # The original (still due in an hour) and its copy are separate jobs.
    assert DjangoJob.objects.get(id="original").next_run_time is not None
    assert scheduler.get_job("original") is not None
    assert len(rounds) - before < 10, f"{len(rounds) - before} dispatch rounds"


def test_a_column_without_fractions_of_seconds_agrees_with_the_state(store, caplog):
    """A column keeping whole seconds (old MySQL tables) is no disagreement, and no loop.

    The job is due when the row says (up to a second before its state's time),
    so that a claimed job is always one APScheduler runs.
    """
    precise = T0 + timedelta(seconds=5, microseconds=123456)
    store.add_job(interval_job(store._scheduler, "precise", precise))
    whole = precise.replace(microsecond=0)
    DjangoJob.objects.filter(id="precise").update(
        next_run_time=util.get_django_internal_datetime(whole)
    )
    with caplog.at_level("WARNING", logger="django_apscheduler"):
        assert store.lookup_job("precise").next_run_time.astimezone(UTC) == whole
        fires, rounds = drive(store, whole, whole + timedelta(minutes=5))
    assert fires == [("precise", whole)]
    assert rounds == 1
    assert not [r for r in caplog.records if "differs" in r.getMessage()]


def test_next_run_time_nulled_by_sql_pauses_the_job_logged_once(store, caplog):
    """The column set to NULL: the job is paused, as the row says; the warning comes once."""
    store.add_job(interval_job(store._scheduler, "nulled", T0))
    DjangoJob.objects.filter(id="nulled").update(next_run_time=None)
    with caplog.at_level("WARNING", logger="django_apscheduler"):
        for _ in range(3):
            assert [job.next_run_time for job in store.get_all_jobs()] == [None]
            assert store.lookup_job("nulled").next_run_time is None
        assert store.get_due_jobs(T0 + timedelta(days=1)) == []
        assert store.get_next_run_time() is None
    warnings = [r for r in caplog.records if "differs" in r.getMessage()]
    assert len(warnings) == 1 and "'nulled'" in warnings[0].getMessage()
