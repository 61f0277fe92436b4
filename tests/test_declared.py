"""Declared jobs, the runner, ``--burst`` and autostart, in this process (the quick suite).

The same behaviour through real processes is in ``test_runner.py`` (slow).
Declarations are registered by calling ``scheduled_job`` in the test; the
``registry`` fixture gives each test an empty registry and restores it after.

Names this branch added to the library are looked up on their modules inside
the tests (``exceptions.DeclaredJobError``), so that run against the code
before the fix each test fails on its own assertion instead of the whole
module failing to import.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from django_apscheduler import client, declared, exceptions, executions, runner, scheduled_job
from django_apscheduler.management.commands import runapscheduler
from django_apscheduler.models import DjangoJob, DjangoJobExecution, DjangoSchedulerInstance
from tests import jobs
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def registry():
    """An empty registry of declarations for the test; the previous one is restored after."""
    saved = dict(declared._registry)
    declared._registry.clear()
    yield declared._registry
    declared._registry.clear()
    declared._registry.update(saved)


@pytest.fixture
def runners():
    """Runners started by the test; stopped after it."""
    started: list[runner.Runner] = []
    yield started
    for one in started:
        one.stop(timeout=5)
    executions.recorder.flush(timeout=30)


@pytest.fixture(autouse=True)
def _keep_logger_levels():
    """runapscheduler -v N sets the app's logger levels; put them back after each test."""
    names = ["django_apscheduler", "apscheduler"]
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def declare(func, trigger, *, id, **kwargs):
    return scheduled_job(trigger, id=id, **kwargs)(func)


def sync() -> declared.SyncReport:
    """A start-up sync through the client's writing scheduler (started paused)."""
    return declared.sync(client.scheduler())


def start_runner(runners, **kwargs) -> runner.Runner:
    one = runner.Runner()
    runners.append(one)
    one.start(**kwargs)
    return one


def burst() -> list[str]:
    """``runapscheduler --burst`` in this process; returns what it printed."""
    printed: list[str] = []
    assert runner.run_until_stopped(burst=True, write=printed.append) == 0
    executions.recorder.flush(timeout=30)
    return printed


def stored_time(job_id):
    return DjangoJob.objects.get(id=job_id).next_run_time


def set_time(job_id, when):
    """Move a stored job's next run time (column and state) as a scheduler would have."""
    client.modify_job(job_id, next_run_time=when)


def runs(job_id):
    return list(
        DjangoJobExecution.objects.filter(job_id=job_id)
        .order_by("run_time")
        .values_list("status", "run_time")
    )


def add_instance(instance_id, declared_ids, *, heartbeat_age=timedelta(0)):
    """Another scheduler instance (another release's process) as its row shows it.

    ``declared_ids``: a dict {id: fingerprint} as is, or a list of ids declared like
    the current registry declares them (another definition for ids it does not have).
    """
    if isinstance(declared_ids, list):
        declared_ids = {
            job_id: (
                declared._registry[job_id].fingerprint
                if job_id in declared._registry
                else "another-definition"
            )
            for job_id in declared_ids
        }
    now = timezone.now()
    DjangoSchedulerInstance.objects.create(
        id=instance_id,
        host="elsewhere",
        pid=1,
        started=now,
        last_heartbeat=now - heartbeat_age,
        declared_ids=declared_ids,
    )


# --- #9.16: every start, --burst included, runs what is due ----------------------------


def test_burst_runs_due_declared_jobs_and_logs_the_ones_past_their_grace_time(registry):
    """A cron deployment: the declared jobs due before the burst run; one past grace is Missed!.

    The start-up sync used to replace their stored rows (a past time and no live
    scheduler), moving them to their next fire: nothing ran and nothing was logged.
    """
    declare(jobs.record, "cron", id="daily", hour=3, minute=0, args=["cron"])
    declare(jobs.record, "interval", id="every-20s", seconds=20, args=["interval"])
    declare(jobs.record, "interval", id="hourly", hours=1, args=["late"])  # grace 30 s
    sync()
    now = timezone.now().replace(microsecond=0)
    due, late = now - timedelta(seconds=4), now - timedelta(minutes=10)
    set_time("daily", due)
    set_time("every-20s", due)
    set_time("hourly", late)

    burst()

    assert sorted(tag for tag, _ in jobs.calls) == ["cron", "interval"]
    assert runs("daily") == [(DjangoJobExecution.SUCCESS, due)]
    assert runs("every-20s") == [(DjangoJobExecution.SUCCESS, due)]
    assert runs("hourly") == [(DjangoJobExecution.MISSED, late)]
    assert stored_time("every-20s") == due + timedelta(seconds=20)
    assert stored_time("daily") > now and stored_time("hourly") > now


