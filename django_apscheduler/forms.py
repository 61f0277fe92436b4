"""The admin's form for creating and editing a job: function, trigger, options, arguments.

The function is chosen from the allow-list (:mod:`django_apscheduler.functions`),
never typed. The trigger is an interval, a cron schedule or a date, each with
its own fields; a bad value fails validation with an error that names the
field and the value. A valid form has the trigger's next 5 fire times in
:attr:`JobForm.preview`. :meth:`JobForm.apply` saves through ``client``
(``add_job``, ``modify_job``, ``reschedule_job``), the same store path as
application code, so running schedulers see the change at once.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from typing import Any

from apscheduler.job import Job
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from django import forms
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from django_apscheduler import client, conf, console, functions
from django_apscheduler.describe import describe_trigger, zone_name
from django_apscheduler.jobstores import validate_job_id
from django_apscheduler.models import DjangoJob

INTERVAL_FIELDS = ("weeks", "days", "hours", "minutes", "seconds")
CRON_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")
TRIGGER_FIELDS = (
    "trigger",
    *INTERVAL_FIELDS,
    *CRON_FIELDS,
    "run_date",
    "timezone",
    "start_date",
    "end_date",
    "jitter",
)
OPTION_FIELDS = ("misfire_grace_time", "coalesce", "max_instances")

#: The trigger choice that keeps an existing job's trigger (one the form cannot edit).
KEEP = "keep"


def _wall_clock(value: datetime | None, zone: Any) -> datetime | None:
    """A form datetime (aware, in the current time zone) read as a wall-clock time in ``zone``."""
    if value is None:
        return None
    if timezone.is_aware(value):
        value = timezone.make_naive(value)
    return value.replace(tzinfo=zone)


def _form_datetime(value: datetime | None) -> datetime | None:
    """A trigger's datetime as the form shows it: its own wall-clock time."""
    if value is None:
        return None
    return value.replace(tzinfo=None)


