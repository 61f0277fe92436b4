"""The admin in a real browser: Playwright driving Debian's Chromium against a live server.

With a real ``manage.py runapscheduler`` process on the test database: a job
created from the form fires there and its run shows on the job's page; a
paused job stops firing; "run now in the scheduler" returns at once and the
scheduler runs the job. A view-only user can change nothing, by clicking or by
forged POSTs; HTML in a job id and in an exception is shown as text, never run.

Chromium is ``/usr/bin/chromium`` (``make test`` installs Debian's package
when it is missing and it runs as root); without it these tests fail, saying
what to install.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection, connections
from django.urls import reverse

from django_apscheduler import client
from django_apscheduler.models import DjangoJob, DjangoJobExecution
from tests import jobs
from tests.helpers import wait_until

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
UTC = timezone.utc
#: Generous bounds for things that must happen (never speed assertions).
WAIT = 120_000  # ms, for the browser
WAIT_S = 120.0

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"The browser tests need Chromium at {CHROMIUM}: `sudo apt-get install chromium` "
            "(make test installs it by itself when run as root)."
        )
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM
    # calls are synchronous all the same.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox"]
            )
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(WAIT)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.js_errors = errors
    yield tab
    context.close()


def submit(page, selector: str) -> None:
    """Click a submit button and wait for the page it loads."""
    with page.expect_navigation():
        page.click(selector)


def log_in(page, username: str, password: str = "pw") -> None:
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    submit(page, "input[type=submit]")
    assert "/admin/login/" not in page.url


@pytest.fixture
def superuser(db) -> User:
    return User.objects.create_superuser("boss", "boss@example.com", "pw")


@pytest.fixture
def scheduler_process(live_server, tmp_path) -> Iterator[subprocess.Popen]:
    """A real ``manage.py runapscheduler`` on the test database, stopped with SIGINT after."""
    env = dict(os.environ)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["DJANGO_APSCHEDULER_TEST_DB_NAME"] = connection.settings_dict["NAME"]
    env["DJANGO_APSCHEDULER_TEST_SETTINGS"] = json.dumps(
        {"APSCHEDULER_POLL_INTERVAL": 0.5, "APSCHEDULER_HEARTBEAT_INTERVAL": 1}
    )
    log = tmp_path / "runapscheduler.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "runapscheduler"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        print(log.read_text())


def outside_the_loop(func, *args, **kwargs):
    """Call ``func`` on a thread of its own, then close that thread's database connections.

    Playwright's sync API runs an event loop in the test's thread, so the job
    store would do the work on its worker thread, whose connection stays open
    and keeps PostgreSQL from dropping the test database.
    """
    result: list = []

    def call() -> None:
        try:
            result.append(func(*args, **kwargs))
        finally:
            connections.close_all()

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    assert result, f"{func} failed (see the output above)"
    return result[0]


def runs(job_id: str, **filters) -> list[DjangoJobExecution]:
    return list(DjangoJobExecution.objects.filter(job_id=job_id, **filters).order_by("run_time"))


def choose_action(page, job_id: str, action: str, note: str | None = None) -> None:
    page.goto("/admin/django_apscheduler/djangojob/")
    page.check(f'input[name="_selected_action"][value="{job_id}"]')
    page.select_option('select[name="action"]', action)
    if note is not None:
        page.fill('input[name="note"]', note)
    submit(page, 'button[name="index"]')


@pytest.mark.slow  # a real scheduler process; the other browser tests run in every CI combination
def test_create_fire_pause_and_run_in_the_scheduler(page, superuser, scheduler_process, tmp_path):
    log_in(page, "boss")

    # Create a job from the form, previewing its next 5 fire times first.
    page.goto("/admin/django_apscheduler/djangojob/add/")
    page.fill("#id_id", "browser-job")
    page.select_option("#id_func", "tests.jobs:admin_record")
    page.select_option("#id_trigger", "interval")
    page.fill("#id_seconds", "2")
    page.fill("#id_timezone", "UTC")
    page.fill("#id_kwargs", '{"tag": "browser"}')
    submit(page, 'input[name="_preview"]')
    assert page.locator(".errorlist").count() == 0, page.content()
    assert page.locator("ol.dja-fire-times li").count() == 5
    assert page.locator(".dja-preview-schedule").inner_text() == "every 2 seconds"
    assert not DjangoJob.objects.filter(id="browser-job").exists()
    submit(page, 'input[name="_save"]')
    assert page.locator(".messagelist .success").count() == 1
    assert outside_the_loop(client.get_job, "browser-job").kwargs == {"tag": "browser"}

    # It fires in the runapscheduler process; the run shows on the job's page, with the chart.
    wait_until(lambda: runs("browser-job", status=DjangoJobExecution.SUCCESS), WAIT_S)
    page.goto(reverse("admin:django_apscheduler_djangojob_change", args=["browser-job"]))
    assert page.locator("tr.dja-run", has_text="Executed").count() >= 1
    assert page.locator("svg.dja-chart rect.dja-bar.dja-success").count() >= 1
    assert page.locator("svg.dja-chart").get_attribute("aria-label").startswith("Duration of")

    # Pause it with a note: the note shows, and it stops firing.
    choose_action(page, "browser-job", "pause_jobs", note="paused from the browser")
    assert "Paused job browser-job." in page.locator(".messagelist").inner_text()
    paused_at = datetime.now(UTC)
    row = page.locator("#result_list tr", has_text="browser-job")
    assert "paused from the browser" in row.locator(".field-state").inner_text()
    # A second job shows the scheduler keeps dispatching for longer than two intervals.
    outside_the_loop(client.add_job, jobs.noop, "interval", seconds=1, id="heartbeat")
    wait_until(lambda: runs("heartbeat", run_time__gt=paused_at + timedelta(seconds=5)), WAIT_S)
    assert runs("browser-job", run_time__gt=paused_at) == []

    # Run now in the scheduler: the page returns at once while the job still runs.
    marker = tmp_path / "release"
    outside_the_loop(
        client.add_job,
        jobs.wait_for_file,
        "interval",
        hours=1,
        id="on-demand",
        kwargs={"path": str(marker)},
    )
    regular = DjangoJob.objects.get(id="on-demand").next_run_time
    choose_action(page, "on-demand", "run_in_scheduler")
    assert "Job on-demand runs now in the scheduler." in page.locator(".messagelist").inner_text()
    wait_until(lambda: runs("on-demand", status=DjangoJobExecution.SENT), WAIT_S)
    marker.write_text("go")
    [done] = wait_until(lambda: runs("on-demand", status=DjangoJobExecution.SUCCESS), WAIT_S)
    assert done.run_time < regular
    next_run = DjangoJob.objects.get(id="on-demand").next_run_time
    assert next_run > done.run_time + timedelta(minutes=59)  # the schedule goes on
    assert page.js_errors == []


def test_view_only_user_cannot_change_anything(page, live_server):
    outside_the_loop(client.add_job, jobs.admin_record, "interval", minutes=30, id="watched")
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="django_apscheduler", codename__startswith="view_"
        )
    )
    before = list(DjangoJob.objects.values())
    log_in(page, "viewer")

    page.goto("/admin/django_apscheduler/djangojob/")
    assert page.locator("text=watched").count() >= 1
    assert page.locator('select[name="action"]').count() == 0
    assert page.locator("a.addlink").count() == 0
    page.goto(reverse("admin:django_apscheduler_djangojob_change", args=["watched"]))
    assert page.locator('input[name="_save"]').count() == 0
    assert page.locator('input[name="_preview"]').count() == 0
    assert page.locator("a.deletelink").count() == 0
    assert page.locator("form.dja-operation").count() == 0
    page.goto("/admin/django_apscheduler/djangojob/dashboard/")
    assert page.locator("svg.dja-chart").count() == 1

    forged = page.evaluate(
        """async (posts) => {
            const token = document.cookie.split('; ')
                .find((c) => c.startsWith('csrftoken=')).split('=')[1];
            const statuses = [];
            for (const [url, body] of posts) {
                const response = await fetch(url, {
                    method: 'POST', redirect: 'manual',
                    headers: {'Content-Type': 'application/x-www-form-urlencoded',
                              'X-CSRFToken': token},
                    body});
                statuses.push(response.status);
            }
            return statuses;
        }""",
        [
            [
                "/admin/django_apscheduler/djangojob/",
                f"action={action}&_selected_action=watched&index=0&post=yes&note=x",
            ]
            for action in (
                "run_selected_jobs",
                "run_in_scheduler",
                "pause_jobs",
                "resume_jobs",
                "delete_selected",
            )
        ]
        + [
            [
                "/admin/django_apscheduler/djangojob/add/",
                "id=forged&func=tests.jobs%3Aadmin_record&trigger=interval&seconds=5",
            ],
            [
                reverse("admin:django_apscheduler_djangojob_change", args=["watched"]),
                "func=tests.jobs%3Aadmin_fail&trigger=interval&seconds=5",
            ],
            [reverse("admin:django_apscheduler_djangojob_delete", args=["watched"]), "post=yes"],
            [
                reverse("admin:django_apscheduler_djangojob_operate", args=["watched", "pause"]),
                "note=forged",
            ],
        ],
    )
    assert forged[-4:] == [403, 403, 403, 403]
    assert list(DjangoJob.objects.values()) == before
    assert not DjangoJobExecution.objects.exists()
    assert page.js_errors == []


def test_html_in_a_job_id_and_an_exception_is_shown_as_text(page, superuser):
    nasty = "<script>window.__xss=1</script>"
    outside_the_loop(client.add_job, jobs.admin_fail, "interval", hours=1, id=nasty)
    DjangoJobExecution.objects.create(
        job_id=nasty,
        status=DjangoJobExecution.ERROR,
        run_time=datetime.now(UTC) - timedelta(minutes=1),
        duration=1,
        exception='<img src=x onerror="window.__xss=2">',
        traceback='Traceback:\n<svg onload="window.__xss=3">',
    )
    execution = DjangoJobExecution.objects.get(job_id=nasty)
    log_in(page, "boss")

    for url in [
        "/admin/django_apscheduler/djangojob/",
        reverse("admin:django_apscheduler_djangojob_change", args=[nasty]),
        "/admin/django_apscheduler/djangojob/dashboard/",
        "/admin/django_apscheduler/djangojobexecution/",
        reverse("admin:django_apscheduler_djangojobexecution_change", args=[execution.pk]),
    ]:
        page.goto(url)
        assert page.evaluate("typeof window.__xss") == "undefined", url
        assert page.locator("img[src=x]").count() == 0, url
    page.goto(reverse("admin:django_apscheduler_djangojob_change", args=[nasty]))
    assert page.get_by_text('<img src=x onerror="window.__xss=2">').count() >= 1
    page.goto("/admin/django_apscheduler/djangojob/")
    assert page.get_by_text(nasty).count() >= 1
    assert page.js_errors == []


def test_chart_colours_follow_the_admins_dark_mode(browser, live_server, superuser):
    """Bars take lighter shades in dark mode, from the stylesheet (no inline style)."""
    outside_the_loop(client.add_job, jobs.admin_record, "interval", hours=1, id="shaded")
    DjangoJobExecution.objects.create(
        job_id="shaded",
        status=DjangoJobExecution.SUCCESS,
        run_time=datetime.now(UTC) - timedelta(minutes=1),
        duration=2,
    )
    fills = {}
    for scheme in ("light", "dark"):
        context = browser.new_context(base_url=live_server.url, color_scheme=scheme)
        context.set_default_timeout(WAIT)
        tab = context.new_page()
        log_in(tab, "boss")
        tab.goto(reverse("admin:django_apscheduler_djangojob_change", args=["shaded"]))
        bar = tab.locator("svg.dja-chart rect.dja-bar.dja-success").first
        fills[scheme] = bar.evaluate("(e) => getComputedStyle(e).fill")
        assert bar.get_attribute("style") is None
        context.close()
    assert fills == {"light": "rgb(46, 125, 50)", "dark": "rgb(102, 187, 106)"}
