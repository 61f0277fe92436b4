"""``django_apscheduler.client``: changing stored jobs from application code, on the real database.

The client writes through a ``DjangoJobStore`` on a scheduler that is started
paused: it must never run a job, nor register as a scheduler instance. The
last test shows a job added by the client being run by a scheduler in another
process.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from apscheduler.job import Job
from apscheduler.jobstores.base import JobLookupError
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from django.test.utils import override_settings
from django.utils import timezone

from django_apscheduler import client, runner
from django_apscheduler.exceptions import InvalidJobIdError, UnpicklableJobError
from django_apscheduler.jobstores import DjangoJobStore, restore_job
from django_apscheduler.models import DjangoJob, DjangoJobExecution, DjangoSchedulerInstance
from tests import jobs
from tests.helpers import wait_until
from tests.scheduler_process import log_run, read_lines
from tests.test_multiprocess import SchedulerProcesses
from tests.test_run_now import store_broken_job

pytestmark = pytest.mark.django_db(transaction=True)

UTC = dt_timezone.utc

FAR = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def stored(job_id: str):
    """The job as the database holds it (not as the client's scheduler returned it)."""
    row = DjangoJob.objects.get(id=job_id)
    return row, restore_job(row.id, row.job_state, row.job_signature)


def add_hourly(job_id: str = "hourly", func=jobs.record, **kwargs):
    return client.add_job(
        func, "interval", hours=1, id=job_id, next_run_time=FAR, args=[job_id], **kwargs
    )


def test_add_job_stores_the_job_with_the_app_job_defaults():
    """add_job writes a DjangoJob row; unset options come from the app's defaults (30 s grace)."""
    job = add_hourly()
    assert job.id == "hourly"
    row, restored = stored("hourly")
    assert row.next_run_time == FAR
    assert restored.func_ref == "tests.jobs:record"
    assert restored.args == ("hourly",)
    assert isinstance(restored.trigger, IntervalTrigger)
    assert restored.trigger.interval == timedelta(hours=1)
    assert (restored.misfire_grace_time, restored.coalesce, restored.max_instances) == (30, True, 1)


def test_add_job_honours_overridden_job_defaults():
    """APSCHEDULER_JOB_DEFAULTS read when the job is added (conf: settings are read when needed)."""
    client.get_jobs()  # the client's scheduler exists before the setting changes
    with override_settings(APSCHEDULER_JOB_DEFAULTS={"misfire_grace_time": 99}):
        add_hourly("custom")
    assert stored("custom")[1].misfire_grace_time == 99


def test_get_job_and_get_jobs():
    """get_job returns a stored job or None; get_jobs lists every stored job."""
    add_hourly("a")
    add_hourly("b")
    client.pause_job("b")
    assert client.get_job("a").func_ref == "tests.jobs:record"
    assert client.get_job("missing") is None
    listed = client.get_jobs()
    assert [j.id for j in listed] == ["a", "b"]  # paused ones last
    assert listed[1].next_run_time is None


def test_modify_job_changes_the_stored_arguments():
    """modify_job writes new args and options to the database; the next run time stays."""
    add_hourly()
    client.modify_job("hourly", args=["changed"], max_instances=3)
    row, restored = stored("hourly")
    assert list(restored.args) == ["changed"]
    assert restored.max_instances == 3
    assert row.next_run_time == FAR


def test_reschedule_job_gives_a_new_trigger_and_next_run_time():
    """reschedule_job stores the new trigger and the next run time it gives."""
    add_hourly()
    client.reschedule_job("hourly", "cron", hour=3, minute=0, timezone="UTC")
    row, restored = stored("hourly")
    assert isinstance(restored.trigger, CronTrigger)
    nxt = row.next_run_time.astimezone(UTC)
    assert (nxt.hour, nxt.minute) == (3, 0)
    assert timezone.now() < nxt <= timezone.now() + timedelta(days=1)


def test_pause_and_resume_job():
    """pause clears the stored next run time; resume sets it from the trigger."""
    add_hourly()
    assert client.pause_job("hourly").next_run_time is None
    assert DjangoJob.objects.get(id="hourly").next_run_time is None
    resumed = client.resume_job("hourly")
    nxt = DjangoJob.objects.get(id="hourly").next_run_time
    assert resumed.next_run_time == nxt
    assert timezone.now() < nxt <= timezone.now() + timedelta(hours=1, seconds=5)


def test_remove_job_deletes_it_and_its_log():
    """remove_job deletes the row and its executions."""
    add_hourly()
    DjangoJobExecution.objects.create(
        job_id="hourly", status=DjangoJobExecution.SUCCESS, run_time=timezone.now()
    )
    client.remove_job("hourly")
    assert not DjangoJob.objects.exists()
    assert not DjangoJobExecution.objects.exists()


def test_remove_job_deletes_a_broken_job():
    """A row that cannot be restored (its function was renamed) can still be removed."""
    store_broken_job("broken")
    client.remove_job("broken")
    assert not DjangoJob.objects.filter(id="broken").exists()


@pytest.mark.parametrize(
    "call",
    [
        lambda: client.modify_job("nope", args=[1]),
        lambda: client.reschedule_job("nope", "interval", seconds=5),
        lambda: client.pause_job("nope"),
        lambda: client.resume_job("nope"),
        lambda: client.remove_job("nope"),
        lambda: client.run_job_now("nope"),
    ],
    ids=["modify", "reschedule", "pause", "resume", "remove", "run_job_now"],
)
def test_unknown_ids_raise_job_not_found_naming_the_id(call):
    """Every call on an unknown id raises JobNotFound (a JobLookupError) whose text names it."""
    add_hourly("other")
    with pytest.raises(client.JobNotFound) as caught:
        call()
    assert isinstance(caught.value, JobLookupError)
    assert caught.value.job_id == "nope"
    assert str(caught.value) == "No job with the id 'nope' is stored."
    assert list(DjangoJob.objects.values_list("id", flat=True)) == ["other"]


def test_run_job_now_on_a_paused_job_is_refused():
    """A paused job stays paused: run_job_now raises ValueError naming it, nothing changes."""
    add_hourly()
    client.pause_job("hourly")
    with pytest.raises(ValueError, match="'hourly' is paused"):
        client.run_job_now("hourly")
    assert DjangoJob.objects.get(id="hourly").next_run_time is None


def test_run_job_now_moves_the_next_run_time_to_now_and_keeps_the_trigger():
    """run_job_now: the stored next run time becomes now; the trigger is unchanged."""
    add_hourly()
    before = timezone.now()
    job = client.run_job_now("hourly")
    row, restored = stored("hourly")
    assert before - timedelta(seconds=1) <= row.next_run_time <= timezone.now()
    assert job.next_run_time == row.next_run_time
    assert isinstance(restored.trigger, IntervalTrigger)
    assert restored.trigger.interval == timedelta(hours=1)
    assert restored.args == ("hourly",)


def test_the_client_never_runs_jobs_nor_registers_an_instance():
    """Due jobs added through the client are not run in this process; no instance row appears."""
    client.add_job(jobs.record, "date", run_date=timezone.now(), id="due", args=["due"])
    add_hourly()
    client.run_job_now("hourly")
    time.sleep(2.5)
    assert jobs.calls == []
    assert set(DjangoJob.objects.values_list("id", flat=True)) == {"due", "hourly"}
    assert not DjangoJobExecution.objects.exists()
    assert not DjangoSchedulerInstance.objects.exists()


@pytest.mark.slow
def test_a_job_added_by_the_client_runs_in_a_scheduler_process(tmp_path):
    """A scheduler in another process picks up and runs a job the client adds for now."""
    processes = SchedulerProcesses(tmp_path)
    try:
        processes.start({"jobs": [], "until": time.time() + 30})
        wait_until(lambda: DjangoSchedulerInstance.objects.exists(), timeout=20)
        runs = tmp_path / "client-run.jsonl"
        client.add_job(
            log_run,
            "date",
            run_date=timezone.now(),
            args=[str(runs)],
            id="from-client",
            misfire_grace_time=60,
        )
        started = wait_until(lambda: read_lines(str(runs)), timeout=20)[0]
        assert started["pid"] != os.getpid()
        assert started["pid"] == processes.procs[0].pid
        assert DjangoSchedulerInstance.objects.get().pid == started["pid"]
        row = wait_until(
            lambda: DjangoJobExecution.objects.filter(
                job_id="from-client", status=DjangoJobExecution.SUCCESS
            ).first(),
            timeout=20,
        )
        assert row.instance.split(":")[1] == str(started["pid"])
    finally:
        processes.kill_all()
    assert not [p for p in processes.problems() if "Traceback" in p], processes.log()


# --- wake-ups, ids and arguments (issue 9, defect 14) ----------------------------------------


@pytest.fixture
def autostarted(monkeypatch):
    """A runner started in this process as autostart starts one, with a 30 s poll interval."""
    with override_settings(APSCHEDULER_POLL_INTERVAL=30):
        started = runner.Runner()
        started.start()
        monkeypatch.setattr(runner, "_autostarted", started)
        try:
            # Its first round is over: it now sleeps until woken (no job is stored).
            wait_until(lambda: started.store._coordinator.has_reported, timeout=20)
            yield started
        finally:
            started.stop(timeout=10)


def test_a_job_added_for_now_runs_at_once_in_the_autostarted_scheduler(autostarted):
    """client.add_job wakes the scheduler of this process: the job runs long before the poll.

    Before, the client's scheduler is paused, so APScheduler never called its
    wakeup(); on SQLite and MariaDB the job waited for the next poll (30 s here).
    PostgreSQL's NOTIFY woke it regardless.
    """
    client.add_job(jobs.record, "date", run_date=timezone.now(), id="now", args=["now"])
    wait_until(lambda: jobs.calls, timeout=15)  # well under the 30 s poll interval
    assert [tag for tag, _ in jobs.calls] == ["now"]


def test_run_job_now_and_resume_wake_the_autostarted_scheduler(autostarted):
    """Writes through modify_job (run_job_now, resume_job) wake it too."""
    client.add_job(jobs.record, "interval", hours=1, id="soon", args=["soon"], next_run_time=FAR)
    client.run_job_now("soon")
    wait_until(lambda: jobs.calls, timeout=15)
    assert [tag for tag, _ in jobs.calls] == ["soon"]


def _ids_stored() -> list[str]:
    return list(DjangoJob.objects.values_list("id", flat=True))


BAD_IDS = [
    pytest.param("x" * 256, "at most 255 characters", id="256-characters"),
    pytest.param("y" * 300, "at most 255 characters", id="300-characters"),
    pytest.param("nul\x00id", "NUL", id="nul"),
    pytest.param("lone\ud800surrogate", "surrogate", id="lone-surrogate"),
]


@pytest.mark.parametrize("job_id, problem", BAD_IDS)
def test_client_refuses_an_id_the_database_cannot_hold_naming_it(job_id, problem):
    """One InvalidJobIdError (a ValueError) naming the id, before anything is written.

    Before, SQLite stored a 300-character id, PostgreSQL raised an unnamed DataError.
    """
    with pytest.raises(InvalidJobIdError) as caught:
        client.add_job(jobs.noop, "interval", hours=1, id=job_id)
    assert isinstance(caught.value, ValueError)
    assert repr(job_id)[:40] in str(caught.value) and problem in str(caught.value)
    assert _ids_stored() == []


@pytest.mark.parametrize("job_id, problem", BAD_IDS)
def test_a_running_scheduler_refuses_a_bad_id_through_the_store(make_scheduler, job_id, problem):
    """scheduler.add_job (and so declared jobs) gets the same error from DjangoJobStore.add_job."""
    scheduler = make_scheduler()
    with pytest.raises(InvalidJobIdError, match=problem):
        scheduler.add_job(jobs.noop, "interval", hours=1, id=job_id)
    assert _ids_stored() == []


@pytest.mark.parametrize("job_id", [42, ""], ids=["not-a-string", "empty"])
def test_the_store_refuses_an_empty_or_non_string_id(make_scheduler, job_id):
    """An id set on the job after APScheduler checked it: refused by the store, named."""
    scheduler = make_scheduler(start=False)
    job = Job(scheduler, id="placeholder", func=jobs.noop, trigger=IntervalTrigger(hours=1),
              executor="default", args=(), kwargs={}, name="x", misfire_grace_time=1,
              coalesce=True, max_instances=1, next_run_time=FAR)  # fmt: skip
    job.id = job_id
    store = DjangoJobStore()
    store.start(scheduler, "default")
    with pytest.raises(InvalidJobIdError, match="is not valid"):
        store.add_job(job)
    assert _ids_stored() == []


def test_client_refuses_a_non_string_id_naming_it():
    """id=42: an InvalidJobIdError naming 42 (APScheduler's own TypeError named nothing)."""
    with pytest.raises(InvalidJobIdError, match="Job id 42 is not valid: ids are strings"):
        client.add_job(jobs.noop, "interval", hours=1, id=42)
    assert _ids_stored() == []


def test_an_id_of_255_characters_is_stored_on_every_database():
    """The limit itself is fine everywhere."""
    job_id = "é" * 255
    client.add_job(jobs.noop, "interval", hours=1, id=job_id, next_run_time=FAR)
    assert _ids_stored() == [job_id]
    assert client.get_job(job_id).id == job_id


@pytest.mark.parametrize(
    "options, part",
    [
        ({"args": [threading.Lock()]}, "its argument args[0] (<unlocked _thread.lock"),
        ({"kwargs": {"tag": threading.Lock()}}, "its argument kwargs['tag'] ("),
    ],
    ids=["args", "kwargs"],
)
def test_an_unpicklable_argument_is_refused_naming_the_job_and_argument(options, part):
    """UnpicklableJobError names the job and which argument fails, and nothing is written."""
    with pytest.raises(UnpicklableJobError) as caught:
        client.add_job(jobs.record, "interval", hours=1, id="bad-arg", **options)
    message = str(caught.value)
    assert message.startswith("Job 'bad-arg' cannot be stored: " + part), message
    assert "cannot pickle '_thread.lock' object" in message
    assert isinstance(caught.value, ValueError) and caught.value.job_id == "bad-arg"
    assert _ids_stored() == []


def test_modify_job_with_an_unpicklable_argument_names_the_job_and_keeps_the_row():
    """The same error on modify_job; the stored job is unchanged."""
    add_hourly()
    with pytest.raises(UnpicklableJobError, match=r"Job 'hourly' cannot be stored: .*args\[0\]"):
        client.modify_job("hourly", args=[threading.Lock()])
    assert stored("hourly")[1].args == ("hourly",)


def test_a_function_without_a_reference_is_refused_naming_the_job():
    """A lambda has no 'module:name' reference: the error names the job and says what to do."""
    with pytest.raises(UnpicklableJobError, match="Job 'anon' cannot be stored: its function"):
        client.add_job(lambda: None, "interval", hours=1, id="anon")
    assert _ids_stored() == []
