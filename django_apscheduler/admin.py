"""Django admin pages: an operations console for jobs, their run log and the schedulers.

The jobs list shows each job's schedule in words, its state (scheduled,
paused with its note, finished, broken with the reason), its next run (a time
and "in 4 minutes"), its last run and durations, its failures among the last
20 runs and an "overdue" mark; it filters by state, overdue and origin
(declared in code or added at run time) and searches ids and functions.

Actions, each behind its own permission: run now in the web process (0.7.0's
action, bounded by ``APSCHEDULER_RUN_NOW_TIMEOUT``), run now in the scheduler
(does not wait), pause (with an optional note) and resume, and delete (the
usual confirmation page; the job's history is kept). Jobs are created and
edited with :class:`~django_apscheduler.forms.JobForm`, from an allow-list of
functions, through the store path. A job declared in code can be paused,
resumed and run, not edited or deleted. A job's page shows its definition,
last 50 runs and a chart of its last 100; the dashboard shows the schedulers,
runs per hour, the slowest, failing and overdue jobs. Every change goes into
the admin's history (``LogEntry``). The work is done in
:mod:`django_apscheduler.console`; charts come from :mod:`django_apscheduler.charts`.

The ``ModelAdmin`` instances are shared by all requests, so none keeps
anything per request on ``self``: whatever a request needs is computed in the
queryset, in local variables, or on the objects of that request's page.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Sequence

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import actions as admin_actions
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote, unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db import router
from django.db.models import Avg, DecimalField, F, OuterRef, QuerySet, Subquery
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timesince, timeuntil
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from django_apscheduler import backends, charts, conf, console, run_now, util
from django_apscheduler.describe import describe_trigger
from django_apscheduler.exceptions import DeclaredJobError
from django_apscheduler.forms import CRON_FIELDS, INTERVAL_FIELDS, JobForm
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


def _summary(obj: DjangoJob) -> console.Summary:
    """The page's summary of ``obj`` (set by :class:`JobChangeList`), or one made now."""
    summary = getattr(obj, "console_summary", None)
    if summary is None:
        summary = console.summaries([obj])[obj.id]
        obj.console_summary = summary  # type: ignore[attr-defined]
    return summary


def _status_class(status: str | None) -> str:
    return "dja-status dja-" + charts.outcome_of(status or "")


