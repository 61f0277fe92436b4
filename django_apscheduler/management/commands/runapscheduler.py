"""``manage.py runapscheduler``: a scheduler with every stored job and every job declared in code.

Runs until SIGTERM or SIGINT (Ctrl-C): the first signal stops taking new
fires, waits up to ``APSCHEDULER_SHUTDOWN_TIMEOUT`` seconds for running jobs,
marks the rest "Interrupted" and exits 0; a second signal exits at once.
``--burst`` runs what is due now and exits (for cron-driven or serverless
deployments): every job whose stored next run time has come, also one that
came while no scheduler ran, is run within its ``misfire_grace_time`` or
logged "Missed!". Any number of copies may run at once, on any hosts.

Projects that wrote their own ``runapscheduler`` command (the 0.7.0 README's
pattern) keep it: when another installed app has a command of that name, it
is the one that runs.
"""

from __future__ import annotations

import logging
import os
from importlib import import_module
from typing import Any

from django.apps import apps
from django.core.management import find_commands
from django.core.management.base import BaseCommand

from django_apscheduler import runner

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
            "--seconds",
            type=float,
            default=None,
            help="Stop (gracefully) after this many seconds.",
        )

    def handle(
        self, *args: Any, burst: bool = False, seconds: float | None = None, **options: Any
    ) -> None:
        verbosity = int(options.get("verbosity", 1))
        self._configure_logging(verbosity)

        def write(message: str) -> None:
            if verbosity > 0:
                self.stdout.write(message)
                self.stdout.flush()

        runner.run_until_stopped(burst=burst, seconds=seconds, write=write)

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