def test_a_start_keeps_a_due_time_of_a_job_added_at_run_time(registry, runners):
    """The 0.7.0 pattern (re-add with replace_existing, then start) runs what is due too."""
    client.add_job(jobs.record, "interval", hours=1, id="re-added", args=["re-added"])
    due = timezone.now().replace(microsecond=0) - timedelta(seconds=3)
    set_time("re-added", due)
    scheduler = client.scheduler()
    scheduler.add_job(
        jobs.record, "interval", hours=1, id="re-added", args=["re-added"], replace_existing=True
    )
    assert stored_time("re-added") == due
    start_runner(runners)
    wait_until(lambda: runs("re-added"))
    wait_until(lambda: runs("re-added")[0][0] == DjangoJobExecution.SUCCESS)
    assert runs("re-added") == [(DjangoJobExecution.SUCCESS, due)]


def test_a_declared_one_shot_job_that_has_run_is_not_run_again_at_the_next_start(registry):
    """A restart within the grace time of a declared date job used to run it a second time."""
    run_date = timezone.now().replace(microsecond=0) - timedelta(seconds=3)
    declare(jobs.record, "date", id="once", run_date=run_date, args=["once"])
    burst()
    assert [tag for tag, _ in jobs.calls] == ["once"]
    assert DjangoJob.objects.get(id="once").is_finished

    burst()  # the next start, still within the job's 30 s grace time

    assert [tag for tag, _ in jobs.calls] == ["once"]
    assert runs("once") == [(DjangoJobExecution.SUCCESS, run_date)]
    assert DjangoJob.objects.get(id="once").is_finished

    later = timezone.now().replace(microsecond=0) + timedelta(hours=1)
    declare(jobs.record, "date", id="once", run_date=later, args=["once"])
    sync()  # a new run date ahead: the job is scheduled again
    assert stored_time("once") == later


# --- #9.17b: run_job_now with no scheduler alive -------------------------------------------


def test_run_job_now_without_a_scheduler_warns_and_the_next_start_runs_it(registry, caplog):
    """The request is kept until a scheduler starts, and the call says that none is alive."""
    declare(jobs.record, "cron", id="nightly", hour=3, minute=0, args=["nightly"])
    sync()
    with caplog.at_level(logging.WARNING, logger="django_apscheduler"):
        client.run_job_now("nightly")
    assert "no scheduler instance is alive" in caplog.text
    assert "misfire_grace_time of 30" in caplog.text
    requested = stored_time("nightly")

    burst()  # the next scheduler to start: a cron-driven --burst

    assert [tag for tag, _ in jobs.calls] == ["nightly"]
    assert runs("nightly") == [(DjangoJobExecution.SUCCESS, requested)]


def test_run_job_now_with_a_live_scheduler_does_not_warn(caplog):
    client.add_job(jobs.noop, "interval", hours=1, id="soon")
    add_instance("live", None)
    with caplog.at_level(logging.WARNING, logger="django_apscheduler"):
        client.run_job_now("soon")
    assert "no scheduler instance" not in caplog.text
    assert stored_time("soon") <= timezone.now()


# --- #9.5: pauses survive starts; other releases' jobs survive syncs -------------------------


def test_a_paused_declared_job_stays_paused_across_starts_and_changed_declarations(
    registry, runners
):
    """An operator's pause survives every start (autostart: every worker spawn) and deploy."""
    declare(jobs.record, "interval", id="paused-one", minutes=10)
    sync()
    client.pause_job("paused-one")

    start_runner(runners).stop(timeout=5)  # a worker spawns with the same code
    assert stored_time("paused-one") is None

    declare(jobs.record, "interval", id="paused-one", minutes=20)  # the next release
    start_runner(runners).stop(timeout=5)
    job = client.get_job("paused-one")
    assert job.next_run_time is None and stored_time("paused-one") is None
    assert job.trigger.interval == timedelta(minutes=20)  # the new definition is stored

    assert client.resume_job("paused-one").next_run_time is not None  # resuming still works


