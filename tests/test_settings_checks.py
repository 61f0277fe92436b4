"""The ``APSCHEDULER_*`` settings: system checks (``conf.problems``) and the execution-log policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
from django.core.checks import Error, run_checks
from django.db import connection
from django.test.utils import override_settings
from django.utils import timezone

from django_apscheduler import conf, executions
from django_apscheduler.models import DjangoJobExecution
from tests import jobs

# Django 6.1's own system checks query the database (a JSONField's
# support check on SQLite), so every test that runs the checks may use it.
pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


def our_errors() -> list[Error]:
    """The messages of this app's checks among every registered check's."""
    return [m for m in run_checks() if (m.id or "").startswith("django_apscheduler.")]


def test_default_settings_pass_every_check():
    """The defaults (and the test settings) are valid: no message from our checks."""
    assert conf.problems() == []
    assert our_errors() == []


@pytest.mark.parametrize(
    ("settings", "code", "named"),
    [
        ({"APSCHEDULER_LEASE_TIME": -1}, "E001", ["APSCHEDULER_LEASE_TIME", "-1"]),
        ({"APSCHEDULER_LEASE_TIME": "10"}, "E001", ["APSCHEDULER_LEASE_TIME", "'10'"]),
        ({"APSCHEDULER_HEARTBEAT_INTERVAL": 0}, "E001", ["APSCHEDULER_HEARTBEAT_INTERVAL", "0"]),
        ({"APSCHEDULER_POLL_INTERVAL": None}, "E001", ["APSCHEDULER_POLL_INTERVAL", "None"]),
        (
            {"APSCHEDULER_LISTEN_POLL_INTERVAL": 0},
            "E001",
            ["APSCHEDULER_LISTEN_POLL_INTERVAL", "0"],
        ),
        ({"APSCHEDULER_DB_RETRY_TIMEOUT": -5}, "E001", ["APSCHEDULER_DB_RETRY_TIMEOUT", "-5"]),
        (
            {"APSCHEDULER_EXECUTION_RETENTION": 0},
            "E001",
            ["APSCHEDULER_EXECUTION_RETENTION", "0"],
        ),
        ({"APSCHEDULER_THREADS": 0}, "E001", ["APSCHEDULER_THREADS", "0"]),
        ({"APSCHEDULER_THREADS": "10"}, "E001", ["APSCHEDULER_THREADS", "'10'"]),
        ({"APSCHEDULER_THREADS": True}, "E001", ["APSCHEDULER_THREADS", "True"]),
        ({"APSCHEDULER_THREADS": 2.5}, "E001", ["APSCHEDULER_THREADS", "2.5"]),
        ({"APSCHEDULER_PROCESSES": -1}, "E001", ["APSCHEDULER_PROCESSES", "-1"]),
        ({"APSCHEDULER_DISPATCH_BATCH_SIZE": 0}, "E001", ["APSCHEDULER_DISPATCH_BATCH_SIZE", "0"]),
        (
            {"APSCHEDULER_LEASE_TIME": 10, "APSCHEDULER_HEARTBEAT_INTERVAL": 6},
            "E002",
            ["APSCHEDULER_HEARTBEAT_INTERVAL (6)", "APSCHEDULER_LEASE_TIME (10)"],
        ),
        ({"APSCHEDULER_EXECUTION_LOG": "some"}, "E003", ["APSCHEDULER_EXECUTION_LOG", "'some'"]),
        (
            {"APSCHEDULER_JOB_DEFAULTS": {"misfire_grace": 5, "coalesce": False}},
            "E004",
            ["APSCHEDULER_JOB_DEFAULTS", "misfire_grace"],
        ),
        ({"APSCHEDULER_JOB_DEFAULTS": [1]}, "E004", ["APSCHEDULER_JOB_DEFAULTS", "[1]"]),
        ({"APSCHEDULER_AUTOSTART": "yes"}, "E005", ["APSCHEDULER_AUTOSTART", "'yes'"]),
        ({"APSCHEDULER_AUTOSTART": 1}, "E005", ["APSCHEDULER_AUTOSTART", "1"]),
        (
            {"APSCHEDULER_TIMEZONE": "Mars/Olympus"},
            "E006",
            ["APSCHEDULER_TIMEZONE", "Mars/Olympus"],
        ),
        ({"APSCHEDULER_TIMEZONE": 42}, "E006", ["APSCHEDULER_TIMEZONE", "42"]),
        ({"APSCHEDULER_JOBS_MODULE": "my-jobs"}, "E007", ["APSCHEDULER_JOBS_MODULE", "'my-jobs'"]),
    ],
)
def test_a_bad_setting_is_one_error_naming_it_and_its_value(settings, code, named):
    """Each misconfiguration is exactly one Error, with its id, the setting and the value."""
    with override_settings(**settings):
        errors = our_errors()
    assert len(errors) == 1, [e.msg for e in errors]
    [error] = errors
    assert isinstance(error, Error)
    assert error.id == f"django_apscheduler.{code}"
    for text in named:
        assert text in error.msg, error.msg


@pytest.mark.parametrize(
    "settings",
    [
        {"APSCHEDULER_LEASE_TIME": 30, "APSCHEDULER_HEARTBEAT_INTERVAL": 15},
        {"APSCHEDULER_EXECUTION_LOG": "failures", "APSCHEDULER_EXECUTION_RETENTION": 86400},
        {"APSCHEDULER_JOB_DEFAULTS": {"misfire_grace_time": None, "max_instances": 3}},
        {"APSCHEDULER_TIMEZONE": "America/New_York", "APSCHEDULER_AUTOSTART": True},
        {"APSCHEDULER_THREADS": 1, "APSCHEDULER_PROCESSES": 0, "APSCHEDULER_POLL_INTERVAL": 0.5},
    ],
)
def test_valid_non_default_settings_pass(settings):
    """Legitimate values at the edges are accepted (the checks are not simply strict)."""
    with override_settings(**settings):
        assert our_errors() == []


def test_several_bad_settings_are_each_reported():
    """Two bad settings give two errors, each with its own id."""
    with override_settings(APSCHEDULER_EXECUTION_LOG="x", APSCHEDULER_AUTOSTART="no"):
        ids = sorted(e.id for e in our_errors())
    assert ids == ["django_apscheduler.E003", "django_apscheduler.E005"]


def _django(*args: str, settings: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["DJANGO_APSCHEDULER_TEST_SETTINGS"] = json.dumps(settings)
    if connection.settings_dict["NAME"]:
        env["DJANGO_APSCHEDULER_TEST_DB_NAME"] = connection.settings_dict["NAME"]
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_manage_py_check_fails_on_a_bad_setting():
    """`django check` in a real process: exit 0 with the test settings, non-zero naming the setting."""
    good = _django("check", settings={})
    assert good.returncode == 0, good.stderr
    bad = _django("check", settings={"APSCHEDULER_LEASE_TIME": -1})
    assert bad.returncode != 0
    assert "django_apscheduler.E001" in bad.stderr
    assert "APSCHEDULER_LEASE_TIME must be a number of at least 0.1; it is -1." in bad.stderr


@pytest.mark.django_db(transaction=True)
def test_the_ops_command_refuses_to_run_with_a_bad_setting():
    """Management commands run the checks first: `apscheduler list` stops on a bad setting."""
    result = _django("apscheduler", "list", settings={"APSCHEDULER_EXECUTION_LOG": "some"})
    assert result.returncode != 0
    assert "django_apscheduler.E003" in result.stderr and "'some'" in result.stderr


# --- the execution-log policy ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            "all",
            {
                "ok": DjangoJobExecution.SUCCESS,
                "bad": DjangoJobExecution.ERROR,
                "late": DjangoJobExecution.MISSED,
            },
        ),
        ("failures", {"bad": DjangoJobExecution.ERROR, "late": DjangoJobExecution.MISSED}),
        ("none", {}),
    ],
)
def test_execution_log_policy(make_scheduler, policy, expected):
    """APSCHEDULER_EXECUTION_LOG: "all" logs every run, "failures" only errors and misses,
    "none" nothing; the jobs run in every case."""
    seen: dict[str, int] = {}
    done = threading.Event()

    def listener(event) -> None:
        seen[event.job_id] = event.code
        if len(seen) == 3:
            done.set()

    with override_settings(APSCHEDULER_EXECUTION_LOG=policy):
        scheduler = make_scheduler(start=False)
        scheduler.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        now = timezone.now()
        scheduler.add_job(jobs.record, "date", run_date=now, id="ok", args=["ok"])
        scheduler.add_job(jobs.fail, "date", run_date=now, id="bad")
        scheduler.add_job(
            jobs.record,
            "date",
            run_date=now - timedelta(minutes=10),
            id="late",
            args=["late"],
            misfire_grace_time=1,
        )
        scheduler.start()
        assert done.wait(30), f"not every job was dispatched: {seen}"
        assert executions.recorder.flush(timeout=30)
        logged = dict(DjangoJobExecution.objects.values_list("job_id", "status"))
    assert seen == {"ok": EVENT_JOB_EXECUTED, "bad": EVENT_JOB_ERROR, "late": EVENT_JOB_MISSED}
    assert [tag for tag, _ in jobs.calls] == ["ok"]
    assert logged == expected
