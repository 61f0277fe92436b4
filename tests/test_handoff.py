"""Issue 13, in one process: task jobs, the "Queued" row before the enqueue, the sweep.

No worker runs here (tests/test_handoff_workers.py starts real ones): these
tests check what the scheduler side writes and enqueues, on the real
database, with Django Tasks' database backend (its queue is a table) and, for
what needs no broker, Celery.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from apscheduler.util import ref_to_obj
from django.core import checks
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone as dj_timezone

from django_apscheduler import client, declared, handoff, signing, tasks_celery, util
from django_apscheduler.exceptions import TaskHandoffError
from django_apscheduler.models import DjangoJob, DjangoJobExecution, DjangoSchedulerInstance
from django_apscheduler.run_now import RunStatus, run_jobs_now
from tests import handoff_tasks
from tests.helpers import runapscheduler_env, wait_until

UTC = timezone.utc
HAS_TASKS_DB = handoff_tasks.HAS_TASKS_DB
needs_tasks_db = pytest.mark.skipif(
    not HAS_TASKS_DB, reason="django-tasks-db needs Django 5.2 or later (extra 'tasks')"
)

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


def task_results():
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.all()


# --- references ---------------------------------------------------------------------


def test_a_celery_task_reference_is_text_that_resolves_to_the_task():
    ref = handoff.task_ref(handoff_tasks.celery_note, queue="q.1", priority=3)
    assert (
        ref
        == "django_apscheduler.handoff:task.tests.handoff_tasks.celery_note.@priority=3&queue=q%2E1"
    )
    resolved = ref_to_obj(ref)
    assert isinstance(resolved, handoff.TaskRef)
    assert resolved.options == {"queue": "q.1", "priority": 3}
    assert resolved.resolve()[0].name == handoff_tasks.celery_note.name
    assert handoff.task_ref("tests.handoff_tasks:celery_note") == handoff.task_ref(
        handoff_tasks.celery_note
    )


def test_task_ref_refuses_what_is_not_a_task():
    with pytest.raises(TypeError, match="not a Django Tasks Task nor a Celery task"):
        handoff.task_ref(print)
    with pytest.raises(TypeError, match="unknown options colour"):
        handoff.task_ref(handoff_tasks.celery_note, colour="red")


def test_celery_task_ids_are_derived_from_job_and_run_time():
    run_time = datetime(2030, 1, 1, tzinfo=UTC)
    first = tasks_celery.derived_task_id("job", run_time)
    assert first == tasks_celery.derived_task_id("job", run_time)
    assert first.startswith(tasks_celery.TASK_ID_PREFIX)
    assert first != tasks_celery.derived_task_id("job", run_time + timedelta(seconds=1))
    assert first != tasks_celery.derived_task_id("other", run_time)


# --- refused at add_job ---------------------------------------------------------------


def test_a_celery_task_as_the_function_itself_is_refused_naming_the_way(make_scheduler):
    scheduler = make_scheduler()
    with pytest.raises(TaskHandoffError, match="'direct'.*would run in the scheduler.*task_ref"):
        scheduler.add_job(handoff_tasks.celery_note, "interval", hours=1, id="direct", args=["x"])
    assert not DjangoJob.objects.filter(id="direct").exists()


def test_an_argument_celery_cannot_send_is_refused_naming_job_and_argument(make_scheduler):
    scheduler = make_scheduler()
    with pytest.raises(TaskHandoffError, match=r"'bad-arg'.*args\[1\].*json"):
        scheduler.add_job(
            handoff.task_ref(handoff_tasks.celery_note),
            "interval",
            hours=1,
            id="bad-arg",
            args=["x", object()],
        )
    assert not DjangoJob.objects.filter(id="bad-arg").exists()


@needs_tasks_db
def test_an_argument_json_changes_is_refused_for_django_tasks(make_scheduler):
    scheduler = make_scheduler()
    with pytest.raises(TaskHandoffError, match=r"'sets'.*kwargs\['tag'\]"):
        client.add_job(
            handoff_tasks.tasks_note,
            "interval",
            hours=1,
            id="sets",
            args=["x"],
            kwargs={"tag": {1}},
        )
    assert not DjangoJob.objects.filter(id="sets").exists()
    del scheduler


@needs_tasks_db
def test_a_backend_that_is_not_configured_is_refused_at_add_job():
    with pytest.raises(TaskHandoffError, match="'nowhere'.*backend 'missing'.*TASKS"):
        client.add_job(
            handoff.task_ref(handoff_tasks.tasks_note, backend="missing"),
            "interval",
            hours=1,
            id="nowhere",
            args=["x"],
        )
    assert not DjangoJob.objects.filter(id="nowhere").exists()


def test_a_celery_app_without_broker_is_refused(monkeypatch):
    monkeypatch.setattr(handoff_tasks.celery_note.app.conf, "broker_url", None)
    with pytest.raises(TaskHandoffError, match="'no-broker'.*without a broker"):
        client.add_job(handoff_tasks.celery_note, "interval", hours=1, id="no-broker", args=["x"])


# --- the hand-off ---------------------------------------------------------------------


@needs_tasks_db
def test_a_task_job_is_stored_by_reference_and_survives_a_restart():
    client.add_job(handoff_tasks.tasks_note, "interval", hours=1, id="stored", args=["p"])
    state = pickle.loads(bytes(DjangoJob.objects.get(id="stored").job_state))
    assert state["func"] == "django_apscheduler.handoff:task.tests.handoff_tasks.tasks_note"
    job = client.get_job("stored")  # restored from the row, as a restarted process does
    assert handoff.job_task_ref(job).resolve()[0] == handoff_tasks.tasks_note


@needs_tasks_db
def test_hand_off_commits_queued_then_enqueues_once(tmp_path):
    client.add_job(handoff_tasks.tasks_note, "interval", hours=1, id="once", args=["p"])
    ref = handoff.job_task_ref(client.get_job("once"))
    run_time = datetime(2030, 1, 1, 12, tzinfo=UTC)
    done = handoff.hand_off("once", run_time, ref, ["p"], {}, instance="me")
    assert done is not None
    row = DjangoJobExecution.objects.get(job_id="once")
    assert row.status == DjangoJobExecution.QUEUED
    assert row.task_backend == "django-tasks:default"
    assert row.handed_off_at is not None
    assert row.task_id == done.task_id == str(task_results().get().id)
    # Another scheduler, or a retry, for the same fire: nothing more is enqueued.
    assert handoff.hand_off("once", run_time, ref, ["p"], {}, instance="other") is None
    assert task_results().count() == 1
    assert DjangoJobExecution.objects.filter(job_id="once").count() == 1


@needs_tasks_db
def test_a_task_end_is_recorded_without_looking_its_row_up_again():
    """The worker found the row at the task's start; its end is written straight away."""
    client.add_job(handoff_tasks.tasks_note, "interval", hours=1, id="ends", args=["p"])
    ref = handoff.job_task_ref(client.get_job("ends"))
    done = handoff.hand_off("ends", dj_timezone.now(), ref, ["p"], {}, instance="me")
    assert done is not None and done.task_id
    label = "django-tasks:default"
    assert handoff.worker_started(done.task_id, label)
    with CaptureQueriesContext(connection) as queries:
        assert handoff.worker_finished(done.task_id, True, label=label)
    lookups = [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("SELECT")]
    assert not [sql for sql in lookups if done.task_id in sql or "task_id" in sql], lookups
    row = DjangoJobExecution.objects.get(job_id="ends")
    assert row.status == DjangoJobExecution.SUCCESS and row.task_id == done.task_id
    # A task whose start this process did not see (another worker's): looked up as before.
    assert not handoff.worker_finished("unknown-task", True, label=label, wait=0)


