"""Recording job runs in ``DjangoJobExecution``: one row per (job, run time).

APScheduler reports a run through events that may arrive out of order (an
error can be reported before the submission). Each event becomes a
:class:`Record`; records for the same (job, run time) are merged with one
rule: a final status (Executed, Error!, Missed!, Max instances!) replaces
"Started execution", never the other way round.

Listeners never write in the scheduler's thread: they hand records to a
per-process :class:`ExecutionRecorder`, whose own thread writes them in
batches, reconnecting after lost connections. ``write_now`` writes
synchronously for callers that need the row at once.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, Iterable

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from django.db import IntegrityError, close_old_connections, connections, router

from django_apscheduler import backends, conf, db, internals, runlocks, signals, util
from django_apscheduler.models import DjangoJob, DjangoJobExecution

logger = logging.getLogger(__name__)

#: The events a store records.
EVENT_MASK = (
    EVENT_JOB_SUBMITTED
    | EVENT_JOB_MAX_INSTANCES
    | EVENT_JOB_EXECUTED
    | EVENT_JOB_ERROR
    | EVENT_JOB_MISSED
)

EXCEPTION_MAX_LENGTH = DjangoJobExecution._meta.get_field("exception").max_length or 1000
_ELLIPSIS = "..."

#: Records per database transaction in the recorder's thread.
BATCH_SIZE = 500

#: Seconds the recorder waits for more records before writing a small batch.
LINGER = 0.02

#: Ended runs the recorder remembers, so their late "Started execution" records are not written.
_ENDED_LIMIT = 10_000


def now_epoch() -> float:
    """The current time as a POSIX timestamp, the unit of ``finished``."""
    return time.time()


def _truncate(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - len(_ELLIPSIS)] + _ELLIPSIS


_SURROGATES = re.compile("[\ud800-\udfff]")


def sanitise(text: str | None) -> str | None:
    """``text`` as every database can store it: NUL as ``\\x00``, surrogates as U+FFFD.

    An exception's message is whatever the job put in it. PostgreSQL rejects
    NUL characters in text, and no database takes a lone surrogate (it is not
    valid UTF-8): such a failure would otherwise not be logged at all.
    """
    if text is None:
        return None
    return _SURROGATES.sub("\ufffd", text.replace("\x00", "\\x00"))


#: Records without a ``__dict__`` each where dataclasses can (Python 3.10): two are made per fire.
_SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}


@dataclass(**_SLOTS)
class Record:
    """What one event says about the run of ``job_id`` at ``run_time``."""

    job_id: str
    run_time: datetime
    status: str
    exception: str | None = None
    traceback: str | None = None
    started: float | None = None  # POSIX time the job function was entered
    finished: float | None = None  # POSIX time the run ended
    instance: str | None = None  # the scheduler instance that submitted the run
    #: The name of the signal this record sends (see ``signals``), if any.
    event: str | None = field(default=None, compare=False)
    #: Whether the record is written to the log (``APSCHEDULER_EXECUTION_LOG``).
    logged: bool = field(default=True, compare=False)
    #: The exception a failed run raised, when it ran in this process (not stored).
    error: BaseException | None = field(default=None, compare=False, repr=False)
    #: More keyword arguments of the record's signal, if any.
    extra: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    key: tuple[str, datetime] = field(init=False)

    def __post_init__(self) -> None:
        self.run_time = util.get_django_internal_datetime(self.run_time)  # type: ignore[assignment]
        self.exception = _truncate(sanitise(self.exception), EXCEPTION_MAX_LENGTH)
        self.traceback = sanitise(self.traceback)
        self.key = (self.job_id, self.run_time)

    @property
    def is_final(self) -> bool:
        return self.status != DjangoJobExecution.SENT

    def duration(self) -> Decimal | None:
        """Seconds from the start of the run (or its scheduled time) to its end."""
        if self.finished is None or self.status in (
            DjangoJobExecution.MISSED,
            DjangoJobExecution.MAX_INSTANCES,
        ):
            return None
        start = self.started if self.started is not None else self.run_time.timestamp()
        return decimal_seconds(max(self.finished - start, 0.0))

    def merge(self, later: Record) -> Record:
        """Combine this record with a ``later`` one for the same run."""
        if not later.is_final:
            return self
        if self.is_final and not later.exception and not later.traceback:
            later.exception = later.exception or self.exception
            later.traceback = later.traceback or self.traceback
        if later.started is None:
            later.started = self.started
        if later.instance is None:
            later.instance = self.instance
        return later

    def new_values(self) -> list[Any]:
        """The :data:`NEW_FIELDS` of the run's row as this record has it.

        A final record's :data:`ROW_FIELDS` replace those of a row already
        there: its status, times, exception and traceback (a success has
        none, whatever was noted before: a scheduler taken for dead marks its
        runs Interrupted).
        """
        finished = None if self.finished is None else decimal_seconds(self.finished)
        return [
            self.job_id,
            self.run_time,
            self.instance,
            self.status,
            finished,
            self.duration(),
            self.exception,
            self.traceback,
        ]


#: The columns a final record writes into its run's row.
ROW_FIELDS = ["status", "finished", "duration", "exception", "traceback"]
#: The columns of a new row, in the order of ``Record.new_values``.
NEW_FIELDS = ["job", "run_time", "instance", *ROW_FIELDS]


def decimal_seconds(value: float) -> Decimal:
    """Seconds as stored in ``duration`` and ``finished``: two decimal places."""
    return Decimal(f"{value:.2f}")


def _merge_all(records: Iterable[Record]) -> dict[tuple[str, datetime], Record]:
    merged: dict[tuple[str, datetime], Record] = {}
    for record in records:
        earlier = merged.get(record.key)
        merged[record.key] = record if earlier is None else earlier.merge(record)
    return merged


def _write(
    records: dict[tuple[str, datetime], Record], using: str, want_ids: bool = True
) -> dict[tuple[str, datetime], int]:
    """Write merged records in one transaction; return the execution id of each key written.

    Runs of jobs that no longer exist are skipped: a job may be removed
    while its runs are being written (the removal locks the job first), and
    the foreign key then fails the transaction; it is written again without
    the runs of the jobs that are gone.
    """
    while True:  # each retry drops at least one job, so this ends
        try:
            return _write_once(records, using, want_ids)
        except IntegrityError:
            job_ids = {job_id for job_id, _ in records}
            alive = set(
                DjangoJob.objects.using(using).filter(id__in=job_ids).values_list("id", flat=True)
            )
            if alive == job_ids:
                raise  # not a removed job: a real error
            records = {key: rec for key, rec in records.items() if key[0] in alive}
            logger.debug("Jobs %s were removed while their runs were logged", job_ids - alive)
            if not records:
                return {}


def _write_once(
    records: dict[tuple[str, datetime], Record], using: str, want_ids: bool
) -> dict[tuple[str, datetime], int]:
    """One statement for the runs that started, one for those that ended; no read first.

    A "Started execution" row never replaces a row already there; a final
    status replaces whatever is there (:meth:`Record.values`). Another
    process may write the same run meanwhile: the unique (job, run time)
    constraint makes that an update.
    """
    executions = DjangoJobExecution.objects.using(using)
    outermost = not connections[using].in_atomic_block
    with backends.for_alias(using).write_transaction(using):
        job_ids = {job_id for job_id, _ in records}
        if outermost:
            # The foreign key fails this transaction (at a statement, or at
            # its commit) for a job that is gone; _write then writes again
            # without it. No query first: a job removed meanwhile is rare.
            alive = job_ids
        else:
            # Inside the caller's transaction, a deferred foreign key would fail
            # the caller's commit: runs of jobs that are gone are left out first.
            alive = set(
                DjangoJob.objects.using(using).with_ids(job_ids).values_list("id", flat=True)
            )
            for key in records:
                if key[0] not in alive:
                    logger.debug("Job %r no longer exists; not logging its run at %s", *key)
        started = [r.new_values() for r in records.values() if not r.is_final and r.job_id in alive]
        ended = [r.new_values() for r in records.values() if r.is_final and r.job_id in alive]
        if started:
            db.insert_rows(DjangoJobExecution, using, NEW_FIELDS, started, ignore_conflicts=True)
        if ended:
            db.insert_rows(
                DjangoJobExecution,
                using,
                NEW_FIELDS,
                ended,
                update_fields=ROW_FIELDS,
                unique_fields=["job", "run_time"],
            )
        if not want_ids:
            return {}
        return {
            (job_id, run_time): pk
            for pk, job_id, run_time in executions.of_runs(records).values_list(
                "id", "job_id", "run_time"
            )
            if (job_id, run_time) in records
        }


def write_now(records: Iterable[Record]) -> dict[tuple[str, datetime], int]:
    """Write ``records`` synchronously and return the execution id per (job id, run time).

    Runs for jobs that no longer exist are skipped (they have no id in the
    result). Lost connections are retried as :func:`db.run_resiliently` does.
    """
    merged = _merge_all(records)
    if not merged:
        return {}
    using = router.db_for_write(DjangoJobExecution)
    return db.run_resiliently(
        lambda: _write(merged, using), using=using, description="record job executions"
    )


def records_from_event(event: Any, started: float | None = None) -> list[Record]:
    """Translate an APScheduler job event into records, with 0.7.0's status texts."""
    code = event.code
    if code in (EVENT_JOB_SUBMITTED, EVENT_JOB_MAX_INSTANCES):
        if code == EVENT_JOB_SUBMITTED:
            return [
                Record(event.job_id, rt, DjangoJobExecution.SENT, event="job_submitted")
                for rt in event.scheduled_run_times
            ]
        text = (
            f"Execution of job '{event.job_id}' skipped: maximum number of running "
            "instances reached!"
        )
        finished = now_epoch()
        return [
            Record(
                event.job_id,
                rt,
                DjangoJobExecution.MAX_INSTANCES,
                exception=text,
                finished=finished,
            )
            for rt in event.scheduled_run_times
        ]
    finished = now_epoch()
    if code == EVENT_JOB_EXECUTED:
        return [
            Record(
                event.job_id,
                event.scheduled_run_time,
                DjangoJobExecution.SUCCESS,
                started=started,
                finished=finished,
                event="job_succeeded",
            )
        ]
    if code == EVENT_JOB_ERROR and isinstance(event.exception, runlocks.JobStillRunning):
        # Refused before the job function was called: its run slots are held by
        # runs in other processes.
        return [
            Record(
                event.job_id,
                event.scheduled_run_time,
                DjangoJobExecution.MAX_INSTANCES,
                exception=str(event.exception),
                finished=finished,
            )
        ]
    if code == EVENT_JOB_ERROR:
        exception = (
            str(event.exception)
            if event.exception is not None
            else f"Job '{event.job_id}' raised an error!"
        )
        return [
            Record(
                event.job_id,
                event.scheduled_run_time,
                DjangoJobExecution.ERROR,
                exception=exception,
                traceback=str(event.traceback) if event.traceback else None,
                started=started,
                finished=finished,
                event="job_failed",
                error=event.exception,
            )
        ]
    if code == EVENT_JOB_MISSED:
        return [
            Record(
                event.job_id,
                event.scheduled_run_time,
                DjangoJobExecution.MISSED,
                exception=f"Run time of job '{event.job_id}' was missed!",
                finished=finished,
                event="job_missed",
            )
        ]
    raise NotImplementedError(f"Unexpected event code {code!r} for job {event.job_id!r}")