class JobChangeList(ChangeList):
    """The jobs list: each page's job summaries are computed once, in two queries."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        found = console.summaries(self.result_list)
        for obj in self.result_list:
            obj.console_summary = found[obj.id]


class StateFilter(admin.SimpleListFilter):
    """scheduled, paused, finished or broken (the one classification, ``classify_job``)."""

    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, Any]]:
        return list(_STATE_NAMES.items())

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value == "finished":
            return queryset.finished()  # type: ignore[attr-defined]
        if value in ("scheduled", "paused", "broken"):
            return queryset.filter(id__in=console.ids_in_state(queryset, value))
        return queryset


class OverdueFilter(admin.SimpleListFilter):
    """Jobs past their next run time by more than their grace time, held by no live scheduler."""

    title = _("overdue")
    parameter_name = "overdue"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, Any]]:
        return [("yes", _("overdue")), ("no", _("not overdue"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(id__in=console.overdue_ids(queryset))
        if self.value() == "no":
            return queryset.exclude(id__in=console.overdue_ids(queryset))
        return queryset


class OriginFilter(admin.SimpleListFilter):
    """Declared in code (``@scheduled_job``) or added at run time (code, shell, admin)."""

    title = _("origin")
    parameter_name = "origin"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, Any]]:
        return [("code", _("declared in code")), ("runtime", _("added at run time"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "code":
            return queryset.declared()  # type: ignore[attr-defined]
        if self.value() == "runtime":
            return queryset.added_at_run_time()  # type: ignore[attr-defined]
        return queryset


class JobActionForm(helpers.ActionForm):
    """The action bar, with the note that the "pause" action keeps."""

    note = forms.CharField(
        label=_("Pause note:"),
        required=False,
        max_length=1000,
        widget=forms.TextInput(attrs={"placeholder": _("why (optional, for pausing)")}),
    )


#: Fields of the read-only job page (view permission only, or a job the form cannot edit).
VIEW_FIELDS = [
    "id",
    "function",
    "schedule",
    "state",
    "pause_note_text",
    "next_run",
    "options",
    "arguments",
    "origin",
]


class WritingModelAdmin(admin.ModelAdmin):
    """A model admin whose saves, deletions and actions wait for a scheduler writing meanwhile.

    Django opens their transactions itself, and they read before they write;
    SQLite refuses such a transaction the write lock at once, without
    waiting, while a scheduler process holds it for a moment (a heartbeat, a
    write-back), and the page would fail with "database is locked". Each
    transaction of a POST here takes the write lock from its start instead,
    waiting for it like any other writer (``backends.writing_transactions``).
    """

    def _writes(self, request: HttpRequest) -> AbstractContextManager[None]:
        if request.method != "POST":
            return nullcontext()
        using = router.db_for_write(self.model)
        return backends.for_alias(using).writing_transactions(using)

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        with self._writes(request):
            return super().changeform_view(request, object_id, form_url, extra_context)

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        with self._writes(request):
            return super().delete_view(request, object_id, extra_context)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        with self._writes(request):
            return super().changelist_view(request, extra_context)


@admin.register(DjangoJob)
class DjangoJobAdmin(WritingModelAdmin):
    """The stored jobs: an operations console (see the module's docstring)."""

    form = JobForm
    action_form = JobActionForm
    change_list_template = "admin/django_apscheduler/djangojob/change_list.html"
    change_form_template = "admin/django_apscheduler/djangojob/change_form.html"
    search_fields = ["id"]
    search_help_text = _("Search by job id or by function (module or name).")
    list_display = [
        "id",
        "schedule",
        "state",
        "local_run_time",
        "next_run_in",
        "last_run",
        "average_duration",
        "last_duration",
        "recent_failures",
        "overdue",
    ]
    list_filter = [StateFilter, OverdueFilter, OriginFilter]
    actions = [
        "run_selected_jobs",
        "run_in_scheduler",
        "pause_jobs",
        "resume_jobs",
        "delete_selected",
    ]
    #: Next to run first; paused and finished jobs (no next run time) last on every backend.
    ordering = [F("next_run_time").asc(nulls_last=True), "id"]

    #: Colour of each state in the "State" column.
    state_color_mapping = {
        "scheduled": "green",
        "paused": "orange",
        "finished": NEUTRAL_COLOR,
        "broken": "red",
    }

    class Media:
        css = {"all": ["django_apscheduler/console.css"]}

    # ----------------------------------------------------------------- permissions

    def _has(self, request: HttpRequest, action: str) -> bool:
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{action}_{opts.model_name}")

    def has_run_permission(self, request: HttpRequest) -> bool:
        """May run jobs now in the web process (``run_djangojob``)."""
        return self._has(request, "run")

    def has_trigger_permission(self, request: HttpRequest) -> bool:
        """May have the schedulers run jobs now (``trigger_djangojob``)."""
        return self._has(request, "trigger")

    def has_pause_permission(self, request: HttpRequest) -> bool:
        """May pause and resume jobs (``pause_djangojob``)."""
        return self._has(request, "pause")

    @staticmethod
    def editable(obj: DjangoJob) -> bool:
        """Only a scheduled or paused job added at run time is edited here; the code owns the rest."""
        if obj.declared_in_code:
            return False
        return _summary(obj).state.name in ("scheduled", "paused")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and not self.editable(obj):
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A declared job comes back at the next start; a finished record holds history
        # that only the retention setting or prune deletes.
        if obj is not None and (obj.declared_in_code or obj.is_finished):
            return False
        return super().has_delete_permission(request, obj)

    # ----------------------------------------------------------------- the list

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return JobChangeList

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

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """Match the id (the database) or the function reference (in the pickled state)."""
        by_id, duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if not term:
            return by_id, duplicates
        by_function = console.ids_running(queryset, term)
        return queryset.filter(id__in=[*by_id.values_list("id", flat=True), *by_function]), False

    @admin.display(description=_("Schedule"))
    def schedule(self, obj: DjangoJob) -> str:
        """The trigger in words ("every 10 seconds", "at 03:00 on weekdays (Europe/Berlin)")."""
        job = _summary(obj).state.job
        return describe_trigger(job.trigger) if job is not None else "-"

    @admin.display(description=_("State"))
    def state(self, obj: DjangoJob) -> SafeString:
        """``scheduled``, ``paused`` (with its note), ``finished`` or ``broken: <reason>``."""
        state = _summary(obj).state
        if state.error is not None:
            return format_html(
                '<span style="color: {};">{}: {}</span>',
                self.state_color_mapping["broken"],
                _("broken"),
                state.reason,
            )
        text = format_html(
            '<span class="dja-state dja-state-{}" style="color: {};">{}</span>',
            state.name,
            self.state_color_mapping[state.name],
            _STATE_NAMES[state.name],
        )
        if state.name == "paused" and obj.pause_note:
            text = format_html(
                '{}<div class="dja-note" title="{}">{}</div>',
                text,
                gettext("pause note"),
                obj.pause_note,
            )
        return text

    @admin.display(description=_("Local run time"), ordering="next_run_time")
    def local_run_time(self, obj: DjangoJob) -> str:
        """The next run time in ``APSCHEDULER_DATETIME_FORMAT``, or "(paused)"."""
        if obj.next_run_time:
            return util.get_local_dt_format(obj.next_run_time)
        if obj.is_finished:
            return "(finished)"
        return "(paused)"

    @admin.display(description=_("Next run"), ordering="next_run_time")
    def next_run_in(self, obj: DjangoJob) -> str:
        """How far the next run is: "in 4 minutes", or "5 minutes ago" when it is late."""
        return _relative(obj.next_run_time) if obj.next_run_time else "-"

    @admin.display(description=_("Last run"))
    def last_run(self, obj: DjangoJob) -> SafeString | str:
        """When the job last ran and that run's status, in its colour."""
        summary = _summary(obj)
        if summary.last_run_time is None:
            return "-"
        return format_html(
            '{} <span class="{}">{}</span>',
            _relative(summary.last_run_time),
            _status_class(summary.last_status),
            summary.last_status,
        )

    @admin.display(description=_("Average Duration (sec)"), ordering="avg_duration")
    def average_duration(self, obj: DjangoJob) -> str:
        """The mean duration of the job's recorded runs, or "None" if none has one."""
        value = getattr(obj, "avg_duration", None)
        return "None" if value is None else _seconds(value)

    @admin.display(description=_("Last duration (sec)"))
    def last_duration(self, obj: DjangoJob) -> str:
        value = _summary(obj).last_duration
        return "-" if value is None else _seconds(value)

    @admin.display(description=_("Failures (last 20)"))
    def recent_failures(self, obj: DjangoJob) -> SafeString | str:
        """Failed runs ("Error!", "Interrupted") among the job's last 20 runs."""
        summary = _summary(obj)
        if not summary.recent_runs:
            return "-"
        return format_html(
            '<span class="{}">{} / {}</span>',
            "dja-failures" if summary.recent_failures else "dja-no-failures",
            summary.recent_failures,
            summary.recent_runs,
        )

    @admin.display(description=_("Overdue"))
    def overdue(self, obj: DjangoJob) -> SafeString | str:
        if not _summary(obj).overdue:
            return ""
        return format_html(
            '<span class="dja-overdue" title="{}">{}</span>',
            gettext(
                "Its next run time is past by more than its misfire grace time and no live "
                "scheduler holds it: is a scheduler running?"
            ),
            gettext("overdue"),
        )

    # ----------------------------------------------------------------- the job page

    @admin.display(description=_("Function"))
    def function(self, obj: DjangoJob) -> str:
        job = _summary(obj).state.job
        return str(job.func_ref) if job is not None else "-"

    @admin.display(description=_("Next run time"))
    def next_run(self, obj: DjangoJob) -> str:
        if not obj.next_run_time:
            return self.local_run_time(obj)
        return f"{util.get_local_dt_format(obj.next_run_time)} ({_relative(obj.next_run_time)})"

    @admin.display(description=_("Options"))
    def options(self, obj: DjangoJob) -> str:
        job = _summary(obj).state.job
        if job is None:
            return "-"
        return gettext(
            "misfire grace time: %(grace)s s; coalesce: %(coalesce)s; max instances: %(max)s; "
            "executor: %(executor)s"
        ) % {
            "grace": job.misfire_grace_time,
            "coalesce": job.coalesce,
            "max": job.max_instances,
            "executor": job.executor,
        }

    @admin.display(description=_("Arguments"))
    def arguments(self, obj: DjangoJob) -> str:
        job = _summary(obj).state.job
        if job is None:
            return "-"
        return f"args={list(job.args)!r}, kwargs={dict(job.kwargs)!r}"

    @admin.display(description=_("Pause note"))
    def pause_note_text(self, obj: DjangoJob) -> str:
        if _summary(obj).state.name == "paused" and obj.pause_note:
            return obj.pause_note
        return "-"

    @admin.display(description=_("Origin"))
    def origin(self, obj: DjangoJob) -> str:
        if obj.declared_in_code:
            return gettext("declared in code (@scheduled_job): the code owns its definition")
        return gettext("added at run time")

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is not None and not self.has_change_permission(request, obj):
            return [(None, {"fields": VIEW_FIELDS})]
        first = ["func", "name"] if obj is not None else ["id", "func", "name"]
        options = ["misfire_grace_time", "coalesce", "max_instances"]
        if obj is not None and obj.next_run_time is not None:
            options.append("next_run_time")
        return [
            (None, {"fields": first}),
            (
                _("Trigger"),
                {
                    "fields": [
                        "trigger",
                        "timezone",
                        tuple(INTERVAL_FIELDS),
                        tuple(CRON_FIELDS[:4]),
                        tuple(CRON_FIELDS[4:]),
                        "run_date",
                        ("start_date", "end_date", "jitter"),
                    ],
                    "description": _(
                        "Interval: any of weeks to seconds. Cron: APScheduler's cron fields "
                        "(such as minute */5, day_of_week mon-fri). Date: the run date."
                    ),
                },
            ),
            (_("Options"), {"fields": options}),
            (_("Arguments"), {"fields": ["kwargs"]}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is not None and not self.has_change_permission(request, obj):
            return VIEW_FIELDS
        return []

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        if obj is not None and not self.has_change_permission(request, obj):
            kwargs["fields"] = []
        return super().get_form(request, obj, change=change, **kwargs)

    def save_model(self, request: HttpRequest, obj: DjangoJob, form: Any, change: bool) -> None:
        """Save through the store path (``client``), never ``obj.save()``."""
        job = form.apply()
        obj.pk = job.id

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """Nothing related to save (and the form has no ``save_m2m``)."""

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """The usual add and change pages; "Preview" shows the next 5 fire times without saving."""
        extra_context = dict(extra_context or {})
        if request.method == "POST" and "_preview" in request.POST:
            return self._preview(request, object_id, extra_context)
        obj = self.get_object(request, object_id) if object_id else None
        if obj is not None and self.has_view_or_change_permission(request, obj):
            extra_context.update(self._job_page_context(request, obj))
        return super().changeform_view(request, object_id, form_url, extra_context)

    def _preview(
        self, request: HttpRequest, object_id: str | None, extra_context: dict[str, Any]
    ) -> HttpResponse:
        obj = self.get_object(request, object_id) if object_id else None
        add = obj is None
        if object_id and obj is None:
            raise Http404(gettext("No job with the id %(id)r") % {"id": object_id})
        allowed = (
            self.has_add_permission(request) if add else self.has_change_permission(request, obj)
        )
        if not allowed:
            raise PermissionDenied
        form_class = self.get_form(request, obj, change=not add)
        form = form_class(request.POST, request.FILES, instance=obj)
        form.is_valid()
        fieldsets = self.get_fieldsets(request, obj)
        admin_form = helpers.AdminForm(
            form, list(fieldsets), {}, self.get_readonly_fields(request, obj), model_admin=self
        )
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Add %s") % self.opts.verbose_name
            if add
            else gettext("Change %s") % self.opts.verbose_name,
            "subtitle": str(obj) if obj else None,
            "adminform": admin_form,
            "object_id": object_id,
            "original": obj,
            "is_popup": False,
            "to_field": None,
            "media": self.media + admin_form.media,
            "inline_admin_formsets": [],
            "errors": helpers.AdminErrorList(form, []),
            "preserved_filters": self.get_preserved_filters(request),
            "previewed": True,
            **extra_context,
        }
        if obj is not None:
            context.update(self._job_page_context(request, obj))
        return self.render_change_form(request, context, add=add, change=not add, obj=obj)

    def _job_page_context(self, request: HttpRequest, obj: DjangoJob) -> dict[str, Any]:
        """The job page's extra parts: notices, last 50 runs, the chart of the last 100."""
        summary = _summary(obj)
        runs = DjangoJobExecution.objects.latest_of(obj.id, 100)
        chart = charts.duration_chart(
            [charts.Run(r.run_time, r.status, r.duration) for r in reversed(runs)]
        )
        return {
            "job_summary": summary,
            "job_declared": bool(obj.declared_in_code),
            "job_pause_note": obj.pause_note if summary.state.name == "paused" else None,
            "job_runs": [
                {
                    "run": r,
                    "status_class": _status_class(r.status),
                    "local_run_time": util.get_local_dt_format(r.run_time),
                    "duration": "-" if r.duration is None else _seconds(r.duration),
                }
                for r in runs[:50]
            ],
            "job_chart": chart,
            "job_runs_url": reverse("admin:django_apscheduler_djangojobexecution_changelist")
            + f"?job__id__exact={obj.id}",
            "job_schedule": self.schedule(obj),
            "job_operations": self._operations(request, obj, summary),
        }

    def _operations(
        self, request: HttpRequest, obj: DjangoJob, summary: console.Summary
    ) -> list[dict[str, Any]]:
        """The buttons the job's page offers this user for this job's state."""
        state = summary.state.name
        offered = {
            "run-here": (gettext("Run now here"), state in ("scheduled", "paused")),
            "run-in-scheduler": (gettext("Run now in the scheduler"), state == "scheduled"),
            "pause": (gettext("Pause"), state == "scheduled"),
            "resume": (gettext("Resume"), state == "paused"),
        }
        found = []
        for operation, (label, fits) in offered.items():
            _action, permission = self.OPERATIONS[operation]
            if fits and getattr(self, f"has_{permission}_permission")(request):
                found.append(
                    {
                        "name": operation,
                        "label": label,
                        "url": reverse(
                            "admin:django_apscheduler_djangojob_operate",
                            args=[quote(obj.pk), operation],
                        ),
                    }
                )
        return found

    # ----------------------------------------------------------------- deleting

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        """Only the jobs themselves: their runs are kept (see :func:`console.remove`)."""
        objs = list(objs)
        to_delete = [str(obj) for obj in objs]
        perms_needed = set()
        if not all(self.has_delete_permission(request, obj) for obj in objs):
            perms_needed.add(gettext("jobs declared in code or finished"))
        return to_delete, {self.opts.verbose_name_plural: len(objs)}, perms_needed, []

    def delete_model(self, request: HttpRequest, obj: DjangoJob) -> None:
        console.remove(obj.id)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for job_id in queryset.order_by("id").values_list("id", flat=True):
            try:
                console.remove(job_id)
            except (DeclaredJobError, LookupError) as exc:
                self.message_user(request, str(exc), messages.ERROR)

    # ----------------------------------------------------------------- actions

    @admin.action(
        description=_("Delete the selected jobs (their run history is kept)"),
        permissions=["delete"],
    )
    def delete_selected(self, request: HttpRequest, queryset: QuerySet[DjangoJob]) -> Any:
        """Django's own delete action and confirmation page, removing through :func:`console.remove`."""
        return admin_actions.delete_selected(self, request, queryset)

    @admin.action(description=_("Run the selected django jobs"), permissions=["run"])
    def run_selected_jobs(self, request: HttpRequest, queryset: QuerySet[DjangoJob]) -> None:
        """Run the selected jobs once, now, in this process, and report each job's outcome.

        Waits at most ``APSCHEDULER_RUN_NOW_TIMEOUT`` seconds; jobs still
        running then go on in the background. The jobs' schedules are not
        changed. Requires the "run" permission on jobs (``run_djangojob``).
        """
        timeout = conf.run_now_timeout()
        rows = list(queryset.order_by("id"))
        job_ids = [row.id for row in rows]
        logger.info("User %r runs jobs %s now", getattr(request.user, "pk", None), job_ids)
        outcomes = run_now.run_jobs_now(job_ids, timeout=timeout)
        by_id = {row.id: row for row in rows}
        for outcome in outcomes:
            row = by_id.get(outcome.job_id)
            if row is not None:
                self.log_change(
                    request,
                    row,
                    gettext("Ran now in the web process: %(status)s")
                    % {"status": outcome.status.value},
                )
        self.message_outcomes(request, outcomes, timeout)

    @admin.action(
        description=_("Run the selected jobs now in the scheduler"), permissions=["trigger"]
    )
    def run_in_scheduler(self, request: HttpRequest, queryset: QuerySet[DjangoJob]) -> None:
        """Have the running schedulers run each selected job now; returns at once.

        The job's next run time becomes now; its schedule goes on from its
        trigger after that run (an interval job's next run is then one
        interval after this one). Paused, finished and broken jobs are refused.
        """
        for row in queryset.order_by("id"):
            try:
                console.run_in_scheduler(row.id)
            except Exception as exc:
                self.message_user(
                    request,
                    gettext("Job %(id)s was not started: %(reason)s")
                    % {"id": row.id, "reason": exc},
                    messages.ERROR,
                )
                continue
            self.log_change(request, row, gettext("Asked the schedulers to run it now"))
            self.message_user(
                request,
                gettext("Job %(id)s runs now in the scheduler.") % {"id": row.id},
                messages.SUCCESS,
            )

    @admin.action(description=_("Pause the selected jobs (with the note)"), permissions=["pause"])
    def pause_jobs(self, request: HttpRequest, queryset: QuerySet[DjangoJob]) -> None:
        """Pause each selected job; the action bar's note is kept and shown until it is resumed."""
        note = (request.POST.get("note") or "").strip()[:1000]
        for row in queryset.order_by("id"):
            try:
                console.pause(row.id, note)
            except Exception as exc:
                self.message_user(
                    request,
                    gettext("Job %(id)s was not paused: %(reason)s")
                    % {"id": row.id, "reason": exc},
                    messages.ERROR,
                )
                continue
            self.log_change(
                request,
                row,
                gettext("Paused: %(note)s") % {"note": note} if note else gettext("Paused"),
            )
            self.message_user(
                request, gettext("Paused job %(id)s.") % {"id": row.id}, messages.SUCCESS
            )

    @admin.action(description=_("Resume the selected jobs"), permissions=["pause"])
    def resume_jobs(self, request: HttpRequest, queryset: QuerySet[DjangoJob]) -> None:
        """Resume each selected paused job from its trigger's next fire time; drop its note."""
        for row in queryset.order_by("id"):
            if row.next_run_time is not None:  # resuming would move its next run
                self.message_user(
                    request,
                    gettext("Job %(id)s is not paused.") % {"id": row.id},
                    messages.WARNING,
                )
                continue
            try:
                resumed = console.resume(row.id)
            except Exception as exc:
                self.message_user(
                    request,
                    gettext("Job %(id)s was not resumed: %(reason)s")
                    % {"id": row.id, "reason": exc},
                    messages.ERROR,
                )
                continue
            self.log_change(request, row, gettext("Resumed"))
            self.message_user(
                request,
                gettext("Resumed job %(id)s; next run: %(next)s.")
                % {"id": row.id, "next": self.local_run_time(resumed)},
                messages.SUCCESS,
            )

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

    # ----------------------------------------------------------------- the dashboard

    def get_urls(self) -> list[Any]:
        return [
            path(
                "dashboard/",
                self.admin_site.admin_view(self.dashboard_view),
                name="django_apscheduler_dashboard",
            ),
            path(
                "<path:object_id>/operate/<str:operation>/",
                self.admin_site.admin_view(self.operate_view),
                name="django_apscheduler_djangojob_operate",
            ),
            *super().get_urls(),
        ]

    #: The job page's buttons: operation -> (the list action it runs, its permission).
    OPERATIONS = {
        "run-here": ("run_selected_jobs", "run"),
        "run-in-scheduler": ("run_in_scheduler", "trigger"),
        "pause": ("pause_jobs", "pause"),
        "resume": ("resume_jobs", "pause"),
    }

    def operate_view(self, request: HttpRequest, object_id: str, operation: str) -> HttpResponse:
        """A button of the job's page: the list action of that name on this one job (POST only).

        The same permission, messages and ``LogEntry`` as the action; back to the job's page.
        """
        if operation not in self.OPERATIONS:
            raise Http404(gettext("No operation %(name)r") % {"name": operation})
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        action, permission = self.OPERATIONS[operation]
        if not getattr(self, f"has_{permission}_permission")(request):
            raise PermissionDenied
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(gettext("No job with the id %(id)r") % {"id": object_id})
        queryset = self.get_queryset(request).filter(pk=obj.pk)
        getattr(self, action)(request, queryset)
        return HttpResponseRedirect(
            reverse("admin:django_apscheduler_djangojob_change", args=[quote(obj.pk)])
        )

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """Live schedulers, runs per hour over 24 h, the slowest, failing and overdue jobs."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = timezone.now()
        since = now - timedelta(hours=24)
        executions = DjangoJobExecution.objects
        first_hour = since.replace(minute=0, second=0, microsecond=0)
        hours: list[tuple[datetime, dict[str, int]]] = [
            (first_hour + timedelta(hours=i), {}) for i in range(25)
        ]
        index = {util.utc(hour): counts for hour, counts in hours}
        for row in executions.per_hour(first_hour):
            counts = index.get(util.utc(row["hour"]))
            if counts is not None:
                outcome = charts.outcome_of(row["status"])
                counts[outcome] = counts.get(outcome, 0) + row["count"]
        local_hours = [(timezone.localtime(hour), counts) for hour, counts in hours]
        overdue = console.overdue_ids(DjangoJob.objects.all(), now)
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Scheduler dashboard"),
            "opts": self.opts,
            "instances": [
                {
                    "instance": instance,
                    "alive": instance.is_alive(now),
                    "heartbeat": _relative(instance.last_heartbeat),
                }
                for instance in DjangoSchedulerInstance.objects.order_by("started")
            ],
            "hourly_chart": charts.hourly_chart(local_hours),
            "slowest": [
                {**row, "average": _seconds(row["average"]), "longest": _seconds(row["longest"])}
                for row in executions.slowest_jobs(since, 10)
            ],
            "failing": [
                {**row, "last_failure": util.get_local_dt_format(row["last_failure"])}
                for row in executions.failing_jobs(since, 10)
            ],
            "overdue": overdue,
            "jobs_url": reverse("admin:django_apscheduler_djangojob_changelist"),
            "executions_url": reverse("admin:django_apscheduler_djangojobexecution_changelist"),
        }
        return TemplateResponse(request, "admin/django_apscheduler/dashboard.html", context)


def _relative(value: datetime) -> str:
    """ "in 4 minutes" or "4 minutes ago" (Django's own, translated, wording)."""
    now = timezone.now()
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    seconds = int((value - now).total_seconds())
    if abs(seconds) < 60:
        amount = ngettext("%(count)d second", "%(count)d seconds", abs(seconds)) % {
            "count": abs(seconds)
        }
        return (gettext("in %(time)s") if seconds >= 0 else gettext("%(time)s ago")) % {
            "time": amount
        }
    if value >= now:
        return gettext("in %(time)s") % {"time": timeuntil(value, now, depth=1)}
    return gettext("%(time)s ago") % {"time": timesince(value, now, depth=1)}


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
class DjangoJobExecutionAdmin(WritingModelAdmin):
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
class DjangoSchedulerInstanceAdmin(WritingModelAdmin):
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
