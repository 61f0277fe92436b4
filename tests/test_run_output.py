"""Seeing that a job ran: ``runapscheduler``'s line per run, and ``apscheduler history``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from django_apscheduler import client, util
from django_apscheduler.models import DjangoJob, DjangoJobExecution

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent

#: A project whose LOGGING silences everything: the run lines must show anyway.
SILENT_LOGGING = {
    "version": 1,
    "disable_existing_loggers": True,
    "root": {"level": "CRITICAL", "handlers": []},
    "loggers": {"django_apscheduler": {"level": "CRITICAL", "handlers": [], "propagate": False}},
}


def _burst(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DJANGO_APSCHEDULER_TEST_DB_NAME=str(connection.settings_dict["NAME"]),
        DJANGO_APSCHEDULER_TEST_SETTINGS=json.dumps(
            {"INSTALLED_APPS": settings.INSTALLED_APPS, "LOGGING": SILENT_LOGGING}
        ),
        PYTHONUNBUFFERED="1",
    )
    done = subprocess.run(
        [sys.executable, "-m", "django", "runapscheduler", "--burst", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _add_due_jobs() -> None:
    client.add_job("tests.jobs:noop", "date", run_date=timezone.now(), id="ok")
    client.add_job("tests.jobs:fail", "date", run_date=timezone.now(), id="bad", args=["kaput"])


def _run_lines(stdout: str, job_id: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(f"Run of {job_id} ")]


@pytest.mark.slow
def test_runapscheduler_prints_one_line_per_run_whatever_logging_says():
    """Default verbosity: one line per run (job, time, status, duration, error's first line)."""
    _add_due_jobs()
    done = _burst()
    (ok,) = _run_lines(done.stdout, "ok")
    (bad,) = _run_lines(done.stdout, "bad")
    assert ": Executed in " in ok and ok.endswith(" s")
    assert ": Error! after " in bad and bad.endswith("ValueError: kaput")
    # The scheduled time, in the local time zone.
    row = DjangoJobExecution.objects.get(job_id="ok")
    assert timezone.localtime(row.run_time).strftime("%Y-%m-%d %H:%M:%S") in ok
    assert "execution" not in ok  # the details are for -v 2
    # No jobs.py in the test apps: discovery names the modules it searched.
    assert "No job is declared in code" in done.stdout
    assert "django_apscheduler.jobs" in done.stdout


@pytest.mark.slow
def test_runapscheduler_verbose_shows_submissions_starts_and_details():
    """``-v 2``: each run is also shown when submitted and started, with its row and instance."""
    _add_due_jobs()
    done = _burst("-v", "2")
    lines = _run_lines(done.stdout, "ok")
    # A run may start before APScheduler reports its submission, and a quick run may end
    # before: the lines come in the order of the events' arrival.
    outcomes = [line.split(": ", 1)[1].split(" ", 1)[0] for line in lines]
    assert sorted(outcomes) == ["Executed", "started", "submitted"], done.stdout
    row = DjangoJobExecution.objects.get(job_id="ok")
    assert f"(execution {row.pk}, instance {row.instance}" in lines[-1]


def _row(job_id: str, minutes_ago: int, status: str, **fields) -> DjangoJobExecution:
    DjangoJob.objects.get_or_create(id=job_id, defaults={"job_state": b"", "next_run_time": None})
    run_time = util.get_django_internal_datetime(
        timezone.now().replace(microsecond=0) - timedelta(minutes=minutes_ago)
    )
    return DjangoJobExecution.objects.create(
        job_id=job_id, run_time=run_time, status=status, **fields
    )


def _history(*args: str) -> str:
    out = StringIO()
    call_command("apscheduler", "history", *args, stdout=out)
    return out.getvalue()


def test_history_lists_the_latest_runs_first_with_filters():
    """``history [JOB] [--failed] [--limit N]``: newest first; one job; failures; a limit."""
    _row("a", 30, DjangoJobExecution.SUCCESS, duration=1.5)
    _row("a", 20, DjangoJobExecution.ERROR, exception="boom\nsecond line", traceback="  File x\n")
    _row("b", 10, DjangoJobExecution.MISSED, exception="Run time of job 'b' was missed!")
    lines = _history().splitlines()
    assert lines[0].split() == ["RUN", "TIME", "JOB", "STATUS", "DURATION", "EXCEPTION"]
    assert [line.split("  ")[0] != "" for line in lines[1:]] == [True] * 3
    jobs = [
        row.split()[-1] for row in _history("--format", "json").splitlines() if '"job_id"' in row
    ]
    assert jobs == ['"b",', '"a",', '"a",']
    only_a = _history("a").splitlines()[1:]
    assert len(only_a) == 2 and "Error!" in only_a[0] and "1.50 s" in only_a[1]
    assert "boom" in only_a[0] and "second line" not in only_a[0]
    failed = json.loads(_history("--failed", "--format", "json"))
    assert [(r["job_id"], r["status"]) for r in failed] == [("b", "Missed!"), ("a", "Error!")]
    assert len(json.loads(_history("--limit", "1", "--format", "json"))) == 1


def test_history_shows_the_full_traceback_on_request():
    """``--full`` prints each failed run's traceback and whole exception under its line."""
    _row("a", 5, DjangoJobExecution.ERROR, exception="boom", traceback='  File "jobs.py", line 3\n')
    plain = _history("a")
    assert "jobs.py" not in plain
    full = _history("a", "--full").splitlines()
    assert full[2:] == [
        "    Traceback (most recent call last):",
        '      File "jobs.py", line 3',
        "    boom",
    ]
    (run,) = json.loads(_history("a", "--format", "json"))
    assert run["traceback"] == '  File "jobs.py", line 3\n' and run["status"] == "Error!"


def test_history_names_an_unknown_job():
    with pytest.raises(CommandError, match="'nope'"):
        _history("nope")
    assert _history().strip() == "No runs recorded."
