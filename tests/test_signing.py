"""Signed job rows: whoever can write the job table cannot run code through it.

A planted ``__reduce__`` payload would create a marker directory when
unpickled; every way of reading a job (dispatch, lookup, ``get_jobs``, the
admin, the ``apscheduler`` command and its health probe, ``run_now``, the
client) must leave it uncreated, report the row broken ("unsigned" or
"signature mismatch") with its id, and keep every other job working.
"""

from __future__ import annotations

import ast
import importlib
import io
import json
import logging
import os
import pickle
import subprocess
import sys
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from django.apps import apps
from django.core import checks
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import override_settings

from django_apscheduler import client, signing, util
from django_apscheduler.checks import check_signed_jobs
from django_apscheduler.exceptions import UnrestorableJobError, UntrustedJobStateError
from django_apscheduler.jobstores import DjangoJobStore, restore_job
from django_apscheduler.models import DjangoJob, classify_job
from django_apscheduler.run_now import RunStatus, run_jobs_now
from tests import jobs
from tests.helpers import wait_until

UTC = dt_timezone.utc
ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "django_apscheduler"
JOBS_URL = "/admin/django_apscheduler/djangojob/"


class Planted:
    """Unpickling this runs ``os.mkdir(marker)``: what an attacker would plant."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def payload(marker: Path) -> bytes:
    """A job state that looks like APScheduler's and runs code when unpickled."""
    return pickle.dumps({"version": 1, "id": "evil", "func": Planted(str(marker))})


def good_state(job_id: str, next_run_time: datetime | None) -> bytes:
    job = Job(
        BackgroundScheduler(timezone="UTC"),
        id=job_id,
        func=jobs.record,
        trigger=IntervalTrigger(hours=1, timezone="UTC"),
        executor="default",
        args=(job_id,),
        kwargs={},
        name=job_id,
        misfire_grace_time=3600,
        coalesce=True,
        max_instances=1,
        next_run_time=next_run_time,
    )
    return pickle.dumps(job.__getstate__())


def now() -> datetime:
    return datetime.now(UTC)


def plant(marker: Path, good_id: str = "good", due: datetime | None = None) -> dict[str, DjangoJob]:
    """Three planted rows next to a signed job: unsigned, a wrong signature, a swapped row."""
    due = due or now() - timedelta(seconds=1)
    state = good_state(good_id, due)
    good = DjangoJob.objects.create(
        id=good_id, next_run_time=due, job_state=state, job_signature=signing.sign(good_id, state)
    )
    evil = payload(marker)
    rows = {
        "good": good,
        "unsigned": DjangoJob.objects.create(id="unsigned", next_run_time=due, job_state=evil),
        "forged": DjangoJob.objects.create(
            id="forged", next_run_time=due, job_state=evil, job_signature="0" * 64
        ),
        # Another row's valid state and signature, under this id.
        "swapped": DjangoJob.objects.create(
            id="swapped", next_run_time=due, job_state=state, job_signature=good.job_signature
        ),
    }
    return rows


PROBLEMS = {"unsigned": "unsigned", "forged": "signature mismatch", "swapped": "signature mismatch"}


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "payload-ran"
    yield path
    assert not path.exists(), "the planted payload was executed"


@pytest.fixture
def store():
    scheduler = BackgroundScheduler(timezone="UTC")
    jobstore = DjangoJobStore()
    jobstore.start(scheduler, "default")
    yield jobstore
    jobstore.shutdown()


# --- the signature itself (no database) ------------------------------------------------------


def test_a_signature_verifies_for_its_own_id_and_state_only():
    state = b"\x80\x05state"
    signature = signing.sign("job", state)
    assert len(signature) == signing.SIGNATURE_LENGTH
    checked = signing.check("job", state, signature)
    assert checked.ok and checked.current and checked.state == state
    assert isinstance(checked.state, signing.Verified)
    assert signing.check("job", memoryview(state), signature).ok  # PostgreSQL's type
    assert signing.check("job", state + b"x", signature).problem == "signature mismatch"
    assert signing.check("job", state[:-1], signature).problem == "signature mismatch"
    assert signing.check("other", state, signature).problem == "signature mismatch"
    assert signing.check("job", state, None).problem == "unsigned"
    assert signing.check("job", state, "").problem == "unsigned"
    assert signing.check("job", state, signature.upper()).problem == "signature mismatch"
    assert signing.check("job", None, signature).problem == "signature mismatch"
    # The id and the state cannot trade bytes: "ab" + "c" is not "a" + "bc".
    assert signing.sign("ab", b"c") != signing.sign("a", b"bc")


