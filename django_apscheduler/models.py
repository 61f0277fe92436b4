"""The two tables of django-apscheduler: stored jobs and their execution log.

The field definitions reproduce the schema that django-apscheduler 0.7.0 left
after its migration 0009, option for option, so an existing database is taken
over as it stands and ``makemigrations`` finds nothing to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Iterable, cast

from django.db import models, router, transaction
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_apscheduler import signing, util
from django_apscheduler.exceptions import UntrustedJobStateError

if TYPE_CHECKING:
    from apscheduler.job import Job


def _lease() -> timedelta:
    from django_apscheduler import conf

    return timedelta(seconds=conf.lease_time())


@dataclass(frozen=True)
class JobState:
    """What a stored job row is: ``scheduled``, ``paused``, ``finished`` or ``broken``.

    ``job`` is the restored APScheduler job (scheduled or paused rows);
    ``error`` the exception that kept a broken row from being restored.
    """

    name: str
    job: Job | None = None
    error: Exception | None = None

    @property
    def reason(self) -> str:
        """``"ValueError: boom"`` for a broken row (``"unsigned"``, ``"signature mismatch"``
        for one whose signature is refused), empty otherwise."""
        if self.error is None:
            return ""
        if isinstance(self.error, UntrustedJobStateError):
            return self.error.problem
        return f"{type(self.error).__name__}: {self.error}"


def classify_job(
    job_id: str,
    job_state: bytes | memoryview | None,
    job_signature: str | None,
    next_run_time: datetime | None,
) -> JobState:
    """The state of a stored row, from its ``id``, ``job_state``, ``job_signature`` and
    ``next_run_time`` columns.

    The one classification the admin, the ``apscheduler`` command and
    ``run_now`` share: an empty state is a finished one-shot job's record, a
    state whose signature is refused (never unpickled) or that cannot be
    restored here is broken, and a restorable one is paused without a next run
    time and scheduled with one.
    """
    if not job_state:
        return JobState("finished")
    from django_apscheduler.jobstores import restore_job

    try:
        job = restore_job(job_id, job_state, job_signature)
    except Exception as exc:
        return JobState("broken", error=exc)
    return JobState("paused" if next_run_time is None else "scheduled", job=job)


class DjangoJobQuerySet(models.QuerySet):
    """Queries on stored jobs, each written once (coordination, the store, admin, commands)."""

    def with_ids(self, ids: Iterable[str]) -> DjangoJobQuerySet:
        """The jobs of ``ids``, in the backend's cheapest form for many ids (each dispatch round's).

        The form is that of the queryset's database (``self.db``): pin it with
        ``using()`` first, as for any write.
        """
        from django_apscheduler import backends

        narrowed = backends.for_alias(self.db).with_keys(
            cast("models.QuerySet[DjangoJob]", self), list(ids)
        )
        return cast(DjangoJobQuerySet, narrowed)

    def claimable(self, instance: str, now: datetime) -> DjangoJobQuerySet:
        """Rows nobody else holds: unclaimed, claimed by ``instance``, or with an expired claim."""
        return self.filter(
            Q(acquired_by__isnull=True) | Q(acquired_by=instance) | Q(acquired_until__lt=now)
        )

    def held_by(self, instance: str) -> DjangoJobQuerySet:
        """Rows whose claim ``instance`` holds (expired or not)."""
        return self.filter(acquired_by=instance)

    def held_by_others(self, instance: str) -> DjangoJobQuerySet:
        """Rows claimed by an instance other than ``instance`` (expired or not)."""
        return self.exclude(acquired_by=instance).exclude(acquired_by__isnull=True)

    def claim(self, instance: str, until: datetime) -> int:
        """Claim the selected rows for ``instance`` until ``until``; return how many."""
        return self.update(acquired_by=instance, acquired_until=until)

    def release(self) -> int:
        """Drop the claims on the selected rows; return how many rows were updated."""
        return self.update(acquired_by=None, acquired_until=None)

    def due(self, by: datetime) -> DjangoJobQuerySet:
        """Rows whose stored next run time is at or before ``by`` (a stored, Django-internal time)."""
        return self.filter(next_run_time__lte=by)

    def finished(self) -> DjangoJobQuerySet:
        """The kept records of one-shot jobs that have run for the last time (empty state)."""
        return self.filter(job_state=b"")

    def unfinished(self) -> DjangoJobQuerySet:
        """Rows that are jobs: scheduled, paused or broken (not a finished job's record)."""
        return self.exclude(job_state=b"")

    def scheduled(self) -> DjangoJobQuerySet:
        """Jobs with a next run time (broken rows included: the state is not unpickled)."""
        return self.unfinished().filter(next_run_time__isnull=False)

    def paused(self) -> DjangoJobQuerySet:
        """Jobs without a next run time (broken rows included: the state is not unpickled)."""
        return self.unfinished().filter(next_run_time__isnull=True)

    def unsigned(self) -> DjangoJobQuerySet:
        """Jobs whose state has no signature (never unpickled until signed)."""
        return self.unfinished().filter(Q(job_signature__isnull=True) | Q(job_signature=""))

    def untrusted(self) -> list[tuple[str, str]]:
        """``(id, problem)`` of the selected jobs whose signature is missing or wrong.

        Reads the states to check their signatures; unpickles none.
        """
        rows = self.unfinished().order_by("id").values_list("id", "job_state", "job_signature")
        found = []
        for job_id, state, signature in rows.iterator():
            checked = signing.check(job_id, state, signature)
            if not checked.ok:
                found.append((job_id, checked.problem))
        return found

    def sign(self, old_keys_only: bool = False) -> list[tuple[str, str]]:
        """Sign the selected rows' states with the current key, as they are; return what changed.

        For trusted rows that this app did not sign (a backup made under
        another ``SECRET_KEY``): nothing is unpickled or inspected. Each row
        is locked while it is signed, so a state written meanwhile is never
        signed by mistake. Returns ``(id, what it was)`` per row signed:
        ``"unsigned"``, ``"signature mismatch"`` or ``"signed with an old key"``;
        rows already signed with the current key are left alone. With
        ``old_keys_only``, only rows signed with a ``SECRET_KEY_FALLBACKS`` key
        are signed (key rotation): a row no key verifies is never signed then.
        """
        from django_apscheduler import backends

        using = getattr(self, "_db", None) or router.db_for_write(self.model)
        backend = backends.for_alias(using)
        signed = []
        with backend.write_transaction(using):
            selected = cast("models.QuerySet[DjangoJob]", self.order_by("id"))
            rows = backend.lock_for_write(selected, using)
            for job_id, state, signature in rows.values_list("id", "job_state", "job_signature"):
                checked = signing.check(job_id, state, signature)
                if (checked.ok and checked.current) or (old_keys_only and not checked.ok):
                    continue
                DjangoJob.objects.using(using).filter(id=job_id).update(
                    job_signature=signing.sign(job_id, state)
                )
                signed.append((job_id, checked.problem or "signed with an old key"))
            if signed:
                backend.notify(using)
        return signed

    def declared(self) -> DjangoJobQuerySet:
        """Jobs declared in code with ``@scheduled_job`` (the code owns them)."""
        return self.filter(declared_in_code=True)

    def added_at_run_time(self) -> DjangoJobQuerySet:
        """Jobs added by application code, the shell or the admin (not declared in code)."""
        return self.exclude(declared_in_code=True)

    def past_due(self, now: datetime) -> DjangoJobQuerySet:
        """Jobs whose stored next run time is before ``now`` and no live scheduler holds.

        The candidates for "overdue"; whether one is overdue also depends on its
        ``misfire_grace_time``, which lives in the pickled state.
        """
        live = DjangoSchedulerInstance.objects.alive(now).values("id")
        return (
            self.unfinished()
            .filter(next_run_time__lt=util.get_django_internal_datetime(now))
            .filter(Q(acquired_by__isnull=True) | ~Q(acquired_by__in=live))
        )

    def set_pause_note(self, note: str | None) -> int:
        """Keep ``note`` (why the jobs were paused; None drops it) on the selected jobs."""
        return self.update(pause_note=(note or "").strip()[:1000] or None)

    def retire(self) -> int:
        """Turn the selected jobs into kept records (empty state, no next run time).

        What removing a job from the admin does, so its execution history
        stays: the store never returns such a row, and the retention setting or
        ``prune`` deletes it with its last runs. Returns how many rows changed.
        """
        return self.update(
            job_state=b"",
            next_run_time=None,
            acquired_by=None,
            acquired_until=None,
            pause_note=None,
            version=Coalesce(models.F("version"), models.Value(0)) + 1,
        )

    def count_by_state(self) -> dict[str, int]:
        """How many rows are ``scheduled``, ``paused`` and ``finished``, for the metrics.

        Three counts on the ``next_run_time`` index (a finished record has no
        next run time, so only rows without one are read to tell paused from
        finished). Broken rows are not unpickled: they count as scheduled or
        paused.
        """
        scheduled = self.filter(next_run_time__isnull=False).count()
        without = self.filter(next_run_time__isnull=True)
        finished = without.filter(job_state=b"").count()
        return {"scheduled": scheduled, "paused": without.count() - finished, "finished": finished}

    def late(self, before: datetime) -> DjangoJobQuerySet:
        """Scheduled jobs whose next run time is before ``before`` (the overdue candidates).

        One query on the ``next_run_time`` index; which of them are overdue
        depends on each job's allowance (:mod:`django_apscheduler.overdue`).
        """
        return self.scheduled().filter(next_run_time__lt=before)

    def unreported_late(self) -> DjangoJobQuerySet:
        """Rows whose current next run time was not reported overdue yet (a new episode, if late)."""
        return self.exclude(overdue_reported=models.F("next_run_time"))

    def overdue(self, now: datetime | None = None) -> DjangoJobQuerySet:
        """The jobs overdue at ``now``: past their next run time by more than their allowance.

        For the admin and the health command: true whether or not a scheduler
        is alive (see :func:`django_apscheduler.overdue.find_overdue`).
        """
        from django_apscheduler import overdue

        return self.filter(id__in=[o.job_id for o in overdue.find_overdue(now, using=self.db)])

    def open_alert(self, job_id: str, since: datetime) -> bool:
        """Note an alert for ``job_id``'s failures since ``since``; False if one is open already.

        One conditional update, so one process sends the alert of an episode.
        """
        return bool(
            self.filter(id=job_id, alert_open_since__isnull=True).update(alert_open_since=since)
        )

    def close_alert(self, job_id: str) -> bool:
        """Close ``job_id``'s open alert; False if none was open (or another process closed it).

        A read first: the common case, no open alert, then takes no row lock.
        """
        if not self.filter(id=job_id, alert_open_since__isnull=False).exists():
            return False
        return bool(
            self.filter(id=job_id, alert_open_since__isnull=False).update(alert_open_since=None)
        )

    def mark_overdue_reported(self, job_id: str, next_run_time: datetime) -> bool:
        """Note that ``job_id``'s run at ``next_run_time`` was reported overdue; False if it was.

        One conditional update: of several schedulers detecting the same
        episode, only one changes the row and reports it. A job that ran
        meanwhile (another next run time) is not marked.
        """
        return bool(
            self.filter(id=job_id, next_run_time=next_run_time)
            .exclude(overdue_reported=next_run_time)
            .update(overdue_reported=next_run_time)
        )


class DjangoJobManager(models.Manager.from_queryset(DjangoJobQuerySet)):  # type: ignore[misc]
    """The default manager of :class:`DjangoJob`, with :class:`DjangoJobQuerySet`'s methods."""


class DjangoJob(models.Model):
    """One APScheduler job: its pickled state and, for querying, its next run time.

    A row whose ``job_state`` is empty is the record of a one-shot job that has
    finished: it keeps the job's execution history reachable and is not a job
    any more (the job store never returns it).
    """

    id = models.CharField(max_length=255, primary_key=True, help_text=_("Unique id for this job."))
    next_run_time = models.DateTimeField(
        db_index=True,
        blank=True,
        null=True,
        help_text=_("Date and time at which this job is scheduled to be executed next."),
    )
    job_state = models.BinaryField()
    # Coordination between scheduler processes (see ``coordination``). Nullable,
    # so rows written by older code stay valid.
    acquired_by = models.CharField(
        max_length=255,
        null=True,
        blank=True,
        db_index=True,
        editable=False,
        help_text=_("The scheduler instance that holds this job (dispatching or running it)."),
    )
    acquired_until = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text=_("When the hold ends unless its scheduler instance renews it."),
    )
    declared_in_code = models.BooleanField(
        null=True,
        editable=False,
        help_text=_("Declared with @scheduled_job: removed when its declaration is."),
    )
    # The HMAC of (id, job_state) (see ``signing``): a state is unpickled only if it verifies.
    job_signature = models.CharField(
        max_length=signing.SIGNATURE_LENGTH,
        null=True,
        blank=True,
        editable=False,
        help_text=_("HMAC-SHA256 of the id and state, keyed from SECRET_KEY."),
    )
    # NULL counts as 0: no default, so adding the column rewrites no existing row.
    version = models.PositiveIntegerField(
        null=True,
        editable=False,
        help_text=_("Incremented by every write, so concurrent changes are detected."),
    )
    # Why the job was paused, written by the admin's pause action; shown while the
    # job stays paused (a job resumed elsewhere shows no note).
    pause_note = models.CharField(
        max_length=1000,
        null=True,
        blank=True,
        editable=False,
        help_text=_("Why the job was paused (shown until it is resumed)."),
    )

    # Overdue detection (see ``overdue``): the next run time last reported as
    # overdue, so that an episode is reported once, by one instance.
    overdue_reported = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text=_("The next run time that was reported overdue (once per overdue episode)."),
    )

    # Failure alerts (see ``alerts``): the run time of the first failure of the
    # episode an alert was mailed for; NULL when no alert is open.
    alert_open_since = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text=_("When the failures (or the overdue run) that an alert was sent for began."),
    )

    class Meta:
        ordering = ("next_run_time",)
        permissions = [
            ("run_djangojob", _("Can run jobs now in the web process")),
            ("trigger_djangojob", _("Can have the schedulers run jobs now")),
            ("pause_djangojob", _("Can pause and resume jobs")),
        ]

    def __str__(self) -> str:
        if self.next_run_time:
            return f"{self.id} (next run at: {util.get_local_dt_format(self.next_run_time)})"
        if self.is_finished:
            return f"{self.id} (finished)"
        return f"{self.id} (paused)"

    objects = DjangoJobManager()

    @property
    def is_finished(self) -> bool:
        """True for the kept record of a one-shot job that has run for the last time."""
        return not self.job_state

    def classify(self) -> JobState:
        """This row's state: scheduled, paused, finished or broken (see :func:`classify_job`)."""
        return classify_job(self.id, self.job_state, self.job_signature, self.next_run_time)


