"""The package's settings, read from ``django.conf.settings`` with their defaults.

Every setting is read when it is first needed and kept until any setting
changes (Django's ``setting_changed``: ``override_settings``, the test
``settings`` fixture), so those are honoured; a run reads several of them, and
reading an unset setting through ``django.conf.settings`` costs an exception.
The library reads each setting through its typed accessor below
(``lease_time()``, ``threads()``...); :func:`get` returns the raw value, for
the system checks and generic code.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from datetime import tzinfo
from typing import Any, Literal

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

#: Defaults of every ``APSCHEDULER_*`` setting this app reads.
DEFAULTS: dict[str, Any] = {
    # Format used to show datetimes in the admin (a Django date format string).
    "APSCHEDULER_DATETIME_FORMAT": "N j, Y, f:s a",
    # Seconds the admin's "Run the selected django jobs" action waits for the jobs.
    "APSCHEDULER_RUN_NOW_TIMEOUT": 15,
    # Seconds a store operation keeps retrying after the database connection was
    # lost before it gives up (the scheduler's own dispatch loop never gives up
    # while the scheduler runs).
    "APSCHEDULER_DB_RETRY_TIMEOUT": 30,
    # Seconds a scheduler instance holds a job it has taken from the database
    # (while it dispatches it, and for as long as the job runs in it). An
    # instance that stops heartbeating loses its jobs to the others after this
    # long, and its unfinished runs are marked "Interrupted".
    "APSCHEDULER_LEASE_TIME": 10,
    # Seconds between two heartbeats of a scheduler instance; each one also
    # extends the leases it holds. Must be well below the lease time.
    "APSCHEDULER_HEARTBEAT_INTERVAL": 4,
    # Seconds between two checks, by every running scheduler, for jobs that
    # another process added or changed (one indexed query). On PostgreSQL such
    # changes also arrive at once through LISTEN/NOTIFY.
    "APSCHEDULER_POLL_INTERVAL": 2,
    # The same, while a PostgreSQL LISTEN connection is up: notifications then
    # bring every change made through the app at once, and this slower poll
    # only catches changes made outside it (SQL by hand, a restored table).
    "APSCHEDULER_LISTEN_POLL_INTERVAL": 60,
    # Most due jobs one scheduler takes from the database in one dispatch round;
    # the rest wait for its next round or go to other schedulers.
    "APSCHEDULER_DISPATCH_BATCH_SIZE": 500,
    # --- the built-in runner (runapscheduler, autostart, the client API) ---
    # Time zone of the schedulers this app builds; None: Django's TIME_ZONE.
    "APSCHEDULER_TIMEZONE": None,
    # Threads of the default executor.
    "APSCHEDULER_THREADS": 10,
    # Processes of an extra "processpool" executor; 0: no process pool.
    "APSCHEDULER_PROCESSES": 0,
    # APScheduler job defaults, over ours (misfire_grace_time 30, coalesce True,
    # max_instances 1).
    "APSCHEDULER_JOB_DEFAULTS": {},
    # Which runs are logged in DjangoJobExecution: "all", "failures" (errors,
    # missed and refused runs only) or "none".
    "APSCHEDULER_EXECUTION_LOG": "all",
    # Seconds after which logged runs are deleted by running schedulers; None: kept.
    "APSCHEDULER_EXECUTION_RETENTION": None,
    # Start a background scheduler in each web process (see docs/deployment.md).
    "APSCHEDULER_AUTOSTART": False,
    # Seconds runapscheduler waits for running jobs after SIGTERM/SIGINT.
    "APSCHEDULER_SHUTDOWN_TIMEOUT": 30,
    # Module name looked up in every installed app for jobs declared in code.
    "APSCHEDULER_JOBS_MODULE": "jobs",
    # --- observability (docs/observability.md) ---
    # Seconds past its next run time after which a job that has not started is
    # overdue: a number for every job, or a dict of job id -> seconds with "*"
    # for the others. None: the job's misfire_grace_time plus the lease time and
    # poll interval (the time a live scheduler may take to pick it up).
    "APSCHEDULER_OVERDUE_AFTER": None,
    # Mail the admins (mail_admins) after this many consecutive failed runs of a
    # job, and when a job is overdue; one "recovered" mail follows. None: no mail.
    "APSCHEDULER_ALERT_AFTER_FAILURES": None,
    # Seconds after its enqueue by which a fire handed to a task worker must have
    # ended; one that has not is marked "Lost" (docs/workers.md).
    "APSCHEDULER_HANDOFF_LOST_AFTER": 3600,
}

#: The job defaults of the schedulers this app builds, before APSCHEDULER_JOB_DEFAULTS.
#: A grace time of 30 s (APScheduler's is 1 s) so that a job added elsewhere to run
#: "now" is not reported missed because it reached the scheduler a poll later.
JOB_DEFAULTS: dict[str, Any] = {"misfire_grace_time": 30, "coalesce": True, "max_instances": 1}

#: The values of ``APSCHEDULER_EXECUTION_LOG``.
ExecutionLog = Literal["all", "failures", "none"]
EXECUTION_LOG_CHOICES: tuple[ExecutionLog, ...] = ("all", "failures", "none")


_values: dict[str, Any] = {}
_UNREAD = object()


def get(name: str) -> Any:
    """Return the value of setting ``name``, or its default."""
    values = _values  # a read racing a change keeps what it read out of the new cache
    value = values.get(name, _UNREAD)
    if value is _UNREAD:
        value = values[name] = getattr(settings, name, DEFAULTS[name])
    return value


def _forget(**kwargs: Any) -> None:
    """Settings changed (``override_settings`` swaps them first, then sends the signal)."""
    global _values
    _values = {}


setting_changed.connect(_forget, dispatch_uid="django_apscheduler.conf")


def _misconfigured(name: str, expected: str, value: Any) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"{name} must be {expected}; it is {value!r}. Fix it in your settings "
        "(`python manage.py check` lists every problem of the APSCHEDULER_* settings)."
    )


def _float(name: str) -> float:
    """Setting ``name`` as a float (what ``float()`` accepts, as the library always read it)."""
    value = get(name)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _misconfigured(name, "a number", value) from None


def _int(name: str) -> int:
    """Setting ``name`` as an int (what ``int()`` accepts)."""
    value = get(name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _misconfigured(name, "an integer", value) from None


def datetime_format() -> str:
    """``APSCHEDULER_DATETIME_FORMAT``: the Django date format of datetimes in the admin."""
    return str(get("APSCHEDULER_DATETIME_FORMAT"))  # a lazy translation string too


def run_now_timeout() -> float:
    """``APSCHEDULER_RUN_NOW_TIMEOUT``: seconds "run now" waits for the jobs."""
    return _float("APSCHEDULER_RUN_NOW_TIMEOUT")


def db_retry_timeout() -> float:
    """``APSCHEDULER_DB_RETRY_TIMEOUT``: seconds a store operation retries a lost connection."""
    return _float("APSCHEDULER_DB_RETRY_TIMEOUT")


def lease_time() -> float:
    """``APSCHEDULER_LEASE_TIME``: seconds an instance holds a job it has taken."""
    return _float("APSCHEDULER_LEASE_TIME")


def heartbeat_interval() -> float:
    """``APSCHEDULER_HEARTBEAT_INTERVAL``: seconds between two heartbeats of an instance."""
    return _float("APSCHEDULER_HEARTBEAT_INTERVAL")


def poll_interval() -> float:
    """``APSCHEDULER_POLL_INTERVAL``: seconds between two looks for jobs changed elsewhere."""
    return _float("APSCHEDULER_POLL_INTERVAL")


def listen_poll_interval() -> float:
    """``APSCHEDULER_LISTEN_POLL_INTERVAL``: the poll interval while notifications are received."""
    return _float("APSCHEDULER_LISTEN_POLL_INTERVAL")


def dispatch_batch_size() -> int:
    """``APSCHEDULER_DISPATCH_BATCH_SIZE``: most due jobs one dispatch round takes."""
    return _int("APSCHEDULER_DISPATCH_BATCH_SIZE")


def threads() -> int:
    """``APSCHEDULER_THREADS``: threads of the default executor of the schedulers we build."""
    return _int("APSCHEDULER_THREADS")


def processes() -> int:
    """``APSCHEDULER_PROCESSES``: processes of the "processpool" executor; 0: none."""
    return _int("APSCHEDULER_PROCESSES")


def execution_log() -> ExecutionLog:
    """``APSCHEDULER_EXECUTION_LOG``: which runs are logged.

    An unknown value logs every run, as before typed settings (system check
    ``django_apscheduler.E003`` reports it).
    """
    value = get("APSCHEDULER_EXECUTION_LOG")
    if value == "failures":
        return "failures"
    if value == "none":
        return "none"
    return "all"


def execution_retention() -> float | None:
    """``APSCHEDULER_EXECUTION_RETENTION``: seconds logged runs are kept; None: for ever."""
    if get("APSCHEDULER_EXECUTION_RETENTION") is None:
        return None
    return _float("APSCHEDULER_EXECUTION_RETENTION")


def autostart() -> bool:
    """``APSCHEDULER_AUTOSTART``: only ``True`` itself starts a scheduler in web processes."""
    return get("APSCHEDULER_AUTOSTART") is True


def shutdown_timeout() -> float:
    """``APSCHEDULER_SHUTDOWN_TIMEOUT``: seconds runapscheduler waits for running jobs."""
    return _float("APSCHEDULER_SHUTDOWN_TIMEOUT")


def jobs_module() -> str:
    """``APSCHEDULER_JOBS_MODULE``: the module of each app that declares jobs in code."""
    return str(get("APSCHEDULER_JOBS_MODULE"))  # system check E007 reports a non-name


def overdue_after(job_id: str) -> float | None:
    """``APSCHEDULER_OVERDUE_AFTER`` for ``job_id``: seconds, or None for the default allowance."""
    value = get("APSCHEDULER_OVERDUE_AFTER")
    if isinstance(value, Mapping):
        value = value.get(job_id, value.get("*"))
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _misconfigured("APSCHEDULER_OVERDUE_AFTER", "a number of seconds", value) from None


def alert_after_failures() -> int | None:
    """``APSCHEDULER_ALERT_AFTER_FAILURES``: consecutive failures that mail the admins; None: off."""
    if get("APSCHEDULER_ALERT_AFTER_FAILURES") is None:
        return None
    return _int("APSCHEDULER_ALERT_AFTER_FAILURES")


def overdue_after_values() -> list[float]:
    """Every allowance ``APSCHEDULER_OVERDUE_AFTER`` sets (for the candidates' query)."""
    value = get("APSCHEDULER_OVERDUE_AFTER")
    values = list(value.values()) if isinstance(value, Mapping) else [value]
    return [float(v) for v in values if v is not None]


def handoff_lost_after() -> float:
    """``APSCHEDULER_HANDOFF_LOST_AFTER``: seconds a handed-off fire has to end before it is "Lost"."""
    return _float("APSCHEDULER_HANDOFF_LOST_AFTER")


def _number(name: str, *, minimum: float, allow_none: bool = False) -> str | None:
    value = get(name)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        bound = "a number" if minimum <= 0 else f"a number of at least {minimum}"
        extra = " or None" if allow_none else ""
        return f"{name} must be {bound}{extra}; it is {value!r}."
    return None


def problems() -> list[tuple[str, str, str]]:
    """Every misconfigured setting: (check id, message, hint), for the system checks."""
    found: list[tuple[str, str, str]] = []

    def add(message: str | None, hint: str = "", code: str = "E001") -> None:
        if message:
            found.append((f"django_apscheduler.{code}", message, hint))

    for name in (
        "APSCHEDULER_DB_RETRY_TIMEOUT",
        "APSCHEDULER_RUN_NOW_TIMEOUT",
        "APSCHEDULER_SHUTDOWN_TIMEOUT",
    ):
        add(_number(name, minimum=0))
    for name in ("APSCHEDULER_LEASE_TIME", "APSCHEDULER_HEARTBEAT_INTERVAL"):
        add(_number(name, minimum=0.1))
    add(_number("APSCHEDULER_POLL_INTERVAL", minimum=0.05))
    add(_number("APSCHEDULER_LISTEN_POLL_INTERVAL", minimum=0.05))
    add(_number("APSCHEDULER_EXECUTION_RETENTION", minimum=1, allow_none=True))
    add(_number("APSCHEDULER_HANDOFF_LOST_AFTER", minimum=1))
    for name, minimum in (
        ("APSCHEDULER_DISPATCH_BATCH_SIZE", 1),
        ("APSCHEDULER_THREADS", 1),
        ("APSCHEDULER_PROCESSES", 0),
    ):
        value = get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            add(f"{name} must be an integer of at least {minimum}; it is {value!r}.")
    lease, beat = get("APSCHEDULER_LEASE_TIME"), get("APSCHEDULER_HEARTBEAT_INTERVAL")
    if not found and beat * 2 > lease:
        add(
            f"APSCHEDULER_HEARTBEAT_INTERVAL ({beat}) must be at most half of "
            f"APSCHEDULER_LEASE_TIME ({lease}).",
            "Otherwise one late heartbeat lets another scheduler take over jobs that are "
            "still running.",
            "E002",
        )
    if get("APSCHEDULER_EXECUTION_LOG") not in EXECUTION_LOG_CHOICES:
        add(
            f"APSCHEDULER_EXECUTION_LOG must be one of {', '.join(EXECUTION_LOG_CHOICES)}; "
            f"it is {get('APSCHEDULER_EXECUTION_LOG')!r}.",
            code="E003",
        )
    defaults = get("APSCHEDULER_JOB_DEFAULTS")
    if not isinstance(defaults, dict):
        add(f"APSCHEDULER_JOB_DEFAULTS must be a dict; it is {defaults!r}.", code="E004")
    else:
        unknown = sorted(set(defaults) - set(JOB_DEFAULTS))
        if unknown:
            add(
                f"APSCHEDULER_JOB_DEFAULTS has unknown keys: {', '.join(unknown)}.",
                f"Known keys: {', '.join(sorted(JOB_DEFAULTS))}.",
                "E004",
            )
    if not isinstance(get("APSCHEDULER_AUTOSTART"), bool):
        add(
            f"APSCHEDULER_AUTOSTART must be True or False; it is {get('APSCHEDULER_AUTOSTART')!r}.",
            code="E005",
        )
    tz = get("APSCHEDULER_TIMEZONE")
    if tz is not None:
        try:
            from apscheduler.util import astimezone

            astimezone(tz)
        except Exception as exc:
            add(f"APSCHEDULER_TIMEZONE {tz!r} is not a time zone: {exc}", code="E006")
    alert = get("APSCHEDULER_ALERT_AFTER_FAILURES")
    if alert is not None and (isinstance(alert, bool) or not isinstance(alert, int) or alert < 1):
        add(
            f"APSCHEDULER_ALERT_AFTER_FAILURES must be an integer of at least 1 or None; it is "
            f"{alert!r}.",
            code="E015",
        )
    overdue = get("APSCHEDULER_OVERDUE_AFTER")
    for key, value in overdue.items() if isinstance(overdue, dict) else [(None, overdue)]:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            where = "" if key is None else f"[{key!r}]"
            add(
                f"APSCHEDULER_OVERDUE_AFTER{where} must be a number of seconds (at least 0) or "
                f"None; it is {value!r}.",
                'A number for every job, or a dict of job id -> seconds ("*": the others).',
                "E014",
            )
    module = get("APSCHEDULER_JOBS_MODULE")
    if not isinstance(module, str) or not module.isidentifier():
        add(f"APSCHEDULER_JOBS_MODULE must be a module name; it is {module!r}.", code="E007")
    return found


def unknown_settings() -> list[tuple[str, str | None]]:
    """Every ``APSCHEDULER_*`` setting this app does not read, with the closest known name.

    A misspelled setting (``APSCHEDULER_THREAD = 4``) is otherwise silently
    ignored and its default used. Returns ``(name, suggestion or None)``.
    """
    prefix = "APSCHEDULER_"
    known = sorted(name[len(prefix) :] for name in DEFAULTS)  # the prefix would match anything
    found = []
    for name in sorted(dir(settings)):
        if not name.startswith(prefix) or name in DEFAULTS:
            continue
        close = difflib.get_close_matches(name[len(prefix) :], known, n=1, cutoff=0.6)
        found.append((name, prefix + close[0] if close else None))
    return found


def timezone_name() -> str | tzinfo:
    """The time zone of the schedulers this app builds.

    ``APSCHEDULER_TIMEZONE`` (a name or a ``tzinfo``), else Django's ``TIME_ZONE``.
    """
    value: str | tzinfo = (
        get("APSCHEDULER_TIMEZONE") or getattr(settings, "TIME_ZONE", None) or "UTC"
    )
    return value


def job_defaults() -> dict[str, Any]:
    """Our job defaults with ``APSCHEDULER_JOB_DEFAULTS`` applied."""
    overrides = get("APSCHEDULER_JOB_DEFAULTS")
    if not isinstance(overrides, Mapping):
        raise _misconfigured("APSCHEDULER_JOB_DEFAULTS", "a dict", overrides)
    return {**JOB_DEFAULTS, **overrides}


def runner_executors() -> list[str]:
    """Executor names of the schedulers this app builds (runapscheduler, autostart).

    ``"default"`` (``APSCHEDULER_THREADS`` threads), and ``"processpool"`` when
    ``APSCHEDULER_PROCESSES`` is above 0.
    """
    names = ["default"]
    count = get("APSCHEDULER_PROCESSES")  # raw: a misconfigured value adds no pool here
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        names.append("processpool")
    return names


def executor_problem(job: Any, executor: Any) -> str | None:
    """Why job ``job`` cannot use ``executor`` in this app's schedulers, or None if it can.

    A job whose executor no scheduler has is never run: schedulers leave it to
    one that has the executor.
    """
    names = runner_executors()
    if executor in names:
        return None
    message = (
        f"Job {job!r} uses the executor {executor!r}, which the schedulers this app runs do "
        f"not have (they have: {', '.join(map(repr, names))}), so it would never run. "
    )
    if executor == "processpool":
        return message + "Set APSCHEDULER_PROCESSES above 0 to have a 'processpool' executor."
    return message + f"Use one of {', '.join(map(repr, names))}."
