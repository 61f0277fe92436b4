"""Fuzzed job rows written straight into the table while 2 real scheduler processes run.

Hypothesis draws damaged rows: truncated, bit-flipped and oversized states,
another class's pickle (planted ``__reduce__`` payloads among them), NULL and
garbage columns, and swapped rows (another row's valid state and signature).
They are written with the ORM, as anyone with table access could, while two
scheduler processes dispatch a job every second. No process dies, the
payloads run nowhere, the ticking job keeps firing (each fire once), and each
damaged row is reported with its id: at most once by each process, and once
by ``apscheduler health --jobs``.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import string
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from pathlib import Path
from typing import Any

import pytest
from apscheduler.triggers.interval import IntervalTrigger
from django.db import connection
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from django_apscheduler import signing
from django_apscheduler.models import DjangoJob
from tests.helpers import wait_until
from tests.scheduler_process import read_lines
from tests.test_multiprocess import SchedulerProcesses
from tests.test_signing import Planted, good_state

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

UTC = dt_timezone.utc
ROOT = Path(__file__).resolve().parent.parent

#: Bounds for CI: Hypothesis examples (batches of rows) and rows per batch.
EXAMPLES = 6
MOST_ROWS = 6
#: How long the scheduler processes run at most; they are stopped when the test is done.
RUN_SECONDS = 240


def _flip(state: bytes, bit: int) -> bytes:
    index = bit // 8 % len(state)
    return state[:index] + bytes([state[index] ^ (1 << bit % 8)]) + state[index + 1 :]


garbage_text = st.text(alphabet=string.ascii_letters + string.digits + " :-_/", max_size=64)

#: What a damaged row's state (and signature) is made of.
damage = st.one_of(
    st.tuples(st.just("truncated"), st.integers(0, 10_000)),
    st.tuples(st.just("bit-flipped"), st.integers(0, 80_000)),
    st.tuples(st.just("oversized"), st.integers(100_000, 1_500_000)),
    st.tuples(st.just("other class"), st.sampled_from(["payload", "trigger", "datetime", "list"])),
    st.tuples(st.just("swapped"), st.just(0)),
)

#: The other columns: NULL and garbage values.
columns = st.fixed_dictionaries(
    {
        "signature": st.one_of(st.just("keep"), st.none(), st.just(""), garbage_text),
        # Mostly due, so that the schedulers claim (and report) them.
        "next_run_time": st.tuples(
            st.sampled_from(["due", "due", "due", "paused", "future"]), st.integers(0, 3600)
        ),
        "version": st.one_of(st.none(), st.integers(0, 2**31 - 1)),
        "acquired_by": st.one_of(st.none(), garbage_text.filter(bool)),
    }
)

rows_strategy = st.lists(st.tuples(damage, columns), min_size=1, max_size=MOST_ROWS)

_DUE = {"signature": "keep", "next_run_time": ("due", 5), "version": None, "acquired_by": None}
#: One row of every kind, all due, tried first (Hypothesis's explicit phase).
EVERY_KIND = [
    (("truncated", 40), _DUE),
    (("bit-flipped", 1234), _DUE),
    (("oversized", 1_000_000), _DUE),
    (("other class", "payload"), _DUE),
    (("other class", "trigger"), _DUE),
    (("swapped", 0), _DUE),
    (("bit-flipped", 7), {**_DUE, "signature": None, "version": 2**31 - 1}),
    (("truncated", 3), {**_DUE, "signature": "not a signature", "acquired_by": "ghost:1:x"}),
]


def _state_and_signature(job_id: str, kind: str, arg: Any, marker: Path) -> tuple[bytes, Any]:
    """A damaged state and the signature that comes with it before the column fuzz."""
    good = good_state(job_id, datetime.now(UTC))
    signature = signing.sign(job_id, good)
    if kind == "truncated":
        return good[: 1 + arg % (len(good) - 1)], signature  # empty: a finished record
    if kind == "bit-flipped":
        return _flip(good, arg), signature
    if kind == "oversized":
        return good + random.Random(arg).randbytes(arg), signature
    if kind == "swapped":
        other = good_state("someone-else", datetime.now(UTC))
        return other, signing.sign("someone-else", other)
    # Another class's pickle: a payload is never signed (an attacker cannot);
    # the others are signed, as a bug of ours might write them.
    if arg == "payload":
        return pickle.dumps({"version": 1, "func": Planted(str(marker))}), None
    value = {
        "trigger": IntervalTrigger(seconds=5, timezone="UTC"),
        "datetime": datetime(2030, 1, 1, tzinfo=UTC),
        "list": [1, 2, 3],
    }[arg]
    state = pickle.dumps(value)
    return state, signing.sign(job_id, state)


def _write(job_id: str, kind: str, arg: Any, cols: dict[str, Any], marker: Path) -> bool:
    """Write one damaged row; True if schedulers will claim it (due, not held)."""
    state, signature = _state_and_signature(job_id, kind, arg, marker)
    if cols["signature"] != "keep":
        signature = cols["signature"]
    when, seconds = cols["next_run_time"]
    now = datetime.now(UTC)
    next_run_time = {
        "due": now - timedelta(seconds=seconds),
        "paused": None,
        "future": now + timedelta(days=1, seconds=seconds),
    }[when]
    DjangoJob.objects.create(
        id=job_id,
        next_run_time=next_run_time,
        job_state=state,
        job_signature=signature,
        version=cols["version"],
        acquired_by=cols["acquired_by"],
        acquired_until=None if cols["acquired_by"] is None else now - timedelta(hours=1),
    )
    # A signed state that is another class's pickle is restorable by signature
    # but not as a job: it is broken too, reported as such.
    return when == "due"


def _reports(processes: SchedulerProcesses, job_id: str) -> list[int]:
    """How many times each process's log reports ``job_id`` as skipped."""
    counts = []
    for output in processes.outputs:
        lines = output.read_text().splitlines()
        counts.append(sum(f"Job {job_id!r}" in line and "skipped" in line for line in lines))
    return counts