def test_what_a_worker_notes_at_task_starts_is_bounded():
    """A task whose end never comes (a lost delivery) leaves no memory behind for ever."""
    noted: util.Recent[str, int] = util.Recent(3)
    for n in range(5):
        noted.put(f"task-{n}", n)
    assert len(noted) == 3
    assert noted.pop("task-0") is None and noted.pop("task-1") is None
    assert noted.pop("task-4") == 4 and noted.pop("task-4") is None


@needs_tasks_db
def test_a_scheduler_hands_fires_off_and_never_runs_the_task(make_scheduler, tmp_path):
    path = tmp_path / "runs.jsonl"
    scheduler = make_scheduler()
    scheduler.add_job(
        handoff.task_ref(handoff_tasks.tasks_note, queue="reports"),
        "date",
        run_date=dj_timezone.now(),
        id="fire",
        args=[str(path)],
        misfire_grace_time=60,
    )
    row = wait_until(
        lambda: DjangoJobExecution.objects.filter(
            job_id="fire", handed_off_at__isnull=False
        ).first(),
        timeout=60,
    )
    scheduler.shutdown()
    assert row.status == DjangoJobExecution.QUEUED  # no worker here: not "Executed"
    assert not path.exists()  # the scheduler did not run it
    result = task_results().get()
    assert str(result.id) == row.task_id and result.queue_name == "reports"
    assert DjangoJobExecution.objects.filter(job_id="fire").count() == 1


