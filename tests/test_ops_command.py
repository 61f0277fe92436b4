"""``manage.py apscheduler``: every action run as a real process against the test database.

The jobs and rows are written by the test process and committed
(``transaction=True``), then ``python -m django apscheduler ...`` runs in a
subprocess on the same database, as an operator or a container probe would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from django_apscheduler.models import DjangoJob, DjangoJobExecution, DjangoSchedulerInstance
from tests import jobs
from tests.test_run_now import store_broken_job, store_finished_job, store_job

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


def apscheduler(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m django apscheduler *args`` on the test database."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["DJANGO_APSCHEDULER_TEST_DB_NAME"] = connection.settings_dict["NAME"]
    env.pop("DJANGO_APSCHEDULER_TEST_SETTINGS", None)
    return subprocess.run(
        [sys.executable, "-m", "django", "apscheduler", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def log_run(job_id: str, status: str, run_time: datetime) -> DjangoJobExecution:
    return DjangoJobExecution.objects.create(job_id=job_id, status=status, run_time=run_time)


def instance(heartbeat: datetime) -> DjangoSchedulerInstance:
    return DjangoSchedulerInstance.objects.create(
        id="probe-host:4242:abc", host="probe-host", pid=4242, started=heartbeat,
        last_heartbeat=heartbeat,
    )  # fmt: skip


# --- list ---------------------------------------------------------------------------


def _store_all_states() -> None:
    store_job("sched", jobs.noop)
    store_job("paused", jobs.noop, next_run_time=None)
    store_finished_job("done")
    store_broken_job("broken")
    now = timezone.now()
    log_run("sched", DjangoJobExecution.ERROR, now - timedelta(hours=2))
    log_run("sched", DjangoJobExecution.SUCCESS, now - timedelta(hours=1))
    log_run("done", DjangoJobExecution.SUCCESS, now - timedelta(hours=3))


def test_list_json_gives_every_job_with_state_and_last_status():
    """list --format json: ids, the four states, the trigger and the newest run's status."""
    _store_all_states()
    result = apscheduler("list", "--format", "json")
    assert result.returncode == 0, result.stderr
    listed = {job["id"]: job for job in json.loads(result.stdout)}

    assert set(listed) == {"sched", "paused", "done", "broken"}
    assert listed["sched"]["state"] == "scheduled"
    assert listed["sched"]["func"] == "tests.jobs:noop"
    assert "interval" in listed["sched"]["trigger"]
    assert datetime.fromisoformat(listed["sched"]["next_run_time"]).year == 2030
    assert listed["sched"]["last_status"] == DjangoJobExecution.SUCCESS  # the newest, not the first
    assert listed["paused"]["state"] == "paused"
    assert listed["paused"]["next_run_time"] is None
    assert listed["paused"]["last_status"] is None
    assert listed["done"]["state"] == "finished"
    assert listed["done"]["last_status"] == DjangoJobExecution.SUCCESS
    assert listed["broken"]["state"].startswith("broken (")
    assert "no_such_function" in listed["broken"]["state"]


def test_list_table_has_a_header_and_one_line_per_job():
    """The default table: a header, then each job's id, state and last status on its line."""
    _store_all_states()
    result = apscheduler("list")
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.strip().splitlines()
    assert header.split() == ["ID", "TRIGGER", "NEXT", "RUN", "STATE", "LAST", "STATUS"]
    by_id = {line.split()[0]: line for line in lines}
    assert set(by_id) == {"sched", "paused", "done", "broken"}
    assert "scheduled" in by_id["sched"] and by_id["sched"].endswith(DjangoJobExecution.SUCCESS)
    assert "paused" in by_id["paused"] and by_id["paused"].endswith("-")
    assert "finished" in by_id["done"]
    assert "broken" in by_id["broken"]


