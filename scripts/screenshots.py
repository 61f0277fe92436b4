"""Regenerate docs/screenshots/ from a seeded example database (``make screenshots``).

Builds a throwaway SQLite database for the example project, seeds it (jobs
added at run time and declared in code, a paused job with its note, an
overdue job, a day of runs with successes, failures and misses, a live
scheduler instance), serves the admin with ``manage.py runserver`` and takes
the screenshots with the browser the tests use: Playwright driving Debian's
Chromium at /usr/bin/chromium.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed() -> None:
    """Jobs, runs and a scheduler instance, as a few busy days would leave them."""
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.utils import timezone

    call_command("migrate", verbosity=0)
    from django_apscheduler import client, console, declared
    from django_apscheduler.jobstores import DjangoJobStore
    from django_apscheduler.models import DjangoJobExecution, DjangoSchedulerInstance
    from example.demo import jobs

    User.objects.create_superuser("admin", "admin@example.com", "admin")
    from apscheduler.schedulers.background import BackgroundScheduler

    syncing = BackgroundScheduler(timezone="UTC")
    syncing.add_jobstore(DjangoJobStore(), "default")
    syncing.start(paused=True)
    declared.sync(syncing)  # demo_job, declared in example/demo/jobs.py
    syncing.shutdown(wait=False)

    client.add_job(
        jobs.send_report,
        "cron",
        hour=3,
        day_of_week="mon-fri",
        timezone="Europe/Berlin",
        id="daily-report",
        kwargs={"recipient": "ops@example.com"},
    )
    client.add_job(jobs.refresh_cache, "interval", minutes=15, id="refresh-cache")
    client.add_job(
        jobs.refresh_cache, "interval", hours=1, id="refresh-search", kwargs={"section": "search"}
    )
    client.add_job(
        jobs.send_report,
        "date",
        run_date=timezone.now() + timedelta(days=23),
        id="year-end-report",
        kwargs={"recipient": "board@example.com"},
    )
    client.add_job(jobs.refresh_cache, "cron", minute="*/5", id="sync-inventory")
    console.pause("refresh-search", "search cluster upgrade until Friday (ticket OPS-1423)")
    # No scheduler runs here: one job left overdue, the declared one's next fire ahead.
    client.modify_job("sync-inventory", next_run_time=timezone.now() - timedelta(minutes=42))
    client.modify_job("demo_job", next_run_time=timezone.now() + timedelta(minutes=3))

    now = timezone.now()
    rng = random.Random(12)
    rows = []
    plans = [
        ("demo_job", 10, 0.02, 0.4),
        ("refresh-cache", 15 * 60, 0.1, 8.0),
        ("sync-inventory", 5 * 60, 0.25, 3.0),
        ("daily-report", 3 * 3600, 0.05, 40.0),
    ]
    for job_id, every, failure_rate, typical in plans:
        count = int(24 * 3600 / every)
        for i in range(count):
            run_time = now - timedelta(seconds=every * (i + 1))
            roll = rng.random()
            if roll < failure_rate:
                status, exception = (
                    DjangoJobExecution.ERROR,
                    "TimeoutError: upstream did not answer",
                )
            elif roll < failure_rate + 0.02:
                status, exception = DjangoJobExecution.MISSED, "Run time was missed!"
            else:
                status, exception = DjangoJobExecution.SUCCESS, None
            duration = None
            if status != DjangoJobExecution.MISSED:
                duration = Decimal(str(round(typical * rng.uniform(0.4, 1.8), 2)))
            rows.append(
                DjangoJobExecution(
                    job_id=job_id,
                    status=status,
                    run_time=run_time,
                    duration=duration,
                    exception=exception,
                    traceback=(
                        'Traceback (most recent call last):\n  File "example/demo/jobs.py", '
                        "line 42, in refresh_cache\nTimeoutError: upstream did not answer\n"
                        if exception and status == DjangoJobExecution.ERROR
                        else None
                    ),
                    instance="web-1:4242:6f1c",
                )
            )
    DjangoJobExecution.objects.bulk_create(rows)
    DjangoSchedulerInstance.objects.create(
        id="web-1:4242:6f1c",
        host="web-1",
        pid=4242,
        started=now - timedelta(days=2),
        last_heartbeat=now,
    )
    DjangoSchedulerInstance.objects.create(
        id="worker-2:977:a03e",
        host="worker-2",
        pid=977,
        started=now - timedelta(hours=5),
        last_heartbeat=now - timedelta(seconds=3),
    )


def shoot(base: str, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    made = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 900}, base_url=base)
        # The admin's navigation sidebar closed: room for the jobs list's columns.
        page.add_init_script("localStorage.setItem('django.admin.navSidebarIsOpen', 'false')")
        page.goto("/admin/login/?next=/admin/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", "admin")
        with page.expect_navigation():
            page.click("input[type=submit]")

        def take(name: str, url: str | None = None, full_page: bool = True) -> None:
            if url is not None:
                page.goto(url)
            path = out / name
            page.screenshot(path=str(path), full_page=full_page)
            made.append(path)

        take("admin-jobs.png", "/admin/django_apscheduler/djangojob/")
        take("admin-job.png", "/admin/django_apscheduler/djangojob/demo_job/change/")
        take("admin-dashboard.png", "/admin/django_apscheduler/djangojob/dashboard/")
        take("admin-executions.png", "/admin/django_apscheduler/djangojobexecution/", False)
        page.goto("/admin/django_apscheduler/djangojob/add/")
        page.fill("#id_id", "weekly-digest")
        page.select_option("#id_func", "example.demo.jobs:send_report")
        page.select_option("#id_trigger", "cron")
        page.fill("#id_timezone", "Europe/Berlin")
        page.fill("#id_day_of_week", "mon")
        page.fill("#id_hour", "7")
        page.fill("#id_minute", "30")
        page.fill("#id_kwargs", '{"recipient": "team@example.com"}')
        with page.expect_navigation():
            page.click('input[name="_preview"]')
        take("admin-job-form.png")
        browser.close()
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        print(f"error: {CHROMIUM} is missing: sudo apt-get install chromium", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
        env.update(
            DJANGO_SETTINGS_MODULE="example.settings",
            EXAMPLE_DB_PATH=str(Path(tmp) / "screenshots.sqlite3"),
            APSCHEDULER_AUTOSTART="0",
        )
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        seed()
        port = _free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "manage.py"),
                "runserver",
                "--noreload",
                f"127.0.0.1:{port}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(base + "/admin/login/", timeout=5)
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        print("error: the development server did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.2)
            for path in shoot(base, args.out):
                print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
