"""Coordination between scheduler processes that share one database.

Any number of processes may run a scheduler on ``DjangoJobStore`` against the
same database. They agree through the ``DjangoJob`` rows themselves:

* **Claims.** A scheduler takes the due jobs it will dispatch in one short
  transaction that locks them (``SELECT ... FOR UPDATE SKIP LOCKED`` where
  the database has it, ``BEGIN IMMEDIATE`` on SQLite) and writes its instance
  id into ``acquired_by`` with a deadline in ``acquired_until``. Others skip
  claimed rows until the deadline has passed. Writing the job's next run time
  (or finishing it) releases the claim, in the same statement.
* **Holding running jobs.** While a job runs in a process, that process keeps
  its claim and renews it with every heartbeat, so only the process that runs
  the job dispatches its next fires. Heartbeats can stop while a run goes on,
  so each run also holds one of its job's ``max_instances`` run locks, which
  live exactly as long as the run (:mod:`runlocks`): a fire dispatched
  elsewhere meanwhile is refused, "Max instances!".
* **Never waiting on other sessions.** The heartbeat is a statement of its
  own; renewing, releasing and writing back claims skip job rows another
  session keeps locked and retry them later.
* **Instances.** Each dispatching scheduler has a ``DjangoSchedulerInstance``
  row whose heartbeat it renews. When a heartbeat is older than the lease
  time, the process is taken for dead: its claims have expired, so the others
  take its jobs, and the runs it left "Started execution" become
  "Interrupted".
* **Changes from other processes** (a job added from a view, paused from the
  admin) wake running schedulers: on PostgreSQL at once through
  ``LISTEN``/``NOTIFY``; everywhere through a poll, one indexed query per
  ``APSCHEDULER_POLL_INTERVAL``.

Vendor differences (skip-locked, notifications) are in :mod:`backends`.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, NamedTuple, Protocol

from django.db import connections
from django.utils import timezone

from django_apscheduler import backends, conf, db, overdue, runlocks, util
from django_apscheduler.models import DjangoJob, DjangoJobExecution, DjangoSchedulerInstance

logger = logging.getLogger(__name__)

#: Heartbeats between two looks for overdue jobs and lost hand-offs (a minute at the
#: defaults; at least the lease time).
SLOW_HOUSEKEEPING_BEATS = 15

#: Seconds a housekeeping statement (heartbeat, poll, release) may keep retrying.
HOUSEKEEPING_RETRY_TIMEOUT = 5.0

#: Seconds before a write-back deferred by another session's row lock is first
#: retried; the wait doubles while the row stays locked, up to a heartbeat.
WRITE_BACK_RETRY_INTERVAL = 0.25


def lease_time() -> timedelta:
    return timedelta(seconds=conf.lease_time())


def new_instance_id() -> str:
    """An id naming this process to people: ``host:pid:random``."""
    return f"{socket.gethostname()[:200]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Claim(NamedTuple):
    """A due job claimed by this instance, as its row was when claimed (one per fire: a tuple)."""

    job_id: str
    job_state: bytes
    version: int | None
    next_run_time: datetime
    job_signature: str | None = None


def claim_due(
    using: str, instance: str, due_by: datetime, exclude: Iterable[str], limit: int
) -> list[Claim]:
    """Claim up to ``limit`` jobs due by the instant ``due_by`` for ``instance``, earliest first.

    Near a DST change under ``USE_TZ = False`` the stored local times do not
    order the instants, so every candidate is compared by its instant there
    (:func:`util.stored_instant`): a job due in the second pass of the
    repeated hour is not taken during the first.
    """
    backend = backends.for_alias(using)
    now = timezone.now()
    margin = util.local_time_margin(due_by)
    exact = margin is None
    bound = due_by if margin is None else due_by + margin
    with backend.write_transaction(using):
        rows = (
            DjangoJob.objects.using(using)
            .claimable(instance, now)
            .due(util.get_django_internal_datetime(bound))
            .exclude(id__in=list(exclude))
            .order_by("next_run_time", "id")
        )
        rows = backend.lock_unclaimed(rows, using)
        if exact:
            rows = rows[:limit]
        claims = [
            Claim(job_id, bytes(state), version, nrt, signature)
            for job_id, state, version, nrt, signature in rows.values_list(
                "id", "job_state", "version", "next_run_time", "job_signature"
            )
            if nrt is not None  # always: the filter asks for next_run_time__lte
        ]
        if not exact:
            instants = [
                (_instant(c.job_id, c.next_run_time, c.job_state, c.job_signature), c)
                for c in claims
            ]
            known = [(util.utc(at), c) for at, c in instants if at is not None]
            due = [(at, c) for at, c in known if at <= util.utc(due_by)]
            claims = [c for _, c in sorted(due, key=lambda item: (item[0], item[1].job_id))]
            claims = claims[:limit]
        if claims:
            DjangoJob.objects.using(using).with_ids(c.job_id for c in claims).claim(
                instance, now + lease_time()
            )
    return claims


def _instant(
    job_id: str,
    next_run_time: datetime | None,
    job_state: bytes | memoryview,
    job_signature: str | None,
) -> datetime | None:
    """The instant a row's stored next run time stands for, disambiguated by its state.

    The state is unpickled only for an ambiguous local time, and only if its
    signature verifies; any other names one instant, whatever the state says
    (the row wins, see the job store).
    """
    if next_run_time is None or timezone.is_aware(next_run_time):
        return next_run_time
    if not util.is_ambiguous(next_run_time):
        return util.stored_instant(next_run_time)
    return util.stored_instant(
        next_run_time, util.state_next_run_time(job_id, job_state, job_signature)
    )


def earliest_claimable(using: str, instance: str, exclude: Iterable[str]) -> datetime | None:
    """The earliest next run time (an instant) among the jobs ``instance`` could claim.

    One indexed query. Only when that time is an ambiguous local time
    (``USE_TZ = False``, the repeated hour of autumn) are the rows within
    :data:`util.MAX_OFFSET_CHANGE` of it read with their states, to find the
    earliest instant among them.
    """
    rows = (
        DjangoJob.objects.using(using)
        .claimable(instance, timezone.now())
        .filter(next_run_time__isnull=False)
        .exclude(id__in=list(exclude))
        .order_by("next_run_time")
    )
    first = rows.values_list("next_run_time", flat=True).first()
    if first is None or timezone.is_aware(first):
        return first
    if not util.is_ambiguous(first):
        return util.stored_instant(first)
    near = rows.filter(next_run_time__lte=first + util.MAX_OFFSET_CHANGE)
    instants = [
        _instant(job_id, nrt, state, signature)
        for job_id, nrt, state, signature in near.values_list(
            "id", "next_run_time", "job_state", "job_signature"
        )
    ]
    return min(util.utc(at) for at in instants if at is not None)


def lock_free_ids(rows: Any, using: str) -> list[str]:
    """Lock the job rows ``rows`` selects, skipping those another session holds; return their ids.

    Used inside a write transaction by housekeeping, which must never wait
    for a row another session keeps locked (a view that changed a job inside
    a long ``atomic()`` block): the skipped rows are dealt with next time.
    """
    return backends.for_alias(using).locked_keys(rows.order_by("id"), using, skip_locked=True)


def release(
    using: str, instance: str, job_ids: Iterable[str], renewed_before: datetime | None = None
) -> set[str]:
    """Give up ``instance``'s claims on ``job_ids``; return the ids left for later.

    Left for later: rows another session keeps locked, and, with
    ``renewed_before``, claims taken or renewed at that time or after. Claims
    taken over by others stay as they are.
    """
    ids = list(job_ids)
    if not ids:
        return set()
    # No job is claimable elsewhere while an ended run here still holds its lock.
    runlocks.locks.settle()
    with backends.for_alias(using).write_transaction(using):
        ours = DjangoJob.objects.using(using).held_by(instance).filter(id__in=ids)
        releasable = ours
        if renewed_before is not None:
            releasable = ours.filter(acquired_until__lt=renewed_before + lease_time())
        free = lock_free_ids(releasable, using)
        if free:
            DjangoJob.objects.using(using).filter(id__in=free).release()
        if len(free) == len(ids):
            return set()
        return set(ours.values_list("id", flat=True)) - set(free)


def interrupt_runs(using: str, instance: str, reason: str) -> int:
    """Mark the runs ``instance`` left "Started execution" as "Interrupted"; return how many."""
    return DjangoJobExecution.objects.using(using).unfinished_of(instance).interrupt(reason)


def reap_dead_instances(using: str, alive: str | None = None) -> list[str]:
    """Retire instances whose heartbeat is older than the lease time; return their ids.

    Their unfinished runs become "Interrupted" (naming the instance), their
    claims are dropped and their rows deleted. Safe to run from several
    processes at once: each step only changes what is still there.
    """
    dead = list(DjangoSchedulerInstance.objects.using(using).dead().exclude(id=alive))
    for instance in dead:
        with backends.for_alias(using).write_transaction(using):
            reason = (
                f"Interrupted: scheduler instance {instance.id} (pid {instance.pid} on "
                f"{instance.host}) stopped heartbeating after {instance.last_heartbeat.isoformat()} "
                "before this run finished."
            )
            # Jobs before executions, the order in which the execution log locks.
            # Rows another session keeps locked are skipped: their claims have
            # expired anyway, so the others may take them.
            claimed = DjangoJob.objects.using(using).held_by(instance.id)
            DjangoJob.objects.using(using).filter(id__in=lock_free_ids(claimed, using)).release()
            count = interrupt_runs(using, instance.id, reason)
            deleted, _ = (
                DjangoSchedulerInstance.objects.using(using)
                .filter(id=instance.id, last_heartbeat=instance.last_heartbeat)
                .delete()
            )
        if deleted:
            logger.warning(
                "Scheduler instance %s (pid %s on %s) stopped heartbeating at %s; "
                "%d of its runs are marked Interrupted and its jobs are taken over",
                instance.id,
                instance.pid,
                instance.host,
                instance.last_heartbeat,
                count,
            )
    return [instance.id for instance in dead]


class CoordinatedStore(Protocol):
    """What a :class:`Coordinator` needs from its job store: its public face, nothing more.

    ``DjangoJobStore`` implements it. The coordinator never reaches into the
    store otherwise, and the store calls the coordinator's public methods.
    """

    #: The jobs this process declares in code (id -> fingerprint), or None.
    declared_ids: dict[str, str] | None

    @property
    def db(self) -> str:
        """The database alias the jobs are written to."""
        ...

    def run(self, operation: Callable[[], Any], description: str) -> Any:
        """Run database work, reconnecting and retrying after a lost connection."""
        ...

    def wake(self) -> None:
        """Wake the scheduler's loop, so it looks at the jobs again."""
        ...

    def running_here(self, job_id: str, executor_alias: str | None) -> bool:
        """True while an executor of this process still runs (or queues) ``job_id``."""
        ...

    def known_broken(self) -> list[str]:
        """Ids of the jobs this process cannot restore: never claimed here."""
        ...

    def scheduler_running(self) -> bool:
        """True while the scheduler has not been shut down."""
        ...

    def flush_write_backs(self) -> None:
        """Write back what the last dispatch round left pending."""
        ...


