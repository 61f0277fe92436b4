"""The example project under the built-in ``runapscheduler`` command, run as users run it.

The example always uses SQLite (a throwaway file per test), whatever backend
the suite runs on, so these tests run only in the SQLite run of the suite:
on PostgreSQL and MariaDB they would repeat the same thing.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3",
        reason="the example project runs on SQLite; covered by the sqlite run",
    ),
]

# What the demo job prints once an earlier run of it is in the log.
LOGGED_RUN = re.compile(r"^demo_job: hello at .*, [1-9]\d* earlier runs logged\)$", re.MULTILINE)
JOB_OUTPUT = "demo_job: hello at "
SHUTDOWN_MESSAGE = "Scheduler stopped."


def _env(db_path: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "EXAMPLE_", "PYTEST_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="example.settings",
        EXAMPLE_DB_PATH=str(db_path),
        PYTHONUNBUFFERED="1",
    )
    return env


def _default_sigint() -> None:
    # A process started in the background by a non-interactive shell inherits an
    # ignored SIGINT; give the command Python's usual Ctrl-C behaviour back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _manage(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


@pytest.fixture
def example_db(tmp_path: Path) -> Path:
    """A freshly migrated example database."""
    db_path = tmp_path / "example.sqlite3"
    done = subprocess.run(
        _manage("migrate", "--no-input"),
        cwd=ROOT,
        env=_env(db_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return db_path


def _logged_runs(db_path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(
            "SELECT job_id, status FROM django_apscheduler_djangojobexecution"
        ).fetchall()


def _stored_jobs(db_path: Path) -> set[str]:
    with sqlite3.connect(db_path) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM django_apscheduler_djangojob")}


def test_runapscheduler_runs_and_logs_the_demo_job(example_db: Path):
    # The demo job fires every 10 s on the clock, so 25 s always include a run.
    done = subprocess.run(
        _manage("runapscheduler", "--seconds", "25"),
        cwd=ROOT,
        env=_env(example_db),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
        preexec_fn=_default_sigint,
    )
    output = done.stdout
    assert done.returncode == 0, output
    assert JOB_OUTPUT in output, output
    assert LOGGED_RUN.search(output), output
    assert "Traceback" not in output, output
    assert output.rstrip().endswith(SHUTDOWN_MESSAGE), output

    assert _stored_jobs(example_db) == {"demo_job"}  # declared in example/demo/jobs.py
    assert ("demo_job", "Executed") in _logged_runs(example_db)


def test_runapscheduler_stops_cleanly_on_ctrl_c(example_db: Path):
    proc = subprocess.Popen(
        _manage("runapscheduler"),
        cwd=ROOT,
        env=_env(example_db),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_default_sigint,
    )
    lines: list[str] = []
    logged = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if LOGGED_RUN.search(line):
                logged.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert logged.wait(timeout=120), "no logged run within 120 s:\n" + "".join(lines)
        proc.send_signal(signal.SIGINT)
        returncode = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    output = "".join(lines)

    assert returncode == 0, output
    assert "Stopping: no new fires" in output, output
    assert "Traceback" not in output, output
    assert output.rstrip().endswith(SHUTDOWN_MESSAGE), output
    assert ("demo_job", "Executed") in _logged_runs(example_db)
