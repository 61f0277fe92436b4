"""``manage.py runapscheduler``: a scheduler with every stored job and every job declared in code.

Runs until SIGTERM or SIGINT (Ctrl-C): the first signal stops taking new
fires, waits up to ``APSCHEDULER_SHUTDOWN_TIMEOUT`` seconds for running jobs,
marks the rest "Interrupted" and exits 0; a second signal exits at once.
``--burst`` runs what is due now and exits (for cron-driven or serverless
deployments): every job whose stored next run time has come, also one that
came while no scheduler ran, is run within its ``misfire_grace_time`` or
logged "Missed!". Any number of copies may run at once, on any hosts.

It prints one line per run (job, scheduled time, status, duration, and the
exception's first line on error) whatever ``LOGGING`` says; ``-v 2`` adds the
submissions and starts, each run's execution id and instance, and this app's
INFO log records; ``-v 0`` prints nothing but errors.

Projects that wrote their own ``runapscheduler`` command (the 0.7.0 README's
pattern) keep it: when another installed app has a command of that name, it
is the one that runs.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime
from importlib import import_module
from typing import Any, Callable

from django.apps import apps
from django.core.management import find_commands
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from django_apscheduler import runner, signals

NAME = "runapscheduler"
LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


def shadowed_command() -> BaseCommand | None:
    """Another installed app's own ``runapscheduler`` command, if there is one."""
    for app_config in apps.get_app_configs():
        if app_config.name == "django_apscheduler":
            continue
        if NAME in find_commands(os.path.join(app_config.path, "management")):
            module = import_module(f"{app_config.name}.management.commands.{NAME}")
            return module.Command()
    return None


class RunPrinter:
    """One line per run on the command's output, whatever ``LOGGING`` says.

    At the default verbosity: the job, its scheduled time, the outcome, the
    duration, and the exception's first line on error. At ``-v 2`` and above
    also the submissions and starts, and each run's instance, execution id
    and start lateness. The lines come from the signals of
    :mod:`django_apscheduler.signals`.
    """

    def __init__(self, write: Callable[[str], None], verbosity: int) -> None:
        self.write = write
        self.verbose = verbosity >= 2

    def connect(self) -> list[tuple[Any, Callable[..., None]]]:
        """Connect the receivers; return (signal, receiver) pairs to disconnect later."""
        pairs: list[tuple[Any, Callable[..., None]]] = [
            (signals.job_succeeded, self.succeeded),
            (signals.job_failed, self.failed),
            (signals.job_missed, self.missed),
            (signals.job_interrupted, self.interrupted),
            (signals.job_overdue, self.overdue),
        ]
        if self.verbose:
            pairs += [(signals.job_submitted, self.submitted), (signals.job_started, self.started)]
        for signal, receiver in pairs:
            signal.connect(receiver, weak=False)
        return pairs

    @staticmethod
    def _when(run_time: datetime) -> str:
        if timezone.is_aware(run_time):
            run_time = timezone.localtime(run_time)
        return run_time.strftime("%Y-%m-%d %H:%M:%S %Z").rstrip()

    def _line(self, job_id: str, run_time: datetime, text: str, **kwargs: Any) -> None:
        line = f"Run of {job_id} scheduled {self._when(run_time)}: {text}"
        if self.verbose:
            details = []
            execution = kwargs.get("execution")
            if execution is not None:
                details.append(f"execution {execution.pk}")
            if kwargs.get("instance"):
                details.append(f"instance {kwargs['instance']}")
            started = kwargs.get("started")
            if started is not None:
                details.append(f"started {started - run_time.timestamp():.2f} s after schedule")
            if details:
                line += f" ({', '.join(details)})"
        self.write(line)

    @staticmethod
    def _seconds(duration: float | None) -> str:
        return "" if duration is None else f" {duration:.2f} s"

    def succeeded(self, sender: Any, job_id: str, run_time: datetime, **kwargs: Any) -> None:
        self._line(
            job_id, run_time, f"Executed in{self._seconds(kwargs.get('duration'))}", **kwargs
        )

    def failed(self, sender: Any, job_id: str, run_time: datetime, **kwargs: Any) -> None:
        error = kwargs.get("exception")
        message = (kwargs.get("message") or "").strip().splitlines()
        first = message[0] if message else ""
        if error is not None:
            first = f"{type(error).__name__}: {first}" if first else type(error).__name__
        after = kwargs.get("duration")
        text = "Error!" + (f" after{self._seconds(after)}" if after is not None else "")
        self._line(job_id, run_time, f"{text}: {first}", **kwargs)

    def missed(self, sender: Any, job_id: str, run_time: datetime, **kwargs: Any) -> None:
        self._line(job_id, run_time, "Missed! (later than its misfire_grace_time)", **kwargs)

    def interrupted(self, sender: Any, job_id: str, run_time: datetime, **kwargs: Any) -> None:
        self._line(job_id, run_time, f"Interrupted ({kwargs.get('reason', '')})", **kwargs)

    def overdue(self, sender: Any, job_id: str, run_time: datetime, **kwargs: Any) -> None:
        late = kwargs.get("late")
        seconds = f" {late.total_seconds():.0f} s" if late is not None else ""
        self._line(job_id, run_time, f"OVERDUE: not started{seconds} after its time", **kwargs)

    def submitted(self, sender: Any, job_id: str, run_time: datetime, **kwargs: Any) -> None:
        self._line(job_id, run_time, "submitted", **kwargs)

    def started(self, sender: Any, job_id: str, run_time: datetime, **kwargs: Any) -> None:
        self._line(job_id, run_time, "started", **kwargs)


