"""``manage.py apscheduler``: look at and operate the stored jobs.

::

    manage.py apscheduler list [--format json]
    manage.py apscheduler run JOB_ID [JOB_ID ...] [--timeout SECONDS]
    manage.py apscheduler pause|resume|remove JOB_ID
    manage.py apscheduler history [JOB_ID] [--failed] [--limit N] [--full] [--format json]
    manage.py apscheduler prune --max-age 7d
    manage.py apscheduler sign --all | --old-keys | JOB_ID [JOB_ID ...]
    manage.py apscheduler health [--this-host] [--jobs] [--no-instance] [--format json]

``health`` is a liveness check by default: it exits 0 when a scheduler
instance has a fresh heartbeat (an instance heartbeats only while it can
dispatch), and 1 otherwise. ``--jobs`` adds the job checks, for readiness
probes and alerts: it also exits 1 when a job cannot be restored (broken) or
is overdue beyond its grace time, naming the jobs. A broken job is a problem
of that job, not of the scheduler: it never fails the liveness check, so a
probe never restarts healthy processes in a loop over it.

Every action takes Django's standard options (``--settings``, ``-v``,
``--traceback`` ...) before or after its name. Unknown job ids are reported
by name, with exit code 1.

``sign`` signs stored job states with the current ``SECRET_KEY`` as they are,
on purpose: for rows this app did not sign with this key (a backup made under
another ``SECRET_KEY``, a row copied by hand), which are otherwise never
unpickled. See ``docs/security.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import sys
import threading
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import F, OuterRef, Subquery
from django.utils import timezone

from django_apscheduler import client, coordination, executions, overdue, run_now, util
from django_apscheduler.exceptions import (
    DeclaredJobError,
    UnrestorableJobError,
    UntrustedJobStateError,
)
from django_apscheduler.models import (
    DjangoJob,
    DjangoJobExecution,
    DjangoSchedulerInstance,
    classify_job,
)

logger = logging.getLogger("django_apscheduler.management")

#: The reasons of rows refused for their signature.
UNTRUSTED = (UntrustedJobStateError.UNSIGNED, UntrustedJobStateError.MISMATCH)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> int:
    """Seconds from ``"3600"``, ``"90m"``, ``"12h"``, ``"7d"`` or ``"2w"``."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 3600, 90m, 12h, 7d, 2w)")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def _hostname() -> str:
    """This machine's name as scheduler instances record it in ``DjangoSchedulerInstance.host``."""
    return socket.gethostname()[:255]