def test_sync_keeps_the_jobs_a_live_instance_of_another_release_declares(registry):
    """Rolling deploy: the new release's sync keeps what live old-release processes declare."""
    declare(jobs.noop, "interval", id="both", hours=1)
    declare(jobs.noop, "interval", id="old-only", hours=1)
    sync()  # the old release
    DjangoJobExecution.objects.create(
        job_id="old-only", status=DjangoJobExecution.SUCCESS, run_time=timezone.now()
    )
    add_instance("old-release-worker", ["both", "old-only"])
    add_instance("own-scheduler-of-the-site", None)  # declares nothing
    del registry["old-only"]  # the new release

    report = sync()

    assert report.removed == [] and report.kept == ["old-only"]
    assert DjangoJob.objects.filter(id="old-only", declared_in_code=True).exists()
    assert DjangoJobExecution.objects.filter(job_id="old-only").exists()  # history kept

    # The old release's last process is gone (its heartbeat is stale): the job goes.
    DjangoSchedulerInstance.objects.filter(id="old-release-worker").update(
        last_heartbeat=timezone.now() - timedelta(hours=1)
    )
    removed, kept = declared.remove_undeclared(client.scheduler(), ["both"])
    assert (removed, kept) == (["old-only"], [])
    assert set(DjangoJob.objects.values_list("id", flat=True)) == {"both"}


def test_the_runner_records_its_declarations_and_removes_undeclared_jobs_later(
    registry, runners, monkeypatch
):
    """The runner registers its declared ids before syncing, and re-checks removals periodically."""
    assert runner.recheck_interval() == 30  # three lease times
    monkeypatch.setattr(runner, "recheck_interval", lambda: 0.3)
    declare(jobs.noop, "interval", id="gone-in-new-release", hours=1)
    sync()
    del registry["gone-in-new-release"]
    declare(jobs.noop, "interval", id="mine", hours=1)
    add_instance("old-release", ["gone-in-new-release"])

    started = start_runner(runners)
    assert started.scheduler.get_job("django_apscheduler.recheck_declared", runner.INTERNAL_STORE)

    instance = DjangoSchedulerInstance.objects.get(id=started.store._coordinator.instance_id)
    assert instance.declared_ids == {"mine": registry["mine"].fingerprint}
    assert DjangoJob.objects.filter(id="gone-in-new-release").exists()  # old release alive
    DjangoSchedulerInstance.objects.filter(id="old-release").delete()  # it stopped
    wait_until(lambda: not DjangoJob.objects.filter(id="gone-in-new-release").exists())
    assert set(DjangoJob.objects.values_list("id", flat=True)) == {"mine"}


def test_a_declaration_another_live_release_declares_differently_waits_for_it(
    registry, runners, monkeypatch
):
    """Two releases at once do not rewrite a job in turn at each start; the new one wins later.

    v1 declares "shared" every 10 minutes, v2 every 20. While a v1 process lives, a v2
    start leaves v1's stored definition (and its schedule) alone; once v1 is gone, the
    v2 runner's periodic re-check writes its own.
    """
    monkeypatch.setattr(runner, "recheck_interval", lambda: 0.3)
    declare(jobs.noop, "interval", id="shared", minutes=10)
    v1_fingerprint = registry["shared"].fingerprint
    sync()  # v1
    first = stored_time("shared")
    add_instance("v1-worker", {"shared": v1_fingerprint})
    declare(jobs.noop, "interval", id="shared", minutes=20)  # v2
    assert registry["shared"].fingerprint != v1_fingerprint

    report = sync()
    assert report.contested == ["shared"]
    assert client.get_job("shared").trigger.interval == timedelta(minutes=10)
    assert stored_time("shared") == first

    started = start_runner(runners)  # a v2 process that keeps running
    assert started._contested == {"shared"}
    assert client.get_job("shared").trigger.interval == timedelta(minutes=10)
    DjangoSchedulerInstance.objects.filter(id="v1-worker").delete()  # v1 is gone
    wait_until(lambda: client.get_job("shared").trigger.interval == timedelta(minutes=20))
    wait_until(lambda: started._contested == set())


def test_fingerprints_are_equal_for_equal_definitions_only(registry):
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    def fingerprint(*args, **kwargs):
        return declared.Declaration("x", jobs.noop, *args, **kwargs).fingerprint

    assert fingerprint("interval", {"minutes": 5}) == fingerprint("interval", {"minutes": 5})
    assert fingerprint("interval", {"minutes": 5}) != fingerprint("interval", {"minutes": 6})
    assert fingerprint("cron", {"hour": 3}) != fingerprint("cron", {"hour": 3}, {"args": [1]})
    # An interval trigger instance's start is "now + interval", different in every process.
    a, b = IntervalTrigger(minutes=5), IntervalTrigger(minutes=5)
    a.start_date = a.start_date - timedelta(seconds=1)
    assert fingerprint(a) == fingerprint(b) != fingerprint(IntervalTrigger(minutes=6))
    assert fingerprint(CronTrigger(hour=3)) == fingerprint(CronTrigger(hour=3))
    assert fingerprint(CronTrigger(hour=3)) != fingerprint(CronTrigger(hour=4))
    assert declared.Declaration("x", jobs.record, "cron").fingerprint != fingerprint("cron")


