"""The queries on the models, each written once as a queryset or manager method.

Coordination, the store, the admin, the ``apscheduler`` command and
``run_now`` all go through these methods; the last tests check, in the
package's source, that nobody writes them again by hand and that row locks
are taken only in :mod:`django_apscheduler.backends`.
"""

from __future__ import annotations

import ast
import pathlib
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.test.utils import override_settings

import django_apscheduler
from django_apscheduler import executions
from django_apscheduler.models import (
    DjangoJob,
    DjangoJobExecution,
    DjangoSchedulerInstance,
    classify_job,
)
from tests.test_run_now import FUTURE, store_broken_job, store_finished_job, store_job

pytestmark = pytest.mark.django_db(transaction=True)

UTC = dt_timezone.utc
NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
PACKAGE = pathlib.Path(django_apscheduler.__file__).parent


def ids(queryset) -> list[str]:
    return sorted(queryset.values_list("id", flat=True))


def make_claims() -> None:
    """Four job rows: free, held by "a", held by "b" (valid), held by "b" (expired)."""
    for job_id in ("free", "mine", "theirs", "expired"):
        store_job(job_id)
    DjangoJob.objects.filter(id="mine").update(
        acquired_by="a", acquired_until=NOW + timedelta(seconds=60)
    )
    DjangoJob.objects.filter(id="theirs").update(
        acquired_by="b", acquired_until=NOW + timedelta(seconds=60)
    )
    DjangoJob.objects.filter(id="expired").update(
        acquired_by="b", acquired_until=NOW - timedelta(seconds=1)
    )


def test_claimable_held_by_and_held_by_others():
    make_claims()
    assert ids(DjangoJob.objects.claimable("a", NOW)) == ["expired", "free", "mine"]
    assert ids(DjangoJob.objects.claimable("b", NOW)) == ["expired", "free", "theirs"]
    assert ids(DjangoJob.objects.held_by("a")) == ["mine"]
    assert ids(DjangoJob.objects.held_by("b")) == ["expired", "theirs"]
    assert ids(DjangoJob.objects.held_by_others("a")) == ["expired", "theirs"]


def test_claim_and_release_return_counts_and_change_only_the_selection():
    make_claims()
    until = NOW + timedelta(seconds=30)
    assert DjangoJob.objects.filter(id="free").claim("c", until) == 1
    assert DjangoJob.objects.get(id="free").acquired_until == until
    assert ids(DjangoJob.objects.held_by("c")) == ["free"]

    assert DjangoJob.objects.held_by("b").release() == 2
    assert ids(DjangoJob.objects.held_by("b")) == []
    released = DjangoJob.objects.get(id="theirs")
    assert (released.acquired_by, released.acquired_until) == (None, None)
    # The others' claims are untouched.
    assert ids(DjangoJob.objects.held_by("a")) == ["mine"]
    assert ids(DjangoJob.objects.held_by("c")) == ["free"]
    assert DjangoJob.objects.held_by("nobody").release() == 0


WEIRD_IDS = [
    "plain",
    'it\'s "quoted"',
    "back\\slash",
    "comma,separated",
    "ünï ✓ 日本",
    "[1, 2]",
    "",
]


