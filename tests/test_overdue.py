"""Overdue jobs: found from the database (health, admin) with no scheduler alive, and reported
once per episode by one of three live schedulers that are all saturated."""

from __future__ import annotations

import json
import signal as os_signal
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from django_apscheduler import client, executions, overdue, signals
from django_apscheduler.jobstores import DjangoJobStore
from django_apscheduler.models import DjangoJob, DjangoSchedulerInstance
from tests.helpers import runapscheduler_env, wait_until
from tests.scheduler_process import read_lines

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


def _store_late_job(job_id: str, minutes_late: float, **options) -> None:
    """Store a job due ``minutes_late`` ago, through a scheduler that never dispatches."""
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_jobstore(DjangoJobStore(), "default")
    scheduler.start(paused=True)
    try:
        scheduler.add_job(
            "tests.jobs:noop",
            "interval",
            hours=1,
            id=job_id,
            next_run_time=timezone.now() - timedelta(minutes=minutes_late),
            **options,
        )
    finally:
        scheduler.shutdown()


@pytest.fixture
def overdue_signals():
    got: list[dict] = []

    def receive(sender, **kwargs):
        got.append(kwargs)

    signals.job_overdue.connect(receive, weak=False)
    yield got
    signals.job_overdue.disconnect(receive)


def test_overdue_allowance_default_global_and_per_job(settings):
    """Grace time + lease + poll by default; APSCHEDULER_OVERDUE_AFTER globally or per job id."""
    _store_late_job("a", 2, misfire_grace_time=30)  # 120 s late, allowance 30 + 10 + 2 s
    _store_late_job("b", 2, misfire_grace_time=300)  # allowance 312 s: not overdue
    _store_late_job("c", 2, misfire_grace_time=None)  # allowance 12 s
    _store_late_job("paused", 60)
    client.pause_job("paused")
    assert [o.job_id for o in overdue.find_overdue()] == ["a", "c"]
    assert overdue.find_overdue()[0].allowance == timedelta(seconds=42)
    settings.APSCHEDULER_OVERDUE_AFTER = 600
    assert overdue.find_overdue() == []
    settings.APSCHEDULER_OVERDUE_AFTER = {"b": 60, "*": 3600}
    assert [o.job_id for o in overdue.find_overdue()] == ["b"]
    assert list(DjangoJob.objects.overdue().values_list("id", flat=True)) == ["b"]


def test_one_report_per_episode_and_a_new_episode_after_a_run(overdue_signals, caplog):
    """report_overdue: the first call reports (ERROR + signal), the next ones do not; a new next
    run time that is overdue again is a new episode."""
    _store_late_job("late", 5)
    with caplog.at_level("ERROR", logger="django_apscheduler.overdue"):
        assert [o.job_id for o in overdue.report_overdue()] == ["late"]
        assert overdue.report_overdue() == []
        assert overdue.report_overdue() == []
    executions.recorder.flush(timeout=30)
    assert [(k["job_id"], k["execution"]) for k in overdue_signals] == [("late", None)]
    assert overdue_signals[0]["late"] > timedelta(minutes=4)
    errors = [r.getMessage() for r in caplog.records if r.name == "django_apscheduler.overdue"]
    assert len(errors) == 1 and "'late' is overdue" in errors[0]
    # The job "ran" and is late again at a later next run time: a new episode.
    client.modify_job("late", next_run_time=timezone.now() - timedelta(minutes=3))
    assert [o.job_id for o in overdue.report_overdue()] == ["late"]
    executions.recorder.flush(timeout=30)
    assert len(overdue_signals) == 2


def test_health_and_admin_show_overdue_jobs_with_no_scheduler_alive(admin_client):
    """No scheduler instance: ``health --no-instance`` fails naming the job; the admin says so."""
    _store_late_job("starved", 10)
    _store_late_job("fine", -10)  # due in ten minutes
    assert not DjangoSchedulerInstance.objects.alive().exists()
    out = StringIO()
    with pytest.raises(CommandError, match=r"overdue beyond their grace time: starved \(6\d\d"):
        call_command("apscheduler", "health", "--no-instance", stdout=out)
    with pytest.raises(CommandError):
        call_command("apscheduler", "health", "--no-instance", "--format", "json", stdout=out)
    report = json.loads(out.getvalue())
    assert [o["id"] for o in report["overdue"]] == ["starved"]

    page = admin_client.get("/admin/django_apscheduler/djangojob/").content.decode()
    rows = {chunk.split("</th>")[0]: chunk for chunk in page.split('<th class="field-id">')[1:]}
    starved = next(text for key, text in rows.items() if "starved" in key)
    fine = next(text for key, text in rows.items() if "fine" in key)

    def overdue_cell(row: str) -> str:
        return row.split('class="field-overdue">')[1].split("</td>")[0]

    assert ">overdue<" in overdue_cell(starved)
    assert "overdue" not in overdue_cell(fine)