class DjangoJobExecutionQuerySet(models.QuerySet):
    """Queries on the execution log."""

    def of_runs(self, runs: Iterable[tuple[str, datetime]]) -> DjangoJobExecutionQuerySet:
        """The rows of these (job id, run time) runs, and perhaps a few others.

        One indexed query: the job ids and the run times are matched apart, so
        callers keep only the pairs they asked for.
        """
        runs = list(runs)
        return self.filter(
            job_id__in={job_id for job_id, _ in runs},
            run_time__in={run_time for _, run_time in runs},
        )

    def unfinished_of(self, instance: str) -> DjangoJobExecutionQuerySet:
        """The runs ``instance`` submitted that have no final status yet ("Started execution")."""
        return self.filter(instance=instance, status=DjangoJobExecution.SENT)

    def unfinished(self) -> DjangoJobExecutionQuerySet:
        """The selected runs that have no final status yet ("Started execution")."""
        return self.filter(status=DjangoJobExecution.SENT)

    def failures(self) -> DjangoJobExecutionQuerySet:
        """Runs that failed: the job raised ("Error!") or its process died ("Interrupted")."""
        return self.filter(status__in=DjangoJobExecution.FAILURE_STATUSES)

    def since(self, when: datetime) -> DjangoJobExecutionQuerySet:
        """Runs whose run time is at or after ``when``."""
        return self.filter(run_time__gte=util.get_django_internal_datetime(when))

    def latest_of(self, job_id: str, count: int) -> list[Any]:
        """The last ``count`` runs of ``job_id``, newest first (exception and traceback included)."""
        return list(self.filter(job_id=job_id).order_by("-run_time")[:count])

    def latest_per_job(self, job_ids: list[str], count: int) -> list[dict]:
        """The last ``count`` runs of each of ``job_ids``, newest first, in one query.

        Each row has ``job_id``, ``status``, ``run_time`` and ``duration``. A
        window function numbers each job's runs, so a page of jobs costs one
        query however many jobs and runs there are.
        """
        from django.db.models import Window
        from django.db.models.functions import RowNumber

        numbered = (
            self.filter(job_id__in=job_ids)
            .annotate(
                position=Window(
                    RowNumber(),
                    partition_by=[models.F("job_id")],
                    order_by=models.F("run_time").desc(),
                )
            )
            .filter(position__lte=count)
            .order_by("job_id", "position")
        )
        return list(numbered.values("job_id", "status", "run_time", "duration"))

    def per_hour(self, since: datetime) -> list[dict]:
        """How many runs of each status started in each hour from ``since`` (UTC hours).

        Rows of ``hour`` (an aware UTC datetime), ``status`` and ``count``.
        """
        from datetime import timezone as dt_timezone

        from django.db.models import Count
        from django.db.models.functions import TruncHour

        return list(
            self.since(since)
            .annotate(hour=TruncHour("run_time", tzinfo=dt_timezone.utc))
            .values("hour", "status")
            .annotate(count=Count("id"))
            .order_by("hour", "status")
        )

    def slowest_jobs(self, since: datetime, count: int) -> list[dict]:
        """The ``count`` jobs with the longest average duration since ``since``.

        Rows of ``job_id``, ``average``, ``longest`` and ``runs``.
        """
        from django.db.models import Avg, Count, Max

        return list(
            self.since(since)
            .filter(duration__isnull=False)
            .values("job_id")
            .annotate(average=Avg("duration"), longest=Max("duration"), runs=Count("id"))
            .order_by("-average", "job_id")[:count]
        )

    def failing_jobs(self, since: datetime, count: int) -> list[dict]:
        """The ``count`` jobs with the most failed runs since ``since``.

        Rows of ``job_id``, ``failures`` and ``last_failure`` (the latest failed run time).
        """
        from django.db.models import Count, Max

        return list(
            self.since(since)
            .failures()
            .values("job_id")
            .annotate(failures=Count("id"), last_failure=Max("run_time"))
            .order_by("-failures", "job_id")[:count]
        )

    def not_succeeded(self) -> DjangoJobExecutionQuerySet:
        """The selected runs that did not succeed: errors, missed, refused and interrupted runs."""
        return self.exclude(status__in=[DjangoJobExecution.SUCCESS, DjangoJobExecution.SENT])

    def latest_outcomes(self, job_id: str, count: int) -> list[tuple[datetime, str]]:
        """(run time, status) of ``job_id``'s latest ``count`` runs with a final status."""
        return list(
            self.filter(job_id=job_id)
            .exclude(status=DjangoJobExecution.SENT)
            .order_by("-run_time")
            .values_list("run_time", "status")[:count]
        )

    def history(
        self, job_id: str | None = None, *, failed: bool = False, limit: int | None = None
    ) -> DjangoJobExecutionQuerySet:
        """The latest runs first (of ``job_id`` only, if given; only failures if ``failed``).

        What ``manage.py apscheduler history`` shows; one indexed query
        (``run_time``, and the job's foreign key).
        """
        runs = self
        if job_id is not None:
            runs = runs.filter(job_id=job_id)
        if failed:
            runs = runs.not_succeeded()
        runs = runs.order_by("-run_time", "-id")
        return runs[:limit] if limit is not None else runs

    def interrupt(self, reason: str) -> int:
        """Mark the selected runs "Interrupted" with ``reason``, finished now; return how many.

        Only runs still "Started execution" change: a final status is never
        overwritten.
        """
        from django_apscheduler import executions, signals

        values = {
            "status": DjangoJobExecution.INTERRUPTED,
            "exception": reason[: executions.EXCEPTION_MAX_LENGTH],
            "finished": executions.decimal_seconds(executions.now_epoch()),
        }
        if not signals.wanted("job_interrupted"):
            return self.unfinished().update(**values)
        # One conditional update per run: of several processes interrupting the
        # same runs (two reapers of one dead instance), only the one whose update
        # changed the row sends ``job_interrupted``, after its transaction commits.
        using = self.db
        count = 0
        for pk, job_id, run_time in self.unfinished().values_list("pk", "job_id", "run_time"):
            if (
                not DjangoJobExecution.objects.using(using)
                .unfinished()
                .filter(pk=pk)
                .update(**values)
            ):
                continue
            count += 1

            def send(pk: int = pk, job_id: str = job_id, run_time: datetime = run_time) -> None:
                signals.notify("job_interrupted", job_id=job_id, run_time=run_time, reason=reason)
                if signals.job_interrupted.has_listeners(DjangoJob):
                    signals.send(
                        signals.job_interrupted,
                        job_id=job_id,
                        run_time=run_time,
                        execution=DjangoJobExecution.objects.using(using).filter(pk=pk).first(),
                        reason=reason,
                    )

            transaction.on_commit(send, using=using)
        return count

    # --- runs handed to task workers (see ``handoff``) ---

    def unpublished(self) -> DjangoJobExecutionQuerySet:
        """Hand-offs recorded "Queued" whose task was not (yet) enqueued."""
        return self.filter(status=DjangoJobExecution.QUEUED, handed_off_at__isnull=True)

    def unfinished_handoffs(self, enqueued_before: datetime) -> DjangoJobExecutionQuerySet:
        """Hand-offs without a final status, enqueued (or, never noted so, due) before the time.

        A hand-off never noted as enqueued by a scheduler that lives on (the
        note failed) counts from its run time.
        """
        return self.filter(
            Q(handed_off_at__lt=enqueued_before)
            | Q(
                handed_off_at__isnull=True,
                run_time__lt=util.get_django_internal_datetime(enqueued_before),
            ),
            status__in=[DjangoJobExecution.QUEUED, DjangoJobExecution.SENT],
            task_backend__isnull=False,
        )

    def of_task(self, task_id: str) -> DjangoJobExecutionQuerySet:
        """The run handed off as the task ``task_id``."""
        return self.filter(task_id=task_id)

    def mark_started(self, worker: str) -> int:
        """Mark the selected hand-offs "Started execution" on ``worker`` (host:pid); return how many.

        Only a run still "Queued" (or taken for "Lost") changes, so a second
        delivery of the same task never moves a run back from its end.
        """
        return self.filter(status__in=[DjangoJobExecution.QUEUED, DjangoJobExecution.LOST]).update(
            status=DjangoJobExecution.SENT, instance=worker
        )

    def note_enqueued(self, task_id: str | None, backend: str) -> int:
        """Note on the selected hand-offs that their task was enqueued as ``task_id``."""
        return self.update(
            task_id=task_id, task_backend=backend, handed_off_at=timezone.now(), task_call=None
        )

    def take_over(self, instance: str | None) -> int:
        """Name ``instance`` as the scheduler of the selected hand-offs, to enqueue them."""
        return self.update(instance=instance)

    def rename_task(self, task_id: str) -> int:
        """Note the id the task engine gave the selected hand-offs' task, once enqueued."""
        return self.update(task_id=task_id)

    def fail_handoff(self, reason: str) -> int:
        """Mark the selected hand-offs "Error!": their task could not be enqueued (``reason``)."""
        from django_apscheduler import executions

        return self.update(
            status=DjangoJobExecution.ERROR,
            exception=reason[: executions.EXCEPTION_MAX_LENGTH],
            finished=executions.decimal_seconds(executions.now_epoch()),
            task_call=None,
        )

    def mark_lost(self, reason: str) -> int:
        """Mark the selected runs "Lost" with ``reason``; return how many."""
        from django_apscheduler import executions

        return self.update(
            status=DjangoJobExecution.LOST,
            exception=reason[: executions.EXCEPTION_MAX_LENGTH],
            finished=executions.decimal_seconds(executions.now_epoch()),
        )