# --- When did a run really start? ------------------------------------------------
#
# APScheduler's events carry the scheduled run time but not the moment the job
# function was entered (a run may wait in the executor's queue). Jobs handed to
# an executor by DjangoJobStore.get_due_jobs run through ``instrument``'s
# wrapper, which notes that moment; the listener then picks it up.

_starts: util.Recent[tuple[str, float], float] = util.Recent(10_000)


def _note_start(
    job_id: str, run_time: Any, instance: Callable[[], str | None] | None = None
) -> None:
    if not isinstance(run_time, datetime):
        return
    started = now_epoch()
    _starts.put((job_id, run_time.timestamp()), started)
    if signals.received("job_started"):
        # Sent from the recorder's thread, like the other signals: not in the job's.
        # The record also writes the run's "Started execution" row if the
        # submission's record is not written yet (APScheduler may report the
        # submission after the run began), so receivers always get the row.
        record = Record(
            job_id,
            run_time,
            DjangoJobExecution.SENT,
            started=started,
            event="job_started",
            instance=instance() if instance is not None else None,
        )
        record.logged = _logged(record)
        recorder.submit([record])
    elif signals.wanted("job_started"):
        # Observers only (no query, no row): told here, without a trip to the recorder.
        signals.notify(
            "job_started",
            job_id=job_id,
            run_time=util.get_django_internal_datetime(run_time),
            instance=None,
            started=started,
        )


