"""Prometheus metrics: real scrapes over HTTP, parsed with ``prometheus_client``'s parser, match
the execution log and the database.

One scrape is of the URL view (``django_apscheduler.urls``) served by a live
server, with a scheduler in this process; the other of ``runapscheduler
--metrics-port`` in a process of its own.
"""

from __future__ import annotations

import json
import os
import signal as os_signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.db import connection
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from django_apscheduler import client, executions
from django_apscheduler.models import DjangoJobExecution, DjangoSchedulerInstance
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of the exposition at ``url``: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def runs(samples: dict, job: str, outcome: str) -> float:
    return samples.get(("django_apscheduler_runs_total", (("job", job), ("outcome", outcome))), 0.0)


def logged(job: str, status: str) -> int:
    return DjangoJobExecution.objects.filter(job_id=job, status=status).count()


@pytest.fixture
def web_server():
    """This project served over real HTTP (Django's WSGI application in a thread); its URL."""
    server = make_server("127.0.0.1", 0, get_wsgi_application(), handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # no access log on the test's output
        pass


def test_url_view_scraped_over_http_matches_the_log(web_server, make_scheduler):
    """The view's counters equal the log's rows; histograms count every run; the DB gauges."""
    url = f"{web_server}/scheduler/metrics/"
    scheduler = make_scheduler()
    suffix = os.urandom(3).hex()  # the counters of this process outlive a test
    ok, bad, late = f"ok-{suffix}", f"bad-{suffix}", f"late-{suffix}"
    scheduler.add_job("tests.jobs:noop", "interval", seconds=1, id=ok)
    scheduler.add_job("tests.jobs:fail", "interval", seconds=1, id=bad)
    scheduler.add_job(
        "tests.jobs:noop",
        "date",
        run_date=timezone.now().replace(year=2020),
        id=late,
        misfire_grace_time=1,
    )
    scheduler.add_job("tests.jobs:noop", "interval", hours=1, id=f"paused-{suffix}")
    scheduler.pause_job(f"paused-{suffix}")
    wait_until(lambda: logged(ok, "Executed") >= 3 and logged(bad, "Error!") >= 3, timeout=60)
    scheduler.pause_job(ok)
    scheduler.pause_job(bad)
    executions.recorder.flush(timeout=30)

    def matches() -> dict | None:
        samples = scrape(url)
        wanted = {
            (ok, "executed"): logged(ok, "Executed"),
            (bad, "error"): logged(bad, "Error!"),
            (late, "missed"): logged(late, "Missed!"),
        }
        got = {key: runs(samples, *key) for key in wanted}
        return samples if got == wanted and wanted[(late, "missed")] == 1 else None

    samples = wait_until(matches, timeout=60)
    duration = ("django_apscheduler_run_duration_seconds_count", (("job", ok),))
    lateness = ("django_apscheduler_start_lateness_seconds_count", (("job", ok),))
    assert samples[duration] == logged(ok, "Executed")
    assert samples[lateness] == logged(ok, "Executed")
    assert ("django_apscheduler_start_lateness_seconds_count", (("job", late),)) not in samples
    assert samples[("django_apscheduler_scheduler_instances", ())] == 1
    assert samples[("django_apscheduler_jobs", (("state", "paused"),))] == 3
    assert samples[("django_apscheduler_jobs", (("state", "finished"),))] == 1  # late's record
    assert samples[("django_apscheduler_overdue_jobs", ())] == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_runapscheduler_metrics_port_scraped_over_http_matches_the_log(tmp_path):
    """``runapscheduler --metrics-port``: counters equal the log; instances and overdue jobs
    come from the database (a job paused with a past next run time is not overdue; one far
    behind with no thread free would be, here there are none)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DJANGO_APSCHEDULER_TEST_DB_NAME=str(connection.settings_dict["NAME"]),
        DJANGO_APSCHEDULER_TEST_SETTINGS=json.dumps({"INSTALLED_APPS": settings.INSTALLED_APPS}),
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "scheduler.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "django", "runapscheduler", "--metrics-port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_until(lambda: DjangoSchedulerInstance.objects.alive().exists(), timeout=120)
        client.add_job("tests.jobs:noop", "interval", seconds=1, id="ok")
        client.add_job("tests.jobs:fail", "interval", seconds=1, id="bad")
        wait_until(lambda: logged("ok", "Executed") >= 3 and logged("bad", "Error!") >= 3, 120)
        client.pause_job("ok")
        client.pause_job("bad")

        def matches() -> dict | None:
            samples = scrape(url)
            ok = runs(samples, "ok", "executed") == logged("ok", "Executed")
            bad = runs(samples, "bad", "error") == logged("bad", "Error!")
            return samples if ok and bad else None

        samples = wait_until(matches, timeout=60)
        assert runs(samples, "ok", "executed") >= 3
        assert samples[("django_apscheduler_scheduler_instances", ())] == 1
        assert samples[("django_apscheduler_jobs", (("state", "paused"),))] == 2
        assert samples[("django_apscheduler_overdue_jobs", ())] == 0
        assert samples[("django_apscheduler_run_duration_seconds_count", (("job", "bad"),))] == (
            logged("bad", "Error!")
        )
        assert "Serving Prometheus metrics on port" in log.read_text()
    finally:
        proc.send_signal(os_signal.SIGTERM)
        proc.wait(timeout=120)
    assert proc.returncode == 0, log.read_text()