class DjangoJobExecutionManager(
    models.Manager.from_queryset(DjangoJobExecutionQuerySet)  # type: ignore[misc]
):
    """Manager of the execution log, with its retention helper and the queryset's methods."""

    def delete_old_job_executions(self, max_age: int) -> int:
        """Delete executions whose run time is at least ``max_age`` seconds old.

        Records of finished one-shot jobs that no longer have any execution are
        deleted too. Returns the number of executions deleted.
        """
        using = router.db_for_write(self.model)
        cutoff = timezone.now() - timedelta(seconds=max_age)
        with transaction.atomic(using=using):
            deleted, _ = (
                self.using(using)
                .filter(run_time__lte=util.get_django_internal_datetime(cutoff))
                .delete()
            )
            stale = list(
                DjangoJob.objects.using(using)
                .finished()
                .filter(next_run_time__isnull=True, djangojobexecution__isnull=True)
                .values_list("id", flat=True)
            )
            if stale:
                DjangoJob.objects.using(using).filter(id__in=stale).delete()
        return deleted


class DjangoJobExecution(models.Model):
    """One run (or attempted run) of a job at one scheduled run time."""

    SENT = "Started execution"
    SUCCESS = "Executed"
    MISSED = "Missed!"
    MAX_INSTANCES = "Max instances!"
    ERROR = "Error!"
    INTERRUPTED = "Interrupted"
    #: Handed to a task worker (Django Tasks, Celery): see ``handoff``.
    QUEUED = "Queued"
    #: Handed to a task worker that never reported its end in time.
    LOST = "Lost"

    STATUS_CHOICES = [(x, x) for x in [SENT, ERROR, SUCCESS, INTERRUPTED, QUEUED, LOST]]
    #: The statuses of runs that failed (counted as failures by the admin).
    FAILURE_STATUSES = (ERROR, INTERRUPTED, LOST)

    id = models.BigAutoField(primary_key=True, help_text=_("Unique ID for this job execution."))
    job = models.ForeignKey(
        DjangoJob,
        on_delete=models.CASCADE,
        help_text=_("The job that this execution relates to."),
    )
    status = models.CharField(
        max_length=50,
        choices=STATUS_CHOICES,
        help_text=_("The current status of this job execution."),
    )
    run_time = models.DateTimeField(
        db_index=True, help_text=_("Date and time at which this job was executed.")
    )
    duration = models.DecimalField(
        max_digits=15,
        decimal_places=2,
        default=None,
        null=True,
        help_text=_("Total run time of this job (in seconds)."),
    )
    finished = models.DecimalField(
        max_digits=15,
        decimal_places=2,
        default=None,
        null=True,
        help_text=_("Timestamp at which this job was finished."),
    )
    exception = models.CharField(
        max_length=1000,
        null=True,
        help_text=_("Details of exception that occurred during job execution (if any)."),
    )
    traceback = models.TextField(
        null=True,
        help_text=_("Traceback of exception that occurred during job execution (if any)."),
    )
    instance = models.CharField(
        max_length=255,
        null=True,
        blank=True,
        db_index=True,
        help_text=_("The scheduler instance that submitted this run."),
    )
    # Runs handed to a task worker (see ``handoff``); NULL for runs in the scheduler.
    task_backend = models.CharField(
        max_length=255,
        null=True,
        blank=True,
        help_text=_("The task engine and backend or queue this run was handed to."),
    )
    task_id = models.CharField(
        max_length=255,
        null=True,
        blank=True,
        db_index=True,
        help_text=_("The id of the task this run was handed off as."),
    )
    handed_off_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text=_("When the task was enqueued (empty: not enqueued yet)."),
    )
    # Kept from the "Queued" commit to the enqueue, so another scheduler can enqueue
    # it if this one dies in between: the pickled task reference and arguments.
    task_call = models.BinaryField(null=True, editable=False)

    objects = DjangoJobExecutionManager()

    class Meta:
        ordering = ("-run_time",)
        constraints = [
            models.UniqueConstraint(fields=["job_id", "run_time"], name="unique_job_executions")
        ]
        # The sweep of hand-offs (``handoff.sweep``) looks for the few runs still
        # "Queued" or "Started execution" at every housekeeping round.
        indexes = [models.Index(fields=["status", "handed_off_at"], name="dja_execution_handoff")]

    def __str__(self) -> str:
        return f"{self.id}: job '{self.job_id}' ({self.status})"

    @classmethod
    def atomic_update_or_create(
        cls,
        lock: object,
        job_id: str,
        run_time: datetime,
        status: str,
        exception: str | None = None,
        traceback: str | None = None,
    ) -> DjangoJobExecution | None:
        """Record ``status`` for the run of ``job_id`` at ``run_time`` and return the row.

        One row exists per (job, run time): a later "Started execution" never
        overwrites a final status, and a final status replaces an earlier one.
        ``lock`` is accepted for compatibility with 0.7.0 and not needed: the
        database serialises concurrent writers. Returns None if the job no
        longer exists.
        """
        from django_apscheduler import executions

        record = executions.Record(
            job_id=job_id,
            run_time=run_time,
            status=status,
            exception=exception,
            traceback=traceback,
            finished=None if status == cls.SENT else executions.now_epoch(),
        )
        ids = executions.write_now([record])
        execution_id = ids.get(record.key)
        if execution_id is None:
            return None
        return cls.objects.using(router.db_for_write(cls)).get(pk=execution_id)


