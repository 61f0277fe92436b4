"""``manage.py apscheduler``: every action run as a real process against the test database.

The jobs and rows are written by the test process and committed
(``transaction=True``), then ``python -m django apscheduler ...`` runs in a
subprocess on the same database, as an operator or a container probe would.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from django_apscheduler.models import DjangoJob, DjangoJobExecution, DjangoSchedulerInstance
from tests import jobs
from tests.test_run_now import store_broken_job, store_finished_job, store_job

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
UTC = dt_timezone.utc


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


@dataclass
class Outcome:
    """What ``call_command`` gave: the exit code a CommandError carries, and the output."""

    returncode: int
    stdout: str
    stderr: str


def command(*args: str) -> Outcome:
    """Run ``apscheduler *args`` in this process through ``call_command`` (for the quick suite)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("apscheduler", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return Outcome(exc.returncode, out.getvalue(), err.getvalue() + str(exc))
    return Outcome(0, out.getvalue(), err.getvalue())


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


def test_health_jobs_fails_when_a_job_is_overdue_beyond_grace_lease_and_poll():
    """--jobs: a job 60 s late with a grace time of 1 s is overdue (slack 10 + 2 s): exit 1, named."""
    instance(timezone.now())
    store_job("late", jobs.noop, next_run_time=timezone.now() - timedelta(seconds=60))
    result = apscheduler("health", "--jobs")
    assert result.returncode == 1
    assert "overdue beyond their grace time: late (" in result.stderr


def test_health_jobs_does_not_count_a_job_late_by_less_than_its_slack():
    """--jobs: 5 s late, within lease + poll (12 s): not overdue yet."""
    instance(timezone.now())
    store_job("soon", jobs.noop, next_run_time=timezone.now() - timedelta(seconds=5))
    result = apscheduler("health", "--jobs")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 1 scheduler instances alive; no job broken or overdue")


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
        "checks": ["instances"],
        "instances": [alive.id],
        "broken": None,  # not checked without --jobs
        "overdue": None,
        "problems": [],
    }

    DjangoSchedulerInstance.objects.all().delete()
    store_job("late", jobs.noop, next_run_time=timezone.now() - timedelta(minutes=5))
    store_broken_job("broken")
    sick = apscheduler("health", "--jobs", "--format", "json")
    assert sick.returncode == 1
    report = json.loads(sick.stdout)
    assert report["healthy"] is False and report["instances"] == []
    assert report["checks"] == ["instances", "jobs"]
    [overdue] = report["overdue"]
    assert overdue["id"] == "late" and 290 <= overdue["late_seconds"] <= 400
    [broken] = report["broken"]
    assert broken["id"] == "broken" and "no_such_function" in broken["reason"]
    assert len(report["problems"]) == 3


# --- health: liveness apart from job problems (issue 9, defect 10) -------------------


def _sick_jobs() -> None:
    """A broken job due a minute ago (it never moves on), a paused broken one, an overdue one."""
    late = timezone.now() - timedelta(minutes=1)
    store_broken_job("broken-due")
    DjangoJob.objects.filter(id="broken-due").update(next_run_time=late)
    store_broken_job("broken-paused")
    DjangoJob.objects.filter(id="broken-paused").update(next_run_time=None)
    store_job("late", jobs.noop, next_run_time=late)
    store_job("fine", jobs.noop)


def test_health_is_a_liveness_check_that_job_problems_do_not_fail():
    """A live instance with broken and overdue jobs is alive: `health` exits 0.

    Before, one unrestorable job made `health` exit 1 for good, and a liveness
    probe restarted healthy pods in a loop.
    """
    instance(timezone.now())
    _sick_jobs()
    result = command("health")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK: 1 scheduler instances alive."


def test_health_jobs_fails_naming_the_broken_and_overdue_jobs():
    """`health --jobs` adds the job checks: exit 1, every broken job and the overdue one named."""
    instance(timezone.now())
    _sick_jobs()
    result = command("health", "--jobs")
    assert result.returncode == 1
    assert "cannot be restored (broken): broken-due (" in result.stderr
    assert "broken-paused (" in result.stderr and "no_such_function" in result.stderr
    assert "apscheduler remove JOB_ID" in result.stderr
    assert "overdue beyond their grace time: late (" in result.stderr
    # A broken job is reported once, as broken, not also as overdue.
    assert "broken-due (" not in result.stderr.split("overdue beyond")[1]
    assert "fine" not in result.stderr