# --- #9.17a: removing a declared job by hand ---------------------------------------------


def test_removing_a_declared_job_by_hand_is_refused_while_it_is_declared(registry):
    """`apscheduler remove` and client.remove_job refuse: the next start would add it again."""
    declare(jobs.noop, "interval", id="owned", hours=1)
    sync()
    with pytest.raises(CommandError) as refused:
        call_command("apscheduler", "remove", "owned", stdout=StringIO())
    assert refused.value.returncode == 1
    assert "'owned' is declared in code (@scheduled_job on tests.jobs.noop)" in str(refused.value)
    assert "Pause it instead" in str(refused.value)
    with pytest.raises(exceptions.DeclaredJobError, match="Pause it instead"):
        client.remove_job("owned")
    assert DjangoJob.objects.filter(id="owned").exists()

    del registry["owned"]  # this code no longer declares it, a live old release does
    add_instance("old-release", ["owned"])
    with pytest.raises(exceptions.DeclaredJobError, match="old-release"):
        client.remove_job("owned")

    DjangoSchedulerInstance.objects.all().delete()  # declared nowhere any more
    out = StringIO()
    call_command("apscheduler", "remove", "owned", stdout=out)
    assert out.getvalue().strip() == "owned: removed."
    assert not DjangoJob.objects.filter(id="owned").exists()


def test_jobs_added_at_run_time_can_still_be_removed(registry):
    declare(jobs.noop, "interval", id="owned", hours=1)
    client.add_job(jobs.noop, "interval", hours=1, id="ad-hoc")
    client.remove_job("ad-hoc")
    assert not DjangoJob.objects.filter(id="ad-hoc").exists()
    with pytest.raises(client.JobNotFound):
        client.remove_job("never-stored")


# --- declared sync: ids, modules, collisions, removal ------------------------------------


def test_the_same_id_declared_by_two_functions_is_refused(registry):
    scheduled_job("interval", hours=1)(jobs.noop)
    assert list(registry) == ["tests.jobs.noop"]  # the default id: the import path
    with pytest.raises(ImproperlyConfigured) as refused:
        scheduled_job("interval", hours=1, id="tests.jobs.noop")(jobs.record)
    message = str(refused.value)
    assert "'tests.jobs.noop' is declared twice" in message
    assert "tests.jobs.noop and by tests.jobs.record" in message
    scheduled_job("interval", hours=2)(jobs.noop)  # the same function again: the last one counts
    assert registry["tests.jobs.noop"].trigger_args == {"hours": 2}


def test_a_function_not_at_module_level_is_refused(registry):
    def local() -> None:
        pass

    with pytest.raises(ImproperlyConfigured, match="must be defined at module level"):
        scheduled_job("interval", hours=1)(local)
    assert registry == {}


def test_options_and_trigger_fields_are_told_apart(registry):
    declare(jobs.record, "interval", id="opts", minutes=5, max_instances=3, args=["x"])
    declaration = registry["opts"]
    assert declaration.trigger_args == {"minutes": 5}
    assert declaration.options == {"max_instances": 3, "args": ["x"]}
    sync()
    job = client.get_job("opts")
    assert job.max_instances == 3 and job.args == ("x",)


def test_declarations_are_found_in_the_configured_module(registry, settings):
    """APSCHEDULER_JOBS_MODULE names the module looked up in every installed app."""
    for name in ("tests.declaring_custom.schedules", "tests.declaring_custom.jobs"):
        sys.modules.pop(name, None)
    settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "tests.declaring_custom"]
    settings.APSCHEDULER_JOBS_MODULE = "schedules"
    try:
        assert set(declared.discover()) == {"from-custom-module"}
        report = sync()
    finally:
        for name in ("tests.declaring_custom.schedules", "tests.declaring_custom.jobs"):
            sys.modules.pop(name, None)
    assert report.declared == ["from-custom-module"]
    assert dict(DjangoJob.objects.values_list("id", "declared_in_code")) == {
        "from-custom-module": True
    }


