"""``django_apscheduler.signals``: each one received exactly once per event, in the process where
it happens; a receiver that raises is logged and disturbs nothing.

The first tests run a scheduler in this process; the last one runs three
``runapscheduler`` processes with the ``tests.observing`` app, whose receivers
write every signal they get to a file, and compares that file with the log.
"""

from __future__ import annotations

import logging
import os
import signal as os_signal
import subprocess
import sys
import threading
from collections import Counter
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from django_apscheduler import client, executions, run_now, signals, util
from django_apscheduler.models import DjangoJob, DjangoJobExecution, DjangoSchedulerInstance
from tests.helpers import runapscheduler_env, wait_until
from tests.scheduler_process import read_lines

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


class Received:
    """Receivers of every signal, noting what each one got."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self._receivers = []
        for name, signal in signals.ALL.items():

            def receive(sender, _name=name, **kwargs):
                with self._lock:
                    self.events.append((_name, {"sender": sender, **kwargs}))

            signal.connect(receive, weak=False)
            self._receivers.append((signal, receive))

    def disconnect(self) -> None:
        for signal, receive in self._receivers:
            signal.disconnect(receive)

    def of(self, name: str, job_id: str | None = None) -> list[dict]:
        with self._lock:
            return [k for n, k in self.events if n == name and job_id in (None, k["job_id"])]


@pytest.fixture
def received():
    watcher = Received()
    yield watcher
    watcher.disconnect()


def _final(job_id: str) -> bool:
    return (
        DjangoJobExecution.objects.filter(job_id=job_id)
        .exclude(status=DjangoJobExecution.SENT)
        .exists()
    )


def test_each_run_signal_once_with_its_execution_row(make_scheduler, received):
    """A success, a failure and a missed run: each signal once, with job, run time and row."""
    scheduler = make_scheduler()
    now = timezone.now()
    scheduler.add_job("tests.jobs:noop", "date", run_date=now, id="ok")
    scheduler.add_job("tests.jobs:fail", "date", run_date=now, id="bad", args=["kaput"])
    scheduler.add_job(
        "tests.jobs:noop",
        "date",
        run_date=now - timedelta(hours=1),
        id="late",
        misfire_grace_time=1,
    )
    wait_until(lambda: received.of("job_succeeded") and received.of("job_failed"), timeout=60)
    wait_until(lambda: received.of("job_missed"), timeout=60)
    executions.recorder.flush(timeout=30)

    ok_row = DjangoJobExecution.objects.get(job_id="ok")
    bad_row = DjangoJobExecution.objects.get(job_id="bad")
    late_row = DjangoJobExecution.objects.get(job_id="late")
    assert (ok_row.status, bad_row.status, late_row.status) == ("Executed", "Error!", "Missed!")

    counts = Counter((name, kwargs["job_id"]) for name, kwargs in received.events)
    assert counts == {
        ("job_submitted", "ok"): 1,
        ("job_started", "ok"): 1,
        ("job_succeeded", "ok"): 1,
        ("job_submitted", "bad"): 1,
        ("job_started", "bad"): 1,
        ("job_failed", "bad"): 1,
        # APScheduler hands a late run to the executor, which finds it missed.
        ("job_submitted", "late"): 1,
        ("job_missed", "late"): 1,
    }
    for name, kwargs in received.events:
        assert kwargs["sender"] is DjangoJob
        row = {"ok": ok_row, "bad": bad_row, "late": late_row}[kwargs["job_id"]]
        assert kwargs["run_time"] == row.run_time, name
        if name != "job_started":  # a start may come before the submission's row is written
            assert kwargs["execution"] is not None and kwargs["execution"].pk == row.pk, name
    failed = received.of("job_failed")[0]
    assert isinstance(failed["exception"], ValueError)
    assert failed["message"] == "kaput"
    assert "raise ValueError(message)" in failed["traceback"]
    assert received.of("job_succeeded")[0]["duration"] >= 0


def test_job_started_comes_with_its_row_even_before_the_submission_is_logged(
    make_scheduler, received, monkeypatch
):
    """APScheduler may report a submission after the run began; the start's row is there anyway.

    The submission's record is held back here (a starved scheduler thread):
    the start still writes the run's "Started execution" row, with its
    instance, before ``job_started`` is sent.
    """
    from apscheduler.events import EVENT_JOB_SUBMITTED

    records_from_event = executions.records_from_event

    def late_submission(event, started=None):
        if event.code == EVENT_JOB_SUBMITTED:
            wait_until(lambda: received.of("job_started", "held"), timeout=30)
        return records_from_event(event, started)

    monkeypatch.setattr(executions, "records_from_event", late_submission)
    scheduler = make_scheduler()
    # A run that outlasts the recorder's linger: its start is written alone.
    scheduler.add_job("tests.jobs:sleep", "date", run_date=timezone.now(), id="held", args=[1])
    (start,) = wait_until(lambda: received.of("job_started", "held"), timeout=60)
    assert start["execution"] is not None, "job_started came before its run's row"
    assert start["execution"].status == DjangoJobExecution.SENT
    store = scheduler._jobstores["default"]
    assert start["execution"].instance == store.instance_id is not None
    wait_until(lambda: received.of("job_succeeded", "held"), timeout=60)
    executions.recorder.flush(timeout=30)
    (row,) = DjangoJobExecution.objects.filter(job_id="held")
    assert row.pk == start["execution"].pk and row.status == DjangoJobExecution.SUCCESS


def test_signals_are_sent_even_when_the_log_keeps_nothing(make_scheduler, received, settings):
    """``APSCHEDULER_EXECUTION_LOG = "none"``: no row, the signals still come (execution None)."""
    settings.APSCHEDULER_EXECUTION_LOG = "none"
    scheduler = make_scheduler()
    scheduler.add_job("tests.jobs:fail", "date", run_date=timezone.now(), id="bad")
    wait_until(lambda: received.of("job_failed") and received.of("job_submitted"), timeout=60)
    assert received.of("job_failed")[0]["execution"] is None
    assert [k["job_id"] for k in received.of("job_submitted")] == ["bad"]
    assert not DjangoJobExecution.objects.exists()


def test_a_receiver_that_raises_is_logged_and_disturbs_nothing(make_scheduler, received, caplog):
    """The raising receiver is logged with the job's id; other receivers and later runs go on."""

    def broken(sender, **kwargs):
        raise RuntimeError("receiver bug")

    signals.job_succeeded.connect(broken, weak=False)
    try:
        with caplog.at_level(logging.ERROR, logger="django_apscheduler.signals"):
            scheduler = make_scheduler()
            scheduler.add_job("tests.jobs:noop", "interval", seconds=1, id="tick")
            wait_until(lambda: len(received.of("job_succeeded")) >= 2, timeout=60)
    finally:
        signals.job_succeeded.disconnect(broken)
    assert scheduler.running
    messages = [r.getMessage() for r in caplog.records if r.name == "django_apscheduler.signals"]
    assert messages and "'tick'" in messages[0] and "job_succeeded" in messages[0]
    assert any(r.exc_info and "receiver bug" in str(r.exc_info[1]) for r in caplog.records)