def test_health_this_host_counts_only_instances_of_this_host():
    """--this-host: another host's live instance does not make this one alive (per-pod probe)."""
    instance(timezone.now())  # host "probe-host"
    assert command("health").returncode == 0
    elsewhere = command("health", "--this-host")
    assert elsewhere.returncode == 1
    assert "no scheduler instance on this host (" in elsewhere.stderr
    DjangoSchedulerInstance.objects.create(
        id="local:1:x", host=socket.gethostname()[:255], pid=1, started=timezone.now(),
        last_heartbeat=timezone.now(),
    )  # fmt: skip
    here = command("health", "--this-host")
    assert here.returncode == 0, here.stderr
    assert here.stdout.strip() == "OK: 1 scheduler instances alive on this host."


# --- one listing order everywhere, bounded run, prune limits (issue 9, defect 14) ------------


def test_list_orders_by_next_run_time_then_paused_and_finished_last_then_id():
    """Next run time ascending, jobs without one (paused, finished) last, ties by id.

    Before, the database chose where NULLs go: paused jobs came first on SQLite
    and MariaDB, last on PostgreSQL.
    """
    store_job("a-paused", jobs.noop, next_run_time=None)
    store_job("z-later", jobs.noop, next_run_time=datetime(2031, 1, 1, tzinfo=UTC))
    store_job("y-sooner", jobs.noop, next_run_time=datetime(2030, 1, 1, tzinfo=UTC))
    store_job("b-same-time", jobs.noop, next_run_time=datetime(2030, 1, 1, tzinfo=UTC))
    store_finished_job("0-done")
    listed = [job["id"] for job in json.loads(command("list", "--format", "json").stdout)]
    assert listed == ["b-same-time", "y-sooner", "z-later", "0-done", "a-paused"]
    table = command("list").stdout.strip().splitlines()[1:]
    assert [line.split()[0] for line in table] == listed


@pytest.mark.slow
def test_run_timeout_bounds_the_command_and_logs_the_run_as_interrupted():
    """`run --timeout 1` on a job that sleeps 60 s ends without waiting for it.

    Before, the interpreter waited for the job's thread at exit, so the command
    took as long as the job. Now it reports the run as timed out (exit 1) and
    the run, cut off as the process exits, is logged as Interrupted, naming the
    timeout. The subprocess timeout (30 s) only bounds a hang; the assertions
    are on what the command reports and logs.
    """
    store_job("sleeper", jobs.sleep, args=(60,))
    result = apscheduler("run", "sleeper", "--timeout", "1", timeout=30)
    assert result.returncode == 1
    assert "sleeper: timed_out (still running after --timeout 1 s" in result.stderr
    assert "Traceback" not in result.stderr
    [row] = DjangoJobExecution.objects.filter(job_id="sleeper")
    assert row.status == DjangoJobExecution.INTERRUPTED
    assert "apscheduler run --timeout 1" in row.exception and "exited before" in row.exception


@pytest.mark.slow
def test_run_without_timeout_waits_for_the_run_to_end():
    """No --timeout: the command waits for the run, however long, and reports its real outcome."""
    store_job("short", jobs.sleep, args=(1.5,))
    result = apscheduler("run", "short", timeout=30)
    assert result.returncode == 0, result.stderr
    assert "short: succeeded" in result.stdout
    assert DjangoJobExecution.objects.get(job_id="short").status == DjangoJobExecution.SUCCESS


@pytest.mark.parametrize("huge", ["99999999999w", "999999999999999999999", "200000w"])
def test_prune_with_a_max_age_beyond_the_calendar_is_a_clear_error(huge):
    """A --max-age reaching back before year 1: a CommandError naming it (was OverflowError)."""
    store_job("job", jobs.noop)
    log_run("job", DjangoJobExecution.SUCCESS, timezone.now() - timedelta(days=30))
    with pytest.raises(CommandError) as caught:
        call_command("apscheduler", "prune", f"--max-age={huge}")
    assert caught.value.returncode == 2
    assert str(caught.value).startswith(f"--max-age: {huge!r} reaches back before the year 1")
    assert DjangoJobExecution.objects.count() == 1