def test_a_job_added_at_run_time_under_a_declared_id_becomes_the_declared_job(registry, caplog):
    """The id collision is logged; the declaration wins; other run-time jobs are never touched."""
    client.add_job(jobs.noop, "interval", hours=1, id="shared")
    client.add_job(jobs.noop, "interval", hours=1, id="run-time")
    declare(jobs.record, "interval", id="shared", hours=2)
    with caplog.at_level(logging.WARNING, logger="django_apscheduler"):
        sync()
    assert "'shared' was added at run time and is now declared in code" in caplog.text
    assert "tests.jobs.record" in caplog.text
    assert dict(DjangoJob.objects.values_list("id", "declared_in_code")) == {
        "shared": True,
        "run-time": None,
    }
    assert client.get_job("shared").func is jobs.record

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="django_apscheduler"):
        sync()  # declared now: no second warning
    assert "added at run time" not in caplog.text

    registry.clear()  # the declaration is gone: its job goes, the run-time job stays
    report = sync()
    assert report.removed == ["shared"] and report.declared == []
    assert list(DjangoJob.objects.values_list("id", flat=True)) == ["run-time"]


def test_an_unchanged_declaration_keeps_its_schedule_and_a_changed_one_is_rewritten(registry):
    declare(jobs.noop, "interval", id="kept", minutes=10)
    sync()
    moved = stored_time("kept") + timedelta(minutes=3)  # another scheduler dispatched it
    set_time("kept", moved)
    sync()
    assert stored_time("kept") == moved
    declare(jobs.noop, "interval", id="kept", minutes=20)
    sync()
    assert client.get_job("kept").trigger.interval == timedelta(minutes=20)


# --- the runner and runapscheduler in this process -----------------------------------


def test_runapscheduler_burst_in_process_prints_and_runs(registry):
    declare(jobs.record, "interval", id="cmd", hours=1, args=["cmd"])
    sync()
    set_time("cmd", timezone.now() - timedelta(seconds=2))
    out = StringIO()
    call_command("runapscheduler", "--burst", "-v", "2", stdout=out)
    printed = out.getvalue()
    assert "Scheduler instance started (1 jobs declared in code)." in printed
    assert "Scheduler stopped." in printed and "Ctrl-C" not in printed
    assert [tag for tag, _ in jobs.calls] == ["cmd"]
    assert logging.getLogger("django_apscheduler").level == logging.INFO

    quiet = StringIO()
    call_command("runapscheduler", "--burst", "-v", "0", stdout=quiet)
    assert quiet.getvalue() == ""
    assert logging.getLogger("django_apscheduler").level == logging.ERROR


def test_run_until_stopped_for_some_seconds_and_after_a_removal(registry):
    """--seconds stops after that long; the start-up line counts removed and kept declarations."""
    declare(jobs.noop, "interval", id="dropped", hours=1)
    declare(jobs.noop, "interval", id="other-release", hours=1)
    sync()
    registry.clear()
    add_instance("old-release", ["other-release"])
    printed: list[str] = []
    assert runner.run_until_stopped(seconds=0.2, write=printed.append) == 0
    assert printed[0].startswith(
        "Scheduler instance started (0 jobs declared in code, 1 removed, "
        "1 kept for other releases)."
    )
    assert "Stop it with Ctrl-C or SIGTERM." in printed[0]
    assert printed[-1] == "Scheduler stopped."
    assert list(DjangoJob.objects.values_list("id", flat=True)) == ["other-release"]


def test_sigterm_stops_the_runner_gracefully(registry):
    """The first SIGTERM stops taking fires and waits for running jobs; exit code 0."""
    assert threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM)
    printed: list[str] = []

    def write(message: str) -> None:
        printed.append(message)
        if message.startswith("Scheduler instance started"):
            os.kill(os.getpid(), signal.SIGTERM)

    assert runner.run_until_stopped(write=write) == 0
    assert any(line.startswith("Stopping: no new fires") for line in printed), printed
    assert printed[-1] == "Scheduler stopped."
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back
    assert not DjangoSchedulerInstance.objects.exists()


def test_runner_counts_running_jobs_and_stops_after_them(runners):
    client.add_job(jobs.sleep, "date", args=[0.5], id="sleeper")
    started = start_runner(runners)
    wait_until(lambda: started.running_jobs() == 1)
    assert started.stop(timeout=30) == 0
    assert runs("sleeper")[0][0] == DjangoJobExecution.SUCCESS


