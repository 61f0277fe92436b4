"""Prometheus metrics, with the optional extra ``prometheus`` (``prometheus-client``).

Per process, counted from the events of :mod:`signals` (as an observer: no
query) from the moment the app is ready, when ``prometheus-client`` is
installed (:func:`enable`):

- ``django_apscheduler_runs_total{job, outcome}``: finished runs, by outcome
  (``executed``, ``error``, ``missed``, ``interrupted``);
- ``django_apscheduler_run_duration_seconds{job}``: run durations (histogram);
- ``django_apscheduler_start_lateness_seconds{job}``: actual start minus
  scheduled run time (histogram).

These follow ``prometheus-client``'s conventions: they live in its default
registry, and with ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn workers running
autostarted schedulers) every process's values are aggregated at the scrape.

True across processes, read from the database at each scrape (one indexed
query each, plus unpickling the few late jobs for the overdue count):

- ``django_apscheduler_overdue_jobs``: jobs overdue now (see :mod:`overdue`);
- ``django_apscheduler_scheduler_instances``: live scheduler instances;
- ``django_apscheduler_jobs{state}``: stored jobs by state (``scheduled``,
  ``paused``, ``finished``; a broken job counts as scheduled or paused).

:func:`metrics_view` serves them all (``django_apscheduler.urls``, path
``metrics/``); :func:`start_server` on a port of its own.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any, Iterator

from django.db import close_old_connections, connections
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from django_apscheduler import overdue, signals
from django_apscheduler.models import DjangoJob, DjangoSchedulerInstance

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - the extra is not installed
    prometheus_client = None  # type: ignore[assignment]

#: Buckets (seconds) of both histograms: from 10 ms to an hour.
BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, float("inf"))

MISSING = 'Prometheus metrics need prometheus-client: pip install "django-apscheduler[prometheus]"'


def available() -> bool:
    """Whether ``prometheus-client`` is installed."""
    return prometheus_client is not None


def _require() -> None:
    if prometheus_client is None:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(MISSING)


_metrics: dict[str, Any] = {}


def _create() -> dict[str, Any]:
    if not _metrics:
        _metrics["runs"] = Counter(
            "django_apscheduler_runs",
            "Finished job runs, by job and outcome.",
            ["job", "outcome"],
        )
        _metrics["duration"] = Histogram(
            "django_apscheduler_run_duration_seconds",
            "How long job runs took.",
            ["job"],
            buckets=BUCKETS,
        )
        _metrics["lateness"] = Histogram(
            "django_apscheduler_start_lateness_seconds",
            "Actual start of a run minus its scheduled run time.",
            ["job"],
            buckets=BUCKETS,
        )
    return _metrics


#: The outcome label of each signal that ends a run.
OUTCOMES = {
    "job_succeeded": "executed",
    "job_failed": "error",
    "job_missed": "missed",
    "job_interrupted": "interrupted",
}


#: The labelled children already made: (metric, *labels) -> child (``labels()`` costs more).
_children: dict[tuple[str, ...], Any] = {}


def _child(metric: str, *labels: str) -> Any:
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children.setdefault(key, _create()[metric].labels(*labels))
    return child


def _observe(name: str, job_id: str, run_time: datetime, **kwargs: Any) -> None:
    """Count one event (a :mod:`signals` observer: no query, no execution row)."""
    if name in OUTCOMES:
        _child("runs", job_id, OUTCOMES[name]).inc()
        duration = kwargs.get("duration")
        if duration is not None:
            _child("duration", job_id).observe(duration)
    elif name == "job_started" and kwargs.get("started") is not None:
        scheduled = run_time if timezone.is_aware(run_time) else timezone.make_aware(run_time)
        lateness = max(kwargs["started"] - scheduled.timestamp(), 0.0)
        _child("lateness", job_id).observe(lateness)


def enable() -> None:
    """Count this process's runs (idempotent). Raises ImproperlyConfigured without the extra.

    Called when the app is ready if ``prometheus-client`` is installed: a
    counter per event, no database query.
    """
    _require()
    _create()
    signals.observe(_observe)


class DatabaseCollector:
    """The figures true across processes, read from the database at each scrape."""

    def __init__(self, close_connections: bool = False) -> None:
        #: Close this thread's connections after each scrape (the metrics server's
        #: thread is not a request: nothing else would close them).
        self.close_connections = close_connections

    def collect(self) -> Iterator[Any]:
        try:
            if self.close_connections:
                close_old_connections()
            yield from self._collect()
        finally:
            if self.close_connections:
                connections.close_all()

    def _collect(self) -> Iterator[Any]:
        now = timezone.now()
        late = GaugeMetricFamily(
            "django_apscheduler_overdue_jobs",
            "Jobs whose next run is past by more than their allowance and has not started.",
        )
        late.add_metric([], len(overdue.find_overdue(now)))
        yield late
        instances = GaugeMetricFamily(
            "django_apscheduler_scheduler_instances",
            "Scheduler instances with a fresh heartbeat.",
        )
        instances.add_metric([], DjangoSchedulerInstance.objects.alive(now).count())
        yield instances
        states = GaugeMetricFamily(
            "django_apscheduler_jobs", "Stored jobs, by state.", labels=["state"]
        )
        for state, count in DjangoJob.objects.count_by_state().items():
            states.add_metric([state], count)
        yield states


class _ProcessCollector:
    """This process's metrics (the default registry), or every process's in multiprocess mode."""

    def collect(self) -> Iterator[Any]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            yield from registry.collect()
        else:
            yield from prometheus_client.REGISTRY.collect()


def scrape_registry(close_connections: bool = False) -> Collector:
    """A registry with the per-process metrics and the database's figures."""
    _require()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessCollector())  # type: ignore[arg-type]
    registry.register(DatabaseCollector(close_connections))  # type: ignore[arg-type]
    return registry


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus text exposition of :func:`scrape_registry` (protect it like the admin)."""
    registry = scrape_registry()
    return HttpResponse(
        prometheus_client.generate_latest(registry),
        content_type=prometheus_client.CONTENT_TYPE_LATEST,
    )


def start_server(port: int, addr: str = "0.0.0.0") -> Any:
    """Serve the metrics on ``addr:port`` from a daemon thread; return the server."""
    enable()
    server, _thread = prometheus_client.start_http_server(
        port, addr=addr, registry=scrape_registry(close_connections=True)
    )
    return server
