"""Failure alerts by e-mail, opt-in: ``APSCHEDULER_ALERT_AFTER_FAILURES = 3``.

After that many consecutive failed runs of a job (``Error!``, ``Missed!``,
``Max instances!``, ``Interrupted``), and when a job is reported overdue, the
site's admins get one mail through Django's ``mail_admins`` (the ``ADMINS``
and ``EMAIL_*`` settings). The next successful run sends one "recovered"
mail. One mail per episode whatever the number of schedulers: the episode is
noted on the job's row (``DjangoJob.alert_open_since``) by one conditional
update, and only the process whose update changed it sends the mail.

The streak is counted in the execution log, so alerts need every run logged
(``APSCHEDULER_EXECUTION_LOG = "all"``, the default). The receivers are
connected when the app is ready if the setting is set; :func:`connect` and
:func:`disconnect` do it by hand.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.core.mail import mail_admins

from django_apscheduler import conf, signals, util
from django_apscheduler.models import DjangoJob, DjangoJobExecution

logger = logging.getLogger(__name__)

PREFIX = "django-apscheduler: "


def _failed(sender: Any, job_id: str, run_time: datetime, **kwargs: Any) -> None:
    count = conf.alert_after_failures()
    if count is None:
        return
    outcomes = DjangoJobExecution.objects.latest_outcomes(job_id, count)
    if len(outcomes) < count or any(s == DjangoJobExecution.SUCCESS for _, s in outcomes):
        return
    first = outcomes[-1][0]
    if not DjangoJob.objects.open_alert(job_id, first):
        return  # this episode's alert was sent already
    last = DjangoJobExecution.objects.history(job_id, failed=True, limit=1).first()
    lines = [
        f"The last {count} runs of job {job_id!r} failed (APSCHEDULER_ALERT_AFTER_FAILURES = "
        f"{count}), the first at {util.get_local_dt_format(first)}.",
        "",
    ]
    if last is not None:
        lines += [
            f"Latest: {last.status} at {util.get_local_dt_format(last.run_time)}",
            last.exception or "",
            last.traceback or "",
        ]
    lines += [
        "One more mail comes when the job runs successfully again.",
        f"Its runs: manage.py apscheduler history {job_id} --failed --full",
    ]
    _mail(f"Job {job_id!r} failed {count} times in a row", "\n".join(lines))


def _overdue(sender: Any, job_id: str, run_time: datetime, **kwargs: Any) -> None:
    if conf.alert_after_failures() is None:
        return
    if not DjangoJob.objects.open_alert(job_id, run_time):
        return
    late = kwargs.get("late") or timedelta(0)
    _mail(
        f"Job {job_id!r} is overdue",
        f"Job {job_id!r} should have run at {util.get_local_dt_format(run_time)} and has not "
        f"started {late.total_seconds():.0f} s later: no live scheduler holds it, or all are "
        "saturated.\n\nCheck: manage.py apscheduler health --jobs\n"
        "One more mail comes when the job runs successfully again.",
    )


def _succeeded(sender: Any, job_id: str, run_time: datetime, **kwargs: Any) -> None:
    if conf.alert_after_failures() is None:
        return
    if not DjangoJob.objects.close_alert(job_id):
        return  # no alert was open (the common case: one indexed read)
    _mail(
        f"Job {job_id!r} recovered",
        f"Job {job_id!r} ran successfully at {util.get_local_dt_format(run_time)}.",
    )


def _mail(subject: str, message: str) -> None:
    try:
        mail_admins(PREFIX + subject, message)
    except Exception:
        logger.exception("Could not mail the admins: %s", subject)
    else:
        logger.warning("Mailed the admins: %s", subject)


RECEIVERS = (
    (signals.job_failed, _failed),
    (signals.job_missed, _failed),
    (signals.job_interrupted, _failed),
    (signals.job_overdue, _overdue),
    (signals.job_succeeded, _succeeded),
)


def connect() -> None:
    """Connect the alert receivers (idempotent)."""
    for signal, receiver in RECEIVERS:
        signal.connect(receiver, dispatch_uid=f"django_apscheduler.alerts.{receiver.__name__}")


def disconnect() -> None:
    """Disconnect the alert receivers (for tests, and projects that connect them by hand)."""
    for signal, receiver in RECEIVERS:
        signal.disconnect(receiver, dispatch_uid=f"django_apscheduler.alerts.{receiver.__name__}")