class JobForm(forms.ModelForm):
    """Create or edit one job. ``preview`` holds the next fire times once valid."""

    name = forms.CharField(
        label=_("Name"), required=False, max_length=255, help_text=_("Defaults to the function.")
    )
    func = forms.ChoiceField(
        label=_("Function"),
        help_text=_(
            "Functions declared with @scheduled_job or decorated with "
            "@django_apscheduler.functions.schedulable."
        ),
    )
    trigger = forms.ChoiceField(
        label=_("Trigger"),
        choices=[("interval", _("interval")), ("cron", _("cron")), ("date", _("date (once)"))],
        initial="interval",
    )
    weeks = forms.IntegerField(label=_("weeks"), required=False, min_value=0)
    days = forms.IntegerField(label=_("days"), required=False, min_value=0)
    hours = forms.IntegerField(label=_("hours"), required=False, min_value=0)
    minutes = forms.IntegerField(label=_("minutes"), required=False, min_value=0)
    seconds = forms.IntegerField(label=_("seconds"), required=False, min_value=0)
    year = forms.CharField(label=_("cron: year"), required=False, max_length=100)
    month = forms.CharField(label=_("cron: month"), required=False, max_length=100)
    day = forms.CharField(label=_("cron: day"), required=False, max_length=100)
    week = forms.CharField(label=_("cron: week"), required=False, max_length=100)
    day_of_week = forms.CharField(label=_("cron: day_of_week"), required=False, max_length=100)
    hour = forms.CharField(label=_("cron: hour"), required=False, max_length=100)
    minute = forms.CharField(label=_("cron: minute"), required=False, max_length=100)
    second = forms.CharField(label=_("cron: second"), required=False, max_length=100)
    run_date = forms.DateTimeField(
        label=_("run date"), required=False, help_text=_("For a date trigger: YYYY-MM-DD HH:MM:SS")
    )
    timezone = forms.CharField(
        label=_("time zone"),
        required=False,
        max_length=64,
        help_text=_("An IANA name such as Europe/Berlin; the scheduler's by default."),
    )
    start_date = forms.DateTimeField(label=_("start date"), required=False)
    end_date = forms.DateTimeField(label=_("end date"), required=False)
    jitter = forms.IntegerField(label=_("jitter (seconds)"), required=False, min_value=1)
    misfire_grace_time = forms.IntegerField(
        label=_("misfire grace time (seconds)"),
        required=False,
        min_value=1,
        help_text=_("Blank: the scheduler's default."),
    )
    coalesce = forms.NullBooleanField(
        label=_("coalesce"), required=False, help_text=_("Unknown: the scheduler's default.")
    )
    max_instances = forms.IntegerField(
        label=_("max instances"),
        required=False,
        min_value=1,
        help_text=_("Blank: the scheduler's default."),
    )
    kwargs = forms.JSONField(
        label=_("keyword arguments (JSON)"),
        required=False,
        initial=dict,
        help_text=_('A JSON object, such as {"recipient": "ops@example.com"}.'),
    )
    next_run_time = forms.DateTimeField(
        label=_("next run time"),
        required=False,
        help_text=_("Of a scheduled job; change it to move the next run."),
    )

    class Meta:
        model = DjangoJob
        fields = ["id"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allowed = functions.allowed()
        self.preview: list[datetime] = []
        self.preview_text = ""
        self.built_trigger: Any = None
        choices = [("", "---------")] + [(ref, f.label) for ref, f in self.allowed.items()]
        self.job: Job | None = None
        if self.instance is not None and self.instance.pk:  # the add page's instance has none
            self.job = self.instance.classify().job
        if self.job is not None:
            ref = str(self.job.func_ref)
            if ref not in self.allowed:  # shown, but only kept, never re-imported from here
                choices.append((ref, gettext("%(ref)s (not on the allow-list)") % {"ref": ref}))
            trigger_field: Any = self.fields["trigger"]
            trigger_field.choices = [
                *trigger_field.choices,
                (
                    KEEP,
                    gettext("keep: %(schedule)s")
                    % {"schedule": describe_trigger(self.job.trigger)},
                ),
            ]
            self.initial.update(self._initial_from(self.job))
            stored_next = self.instance.next_run_time
            if not self.is_bound and stored_next is not None:
                # The stored schedule's next fire times, shown on the job's page.
                self.preview = console.fire_times(self.job.trigger, 5, first=stored_next)
                self.preview_text = describe_trigger(self.job.trigger)
        else:
            self.fields.pop("next_run_time", None)
        func_field: Any = self.fields["func"]
        func_field.choices = choices
        if "id" in self.fields:
            self.fields["id"].help_text = _("Unique id for this job (1 to 255 characters).")
        if not self.is_bound and not self.initial.get("timezone"):
            self.initial["timezone"] = zone_name(_zone(conf.timezone_name()))

    @staticmethod
    def _initial_from(job: Job) -> dict[str, Any]:
        initial: dict[str, Any] = {
            "name": job.name,
            "func": str(job.func_ref),
            "kwargs": dict(job.kwargs),
            "misfire_grace_time": job.misfire_grace_time,
            "coalesce": job.coalesce,
            "max_instances": job.max_instances,
            "next_run_time": job.next_run_time,
        }
        trigger = job.trigger
        zone = getattr(trigger, "timezone", None)
        if zone is not None:
            initial["timezone"] = zone_name(zone)
        if type(trigger) is IntervalTrigger:
            initial["trigger"] = "interval"
            seconds = int(trigger.interval.total_seconds())
            for name, size in zip(INTERVAL_FIELDS, (604800, 86400, 3600, 60, 1)):
                count, seconds = divmod(seconds, size)
                initial[name] = count or None
        elif type(trigger) is CronTrigger:
            initial["trigger"] = "cron"
            for cron_field in trigger.fields:
                if not cron_field.is_default:
                    initial[cron_field.name] = str(cron_field)
        elif type(trigger) is DateTrigger:
            initial["trigger"] = "date"
            initial["run_date"] = _form_datetime(trigger.run_date)
            initial["timezone"] = zone_name(trigger.run_date.tzinfo)
        else:
            initial["trigger"] = KEEP
        if type(trigger) in (IntervalTrigger, CronTrigger):
            if type(trigger) is CronTrigger:
                initial["start_date"] = _form_datetime(trigger.start_date)
            initial["end_date"] = _form_datetime(trigger.end_date)
            initial["jitter"] = trigger.jitter
        return initial

    # ------------------------------------------------------------------ validation

    def clean_id(self) -> str:
        value = self.cleaned_data["id"]
        try:
            validate_job_id(value)
        except Exception as exc:
            raise forms.ValidationError(str(exc)) from None
        return value

    def clean_timezone(self) -> Any:
        value = (self.cleaned_data.get("timezone") or "").strip()
        if not value:
            return _zone(conf.timezone_name())
        try:
            return zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise forms.ValidationError(
                gettext("time zone %(value)r: unknown time zone (use an IANA name such as UTC)")
                % {"value": value}
            ) from None

    def clean_func(self) -> str:
        ref = self.cleaned_data["func"]
        if ref not in self.allowed and not (self.job is not None and ref == str(self.job.func_ref)):
            raise forms.ValidationError(
                gettext("function %(value)r is not on the allow-list") % {"value": ref}
            )
        return ref

    def clean_kwargs(self) -> dict[str, Any]:
        value = self.cleaned_data.get("kwargs")
        if value in (None, ""):
            return {}
        if not isinstance(value, dict):
            raise forms.ValidationError(
                gettext("keyword arguments %(value)s: a JSON object is needed, such as {}")
                % {"value": forms.JSONField().prepare_value(value)}
            )
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("trigger")
        zone = data.get("timezone")
        if not kind or zone is None or "timezone" in self.errors:
            return data
        if kind == KEEP:
            if self.job is None:
                self.add_error("trigger", gettext("there is no trigger to keep"))
                return data
            trigger = self.job.trigger
        else:
            trigger = self._build_trigger(kind, data, zone)
        if trigger is None:
            return data
        self.built_trigger = trigger
        self.preview = console.fire_times(trigger, 5)
        self.preview_text = describe_trigger(trigger)
        if kind == "date" and self.preview and self.preview[0] < timezone.now():
            self.add_error(
                "run_date",
                gettext("run date %(value)s is in the past: the job would never run")
                % {"value": data.get("run_date")},
            )
            self.preview = []
        return data

    @property
    def preview_labels(self) -> list[str]:
        """The preview's fire times in the trigger's own time zone ("2026-12-24 18:00:00 CET")."""
        return [fire.strftime("%Y-%m-%d %H:%M:%S %Z") for fire in self.preview]

    def _build_trigger(self, kind: str, data: dict[str, Any], zone: Any) -> Any:
        start = _wall_clock(data.get("start_date"), zone)
        end = _wall_clock(data.get("end_date"), zone)
        jitter = data.get("jitter")
        if kind == "interval":
            amounts = {name: data.get(name) or 0 for name in INTERVAL_FIELDS}
            if not any(amounts.values()):
                self.add_error(
                    "seconds",
                    gettext("interval: give at least one of weeks, days, hours, minutes, seconds"),
                )
                return None
            try:
                return IntervalTrigger(
                    **amounts, start_date=start, end_date=end, timezone=zone, jitter=jitter
                )
            except (ValueError, TypeError) as exc:
                self.add_error("end_date", f"{exc}")
                return None
        if kind == "cron":
            values = {
                name: (data.get(name) or "").strip()
                for name in CRON_FIELDS
                if (data.get(name) or "").strip()
            }
            if not values:
                self.add_error("minute", gettext("cron: give at least one field, such as minute"))
                return None
            bad = False
            for name, value in values.items():
                try:
                    CronTrigger(**{name: value}, timezone=zone)
                except (ValueError, TypeError) as exc:
                    self.add_error(name, f"{name} {value!r}: {exc}")
                    bad = True
            if bad:
                return None
            try:
                return CronTrigger(
                    **values, start_date=start, end_date=end, timezone=zone, jitter=jitter
                )
            except (ValueError, TypeError) as exc:
                self.add_error(None, f"cron {values}: {exc}")
                return None
        # date
        run_date = data.get("run_date")
        if run_date is None:
            self.add_error("run_date", gettext("run date: required for a date trigger"))
            return None
        return DateTrigger(_wall_clock(run_date, zone), timezone=zone)

    # ------------------------------------------------------------------ saving

    def options(self) -> dict[str, Any]:
        """The job options given in the form (blank ones are left to the defaults)."""
        data = self.cleaned_data
        found: dict[str, Any] = {}
        for name in OPTION_FIELDS:
            if data.get(name) is not None:
                found[name] = data[name]
        if data.get("name"):
            found["name"] = data["name"]
        return found

    def apply(self) -> Job:
        """Save through ``client``: add a new job, or change the edited one."""
        data = self.cleaned_data
        ref = data["func"]
        if self.job is None:
            return client.add_job(
                self.allowed[ref].func,
                self.built_trigger,
                id=data["id"],
                kwargs=data["kwargs"],
                **self.options(),
            )
        job_id = self.job.id
        changes: dict[str, Any] = dict(self.options())
        changes["kwargs"] = data["kwargs"]
        if ref != str(self.job.func_ref):
            changes["func"] = self.allowed[ref].func
        job = client.modify_job(job_id, **changes)
        trigger_changed = data["trigger"] != KEEP and any(
            name in self.changed_data for name in TRIGGER_FIELDS
        )
        if trigger_changed:
            if job.next_run_time is None:  # paused: stays paused with its new trigger
                job = client.modify_job(job_id, trigger=self.built_trigger)
            else:
                job = client.reschedule_job(job_id, trigger=self.built_trigger)
        moved = data.get("next_run_time")
        if "next_run_time" in self.changed_data and moved is not None and job.next_run_time:
            job = client.modify_job(job_id, next_run_time=moved)
        return job


def _zone(name: Any) -> Any:
    if isinstance(name, str):
        return zoneinfo.ZoneInfo(name)
    return name
