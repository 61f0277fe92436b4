"""Django signals about job runs, sent once per event, in the process where it happens.

::

    from django.dispatch import receiver
    from django_apscheduler.signals import job_failed

    @receiver(job_failed)
    def report(sender, job_id, run_time, exception, **kwargs):
        ...

Every signal is sent with ``sender=DjangoJob`` and these keyword arguments:

- ``job_id``: the job's id;
- ``run_time``: the scheduled run time (an aware datetime when ``USE_TZ``);
- ``execution``: the run's ``DjangoJobExecution`` row, or None when there is
  none (``APSCHEDULER_EXECUTION_LOG`` did not log it);
- ``instance``: the scheduler instance that submitted the run, when known.

and, per signal:

- ``job_submitted``: handed to an executor by a scheduler;
- ``job_started``: its function was entered (``started``, a POSIX time);
- ``job_succeeded``: it returned (``duration`` in seconds);
- ``job_failed``: it raised (``exception``, the exception when the run
  happened in this process, else None; ``message``, its text; ``traceback``;
  ``duration``);
- ``job_missed``: its run time passed by more than its misfire grace time
  before a scheduler could start it;
- ``job_interrupted``: it was marked "Interrupted" (``reason``), because its
  scheduler died or stopped while it ran;
- ``job_overdue``: no run started although its next run time is past by more
  than its allowance (``late``, a timedelta; ``execution`` is None): no live
  scheduler holds it, or all are saturated. Sent once per overdue episode by
  one live scheduler.

A run refused because ``max_instances`` runs were going ("Max instances!")
sends none of them.

The run signals are sent from the execution recorder's thread (never the
scheduler's), after the batch that holds the run is written; the runs of
``run_now`` (the admin action, ``apscheduler run``) send theirs from the
thread that runs them. A receiver that
raises is logged (``django_apscheduler.signals``) and never disturbs the
scheduler or the other receivers. Receivers should return quickly: a slow one
delays the log of the runs that follow.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from django.dispatch import Signal

logger = logging.getLogger(__name__)

job_submitted = Signal()
job_started = Signal()
job_succeeded = Signal()
job_failed = Signal()
job_missed = Signal()
job_interrupted = Signal()
job_overdue = Signal()

#: Every signal of this module, by name.
ALL: dict[str, Signal] = {
    "job_submitted": job_submitted,
    "job_started": job_started,
    "job_succeeded": job_succeeded,
    "job_failed": job_failed,
    "job_missed": job_missed,
    "job_interrupted": job_interrupted,
    "job_overdue": job_overdue,
}


#: Callbacks of this package (the Prometheus metrics) called with every event's
#: signal name and arguments, without the execution row: they cost no query.
_observers: list[Callable[..., None]] = []


def observe(callback: Callable[..., None]) -> None:
    """Call ``callback(name, **kwargs)`` for every event of this process (idempotent)."""
    if callback not in _observers:
        _observers.append(callback)


def wanted(name: str) -> bool:
    """Whether the event ``name`` has a receiver or an observer (else it is not even built)."""
    return bool(_observers) or received(name)


def observed() -> bool:
    """Whether any observer is registered (they get every event)."""
    return bool(_observers)


def received(name: str) -> bool:
    """Whether the signal of the event ``name`` has receivers (observers aside)."""
    from django_apscheduler.models import DjangoJob

    signal = ALL[name]
    # Asked for every run: no receiver at all is told without Django's lookup.
    return bool(signal.receivers) and signal.has_listeners(DjangoJob)


def notify(name: str, **kwargs: Any) -> None:
    """Call the observers with the event ``name``; log, never raise, what one raises."""
    for callback in _observers:
        try:
            callback(name, **kwargs)
        except Exception:
            logger.exception(
                "Observer %r of %s for job %r raised", callback, name, kwargs.get("job_id")
            )


def send(signal: Signal, **kwargs: Any) -> None:
    """Send ``signal`` to every receiver; log, never raise, what a receiver raises."""
    from django_apscheduler.models import DjangoJob  # not at import: models imports this module

    if not signal.has_listeners(DjangoJob):
        return
    name = next((n for n, s in ALL.items() if s is signal), "signal")
    for receiver, result in signal.send_robust(DjangoJob, **kwargs):
        if isinstance(result, Exception):
            logger.error(
                "Receiver %r of %s for job %r raised; the scheduler goes on",
                receiver,
                name,
                kwargs.get("job_id"),
                exc_info=(type(result), result, result.__traceback__),
            )