def test_the_key_is_derived_from_secret_key_with_our_own_salt():
    from django.utils.crypto import salted_hmac

    expected = salted_hmac(
        "django_apscheduler.signing.job_state", b"3:job" + b"state", algorithm="sha256"
    ).hexdigest()
    assert signing.sign("job", b"state") == expected
    with override_settings(SECRET_KEY="another-key"):
        assert signing.sign("job", b"state") != expected


def test_rotation_accepts_fallback_keys_until_they_are_dropped():
    with override_settings(SECRET_KEY="old-key"):
        old = signing.sign("job", b"state")
    with override_settings(SECRET_KEY="new-key", SECRET_KEY_FALLBACKS=["old-key"]):
        checked = signing.check("job", b"state", old)
        assert checked.ok and not checked.current
        assert signing.check("job", b"state", signing.sign("job", b"state")).current
    with override_settings(SECRET_KEY="new-key", SECRET_KEY_FALLBACKS=[]):
        assert signing.check("job", b"state", old).problem == "signature mismatch"


def test_only_verified_bytes_are_unpickled(marker):
    evil = payload(marker)
    with pytest.raises(TypeError, match="signature was checked"):
        signing.loads(evil)  # type: ignore[arg-type]
    with pytest.raises(UntrustedJobStateError, match="unsigned") as raised:
        signing.load_state("evil", evil, None)
    assert raised.value.job_id == "evil" and "apscheduler sign evil" in str(raised.value)
    with pytest.raises(UntrustedJobStateError):
        restore_job("evil", evil, "f" * 64)
    assert util.state_next_run_time("evil", evil, None) is None
    assert classify_job("evil", evil, None, None).reason == "unsigned"


