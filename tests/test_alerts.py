"""Failure alerts: ``mail_admins`` once after N consecutive failures, once on recovery, and once
for an overdue job (Django's locmem e-mail backend, which pytest-django sets; the file backend
for three scheduler processes)."""

from __future__ import annotations

import signal as os_signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core import mail
from django.utils import timezone

from django_apscheduler import alerts, client, executions, overdue
from django_apscheduler.models import DjangoJob, DjangoJobExecution, DjangoSchedulerInstance
from tests.helpers import runapscheduler_env, wait_until

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alerting(settings):
    settings.APSCHEDULER_ALERT_AFTER_FAILURES = 3
    settings.ADMINS = [("Ops", "ops@example.com")]
    alerts.connect()
    yield
    alerts.disconnect()


def _count(job_id: str, status: str) -> int:
    return DjangoJobExecution.objects.filter(job_id=job_id, status=status).count()


def test_one_mail_after_n_failures_and_one_on_recovery(make_scheduler, alerting):
    """A job failing every second: one mail at the third failure, none for the next ones; it
    is fixed: one "recovered" mail, none for the next successes."""
    scheduler = make_scheduler()
    # A loaded machine may start a run over APScheduler's default grace of 1 s
    # late: that run is then logged "Missed!", and the mail names it, not the error.
    scheduler.add_job(
        "tests.jobs:fail",
        "interval",
        seconds=1,
        id="flaky",
        args=["disk full"],
        misfire_grace_time=60,
    )
    wait_until(lambda: len(mail.outbox) == 1, timeout=60)
    wait_until(lambda: _count("flaky", DjangoJobExecution.ERROR) >= 5, timeout=60)
    executions.recorder.flush(timeout=30)
    assert len(mail.outbox) == 1
    (alert,) = mail.outbox
    assert alert.subject.endswith("django-apscheduler: Job 'flaky' failed 3 times in a row")
    assert alert.to == ["ops@example.com"]
    assert "disk full" in alert.body and "raise ValueError(message)" in alert.body

    scheduler.modify_job("flaky", func="tests.jobs:noop", args=[])
    wait_until(lambda: len(mail.outbox) == 2, timeout=60)
    wait_until(lambda: _count("flaky", DjangoJobExecution.SUCCESS) >= 3, timeout=60)
    executions.recorder.flush(timeout=30)
    assert [m.subject.split(": ", 1)[1] for m in mail.outbox] == [
        "Job 'flaky' failed 3 times in a row",
        "Job 'flaky' recovered",
    ]


def test_a_success_breaks_the_streak(make_scheduler, alerting):
    """Two failures, a success, two failures: no mail (never three in a row); a third: one."""
    scheduler = make_scheduler(start=False)
    scheduler.start(paused=True)
    scheduler.add_job("tests.jobs:noop", "interval", hours=1, id="blip")
    start = timezone.now().replace(microsecond=0)

    def runs(statuses: str, offset: int) -> None:
        events = {"E": ("job_failed", "Error!"), "S": ("job_succeeded", "Executed")}
        records = [
            executions.Record(
                "blip",
                start + timedelta(seconds=offset + i),
                events[code][1],
                finished=executions.now_epoch(),
                event=events[code][0],
            )
            for i, code in enumerate(statuses)
        ]
        for record in records:  # one at a time, as runs end
            executions.recorder.submit([record])
            executions.recorder.flush(timeout=30)

    runs("EESEE", 0)
    assert mail.outbox == []
    runs("E", 10)
    assert [m.subject.split(": ", 1)[1] for m in mail.outbox] == [
        "Job 'blip' failed 3 times in a row"
    ]


def test_an_overdue_job_mails_once_and_recovers(make_scheduler, alerting):
    """Reported overdue: one mail (however often it is looked at); its next success: recovered."""
    scheduler = make_scheduler(start=False)
    scheduler.start(paused=True)
    scheduler.add_job(
        "tests.jobs:noop",
        "interval",
        hours=1,
        id="starved",
        next_run_time=timezone.now() - timedelta(minutes=5),
        misfire_grace_time=None,
    )
    assert [o.job_id for o in overdue.report_overdue()] == ["starved"]
    assert overdue.report_overdue() == []
    executions.recorder.flush(timeout=30)
    assert [m.subject.split(": ", 1)[1] for m in mail.outbox] == ["Job 'starved' is overdue"]
    assert DjangoJob.objects.get(id="starved").alert_open_since is not None
    scheduler.resume()  # it runs now (no misfire grace limit), and succeeds
    wait_until(lambda: len(mail.outbox) == 2, timeout=60)
    assert mail.outbox[1].subject.endswith("Job 'starved' recovered")
    assert DjangoJob.objects.get(id="starved").alert_open_since is None


def test_no_mail_without_the_setting(make_scheduler, settings):
    """Not configured: nothing is mailed, whatever fails."""
    settings.ADMINS = [("Ops", "ops@example.com")]
    alerts.connect()  # connected, but the setting is None
    try:
        scheduler = make_scheduler()
        scheduler.add_job("tests.jobs:fail", "interval", seconds=1, id="bad")
        wait_until(lambda: _count("bad", DjangoJobExecution.ERROR) >= 4, timeout=60)
        executions.recorder.flush(timeout=30)
    finally:
        alerts.disconnect()
    assert mail.outbox == []


# --- three scheduler processes -------------------------------------------------------


@pytest.mark.slow
def test_three_schedulers_send_one_alert_and_one_recovery(tmp_path):
    """A job failing in 3 runapscheduler processes (its runs spread over them): one mail for
    the streak, one for the recovery, in all (Django's file e-mail backend, shared)."""
    mails = tmp_path / "mails"
    mails.mkdir()
    env = runapscheduler_env(
        {
            "INSTALLED_APPS": settings.INSTALLED_APPS,
            "APSCHEDULER_ALERT_AFTER_FAILURES": 3,
            "ADMINS": [["Ops", "ops@example.com"]],
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "EMAIL_FILE_PATH": str(mails),
        }
    )
    procs, logs = [], []
    for i in range(3):
        log = tmp_path / f"scheduler-{i}.log"
        logs.append(log)
        with open(log, "w") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "django", "runapscheduler"],
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )

    def subjects() -> list[str]:
        found = []
        for path in sorted(mails.iterdir()):
            found += [
                line.split(": ", 1)[1].split("django-apscheduler: ", 1)[-1]
                for line in path.read_text().splitlines()
                if line.startswith("Subject: ")
            ]
        return found

    try:
        wait_until(lambda: DjangoSchedulerInstance.objects.alive().count() == 3, timeout=120)
        client.add_job("tests.jobs:fail", "interval", seconds=1, id="flaky", args=["disk full"])
        wait_until(lambda: _count("flaky", DjangoJobExecution.ERROR) >= 8, timeout=120)
        client.modify_job("flaky", func="tests.jobs:noop", args=[])
        wait_until(lambda: _count("flaky", DjangoJobExecution.SUCCESS) >= 4, timeout=120)
        wait_until(lambda: len(subjects()) >= 2, timeout=60)
        client.pause_job("flaky")
    finally:
        for proc in procs:
            proc.send_signal(os_signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=120)
    text = "\n".join(p.read_text() for p in logs)
    assert subjects() == [
        "Job 'flaky' failed 3 times in a row",
        "Job 'flaky' recovered",
    ], text