def test_an_enqueue_that_fails_marks_the_fire_error_naming_the_broker_error(tmp_path):
    client.add_job(handoff_tasks.celery_unreachable, "interval", hours=1, id="down", args=["p"])
    ref = handoff.job_task_ref(client.get_job("down"))
    run_time = datetime(2030, 1, 1, tzinfo=UTC)
    assert handoff.hand_off("down", run_time, ref, ["p"], {}) is None
    row = DjangoJobExecution.objects.get(job_id="down")
    assert row.status == DjangoJobExecution.ERROR and row.handed_off_at is None
    assert row.exception.startswith("Could not hand the fire to celery:celery: ")
    assert row.task_call is None
    assert handoff.sweep("me") == (0, 0)  # an error is final: not enqueued again


@needs_tasks_db
def test_run_now_hands_a_task_job_off(tmp_path):
    client.add_job(handoff_tasks.tasks_note, "interval", hours=1, id="now", args=["p"])
    [outcome] = run_jobs_now(["now"])
    assert outcome.status is RunStatus.HANDED_OFF
    row = DjangoJobExecution.objects.get(job_id="now")
    assert row.status == DjangoJobExecution.QUEUED and row.pk == outcome.execution_id
    assert row.task_id in outcome.message and task_results().count() == 1


@pytest.fixture
def declared_task():
    """``@scheduled_job`` stacked on a ``@task``, declared for this test only."""
    saved = dict(declared._registry)
    declared.scheduled_job("interval", hours=1, id="handoff-declared", args=["/dev/null"])(
        handoff_tasks.tasks_report
    )
    yield
    declared._registry.clear()
    declared._registry.update(saved)


@needs_tasks_db
def test_the_run_command_hands_a_task_job_off():
    from io import StringIO

    from django.core.management import call_command

    client.add_job(handoff_tasks.tasks_note, "interval", hours=1, id="cmd", args=["p"])
    out = StringIO()
    call_command("apscheduler", "run", "cmd", stdout=out)
    row = DjangoJobExecution.objects.get(job_id="cmd")
    assert out.getvalue().startswith("cmd: handed_off (django-tasks:default, task ")
    assert row.status == DjangoJobExecution.QUEUED and row.task_id in out.getvalue()


@needs_tasks_db
def test_declared_job_on_a_task_is_synced_as_a_reference(make_scheduler, declared_task):
    declaration = declared.discover()["handoff-declared"]
    scheduler = make_scheduler(start=False)
    scheduler.start(paused=True)
    declared.sync(scheduler, declarations={"handoff-declared": declaration})
    state = pickle.loads(bytes(DjangoJob.objects.get(id="handoff-declared").job_state))
    assert state["func"] == "django_apscheduler.handoff:task.tests.handoff_tasks.tasks_report"
    assert not [m for m in checks.run_checks() if m.id == "django_apscheduler.E012"]