def test_interrupted_runs_are_signalled_once_whoever_interrupts(received):
    """Two processes marking the same runs "Interrupted": one signal per run, after the commit."""
    DjangoJob.objects.create(id="long", next_run_time=None, job_state=b"")
    run_time = util.get_django_internal_datetime(timezone.now().replace(microsecond=0))
    row = DjangoJobExecution.objects.create(
        job_id="long", run_time=run_time, status=DjangoJobExecution.SENT, instance="dead:1:x"
    )
    assert DjangoJobExecution.objects.unfinished_of("dead:1:x").interrupt("its scheduler died") == 1
    # The second reaper finds nothing left to interrupt.
    assert DjangoJobExecution.objects.unfinished_of("dead:1:x").interrupt("again") == 0
    (got,) = received.of("job_interrupted")
    assert (got["job_id"], got["reason"], got["execution"].pk) == (
        "long",
        "its scheduler died",
        row.pk,
    )
    assert got["execution"].status == DjangoJobExecution.INTERRUPTED


def test_runs_now_are_signalled_too(received):
    """The admin action and ``apscheduler run`` (run_now): submitted, started, outcome, once."""
    client.add_job("tests.jobs:noop", "interval", hours=1, id="now-ok")
    client.add_job("tests.jobs:fail", "interval", hours=1, id="now-bad")
    run_now.run_jobs_now(["now-ok", "now-bad"], timeout=60)
    counts = Counter((name, kwargs["job_id"]) for name, kwargs in received.events)
    assert counts == {
        ("job_submitted", "now-ok"): 1,
        ("job_started", "now-ok"): 1,
        ("job_succeeded", "now-ok"): 1,
        ("job_submitted", "now-bad"): 1,
        ("job_started", "now-bad"): 1,
        ("job_failed", "now-bad"): 1,
    }
    row = DjangoJobExecution.objects.get(job_id="now-bad")
    (failed,) = received.of("job_failed")
    assert failed["execution"].pk == row.pk and isinstance(failed["exception"], ValueError)


# --- three scheduler processes -------------------------------------------------------


def _env(output: Path) -> dict[str, str]:
    return runapscheduler_env(
        {
            "INSTALLED_APPS": [*settings.INSTALLED_APPS, "tests.observing"],
            "APSCHEDULER_LEASE_TIME": 4,
            "APSCHEDULER_HEARTBEAT_INTERVAL": 1,
            "APSCHEDULER_POLL_INTERVAL": 0.5,
        },
        OBSERVING_OUTPUT=str(output),
    )