class RunPace:
    """How long a store's runs took lately: a moving average, sizing its dispatch rounds."""

    WEIGHT = 0.1

    def __init__(self) -> None:
        #: Seconds, or None before the first run ended.
        self.mean: float | None = None

    def observe(self, seconds: float) -> None:
        mean = self.mean  # a lost update between threads only blurs the average
        self.mean = seconds if mean is None else mean + self.WEIGHT * (seconds - mean)


def pop_start(job_id: str, run_time: datetime | None) -> float | None:
    """Return (and forget) when the run of ``job_id`` at ``run_time`` entered the job function."""
    if run_time is None:
        return None
    return _starts.pop((job_id, run_time.timestamp()))


def instrument(
    job: Any,
    awaits_coroutines: bool = False,
    pace: RunPace | None = None,
    instance: Callable[[], str | None] | None = None,
) -> None:
    """Wrap ``job.func`` so each run holds its job, notes its start and gets fresh DB connections.

    Each run holds one of the job's ``max_instances`` run locks while it runs
    (:mod:`runlocks`), so no other process starts the job meanwhile, whatever
    happens to heartbeats and claims; a run that finds them all held elsewhere
    does not call the function and is logged "Max instances!".

    Django closes stale connections around each request; a job thread lives
    far longer, so the same is done around each run. Only ``job.func`` is
    replaced: ``job.func_ref``, which is what gets stored, is unchanged.

    An ``async def`` function stays a coroutine function for executors that
    await coroutines (``awaits_coroutines``: APScheduler's asyncio and tornado
    executors). Any other executor would call it and drop the coroutine
    without running it, so there it runs to completion with ``asyncio.run``.
    """
    func = job.func
    job_id = job.id
    slots = getattr(job, "max_instances", None)
    slots = slots if isinstance(slots, int) and slots > 0 else 1
    coroutine = inspect.iscoroutinefunction(func)
    if coroutine and not awaits_coroutines:

        @functools.wraps(func)
        def run_coroutine(*args: Any, **kwargs: Any) -> Any:
            run_time = internals.caller_run_time()
            entered = time.perf_counter()
            try:
                with runlocks.holding(job_id, slots):
                    _note_start(job_id, run_time, instance)
                    close_old_connections()
                    try:
                        return asyncio.run(func(*args, **kwargs))
                    finally:
                        close_old_connections()
            finally:
                if pace is not None:
                    pace.observe(time.perf_counter() - entered)

        job.func = run_coroutine
        return
    if coroutine:

        @functools.wraps(func)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            run_time = internals.caller_run_time()
            # This runs on the event loop's thread, where Django keeps the ORM out:
            # the run lock's connection is used from a worker thread, and no
            # connection of this thread is refreshed (it has none of its own).
            hold = runlocks.holding(job_id, slots)
            await asyncio.to_thread(hold.__enter__)
            try:
                _note_start(job_id, run_time, instance)
                return await func(*args, **kwargs)
            finally:
                await asyncio.to_thread(hold.__exit__, None, None, None)

        job.func = run_async
        return

    job.func = _Run(func, job_id, slots, pace, instance)