@needs_tasks_db
def test_the_system_check_reports_a_declared_task_without_backend(declared_task):
    tasks = {"other": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    with override_settings(TASKS=tasks):
        found = [m for m in checks.run_checks() if m.id == "django_apscheduler.E012"]
    assert found and "handoff-declared" in found[0].msg and "TASKS" in found[0].msg


def test_a_stored_task_job_whose_task_is_gone_is_reported_and_its_fires_fail(settings):
    client.add_job(handoff_tasks.celery_note, "interval", hours=1, id="gone", args=["p"])
    row = DjangoJob.objects.get(id="gone")
    state = pickle.loads(bytes(row.job_state))
    state["func"] = handoff.task_ref("tests.handoff_tasks.no_such_task")
    changed = pickle.dumps(state)
    # Changed by hand and signed on purpose (an unsigned edit is refused as broken).
    DjangoJob.objects.filter(id="gone").update(
        job_state=changed, job_signature=signing.sign("gone", changed)
    )
    found = [
        m for m in checks.run_checks(databases=["default"]) if m.id == "django_apscheduler.W013"
    ]
    assert len(found) == 1 and "'gone'" in found[0].msg and "no_such_task" in found[0].msg
    ref = handoff.job_task_ref(client.get_job("gone"))
    assert handoff.hand_off("gone", dj_timezone.now(), ref, ["p"], {}) is None
    fire = DjangoJobExecution.objects.get(job_id="gone")
    assert fire.status == DjangoJobExecution.ERROR and "no_such_task" in fire.exception


# --- the sweep ------------------------------------------------------------------------


def _queued_row(job_id: str, instance: str | None, run_time: datetime) -> DjangoJobExecution:
    return DjangoJobExecution.objects.create(
        job_id=job_id,
        run_time=util.get_django_internal_datetime(run_time),
        status=DjangoJobExecution.QUEUED,
        instance=instance,
        task_backend="django-tasks:default",
        task_call=signing.seal(
            f"handoff-call:{job_id}",
            pickle.dumps((handoff.task_ref("tests.handoff_tasks.tasks_note"), ("p",), {})),
        ),
    )


@needs_tasks_db
def test_the_sweep_enqueues_what_a_dead_scheduler_left_unpublished():
    client.add_job(handoff_tasks.tasks_note, "interval", hours=1, id="orphan", args=["p"])
    now = dj_timezone.now()
    DjangoSchedulerInstance.objects.create(
        id="alive", host="h", pid=1, started=now, last_heartbeat=now
    )
    dead = _queued_row("orphan", "dead:1:x", now - timedelta(seconds=1))
    live = _queued_row("orphan", "alive", now - timedelta(seconds=2))
    assert handoff.sweep("sweeper") == (1, 0)
    dead.refresh_from_db()
    live.refresh_from_db()
    assert dead.handed_off_at is not None and dead.task_id == str(task_results().get().id)
    assert dead.instance == "sweeper"
    assert live.handed_off_at is None  # its scheduler lives: it enqueues it itself
    assert handoff.sweep("another") == (0, 0)  # never twice
    assert task_results().count() == 1


@needs_tasks_db
def test_a_scheduler_taken_for_dead_enqueues_nothing_after_the_sweep():
    client.add_job(handoff_tasks.tasks_note, "interval", hours=1, id="slow", args=["p"])
    row = _queued_row("slow", "slow:1:x", dj_timezone.now() - timedelta(seconds=1))
    assert handoff.sweep("sweeper") == (1, 0)
    # The "dead" scheduler wakes up and goes on with its hand-off.
    task, engine = handoff.TaskRef("tests.handoff_tasks.tasks_note").resolve()
    handoff.publish(row.pk, task, engine, {}, ("p",), {}, None, "slow:1:x")
    assert task_results().count() == 1


def test_a_row_taken_over_is_not_published_by_its_first_owner():
    client.add_job(handoff_tasks.celery_unreachable, "interval", hours=1, id="taken", args=["p"])
    row = _queued_row("taken", "sweeper", dj_timezone.now())
    task, engine = handoff.TaskRef("tests.handoff_tasks.celery_unreachable").resolve()
    # Enqueueing would fail (nobody listens) and mark the row Error!: it is not tried.
    assert handoff.publish(row.pk, task, engine, {}, ("p",), {}, "id", "first:1:x") is None
    row.refresh_from_db()
    assert row.status == DjangoJobExecution.QUEUED and row.instance == "sweeper"


def test_the_sweep_never_unpickles_a_planted_call(tmp_path):
    """A "Queued" row written into the table with an unsigned (or another job's) call.

    The sweep would enqueue it, unpickling its ``task_call``: it is refused
    instead, the row ends "Error!" naming the problem, and nothing runs.
    """
    import os

    class Planted:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "ran"),))

    client.add_job(handoff_tasks.celery_note, "interval", hours=1, id="planted", args=["p"])
    client.add_job(handoff_tasks.celery_note, "interval", hours=1, id="other", args=["p"])
    evil = pickle.dumps(Planted())
    now = dj_timezone.now() - timedelta(seconds=1)
    rows = [
        _queued_row("planted", "dead:1:x", now),
        _queued_row("planted", "dead:1:x", now - timedelta(seconds=1)),
    ]
    DjangoJobExecution.objects.filter(pk=rows[0].pk).update(task_call=evil)  # unsigned
    swapped = signing.seal("handoff-call:other", evil)  # signed, for another job
    DjangoJobExecution.objects.filter(pk=rows[1].pk).update(task_call=swapped)
    handoff.sweep("sweeper")
    assert not (tmp_path / "ran").exists(), "a planted task_call was unpickled"
    for row in rows:
        row.refresh_from_db()
        assert row.status == DjangoJobExecution.ERROR, row.status
        assert "signature" in row.exception or "unsigned" in row.exception, row.exception


