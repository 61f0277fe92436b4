"""The dispatch round: what one round handed out, and writing it back.

APScheduler's loop calls the job store from one thread: ``get_due_jobs``,
then for each due job it submits the job and calls ``update_job`` (or
``remove_job`` for a job that will not fire again), then
``get_next_run_time``. The store recognises those calls by the thread of the
round (:meth:`DispatchRound.dispatched`) and hands them here: the writes are
queued (:meth:`DispatchRound.queue`) and flushed together at the end of the
round (:meth:`DispatchRound.flush`), while the claims keep the jobs ours.
One round trip per fire would bound throughput by the database's latency.
"""

from __future__ import annotations

import functools
import logging
import pickle
import threading
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import TYPE_CHECKING, Iterable, NamedTuple

from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from django_apscheduler import backends, coordination, db, executions, runlocks, signing, util
from django_apscheduler.models import DjangoJob

if TYPE_CHECKING:
    from apscheduler.job import Job

    from django_apscheduler.jobstores import DjangoJobStore

logger = logging.getLogger(__name__)

#: ``version`` plus one; a row written by code that predates the column has NULL.
NEXT_VERSION = Coalesce(F("version"), Value(0)) + 1


#: The columns a write-back sets, in the order ``DispatchRound.flush`` gives them.
WRITE_BACK_FIELDS = [
    "next_run_time",
    "job_state",
    "job_signature",
    "version",
    "acquired_by",
    "acquired_until",
]


class WriteBack(NamedTuple):
    """What the dispatch of one job changed, waiting for the end of the round (one per fire)."""

    job_id: str
    executor: str | None
    finished: bool
    state: bytes
    next_run_time: datetime | None  # as stored
    job_next_run_time: datetime | None  # as the job has it (for merging into a stored state)
    claim: coordination.Claim | None