def test_prune_accepts_the_largest_max_age_the_message_names():
    """The limit the error names is one that works: nothing is old enough to go."""
    log_run(store_job("job", jobs.noop).id, DjangoJobExecution.SUCCESS, timezone.now())
    refused = command("prune", "--max-age=200000w")
    assert refused.returncode == 2
    largest = refused.stderr.split("give at most ")[1].split(" ")[0]
    assert command("prune", "--max-age", largest).stdout.startswith("Deleted 0 logged runs")


# --- Django's standard options after the action (issue 9, defect 18) ------------------------


def _option_strings(help_text: str) -> set[str]:
    """The long options a ``--help`` text lists in its options section (not in descriptions)."""
    return set(re.findall(r"^ {2}(?:-\w(?: \S+)?, )?(--[a-z][a-z-]*)", help_text, re.MULTILINE))


def test_every_action_lists_the_standard_options_of_the_command():
    """Each action's --help lists every option of the command's own --help (Django's)."""
    from django_apscheduler.management.commands.apscheduler import Command

    parser = Command().create_parser("manage.py", "apscheduler")
    standard = _option_strings(parser.format_help())
    assert {"--settings", "--verbosity", "--traceback", "--pythonpath", "--no-color"} <= standard
    for action in ("list", "run", "pause", "resume", "remove", "prune", "health"):
        out = io.StringIO()
        with pytest.raises(SystemExit), contextlib.redirect_stdout(out):
            parser.parse_args([action, "--help"])
        assert standard <= _option_strings(out.getvalue()), action


@pytest.mark.parametrize(
    "argv, verbosity, traceback",
    [
        (["list", "-v", "2"], 2, False),
        (["list", "--verbosity=3", "--traceback"], 3, True),
        (["-v", "2", "list"], 2, False),  # before the action: not reset by the action's parser
        (["--traceback", "health", "--jobs"], 1, True),
        (["health", "--settings=tests.settings", "--no-color"], 1, False),
    ],
)
def test_standard_options_parse_before_or_after_the_action(argv, verbosity, traceback):
    """The options reach the command with their values, wherever they are given."""
    from django_apscheduler.management.commands.apscheduler import Command

    options = Command().create_parser("manage.py", "apscheduler").parse_args(argv)
    assert (options.verbosity, options.traceback) == (verbosity, traceback)


def test_standard_options_after_the_action_through_call_command():
    """call_command with `health --settings=...`, `list -v 2` and `list --traceback` works."""
    instance(timezone.now())
    store_job("job", jobs.noop)
    assert command("health", "--settings=tests.settings").returncode == 0
    for args in (["list", "-v", "2"], ["list", "--traceback", "--format", "json"]):
        result = command(*args)
        assert result.returncode == 0, result.stderr
        assert "job" in result.stdout


@pytest.mark.slow
def test_standard_options_after_the_action_from_the_command_line():
    """`python -m django apscheduler health --settings=tests.settings` and `list -v 2`.

    Before, both exited 2 with "unrecognized arguments", so a probe written that
    way reported unhealthy forever. The settings module comes from --settings
    alone here: DJANGO_SETTINGS_MODULE is unset.
    """
    instance(timezone.now())
    store_job("job", jobs.noop)
    env = dict(os.environ, DJANGO_APSCHEDULER_TEST_DB_NAME=connection.settings_dict["NAME"])
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("DJANGO_APSCHEDULER_TEST_SETTINGS", None)
    for args in (
        ["health", "--settings=tests.settings"],
        ["list", "-v", "2", "--settings", "tests.settings"],
        ["list", "--traceback", "--settings=tests.settings"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "django", "apscheduler", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, (args, result.stderr)
        assert "unrecognized arguments" not in result.stderr
        assert ("OK: 1 scheduler instances alive" if args[0] == "health" else "job") in (
            result.stdout
        )