def test_the_sweep_marks_overdue_hand_offs_lost():
    client.add_job(handoff_tasks.celery_note, "interval", hours=1, id="late", args=["p"])
    old = dj_timezone.now() - timedelta(hours=2)
    rows = [_queued_row("late", "x", old - timedelta(seconds=i)) for i in range(3)]
    DjangoJobExecution.objects.filter(pk=rows[0].pk).update(handed_off_at=old)
    DjangoJobExecution.objects.filter(pk=rows[1].pk).update(
        handed_off_at=old, status=DjangoJobExecution.SENT
    )
    DjangoJobExecution.objects.filter(pk=rows[2].pk).update(
        handed_off_at=dj_timezone.now(), status=DjangoJobExecution.SENT
    )
    # Never noted as enqueued by a scheduler that lives on: counted from its run time.
    now = dj_timezone.now()
    DjangoSchedulerInstance.objects.create(
        id="alive", host="h", pid=1, started=now, last_heartbeat=now
    )
    unnoted = _queued_row("late", "alive", old - timedelta(seconds=9))
    recent = _queued_row("late", "alive", now)
    local = DjangoJobExecution.objects.create(
        job_id="late", run_time=old - timedelta(seconds=8), status=DjangoJobExecution.SENT
    )
    with override_settings(APSCHEDULER_HANDOFF_LOST_AFTER=60):
        assert handoff.sweep("me") == (0, 3)
    statuses = {r.pk: r for r in DjangoJobExecution.objects.all()}
    assert statuses[rows[0].pk].status == DjangoJobExecution.LOST
    assert "APSCHEDULER_HANDOFF_LOST_AFTER" in statuses[rows[0].pk].exception
    assert statuses[rows[1].pk].status == DjangoJobExecution.LOST
    assert statuses[rows[2].pk].status == DjangoJobExecution.SENT  # still within its time
    assert statuses[unnoted.pk].status == DjangoJobExecution.LOST
    assert statuses[recent.pk].status == DjangoJobExecution.QUEUED
    assert statuses[local.pk].status == DjangoJobExecution.SENT  # a run in a scheduler: not ours


# --- a sweep racing the scheduler it took for dead ---------------------------------------

SWEEPER = """
import sys
import django

django.setup()
from django_apscheduler import handoff

open(sys.argv[1], "w").close()
print("sweep:", handoff.sweep("sweeper"), flush=True)
"""


