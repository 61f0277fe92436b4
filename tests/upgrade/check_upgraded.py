"""Takes over the migrated 0.7.0 database with our django_apscheduler.

Runs in our environment (``DJANGO_SETTINGS_MODULE=upgrade_settings``) after
``django-admin migrate``. It records the state the upgrade left, loads every
job with our DjangoJobStore, runs each one on a real BackgroundScheduler
(first the active jobs, then the paused one) and records the execution log
afterwards. Writes everything as JSON to the file named by the first
argument; ``tests/test_upgrade_070.py`` makes the assertions.

Usage: python check_upgraded.py OUTPUT.json
"""

import io
import json
import os
import sys
import time
import traceback
from datetime import datetime, timezone

import django

#: Bound on each wait for runs; generous on purpose, it is not a speed check.
WAIT_TIMEOUT = 60.0

FINAL_STATUSES = ("Executed", "Error!")


def wait_until(what, predicate, timeout=WAIT_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def run_command(*args, **options):
    """A management command's exit code and output (commands exit via SystemExit)."""
    from django.core.management import call_command

    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=err, no_color=True, **options)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main(output):
    result = {}
    try:
        check(result)
    except BaseException:
        result["error"] = traceback.format_exc()
        raise
    finally:
        # Written even after a failure: the test shows it as a diagnostic.
        with open(output, "w") as f:
            json.dump(result, f, indent=1)


def check(result):
    django.setup()

    import upgrade_common
    import upgrade_jobs
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    import django_apscheduler
    from django_apscheduler import executions
    from django_apscheduler.jobstores import DjangoJobStore

    markers = os.environ["DJA_UPGRADE_MARKERS"]
    result.update(
        {
            "django_apscheduler": {
                "version": django_apscheduler.__version__,
                "file": django_apscheduler.__file__,
            },
            # The state right after `migrate`, before anything else touched it.
            "migrations": upgrade_common.recorded_migrations(),
            "schema": upgrade_common.schema_snapshot(),
            "executions_before": upgrade_common.execution_rows(),
            "showmigrations": run_command("showmigrations", "django_apscheduler"),
            "migrate_check": run_command("migrate", check_unapplied=True),
            "makemigrations_check": run_command("makemigrations", check=True, dry_run=True),
        }
    )
    old_ids = {row["id"] for row in result["executions_before"]}
    result["signatures_after_migrate"] = signatures()

    # Our models read every old row (legacy statuses, decimals, texts included).
    from django_apscheduler.models import DjangoJob, DjangoJobExecution

    result["orm_jobs"] = sorted(str(job) for job in DjangoJob.objects.all())
    result["orm_executions"] = [
        [e.id, e.job_id, e.status, upgrade_common.plain(e.duration), str(e)]
        for e in DjangoJobExecution.objects.order_by("id")
    ]

    def new_final_runs(job_ids):
        """True once every job in job_ids has a new execution with a final status."""
        executions.recorder.flush(5)
        done = {
            row["job_id"]
            for row in upgrade_common.execution_rows()
            if row["id"] not in old_ids and row["status"] in FINAL_STATUSES
        }
        return set(job_ids) <= done

    def ran(job_ids):
        return set(job_ids) <= set(upgrade_jobs.read_markers(markers))

    scheduler = BackgroundScheduler(
        jobstores={"default": DjangoJobStore()},
        executors={"default": ThreadPoolExecutor(4)},
        timezone="UTC",
    )
    # Paused: load the jobs first, nothing runs until resume().
    scheduler.start(paused=True)
    try:
        loaded = scheduler.get_jobs()
        result["loaded"] = [upgrade_common.describe_job(job) for job in loaded]
        result["looked_up"] = {
            job.id: upgrade_common.describe_job(scheduler.get_job(job.id)) for job in loaded
        }
        active = [job.id for job in loaded if job.next_run_time is not None]
        paused = [job.id for job in loaded if job.next_run_time is None]
        result["active"], result["paused"] = active, paused

        # Phase 1: every active job becomes due now; the paused ones stay paused.
        now = datetime.now(timezone.utc)
        for job_id in active:
            scheduler.modify_job(job_id, next_run_time=now)
        scheduler.resume()
        wait_until(f"markers of {active}", lambda: ran(active))
        wait_until(f"new executions of {active}", lambda: new_final_runs(active))
        result["phase1"] = {
            "markers": upgrade_jobs.read_markers(markers),
            "paused_next_run_times": {
                job_id: upgrade_common.plain(scheduler.get_job(job_id).next_run_time)
                for job_id in paused
            },
            "job_rows": upgrade_common.job_rows(),
        }

        # Phase 2: the paused jobs, resumed by making them due now.
        now = datetime.now(timezone.utc)
        for job_id in paused:
            scheduler.modify_job(job_id, next_run_time=now)
        wait_until(f"markers of {paused}", lambda: ran(paused))
        wait_until(f"new executions of {paused}", lambda: new_final_runs(paused))
    finally:
        scheduler.shutdown(wait=True)
        executions.recorder.flush(30)

    result["markers"] = upgrade_jobs.read_markers(markers)
    result["executions_after"] = upgrade_common.execution_rows()
    result["job_rows_after"] = upgrade_common.job_rows()
    result["signatures_after"] = signatures()


def signatures():
    """Each job row's signature check: "ok", "unsigned" or "signature mismatch" (nothing unpickled)."""
    from django_apscheduler import signing
    from django_apscheduler.models import DjangoJob

    rows = DjangoJob.objects.order_by("id").values_list("id", "job_state", "job_signature")
    return {
        job_id: signing.check(job_id, state, signature).problem or "ok"
        for job_id, state, signature in rows
    }


if __name__ == "__main__":
    main(sys.argv[1])
