"""Run holds: a running job holds a lock for exactly as long as its run lasts.

Claims (:mod:`coordination`) decide which process dispatches a fire; they
live on heartbeats, and a heartbeat can stop while a run goes on (the
interpreter waits for a job thread after the scheduler shut down, a job holds
the GIL, the process is stopped or its heartbeat is blocked). So a run also
takes, before its job function is called, one of ``max_instances`` lock
slots of its job: a session-level lock of the database (PostgreSQL advisory
locks, MySQL/MariaDB ``GET_LOCK``) on one connection of this process, or an
OS file lock beside the SQLite database (see :mod:`backends`). Such a lock
lives as long as the run, or the process, whatever happens to heartbeats.
When every slot is held elsewhere the run is refused (:class:`JobStillRunning`)
and recorded "Max instances!".

If the lock connection is lost, its locks are gone with it: the next use
opens a new one and takes back the locks of the runs still going; one that
another process took meanwhile is logged as an error naming the job.

Round trips are batched, so a lock costs a fraction of one per run: a
dispatch round takes the locks of all the runs it hands out in one statement
(:meth:`RunLocks.reserve`), and the locks of runs that ended are given up
together a moment later (:meth:`RunLocks.release_soon`), at the latest
before this process gives up any claim (:meth:`RunLocks.settle`):
a job is never claimable elsewhere while its ended run still holds its lock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

from django.db import router

from django_apscheduler import backends

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a lock of a lost session may still be held (by that session, being
#: ended by the server) before taking it back counts as failed.
RETAKE_PATIENCE = 2.0

#: Seconds the lock of a run that ended waits, to be given up with others.
RELEASE_LINGER = 0.01


class JobStillRunning(Exception):
    """A run was refused because every ``max_instances`` slot of its job is held elsewhere."""

    def __init__(self, job_id: str, max_instances: int, holder: str | None) -> None:
        self.job_id = job_id
        self.max_instances = max_instances
        self.holder = holder
        where = f" (held by {holder})" if holder else ""
        super().__init__(
            f"Execution of job '{job_id}' skipped: it is still running in another process"
            f"{where}; maximum number of running instances ({max_instances}) reached!"
        )


def _default_alias() -> str:
    """The database the jobs are written to, whose locks the runs take."""
    from django_apscheduler.models import DjangoJob

    return router.db_for_write(DjangoJob)


def lock_name(job_id: str, slot: int) -> str:
    """The name of slot ``slot`` of job ``job_id``'s run locks."""
    return f"django_apscheduler.run:{slot}:{job_id}"