def test_no_module_unpickles_a_stored_state_but_signing():
    """``pickle.loads`` appears in signing.py, and in replacing.py only on its own fresh pickle."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("loads", "load", "Unpickler")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "pickle"
            ):
                found.append((path.relative_to(PACKAGE).as_posix(), ast.unparse(node)))
    assert found == [
        ("replacing.py", "pickle.loads(pickle.dumps(state, protocol))"),  # definition()
        ("signing.py", "pickle.loads(state)"),
    ]


# --- the job store ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_store_never_unpickles_planted_rows_and_reports_each_once(store, marker, caplog):
    plant(marker)
    with caplog.at_level(logging.ERROR, logger="django_apscheduler"):
        due = store.get_due_jobs(now())
        assert [job.id for job in due] == ["good"]
        store.get_next_run_time()
        assert [job.id for job in store.get_all_jobs()] == ["good"]
        for job_id, problem in PROBLEMS.items():
            with pytest.raises(UnrestorableJobError, match=problem) as raised:
                store.lookup_job(job_id)
            assert isinstance(raised.value.reason, UntrustedJobStateError)
        store.get_due_jobs(now())
    for job_id, problem in PROBLEMS.items():
        logged = [r.getMessage() for r in caplog.records if f"{job_id!r}" in r.getMessage()]
        assert len(logged) == 1, logged
        assert problem in logged[0] and "apscheduler sign" in logged[0]
    # Kept, untouched, released.
    assert DjangoJob.objects.filter(id__in=list(PROBLEMS)).count() == 3
    assert not DjangoJob.objects.filter(id__in=list(PROBLEMS), acquired_by__isnull=False).exists()
    # Left out of the next wake-up time: the scheduler does not spin on them.
    assert store.get_next_run_time() is not None


@pytest.mark.django_db(transaction=True)
def test_every_write_signs_with_the_current_key(store):
    from tests.test_jobstore import make_job

    at = now() + timedelta(hours=1)
    store.add_job(make_job(store, id="a", next_run_time=at))
    job = make_job(store, id="a", next_run_time=at + timedelta(minutes=1))
    store.update_job(job)
    row = DjangoJob.objects.get(id="a")
    assert signing.check("a", row.job_state, row.job_signature).current
    # A dispatch round's write-back, and its merge with a row changed meanwhile.
    DjangoJob.objects.filter(id="a").update(next_run_time=now() - timedelta(seconds=1))
    [due] = store.get_due_jobs(now())
    DjangoJob.objects.filter(id="a").update(version=99)  # changed elsewhere: _resolve merges
    due.next_run_time = now() + timedelta(hours=2)
    store.update_job(due)
    store.get_next_run_time()
    row = DjangoJob.objects.get(id="a")
    assert row.acquired_by is None and row.version == 100
    assert signing.check("a", row.job_state, row.job_signature).current
    assert util.utc(store.lookup_job("a").next_run_time) == util.utc(due.next_run_time)


@pytest.mark.django_db(transaction=True)
def test_rows_signed_with_a_fallback_key_run_and_are_re_signed_when_written(store):
    from tests.test_jobstore import make_job

    with override_settings(SECRET_KEY="old-key"):
        store.add_job(make_job(store, id="rotated", next_run_time=now() - timedelta(seconds=1)))
        store.add_job(make_job(store, id="idle", next_run_time=now() + timedelta(days=1)))
    with override_settings(SECRET_KEY="new-key", SECRET_KEY_FALLBACKS=["old-key"]):
        [due] = store.get_due_jobs(now())
        assert due.id == "rotated"
        due.next_run_time = now() + timedelta(hours=1)
        store.update_job(due)  # the dispatch's write-back
        store.get_next_run_time()
        row = DjangoJob.objects.get(id="rotated")
        assert signing.check("rotated", row.job_state, row.job_signature).current
        assert store.lookup_job("idle") is not None  # still valid, not written yet
        assert [s for s in DjangoJob.objects.filter(id="idle").sign()] == [
            ("idle", "signed with an old key")
        ]
    with override_settings(SECRET_KEY="new-key", SECRET_KEY_FALLBACKS=[]):
        assert {job.id for job in store.get_all_jobs()} == {"rotated", "idle"}


@pytest.mark.django_db(transaction=True)
def test_a_dropped_key_leaves_its_rows_broken_not_deleted(store):
    from tests.test_jobstore import make_job

    with override_settings(SECRET_KEY="old-key"):
        store.add_job(make_job(store, id="stale", next_run_time=now() + timedelta(days=1)))
    assert store.get_all_jobs() == []
    with pytest.raises(UnrestorableJobError, match="signature mismatch"):
        store.lookup_job("stale")
    assert DjangoJob.objects.filter(id="stale").exists()


@pytest.mark.django_db(transaction=True)
def test_replace_existing_over_a_planted_row_writes_a_signed_job(store, marker):
    plant(marker)
    scheduler = BackgroundScheduler(jobstores={"default": DjangoJobStore()}, timezone="UTC")
    scheduler.start(paused=True)
    try:
        scheduler.add_job(jobs.record, "interval", hours=1, id="unsigned", replace_existing=True)
        job = scheduler.get_job("unsigned")
        assert job is not None and job.func is jobs.record
    finally:
        scheduler.shutdown()
    row = DjangoJob.objects.get(id="unsigned")
    assert signing.check("unsigned", row.job_state, row.job_signature).current


@pytest.mark.django_db(transaction=True)
def test_a_running_scheduler_fires_good_jobs_next_to_planted_rows(make_scheduler, marker):
    plant(marker)
    scheduler = make_scheduler()
    scheduler.add_job(jobs.record, "interval", seconds=1, args=["tick"], id="tick")
    wait_until(lambda: [tag for tag, _ in jobs.calls].count("tick") >= 2, timeout=30)
    wait_until(lambda: "good" in [tag for tag, _ in jobs.calls], timeout=30)
    assert scheduler.running
    assert set(DjangoJob.objects.values_list("id", flat=True)) >= set(PROBLEMS)


@pytest.mark.django_db(transaction=True)
def test_the_ambiguous_local_time_path_reads_no_planted_state(marker):
    """``USE_TZ = False`` in the repeated autumn hour reads the state: only a signed one."""
    from django_apscheduler import coordination

    evil = payload(marker)
    repeated = datetime(2030, 10, 27, 2, 30)
    with override_settings(USE_TZ=False, TIME_ZONE="Europe/Berlin"):
        assert util.is_ambiguous(repeated)
        assert coordination._instant("x", repeated, evil, None) is not None
        signed = good_state("x", None)
        assert util.state_next_run_time("x", signed, signing.sign("x", signed)) is None
        assert util.state_next_run_time("x", signed, None) is None


# --- run_now and the client ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_run_now_and_the_client_refuse_planted_rows(marker):
    plant(marker, due=now() + timedelta(days=1))
    outcomes = {o.job_id: o for o in run_jobs_now(["good", *PROBLEMS], timeout=30)}
    assert outcomes["good"].status is RunStatus.SUCCEEDED
    for job_id, problem in PROBLEMS.items():
        assert outcomes[job_id].status is RunStatus.BROKEN
        assert problem in outcomes[job_id].message
        with pytest.raises(UnrestorableJobError, match=problem):
            client.get_job(job_id)
        with pytest.raises(UnrestorableJobError, match=problem):
            client.pause_job(job_id)
    assert [job.id for job in client.get_jobs()] == ["good"]


# --- the admin ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_admin_pages_show_planted_rows_broken_to_view_only_staff(client, marker):
    from tests.test_admin import cell, row_of, user_with

    plant(marker)
    client.force_login(user_with("view_djangojob"))
    page = client.get(JOBS_URL)
    assert page.status_code == 200
    html = page.content.decode()
    assert "scheduled" in cell(row_of(html, ">good<"), "state")
    for job_id, problem in PROBLEMS.items():
        assert f"broken: {problem}" in cell(row_of(html, f">{job_id}<"), "state")
        change = client.get(f"{JOBS_URL}{job_id}/change/")
        assert change.status_code == 200
        assert f"broken: {problem}" in change.content.decode()
        delete = client.get(f"{JOBS_URL}{job_id}/delete/")
        assert delete.status_code in (200, 302, 403)


@pytest.mark.django_db(transaction=True)
def test_admin_action_refuses_planted_rows(admin_client, marker):
    from django.contrib.messages import get_messages

    plant(marker, due=now() + timedelta(days=1))
    response = admin_client.post(
        JOBS_URL,
        {"action": "run_selected_jobs", "_selected_action": list(PROBLEMS), "index": "0"},
    )
    messages = [m.message for m in get_messages(response.wsgi_request)]
    for job_id, problem in PROBLEMS.items():
        assert any(f"'{job_id}'" in m and problem in m for m in messages), messages


# --- the apscheduler command --------------------------------------------------------------


def command(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("apscheduler", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return exc.returncode, out.getvalue() + err.getvalue() + str(exc)
    return 0, out.getvalue() + err.getvalue()


def apscheduler(*args: str) -> subprocess.CompletedProcess:
    """``python -m django apscheduler *args`` in a real process on the test database."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["DJANGO_APSCHEDULER_TEST_DB_NAME"] = connection.settings_dict["NAME"]
    env.pop("DJANGO_APSCHEDULER_TEST_SETTINGS", None)
    return subprocess.run(
        [sys.executable, "-m", "django", "apscheduler", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.django_db(transaction=True)
def test_list_run_and_health_report_planted_rows_without_running_them(marker):
    plant(marker, due=now() + timedelta(days=1))
    code, text = command("list", "--format", "json")
    assert code == 0
    states = {job["id"]: job["state"] for job in json.loads(text)}
    assert states["good"] == "scheduled"
    for job_id, problem in PROBLEMS.items():
        assert states[job_id] == f"broken ({problem})"
    code, text = command("run", "unsigned")
    assert code == 1 and "unsigned" in text
    code, text = command("pause", "forged")
    assert code == 1 and "signature mismatch" in text
    # The health probe, as a container runs it: a real process.
    probe = apscheduler("health", "--no-instance")
    assert probe.returncode == 1, probe.stdout + probe.stderr
    for job_id, problem in PROBLEMS.items():
        assert probe.stderr.count(f"{job_id} ({problem})") == 1, probe.stderr
    assert "good" not in probe.stderr
    assert "apscheduler sign JOB_ID" in probe.stderr


@pytest.mark.django_db(transaction=True)
def test_sign_signs_the_named_rows_and_says_what_it_signed(marker):
    state = good_state("restored", now() + timedelta(days=1))
    DjangoJob.objects.create(id="restored", next_run_time=None, job_state=state)
    with override_settings(SECRET_KEY="elsewhere"):
        other = DjangoJob.objects.create(
            id="other-env", next_run_time=None, job_state=state,
            job_signature=signing.sign("other-env", state),
        )  # fmt: skip
    assert other.classify().reason == "signature mismatch"
    DjangoJob.objects.create(id="finished", next_run_time=None, job_state=b"")
    code, text = command("sign", "restored")
    assert code == 0
    assert "restored: signed (was unsigned)." in text and "Signed 1 jobs" in text
    assert DjangoJob.objects.get(id="restored").classify().name == "paused"
    assert DjangoJob.objects.get(id="other-env").classify().name == "broken"
    code, text = command("sign", "restored")
    assert code == 0 and "Signed 0 jobs" in text
    code, text = command("sign", "nope", "restored")
    assert code == 1 and "'nope'" in text
    code, text = command("sign", "--all")
    assert code == 0
    assert "other-env: signed (was signature mismatch)." in text
    assert "finished: signed (was unsigned)." in text
    assert "restored" not in text.split("Signed")[0]
    assert DjangoJob.objects.get(id="other-env").classify().name == "paused"
    with pytest.raises(CommandError):
        call_command("apscheduler", "sign", stdout=io.StringIO(), stderr=io.StringIO())


@pytest.mark.django_db(transaction=True)
def test_sign_old_keys_re_signs_only_rows_a_fallback_key_verifies(marker):
    state = good_state("rotated", None)
    with override_settings(SECRET_KEY="old-key"):
        signature = signing.sign("rotated", state)
    DjangoJob.objects.create(
        id="rotated", next_run_time=None, job_state=state, job_signature=signature
    )
    DjangoJob.objects.create(id="planted", next_run_time=None, job_state=payload(marker))
    with override_settings(SECRET_KEY="new-key", SECRET_KEY_FALLBACKS=["old-key"]):
        code, text = command("sign", "--old-keys")
        assert code == 0
        assert "rotated: signed (was signed with an old key)." in text
        assert "planted" not in text and "Signed 1 jobs" in text
    with override_settings(SECRET_KEY="new-key"):
        assert DjangoJob.objects.get(id="rotated").classify().name == "paused"
        assert DjangoJob.objects.get(id="planted").classify().reason == "unsigned"


@pytest.mark.django_db(transaction=True)
def test_a_real_sign_process_signs_a_restored_row():
    state = good_state("backup", None)
    DjangoJob.objects.create(id="backup", next_run_time=None, job_state=state)
    done = apscheduler("sign", "backup")
    assert done.returncode == 0, done.stderr
    assert "backup: signed (was unsigned)." in done.stdout
    row = DjangoJob.objects.get(id="backup")
    assert signing.check("backup", row.job_state, row.job_signature).current


# --- the system check and the data migration --------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_database_check_warns_about_unsigned_rows_by_id(marker):
    assert check_signed_jobs(databases=["default"]) == []
    plant(marker)
    DjangoJob.objects.create(id="finished", next_run_time=None, job_state=b"")  # not a job
    [warning] = check_signed_jobs(databases=["default"])
    assert warning.level == checks.WARNING and warning.id == "django_apscheduler.W002"
    assert "3 stored jobs" in warning.msg
    for job_id, problem in PROBLEMS.items():
        assert f"'{job_id}' ({problem})" in warning.msg
    assert "apscheduler sign" in warning.hint
    assert check_signed_jobs(databases=[]) == []  # a database check only


@pytest.mark.django_db(transaction=True)
def test_the_migration_signs_the_rows_it_finds_without_reading_them(marker):
    migration = importlib.import_module(
        "django_apscheduler.migrations.0013_djangojob_job_signature"
    )
    evil = payload(marker)
    DjangoJob.objects.create(id="legacy", next_run_time=None, job_state=evil)
    DjangoJob.objects.create(id="done", next_run_time=None, job_state=b"")
    migration.sign_existing_rows(apps, SimpleNamespace(connection=connection))
    for row in DjangoJob.objects.all():
        assert signing.check(row.id, row.job_state, row.job_signature).current
    # Trusted by the operator who ran migrate: signed as found, not inspected.
    assert bytes(DjangoJob.objects.get(id="legacy").job_state) == evil