class DjangoSchedulerInstanceQuerySet(models.QuerySet):
    """Queries on scheduler instances."""

    def alive(self, now: datetime | None = None) -> DjangoSchedulerInstanceQuerySet:
        """The instances whose last heartbeat is within ``APSCHEDULER_LEASE_TIME`` of ``now``."""
        return self.filter(last_heartbeat__gte=(now or timezone.now()) - _lease())

    def dead(self, now: datetime | None = None) -> DjangoSchedulerInstanceQuerySet:
        """The instances whose last heartbeat is older than ``APSCHEDULER_LEASE_TIME``: the rest."""
        return self.filter(last_heartbeat__lt=(now or timezone.now()) - _lease())


class DjangoSchedulerInstance(models.Model):
    """A scheduler process that dispatches jobs from this database, alive while it heartbeats.

    A row is written when a scheduler takes its first jobs and deleted when it
    shuts down. A row whose heartbeat is older than the lease time belongs to a
    process that died: another scheduler marks its unfinished runs
    "Interrupted" and deletes the row.
    """

    id = models.CharField(max_length=255, primary_key=True, help_text=_("host:pid:random"))
    host = models.CharField(max_length=255)
    pid = models.IntegerField()
    started = models.DateTimeField()
    last_heartbeat = models.DateTimeField(db_index=True)
    # The jobs this instance's code declares (@scheduled_job), as {id: fingerprint},
    # so that another release's sync neither removes nor rewrites them while this
    # instance lives. NULL: an instance that declares nothing.
    declared_ids = models.JSONField(
        null=True,
        blank=True,
        editable=False,
        help_text=_(
            "The jobs this instance's code declares with @scheduled_job: "
            "id -> fingerprint of the definition."
        ),
    )

    objects = DjangoSchedulerInstanceQuerySet.as_manager()

    class Meta:
        ordering = ("started",)
        verbose_name = _("scheduler instance")

    def __str__(self) -> str:
        return f"{self.id} (pid {self.pid} on {self.host})"

    def is_alive(self, now: datetime | None = None) -> bool:
        """True while the heartbeat is within the lease time: the test of ``objects.alive()``."""
        return self.last_heartbeat >= (now or timezone.now()) - _lease()