class RunLocks:
    """The run locks of this process: one lock session, shared by its threads.

    Two locks guard it: ``_io`` serialises the session's database work, and
    ``_mutex`` the bookkeeping, held only for moments and never over database
    work, so a run taking its reserved lock or giving it up never waits for a
    round trip of another thread.
    """

    def __init__(self) -> None:
        self._io = threading.Lock()
        self._mutex = threading.Lock()
        self._wanted = threading.Condition(self._mutex)
        self._session: backends.RunLockSession | None = None
        self._using: str | None = None
        self._pid = 0
        self._reset()
        self._releaser: threading.Thread | None = None

    def _reset(self) -> None:
        """Forget every lock (the session is gone or not ours). Called under the mutex, or before use."""
        # Lock name -> the job id whose run holds it.
        self._held: dict[str, str] = {}
        # Job id -> locks taken for its runs that were dispatched and have not started.
        self._reserved: dict[str, list[str]] = {}
        self._coming: dict[str, Callable[[], bool]] = {}
        # Held locks of runs that ended, to be given up by the next batch.
        self._ending: set[str] = set()

    # --- database work: called holding _io -------------------------------------------

    def _open(self, using: str) -> backends.RunLockSession:
        """The session for ``using``, opened (again) if needed."""
        if self._pid != os.getpid():
            # A forked child: the parent's session is not ours (never close it here).
            self._session, self._pid = None, os.getpid()
            with self._mutex:
                self._reset()
        if self._session is not None and self._using != using:
            self._session.close()
            self._session = None
            with self._mutex:
                self._reset()
        if self._session is None:
            self._session = backends.for_alias(using).run_lock_session(using)
            self._using = using
            self._retake()
        return self._session

    def _retake(self) -> None:
        """Take back the locks held before the session was lost.

        A server may still be ending the lost session (MariaDB releases a killed
        connection's locks only once its thread has finished), so a lock that
        is still taken is tried again for up to :data:`RETAKE_PATIENCE` seconds
        before it counts as taken by another process.
        """
        assert self._session is not None
        with self._mutex:
            held = list(self._held.items())
        deadline = time.monotonic() + RETAKE_PATIENCE
        for name, job_id in held:
            taken = self._session.try_lock(name)
            while not taken and time.monotonic() < deadline:
                time.sleep(0.05)
                taken = self._session.try_lock(name)
            if not taken:
                logger.error(
                    "Job %r: this process lost its run lock with its lock connection and another "
                    "process (%s) took it meanwhile: the job may be running in both. Check the "
                    "database connection (network, server restarts, idle timeouts).",
                    job_id,
                    self._session.holder(name) or "unknown",
                )

    def _lost(self, exc: BaseException) -> None:
        logger.warning("The run-lock connection was lost (%s); reconnecting", exc)
        if self._session is not None:
            self._session.close()
        self._session = None
        with self._mutex:
            # The locks of ended runs are gone with the session: not taken back.
            for name in self._ending:
                self._held.pop(name, None)
            self._ending.clear()

    def _with_session(
        self, using: str, action: str, call: Callable[[backends.RunLockSession], T]
    ) -> T:
        """Run ``call(session)``; after a lost session, reconnect (re-taking locks) and retry once."""
        try:
            return call(self._open(using))
        except Exception as exc:
            self._lost(exc)
        try:
            return call(self._open(using))
        except Exception:
            self._lost(RuntimeError(f"could not {action} after reconnecting"))
            raise

    def _flush_ending(self) -> None:
        with self._mutex:
            if not self._ending:
                return
            names = sorted(self._ending)
            self._ending.clear()
            for name in names:
                self._held.pop(name, None)
        self._unlock(names)

    def _unlock(self, names: list[str]) -> None:
        """Give up ``names`` on the session, which no longer counts them as held."""
        if self._session is None or self._pid != os.getpid():
            return  # lost with their session: nothing left to give up
        try:
            self._session.unlock_many(names)
        except Exception as exc:  # the session's end gives the locks up too
            self._lost(exc)

    # --- the runs' side ----------------------------------------------------------------

    def acquire(self, job_id: str, slots: int, using: str | None = None) -> str | None:
        """Take a free slot of ``job_id``'s ``slots`` run locks; return its name, None if all are held.

        Each run of this process takes a slot of its own (the database's locks
        are re-entrant within one session, so slots held here are skipped).
        Raises a database error if the locks cannot be reached at all.
        """
        using = using or _default_alias()
        with self._io:
            for slot in range(max(1, slots)):
                name = lock_name(job_id, slot)
                with self._mutex:
                    if name in self._ending:  # a run here just ended: its lock passes on
                        self._ending.discard(name)
                        return name
                    if name in self._held:
                        continue

                def try_lock(session: backends.RunLockSession, name: str = name) -> bool:
                    return session.try_lock(name)

                if self._with_session(using, f"lock job {job_id!r}", try_lock):
                    with self._mutex:
                        self._held[name] = job_id
                    return name
            return None

    def reserve(
        self, runs: Iterable[tuple[str, int, Callable[[], bool]]], using: str | None = None
    ) -> None:
        """Take a lock for the coming run of each ``(job_id, slots, coming)``, in one round trip.

        A dispatch round calls this for the runs it hands out; each run then
        finds its lock taken (:meth:`take_reserved`). ``coming()`` says
        whether the run is still queued here: once it is not and the run did
        not take its lock (its executor refused it), the lock is given up
        (:meth:`drop_reservations`). A job whose free slot is held elsewhere
        gets none here: its run tries again when it starts (:meth:`acquire`),
        and is refused if the slot is still held. Raises a database error if
        the locks cannot be reached.
        """
        using = using or _default_alias()
        with self._io:
            names: list[str] = []
            owners: list[tuple[str, Callable[[], bool]]] = []
            with self._mutex:
                for job_id, slots, coming in runs:
                    for slot in range(max(1, slots)):
                        name = lock_name(job_id, slot)
                        if name in self._ending:
                            self._ending.discard(name)
                            self._reserve(job_id, name, coming)
                            break
                        if name not in self._held:
                            names.append(name)
                            owners.append((job_id, coming))
                            break
            if not names:
                return
            taken = self._with_session(
                using, "lock the dispatched jobs", lambda session: session.try_lock_many(names)
            )
            with self._mutex:
                for name, (job_id, coming), ok in zip(names, owners, taken):
                    if ok:
                        self._held[name] = job_id
                        self._reserve(job_id, name, coming)

    def _reserve(self, job_id: str, name: str, coming: Callable[[], bool]) -> None:
        """Called under the mutex."""
        self._reserved.setdefault(job_id, []).append(name)
        self._coming[job_id] = coming

    def take_reserved(self, job_id: str) -> str | None:
        """The lock :meth:`reserve` took for a run of ``job_id``, now the run's; None if none."""
        with self._mutex:
            names = self._reserved.get(job_id)
            if not names:
                return None
            name = names.pop()
            if not names:
                del self._reserved[job_id]
                self._coming.pop(job_id, None)
            return name

    def drop_reservations(self) -> None:
        """Give up (soon) the reserved locks of runs that are no longer coming.

        Called at the end of each dispatch round, and before claims are given up.
        """
        with self._mutex:
            gone = [job_id for job_id, coming in self._coming.items() if not coming()]
            for job_id in gone:
                self._ending.update(self._reserved.pop(job_id, ()))
                del self._coming[job_id]
            if self._ending:
                self._wake_releaser()

    def release_soon(self, name: str) -> None:
        """Give up the lock ``name`` of a run that ended, with others, within a moment."""
        with self._mutex:
            if name not in self._held:
                return
            # Locks already waiting go in the releaser's coming batch: only the
            # first of a batch needs to wake it.
            first = not self._ending
            self._ending.add(name)
            if first:
                self._wake_releaser()

    def flush_releases(self) -> None:
        """Give up now the locks :meth:`release_soon` is about to."""
        with self._io:
            self._flush_ending()

    def settle(self) -> None:
        """Before this process gives up claims: give up the locks of ended and of refused runs."""
        self.drop_reservations()
        self.flush_releases()

    def _wake_releaser(self) -> None:
        """Called under the mutex."""
        if self._releaser is None or not self._releaser.is_alive():
            self._releaser = threading.Thread(
                target=self._release_loop, name="django_apscheduler-runlocks", daemon=True
            )
            self._releaser.start()
        self._wanted.notify()

    def _release_loop(self) -> None:
        while True:
            with self._mutex:
                while not self._ending:
                    self._wanted.wait()
            time.sleep(RELEASE_LINGER)  # the runs ending meanwhile go in the same batch
            self.flush_releases()

    def holder(self, job_id: str, using: str | None = None) -> str | None:
        """Who holds slot 0 of ``job_id``'s run locks, for messages (None if unknown)."""
        using = using or _default_alias()
        with self._io:
            try:
                return self._open(using).holder(lock_name(job_id, 0))
            except Exception:
                return None

    def release(self, name: str) -> None:
        """Give up the lock ``name`` taken by :meth:`acquire`, now."""
        with self._io:
            with self._mutex:
                self._ending.discard(name)
                if self._held.pop(name, None) is None:
                    return
            self._unlock([name])

    def verify(self, using: str) -> None:
        """While runs hold locks, check the session; if it was lost, reconnect and re-take them.

        Called from the heartbeat, so a lost connection is noticed while the
        runs go on, not only when the next run starts or ends.
        """
        with self._io:
            with self._mutex:
                idle = not self._held
            if idle or self._session is None or self._pid != os.getpid():
                return
            try:
                self._session.ping()
            except Exception as exc:
                self._lost(exc)
                self._open(using)

    def close(self) -> None:
        """End the session (tests; the process's end does it otherwise)."""
        with self._io:
            if self._session is not None and self._pid == os.getpid():
                self._session.close()
            self._session = None
            with self._mutex:
                self._reset()

    def _after_fork_in_child(self) -> None:
        """A forked child (a process pool's worker, a pre-forking server's worker) starts afresh."""
        # The fork may have copied the locks locked.
        self._io = threading.Lock()
        self._mutex = threading.Lock()
        self._wanted = threading.Condition(self._mutex)
        self._releaser = None
        session, self._session = self._session, None
        self._reset()
        self._pid = os.getpid()
        if session is not None:
            session.forget_in_child()


#: This process's run locks.
locks = RunLocks()
os.register_at_fork(after_in_child=locks._after_fork_in_child)


@contextmanager
def holding(job_id: str, max_instances: int) -> Iterator[None]:
    """Hold a run lock of ``job_id`` for the block; raise :class:`JobStillRunning` if none is free.

    If the locks cannot be reached (the database is down), the run goes on
    without one, with a warning: it was dispatched under a claim, and losing
    the run would be worse.
    """
    try:
        name = locks.take_reserved(job_id) or locks.acquire(job_id, max_instances)
    except Exception as exc:
        logger.warning(
            "Job %r runs without its run lock (the database cannot be reached: %s); another "
            "process could start it meanwhile",
            job_id,
            exc,
        )
        yield
        return
    if name is None:
        holder = locks.holder(job_id) if max_instances == 1 else None
        logger.warning(
            "Job %r was not started: all %d of its max_instances slots are held by runs in other "
            "processes%s",
            job_id,
            max_instances,
            f" ({holder})" if holder else "",
        )
        raise JobStillRunning(job_id, max_instances, holder)
    try:
        yield
    finally:
        locks.release_soon(name)
