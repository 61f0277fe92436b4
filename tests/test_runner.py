"""The built-in runner: ``runapscheduler`` as a real process, declared jobs, autostart.

Processes run ``python -m django runapscheduler`` (or gunicorn) on the test
database with the test settings, plus the ``tests.declaring`` app whose
``jobs`` module declares jobs according to ``DECLARING_VARIANT``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from django_apscheduler import client
from django_apscheduler.models import DjangoJob, DjangoJobExecution, DjangoSchedulerInstance
from django_apscheduler.runner import autostart_wanted
from tests.helpers import exit_code, wait_until
from tests.scheduler_process import read_lines

# The subprocess tests are marked slow one by one; the unit cases run in the quick suite
# (test_declared.py has the runner, the sync and --burst in this process).
pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
APPS = [*settings.INSTALLED_APPS, "tests.declaring"]


def _env(variant: str = "", extra_settings: dict | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DJANGO_APSCHEDULER_TEST_DB_NAME=str(connection.settings_dict["NAME"]),
        DJANGO_APSCHEDULER_TEST_SETTINGS=json.dumps(
            {"INSTALLED_APPS": APPS, **(extra_settings or {})}
        ),
        DECLARING_VARIANT=variant,
        PYTHONUNBUFFERED="1",
        PYTHONFAULTHANDLER="1",  # see helpers.exit_code
        **extra,
    )
    return env


def _django(*args: str) -> list[str]:
    return [sys.executable, "-m", "django", *args]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.parametrize(
    ("argv", "environ", "wanted"),
    [
        (["manage.py", "migrate"], {}, False),
        (["manage.py", "makemigrations"], {}, False),
        (["manage.py", "shell"], {}, False),
        (["manage.py", "collectstatic"], {}, False),
        (["/x/django/__main__.py", "test"], {}, False),
        (["manage.py", "runapscheduler"], {}, False),
        (["manage.py", "runserver"], {}, False),  # the autoreloader's watcher
        (["manage.py", "runserver"], {"RUN_MAIN": "true"}, True),  # the serving child
        (["manage.py", "runserver", "--noreload"], {}, True),
        (["/venv/bin/gunicorn", "project.wsgi"], {}, True),
        (["/venv/bin/uwsgi"], {}, True),
        (["/venv/bin/pytest"], {}, False),
        (["/venv/bin/gunicorn"], {"PYTEST_CURRENT_TEST": "x"}, False),
        ([], {}, True),  # an embedded interpreter
    ],
)
@pytest.mark.django_db(transaction=False)
def test_autostart_only_where_requests_are_served(argv, environ, wanted):
    """Never under management commands other than runserver; once under the autoreloader."""
    assert autostart_wanted(argv, environ) is wanted


@pytest.mark.slow
def test_a_projects_own_runapscheduler_keeps_working(tmp_path):
    """The 0.7.0 README had users write runapscheduler; theirs runs, whatever the app order."""
    env = _env()
    apps = [*settings.INSTALLED_APPS, "tests.handwritten"]  # listed after django_apscheduler
    env["DJANGO_APSCHEDULER_TEST_SETTINGS"] = json.dumps({"INSTALLED_APPS": apps})
    done = subprocess.run(
        _django("runapscheduler", "--own-option", "kept"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "handwritten runapscheduler ran (own option: kept)" in done.stdout


@pytest.mark.slow
def test_sigterm_waits_for_running_jobs_then_exits_0(tmp_path):
    """SIGTERM: no new fires, the running job finishes, its run is logged Executed, exit 0."""
    runs = tmp_path / "runs.jsonl"
    env = _env("slow", DECLARING_OUTPUT=str(runs), DECLARING_SECONDS="3")
    proc = _start(_django("runapscheduler", "-v", "2"), env, tmp_path / "out.log")
    try:
        wait_until(lambda: read_lines(str(runs)), timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert exit_code(proc, 60, tmp_path / "out.log") == 0, (tmp_path / "out.log").read_text()
    finally:
        proc.kill()
    output = (tmp_path / "out.log").read_text()
    assert "Stopping: no new fires" in output and "Scheduler stopped." in output, output
    lines = read_lines(str(runs))
    assert [line["event"] for line in lines] == ["start", "end"], lines  # no fire after the signal
    statuses = list(
        DjangoJobExecution.objects.filter(job_id="slow").values_list("status", flat=True)
    )
    assert statuses == [DjangoJobExecution.SUCCESS], statuses
    assert not DjangoSchedulerInstance.objects.exists()


@pytest.mark.slow
def test_sigterm_marks_jobs_still_running_after_the_timeout_interrupted(tmp_path):
    """A job outliving APSCHEDULER_SHUTDOWN_TIMEOUT is marked Interrupted; a 2nd signal exits at once."""
    runs = tmp_path / "runs.jsonl"
    env = _env(
        "slow",
        {"APSCHEDULER_SHUTDOWN_TIMEOUT": 1},
        DECLARING_OUTPUT=str(runs),
        DECLARING_SECONDS="60",
    )
    proc = _start(_django("runapscheduler"), env, tmp_path / "out.log")
    try:
        wait_until(lambda: read_lines(str(runs)), timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert exit_code(proc, 30, tmp_path / "out.log") == 0, (tmp_path / "out.log").read_text()
    finally:
        proc.kill()
    output = (tmp_path / "out.log").read_text()
    assert "1 runs unfinished" in output, output
    [run] = DjangoJobExecution.objects.filter(job_id="slow")
    assert run.status == DjangoJobExecution.INTERRUPTED
    assert "shut down before this run finished" in run.exception

    # With no timeout to speak of, a second signal ends the wait at once.
    env["DJANGO_APSCHEDULER_TEST_SETTINGS"] = json.dumps(
        {"INSTALLED_APPS": APPS, "APSCHEDULER_SHUTDOWN_TIMEOUT": 600}
    )
    runs.unlink()
    proc = _start(_django("runapscheduler"), env, tmp_path / "out2.log")
    try:
        wait_until(lambda: read_lines(str(runs)), timeout=60)
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "Stopping: no new fires" in (tmp_path / "out2.log").read_text())
        assert proc.poll() is None  # waiting for the job
        proc.send_signal(signal.SIGTERM)
        assert exit_code(proc, 10, tmp_path / "out2.log") == 1
    finally:
        proc.kill()
    assert "Second signal: exiting at once." in (tmp_path / "out2.log").read_text()


@pytest.mark.slow
def test_burst_runs_what_is_due_and_exits(tmp_path):
    """--burst: the jobs due now run (and are logged); later ones do not; exit 0."""
    due, later = tmp_path / "due.jsonl", tmp_path / "later.jsonl"
    client.add_job("tests.scheduler_process:log_run", "date", args=[str(due)], id="due")
    client.add_job(
        "tests.scheduler_process:log_run",
        "interval",
        hours=1,
        args=[str(later)],
        id="later",
    )
    done = subprocess.run(
        _django("runapscheduler", "--burst"),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line["event"] for line in read_lines(str(due))] == ["start", "end"]
    assert read_lines(str(later)) == []
    logged = dict(DjangoJobExecution.objects.values_list("job_id", "status"))
    assert logged == {"due": DjangoJobExecution.SUCCESS}


@pytest.mark.slow
def test_declared_jobs_sync_without_duplicates_or_flapping(tmp_path):
    """Several processes sync the same declarations at once; later code changes apply."""
    client.add_job("tests.jobs:noop", "interval", hours=1, id="added-at-run-time")
    procs = [
        _start(_django("runapscheduler", "--burst"), _env("v1"), tmp_path / f"v1-{i}.log")
        for i in range(3)
    ]
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=120) == 0, (tmp_path / f"v1-{i}.log").read_text()
    a = "tests.declaring.jobs.declared_a"
    rows = dict(DjangoJob.objects.values_list("id", "declared_in_code"))
    assert rows == {a: True, "declared-b": True, "added-at-run-time": None}
    first = DjangoJob.objects.get(id=a).next_run_time
    assert client.get_job("declared-b").max_instances == 2

    # Started again with the same code: the stored schedule does not move.
    done = subprocess.run(
        _django("runapscheduler", "--burst"), cwd=ROOT, env=_env("v1"), timeout=120
    )
    assert done.returncode == 0
    assert DjangoJob.objects.get(id=a).next_run_time == first

    # The code changed: declared-b is gone from it, declared_a runs every 20 minutes.
    done = subprocess.run(
        _django("runapscheduler", "--burst"), cwd=ROOT, env=_env("v2"), timeout=120
    )
    assert done.returncode == 0
    rows = dict(DjangoJob.objects.values_list("id", "declared_in_code"))
    assert rows == {a: True, "added-at-run-time": None}
    assert client.get_job(a).trigger.interval.total_seconds() == 20 * 60


def _gunicorn_own_files(tmp_path: Path) -> list[str]:
    """Options that keep a gunicorn of this test apart from any other on the machine.

    Port 0: the server binds a free port itself (a port chosen by binding and
    releasing it first may be taken by someone else before gunicorn binds it).
    Gunicorn 24+ also opens a control socket, by default at one path per user:
    it goes into the test's directory.
    """
    from gunicorn.config import KNOWN_SETTINGS

    options = ["--bind", "127.0.0.1:0"]
    if any(setting.name == "control_socket" for setting in KNOWN_SETTINGS):
        options += ["--control-socket", str(tmp_path / "gunicorn.ctl")]
    return options


@pytest.mark.slow
def test_autostart_under_gunicorn_fires_each_time_once(tmp_path):
    """gunicorn with 3 workers, each autostarting a scheduler: every fire runs exactly once."""
    fires = tmp_path / "fires.jsonl"
    # After the workers have booted: 8 s was not always enough with make test's
    # nine pytest runs on two cores (the first fire came before any scheduler).
    start = math.ceil(time.time()) + 25
    env = _env(
        "tick",
        {"APSCHEDULER_AUTOSTART": True},
        DECLARING_OUTPUT=str(fires),
        DECLARING_START=str(start),
    )
    gunicorn = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers",
        "3",
        *_gunicorn_own_files(tmp_path),
        "tests.wsgi:application",
    ]
    proc = _start(gunicorn, env, tmp_path / "gunicorn.log")
    try:

        def instance_pids() -> set[int]:
            pids = set(DjangoSchedulerInstance.objects.values_list("pid", flat=True))
            return pids if len(pids) >= 3 else set()

        pids = wait_until(instance_pids, timeout=60)
        booted = time.time()

        def ten_fires_each() -> bool:
            lines = read_lines(str(fires))
            return all(
                len({line["run_time"] for line in lines if line["tag"] == f"tick-{i}"}) >= 10
                for i in range(5)
            )

        wait_until(ten_fires_each, timeout=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    log = (tmp_path / "gunicorn.log").read_text()
    assert "Traceback" not in log, log
    assert len(pids) >= 3, (pids, log)  # one scheduler per worker
    # Workers stop their scheduler as they exit: no instance left to be reaped.
    assert not DjangoSchedulerInstance.objects.exists(), log

    lines = read_lines(str(fires))
    counts = Counter((line["tag"], line["run_time"]) for line in lines)
    assert max(counts.values()) == 1, [key for key, n in counts.items() if n > 1]
    # A fire due before any scheduler was up is not this test's business.
    assert booted < start, f"the workers took {booted - start + 25:.0f} s to boot"
    for i in range(5):
        times = sorted(rt for tag, rt in counts if tag == f"tick-{i}")
        assert times[0] == start and len(times) >= 10, times
        assert all(b - a == 1 for a, b in zip(times, times[1:])), times
    print(f"\ngunicorn autostart: {len(lines)} fires by pids {Counter(x['pid'] for x in lines)}")


@pytest.mark.slow
def test_retention_prunes_old_runs_and_quiet_verbosity(tmp_path, settings):
    """APSCHEDULER_EXECUTION_RETENTION: the runner prunes at start; -v 0 prints nothing."""
    from datetime import timedelta

    from django.utils import timezone

    from django_apscheduler.runner import prune_executions

    client.add_job("tests.jobs:noop", "interval", hours=1, id="kept")
    now = timezone.now()
    for age_days in (1, 10):
        DjangoJobExecution.objects.create(
            job_id="kept",
            status=DjangoJobExecution.SUCCESS,
            run_time=now - timedelta(days=age_days),
        )
    settings.APSCHEDULER_EXECUTION_RETENTION = None
    assert prune_executions() == 0
    done = subprocess.run(
        _django("runapscheduler", "--burst", "-v", "0"),
        cwd=ROOT,
        env=_env("", {"APSCHEDULER_EXECUTION_RETENTION": 5 * 86400}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    ages = [(now - rt).days for rt in DjangoJobExecution.objects.values_list("run_time", flat=True)]
    assert ages == [1], ages


def _output(path: Path) -> str:
    return path.read_text() if path.exists() else ""


FAST_LEASES = {"APSCHEDULER_LEASE_TIME": 2, "APSCHEDULER_HEARTBEAT_INTERVAL": 0.5}


@pytest.mark.slow
def test_rolling_deploy_keeps_the_other_releases_jobs_and_the_operators_pause(tmp_path):
    """Two releases at once: neither removes nor rewrites the other's jobs; a pause survives (#9.5).

    v1 declares declared_a (every 10 min) and declared-b; v2 declares declared_a every
    20 min and no declared-b. v2 used to remove declared-b (with its history) while v1
    still ran, and to unpause declared_a. Once v1 has stopped, declared-b goes and
    v2's definition of declared_a is written, still paused.
    """
    a = "tests.declaring.jobs.declared_a"
    v1_log, v2_log = tmp_path / "v1.log", tmp_path / "v2.log"
    v1 = _start(_django("runapscheduler"), _env("v1", FAST_LEASES), v1_log)
    v2 = None
    try:
        wait_until(lambda: "Scheduler instance started" in _output(v1_log), timeout=60)
        client.pause_job(a)  # the operator pauses a declared job
        DjangoJobExecution.objects.create(
            job_id="declared-b", status=DjangoJobExecution.SUCCESS, run_time=timezone.now()
        )
        v2 = _start(_django("runapscheduler"), _env("v2", FAST_LEASES), v2_log)
        wait_until(lambda: "Scheduler instance started" in _output(v2_log), timeout=60)

        assert DjangoJob.objects.filter(id="declared-b").exists(), _output(v2_log)
        assert DjangoJobExecution.objects.filter(job_id="declared-b").exists()
        job = client.get_job(a)
        assert job.trigger.interval.total_seconds() == 10 * 60  # v1 declares it so, and lives
        assert job.next_run_time is None  # the pause stands

        v1.send_signal(signal.SIGTERM)
        assert v1.wait(timeout=60) == 0, _output(v1_log)
        # v2 re-checks every three lease times: now that v1 is gone, declared-b goes
        # and v2's definition of declared_a is written.
        wait_until(lambda: not DjangoJob.objects.filter(id="declared-b").exists(), timeout=60)
        wait_until(lambda: client.get_job(a).trigger.interval.total_seconds() == 20 * 60)
        assert client.get_job(a).next_run_time is None
    finally:
        for proc in (v1, v2):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    assert "Traceback" not in _output(v1_log) + _output(v2_log)


def _last_fire_before(trigger, moment):
    """The last fire time of ``trigger`` at or before ``moment`` (within two days)."""
    fire = trigger.get_next_fire_time(None, moment - timedelta(days=2))
    while True:
        following = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
        if following is None or following > moment:
            return fire
        fire = following


@pytest.mark.slow
def test_burst_runs_declared_jobs_that_were_due(tmp_path):
    """A cron-driven --burst runs the declared job due before it and logs the missed one (#9.16)."""
    a = "tests.declaring.jobs.declared_a"
    first = subprocess.run(
        _django("runapscheduler", "--burst"), cwd=ROOT, env=_env("v1"), timeout=120
    )
    assert first.returncode == 0
    # declared-b fires daily (03:00 in TIME_ZONE). Its missed run is its own last
    # fire, over a minute old (its grace is 30 s): no later fire of its lies
    # before the burst, which APScheduler would coalesce the missed run into.
    trigger = client.get_job("declared-b").trigger
    now = timezone.now().replace(microsecond=0)
    upcoming = trigger.get_next_fire_time(None, now - timedelta(minutes=1))
    if upcoming <= now + timedelta(minutes=2):  # once a day: let that fire become the last
        time.sleep((upcoming - now).total_seconds() + 61)
        now = timezone.now().replace(microsecond=0)
    due, late = now - timedelta(seconds=4), _last_fire_before(trigger, now - timedelta(minutes=1))
    client.modify_job(a, next_run_time=due)
    client.modify_job("declared-b", next_run_time=late)

    done = subprocess.run(
        _django("runapscheduler", "--burst"),
        cwd=ROOT,
        env=_env("v1"),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    logged = set(DjangoJobExecution.objects.values_list("job_id", "status", "run_time"))
    assert logged == {
        (a, DjangoJobExecution.SUCCESS, due),
        ("declared-b", DjangoJobExecution.MISSED, late),
    }
    assert DjangoJob.objects.get(id=a).next_run_time == due + timedelta(minutes=10)