def test_with_ids_selects_exactly_those_jobs_in_every_query_form():
    """One JSON parameter on PostgreSQL, ``IN`` elsewhere: the same rows, whatever the ids hold."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from django_apscheduler import backends

    DjangoJob.objects.bulk_create(
        [DjangoJob(id=job_id, job_state=b"s", next_run_time=NOW) for job_id in WEIRD_IDS]
        + [DjangoJob(id=f"other-{i}", job_state=b"s", next_run_time=NOW) for i in range(5)]
    )
    wanted = WEIRD_IDS[1:] + ["missing"]
    with CaptureQueriesContext(connection) as queries:
        assert ids(DjangoJob.objects.with_ids(wanted)) == sorted(WEIRD_IDS[1:])
    if connection.vendor == "postgresql":  # one parameter, not one per id
        assert "json_array_elements_text" in queries[0]["sql"], queries[0]["sql"]
    assert ids(DjangoJob.objects.with_ids(iter(wanted))) == sorted(WEIRD_IDS[1:])
    assert ids(DjangoJob.objects.exclude(id="plain").exclude(id__startswith="other")) == ids(
        DjangoJob.objects.with_ids(wanted)
    )
    assert ids(DjangoJob.objects.exclude(id__in=DjangoJob.objects.with_ids(wanted))) == sorted(
        ["plain"] + [f"other-{i}" for i in range(5)]
    )
    assert list(DjangoJob.objects.with_ids([])) == []
    with transaction.atomic():
        backend = backends.for_alias("default")
        locked = backend.lock_for_write(DjangoJob.objects.with_ids(wanted[:2]), "default")
        assert ids(locked) == sorted(wanted[:2])
    assert DjangoJob.objects.with_ids(wanted).claim("me", NOW) == len(WEIRD_IDS) - 1
    assert ids(DjangoJob.objects.held_by("me")) == sorted(WEIRD_IDS[1:])


def test_due_and_the_state_filters():
    store_job("soon", next_run_time=FUTURE)
    store_job("later", next_run_time=FUTURE + timedelta(days=1))
    store_job("paused", next_run_time=None)
    store_finished_job("done")
    assert ids(DjangoJob.objects.due(FUTURE)) == ["soon"]
    assert ids(DjangoJob.objects.due(FUTURE + timedelta(days=1))) == ["later", "soon"]
    assert ids(DjangoJob.objects.finished()) == ["done"]
    assert ids(DjangoJob.objects.unfinished()) == ["later", "paused", "soon"]
    assert ids(DjangoJob.objects.scheduled()) == ["later", "soon"]
    assert ids(DjangoJob.objects.paused()) == ["paused"]


def test_one_classification_of_every_row_state():
    store_job("scheduled")
    store_job("paused", next_run_time=None)
    store_finished_job("finished")
    store_broken_job("broken")
    states = {row.id: row.classify() for row in DjangoJob.objects.all()}

    assert {job_id: s.name for job_id, s in states.items()} == {
        "scheduled": "scheduled",
        "paused": "paused",
        "finished": "finished",
        "broken": "broken",
    }
    assert states["scheduled"].job is not None and states["scheduled"].job.id == "scheduled"
    assert states["paused"].job is not None and states["paused"].reason == ""
    assert states["finished"].job is None and states["finished"].error is None
    assert states["broken"].job is None
    assert "no_such_function" in states["broken"].reason
    assert states["broken"].reason.startswith(type(states["broken"].error).__name__ + ": ")
    # The function gives the same answer from the two columns alone.
    row = DjangoJob.objects.get(id="paused")
    assert classify_job(row.id, row.job_state, row.job_signature, row.next_run_time).name == (
        "paused"
    )


@override_settings(APSCHEDULER_LEASE_TIME=30)
def test_alive_and_dead_instances_split_at_the_lease_time():
    for name, age in (("fresh", 0), ("edge", 30), ("old", 31)):
        DjangoSchedulerInstance.objects.create(
            id=name, host="h", pid=1, started=NOW, last_heartbeat=NOW - timedelta(seconds=age)
        )
    assert ids(DjangoSchedulerInstance.objects.alive(NOW)) == ["edge", "fresh"]
    assert ids(DjangoSchedulerInstance.objects.dead(NOW)) == ["old"]
    rows = {row.id: row.is_alive(NOW) for row in DjangoSchedulerInstance.objects.all()}
    assert rows == {"fresh": True, "edge": True, "old": False}
    # Without a time, the current one: heartbeats in 2030 are all fresh today.
    assert ids(DjangoSchedulerInstance.objects.alive()) == ["edge", "fresh", "old"]
    assert ids(DjangoSchedulerInstance.objects.dead()) == []


def test_unfinished_runs_of_an_instance_are_interrupted_and_final_ones_kept():
    store_job("job")
    make = DjangoJobExecution.objects.create
    make(job_id="job", run_time=NOW, status=DjangoJobExecution.SENT, instance="a")
    make(job_id="job", run_time=NOW + timedelta(1), status=DjangoJobExecution.SUCCESS, instance="a")
    make(job_id="job", run_time=NOW + timedelta(2), status=DjangoJobExecution.SENT, instance="b")

    unfinished = DjangoJobExecution.objects.unfinished_of("a")
    assert [e.run_time for e in unfinished] == [NOW]
    reason = "Interrupted: instance a went away. " + "x" * 2000
    assert unfinished.interrupt(reason) == 1
    assert DjangoJobExecution.objects.unfinished_of("a").count() == 0

    stopped = DjangoJobExecution.objects.get(run_time=NOW)
    assert stopped.status == DjangoJobExecution.INTERRUPTED
    assert stopped.exception == reason[: executions.EXCEPTION_MAX_LENGTH]
    assert stopped.finished is not None
    assert DjangoJobExecution.objects.get(run_time=NOW + timedelta(1)).status == (
        DjangoJobExecution.SUCCESS
    )
    assert DjangoJobExecution.objects.get(instance="b").status == DjangoJobExecution.SENT
    # interrupt() on a selection never overwrites a final status.
    assert DjangoJobExecution.objects.filter(job_id="job").interrupt("again") == 1
    assert DjangoJobExecution.objects.get(run_time=NOW + timedelta(1)).status == (
        DjangoJobExecution.SUCCESS
    )


def test_the_070_manager_method_is_still_there():
    store_finished_job("done")
    store_job("job")
    DjangoJobExecution.objects.create(
        job_id="job",
        run_time=datetime.now(UTC) - timedelta(days=400),
        status=DjangoJobExecution.SUCCESS,
    )
    assert DjangoJobExecution.objects.delete_old_job_executions(3600) == 1
    # The finished record without executions goes too; the live job stays.
    assert ids(DjangoJob.objects.all()) == ["job"]


# --- written once: nobody writes these queries again by hand -----------------------------


def _calls(method: str) -> list[tuple[str, int, ast.Call]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == method
            ):
                found.append((path.relative_to(PACKAGE).as_posix(), node.lineno, node))
    return found


def _keywords(call: ast.Call) -> set[str]:
    return {kw.arg for kw in call.keywords if kw.arg is not None}


def test_row_locks_are_taken_only_in_backends():
    """``select_for_update`` differs by vendor (skip locked, no key): only backends calls it."""
    outside = [(p, line) for p, line, _ in _calls("select_for_update") if p != "backends.py"]
    assert outside == []


def test_claims_heartbeats_and_interruptions_are_written_only_in_models():
    """Releasing, claiming, liveness and interrupting are queryset methods in models.py."""
    by_hand = []
    for method in ("update", "filter", "exclude"):
        for path, line, call in _calls(method):
            keys = _keywords(call)
            written = (
                {"acquired_by", "acquired_until"} <= keys
                or any(k.startswith("last_heartbeat__") for k in keys)
                or (method == "update" and "status" in keys and "exception" in keys)
            )
            if written and path != "models.py":
                by_hand.append((path, line, method, sorted(keys)))
    assert by_hand == []


def test_job_states_are_classified_only_in_models():
    """admin, the command and run_now classify rows through ``classify_job``, not restore_job."""
    users = sorted(
        {p for p, _, _ in _calls("restore_job")} | {p for p, _, _ in _name_calls("restore_job")}
    )
    assert [p for p in users if p not in ("jobstores.py", "models.py")] == []


def _name_calls(name: str) -> list[tuple[str, int, ast.Call]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id == name:
                    found.append((path.relative_to(PACKAGE).as_posix(), node.lineno, node))
    return found
