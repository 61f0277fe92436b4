"""``manage.py apscheduler``: look at and operate the stored jobs.

::

    manage.py apscheduler list [--format json]
    manage.py apscheduler run JOB_ID [JOB_ID ...] [--timeout SECONDS]
    manage.py apscheduler pause|resume|remove JOB_ID
    manage.py apscheduler prune --max-age 7d
    manage.py apscheduler health [--format json]

``health`` exits 0 when a scheduler instance has a fresh heartbeat and no
job is overdue beyond its grace time, and 1 otherwise: a container liveness
or readiness probe. Unknown job ids are reported by name, with exit code 1.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from django_apscheduler import client, conf, coordination, run_now, util
from django_apscheduler.exceptions import DeclaredJobError, UnrestorableJobError
from django_apscheduler.jobstores import restore_job
from django_apscheduler.models import DjangoJob, DjangoJobExecution, DjangoSchedulerInstance

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> int:
    """Seconds from ``"3600"``, ``"90m"``, ``"12h"``, ``"7d"`` or ``"2w"``."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 3600, 90m, 12h, 7d, 2w)")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


class Command(BaseCommand):
    help = "Lists, runs, pauses, resumes and removes stored jobs; prunes the log; checks health."

    def add_arguments(self, parser: Any) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        listing = actions.add_parser("list", help="List the jobs.")
        listing.add_argument("--format", choices=["table", "json"], default="table")
        run = actions.add_parser("run", help="Run jobs once, now, in this process.")
        run.add_argument("job_ids", nargs="+", metavar="JOB_ID")
        run.add_argument("--timeout", type=float, default=None, help="Seconds to wait.")
        for name, text in (
            ("pause", "Pause a job."),
            ("resume", "Resume a paused job."),
            ("remove", "Remove a job and its log."),
        ):
            action = actions.add_parser(name, help=text)
            action.add_argument("job_id", metavar="JOB_ID")
        prune = actions.add_parser("prune", help="Delete logged runs older than --max-age.")
        prune.add_argument("--max-age", required=True, help="e.g. 604800, 12h, 7d, 2w")
        health = actions.add_parser("health", help="Exit 0 if healthy, 1 if not.")
        health.add_argument("--format", choices=["text", "json"], default="text")
        health.add_argument(
            "--no-instance",
            action="store_true",
            help="Do not require a live scheduler instance (only check for overdue jobs).",
        )

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        getattr(self, f"do_{action}")(**options)

    # --- list ---------------------------------------------------------------------

    def do_list(self, format: str, **options: Any) -> None:
        last = DjangoJobExecution.objects.filter(job_id=OuterRef("pk")).order_by("-run_time")
        rows = DjangoJob.objects.annotate(
            last_status=Subquery(last.values("status")[:1]),
            last_run_time=Subquery(last.values("run_time")[:1]),
        ).order_by("next_run_time", "id")
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
        if row.is_finished:
            state = "finished"
        else:
            try:
                job = restore_job(row.job_state)
                trigger, name, func = str(job.trigger), job.name, job.func_ref
                state = "scheduled" if row.next_run_time else "paused"
            except Exception as exc:
                state = f"broken ({type(exc).__name__}: {exc})"
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
        outcomes = run_now.run_jobs_now(job_ids, timeout=timeout)
        failed = False
        for outcome in outcomes:
            if outcome.status is run_now.RunStatus.NOT_FOUND:
                self.stderr.write(f"{outcome.job_id}: no job with this id is stored.")
                failed = True
                continue
            text = f"{outcome.job_id}: {outcome.status.value}"
            if outcome.message:
                text += f" ({outcome.message})"
            if outcome.succeeded:
                self.stdout.write(text)
            else:
                self.stderr.write(text)
                failed = True
        if failed:
            raise CommandError("Not every job ran successfully.", returncode=1)

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

    # --- prune ------------------------------------------------------------------------

    def do_prune(self, max_age: str, **options: Any) -> None:
        try:
            seconds = duration(max_age)
        except ValueError as exc:
            raise CommandError(f"--max-age: {exc}", returncode=2) from None
        deleted = DjangoJobExecution.objects.delete_old_job_executions(seconds)
        self.stdout.write(f"Deleted {deleted} logged runs older than {max_age}.")

    # --- health -----------------------------------------------------------------------

    def do_health(self, format: str, no_instance: bool, **options: Any) -> None:
        now = timezone.now()
        lease = coordination.lease_time()
        alive = list(
            DjangoSchedulerInstance.objects.filter(last_heartbeat__gte=now - lease).values_list(
                "id", flat=True
            )
        )
        # A job is overdue when it should have started longer ago than its grace
        # time, plus the time a scheduler may take to notice it (lease + poll).
        slack = lease + timedelta(seconds=float(conf.get("APSCHEDULER_POLL_INTERVAL")))
        overdue = []
        candidates = DjangoJob.objects.filter(next_run_time__lt=now - slack).values_list(
            "id", "next_run_time", "job_state"
        )
        for job_id, next_run_time, state in candidates:
            try:
                grace = restore_job(state).misfire_grace_time or 0
            except Exception:
                grace = 0
            late = now - next_run_time
            if late > slack + timedelta(seconds=grace):
                overdue.append({"id": job_id, "late_seconds": round(late.total_seconds(), 1)})
        problems = []
        if not alive and not no_instance:
            problems.append(
                f"no scheduler instance has heartbeated in the last {lease.total_seconds():g} s"
            )
        if overdue:
            problems.append(
                "overdue beyond their grace time: "
                + ", ".join(f"{o['id']} ({o['late_seconds']} s late)" for o in overdue)
            )
        if format == "json":
            report = {
                "healthy": not problems,
                "instances": alive,
                "overdue": overdue,
                "problems": problems,
            }
            self.stdout.write(json.dumps(report, indent=2))
        elif not problems:
            self.stdout.write(f"OK: {len(alive)} scheduler instances alive, no job overdue.")
        if problems:
            raise CommandError("Unhealthy: " + "; ".join(problems), returncode=1)