class Coordinator:
    """The per-store side of coordination: identity, claims bookkeeping, and a housekeeping thread.

    The store calls :meth:`claim` at the start of each dispatch round,
    :meth:`settle` for each job it writes back, and :meth:`end_round`. The
    housekeeping thread heartbeats, renews the claims of running jobs,
    releases them once the jobs finish, retires dead instances, and wakes the
    scheduler when another process changed a job.
    """

    def __init__(self, store: CoordinatedStore) -> None:
        self._store = store
        self.instance_id: str | None = None
        self._pid = 0
        # Guards the bookkeeping below between the dispatch and housekeeping
        # threads. Never held over database work: a slow query in one thread
        # must not stall the other.
        self.lock = threading.RLock()
        # Bumped each time this instance claims a job: a release decided before
        # a new claim of the same job leaves that claim alone.
        self._claim_epochs: dict[str, int] = {}
        # When the claim under way (if any) started.
        self._claiming_since: datetime | None = None
        self.claims: dict[str, Claim] = {}  # claimed in the current round
        # Claims kept after dispatch: job id -> the executor that may still run it.
        self.held: dict[str, str | None] = {}
        # Jobs whose write-back waits for another session's row lock: claims kept.
        self.deferred: set[str] = set()
        # How long housekeeping waits before it wakes the scheduler to retry them
        # (None: nothing deferred yet), and when it does (time.monotonic()).
        self._retry_wait: float | None = None
        self._retry_at = 0.0
        # Jobs running here whose claim another instance holds (logged once each).
        self._lost_logged: dict[str, str | None] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)  # a wake never blocks its caller
        self._listener: backends.Listener | None = None
        self._listen_retry_at = 0.0
        #: What the last heartbeat said about other instances: one is dead, none is, or unknown.
        self._others_dead: bool | None = None
        # The wake-up time the scheduler last got from the store, and what the
        # latest poll found (when its query started, the earliest time it saw),
        # guarded by ``_report_lock``; see report() and _poll().
        self._report_lock = threading.Lock()
        self.reported_next: datetime | None = None
        self.has_reported = False
        self._poll_seen: tuple[float, datetime | None] = (float("-inf"), None)
        # The thread of the scheduler's dispatch loop (set by each round): if it
        # dies, this instance must not go on holding jobs (see _dispatch_died).
        self.dispatcher: threading.Thread | None = None
        self._abandoned = False

    # --- the dispatch side (the scheduler's thread) -----------------------------------

    def ensure_running(self) -> str:
        """Register this process as an instance and start housekeeping, once per process."""
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            assert self.instance_id is not None
            return self.instance_id
        if self._pid != os.getpid():
            # A new process (first start, or a fork that inherited a started store).
            self.instance_id = new_instance_id()
            self._pid = os.getpid()
            self.claims.clear()
            self.held.clear()
            self.deferred.clear()
            self._retry_wait = None
        self._stopping.clear()
        self._register()
        self._thread = threading.Thread(
            target=self._housekeep, name="django_apscheduler-coordinator", daemon=True
        )
        self._thread.start()
        logger.info("Scheduler instance %s dispatches jobs", self.instance_id)
        assert self.instance_id is not None
        return self.instance_id

    def claim(self, due_by: datetime, exclude: Iterable[str], limit: int) -> list[Claim]:
        assert self.instance_id is not None
        using, instance = self._store.db, self.instance_id
        with self.lock:
            # A release decided while this claim is under way leaves alone what
            # it claims (see _release_idle).
            self._claiming_since = timezone.now()
        try:
            claims = self._store.run(
                lambda: claim_due(using, instance, due_by, exclude, limit),
                "claim due jobs",
            )
        finally:
            with self.lock:
                self._claiming_since = None
        with self.lock:
            for claim in claims:
                self.claims[claim.job_id] = claim
                self.held.pop(claim.job_id, None)
                self._claim_epochs[claim.job_id] = self._claim_epochs.get(claim.job_id, 0) + 1
        return claims

    def release_now(self, job_ids: list[str]) -> None:
        """Give up claims of this round that this process cannot run, in the database at once.

        Left to the heartbeat, they would be renewed for as long as any job
        runs here, and no other process would get them.
        """
        using, instance = self._store.db, self.instance_id
        # Out of the bookkeeping first, so the heartbeat neither renews them nor
        # reports them lost; if the release fails, the claims lapse after the lease.
        with self.lock:
            for job_id in job_ids:
                self.claims.pop(job_id, None)
                self.held.pop(job_id, None)
        self._store.run(
            lambda: release(using, instance, job_ids),  # type: ignore[arg-type]
            "release jobs this process cannot run",
        )

    def settle(self, job_id: str, executor: str | None) -> None:
        """The job's row was written back; keep the claim if ``executor`` still runs it."""
        with self.lock:
            self.claims.pop(job_id, None)
            self.deferred.discard(job_id)
            if not self.deferred:
                self._retry_wait = None
            if executor is not None:
                self.held[job_id] = executor
            else:
                self.held.pop(job_id, None)

    def defer(self, job_id: str) -> None:
        """The job's write-back waits for another session's row lock or for the database.

        The claim stays ours till it lands, and the job is not claimed again meanwhile.
        """
        with self.lock:
            self.claims.pop(job_id, None)
            self.held.pop(job_id, None)
            new = job_id not in self.deferred
            self.deferred.add(job_id)
            # A job newly deferred is retried soon, even while another one's
            # wait has grown (a view keeping its row locked for long).
            soon = time.monotonic() + WRITE_BACK_RETRY_INTERVAL
            sooner = new and (self._retry_wait is None or self._retry_at > soon)
            if sooner:
                self._retry_wait, self._retry_at = WRITE_BACK_RETRY_INTERVAL, soon
        if sooner:
            self.wake()  # housekeeping shortens its wait to the retry

    def deferred_ids(self) -> list[str]:
        with self.lock:
            return list(self.deferred)

    def end_round(self) -> None:
        """Claims the round did not write back (nothing was submitted) are released later."""
        with self.lock:
            for job_id in self.claims:
                self.held.setdefault(job_id, None)
            self.claims.clear()

    def wake(self) -> None:
        """Interrupt the housekeeping thread's wait."""
        try:
            self._wake_writer.send(b"x")
        except OSError:
            pass

    def stop(self) -> None:
        """Stop housekeeping, give up every claim and retire this instance's row."""
        thread, self._thread = self._thread, None
        if thread is None or self.instance_id is None:
            return
        self._stopping.set()
        self.wake()
        thread.join(timeout=10)
        using = self._store.db
        instance = self.instance_id

        def retire() -> None:
            runlocks.locks.settle()
            with backends.for_alias(using).write_transaction(using):
                DjangoJob.objects.using(using).held_by(instance).release()
                interrupt_runs(
                    using,
                    instance,
                    f"Interrupted: scheduler instance {instance} shut down before this run "
                    "finished.",
                )
                DjangoSchedulerInstance.objects.using(using).filter(id=instance).delete()

        try:
            db.run_resiliently(retire, using=using, description="retire the scheduler instance")
        except Exception:
            logger.exception("Could not retire scheduler instance %s", instance)
        with self.lock:
            self.claims.clear()
            self.held.clear()
            self.deferred.clear()
            self._retry_wait = None
        self.dispatcher = None
        self._abandoned = False
        self._pid = 0  # a later start registers a new instance

    # --- housekeeping (its own thread) ---------------------------------------------------

    def _register(self) -> None:
        using = self._store.db
        now = timezone.now()

        def register() -> None:
            DjangoSchedulerInstance.objects.using(using).update_or_create(
                id=self.instance_id,
                defaults={
                    "host": socket.gethostname()[:255],
                    "pid": os.getpid(),
                    "started": now,
                    "last_heartbeat": now,
                    "declared_ids": self._store.declared_ids,
                },
            )

        self._store.run(register, "register the scheduler instance")

    def _housekeep(self) -> None:
        db.serve_scheduler(self._store.db)
        poll, listen_poll = conf.poll_interval(), conf.listen_poll_interval()
        beat = conf.heartbeat_interval()
        reap = max(conf.lease_time(), beat)
        now = time.monotonic()
        last_poll, next_beat, next_reap = now, now + beat, now + beat
        # Overdue jobs and lost hand-offs are looked for less often than dead
        # instances: at the defaults once a minute (an idle scheduler's cost, B2).
        slow = max(reap, SLOW_HOUSEKEEPING_BEATS * beat)
        next_slow = now + beat
        try:
            while not self._stopping.is_set():
                # While notifications arrive, the poll is only a safety net (a
                # lost listener brings the short interval back at once).
                next_poll = last_poll + (listen_poll if self._listener is not None else poll)
                soonest = min(
                    next_poll, next_beat, next_reap, next_slow, self._write_back_retry_at()
                )
                timeout = max(0.0, soonest - time.monotonic())
                notified = self._wait(timeout)
                if self._stopping.is_set():
                    break
                if self._dispatch_died():
                    if not self._abandon():
                        break  # nothing runs here any more: stop heartbeating
                elif notified:
                    self._store.wake()
                now = time.monotonic()
                self._retry_write_backs(now, beat)
                if now >= next_beat:
                    next_beat = now + beat
                    self._safely(self._heartbeat, "heartbeat")
                    self._safely(self._release_idle, "release finished jobs")
                    if self._others_dead:  # the heartbeat saw one: retire it now
                        next_reap = now
                if now >= next_reap:
                    next_reap = now + reap
                    # Where the heartbeat tells whether any instance is dead,
                    # there is nothing to look for when it says none is.
                    if self._others_dead is not False:
                        self._safely(self._reap, "retire dead scheduler instances")
                if now >= next_slow:
                    next_slow = now + slow
                    if not self._abandoned:
                        self._safely(self._report_overdue, "look for overdue jobs")
                    self._safely(self._sweep_handoffs, "enqueue or mark lost hand-offs")
                if now >= next_poll and not self._abandoned:
                    last_poll = now
                    self._safely(self._poll, "look for changed jobs")
        finally:
            self._close_listener()
            connections.close_all()

    def _write_back_retry_at(self) -> float:
        """When the deferred write-backs are next retried (infinity: none is deferred)."""
        with self.lock:
            return self._retry_at if self._retry_wait is not None else float("inf")

    def _retry_write_backs(self, now: float, beat: float) -> None:
        """Wake the scheduler to retry the deferred write-backs, once their wait is over.

        Their jobs are not due here meanwhile, so without this their next fire
        waited for the next poll or heartbeat. The wait doubles at each retry
        while any stays deferred (a view inside a long ``atomic()``), up to a
        heartbeat.
        """
        with self.lock:
            if self._retry_wait is None or now < self._retry_at:
                return
            if not self.deferred:
                self._retry_wait = None
                return
            self._retry_wait = min(self._retry_wait * 2, beat)
            self._retry_at = now + self._retry_wait
        self._store.wake()

    def _dispatch_died(self) -> bool:
        """True if the scheduler's dispatch thread ended while the scheduler still runs.

        APScheduler's loop has no guard: an exception it does not expect (from
        a trigger, say) ends its thread, and no job is dispatched here again.
        """
        thread = self.dispatcher
        return (
            thread is not None
            and not thread.is_alive()
            and not self._stopping.is_set()
            and self._store.scheduler_running()
        )

    def _abandon(self) -> bool:
        """Give up the jobs of a scheduler whose dispatch thread died; True while runs go on.

        The round's write-backs are flushed, every claim not running here is
        released at once so other schedulers take the jobs; claims of runs
        still going stay held (and heartbeated) until they end, then the
        heartbeat stops and the instance is retired by the others.
        """
        if not self._abandoned:
            self._abandoned = True
            logger.error(
                "The dispatch thread (%s) of scheduler instance %s has died; this process "
                "dispatches nothing any more and gives its jobs up to other schedulers. See "
                "the error logged before for the cause, and restart this process.",
                self.dispatcher.name if self.dispatcher is not None else "?",
                self.instance_id,
            )
            self._safely(self._store.flush_write_backs, "write back the last round")
            with self.lock:
                for job_id in self.claims:
                    self.held.setdefault(job_id, None)
                self.claims.clear()
        self._safely(self._release_idle, "release the jobs of a dead dispatch thread")
        with self.lock:
            return bool(self.held)

    def _safely(self, step: Any, description: str) -> None:
        try:
            step()
        except Exception as exc:
            logger.warning(
                "Scheduler instance %s could not %s: %s", self.instance_id, description, exc
            )

    def _housekeeping_run(self, operation: Any, description: str) -> Any:
        return db.run_resiliently(
            operation,
            using=self._store.db,
            description=description,
            timeout=HOUSEKEEPING_RETRY_TIMEOUT,
        )

    def _heartbeat(self) -> None:
        """Renew this instance's heartbeat, then the claims of the jobs it holds.

        The heartbeat is one statement of its own, committed at once, so it
        never waits for a job row another session keeps locked; the renewal
        skips such rows (they are renewed at the next heartbeat). The jobs
        still running here are taken back if their claims were lost (this
        instance was taken for dead while they ran) and nobody else holds them.
        """
        using = self._store.db
        instance = self.instance_id
        now = timezone.now()
        with self.lock:
            claimed = set(self.claims)
            running = {
                job_id
                for job_id, executor in self.held.items()
                if self._store.running_here(job_id, executor)
            }
            holding = bool(self.held or self.claims or self.deferred)
            deferred = bool(self.deferred)

        self._others_dead = None

        def beat() -> tuple[bool, bool | None]:
            return backends.for_alias(using).heartbeat(
                DjangoSchedulerInstance.objects.using(using),
                instance or "",
                now,
                now - lease_time(),
            )

        found, self._others_dead = self._housekeeping_run(beat, "heartbeat")
        if not found and not self._stopping.is_set():
            logger.warning(
                "Scheduler instance %s was taken for dead by another scheduler (no heartbeat "
                "for %s); registering again",
                instance,
                lease_time(),
            )
            self._register()
        if holding:
            self._housekeeping_run(
                lambda: self._renew(using, instance, running, claimed),  # type: ignore[arg-type]
                "renew the claims of running jobs",
            )
        runlocks.locks.verify(using)
        runlocks.locks.settle()
        if deferred:  # retry the write-backs that waited for another session's lock
            self._store.wake()

    def _renew(self, using: str, instance: str, running: set[str], claimed: set[str]) -> None:
        now = timezone.now()
        backend = backends.for_alias(using)
        jobs = DjangoJob.objects.using(using)
        rows = jobs.held_by(instance)
        if running:
            rows |= jobs.filter(id__in=running).claimable(instance, now)
        with backend.write_transaction(using):
            ids = lock_free_ids(rows, using)
            if ids:
                jobs.filter(id__in=ids).claim(instance, now + lease_time())
        lost = (running | claimed) - set(ids)
        if lost:
            holders = dict(
                DjangoJob.objects.using(using)
                .filter(id__in=lost)
                .held_by_others(instance)
                .values_list("id", "acquired_by")
            )
            for job_id, holder in holders.items():
                if self._lost_logged.get(job_id) == holder:
                    continue
                self._lost_logged[job_id] = holder
                logger.warning(
                    "Job %r runs in scheduler instance %s, but its claim was lost (this instance "
                    "was taken for dead) and instance %s holds it now; that instance's runs of "
                    "the job are refused while this run goes on (run locks)",
                    job_id,
                    instance,
                    holder,
                )

    def _release_idle(self) -> None:
        """Give up the claims of held jobs that no longer run here.

        The database work runs without the lock. Only claims taken or renewed
        before the decision (and before any claim under way started) are
        released, and the bookkeeping of a job claimed again meanwhile is left
        alone: a new claim of the same job is never given up by mistake.
        """
        with self.lock:
            idle = {
                job_id: self._claim_epochs.get(job_id, 0)
                for job_id, executor in self.held.items()
                if not self._store.running_here(job_id, executor)
            }
            decided = timezone.now()
            if self._claiming_since is not None:
                decided = min(decided, self._claiming_since)
        if not idle:
            return
        using, instance = self._store.db, self.instance_id
        later = self._housekeeping_run(
            lambda: release(using, instance, idle, renewed_before=decided),  # type: ignore[arg-type]
            "release finished jobs",
        )
        with self.lock:
            for job_id, epoch in idle.items():
                if job_id not in later and self._claim_epochs.get(job_id, 0) == epoch:
                    self.held.pop(job_id, None)

    def _reap(self) -> None:
        using = self._store.db
        dead = self._housekeeping_run(
            lambda: reap_dead_instances(using, alive=self.instance_id),
            "retire dead scheduler instances",
        )
        if dead:
            self._store.wake()
            # Hand-offs the dead left between their commit and their enqueue.
            self._sweep_handoffs()

    def _sweep_handoffs(self) -> None:
        from django_apscheduler import handoff  # at call time: handoff imports executions

        self._housekeeping_run(
            lambda: handoff.sweep(self.instance_id), "enqueue or mark lost hand-offs"
        )

    def _report_overdue(self) -> None:
        """Report the overdue jobs no scheduler reported yet (see :mod:`overdue`).

        Here, in the housekeeping thread, so that saturated executors do not
        keep it from running.
        """
        using = self._store.db
        self._housekeeping_run(lambda: overdue.report_overdue(using=using), "look for overdue jobs")

    def report_started(self) -> float:
        """The store starts looking up the time the scheduler will sleep until; pass to report()."""
        return time.monotonic()

    def report(self, next_run_time: datetime | None, asked: float) -> None:
        """The scheduler sleeps until ``next_run_time``, found by a query started at ``asked``.

        A poll whose query started later and saw a job due sooner may have
        compared it with an older report than this one: the scheduler is
        woken then, so a change is never slept through.
        """
        with self._report_lock:
            self.reported_next = next_run_time
            self.has_reported = True
            seen_at, seen = self._poll_seen
        if seen_at > asked and _sooner(seen, next_run_time):
            self._store.wake()

    def _poll(self) -> None:
        """Wake the scheduler if a job is now due before the time it sleeps until."""
        using, instance = self._store.db, self.instance_id
        with self._report_lock:
            if not self.has_reported:
                return
        started = time.monotonic()
        earliest = self._housekeeping_run(
            lambda: earliest_claimable(using, instance, self._store.known_broken()),  # type: ignore[arg-type]
            "look for changed jobs",
        )
        with self._report_lock:
            self._poll_seen = (started, earliest)
            planned = self.reported_next
        if _sooner(earliest, planned):
            logger.debug("A job changed elsewhere is due at %s; waking the scheduler", earliest)
            self._store.wake()

    # --- waiting: the wake socket, plus the LISTEN connection where there is one -------

    def _wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s; return True if another process announced a change.

        ``selectors`` (epoll/poll) works with any file descriptor number;
        ``select.select`` fails above 1024. Any failure of the wait itself
        closes the listener and sleeps out the timeout (at most a poll
        interval), so a persistent failure never turns into a busy loop.
        """
        listener = self._open_listener()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._wake_reader, selectors.EVENT_READ)
                if listener is not None:
                    selector.register(listener, selectors.EVENT_READ)
                readable = {key.fileobj for key, _ in selector.select(timeout)}
        except Exception as exc:
            logger.warning(
                "Scheduler instance %s could not wait for job changes (%s); polling meanwhile",
                self.instance_id,
                exc,
            )
            if listener is not None:
                self._close_listener()
                self._listen_retry_at = time.monotonic() + conf.poll_interval()
            self._stopping.wait(timeout)
            return False
        if self._wake_reader in readable:
            try:
                while self._wake_reader.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        if listener is not None and listener in readable:
            try:
                return listener.drain() > 0
            except Exception as exc:
                logger.warning("Lost the connection listening for job changes: %s", exc)
                self._close_listener()
        return False

    def _open_listener(self) -> backends.Listener | None:
        if self._listener is not None or time.monotonic() < self._listen_retry_at:
            return self._listener
        using = self._store.db
        try:
            self._listener = backends.for_alias(using).listener(using)
        except Exception as exc:
            self._listen_retry_at = time.monotonic() + conf.poll_interval()
            logger.warning("Cannot listen for job changes (polling meanwhile): %s", exc)
            return None
        if self._listener is None:  # the database has no notifications: poll only
            self._listen_retry_at = float("inf")
        return self._listener

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()


def _sooner(found: datetime | None, planned: datetime | None) -> bool:
    """True if a job due at ``found`` is due before the scheduler's planned wake-up."""
    return found is not None and (planned is None or util.utc(found) < util.utc(planned))
