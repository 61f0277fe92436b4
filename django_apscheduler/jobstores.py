"""APScheduler 3 job stores backed by the Django database.

``DjangoJobStore`` keeps jobs in ``DjangoJob``; both stores record every run
in ``DjangoJobExecution`` (see :mod:`django_apscheduler.executions`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import pickle
import threading
import time
import warnings
from datetime import datetime, timedelta
from typing import Any, Callable

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
from apscheduler.job import Job
from apscheduler.jobstores.base import BaseJobStore, ConflictingIdError, JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED
from django.db import IntegrityError, connections, router
from django.db.models import F
from django.utils import timezone

from django_apscheduler import (
    backends,
    conf,
    coordination,
    db,
    dispatch,
    executions,
    handoff,
    internals,
    replacing,
    signing,
    util,
)
from django_apscheduler.exceptions import (
    InvalidJobIdError,
    UnpicklableJobError,
    UnrestorableJobError,
    UntrustedJobStateError,
)
from django_apscheduler.models import DjangoJob, DjangoJobExecution

logger = logging.getLogger(__name__)

#: Seconds after which a job that could not be restored is tried again.
BROKEN_RETRY_INTERVAL = 60.0

#: Seconds before a round tries again to claim due jobs that it found locked by
#: another session (a transaction that changed them and has not committed yet).
LOCKED_RETRY_INTERVAL = 0.25

#: Seconds within which the due jobs a round claims should all start here
#: (see ``DjangoJobStore._dispatch_limit``).
ROUND_HORIZON = 0.05


def validate_job_id(job_id: Any) -> None:
    """Raise :class:`InvalidJobIdError` unless every database can store ``job_id``.

    A string of 1 to 255 characters (``DjangoJob.id``), without NUL characters
    (PostgreSQL refuses them) and encodable as UTF-8 (no lone surrogates).
    """
    if not isinstance(job_id, str):
        raise InvalidJobIdError(job_id, f"ids are strings, not {type(job_id).__name__}")
    longest = DjangoJob._meta.get_field("id").max_length
    assert isinstance(longest, int), "DjangoJob.id is a CharField with a max_length"
    if not job_id:
        raise InvalidJobIdError(job_id, "ids are not empty")
    if len(job_id) > longest:
        raise InvalidJobIdError(job_id, f"ids have at most {longest} characters; use a shorter one")
    if "\x00" in job_id:
        raise InvalidJobIdError(job_id, "ids contain no NUL characters")
    try:
        job_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidJobIdError(job_id, "ids are valid Unicode (it has a lone surrogate)") from None


def _unpicklable_part(job: Job, state: dict[str, Any], protocol: int) -> str:
    """Which part of ``job``'s state fails to pickle, as people would name it."""

    def fails(value: Any) -> bool:
        try:
            pickle.dumps(value, protocol)
        except Exception:
            return True
        return False

    def show(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    for index, value in enumerate(state.get("args") or ()):
        if fails(value):
            return f"its argument args[{index}] ({show(value)})"
    for name, value in (state.get("kwargs") or {}).items():
        if fails(value):
            return f"its argument kwargs[{name!r}] ({show(value)})"
    for key in ("trigger", "executor", "func"):
        if key in state and fails(state[key]):
            return f"its {key} ({show(state[key])})"
    return "its state"


def restore_job(job_id: str, job_state: bytes | memoryview, job_signature: str | None) -> Job:
    """Turn a stored row back into an (unbound) APScheduler job, if its signature verifies.

    Raises :class:`UntrustedJobStateError` (nothing unpickled) for a state
    whose signature is missing or wrong, and otherwise whatever unpickling
    raises: a function that no longer exists, a trigger class that cannot be
    imported, a state from an incompatible APScheduler version.
    """
    return _job_from(signing.verify(job_id, job_state, job_signature))


def _job_from(state: signing.Verified) -> Job:
    job = Job.__new__(Job)
    job.__setstate__(signing.loads(state))
    return job


class DjangoResultStoreMixin:
    """Records the runs of a store's jobs in ``DjangoJobExecution``.

    The listeners are registered when the store starts. They only queue the
    records; a background thread writes them (see ``executions``).
    """

    #: Kept for 0.7.0 compatibility; nothing here depends on it any more.
    lock = None

    _alias: str | None
    _scheduler: Any

    def start(self, scheduler: Any, alias: str) -> None:
        super().start(scheduler, alias)  # type: ignore[misc]
        type(self).lock = internals.create_lock(scheduler)
        self.register_event_listeners()

    def register_event_listeners(self) -> None:
        """Record the runs of this store's jobs through the scheduler's listeners."""
        self._scheduler.add_listener(
            executions.make_listener(lambda: self._alias, self._instance_for_records),
            executions.EVENT_MASK,
        )

    def _instance_for_records(self) -> str | None:
        """The scheduler instance this store's runs are credited to, if any."""
        return None

    @classmethod
    def _handle(cls, event: Any) -> int | None:
        started = executions.pop_start(event.job_id, getattr(event, "scheduled_run_time", None))
        records = executions.records_from_event(event, started)
        ids = executions.write_now(records)
        if not ids:
            logger.warning(
                "Job '%s' no longer exists! Skipping logging of job execution...", event.job_id
            )
            return None
        return ids.get(records[0].key)

    @classmethod
    def handle_submission_event(cls, event: Any) -> int | None:
        """Record a submission (or a max-instances refusal) now; return the execution id."""
        return cls._handle(event)

    @classmethod
    def handle_execution_event(cls, event: Any) -> int | None:
        """Record a successful run now; return the execution id."""
        return cls._handle(event)

    @classmethod
    def handle_error_event(cls, event: Any) -> int | None:
        """Record a failed or missed run now; return the execution id."""
        return cls._handle(event)


class DjangoJobStore(DjangoResultStoreMixin, BaseJobStore):
    """Stores jobs in the ``DjangoJob`` table of the database Django routes it to.

    Any number of processes may run schedulers on this store against one
    database: each fire of each job is dispatched by one of them (see
    :mod:`django_apscheduler.coordination`). A scheduler started paused
    writes jobs without ever dispatching them.

    :param pickle_protocol: pickle protocol used for the job state.
    """

    def __init__(self, pickle_protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        super().__init__()
        self.pickle_protocol = pickle_protocol
        # Jobs that could not be restored: id -> monotonic time they were seen broken.
        self._broken: dict[str, float] = {}
        self._broken_reasons: dict[str, str] = {}
        # Rows seen disagreeing with their pickled state (logged once): id -> what differed.
        self._disagreements: dict[str, tuple[str, Any]] = {}
        # The dispatch round: its thread, the jobs it handed out, their write-backs.
        self._round = dispatch.DispatchRound(self)
        self._dispatch_connection: Any = None
        # Set by shutdown(): the scheduler's loop may still run one last round
        # after it stopped the stores, which must not reopen a connection.
        self._stopped = False
        self._coordinator = coordination.Coordinator(self)
        # Set by add_job() when the id exists: APScheduler's replace_existing
        # then calls update_job() with the same job, from the same thread.
        self._replacing = threading.local()
        #: The jobs this process declares in code (id -> fingerprint), recorded
        #: with its scheduler instance (see ``declared``); None: it declares none.
        self.declared_ids: dict[str, str] | None = None
        self._listens_for_run_ends = False
        # Runs the store's database work when it is called from a thread with a
        # running event loop (AsyncIOScheduler), where Django forbids the ORM.
        self._loop_worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop_worker_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__}(pickle_protocol={self.pickle_protocol})>"

    def start(self, scheduler: Any, alias: str) -> None:
        self._stopped = False
        super().start(scheduler, alias)
        if not self._listens_for_run_ends:
            scheduler.add_listener(
                self._on_run_end, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED
            )
            self._listens_for_run_ends = True

    def _on_run_end(self, event: Any) -> None:
        """A run ended, so a thread is free: wake a scheduler that had none for due jobs."""
        if self._round.saturated:
            self._round.saturated = False
            self.wake()

    # --- helpers ---------------------------------------------------------------

    # --- the store's public face to coordination and the runner (coordination.CoordinatedStore)

    @property
    def db(self) -> str:
        """The database alias the jobs are written to."""
        return router.db_for_write(DjangoJob)

    @property
    def coordinator(self) -> coordination.Coordinator:
        """This store's side of the coordination between scheduler processes."""
        return self._coordinator

    @property
    def instance_id(self) -> str | None:
        """This process's scheduler instance id, once it dispatched (or registered)."""
        return self._coordinator.instance_id

    def register_instance(self) -> str:
        """Register this process as a scheduler instance now (the runner does, before syncing)."""
        return self._coordinator.ensure_running()

    def earliest_due(self) -> datetime | None:
        """The earliest next run time among the jobs this instance could claim now."""
        instance = self._coordinator.instance_id or ""
        return self.run(
            lambda: coordination.earliest_claimable(self.db, instance, self.known_broken()),
            "get the next run time",
        )

    def flush_write_backs(self) -> None:
        """Write back what the last dispatch round left pending."""
        self._round.flush()

    # 0.8 development name, kept for tests and tools that call it.
    _flush_write_backs = flush_write_backs

    def _awaits_coroutines(self, executor_alias: str) -> bool:
        """True if the job's executor awaits coroutine functions itself."""
        executor = internals.executors(self._scheduler).get(executor_alias)
        return executor is not None and isinstance(executor, _coroutine_executors())

    def scheduler_running(self) -> bool:
        """True while the scheduler this store belongs to has not been shut down."""
        scheduler = getattr(self, "_scheduler", None)
        return scheduler is not None and scheduler.state != STATE_STOPPED

    def run(self, operation: Callable[[], Any], description: str) -> Any:
        """Run database work, reconnecting and retrying after a lost connection.

        The scheduler's own dispatch loop must not die from a lost connection:
        in its thread the work is retried for as long as the scheduler runs.
        """
        patient = self._round.in_round()

        def work() -> Any:
            if patient:  # the dispatch loop's thread (or the store's, under an event loop)
                db.serve_scheduler(self.db)
            return db.run_resiliently(
                operation,
                using=self.db,
                description=description,
                keep_trying=(lambda: patient and self.scheduler_running()),
            )

        return self.off_the_loop(work)

    def off_the_loop(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` here, or on the store's worker thread if this thread runs an event loop.

        An ``AsyncIOScheduler`` calls the store from its event loop's thread
        (its dispatch rounds, and ``add_job`` from an async view or a lifespan
        hook), where Django refuses the ORM (``SynchronousOnlyOperation``). The
        database work then runs on one dedicated thread of the store's own,
        and the caller waits for it, as it would for the query itself.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no event loop runs in this thread: the usual case
            return work()
        with self._loop_worker_lock:
            if self._loop_worker is None:
                self._loop_worker = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="django_apscheduler-store"
                )
            worker = self._loop_worker
        return worker.submit(work).result()

    def _instance_for_records(self) -> str | None:
        return self._coordinator.instance_id

    def running_here(self, job_id: str, executor_alias: str | None) -> bool:
        """True while an executor of this process still runs (or queues) ``job_id``."""
        if executor_alias is None:
            return False
        executor = internals.executors(self._scheduler).get(executor_alias)
        return bool(internals.running_instances(executor).get(job_id))

    def _dispatch_limit(self) -> int:
        """How many due jobs to claim in one round: what this process can start soon.

        A claimed job waits in this process until it runs, while another
        scheduler may have idle threads: so a round claims no more jobs than
        the default executor's threads can start within :data:`ROUND_HORIZON`,
        judged by how long this store's runs took lately
        (``DispatchRound.pace``), less those already queued or running. That
        is the free threads while runs are slow or unknown, and many more for
        runs that take a moment (none when all are busy; the end of a run wakes
        the scheduler again). Capped by ``APSCHEDULER_DISPATCH_BATCH_SIZE``; an
        executor whose threads cannot be counted gets the cap.
        """
        limit = conf.dispatch_batch_size()
        executor = internals.executors(self._scheduler).get("default")
        workers = internals.max_workers(executor)
        if workers is None:
            return limit
        capacity = workers
        mean = self._round.pace.mean
        if mean is not None:
            capacity = max(workers, int(workers * ROUND_HORIZON / max(mean, 1e-6)))
        busy = sum(internals.running_instances(executor).values())
        return max(0, min(limit, capacity - busy))

    def wake(self) -> None:
        """Wake the scheduler's loop, so it looks at the jobs again now."""
        scheduler = getattr(self, "_scheduler", None)
        if scheduler is not None and scheduler.state == STATE_RUNNING and not self._stopped:
            scheduler.wakeup()

    def _state(self, job: Job) -> bytes:
        """The pickled state of ``job``; ``UnpicklableJobError`` naming the job and the culprit."""
        try:
            state = job.__getstate__()
        except ValueError as exc:  # APScheduler: no textual reference to the function
            raise UnpicklableJobError(
                job.id,
                f"its function ({job.func!r})",
                exc,
                hint="Use a function defined at module level, or its reference ('module:name').",
            ) from exc
        try:
            return pickle.dumps(state, self.pickle_protocol)
        except Exception as exc:
            part = _unpicklable_part(job, state, self.pickle_protocol)
            raise UnpicklableJobError(job.id, part, exc) from exc

    def _reconstitute_job(self, job_state: signing.Verified) -> Job:
        """The job of a verified state (:func:`signing.verify`), bound to this store."""
        job = _job_from(job_state)
        internals.bind_job(job, self._scheduler, self._alias)
        return job

    def _restore(
        self, job_id: str, job_state: bytes | memoryview, job_signature: str | None
    ) -> Job | None:
        """Restore one row, or note it as broken (logged once per reason) and return None.

        A row whose signature is missing or wrong is not unpickled at all.
        """
        try:
            verified = signing.verify(job_id, job_state, job_signature)
        except UntrustedJobStateError as exc:
            self._note_broken(
                job_id,
                exc.problem,
                "Job %r is skipped and its stored state is not unpickled: %s (not signed with "
                "SECRET_KEY or SECRET_KEY_FALLBACKS for this id). It stays in the database; if "
                "the row is trusted, `manage.py apscheduler sign JOB_ID` signs it, otherwise "
                "remove it.",
            )
            return None
        try:
            return self._reconstitute_job(verified)
        except Exception as exc:
            self._note_broken(
                job_id,
                f"{type(exc).__name__}: {exc}",
                "Job %r cannot be restored and is skipped (%s). It stays in the database "
                "until it is fixed (re-add it with replace_existing=True) or removed.",
            )
            return None

    def _note_broken(
        self, job_id: str, reason: str, message: str, level: int = logging.ERROR
    ) -> None:
        """Leave ``job_id`` out of this process's rounds for a while; log ``message`` once per reason.

        ``message`` is a format with two ``%r``/``%s`` slots: the job id and ``reason``.
        """
        if self._broken_reasons.get(job_id) != reason:
            logger.log(level, message, job_id, reason)
        self._broken[job_id] = time.monotonic()
        self._broken_reasons[job_id] = reason

    def _dispatchable(self, job: Job, now: datetime) -> bool:
        """True if this process can dispatch ``job``; else note it as broken here and say why.

        APScheduler removes a job whose executor it lacks, and a trigger that
        raises kills its dispatch thread (with every other job of the round
        still claimed). Both are found out here first: such a job stays in
        the database, is left to processes that can run it, and never takes
        the round's other jobs down.
        """
        executors = internals.executors(self._scheduler)
        # A scheduler that was never started has no executors yet (nor dispatches).
        if executors and job.executor not in executors:
            self._note_broken(
                job.id,
                f"{job.executor!r} (this scheduler has: {', '.join(map(repr, executors))})",
                "Job %r is left to schedulers that have its executor %s; this one does not run "
                "it. Add that executor to this scheduler, or change the job's executor.",
                logging.WARNING,
            )
            return False
        try:
            # What APScheduler's loop is about to compute: the due run times, then
            # the next fire time after the last of them.
            run_times = []
            next_run_time = job.next_run_time
            while next_run_time and next_run_time <= now:
                run_times.append(next_run_time)
                next_run_time = job.trigger.get_next_fire_time(next_run_time, now)
            if run_times:
                job.trigger.get_next_fire_time(run_times[-1], now)
        except Exception as exc:
            self._note_broken(
                job.id,
                f"{type(exc).__name__}: {exc}",
                "Job %r is skipped: its trigger raised %s. It stays in the database until it "
                "is fixed (re-add it with replace_existing=True) or removed.",
            )
            return False
        return True

    def known_broken(self) -> list[str]:
        """Ids of the jobs this process could not restore lately (retried after a while)."""
        now = time.monotonic()
        for job_id, seen in list(self._broken.items()):
            if now - seen > BROKEN_RETRY_INTERVAL:
                del self._broken[job_id]
        return list(self._broken)

    def _forget_broken(self, job_id: str) -> None:
        self._broken.pop(job_id, None)
        self._broken_reasons.pop(job_id, None)

    def _get_jobs(self, **filters: Any) -> list[Job]:
        """Restore the jobs matching ``filters``, in next-run-time order, skipping broken rows."""

        def query() -> list[tuple[str, Any, Any]]:
            rows = DjangoJob.objects.using(self.db).filter(**filters)
            rows = rows.order_by(F("next_run_time").asc(nulls_last=True), "id")
            return list(rows.values_list("id", "job_state", "job_signature", "next_run_time"))

        jobs = []
        for job_id, job_state, job_signature, next_run_time in self.run(query, "load jobs"):
            if not job_state:  # the kept record of a finished one-shot job
                continue
            job = self._restore(job_id, job_state, job_signature)
            if job is not None:
                self._follow_row(job, job_id, next_run_time)
                jobs.append(job)
        # Stored local times (USE_TZ = False) order the repeated hour of autumn wrongly.
        jobs.sort(
            key=lambda job: (
                job.next_run_time is None,
                job.next_run_time.timestamp() if job.next_run_time else 0,
                job.id,
            )
        )
        return jobs

    def _follow_row(self, job: Job, job_id: str, stored_next_run_time: datetime | None) -> None:
        """Make a restored job agree with its row, where the two disagree: the row wins.

        Normally the pickled state and the row's columns say the same. They
        disagree when someone edited the row with SQL: an operator who sets
        ``next_run_time`` to force (or postpone, or pause with NULL) a run, or
        who copied a row under another id. Trusting the pickle then loops:
        the row stays due while the job is not. So the row's id and next run
        time are taken, and the state is corrected when the job is written
        back. Each disagreement is logged once per process.
        """
        if job.id != job_id:
            if self._disagreements.get(job_id) != ("id", job.id):
                self._disagreements[job_id] = ("id", job.id)
                logger.warning(
                    "Job %r: its stored state names it %r (was the row copied?); it is its own "
                    "job %r from now on",
                    job_id,
                    job.id,
                    job_id,
                )
            job.id = job_id
        stored = util.stored_instant(stored_next_run_time, job.next_run_time)
        if util.same_instant(stored, job.next_run_time, util.STORED_PRECISION):
            # The same time, but a column keeping whole seconds may stand a
            # little earlier: the job is due when its row says, never later.
            if stored is not None and util.utc(stored) < util.utc(job.next_run_time):
                job.next_run_time = stored.astimezone(self._scheduler.timezone)
        else:
            if self._disagreements.get(job_id) != ("next_run_time", stored):
                self._disagreements[job_id] = ("next_run_time", stored)
                logger.warning(
                    "Job %r: its row's next_run_time (%s) differs from its stored state's (%s); "
                    "the row's is used",
                    job_id,
                    stored,
                    job.next_run_time,
                )
            job.next_run_time = (
                None if stored is None else stored.astimezone(self._scheduler.timezone)
            )

    # --- the APScheduler job store interface ------------------------------------

    def lookup_job(self, job_id: str) -> Job | None:
        def query() -> Any:
            return (
                DjangoJob.objects.using(self.db)
                .filter(id=job_id)
                .values_list("job_state", "job_signature", "next_run_time")
                .first()
            )

        row = self.run(query, f"look up job {job_id!r}") or (None, None, None)
        job_state, job_signature, next_run_time = row
        if not job_state:
            return None
        try:
            job = self._reconstitute_job(signing.verify(job_id, job_state, job_signature))
        except Exception as exc:
            raise UnrestorableJobError(job_id, exc) from exc
        self._follow_row(job, job_id, next_run_time)
        return job

    def get_due_jobs(self, now: datetime) -> list[Job]:
        if self._stopped:
            return []
        round_ = self._round
        round_.begin(now)
        self._coordinator.dispatcher = threading.current_thread()
        self._dispatch_connection = self.off_the_loop(lambda: connections[self.db])
        self._coordinator.ensure_running()
        round_.flush()  # left over if a round ended without get_next_run_time
        # A job whose write-back is deferred still holds the fire just dispatched
        # and our claim: claimed again, that fire would be dispatched twice.
        excluded = self.known_broken() + self._coordinator.deferred_ids()
        limit = self._dispatch_limit()
        round_.saturated = limit == 0
        if round_.saturated:  # no free thread: the due jobs are left to other schedulers
            return []
        claims = self._coordinator.claim(now, excluded, limit)
        # Nothing claimed although the round was due: what is due is held by
        # another session's row lock (SKIP LOCKED passed it over).
        round_.claimed_nothing = not claims

        jobs = []
        runs_here = []
        unusable = []
        for claim in claims:
            job = self._restore(claim.job_id, claim.job_state, claim.job_signature)
            if job is not None:
                self._follow_row(job, claim.job_id, claim.next_run_time)
            if job is None or not self._dispatchable(job, now):
                # Perhaps another process can run it (a deploy in progress, another
                # executor there): released at once, not with this round's others.
                unusable.append(claim.job_id)
                continue
            if handoff.job_task_ref(job) is not None:
                # A task: this fire is handed to a worker, not run here.
                handoff.note_dispatch(job.id, True)
                handoff.instrument(job, lambda: self._coordinator.instance_id)
            else:
                handoff.note_dispatch(job.id, False)
                executions.instrument(
                    job,
                    self._awaits_coroutines(job.executor),
                    pace=self._round.pace,
                    instance=self._instance_for_records,
                )
                runs_here.append(job)
            jobs.append(job)
        if unusable:
            self._coordinator.release_now(unusable)
        round_.hand_out(job.id for job in jobs)
        round_.hold_runs(runs_here)
        return jobs

    def get_next_run_time(self) -> datetime | None:
        # The scheduler asks this at the end of each dispatch round.
        round_ = self._round
        in_round = round_.in_round()
        if self._stopped:
            round_.end()
            return None
        if in_round:
            round_.flush()
            self._coordinator.end_round()
        coordinator = self._coordinator
        # Jobs whose write-back waits for another session's row lock are not due
        # again: housekeeping wakes the scheduler to retry them (see
        # Coordinator._retry_write_backs).
        broken = self.known_broken() + coordinator.deferred_ids()
        instance = coordinator.instance_id or ""
        using = self.db

        # No lock is held over the query: the report says when it started, so a
        # poll that looked later and saw an earlier job still wakes the scheduler.
        asked = coordinator.report_started()
        try:
            next_run_time = self.run(
                lambda: coordination.earliest_claimable(using, instance, broken),
                "get the next run time",
            )
        finally:
            if in_round:
                round_.end()
        if next_run_time is not None:
            next_run_time = next_run_time.astimezone(self._scheduler.timezone)
            if round_.saturated:
                # Due jobs, but no free thread here: not a busy loop. The end of
                # a run wakes the scheduler; the poll (or this time) bounds the wait.
                next_run_time = max(next_run_time, self._saturated_wake_time())
            elif in_round and round_.claimed_nothing and next_run_time <= round_.now:
                # Due, but the claim passed it over (its row is locked by another
                # session): look again shortly instead of at once.
                retry = round_.now + timedelta(seconds=LOCKED_RETRY_INTERVAL)
                next_run_time = retry.astimezone(self._scheduler.timezone)
        coordinator.report(next_run_time, asked)
        return next_run_time

    def _saturated_wake_time(self) -> datetime:
        """When a scheduler with no free thread looks again at jobs that are already due."""
        poll = conf.poll_interval()
        return (timezone.now() + timedelta(seconds=poll)).astimezone(self._scheduler.timezone)

    def get_all_jobs(self) -> list[Job]:
        jobs = self._get_jobs()
        self._fix_paused_jobs_sorting(jobs)
        return jobs

    def add_job(self, job: Job) -> DjangoJob:
        validate_job_id(job.id)  # one clear error on every database, before any write
        handoff.check_job(job)
        state = self._state(job)
        signature = signing.sign(job.id, state)
        next_run_time = util.get_django_internal_datetime(job.next_run_time)
        using = self.db
        backend = backends.for_alias(using)
        attempts = 0

        def insert() -> DjangoJob:
            nonlocal attempts
            attempts += 1
            try:
                with backend.write_transaction(using):
                    row = DjangoJob.objects.using(using).create(
                        id=job.id,
                        next_run_time=next_run_time,
                        job_state=state,
                        job_signature=signature,
                    )
                    backend.notify(using)
                    return row
            except IntegrityError:
                with backend.write_transaction(using):
                    rows = DjangoJob.objects.using(using).filter(id=job.id)
                    existing = backend.lock_for_write(rows, using).first()
                    if existing is None:
                        raise
                    if (
                        not existing.job_state
                        and replacing.in_declared_sync()
                        and not _fires_ahead(job)
                    ):
                        # A declared one-shot job that has run: it stays finished.
                        return existing
                    if (
                        attempts > 1
                        and bytes(existing.job_state or b"") == state
                        and existing.job_signature == signature
                    ):
                        # Our own insert whose commit was confirmed only by this retry,
                        # or another process's identical job (processes starting
                        # together add the same jobs): stored as asked, and left as
                        # it is. It may be claimed and dispatched already.
                        return existing
                    if not existing.job_state:
                        # A finished one-shot job's record: take it over.
                        existing.next_run_time, existing.job_state = next_run_time, state
                        existing.job_signature = signature
                        existing.acquired_by = existing.acquired_until = None
                        existing.version = (existing.version or 0) + 1
                        existing.save(using=using)
                        backend.notify(using)
                        return existing
                self._replacing.job = job
                raise ConflictingIdError(job.id) from None

        self._replacing.job = None
        row = self.run(insert, f"add job {job.id!r}")
        self._forget_broken(job.id)
        return row

    def update_job(self, job: Job) -> None:
        if self._round.dispatched(job.id):
            self._round.queue(job, self._state(job))
            return
        re_adding = getattr(self._replacing, "job", None) is job
        self._replacing.job = None
        handoff.check_job(job)
        state = self._state(job)
        next_run_time = util.get_django_internal_datetime(job.next_run_time)
        using = self.db
        backend = backends.for_alias(using)

        def update() -> int:
            nonlocal state, next_run_time
            with backend.write_transaction(using):
                if re_adding:
                    decision = replacing.decide(job, using, self.pickle_protocol)
                    if decision == replacing.KEEP:
                        return 1
                    if decision == replacing.KEEP_PAUSED:
                        job.next_run_time = None  # what the caller's job object reports
                        state, next_run_time = self._state(job), None
                rows = DjangoJob.objects.using(using).filter(id=job.id)
                if not re_adding:
                    # The kept record of a one-shot job that finished (perhaps since the
                    # caller looked the job up) is no job: reviving it would run its
                    # last fire again. replace_existing writes it, as add_job would.
                    rows = rows.exclude(job_state=b"")
                written = rows.update(
                    next_run_time=next_run_time,
                    job_state=state,
                    job_signature=signing.sign(job.id, state),
                    version=dispatch.NEXT_VERSION,
                )
                if written:
                    backend.notify(using)
                return written

        if not self.run(update, f"update job {job.id!r}"):
            raise JobLookupError(job.id)
        self._forget_broken(job.id)

    def remove_job(self, job_id: str) -> None:
        if self._round.dispatched(job_id):
            # The scheduler removes a job from its dispatch loop when its trigger
            # will not fire again. Keep an empty record, so the job's execution
            # history (still being written) survives.
            job = Job.__new__(Job)
            job.id, job.executor = job_id, None
            self._round.queue(job, None)
            return

        attempts = 0
        using = self.db
        backend = backends.for_alias(using)

        def delete() -> int:
            nonlocal attempts
            attempts += 1
            with backend.write_transaction(using):
                # Locked first, so a run being logged right now is either
                # written before (and deleted with the job) or skipped after.
                rows = DjangoJob.objects.using(using).filter(id=job_id)
                locked = list(backend.lock_for_removal(rows, using).values_list("id"))
                deleted, _ = rows.delete() if locked else (0, None)
                if deleted:
                    backend.notify(using)
            # Nothing to delete on a retry: the first attempt's commit may have gone
            # through before the connection broke. Either way the job is gone.
            return deleted or int(attempts > 1)

        if not self.run(delete, f"remove job {job_id!r}"):
            raise JobLookupError(job_id)
        self._forget_broken(job_id)

    def remove_all_jobs(self) -> None:
        def delete() -> None:
            using = self.db
            backend = backends.for_alias(using)
            with backend.write_transaction(using):
                jobs = DjangoJob.objects.using(using).order_by("id")
                list(backend.lock_for_removal(jobs, using).values_list("id"))
                DjangoJobExecution.objects.using(using).all().delete()
                DjangoJob.objects.using(using).all().delete()
                backend.notify(using)

        self.run(delete, "remove all jobs")
        self._broken.clear()
        self._broken_reasons.clear()

    def shutdown(self) -> None:
        """Write the runs still queued for the log, then close the store's connections.

        The scheduler calls this from the thread that stops it, after its
        dispatch loop has finished with the store, so the dispatch thread's
        connection is closed here too instead of lingering until exit.
        """
        self._stopped = True
        self.off_the_loop(self._close)
        with self._loop_worker_lock:
            worker, self._loop_worker = self._loop_worker, None
        if worker is not None:
            worker.submit(connections.close_all)
            worker.shutdown(wait=True)

    def _close(self) -> None:
        if not executions.recorder.release_connection(timeout=10):
            logger.warning("Job store shut down with job executions not yet recorded")
        self._coordinator.stop()
        own = connections[self.db]
        dispatching, self._dispatch_connection = self._dispatch_connection, None
        if dispatching is not None and dispatching is not own:
            dispatching.inc_thread_sharing()
            try:
                dispatching.close()
            finally:
                dispatching.dec_thread_sharing()
        own.close()


def _fires_ahead(job: Job) -> bool:
    """True if ``job`` is scheduled to fire after now (not paused, not due already)."""
    return job.next_run_time is not None and job.next_run_time > timezone.now()


#: Kept importable from here; it lives in :mod:`django_apscheduler.internals`.
running_instances = internals.running_instances


@functools.cache
def _coroutine_executors() -> tuple[type, ...]:
    """APScheduler's executors that await coroutine functions (tornado's if installed)."""
    from apscheduler.executors.asyncio import AsyncIOExecutor

    try:
        from apscheduler.executors.tornado import TornadoExecutor
    except ImportError:  # tornado is not installed
        return (AsyncIOExecutor,)
    return (AsyncIOExecutor, TornadoExecutor)


class DjangoMemoryJobStore(DjangoResultStoreMixin, MemoryJobStore):
    """Keeps jobs in memory and records their runs in the database.

    Runs are recorded only for jobs that also have a ``DjangoJob`` row with the
    same id (the execution log refers to it).
    """


def register_events(scheduler: Any, result_storage: Any = None) -> None:
    """Does nothing; kept so 0.3-era code keeps importing."""
    warnings.warn(
        "'register_events' is deprecated since version 0.4.0. Please remove all references "
        "from your code.",
        DeprecationWarning,
        stacklevel=2,
    )


def register_job(scheduler: Any, *args: Any, **kwargs: Any) -> Callable[[Callable], Callable]:
    """Decorator adding the decorated function to ``scheduler`` (deprecated since 0.5.0)."""

    def inner(func: Callable) -> Callable:
        warnings.warn(
            "'register_job' is deprecated since version 0.5.0. Please use the "
            "'add_job()' method or the '@scheduled_job' decorator instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        job_kwargs = dict(kwargs)
        job_kwargs.setdefault("id", f"{func.__module__}.{func.__name__}")
        scheduler.add_job(func, *args, **job_kwargs)
        return func

    return inner
