"""Issue 9, defect 9: claims follow free capacity, with real scheduler processes.

A scheduler whose threads are all busy must leave due jobs to a scheduler
with idle threads instead of claiming them and letting them wait (and end
"Missed!") behind its long runs. The processes are ``tests/scheduler_process``
(see ``tests/test_multiprocess.py``).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from django.db import connection

from django_apscheduler import client
from tests.helpers import wait_until
from tests.scheduler_process import read_lines
from tests.test_multiprocess import SchedulerProcesses

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

UTC = timezone.utc


@pytest.fixture
def processes(tmp_path):
    procs = SchedulerProcesses(tmp_path)
    yield procs
    procs.kill_all()


def _starts(path) -> list[dict]:
    return [r for r in read_lines(str(path)) if r["event"] == "start"]


def test_saturated_scheduler_leaves_due_jobs_to_an_idle_one(processes, tmp_path):
    now = time.time()
    until = now + 90
    long_runs, short_runs = tmp_path / "long.jsonl", tmp_path / "short.jsonl"
    long_jobs = [
        {
            "id": f"long-{i}",
            "trigger": "date",
            "run_date": now,
            "func": "run_until",
            "args": [str(long_runs), until - 10],
        }
        for i in range(2)
    ]
    busy = processes.start(
        {"threads": 2, "until": until, "jobs": long_jobs},
        settings={"APSCHEDULER_POLL_INTERVAL": 0.2},
    )
    wait_until(lambda: len(_starts(long_runs)) == 2, timeout=60)
    assert {r["pid"] for r in _starts(long_runs)} == {busy}

    due = datetime.now(UTC)
    for i in range(12):
        client.add_job(
            "tests.scheduler_process:log_run",
            "date",
            run_date=due,
            id=f"short-{i:02d}",
            args=[str(short_runs)],
            misfire_grace_time=15,
        )
    # The busy scheduler sees the new jobs within its 0.2 s poll (at once on
    # PostgreSQL), well before the idle one has started: it must not take them.
    time.sleep(1)
    idle = processes.start({"threads": 10, "until": until, "jobs": []})

    wait_until(lambda: len(_starts(short_runs)) == 12, timeout=40)
    pids = [r["pid"] for r in _starts(short_runs)]
    assert set(pids) == {idle}, f"short jobs ran in {pids} (busy {busy}, idle {idle})"
    wait_until(
        lambda: (
            len([e for e in read_lines(str(processes.events)) if e["job"].startswith("short")])
            >= 12
        )
    )
    events = read_lines(str(processes.events))
    refused = [e for e in events if e["job"].startswith("short") and e["code"] != "submitted"]
    assert refused == []
    submitted = [e for e in events if e["job"].startswith("short")]
    assert sorted(e["job"] for e in submitted) == [f"short-{i:02d}" for i in range(12)]
    assert {e["pid"] for e in submitted} == {idle}
    assert not processes.problems(), processes.log()
    print(f"\n{connection.vendor}: 12 due jobs ran in the idle process while the busy one ran 2")
