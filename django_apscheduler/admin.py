"""Django admin pages for stored jobs and their execution log.

The jobs page shows each job's state (scheduled, paused, finished or broken),
its next run time and its average run duration, and offers the action "Run
the selected django jobs", which runs jobs once in the web process (see
:mod:`django_apscheduler.run_now`). The executions page shows every run with
a coloured status. The instances page lists the scheduler processes that
dispatch from this database and whether each is alive.

Both ``ModelAdmin`` instances are shared by all requests, so neither keeps
anything per request on ``self``: whatever a request needs is computed in the
queryset or in local variables.
"""

from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation
from typing import Any, Sequence

from django.contrib import admin, messages
from django.db.models import Avg, DecimalField, F, OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from django_apscheduler import conf, run_now, util
from django_apscheduler.models import DjangoJob, DjangoJobExecution, DjangoSchedulerInstance

logger = logging.getLogger(__name__)

#: Colour of statuses that are not in ``status_color_mapping`` (legacy values).
NEUTRAL_COLOR = "gray"

_TWO_PLACES = Decimal("0.01")

#: The job states as the "State" column shows them (translated).
_STATE_NAMES = {
    "scheduled": _("scheduled"),
    "paused": _("paused"),
    "finished": _("finished"),
    "broken": _("broken"),
}


def _seconds(value: Any) -> str:
    """Format a number of seconds with two decimals, the precision they are stored with."""
    try:
        return str(Decimal(str(value)).quantize(_TWO_PLACES))
    except (InvalidOperation, ValueError):
        return str(value)


def _format_timeout(timeout: Any) -> str:
    try:
        return f"{float(timeout):g}"
    except (TypeError, ValueError):
        return str(timeout)