class _Run:
    """A job's (plain) function as :func:`instrument` runs it: one small object per fire.

    The store restores every job it dispatches, so this is made once per
    fire: a class with slots rather than a closure with its cells and the
    attributes ``functools.wraps`` copies (``__wrapped__`` is the function).
    """

    __slots__ = ("__wrapped__", "_job_id", "_slots", "_pace", "_instance")

    def __init__(
        self,
        func: Callable[..., Any],
        job_id: str,
        slots: int,
        pace: RunPace | None,
        instance: Callable[[], str | None] | None,
    ) -> None:
        self.__wrapped__ = func
        self._job_id = job_id
        self._slots = slots
        self._pace = pace
        self._instance = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run_time = internals.caller_run_time()
        entered = time.perf_counter()
        try:
            with runlocks.holding(self._job_id, self._slots):
                _note_start(self._job_id, run_time, self._instance)
                close_old_connections()
                try:
                    return self.__wrapped__(*args, **kwargs)
                finally:
                    close_old_connections()
        finally:
            if self._pace is not None:
                self._pace.observe(time.perf_counter() - entered)

    def __repr__(self) -> str:
        return repr(self.__wrapped__)


# --- The recorder thread ----------------------------------------------------------


class ExecutionRecorder:
    """Writes records in a thread of its own, in batches, so no listener waits for the database.

    One recorder serves the whole process. Records wait in memory while the
    database is unreachable and are written once it is back.
    """

    def __init__(self) -> None:
        self._queue: deque[Record] = deque()
        self._cond = threading.Condition()
        self._pending = 0  # records queued or being written
        self._flushing = 0  # callers of flush() waiting: no linger meanwhile
        self._thread: threading.Thread | None = None
        self._pid = 0
        #: Runs whose final status was logged lately (keys, oldest first).
        self._ended: dict[tuple[str, datetime], None] = {}

    def submit(self, records: Iterable[Record]) -> None:
        with self._cond:
            # The recorder waits for a first record, then lingers for a batch:
            # only those two moments need it woken, not every record.
            idle = not self._queue
            for record in records:
                if record.logged and not self._still_to_log(record):
                    record.logged = False
                    if not _worth_queueing(record):
                        continue
                self._queue.append(record)
                self._pending += 1
            self._ensure_thread()
            if idle or len(self._queue) >= BATCH_SIZE:
                self._cond.notify_all()

    def _still_to_log(self, record: Record) -> bool:
        """False for a run's "Started execution" record once its final status was logged.

        APScheduler reports a submission after its whole round, so a quick
        run's end usually comes first. The final status replaces any row
        there and is queued ahead of this record, so the start would only be
        an insert that finds the row and does nothing: it is not written.
        """
        ended = self._ended
        if record.is_final:
            ended[record.key] = None
            if len(ended) > _ENDED_LIMIT:
                del ended[next(iter(ended))]
            return True
        if record.key in ended:
            del ended[record.key]
            return False
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted record is written; return False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._pending:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            finally:
                self._flushing -= 1
        return True

    def _ensure_thread(self) -> None:
        # A forked child (gunicorn's workers) inherits the queue but not the thread.
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(
            target=self._run, name="django_apscheduler-recorder", daemon=True
        )
        self._thread.start()

    def release_connection(self, timeout: float | None = 10) -> bool:
        """Flush, then have the recorder thread close its database connection.

        Called when a job store shuts down, so no idle connection outlives the
        scheduler; the next record opens a new one.
        """
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                return True
            self._queue.append(_CLOSE)  # type: ignore[arg-type]
            self._pending += 1
            self._cond.notify_all()
        return self.flush(timeout)

    def _run(self) -> None:
        db.serve_scheduler(router.db_for_write(DjangoJobExecution))
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                # Runs come in bursts (a dispatch round, then their ends): a
                # moment's wait makes one transaction of many records, and one
                # row of a quick run's start and end; not while someone waits
                # for everything to be written.
                deadline = time.monotonic() + LINGER
                while (
                    len(self._queue) < BATCH_SIZE
                    and self._queue[-1] is not _CLOSE
                    and not self._flushing
                    and (remaining := deadline - time.monotonic()) > 0
                ):
                    self._cond.wait(remaining)
                batch: list[Record] = []
                while self._queue and len(batch) < BATCH_SIZE and self._queue[0] is not _CLOSE:
                    batch.append(self._queue.popleft())
                close = not batch and self._queue.popleft() is _CLOSE
            try:
                if close:
                    connections.close_all()
                else:
                    self._write(batch)
            except Exception:
                logger.exception("Execution recorder failed; continuing")
            finally:
                with self._cond:
                    self._pending -= len(batch) or 1
                    self._cond.notify_all()

    def _write(self, batch: list[Record]) -> None:
        """Write the batch's logged records, then send the batch's signals, in event order."""
        logged = [record for record in batch if record.logged]
        if logged:
            self._write_logged(logged)
        send_signals(batch)

    def _write_logged(self, batch: list[Record]) -> None:
        try:
            write_now_patiently(batch)
            return
        except Exception:
            if len(batch) == 1:
                logger.exception(
                    "Could not record the run of job %r at %s (%s)",
                    batch[0].job_id,
                    batch[0].run_time,
                    batch[0].status,
                )
                return
        # One bad record must not cost the others: write them one at a time.
        for record in batch:
            self._write_logged([record])