# --- three saturated schedulers ------------------------------------------------------


def _env(output: Path) -> dict[str, str]:
    return runapscheduler_env(
        {
            "INSTALLED_APPS": [*settings.INSTALLED_APPS, "tests.observing"],
            "APSCHEDULER_THREADS": 1,
            "APSCHEDULER_LEASE_TIME": 4,
            "APSCHEDULER_HEARTBEAT_INTERVAL": 1,
            "APSCHEDULER_POLL_INTERVAL": 0.5,
            # Only the starved job can be overdue: a busy job that a loaded machine
            # started more than a second late was reported too (CI, SQLite).
            "APSCHEDULER_OVERDUE_AFTER": {"starved": 1, "*": 3600},
        },
        OBSERVING_OUTPUT=str(output),
    )


@pytest.mark.slow
def test_three_saturated_schedulers_report_an_overdue_job_once(tmp_path):
    """Each of 3 schedulers runs a long job on its only thread; a job due now is reported
    overdue once, by one of them, however many rounds they look."""
    output = tmp_path / "signals.jsonl"
    procs, logs = [], []
    for i in range(3):
        log = tmp_path / f"scheduler-{i}.log"
        logs.append(log)
        with open(log, "w") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "django", "runapscheduler"],
                    cwd=ROOT,
                    env=_env(output),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )

    def logs_text() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in logs)

    def lines(name: str) -> list[dict]:
        return [line for line in read_lines(str(output)) if line["signal"] == name]

    try:
        wait_until(lambda: DjangoSchedulerInstance.objects.alive().count() == 3, timeout=120)
        for i in range(3):
            client.add_job(
                "tests.jobs:sleep", "date", run_date=timezone.now(), id=f"busy-{i}", args=[600]
            )
        wait_until(lambda: len({line["pid"] for line in lines("job_started")}) == 3, timeout=120)
        client.add_job(
            "tests.jobs:noop", "interval", hours=1, id="starved", next_run_time=timezone.now()
        )
        wait_until(
            lambda: DjangoJob.objects.filter(id="starved", overdue_reported__isnull=False).exists(),
            timeout=120,
        )
        reported_at = timezone.now()
        # Every scheduler looks again (each reap round heartbeats first): at least two more
        # rounds each after the report.
        reap = timedelta(seconds=4)  # the lease time
        wait_until(
            lambda: (
                DjangoSchedulerInstance.objects.alive()
                .filter(last_heartbeat__gt=reported_at + 2 * reap)
                .count()
                == 3
            ),
            timeout=120,
        )
        starved = DjangoJob.objects.get(id="starved")
        assert starved.next_run_time == starved.overdue_reported  # still not run: all saturated
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(os_signal.SIGKILL)
        for proc in procs:
            proc.wait(timeout=60)

    got = lines("job_overdue")
    assert [line["job_id"] for line in got] == ["starved"], logs_text()
    assert got[0]["late"] > 1 and got[0]["execution"] is None
    assert logs_text().count("Job 'starved' is overdue") == 1, logs_text()
    # runapscheduler's own output has the one line too, from the reporting process.
    (line,) = [x for x in logs_text().splitlines() if x.startswith("Run of starved ")]
    assert ": OVERDUE: not started " in line


def test_a_reported_backlog_costs_the_next_report_one_query(overdue_signals):
    """Overdue episodes already reported are left out by the query: not unpickled, not updated."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for i in range(6):
        _store_late_job(f"late-{i}", 5 + i)
    assert len(overdue.report_overdue()) == 6
    with CaptureQueriesContext(connection) as queries:
        assert overdue.report_overdue() == []
    assert len(queries) == 1, [q["sql"] for q in queries]
    # Still overdue for the admin and the health command, reported or not.
    assert len(overdue.find_overdue()) == 6
    # A new episode of one of them is found and reported.
    client.modify_job("late-2", next_run_time=timezone.now() - timedelta(minutes=3))
    assert [o.job_id for o in overdue.report_overdue()] == ["late-2"]