class Command(BaseCommand):
    help = (
        "Lists, runs, pauses, resumes and removes stored jobs; shows and prunes the log of "
        "runs; checks health."
    )

    #: Set by ``run`` when runs were still going at its timeout: the process
    #: must then exit without waiting for their threads (see run_from_argv).
    _abandoned_runs = False
    #: True when run from the command line (run_from_argv), not through call_command.
    _from_cli = False

    def add_arguments(self, parser: Any) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

        def action(name: str, text: str) -> Any:
            sub = actions.add_parser(name, help=text, description=text)
            self._add_standard_options(sub)
            return sub

        listing = action("list", "List the jobs: next to run first, paused and finished last.")
        listing.add_argument("--format", choices=["table", "json"], default="table")
        run = action("run", "Run jobs once, now, in this process.")
        run.add_argument("job_ids", nargs="+", metavar="JOB_ID")
        run.add_argument(
            "--timeout",
            type=float,
            default=None,
            help="Seconds to wait for the runs; runs still going then are cut off when the "
            "command exits, and logged as Interrupted (default: wait until they end).",
        )
        for name, text in (
            ("pause", "Pause a job."),
            ("resume", "Resume a paused job."),
            ("remove", "Remove a job and its log."),
        ):
            action(name, text).add_argument("job_id", metavar="JOB_ID")
        history = action(
            "history",
            "Show the latest recorded runs (of JOB_ID only, if given), newest first.",
        )
        history.add_argument("job_id", nargs="?", default=None, metavar="JOB_ID")
        history.add_argument(
            "--failed", action="store_true", help="Only runs that did not succeed."
        )
        history.add_argument(
            "--limit", type=int, default=20, help="Show at most this many runs (default 20)."
        )
        history.add_argument(
            "--full",
            action="store_true",
            help="Show each failed run's whole exception and traceback.",
        )
        history.add_argument("--format", choices=["table", "json"], default="table")
        prune = action("prune", "Delete logged runs older than --max-age.")
        prune.add_argument("--max-age", required=True, help="e.g. 604800, 12h, 7d, 2w")
        sign = action(
            "sign",
            "Sign stored job states with the current SECRET_KEY, as they are (trusted rows "
            "restored from another environment); prints each row signed.",
        )
        which = sign.add_mutually_exclusive_group(required=True)
        which.add_argument("--all", action="store_true", help="Every stored job.")
        which.add_argument(
            "--old-keys",
            action="store_true",
            help="Only the jobs signed with a SECRET_KEY_FALLBACKS key (key rotation); rows "
            "that no key verifies stay unsigned.",
        )
        which.add_argument("job_ids", nargs="*", default=[], metavar="JOB_ID")
        health = action(
            "health",
            "Liveness: exit 0 if a scheduler instance heartbeats, 1 if not. With --jobs, also "
            "exit 1 if a job is broken or overdue.",
        )
        health.add_argument("--format", choices=["text", "json"], default="text")
        health.add_argument(
            "--this-host",
            action="store_true",
            help="Only count scheduler instances running on this host (a per-pod liveness "
            "probe); by default any instance of the deployment counts.",
        )
        health.add_argument(
            "--jobs",
            action="store_true",
            help="Also check the jobs: fail if one cannot be restored (broken) or is overdue "
            "beyond its grace time (for readiness probes and alerts, not liveness).",
        )
        health.add_argument(
            "--no-instance",
            action="store_true",
            help="Do not require a live scheduler instance; only check the jobs (implies --jobs).",
        )

    def _add_standard_options(self, sub: Any) -> None:
        """Give an action the standard options Django gives every command (``--help`` lists them).

        They are on the command's parser already, but argparse hands everything
        after the action's name to the action's parser alone, which rejected
        ``health --settings=prod`` and ``list -v 2``. Their defaults are
        suppressed here, so a value given before the action is not reset by the
        action's parser.
        """
        quiet = argparse.SUPPRESS
        self.add_base_argument(
            sub,
            "--version",
            action="version",
            version=self.get_version(),
            help="Show program's version number and exit.",
        )
        self.add_base_argument(
            sub,
            "-v",
            "--verbosity",
            type=int,
            choices=[0, 1, 2, 3],
            default=quiet,
            help="Verbosity level; 0=minimal output, 1=normal output, 2=verbose output, "
            "3=very verbose output",
        )
        self.add_base_argument(
            sub, "--settings", default=quiet, help="The Python path to a settings module."
        )
        self.add_base_argument(
            sub, "--pythonpath", default=quiet, help="A directory to add to the Python path."
        )
        for flag, text in (
            ("--traceback", "Display a full stack trace on CommandError exceptions."),
            ("--no-color", "Don't colorize the command output."),
            ("--force-color", "Force colorization of the command output."),
        ):
            self.add_base_argument(sub, flag, action="store_true", default=quiet, help=text)
        if self.requires_system_checks:
            sub.add_argument(
                "--skip-checks", action="store_true", default=quiet, help="Skip system checks."
            )

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        getattr(self, f"do_{action}")(**options)

    def run_from_argv(self, argv: list[str]) -> None:
        """Run from the command line; exit at once if ``run --timeout`` left runs going.

        Python cannot stop a thread, and the interpreter waits for the run's
        threads before it exits: ``run --timeout 1`` took as long as its jobs.
        Their runs are logged as Interrupted (:meth:`_interrupt`), then the
        process ends without waiting for them.
        """
        self._from_cli = True
        try:
            super().run_from_argv(argv)
        except SystemExit as exc:
            if not self._abandoned_runs:
                raise
            code = exc.code if isinstance(exc.code, int) else 1
        else:
            if not self._abandoned_runs:
                return
            code = 0
        executions.recorder.flush(timeout=5)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    # --- list ---------------------------------------------------------------------

    def do_list(self, format: str, **options: Any) -> None:
        last = DjangoJobExecution.objects.filter(job_id=OuterRef("pk")).order_by("-run_time")
        rows = DjangoJob.objects.annotate(
            last_status=Subquery(last.values("status")[:1]),
            last_run_time=Subquery(last.values("run_time")[:1]),
        ).order_by(F("next_run_time").asc(nulls_last=True), "id")  # one order on every database
        jobs = [self._describe(row) for row in rows]
        if format == "json":
            self.stdout.write(json.dumps(jobs, indent=2))
            return
        header = ["ID", "TRIGGER", "NEXT RUN", "STATE", "LAST STATUS"]
        table = [
            [
                j["id"],
                j["trigger"] or "-",
                j["next_run_time_local"] or "-",
                j["state"],
                j["last_status"] or "-",
            ]
            for j in jobs
        ]
        widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
        for line in [header, *table]:
            self.stdout.write("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())

    @staticmethod
    def _describe(row: DjangoJob) -> dict[str, Any]:
        trigger = name = func = None
        classified = row.classify()
        state = classified.name
        if classified.job is not None:
            job = classified.job
            trigger, name, func = str(job.trigger), job.name, job.func_ref
        elif classified.error is not None:
            state = f"broken ({classified.reason})"
        return {
            "id": row.id,
            "name": name,
            "func": func,
            "trigger": trigger,
            "next_run_time": row.next_run_time.isoformat() if row.next_run_time else None,
            "next_run_time_local": (
                util.get_local_dt_format(row.next_run_time) if row.next_run_time else None
            ),
            "state": state,
            "declared_in_code": bool(row.declared_in_code),
            "last_status": row.last_status,  # type: ignore[attr-defined]
            "last_run_time": row.last_run_time.isoformat() if row.last_run_time else None,  # type: ignore[attr-defined]
        }

    # --- run, pause, resume, remove -----------------------------------------------------

    def do_run(self, job_ids: list[str], timeout: float | None, **options: Any) -> None:
        if timeout is not None and not 0 <= timeout < threading.TIMEOUT_MAX:
            raise CommandError(
                f"--timeout: {timeout!r} is not a number of seconds from 0 to "
                f"{threading.TIMEOUT_MAX:g}.",
                returncode=2,
            )
        outcomes = run_now.run_jobs_now(
            job_ids, timeout=threading.TIMEOUT_MAX if timeout is None else timeout
        )
        left = [o for o in outcomes if o.status is run_now.RunStatus.TIMED_OUT]
        if left and self._from_cli:
            self._interrupt(left, timeout)
        failed = False
        for outcome in outcomes:
            if outcome.status is run_now.RunStatus.NOT_FOUND:
                self.stderr.write(f"{outcome.job_id}: no job with this id is stored.")
                failed = True
                continue
            text = f"{outcome.job_id}: {outcome.status.value}"
            if outcome.status is run_now.RunStatus.TIMED_OUT:
                text += (
                    f" (still running after --timeout {timeout:g} s; cut off when this command "
                    "exits, logged as Interrupted)"
                    if self._from_cli
                    else f" (still running after {timeout:g} s; it goes on in the background)"
                )
            if outcome.message:
                text += f" ({outcome.message})"
            # A task job's run is handed to a worker: done here once it is enqueued.
            if outcome.succeeded or outcome.status is run_now.RunStatus.HANDED_OFF:
                self.stdout.write(text)
            else:
                self.stderr.write(text)
                failed = True
        if failed:
            raise CommandError("Not every job ran successfully.", returncode=1)

    def _interrupt(self, outcomes: list[run_now.JobRunOutcome], timeout: float | None) -> None:
        """Log the runs still going at the timeout as Interrupted: this process ends them."""
        self._abandoned_runs = True
        reason = (
            f"Interrupted: `manage.py apscheduler run --timeout {timeout:g}` exited before this "
            "run finished."
        )
        ids = [o.execution_id for o in outcomes if o.execution_id is not None]
        DjangoJobExecution.objects.filter(id__in=ids).interrupt(reason)

    def _on_job(self, method: str, job_id: str, done: str) -> None:
        try:
            getattr(client, method)(job_id)
        except client.JobNotFound:
            raise CommandError(
                f"No job with the id {job_id!r} is stored. `manage.py apscheduler list` shows "
                "the ids.",
                returncode=1,
            ) from None
        except UnrestorableJobError as exc:
            raise CommandError(f"{exc} (`apscheduler remove` deletes it.)", returncode=1) from None
        except DeclaredJobError as exc:
            raise CommandError(str(exc), returncode=1) from None
        self.stdout.write(f"{job_id}: {done}.")

    def do_pause(self, job_id: str, **options: Any) -> None:
        self._on_job("pause_job", job_id, "paused")

    def do_resume(self, job_id: str, **options: Any) -> None:
        self._on_job("resume_job", job_id, "resumed")

    def do_remove(self, job_id: str, **options: Any) -> None:
        self._on_job("remove_job", job_id, "removed")

    # --- history ----------------------------------------------------------------------

    def do_history(
        self,
        job_id: str | None,
        failed: bool,
        limit: int,
        full: bool,
        format: str,
        **options: Any,
    ) -> None:
        if limit < 1:
            raise CommandError(f"--limit: {limit} is not a positive number of runs.", returncode=2)
        if job_id is not None and not (
            DjangoJob.objects.filter(id=job_id).exists()
            or DjangoJobExecution.objects.filter(job_id=job_id).exists()
        ):
            raise CommandError(
                f"No job with the id {job_id!r} is stored. `manage.py apscheduler list` shows "
                "the ids.",
                returncode=1,
            )
        runs = [
            {
                "id": run.id,
                "job_id": run.job_id,
                "run_time": run.run_time.isoformat(),
                "run_time_local": util.get_local_dt_format(run.run_time),
                "status": run.status,
                "duration": None if run.duration is None else float(run.duration),
                "instance": run.instance,
                "exception": run.exception,
                "traceback": run.traceback,
            }
            for run in DjangoJobExecution.objects.history(job_id, failed=failed, limit=limit)
        ]
        if format == "json":
            self.stdout.write(json.dumps(runs, indent=2))
            return
        if not runs:
            what = "failed runs" if failed else "runs"
            self.stdout.write(f"No {what} recorded" + (f" for {job_id}." if job_id else "."))
            return
        header = ["RUN TIME", "JOB", "STATUS", "DURATION", "EXCEPTION"]
        table = [
            [
                r["run_time_local"],
                r["job_id"],
                r["status"],
                "-" if r["duration"] is None else f"{r['duration']:.2f} s",
                (r["exception"] or "-").strip().splitlines()[0] if r["exception"] else "-",
            ]
            for r in runs
        ]
        widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
        for run, line in zip([None, *runs], [header, *table]):
            self.stdout.write("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
            if full and run is not None and (run["exception"] or run["traceback"]):
                if run["traceback"]:
                    self.stdout.write("    Traceback (most recent call last):")
                    for tb_line in run["traceback"].rstrip().splitlines():
                        self.stdout.write(f"    {tb_line}")
                for text in (run["exception"] or "").splitlines():
                    self.stdout.write(f"    {text}")

    # --- prune ------------------------------------------------------------------------

    def do_prune(self, max_age: str, **options: Any) -> None:
        try:
            seconds = duration(max_age)
        except ValueError as exc:
            raise CommandError(f"--max-age: {exc}", returncode=2) from None
        try:
            timezone.now() - timedelta(seconds=seconds)
        except OverflowError:
            oldest = (timezone.now() - datetime.min.replace(tzinfo=timezone.now().tzinfo)).days
            raise CommandError(
                f"--max-age: {max_age!r} reaches back before the year 1; give at most "
                f"{oldest // 7}w ({oldest}d).",
                returncode=2,
            ) from None
        deleted = DjangoJobExecution.objects.delete_old_job_executions(seconds)
        self.stdout.write(f"Deleted {deleted} logged runs older than {max_age}.")

    # --- sign -------------------------------------------------------------------------

    def do_sign(self, all: bool, old_keys: bool, job_ids: list[str], **options: Any) -> None:
        rows = DjangoJob.objects.all()
        if not all and not old_keys:
            known = set(DjangoJob.objects.filter(id__in=job_ids).values_list("id", flat=True))
            unknown = [job_id for job_id in dict.fromkeys(job_ids) if job_id not in known]
            if unknown:
                raise CommandError(
                    f"No job with the id {', '.join(map(repr, unknown))} is stored; nothing "
                    "signed. `manage.py apscheduler list` shows the ids.",
                    returncode=1,
                )
            rows = rows.filter(id__in=job_ids)
        signed = rows.sign(old_keys_only=old_keys)
        for job_id, was in signed:
            self.stdout.write(f"{job_id}: signed (was {was}).")
        if signed:
            logger.warning(
                "apscheduler sign: signed %d stored jobs with the current SECRET_KEY: %s",
                len(signed),
                ", ".join(job_id for job_id, _ in signed),
            )
        self.stdout.write(
            f"Signed {len(signed)} jobs; the others were signed with the current key already."
        )

    # --- health -----------------------------------------------------------------------

    def do_health(
        self, format: str, this_host: bool, jobs: bool, no_instance: bool, **options: Any
    ) -> None:
        now = timezone.now()
        lease = coordination.lease_time()
        check_jobs = jobs or no_instance
        instances = DjangoSchedulerInstance.objects.alive(now)
        if this_host:
            instances = instances.filter(host=_hostname())
        alive = list(instances.order_by("id").values_list("id", flat=True))
        problems = []
        if not alive and not no_instance:
            where = f" on this host ({_hostname()})" if this_host else ""
            problems.append(
                f"no scheduler instance{where} has heartbeated in the last "
                f"{lease.total_seconds():g} s (APSCHEDULER_LEASE_TIME); is a "
                "scheduler running (`manage.py runapscheduler` or APSCHEDULER_AUTOSTART)? Its log "
                "says why it stopped"
            )
        broken: list[dict[str, Any]] | None = None
        overdue: list[dict[str, Any]] | None = None
        if check_jobs:
            broken, overdue = self._job_problems(now, lease)
            if broken:
                problems.append(
                    "cannot be restored (broken): "
                    + ", ".join(f"{b['id']} ({b['reason']})" for b in broken)
                    + "; fix the code or remove them (`manage.py apscheduler remove JOB_ID`)"
                    + (
                        "; sign trusted rows that are unsigned or mismatched "
                        "(`manage.py apscheduler sign JOB_ID`, see docs/security.md)"
                        if any(b["reason"] in UNTRUSTED for b in broken)
                        else ""
                    )
                )
            if overdue:
                problems.append(
                    "overdue beyond their grace time: "
                    + ", ".join(f"{o['id']} ({o['late_seconds']} s late)" for o in overdue)
                )
        if format == "json":
            report = {
                "healthy": not problems,
                "checks": ["instances"] * (not no_instance) + ["jobs"] * check_jobs,
                "instances": alive,
                "broken": broken,
                "overdue": overdue,
                "problems": problems,
            }
            self.stdout.write(json.dumps(report, indent=2))
        elif not problems:
            text = "OK: "
            if not no_instance:
                text += f"{len(alive)} scheduler instances alive"
                text += " on this host" if this_host else ""
                text += "; " if check_jobs else "."
            if check_jobs:
                text += "no job broken or overdue."
            self.stdout.write(text)
        if problems:
            raise CommandError("Unhealthy: " + "; ".join(problems), returncode=1)

    @staticmethod
    def _job_problems(
        now: datetime, lease: timedelta
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The jobs that cannot be restored here, and those overdue (see ``overdue``).

        A job is overdue when it should have started longer ago than its
        allowance: ``APSCHEDULER_OVERDUE_AFTER``, by default its grace time plus
        the time a scheduler may take to notice it (lease + poll). A broken job
        is reported as broken only (its next run time never moves).
        """
        broken = []
        rows = (
            DjangoJob.objects.unfinished()
            .order_by("id")
            .values_list("id", "job_state", "job_signature")
        )
        for job_id, state, signature in rows.iterator():
            classified = classify_job(job_id, state, signature, None)
            if classified.error is not None:
                broken.append({"id": job_id, "reason": classified.reason})
        late = [
            {"id": job.job_id, "late_seconds": round(job.late.total_seconds(), 1)}
            for job in overdue.find_overdue(now)
        ]
        return broken, sorted(late, key=lambda o: o["id"])