_PHASES = {"job_submitted": 0, "job_started": 1}


def send_signals(records: list[Record]) -> None:
    """Send the signal of each record that has one (see :mod:`signals`).

    The observers get every event; the rows of the runs are read in one
    query, only when a signal has receivers; a row that cannot be read is
    passed as None.
    """
    # Who listens is asked once per signal and batch, not once per record.
    received = {name: signals.received(name) for name in {r.event for r in records} if name}
    observed = signals.observed()
    events = [r for r in records if r.event is not None and (observed or received[r.event])]
    if not events:
        return
    # APScheduler reports a submission after the executor took the job, so a
    # quick run's end (from the job's thread) often arrives first: within a
    # batch, submissions go first, then starts, then the outcomes.
    events.sort(key=lambda r: _PHASES.get(r.event or "", 2))
    listened = [r for r in events if received[r.event or ""]]
    rows: dict[tuple[str, datetime], DjangoJobExecution] = {}
    if listened:
        try:
            found = DjangoJobExecution.objects.of_runs(r.key for r in listened)
            rows = {(row.job_id, row.run_time): row for row in found}
        except Exception:
            logger.exception(
                "Could not read the runs of jobs %s", sorted({r.job_id for r in listened})
            )
    for record in events:
        name = record.event or ""
        extra: dict[str, Any] = {}
        if name in ("job_succeeded", "job_failed"):
            seconds = record.duration()
            duration = None if seconds is None else float(seconds)
        if name == "job_started":
            extra["started"] = record.started
        elif name == "job_succeeded":
            extra["duration"] = duration
        elif name == "job_failed":
            extra.update(
                exception=record.error,
                message=record.exception,
                traceback=record.traceback,
                duration=duration,
            )
        extra.update(record.extra or ())
        kwargs = {
            "job_id": record.job_id,
            "run_time": record.run_time,
            "instance": record.instance,
            **extra,
        }
        if observed:
            signals.notify(name, **kwargs)
        if received[name]:
            execution = None if name == "job_overdue" else rows.get(record.key)
            signals.send(signals.ALL[name], execution=execution, **kwargs)