class Command(BaseCommand):
    help = (
        "Runs a scheduler with every job in the database and every job declared in code, "
        "until SIGTERM or SIGINT. Several copies may run at once."
    )

    def run_from_argv(self, argv: list[str]) -> None:
        own = shadowed_command()
        if own is not None:
            # The project's own command, written before this one existed, wins.
            own.run_from_argv(argv)
            return
        super().run_from_argv(argv)

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--burst",
            action="store_true",
            help=(
                "Run the jobs that are due now (those late beyond their misfire_grace_time "
                'are logged "Missed!"), wait for them, and exit.'
            ),
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            metavar="PORT",
            help="Serve Prometheus metrics on this port (needs the 'prometheus' extra).",
        )
        parser.add_argument(
            "--seconds",
            type=float,
            default=None,
            help="Stop (gracefully) after this many seconds.",
        )

    def handle(
        self,
        *args: Any,
        burst: bool = False,
        seconds: float | None = None,
        metrics_port: int | None = None,
        **options: Any,
    ) -> None:
        verbosity = int(options.get("verbosity", 1))
        self._configure_logging(verbosity)
        server = None
        if metrics_port is not None:
            from django_apscheduler import metrics

            if not metrics.available():
                raise CommandError(f"--metrics-port: {metrics.MISSING}")
            try:
                server = metrics.start_server(metrics_port)
            except OSError as exc:
                raise CommandError(f"--metrics-port {metrics_port}: {exc}") from None

        lock = threading.Lock()

        def write(message: str) -> None:
            if verbosity > 0:
                with lock:  # the run lines come from the recorder's thread
                    self.stdout.write(message)
                    self.stdout.flush()

        receivers = RunPrinter(write, verbosity).connect() if verbosity > 0 else []
        if server is not None:
            write(f"Serving Prometheus metrics on port {metrics_port} (path /metrics).")
        try:
            runner.run_until_stopped(burst=burst, seconds=seconds, write=write)
        finally:
            for signal, receiver in receivers:
                signal.disconnect(receiver)
            if server is not None:
                server.shutdown()
                server.server_close()

    @staticmethod
    def _configure_logging(verbosity: int) -> None:
        """Show this app's (and at -v 3 APScheduler's) log records at the chosen verbosity."""
        level = LEVELS.get(verbosity, logging.DEBUG)
        names = ["django_apscheduler"] + (["apscheduler"] if verbosity >= 3 else [])
        for name in names:
            logger = logging.getLogger(name)
            if verbosity != 1:  # the default verbosity keeps the project's LOGGING levels
                logger.setLevel(level)
            if not logger.handlers and not logging.getLogger().handlers:
                handler = logging.StreamHandler()
                handler.setFormatter(
                    logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
                )
                logger.addHandler(handler)
