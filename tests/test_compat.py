"""The public surface of django-apscheduler 0.7.0 that users' code and databases rely on."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from django.apps import apps
from django.core.management import call_command
from django.db import InterfaceError, OperationalError, connection
from django.test.utils import override_settings

from django_apscheduler import util
from django_apscheduler.jobstores import (
    DjangoJobStore,
    DjangoMemoryJobStore,
    DjangoResultStoreMixin,
    register_events,
    register_job,
)
from django_apscheduler.models import DjangoJob, DjangoJobExecution, DjangoJobExecutionManager
from tests import jobs
from tests.helpers import OLD_MIGRATIONS, SQUASHED


def test_app_identity():
    config = apps.get_app_config("django_apscheduler")
    assert config.name == "django_apscheduler"
    assert config.verbose_name == "Django APScheduler"
    assert DjangoJob._meta.db_table == "django_apscheduler_djangojob"
    assert DjangoJobExecution._meta.db_table == "django_apscheduler_djangojobexecution"
    assert DjangoJob._meta.ordering == ("next_run_time",)
    assert DjangoJobExecution._meta.ordering == ("-run_time",)
    assert [c.name for c in DjangoJobExecution._meta.constraints] == ["unique_job_executions"]


def test_status_values():
    assert DjangoJobExecution.SENT == "Started execution"
    assert DjangoJobExecution.SUCCESS == "Executed"
    assert DjangoJobExecution.MISSED == "Missed!"
    assert DjangoJobExecution.MAX_INSTANCES == "Max instances!"
    assert DjangoJobExecution.ERROR == "Error!"
    # 0.7.0's three choices, in its order; "Interrupted" (runs of a scheduler
    # process that died) is new in 0.8.0 and comes after them.
    assert DjangoJobExecution.INTERRUPTED == "Interrupted"
    assert DjangoJobExecution.STATUS_CHOICES == [
        ("Started execution", "Started execution"),
        ("Error!", "Error!"),
        ("Executed", "Executed"),
        ("Interrupted", "Interrupted"),
        # Runs handed to task workers (issue 13): "Queued", then "Lost" if never ended.
        ("Queued", "Queued"),
        ("Lost", "Lost"),
    ]
    assert isinstance(DjangoJobExecution.objects, DjangoJobExecutionManager)


def test_help_texts_match_070():
    field = DjangoJobExecution._meta.get_field
    assert str(DjangoJob._meta.get_field("id").help_text) == "Unique id for this job."
    assert str(field("exception").help_text) == (
        "Details of exception that occurred during job execution (if any)."
    )
    assert str(field("finished").help_text) == "Timestamp at which this job was finished."


@pytest.mark.django_db
def test_no_missing_migrations():
    out = io.StringIO()
    call_command("makemigrations", "django_apscheduler", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db
def test_squashed_migration_stands_for_the_nine_070_migrations():
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(connection)
    squashed = loader.disk_migrations[("django_apscheduler", SQUASHED)]
    assert [name for _, name in squashed.replaces] == OLD_MIGRATIONS
    # A migrated test database records the nine names too, as 0.7.0 databases have them.
    applied = {name for app, name in loader.applied_migrations if app == "django_apscheduler"}
    assert {name for _, name in squashed.replaces} <= applied


@pytest.mark.django_db
def test_model_strings():
    job = DjangoJob.objects.create(
        id="j", next_run_time=datetime(2030, 1, 1, tzinfo=timezone.utc), job_state=b"x"
    )
    assert str(job).startswith("j (next run at: ")
    assert str(DjangoJob(id="p", next_run_time=None, job_state=b"x")) == "p (paused)"
    assert str(DjangoJob(id="f", next_run_time=None, job_state=b"")) == "f (finished)"
    execution = DjangoJobExecution.objects.create(
        job=job, run_time=job.next_run_time, status=DjangoJobExecution.SUCCESS
    )
    assert str(execution) == f"{execution.id}: job 'j' (Executed)"


def test_mixin_and_stores():
    assert issubclass(DjangoJobStore, DjangoResultStoreMixin)
    assert issubclass(DjangoMemoryJobStore, DjangoResultStoreMixin)
    assert DjangoResultStoreMixin.lock is None or hasattr(DjangoResultStoreMixin.lock, "acquire")
    assert DjangoJobStore().pickle_protocol == __import__("pickle").HIGHEST_PROTOCOL


def test_register_events_is_a_deprecated_no_op():
    with pytest.warns(
        DeprecationWarning, match="'register_events' is deprecated since version 0.4.0"
    ):
        register_events(BackgroundScheduler())


def test_register_job_adds_the_function_with_a_derived_id():
    scheduler = BackgroundScheduler()
    decorator = register_job(scheduler, "interval", seconds=5)
    with pytest.warns(DeprecationWarning, match="0.5.0"):
        returned = decorator(jobs.noop)
    with pytest.warns(DeprecationWarning):
        decorator(jobs.record)
    assert returned is jobs.noop
    # The same decorator object gives each function its own id (0.7.0 reused the first).
    assert sorted(job.id for job in scheduler.get_jobs()) == [
        "tests.jobs.noop",
        "tests.jobs.record",
    ]


# --- util ----------------------------------------------------------------------------


def test_datetime_helpers():
    aware = datetime(2030, 1, 1, 12, tzinfo=timezone.utc)
    assert util.get_django_internal_datetime(None) is None
    with override_settings(USE_TZ=True, TIME_ZONE="Europe/Berlin"):
        assert util.get_django_internal_datetime(aware) is aware
        made = util.get_django_internal_datetime(datetime(2030, 1, 1, 13))
        assert made == aware
    with override_settings(USE_TZ=False, TIME_ZONE="Europe/Berlin"):
        assert util.get_django_internal_datetime(aware) == datetime(2030, 1, 1, 13)
    scheduler = BackgroundScheduler(timezone="UTC")
    assert util.get_apscheduler_datetime(datetime(2030, 1, 1, 12), scheduler) == aware
    assert util.get_apscheduler_datetime(None, scheduler) is None


def test_datetime_format_setting():
    dt = datetime(2030, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    with override_settings(APSCHEDULER_DATETIME_FORMAT="Y-m-d H:i:s", TIME_ZONE="UTC"):
        assert util.get_dt_format() == "Y-m-d H:i:s"
        assert util.get_local_dt_format(dt) == "2030-03-04 05:06:07"
    assert util.get_dt_format() == "N j, Y, f:s a"


@pytest.mark.django_db(transaction=True)
def test_retry_on_db_operational_error_retries_once():
    calls = []

    @util.retry_on_db_operational_error
    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("gone away")
        return "ok"

    assert flaky() == "ok" and len(calls) == 2

    @util.retry_on_db_operational_error
    def always():
        raise InterfaceError("closed")

    with pytest.raises(InterfaceError):
        always()
    assert always.__name__ == "always"


def test_close_old_connections_decorator_wraps():
    seen = []

    @util.close_old_connections
    def job(x):
        seen.append(x)
        return x * 2

    assert job(2) == 4 and seen == [2] and job.__name__ == "job"