def _health() -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["DJANGO_APSCHEDULER_TEST_DB_NAME"] = connection.settings_dict["NAME"]
    env.pop("DJANGO_APSCHEDULER_TEST_SETTINGS", None)
    return subprocess.run(
        [sys.executable, "-m", "django", "apscheduler", "health", "--jobs", "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_fuzzed_rows_never_run_and_never_stop_two_schedulers(tmp_path):
    marker = tmp_path / "payload-ran"
    processes = SchedulerProcesses(tmp_path)
    processes.settings["APSCHEDULER_POLL_INTERVAL"] = 0.5
    tick = {"id": "tick", "trigger": "interval", "seconds": 1, "start": None}
    tick["misfire_grace_time"] = 3600
    try:
        start, until = processes.start_together([{"jobs": [tick]}] * 2, seconds=RUN_SECONDS)
        written: list[str] = []
        dispatched: list[str] = []
        batch = iter(range(10**6))

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(rows=rows_strategy)
        @example(rows=EVERY_KIND)
        def one_batch(rows: list[tuple[tuple[str, Any], dict[str, Any]]]) -> None:
            number = next(batch)
            due = []
            for index, ((kind, arg), cols) in enumerate(rows):
                job_id = f"fuzz-{number}-{index}-{kind.replace(' ', '-')}"
                if _write(job_id, kind, arg, cols, marker):
                    due.append(job_id)
                written.append(job_id)
            # Each due row is reported by a scheduler (the first to claim it).
            for job_id in due:
                wait_until(lambda job_id=job_id: any(_reports(processes, job_id)), timeout=60)
            dispatched.extend(due)
            alive = [proc.poll() is None for proc in processes.procs]
            assert all(alive), f"a scheduler process died:\n{processes.log()}"

        one_batch()
        # The ticking job kept firing after the last damaged row was written.
        last_written = time.time()
        wait_until(
            lambda: (
                sum(
                    e["job"] == "tick" and min(e["run_times"]) > last_written
                    for e in processes.submitted()
                )
                >= 3
            ),
            timeout=60,
        )
        probe = _health()
        assert all(proc.poll() is None for proc in processes.procs), processes.log()
    finally:
        processes.kill_all()

    assert not marker.exists(), "a planted payload was executed"
    assert not processes.problems(), "\n".join(processes.problems())
    # Each damaged row reported at most once per process, and the due ones at least once.
    for job_id in written:
        counts = _reports(processes, job_id)
        assert all(n <= 1 for n in counts), (job_id, counts)
        if job_id in dispatched:
            assert sum(counts) >= 1, job_id
    # Every fire of the ticking job since the start was submitted once, none lost.
    fires = Counter(
        rt for e in read_lines(str(processes.events)) if e["job"] == "tick" for rt in e["run_times"]
    )
    assert fires and max(fires.values()) == 1, [rt for rt, n in fires.items() if n > 1]
    first, last = min(fires), max(fires)
    assert sorted(fires) == [float(t) for t in range(int(first), int(last) + 1)]
    # The health probe names every damaged row once, as broken.
    report = json.loads(probe.stdout)
    # ("tick" is named "__main__:noop" by the scheduler processes, which run as
    # `python -m`; the probe cannot import that reference: not a damaged row.)
    broken = Counter(row["id"] for row in report["broken"] if row["id"] != "tick")
    assert set(broken) == set(written), report["broken"]
    assert max(broken.values()) == 1, report["broken"]