def write_now_patiently(records: list[Record]) -> None:
    """Like :func:`write_now`, but keeps retrying while the process runs."""
    merged = _merge_all(records)
    if not merged:
        return
    using = router.db_for_write(DjangoJobExecution)
    db.run_resiliently(
        lambda: _write(merged, using, want_ids=False),
        using=using,
        description="record job executions",
        keep_trying=lambda: not _shutting_down,
    )


_shutting_down = False
_CLOSE = object()  # queued by release_connection(): close the thread's connections
recorder = ExecutionRecorder()


@atexit.register
def _flush_at_exit() -> None:
    global _shutting_down
    if not recorder.flush(timeout=10):
        logger.error("Exiting with job executions not yet recorded")
    _shutting_down = True


#: Statuses that count as failures for ``APSCHEDULER_EXECUTION_LOG = "failures"``.
FAILURES = frozenset(
    {DjangoJobExecution.ERROR, DjangoJobExecution.MISSED, DjangoJobExecution.MAX_INSTANCES}
)


def _logged(record: Record) -> bool:
    """Whether ``APSCHEDULER_EXECUTION_LOG`` wants ``record`` in the log."""
    policy = conf.execution_log()
    if policy == "none":
        return False
    if policy == "failures":
        return record.status in FAILURES
    return True


def _worth_queueing(record: Record) -> bool:
    """Whether the recorder has anything to do with ``record``: a row to write or a signal."""
    return record.logged or (record.event is not None and signals.wanted(record.event))


def make_listener(
    jobstore_alias: Callable[[], str | None],
    instance: Callable[[], str | None] = lambda: None,
) -> Callable[[Any], None]:
    """Return a scheduler listener that records the events of one job store's jobs.

    ``instance`` names the scheduler instance the runs are credited to (so
    the runs of an instance that dies can be marked "Interrupted").
    """

    def listener(event: JobSubmissionEvent | JobExecutionEvent) -> None:
        if event.jobstore != jobstore_alias():
            return
        if event.code not in (EVENT_JOB_MISSED, EVENT_JOB_MAX_INSTANCES) and handoff.handed_off(
            event.job_id
        ):
            return  # a fire handed to a worker: its row is written by the hand-off and the worker
        try:
            started = pop_start(event.job_id, getattr(event, "scheduled_run_time", None))
            records = records_from_event(event, started)
            for record in records:
                record.logged = _logged(record)
            records = [r for r in records if _worth_queueing(r)]
            if not records:
                return
            name = instance()
            for record in records:
                record.instance = name
            recorder.submit(records)
        except Exception:
            logger.exception("Could not record event %r of job %r", event, event.job_id)

    return listener


# At the bottom to avoid a circular import: handoff records through this module.
from django_apscheduler import handoff  # noqa: E402
