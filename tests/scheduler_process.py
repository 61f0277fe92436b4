"""A scheduler process for the multi-process tests, written the way users write theirs.

    python -m tests.scheduler_process '<config as JSON>'

It builds its own ``BlockingScheduler`` on a ``DjangoJobStore``, adds the
configured jobs with ``replace_existing=True`` and starts, exactly like the
``runapscheduler`` command of the 0.7.0 README. A listener appends every
submission (and every refusal or miss) as a JSON line to ``config["events"]``,
so the test can check which process submitted which fire. The process stops
at the epoch time ``config["until"]``, or sooner when the file
``config["stop"]`` appears (the test has seen what it waited for).

With ``config["go"]`` (a path) the process first gets ready (Django set up,
its scheduler built), writes ``<go>.ready-<pid>``, then waits for the test to
write ``go``: a JSON object whose ``start`` is the start of every interval job
without one and whose ``until`` is the end. Several processes then start
their schedule together however long each took to get ready, with no fixed
head start in the test.

With ``config["freeze_in_row_lock"]`` (a path) the process stops itself
(SIGSTOP) inside its first row-locking transaction after that file appears.

Job functions used by the tests live here too; they write what they did to
files, one line per event, so runs in any process can be compared.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

UTC = timezone.utc


# --- job functions -------------------------------------------------------------


def noop() -> None:
    """Does nothing: the storm measures dispatching, not work."""


def log_run(path: str, seconds: float = 0.0) -> None:
    """Append "start" and "end" lines (pid, epoch time) to ``path``, sleeping in between."""
    _append(path, {"event": "start", "pid": os.getpid(), "t": time.time()})
    time.sleep(seconds)
    _append(path, {"event": "end", "pid": os.getpid(), "t": time.time()})


def run_until(path: str, deadline: float, stop: str | None = None) -> None:
    """Note the start, then keep running until the epoch time ``deadline`` (or the file ``stop``)."""
    _append(path, {"event": "start", "pid": os.getpid(), "t": time.time()})
    while time.time() < deadline and not (stop and os.path.exists(stop)):
        time.sleep(0.1)
    _append(path, {"event": "end", "pid": os.getpid(), "t": time.time()})


def hold_gil(path: str, marker: str, deadline: float, stretch: float = 2.0) -> None:
    """Hold the GIL in long stretches (a catastrophic regex) until ``marker`` exists or ``deadline``.

    Like a job stuck in C code that never releases the GIL: the process's
    other threads (heartbeat, dispatch) get a moment only between two
    stretches of ``stretch`` seconds or more. With two seconds, a lease
    renewal, which waits for the GIL after each of its round trips, cannot
    finish within the tests' 4-second lease: the heartbeat has surely stopped.
    (With half-second stretches it sometimes kept up on PostgreSQL and
    MariaDB, and no other process ever saw the claim lapse. On SQLite the
    stalled process holds the database's one write lock for whole stretches,
    so there the test keeps half-second ones.)
    """
    import re

    _append(path, {"event": "start", "pid": os.getpid(), "t": time.time()})
    pattern = re.compile(r"(a+)+b")
    size = 16
    # Calibrate: one match of ``stretch`` seconds or more of this thread's CPU
    # time. Wall time would pick shorter stretches on a loaded machine (where
    # the match is preempted while calibrating), and the heartbeat then kept up.
    # A run that starts once the marker exists (a fire that waited behind the
    # held run) ends at once: calibrating would hold the GIL for seconds more.
    while not os.path.exists(marker):
        began = time.thread_time()
        pattern.match("a" * size)
        if time.thread_time() - began >= stretch or size >= 40:
            break
        size += 1
    while not os.path.exists(marker) and time.time() < deadline:
        pattern.match("a" * size)
    _append(path, {"event": "end", "pid": os.getpid(), "t": time.time()})


def log_fire(path: str, tag: str) -> None:
    """Append the scheduled run time of this fire (read from APScheduler's ``run_job``)."""
    frame = sys._getframe(1)
    while frame is not None and not isinstance(frame.f_locals.get("run_time"), datetime):
        frame = frame.f_back  # type: ignore[assignment]
    run_time = frame.f_locals["run_time"].timestamp() if frame is not None else None
    _append(path, {"tag": tag, "pid": os.getpid(), "run_time": run_time, "t": time.time()})


def _append(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as file:
        file.write(json.dumps(record) + "\n")


def read_lines(path: str) -> list[dict[str, Any]]:
    """The JSON lines written to ``path`` so far (none if it does not exist yet)."""
    try:
        with open(path) as file:
            return [json.loads(line) for line in file if line.endswith("\n")]
    except FileNotFoundError:
        return []


# --- the process ------------------------------------------------------------------


def _epoch(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


def _trigger(spec: dict[str, Any]) -> Any:
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.date import DateTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    kind = spec["trigger"]
    if kind == "interval":
        return IntervalTrigger(
            seconds=spec["seconds"], start_date=_epoch(spec["start"]), timezone="UTC"
        )
    if kind == "cron":
        return CronTrigger(second=spec.get("second", "*"), timezone="UTC")
    if kind == "date":
        return DateTrigger(run_date=_epoch(spec["run_date"]), timezone="UTC")
    raise ValueError(f"unknown trigger {kind!r}")


def _wait_for_go(path: str, timeout: float = 300) -> dict[str, Any]:
    """Say this process is ready, then wait for the test's go file; return what it holds."""
    with open(f"{path}.ready-{os.getpid()}", "w"):
        pass
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"no go file {path} within {timeout} s")
        time.sleep(0.02)
    with open(path) as file:
        return json.load(file)


def _stop_at(scheduler: Any, until: float, stop: str | None) -> None:
    """Shut ``scheduler`` down at the epoch time ``until``, or sooner once the file ``stop`` exists.

    ``shutdown()`` waits for the running jobs, as it does at ``until``.
    """
    while time.time() < until and not (stop and os.path.exists(stop)):
        time.sleep(min(0.1, max(0.0, until - time.time())))
    scheduler.shutdown()


def _freeze_inside_a_row_lock(marker: str) -> None:
    """Once ``marker`` exists, stop this whole process (SIGSTOP) right after a row-locking SELECT.

    The process then sits inside the transaction holding those row locks, as
    one does that a debugger, a paused VM or container, or heavy swapping
    froze there. Only the moment is chosen here; the freeze is the OS's.
    """
    import signal

    from django.db.backends.signals import connection_created

    frozen: list[bool] = []

    def freeze_after_locking(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        locking = " FOR " in sql and "UPDATE" in sql
        if frozen or not locking or not os.path.exists(marker):
            return result
        if (getattr(context["cursor"], "rowcount", 0) or 0) > 0:  # it locked rows
            frozen.append(True)
            print(f"scheduler process {os.getpid()} freezes inside a row lock", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        return result

    def wrap(sender: Any, connection: Any, **kwargs: Any) -> None:
        if freeze_after_locking not in connection.execute_wrappers:  # once per wrapper
            connection.execute_wrappers.append(freeze_after_locking)

    connection_created.connect(wrap, weak=False)


def main(config: dict[str, Any]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    if config.get("freeze_in_row_lock"):
        _freeze_inside_a_row_lock(config["freeze_in_row_lock"])

    from apscheduler.events import (
        EVENT_JOB_ADDED,
        EVENT_JOB_MAX_INSTANCES,
        EVENT_JOB_MISSED,
        EVENT_JOB_SUBMITTED,
    )
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.blocking import BlockingScheduler

    from django_apscheduler.jobstores import DjangoJobStore

    names = {
        EVENT_JOB_SUBMITTED: "submitted",
        EVENT_JOB_MAX_INSTANCES: "max_instances",
        EVENT_JOB_MISSED: "missed",
    }
    events = open(config["events"], "a", buffering=1)
    lock = threading.Lock()

    def listener(event: Any) -> None:
        run_times = getattr(event, "scheduled_run_times", None) or [event.scheduled_run_time]
        record = {
            "pid": os.getpid(),
            "code": names[event.code],
            "job": event.job_id,
            "run_times": [rt.timestamp() for rt in run_times],
            "t": time.time(),
        }
        with lock:
            events.write(json.dumps(record) + "\n")

    # When each job was first stored (its next run time is computed then): in
    # "<events>.added", apart from the fires.
    added = open(config["events"] + ".added", "a", buffering=1)

    def added_listener(event: Any) -> None:
        with lock:
            added.write(json.dumps({"pid": os.getpid(), "job": event.job_id, "t": time.time()}))
            added.write("\n")

    # "exit_after_start": behave like an autostarted web worker that exits
    # normally: a background scheduler, stopped by the autostart hook at exit
    # while the job's thread still runs (the interpreter waits for it).
    exiting = config.get("exit_after_start")
    scheduler_class = BackgroundScheduler if exiting else BlockingScheduler
    scheduler = scheduler_class(
        timezone="UTC", executors={"default": ThreadPoolExecutor(config.get("threads", 10))}
    )
    scheduler.add_jobstore(DjangoJobStore(), "default")
    scheduler.add_listener(
        listener, EVENT_JOB_SUBMITTED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED
    )
    scheduler.add_listener(added_listener, EVENT_JOB_ADDED)
    if config.get("go"):
        config = {**config, **_wait_for_go(config["go"])}
    module = sys.modules[__name__]
    for spec in config.get("jobs", []):
        if spec["trigger"] == "interval" and spec.get("start") is None:
            spec = {**spec, "start": config["start"]}
        scheduler.add_job(
            # "ref": a text reference, such as a task's (django_apscheduler.handoff.task_ref).
            spec["ref"] if "ref" in spec else getattr(module, spec.get("func", "noop")),
            _trigger(spec),
            id=spec["id"],
            args=spec.get("args", []),
            max_instances=spec.get("max_instances", 1),
            coalesce=spec.get("coalesce", False),
            misfire_grace_time=spec.get("misfire_grace_time", 120),
            replace_existing=True,
        )
    if exiting:
        from types import SimpleNamespace

        from django_apscheduler import runner

        runner._stop_at_exit(SimpleNamespace(scheduler=scheduler))  # type: ignore[arg-type]
        print(f"scheduler process {os.getpid()} starting", flush=True)
        scheduler.start()
        runs, deadline = exiting["runs"], time.time() + 60
        while time.time() < deadline and not any(
            line["event"] == "start" and line["pid"] == os.getpid() for line in read_lines(runs)
        ):
            time.sleep(0.05)
        print(f"scheduler process {os.getpid()} exits while its job runs", flush=True)
        return  # the main thread ends; the job's thread goes on
    # BlockingScheduler.start() may return as soon as shutdown() has begun, so
    # the process waits for the stopping thread to finish the shutdown.
    stopper = threading.Thread(
        target=_stop_at, args=(scheduler, config["until"], config.get("stop")), daemon=True
    )
    stopper.start()
    print(f"scheduler process {os.getpid()} starting", flush=True)
    scheduler.start()
    stopper.join()
    print(f"scheduler process {os.getpid()} stopped", flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