class _SweptDuringEnqueue:
    """The Celery engine, but a sweep in another process starts right after the enqueue.

    That is the moment a scheduler taken for dead (a heartbeat late beyond
    the lease on a loaded machine) has enqueued its hand-off and not yet
    noted it: a real process sweeps, as another scheduler's housekeeping
    would, and this waits for it (at most a few seconds, as it may wait on a lock).
    """

    def __init__(self, engine: Any, marker: Any, patience: float = 5) -> None:
        self.engine = engine
        self.marker = marker
        self.patience = patience
        self.sweeper: subprocess.Popen | None = None
        self.swept_during_enqueue = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def enqueue(self, *args: Any) -> str:
        new_id = self.engine.enqueue(*args)
        self.sweeper = subprocess.Popen(
            [sys.executable, "-c", SWEEPER, str(self.marker)],
            cwd=ROOT,
            env=runapscheduler_env({}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_until(lambda: self.marker.exists() or self.sweeper.poll() is not None, timeout=120)
        try:
            self.sweeper.wait(self.patience)
            self.swept_during_enqueue = True
        except subprocess.TimeoutExpired:
            pass  # waiting for this transaction's lock on the row: it ends after the note
        return new_id


def _queued_celery_handoff(job_id: str, instance: str, args: list[str]) -> tuple[Any, ...]:
    """A Celery hand-off recorded "Queued" by ``instance`` and not yet enqueued, due a second ago.

    Returns (row, queue, task, engine, task_id); the queue is new, for the test to empty.
    """
    queue = f"apscheduler-test-{uuid.uuid4().hex[:10]}"
    ref = handoff.task_ref(handoff_tasks.celery_note, queue=queue)
    client.add_job(ref, "interval", hours=1, id=job_id, args=args)
    stored = util.get_django_internal_datetime(dj_timezone.now() - timedelta(seconds=1))
    task_id = tasks_celery.derived_task_id(job_id, stored)
    row = DjangoJobExecution.objects.create(
        job_id=job_id,
        run_time=stored,
        status=DjangoJobExecution.QUEUED,
        instance=instance,
        task_backend="celery",
        task_id=task_id,
        task_call=signing.seal(f"handoff-call:{job_id}", pickle.dumps((ref, tuple(args), {}))),
    )
    task, engine = ref_to_obj(ref).resolve()
    return row, queue, task, engine, task_id


def test_a_sweep_while_a_live_scheduler_enqueues_does_not_enqueue_the_task_again(tmp_path):
    """The celery storm test's doubles on a loaded machine, made to happen every time.

    The row stays locked from its owner's check until its note commits, so
    the sweep leaves it (on SQLite, waits for it), then finds it enqueued; before, it took the row over
    and enqueued the task a second time (the worker then ran it twice).
    """
    # "slow:1:x" has no heartbeat on record: the sweep takes it for dead.
    row, queue, task, engine, task_id = _queued_celery_handoff(
        "raced", "slow:1:x", [str(tmp_path / "runs")]
    )
    racing = _SweptDuringEnqueue(engine, tmp_path / "sweeping")
    try:
        done = handoff.publish(
            row.pk, task, racing, {"queue": queue}, (str(tmp_path / "runs"),), {}, task_id,
            "slow:1:x",
        )  # fmt: skip
        assert racing.sweeper is not None
        output, _ = racing.sweeper.communicate(timeout=120)
        assert racing.sweeper.returncode == 0, output
        assert "sweep: (0, 0)" in output, output  # it found the row enqueued: nothing to do
        assert done is not None and done.task_id == task_id
        row.refresh_from_db()
        assert row.instance == "slow:1:x" and row.handed_off_at is not None
        with handoff_tasks.celery_note.app.connection_for_read() as connection:
            assert connection.default_channel.client.llen(queue) == 1  # one message, not two
    finally:
        if racing.sweeper is not None and racing.sweeper.poll() is None:
            racing.sweeper.kill()
        with handoff_tasks.celery_note.app.connection_for_write() as connection:
            connection.default_channel.client.delete(queue)


def test_a_sweep_does_not_wait_for_a_row_its_live_publisher_holds(tmp_path, vendor):
    """The sweep leaves a row whose scheduler is enqueueing it, instead of waiting for its lock.

    The sweep runs in a scheduler's housekeeping thread, which also beats its
    heartbeat: waiting there for another scheduler's broker (slow, or down and
    retried) stopped the heartbeat, and the sweeping scheduler could be taken
    for dead in turn. SQLite has one write lock for the whole database, so the
    sweep's take-over waits for it there.
    """
    # "slow:1:x" has no heartbeat on record: the sweep takes it for dead.
    row, queue, task, engine, task_id = _queued_celery_handoff(
        "held", "slow:1:x", [str(tmp_path / "runs")]
    )
    # Up to 60 s for the sweep to end while this enqueue goes on (5 s on SQLite).
    racing = _SweptDuringEnqueue(
        engine, tmp_path / "sweeping", patience=5 if vendor == "sqlite" else 60
    )
    try:
        done = handoff.publish(
            row.pk, task, racing, {"queue": queue}, (str(tmp_path / "runs"),), {}, task_id,
            "slow:1:x",
        )  # fmt: skip
        assert racing.sweeper is not None
        output, _ = racing.sweeper.communicate(timeout=120)
        assert racing.sweeper.returncode == 0, output
        assert "sweep: (0, 0)" in output, output
        if vendor != "sqlite":
            assert racing.swept_during_enqueue, "the sweep waited for the publisher's row lock"
        assert done is not None and done.task_id == task_id
        row.refresh_from_db()
        assert row.instance == "slow:1:x" and row.handed_off_at is not None
        with handoff_tasks.celery_note.app.connection_for_read() as broker:
            assert broker.default_channel.client.llen(queue) == 1
    finally:
        if racing.sweeper is not None and racing.sweeper.poll() is None:
            racing.sweeper.kill()
        with handoff_tasks.celery_note.app.connection_for_write() as broker:
            broker.default_channel.client.delete(queue)


class _LockedThroughTheIndexDuringEnqueue:
    """The Celery engine, but another session locks the row through its hand-off index meanwhile.

    That is what a sweep's take-over did on MariaDB when the optimizer chose
    the ``dja_execution_handoff`` index: it locked the row's index entry, then
    waited for the row, which the publisher holds until its note commits.
    The locking read is forced through that index here, so it happens every
    time; elsewhere it is the same read, on rows.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.enqueues = 0
        self.errors: list[Exception] = []
        self.thread: threading.Thread | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def _lock_through_the_index(self, waiting: threading.Event) -> None:
        from django.db import connections

        from django_apscheduler import backends

        backend = backends.for_alias("default")
        waiting.set()  # on SQLite, the transaction's start already waits
        try:
            with backend.write_transaction("default"):
                if connections["default"].vendor == "mysql":
                    table = DjangoJobExecution._meta.db_table
                    with connections["default"].cursor() as cursor:
                        cursor.execute(
                            f"SELECT id FROM {table} FORCE INDEX (dja_execution_handoff) "
                            "WHERE status = %s AND handed_off_at IS NULL FOR UPDATE",
                            [DjangoJobExecution.QUEUED],
                        )
                        cursor.fetchall()
                else:
                    unpublished = DjangoJobExecution.objects.unpublished()
                    list(backend.lock_for_write(unpublished, "default").values_list("pk"))
        except Exception as exc:
            self.errors.append(exc)
        finally:
            connections.close_all()

    def _waiting_reads(self) -> int:
        if connection.vendor != "mysql":
            return 0
        # The process list: INNODB_TRX, read from this session inside its
        # transaction, did not show the waiting one (MariaDB 10.11).
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE INFO LIKE %s AND TIME_MS > 300",
                ["%FORCE INDEX (dja_execution_handoff)%"],
            )
            return cursor.fetchone()[0]

    def enqueue(self, *args: Any) -> str:
        self.enqueues += 1
        new_id = self.engine.enqueue(*args)
        waiting = threading.Event()
        self.thread = threading.Thread(target=self._lock_through_the_index, args=(waiting,))
        self.thread.start()
        waiting.wait(30)
        if connection.vendor == "mysql":
            wait_until(lambda: self._waiting_reads() > 0 or not self.thread.is_alive(), timeout=30)
        else:
            time.sleep(1)  # its read waits for this transaction's lock
        return new_id


def test_a_session_locking_the_row_through_its_index_during_the_enqueue_deadlocks_nothing(
    caplog,
):
    """The note of an enqueued hand-off cannot be rolled back by a deadlock.

    Seen in CI on MariaDB: a sweep locked the row's hand-off index entry and
    waited for the row; the publisher's note, written after the enqueue,
    needed that entry. The server ended the deadlock by rolling the note back,
    the sweep took the row over, and the task was enqueued a second time. The
    note is now written before the enqueue, so the other session simply waits.
    """
    row, queue, task, engine, task_id = _queued_celery_handoff("locked", "owner:1:x", ["unused"])
    locking = _LockedThroughTheIndexDuringEnqueue(engine)
    try:
        done = handoff.publish(
            row.pk, task, locking, {"queue": queue}, ("unused",), {}, task_id, "owner:1:x"
        )
        assert locking.thread is not None
        locking.thread.join(60)
        assert not locking.thread.is_alive()
        assert not locking.errors, locking.errors  # the other session was not rolled back
        retried = [r.getMessage() for r in caplog.records if "trying to enqueue" in r.getMessage()]
        assert not retried, retried  # nor was the publisher's note
        assert locking.enqueues == 1
        assert done is not None and done.task_id == task_id
        row.refresh_from_db()
        assert row.handed_off_at is not None and row.task_id == task_id and row.task_call is None
        with handoff_tasks.celery_note.app.connection_for_read() as broker:
            assert broker.default_channel.client.llen(queue) == 1
    finally:
        with handoff_tasks.celery_note.app.connection_for_write() as broker:
            broker.default_channel.client.delete(queue)


def _ran_in_transaction(path: Path) -> list[bool]:
    return [json.loads(line)["atomic"] for line in path.read_text().splitlines()]


@needs_tasks_db
def test_a_task_the_immediate_backend_runs_at_the_enqueue_runs_outside_the_row_lock(
    tmp_path, settings
):
    """Only an enqueue that merely sends is made under the row's lock, not a whole run."""
    package = type(handoff_tasks.tasks_in_transaction).__module__.rsplit(".", 1)[0]
    tasks = {
        **settings.TASKS,
        # The ImmediateBackend of the package the test task comes from.
        "inline": {"BACKEND": f"{package}.backends.immediate.ImmediateBackend"},
    }
    path = tmp_path / "ran"
    with override_settings(TASKS=tasks):
        ref = handoff.task_ref(handoff_tasks.tasks_in_transaction, backend="inline")
        client.add_job(ref, "interval", hours=1, id="inline", args=[str(path)])
        done = handoff.hand_off(
            "inline", dj_timezone.now(), ref_to_obj(ref), (str(path),), {}, "me"
        )
    assert done is not None and done.backend == "django-tasks:inline"
    assert _ran_in_transaction(path) == [False]
    # Its run is recorded on its row at once: no wait for a note that comes after
    # the run, no "Queued" row left to be marked Lost an hour later.
    row = DjangoJobExecution.objects.get(job_id="inline")
    assert row.status == DjangoJobExecution.SUCCESS, row.status
    assert row.instance == handoff.worker_identity()


def test_an_eager_celery_task_runs_outside_the_row_lock(tmp_path):
    app = handoff_tasks.celery_in_transaction.app
    path = tmp_path / "ran"
    ref = handoff.task_ref(handoff_tasks.celery_in_transaction)
    client.add_job(ref, "interval", hours=1, id="eager", args=[str(path)])
    app.conf.task_always_eager = True
    try:
        done = handoff.hand_off("eager", dj_timezone.now(), ref_to_obj(ref), (str(path),), {}, "me")
    finally:
        app.conf.task_always_eager = False
    assert done is not None
    assert _ran_in_transaction(path) == [False]
    # The task's own signals, in this process, recorded its run on the row.
    assert DjangoJobExecution.objects.get(job_id="eager").status == DjangoJobExecution.SUCCESS


def test_a_celery_task_is_sent_while_its_row_is_locked(tmp_path, monkeypatch):
    """The enqueue that only sends a message is made inside the locked transaction."""
    task, engine = ref_to_obj(handoff.task_ref(handoff_tasks.celery_note)).resolve()
    seen: list[bool] = []

    def enqueue(*args: Any) -> str:
        seen.append(connection.in_atomic_block)
        return "apscheduler-sent"

    monkeypatch.setattr(engine, "enqueue", enqueue)
    client.add_job(handoff_tasks.celery_note, "interval", hours=1, id="sent", args=["p"])
    row = _queued_row("sent", "me", dj_timezone.now())
    done = handoff.publish(row.pk, task, engine, {}, ("p",), {}, None, "me")
    assert done is not None and done.task_id == "apscheduler-sent" and seen == [True]