class DispatchRound:
    """One store's dispatch rounds: the round's thread, the jobs it handed out, their write-backs.

    Used by the scheduler's dispatch thread only, except :meth:`flush`,
    which the housekeeping thread also calls once the dispatch thread died.
    """

    def __init__(self, store: DjangoJobStore) -> None:
        self._store = store
        #: The thread running the current round, and the ids it handed out.
        self.thread: int | None = None
        self.ids: set[str] = set()
        #: Write-backs waiting for the end of the round (or retried from an earlier one).
        self.pending: list[WriteBack] = []
        #: The round found no free thread here: the end of a run wakes the scheduler.
        self.saturated = False
        #: The round claimed nothing although something was due (rows locked elsewhere).
        self.claimed_nothing = False
        #: The time the round was asked for.
        self.now: datetime = datetime.min.replace(tzinfo=dt_timezone.utc)
        #: How long the runs this store dispatched took lately (sizes its rounds).
        self.pace = executions.RunPace()

    def begin(self, now: datetime) -> None:
        """A round starts in this thread."""
        self.thread = threading.get_ident()
        self.now = now
        self.ids = set()

    def hand_out(self, job_ids: Iterable[str]) -> None:
        """The round gives these jobs to APScheduler: their writes are write-backs."""
        self.ids = set(job_ids)

    def hold_runs(self, jobs: list[Job]) -> None:
        """Take the run locks of the runs handed out to run here, in one round trip.

        Each run then starts without a round trip of its own (see
        :mod:`runlocks`). If the locks cannot be reached now, each run tries
        when it starts.
        """
        if not jobs:
            return
        store = self._store
        runs = [
            (
                job.id,
                job.max_instances if isinstance(job.max_instances, int) else 1,
                functools.partial(store.running_here, job.id, job.executor),
            )
            for job in jobs
        ]
        try:
            store.off_the_loop(lambda: runlocks.locks.reserve(runs))
        except Exception as exc:
            logger.debug("Could not take the run locks of a dispatch round (%s)", exc)

    def end(self) -> None:
        self.thread = None
        self.ids = set()

    def in_round(self) -> bool:
        """True in the thread of the round under way."""
        return self.thread == threading.get_ident()

    def dispatched(self, job_id: str) -> bool:
        """True when the scheduler's loop handles ``job_id`` in its current round.

        Its writes then follow a dispatch: a row that vanished meanwhile was
        removed by someone else, which must neither be undone nor kill the loop.
        """
        return self.in_round() and job_id in self.ids

    def queue(self, job: Job, state: bytes | None) -> None:
        """Queue what the dispatch of ``job`` changed; ``state`` None: it will not fire again."""
        finished = state is None
        self.pending.append(
            WriteBack(
                job_id=job.id,
                executor=None if finished else job.executor,
                finished=finished,
                state=b"" if state is None else state,
                next_run_time=(
                    None if finished else util.get_django_internal_datetime(job.next_run_time)
                ),
                job_next_run_time=None if finished else job.next_run_time,
                claim=self._store.coordinator.claims.get(job.id),
            )
        )

    def flush(self) -> None:
        """Write the round's dispatched jobs back and release their claims, unless beaten to it.

        A write lands only where the row is as it was when claimed (same
        version, still ours): all of those in one transaction and one bulk
        ``UPDATE``. The others were changed meanwhile and are settled one by
        one (:meth:`_resolve`): a removal, pause or reschedule elsewhere wins;
        a change that left the next run time alone (new arguments, say) is
        kept, with the next run time advanced past the fire just dispatched.
        A job still running here keeps its claim (``max_instances`` across
        processes).
        """
        # Reserved run locks of runs that will not start, and those of runs
        # that ended, are given up before any claim is.
        self._store.off_the_loop(runlocks.locks.settle)
        pending, self.pending = self.pending, []
        if not pending:
            return
        coordinator = self._store.coordinator
        instance = coordinator.instance_id
        using = self._store.db
        backend = backends.for_alias(using)
        keep = {
            wb.job_id
            for wb in pending
            if not wb.finished and self._store.running_here(wb.job_id, wb.executor)
        }

        def write_all() -> tuple[set[str], set[str]]:
            """Write the unchanged rows; return their ids, and those of unchanged locked rows."""
            until = timezone.now() + coordination.lease_time()
            with backend.write_transaction(using):
                rows = DjangoJob.objects.using(using).with_ids(wb.job_id for wb in pending)
                # Rows another session keeps locked are skipped, not waited for
                # (a view inside a long atomic block).
                current = {
                    job_id: (version, holder)
                    for job_id, version, holder in backend.lock_for_write_back(
                        rows.order_by("id"), using
                    ).values_list("id", "version", "acquired_by")
                }
                clean = [
                    wb
                    for wb in pending
                    if wb.claim is not None
                    and current.get(wb.job_id) == (wb.claim.version, instance)
                ]
                # A skipped row is locked or gone. One still as claimed, only locked
                # (on MySQL the log's foreign-key checks lock the job rows they
                # name), waits for the next round's write-back, with the others.
                skipped = [wb.job_id for wb in pending if wb.job_id not in current]
                committed: dict[str, tuple[int | None, str | None]] = {}
                if skipped:
                    committed = {
                        job_id: (version, holder)
                        for job_id, version, holder in DjangoJob.objects.using(using)
                        .filter(id__in=skipped)
                        .values_list("id", "version", "acquired_by")
                    }
                locked = {
                    wb.job_id
                    for wb in pending
                    if wb.claim is not None
                    and wb.job_id not in current
                    and committed.get(wb.job_id) == (wb.claim.version, instance)
                }
                keeps = [wb.job_id in keep for wb in clean]
                db.update_values(
                    DjangoJob,
                    using,
                    WRITE_BACK_FIELDS,
                    (
                        [
                            wb.job_id,
                            wb.next_run_time,
                            wb.state,
                            signing.sign(wb.job_id, wb.state),
                            (wb.claim.version or 0) + 1,  # type: ignore[union-attr]
                            instance if kept else None,
                            until if kept else None,
                        ]
                        for wb, kept in zip(clean, keeps)
                    ),
                )
            return {wb.job_id for wb in clean}, locked

        settled: list[WriteBack] = []
        try:
            written, locked = self._store.run(write_all, "write back the dispatched jobs")
            for wb in pending:
                if wb.job_id in written:
                    settled.append(wb)
                    continue
                if wb.job_id in locked:
                    continue  # deferred: retried first at the next flush

                def resolve(wb: WriteBack = wb) -> str:
                    return self._resolve(wb, wb.job_id in keep)

                outcome = self._store.run(resolve, f"write back job {wb.job_id!r}")
                if outcome != "busy":
                    self._log_outcome(wb, outcome)
                    settled.append(wb)
        except Exception:
            # Never kill the scheduler's loop. Dropping these writes would let
            # this process claim the rows again and dispatch the same fires twice.
            logger.exception(
                "Could not write back %d dispatched jobs; retried at the next round, "
                "their claims keep them from being dispatched again meanwhile",
                len(pending) - len(settled),
            )
        finally:
            done = {id(wb) for wb in settled}
            retry = [wb for wb in pending if id(wb) not in done]
            for wb in settled:
                coordinator.settle(wb.job_id, wb.executor if wb.job_id in keep else None)
            for wb in retry:
                coordinator.defer(wb.job_id)
            # Retried first at the next flush; the claim stays ours meanwhile.
            self.pending[:0] = retry

    def _resolve(self, wb: WriteBack, keep: bool) -> str:
        """Write back one job whose row changed since it was claimed; return what happened."""
        using = self._store.db
        instance = self._store.coordinator.instance_id
        claim = wb.claim
        if keep:
            lease = {
                "acquired_by": instance,
                "acquired_until": timezone.now() + coordination.lease_time(),
            }
        else:
            lease = {"acquired_by": None, "acquired_until": None}
        backend = backends.for_alias(using)
        with backend.write_transaction(using):
            rows = DjangoJob.objects.using(using).filter(id=wb.job_id)
            row = (
                backend.lock_for_write_back(rows, using)
                .values(
                    "job_state", "job_signature", "next_run_time", "acquired_by", "acquired_until"
                )
                .first()
            )
            if row is None:
                # Locked by another session (left for the next round) or removed.
                return "busy" if rows.exists() else "removed"
            holder, until = row["acquired_by"], row["acquired_until"]
            if holder not in (None, instance) and until and until >= timezone.now():
                return "taken"
            # A state written meanwhile whose signature is refused is not merged
            # into (nor unpickled): it stays as it is, and is reported broken.
            checked = signing.check(wb.job_id, row["job_state"], row["job_signature"])
            unmoved = (
                claim is not None
                and row["job_state"]
                and checked.state is not None
                and row["next_run_time"] == claim.next_run_time
            )
            if not unmoved:
                rows.update(**lease)
                return "changed"
            if wb.finished:
                new_state = b""
            else:
                assert checked.state is not None
                stored = signing.loads(checked.state)
                stored["next_run_time"] = wb.job_next_run_time
                new_state = pickle.dumps(stored, self._store.pickle_protocol)
            rows.update(
                next_run_time=wb.next_run_time,
                job_state=new_state,
                job_signature=signing.sign(wb.job_id, new_state),
                version=NEXT_VERSION,
                **lease,
            )
            return "merged"

    @staticmethod
    def _log_outcome(wb: WriteBack, outcome: str) -> None:
        if outcome == "removed":
            logger.info("Job %r was removed while it was being dispatched", wb.job_id)
        elif outcome == "changed":
            logger.info(
                "Job %r was paused or rescheduled while it was being dispatched; that change "
                "stands",
                wb.job_id,
            )
        elif outcome == "taken":
            logger.warning(
                "Job %r: this scheduler's claim expired during dispatch (it took longer than "
                "APSCHEDULER_LEASE_TIME) and another scheduler took the job; its fire at %s may "
                "run twice",
                wb.job_id,
                wb.claim.next_run_time if wb.claim else "?",
            )