def test_list_of_no_jobs_is_an_empty_json_list():
    """An empty database lists nothing, successfully."""
    result = apscheduler("list", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


# --- run ----------------------------------------------------------------------------


def test_run_reports_success_and_logs_the_run():
    """run JOB_ID: exit 0, "succeeded" on stdout, an Executed row in the database."""
    store_job("ok", jobs.noop)
    result = apscheduler("run", "ok", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert "ok: succeeded" in result.stdout
    assert list(
        DjangoJobExecution.objects.filter(job_id="ok").values_list("status", flat=True)
    ) == [DjangoJobExecution.SUCCESS]


def test_run_of_a_failing_job_exits_1_with_the_exception():
    """A job that raises: exit 1, its exception named on stderr, an Error! row logged."""
    store_job("ok", jobs.noop)
    store_job("bad", jobs.fail, kwargs={"message": "it broke"})
    result = apscheduler("run", "ok", "bad", "--timeout", "30")
    assert result.returncode == 1
    assert "ok: succeeded" in result.stdout
    assert "bad: failed (ValueError: it broke)" in result.stderr
    assert "Not every job ran successfully" in result.stderr
    row = DjangoJobExecution.objects.get(job_id="bad")
    assert row.status == DjangoJobExecution.ERROR and row.exception == "it broke"


def test_run_of_an_unknown_id_exits_1_naming_it():
    """An id that is not stored: exit 1 and the id on stderr; nothing is logged."""
    result = apscheduler("run", "ghost-job")
    assert result.returncode == 1
    assert "ghost-job: no job with this id is stored" in result.stderr
    assert not DjangoJobExecution.objects.exists()


def test_run_of_a_finished_or_broken_job_exits_1_saying_why():
    """A finished one-shot record and an unrestorable row are not run: exit 1, each explained."""
    store_finished_job("done")
    store_broken_job("broken")
    result = apscheduler("run", "done", "broken")
    assert result.returncode == 1
    assert "done: finished" in result.stderr
    assert "broken: broken (" in result.stderr and "no_such_function" in result.stderr


# --- pause, resume, remove ----------------------------------------------------------------


def test_pause_then_resume_change_the_stored_next_run_time():
    """pause clears next_run_time in the database; resume sets it from the trigger again."""
    store_job("job", jobs.noop)
    paused = apscheduler("pause", "job")
    assert paused.returncode == 0, paused.stderr
    assert "job: paused." in paused.stdout
    assert DjangoJob.objects.get(id="job").next_run_time is None

    resumed = apscheduler("resume", "job")
    assert resumed.returncode == 0, resumed.stderr
    assert "job: resumed." in resumed.stdout
    next_run = DjangoJob.objects.get(id="job").next_run_time
    assert next_run is not None
    assert timezone.now() < next_run <= timezone.now() + timedelta(hours=1, minutes=1)


def test_remove_deletes_the_job_and_its_log():
    """remove deletes the row and its executions; other jobs stay."""
    store_job("gone", jobs.noop)
    store_job("kept", jobs.noop)
    log_run("gone", DjangoJobExecution.SUCCESS, timezone.now())
    result = apscheduler("remove", "gone")
    assert result.returncode == 0, result.stderr
    assert "gone: removed." in result.stdout
    assert list(DjangoJob.objects.values_list("id", flat=True)) == ["kept"]
    assert not DjangoJobExecution.objects.exists()


def test_remove_deletes_a_broken_job():
    """`list` shows a job as broken; `remove` is the remedy: it deletes the row, no traceback."""
    store_broken_job("broken")
    result = apscheduler("remove", "broken")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    assert not DjangoJob.objects.filter(id="broken").exists()


@pytest.mark.parametrize("action", ["pause", "resume", "remove"])
def test_pause_resume_remove_of_an_unknown_id_exit_1_naming_it(action):
    """An unknown id: exit 1, the id and a pointer to `list` on stderr, nothing changed."""
    store_job("other", jobs.noop)
    result = apscheduler(action, "no-such-id")
    assert result.returncode == 1
    assert "No job with the id 'no-such-id' is stored" in result.stderr
    assert "apscheduler list" in result.stderr
    assert DjangoJob.objects.get(id="other").next_run_time is not None


# --- prune ------------------------------------------------------------------------


def test_prune_deletes_only_executions_older_than_max_age():
    """prune --max-age 7d: runs of 8 days ago go, runs of 1 day ago stay."""
    store_job("job", jobs.noop)
    now = timezone.now()
    log_run("job", DjangoJobExecution.SUCCESS, now - timedelta(days=8))
    log_run("job", DjangoJobExecution.ERROR, now - timedelta(days=10))
    log_run("job", DjangoJobExecution.SUCCESS, now - timedelta(days=1))
    result = apscheduler("prune", "--max-age", "7d")
    assert result.returncode == 0, result.stderr
    assert "Deleted 2 logged runs older than 7d." in result.stdout
    [left] = DjangoJobExecution.objects.all()
    assert abs(left.run_time - (now - timedelta(days=1))) < timedelta(seconds=1)
    assert DjangoJob.objects.filter(id="job").exists()


@pytest.mark.parametrize("bad", ["7x", "soon", "-5", "1.5d"])
def test_prune_rejects_a_bad_max_age(bad):
    """A --max-age that is not a duration: non-zero exit, the value named, nothing deleted."""
    store_job("job", jobs.noop)
    log_run("job", DjangoJobExecution.SUCCESS, timezone.now() - timedelta(days=30))
    result = apscheduler("prune", f"--max-age={bad}")
    assert result.returncode == 2
    assert "--max-age" in result.stderr and repr(bad) in result.stderr
    assert "is not a duration" in result.stderr
    assert DjangoJobExecution.objects.count() == 1


# --- health ---------------------------------------------------------------------


def test_health_fails_without_a_live_instance():
    """No instance, or only one whose heartbeat is older than the lease: exit 1."""
    assert apscheduler("health").returncode == 1
    instance(timezone.now() - timedelta(minutes=5))
    result = apscheduler("health")
    assert result.returncode == 1
    assert "no scheduler instance has heartbeated" in result.stderr


def test_health_is_ok_with_a_fresh_instance_and_no_overdue_job():
    """A fresh heartbeat and only future (or paused, or within-grace) jobs: exit 0."""
    instance(timezone.now())
    store_job("future", jobs.noop)
    store_job("paused", jobs.noop, next_run_time=None)
    result = apscheduler("health")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 1 scheduler instances alive")


def test_health_fails_when_a_job_is_overdue_beyond_grace_lease_and_poll():
    """A job 60 s late with a grace time of 1 s is overdue (slack 10 + 2 s): exit 1, named."""
    instance(timezone.now())
    store_job("late", jobs.noop, next_run_time=timezone.now() - timedelta(seconds=60))
    result = apscheduler("health")
    assert result.returncode == 1
    assert "overdue beyond their grace time: late (" in result.stderr


def test_health_does_not_count_a_job_late_by_less_than_its_slack():
    """5 s late, within lease + poll (12 s): not overdue yet."""
    instance(timezone.now())
    store_job("soon", jobs.noop, next_run_time=timezone.now() - timedelta(seconds=5))
    result = apscheduler("health")
    assert result.returncode == 0, result.stderr


def test_health_no_instance_only_checks_overdue_jobs():
    """--no-instance: healthy without any instance, still unhealthy for an overdue job."""
    store_job("future", jobs.noop)
    assert apscheduler("health", "--no-instance").returncode == 0
    store_job("late", jobs.noop, next_run_time=timezone.now() - timedelta(minutes=5))
    result = apscheduler("health", "--no-instance")
    assert result.returncode == 1
    assert "late" in result.stderr and "no scheduler instance" not in result.stderr


def test_health_json_reports_instances_overdue_jobs_and_problems():
    """--format json: parseable on stdout, for healthy and unhealthy alike."""
    alive = instance(timezone.now())
    healthy = apscheduler("health", "--format", "json")
    assert healthy.returncode == 0, healthy.stderr
    assert json.loads(healthy.stdout) == {
        "healthy": True,
        "instances": [alive.id],
        "overdue": [],
        "problems": [],
    }

    DjangoSchedulerInstance.objects.all().delete()
    store_job("late", jobs.noop, next_run_time=timezone.now() - timedelta(minutes=5))
    sick = apscheduler("health", "--format", "json")
    assert sick.returncode == 1
    report = json.loads(sick.stdout)
    assert report["healthy"] is False and report["instances"] == []
    [overdue] = report["overdue"]
    assert overdue["id"] == "late" and 290 <= overdue["late_seconds"] <= 400
    assert len(report["problems"]) == 2