def test_a_paused_runner_dispatches_nothing_and_registers_no_instance(registry, runners):
    declare(jobs.record, "interval", id="p", hours=1)
    client.add_job(jobs.record, "date", id="due-now", args=["due"])
    started = start_runner(runners, paused=True)
    assert started.due_left(timezone.now()) is True  # nothing dispatched yet
    assert not DjangoSchedulerInstance.objects.exists()
    assert DjangoJob.objects.filter(id="p", declared_in_code=True).exists()
    assert jobs.calls == []


def test_prune_executions_follows_the_retention(settings):
    client.add_job(jobs.noop, "interval", hours=1, id="kept")
    now = timezone.now()
    for age in (1, 10):
        DjangoJobExecution.objects.create(
            job_id="kept", status=DjangoJobExecution.SUCCESS, run_time=now - timedelta(days=age)
        )
    settings.APSCHEDULER_EXECUTION_RETENTION = None
    assert runner.prune_executions() == 0
    settings.APSCHEDULER_EXECUTION_RETENTION = 5 * 86400
    assert runner.prune_executions() == 1
    assert DjangoJobExecution.objects.count() == 1


def test_the_retention_adds_the_prune_job_to_a_started_runner(runners, settings):
    settings.APSCHEDULER_EXECUTION_RETENTION = 86400
    started = start_runner(runners, paused=True)
    job = started.scheduler.get_job("django_apscheduler.prune_executions", runner.INTERNAL_STORE)
    assert job is not None and job.trigger.interval == timedelta(seconds=runner.PRUNE_INTERVAL)
    assert job.args == (runner.prune_executions,)


def test_a_projects_own_runapscheduler_is_found(settings, capsys):
    assert runapscheduler.shadowed_command() is None
    settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "tests.handwritten"]
    own = runapscheduler.shadowed_command()
    assert own is not None and own.help == "The project's own scheduler command."
    runapscheduler.Command().run_from_argv(["manage.py", "runapscheduler", "--own-option", "kept"])
    assert "handwritten runapscheduler ran (own option: kept)" in capsys.readouterr().out


# --- #9.13: autostart before migrate --------------------------------------------------


def test_autostart_waits_for_the_migrations_then_starts(registry, monkeypatch, caplog):
    """A web server started before `migrate`: autostart warns, retries, starts once migrated.

    It used to log one error and never start a scheduler in that process.
    """
    monkeypatch.setattr(runner, "AUTOSTART_FIRST_DELAY", 0.05, raising=False)
    monkeypatch.setattr(runner, "AUTOSTART_MAX_DELAY", 0.2, raising=False)
    cancel = getattr(runner, "autostart_cancelled", threading.Event())
    cancel.clear()
    declare(jobs.noop, "interval", id="declared-before-migrate", hours=1)
    assert runner.autostarted() is None
    call_command("migrate", "django_apscheduler", "zero", verbosity=0)
    try:
        with caplog.at_level(logging.WARNING, logger="django_apscheduler"):
            runner.autostart()
            wait_until(lambda: caplog.text.count("retrying in") >= 2)
            assert runner.autostarted() is None
            call_command("migrate", "django_apscheduler", verbosity=0)
            started = wait_until(runner.autostarted, timeout=60)
        assert "lacks the django_apscheduler migrations 0001_squashed" in caplog.text
        assert "run `manage.py migrate`" in caplog.text
        assert started.scheduler.running
        assert DjangoJob.objects.filter(id="declared-before-migrate").exists()
        wait_until(DjangoSchedulerInstance.objects.exists)
    finally:
        cancel.set()
        call_command("migrate", "django_apscheduler", verbosity=0)
        started = runner.autostarted()
        if started is not None:
            started.stop(timeout=5)
        runner._autostarted = None


def test_autostart_gives_up_on_an_error_a_retry_cannot_fix(registry, monkeypatch, caplog):
    """A broken declaration is not a database that is not ready: logged once, no retry loop."""

    def broken() -> None:
        raise ImproperlyConfigured("bad declaration")

    monkeypatch.setattr(declared, "discover", broken)
    runner.autostart_cancelled.clear()
    with caplog.at_level(logging.WARNING, logger="django_apscheduler"):
        thread = threading.Thread(target=runner._autostart_when_ready)
        thread.start()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert "Could not autostart the scheduler" in caplog.text and "bad declaration" in caplog.text
    assert "retrying" not in caplog.text
    assert runner.autostarted() is None