@admin.register(DjangoJob)
class DjangoJobAdmin(admin.ModelAdmin):
    """The stored jobs, with their state, next run time and average duration."""

    search_fields = ["id"]
    list_display = ["id", "state", "local_run_time", "average_duration"]
    actions = ["run_selected_jobs"]
    #: Next to run first; paused and finished jobs (no next run time) last on every backend.
    ordering = [F("next_run_time").asc(nulls_last=True), "id"]
    #: A job's schedule lives in its pickled state; editing the columns here would
    #: only make them disagree with it. Jobs are added and changed through a scheduler.
    readonly_fields = ["id", "next_run_time", "acquired_by", "acquired_until"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    #: Colour of each state in the "State" column.
    state_color_mapping = {
        "scheduled": "green",
        "paused": "orange",
        "finished": NEUTRAL_COLOR,
        "broken": "red",
    }

    def get_queryset(self, request: HttpRequest) -> QuerySet[DjangoJob]:
        """Add each job's average execution duration, computed by the database.

        A correlated subquery rather than a join with GROUP BY: the page stays
        one query however many jobs it shows, and the grouping never has to
        cover the binary ``job_state`` column.
        """
        average = (
            DjangoJobExecution.objects.filter(job=OuterRef("pk"))
            .order_by()
            .values("job")
            .annotate(avg=Avg("duration"))
            .values("avg")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(
                avg_duration=Subquery(
                    average, output_field=DecimalField(max_digits=15, decimal_places=2)
                )
            )
        )

    @admin.display(description=_("State"))
    def state(self, obj: DjangoJob) -> SafeString:
        """``scheduled``, ``paused``, ``finished`` (a one-shot job's kept record) or ``broken: <reason>``."""
        state = obj.classify()
        if state.error is not None:
            return format_html(
                '<span style="color: {};">{}: {}: {}</span>',
                self.state_color_mapping["broken"],
                _("broken"),
                type(state.error).__name__,
                state.error,
            )
        return format_html(
            '<span style="color: {};">{}</span>',
            self.state_color_mapping[state.name],
            _STATE_NAMES[state.name],
        )

    @admin.display(description=_("Local run time"), ordering="next_run_time")
    def local_run_time(self, obj: DjangoJob) -> str:
        """The next run time in ``APSCHEDULER_DATETIME_FORMAT``, or "(paused)"."""
        if obj.next_run_time:
            return util.get_local_dt_format(obj.next_run_time)
        if obj.is_finished:
            return "(finished)"
        return "(paused)"

    @admin.display(description=_("Average Duration (sec)"), ordering="avg_duration")
    def average_duration(self, obj: DjangoJob) -> str:
        """The mean duration of the job's recorded runs, or "None" if none has one."""
        value = getattr(obj, "avg_duration", None)
        return "None" if value is None else _seconds(value)

    @admin.action(description=_("Run the selected django jobs"), permissions=["change"])
    def run_selected_jobs(self, request: HttpRequest, queryset: QuerySet[DjangoJob]) -> None:
        """Run the selected jobs once, now, in this process, and report each job's outcome.

        Waits at most ``APSCHEDULER_RUN_NOW_TIMEOUT`` seconds; jobs still
        running then go on in the background. The jobs' schedules are not
        changed. Requires the "change" permission on jobs.
        """
        timeout = conf.run_now_timeout()
        job_ids = list(queryset.order_by("id").values_list("id", flat=True))
        logger.info("User %r runs jobs %s now", getattr(request.user, "pk", None), job_ids)
        outcomes = run_now.run_jobs_now(job_ids, timeout=timeout)
        self.message_outcomes(request, outcomes, timeout)

    def message_outcomes(
        self,
        request: HttpRequest,
        outcomes: Sequence[run_now.JobRunOutcome],
        timeout: Any,
    ) -> None:
        """Tell the user what became of each job: one message per job, one for all timeouts."""
        status = run_now.RunStatus
        pending = []
        for outcome in outcomes:
            job_id = outcome.job_id
            if outcome.status is status.SUCCEEDED:
                self.message_user(request, f"Executed job '{job_id}'!", messages.INFO)
            elif outcome.status is status.HANDED_OFF:
                self.message_user(
                    request,
                    f"Handed job '{job_id}' to a worker ({outcome.message}); its run is recorded "
                    "in the job executions.",
                    messages.INFO,
                )
            elif outcome.status is status.FAILED:
                self.message_user(
                    request, f"Job '{job_id}' raised an error: {outcome.message}", messages.ERROR
                )
            elif outcome.status is status.NOT_FOUND:
                self.message_user(
                    request,
                    f"Could not find job {job_id} in the database! Skipping execution...",
                    messages.WARNING,
                )
            elif outcome.status is status.FINISHED:
                self.message_user(
                    request,
                    f"Job '{job_id}' has finished (a one-shot job that has run for the last "
                    "time) and cannot run again! Skipping execution...",
                    messages.WARNING,
                )
            elif outcome.status is status.BROKEN:
                self.message_user(
                    request,
                    f"Job '{job_id}' cannot be restored from the database ({outcome.message})! "
                    "Skipping execution...",
                    messages.ERROR,
                )
            else:
                pending.append(job_id)
        if pending:
            self.message_user(
                request,
                f"Maximum runtime of {_format_timeout(timeout)} seconds exceeded! Not all jobs "
                f"could be completed successfully. Pending jobs: {','.join(pending)}. They keep "
                "running in the background; their executions are recorded when they end.",
                messages.ERROR,
            )


class StatusListFilter(admin.SimpleListFilter):
    """Filter by status, offering every status present in the log.

    The model's choices list only three statuses; "Missed!", "Max instances!"
    and values left by old versions are offered too. The URL parameter is the
    one Django's choices filter used (``status__exact``).
    """

    title = _("status")
    parameter_name = "status__exact"

    #: Known statuses in the order they are offered; others follow alphabetically.
    order = [
        DjangoJobExecution.SUCCESS,
        DjangoJobExecution.SENT,
        DjangoJobExecution.ERROR,
        DjangoJobExecution.MISSED,
        DjangoJobExecution.MAX_INSTANCES,
        DjangoJobExecution.INTERRUPTED,
        DjangoJobExecution.QUEUED,
        DjangoJobExecution.LOST,
    ]

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        present = set(
            model_admin.get_queryset(request).order_by().values_list("status", flat=True).distinct()
        )
        ordered = [s for s in self.order if s in present]
        ordered += sorted(present.difference(self.order))
        return [(s, s) for s in ordered]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(status=value)


@admin.register(DjangoJobExecution)
class DjangoJobExecutionAdmin(admin.ModelAdmin):
    """The execution log: one row per run, newest first, with a coloured status."""

    status_color_mapping = {
        DjangoJobExecution.SUCCESS: "green",
        DjangoJobExecution.SENT: "blue",
        DjangoJobExecution.MAX_INSTANCES: "orange",
        DjangoJobExecution.MISSED: "orange",
        DjangoJobExecution.ERROR: "red",
        DjangoJobExecution.INTERRUPTED: "darkred",
        DjangoJobExecution.QUEUED: "purple",
        DjangoJobExecution.LOST: "darkred",
    }

    list_display = ["id", "job", "html_status", "local_run_time", "duration_text", "ran_on"]
    list_filter = ["job__id", "run_time", StatusListFilter]
    list_select_related = ["job"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[DjangoJobExecution]:
        """Fetch each execution's job in the same query, without the bulky columns.

        The list never shows the job's pickled state or the traceback; a change
        page loads the traceback with one more query.
        """
        return (
            super().get_queryset(request).select_related("job").defer("job__job_state", "traceback")
        )

    @admin.display(description=_("Status"), ordering="status")
    def html_status(self, obj: DjangoJobExecution) -> SafeString:
        """The status in its colour; statuses without one (legacy values) in a neutral colour."""
        return format_html(
            '<span style="color: {};">{}</span>',
            self.status_color_mapping.get(obj.status, NEUTRAL_COLOR),
            obj.status,
        )

    @admin.display(description=_("Local run time"), ordering="run_time")
    def local_run_time(self, obj: DjangoJobExecution) -> str:
        """The run time in ``APSCHEDULER_DATETIME_FORMAT``, in the current time zone."""
        return util.get_local_dt_format(obj.run_time)

    @admin.display(description=_("Ran on"), ordering="instance")
    def ran_on(self, obj: DjangoJobExecution) -> str:
        """The process of the run (``host:pid:...``): a scheduler, or the worker of a task job.

        A run handed to a worker and not started yet shows where it was queued.
        """
        if obj.status == DjangoJobExecution.QUEUED and obj.task_backend:
            return f"{obj.task_backend} (task {obj.task_id or 'not enqueued yet'})"
        return obj.instance or "-"

    @admin.display(description=_("Duration (sec)"), ordering="duration")
    def duration_text(self, obj: DjangoJobExecution) -> str:
        """The duration in seconds ("0.00" for a zero duration), or "N/A" if there is none."""
        return "N/A" if obj.duration is None else _seconds(obj.duration)


@admin.register(DjangoSchedulerInstance)
class DjangoSchedulerInstanceAdmin(admin.ModelAdmin):
    """The scheduler processes dispatching from this database; read-only.

    Rows are written and removed by the schedulers themselves: an instance
    that stopped heartbeating is retired by the others within the lease time.
    """

    list_display = ["id", "host", "pid", "started", "last_heartbeat", "alive"]
    ordering = ["started"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("Alive"), boolean=True)
    def alive(self, obj: DjangoSchedulerInstance) -> bool:
        """True while the instance heartbeats within the lease time."""
        return obj.is_alive()