@pytest.mark.slow
def test_three_schedulers_each_signal_once_per_event(tmp_path):
    """3 runapscheduler processes: every event's signal is received once, in one process.

    Jobs succeed, fail, are missed, and one is interrupted by killing the
    process that runs it: the others mark it "Interrupted" and one of them
    sends ``job_interrupted``.
    """
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

    try:
        wait_until(lambda: DjangoSchedulerInstance.objects.alive().count() == 3, timeout=120)
        client.add_job("tests.jobs:noop", "interval", seconds=1, id="ok")
        client.add_job("tests.jobs:fail", "interval", seconds=1, id="bad", args=["boom"])
        client.add_job("tests.jobs:sleep", "date", run_date=timezone.now(), id="slow", args=[300])

        def started(job_id: str) -> list[dict]:
            return [
                line
                for line in read_lines(str(output))
                if line["signal"] == "job_started" and line["job_id"] == job_id
            ]

        slow_start = wait_until(lambda: started("slow"), timeout=120)[0]
        victim = slow_start["pid"]
        os.kill(victim, os_signal.SIGKILL)
        wait_until(
            lambda: DjangoJobExecution.objects.filter(
                job_id="slow", status=DjangoJobExecution.INTERRUPTED
            ).exists(),
            timeout=120,
        )
        # Added after the kill, so a survivor reports it.
        client.add_job(
            "tests.jobs:record",
            "date",
            run_date=datetime(2020, 1, 1, tzinfo=dt_timezone.utc),
            id="late",
            misfire_grace_time=1,
        )
        wait_until(
            lambda: (
                DjangoJobExecution.objects.filter(job_id="late", status="Missed!").exists()
                and DjangoJobExecution.objects.filter(job_id="ok", status="Executed").count() >= 5
                and DjangoJobExecution.objects.filter(job_id="bad", status="Error!").count() >= 5
            ),
            timeout=120,
        )
        client.pause_job("ok")
        client.pause_job("bad")
        for proc in procs:
            if proc.pid != victim:
                proc.send_signal(os_signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=120)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    lines = read_lines(str(output))
    keys = Counter((line["signal"], line["job_id"], line["run_time"]) for line in lines)

    def redispatched(key: tuple[str, str, str]) -> bool:
        """The killed process's fire of 'slow', dispatched again by a survivor.

        The documented crash window: a fire submitted but not yet written back
        when its process dies is dispatched again once the claim expires (at
        least once across a crash). A loaded machine can make the kill land in
        it. Only that fire, once from the victim and once after from a survivor.
        """
        signal, job_id, _ = key
        if job_id != "slow" or signal not in ("job_submitted", "job_started"):
            return False
        pids = [
            line["pid"]
            for line in lines
            if (line["signal"], line["job_id"], line["run_time"]) == key
        ]
        return len(pids) == 2 and pids[0] == victim and pids[1] != victim

    twice = [key for key, count in keys.items() if count > 1 and not redispatched(key)]
    assert not twice, f"received more than once: {twice}\n{logs_text()}"

    victim_instances = set(
        DjangoSchedulerInstance.objects.filter(pid=victim).values_list("id", flat=True)
    ) | {
        i
        for i in DjangoJobExecution.objects.values_list("instance", flat=True).distinct()
        if i and f":{victim}:" in i
    }

    received = {(s, j, datetime.fromisoformat(t)) for s, j, t in keys}
    expected = {"Executed": "job_succeeded", "Error!": "job_failed", "Missed!": "job_missed"}
    checked = Counter()
    for row in DjangoJobExecution.objects.all():
        if row.status == DjangoJobExecution.INTERRUPTED:
            assert ("job_interrupted", row.job_id, row.run_time) in received, logs_text()
            checked["job_interrupted"] += 1
            continue
        if row.instance in victim_instances:
            continue  # the killed process may have died between a row and its signal
        assert row.status in expected, f"{row.job_id} {row.status}"
        assert (expected[row.status], row.job_id, row.run_time) in received, (
            f"no {expected[row.status]} for {row.job_id} at {row.run_time}\n{logs_text()}"
        )
        checked[expected[row.status]] += 1
        if row.status != "Missed!":
            for name in ("job_submitted", "job_started"):
                assert (name, row.job_id, row.run_time) in received, (name, row.job_id)
    assert checked["job_succeeded"] >= 1 and checked["job_failed"] >= 1, checked
    assert checked["job_missed"] == 1, checked
    # The killed process's run; on a loaded machine a live instance may be taken for dead
    # too, and its runs marked Interrupted: each of those is signalled once as well.
    assert ("job_interrupted", "slow") in {(s, j) for s, j, _ in received}, logs_text()
    # Signals come from the process that saw the event: runs from more than one process.
    assert len({line["pid"] for line in lines}) >= 2
    assert "Receiver" in logs_text() and "raised; the scheduler goes on" in logs_text()
