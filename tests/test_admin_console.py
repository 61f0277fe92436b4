"""The admin as an operations console, through real requests on the real database.

Columns, filters and search of the jobs list; each action with its own
permission, its message and its LogEntry; the pause note; the create/edit
form (allow-list, validation naming field and value, the 5-fire preview, the
store path); the job page (last runs, chart, notices); the dashboard; removal
keeping history; view-only users refused by forged POSTs; escaping.
"""

from __future__ import annotations

import re
import subprocess
import sys
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import django
import pytest
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.db import OperationalError, connection
from django.urls import reverse

from django_apscheduler import checks, client, console
from django_apscheduler.models import DjangoJob, DjangoJobExecution, DjangoSchedulerInstance
from tests import jobs
from tests.helpers import runapscheduler_env
from tests.test_admin import cell, row_of
from tests.test_run_now import store_broken_job, store_finished_job, store_job

UTC = timezone.utc
JOBS_URL = "/admin/django_apscheduler/djangojob/"
ADD_URL = JOBS_URL + "add/"
DASHBOARD_URL = JOBS_URL + "dashboard/"
EXECUTIONS_URL = "/admin/django_apscheduler/djangojobexecution/"

pytestmark = pytest.mark.django_db(transaction=True)


def change_url(job_id: str) -> str:
    return reverse("admin:django_apscheduler_djangojob_change", args=[job_id])


def act(client_, action: str, *job_ids: str, **extra):
    return client_.post(
        JOBS_URL, {"action": action, "_selected_action": list(job_ids), "index": "0", **extra}
    )


def texts(response) -> list[str]:
    return [m.message for m in get_messages(response.wsgi_request)]


def staff(*codenames: str, name: str = "staff") -> User:
    user = User.objects.create_user(name, password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="django_apscheduler", codename__in=codenames
        )
    )
    return user


def log_messages(job_id: str) -> list[tuple[int, str]]:
    return [
        (entry.action_flag, entry.get_change_message())
        for entry in LogEntry.objects.filter(object_id=job_id).order_by("action_time", "id")
    ]


def add_run(job_id: str, status: str, minutes_ago: float, duration: str | None = "1.00", **kw):
    return DjangoJobExecution.objects.create(
        job_id=job_id,
        status=status,
        run_time=datetime.now(UTC) - timedelta(minutes=minutes_ago),
        duration=None if duration is None else Decimal(duration),
        **kw,
    )


def interval_form(job_id: str = "made", **changes) -> dict:
    data = {
        "id": job_id,
        "func": "tests.jobs:admin_record",
        "name": "",
        "trigger": "interval",
        "minutes": "10",
        "timezone": "UTC",
        "kwargs": '{"tag": "from-form"}',
        "misfire_grace_time": "30",
        "coalesce": "unknown",
        "max_instances": "",
    }
    data.update(changes)
    return data


# --- the list ---------------------------------------------------------------------------


def test_list_shows_schedule_state_next_and_last_run_durations_failures(admin_client):
    client.add_job(
        jobs.admin_record,
        "cron",
        hour=3,
        day_of_week="mon-fri",
        id="nightly",
        timezone="Europe/Berlin",
    )
    client.add_job(jobs.admin_record, "interval", seconds=10, id="often")
    for minutes, status in enumerate(
        [DjangoJobExecution.ERROR, DjangoJobExecution.SUCCESS, DjangoJobExecution.INTERRUPTED]
    ):
        add_run("often", status, minutes_ago=minutes + 1, duration=str(minutes + 1))

    html = admin_client.get(JOBS_URL).content.decode()
    for header in (
        "Schedule",
        "Next run",
        "Last run",
        "Last duration (sec)",
        "Failures (last 20)",
        "Overdue",
    ):
        assert f">{header}<" in html

    nightly = row_of(html, ">nightly</a>")
    assert cell(nightly, "schedule") == "at 03:00 on weekdays (Europe/Berlin)"
    assert cell(nightly, "next_run_in").startswith("in ")
    assert cell(nightly, "last_run") == "-"

    often = row_of(html, ">often</a>")
    assert cell(often, "schedule") == "every 10 seconds"
    assert "dja-state-scheduled" in cell(often, "state")
    last = cell(often, "last_run")
    assert "ago" in last and 'class="dja-status dja-error"' in last and "Error!" in last
    assert cell(often, "last_duration") == "1.00"
    assert cell(often, "average_duration") == "2.00"
    assert ">2 / 3<" in cell(often, "recent_failures")
    assert "overdue" not in cell(often, "overdue")


def test_failures_count_only_the_last_20_runs(admin_client):
    store_job("busy")
    for i in range(25):
        status = DjangoJobExecution.ERROR if i >= 20 else DjangoJobExecution.SUCCESS
        add_run("busy", status, minutes_ago=i + 1)  # the 5 failures are the oldest
    html = admin_client.get(JOBS_URL).content.decode()
    assert ">0 / 20<" in cell(row_of(html, ">busy</a>"), "recent_failures")


def test_overdue_mark_and_filter(admin_client):
    late = store_job("late", next_run_time=datetime.now(UTC) - timedelta(hours=1))
    store_job("soon", next_run_time=datetime.now(UTC) + timedelta(hours=1))
    store_job("held", next_run_time=datetime.now(UTC) - timedelta(hours=1))
    now = datetime.now(UTC)
    DjangoSchedulerInstance.objects.create(
        id="live:1:x", host="live", pid=1, started=now, last_heartbeat=now
    )
    DjangoJob.objects.filter(id="held").update(acquired_by="live:1:x", acquired_until=now)

    html = admin_client.get(JOBS_URL).content.decode()
    assert "overdue" in cell(row_of(html, ">late</a>"), "overdue")
    assert "overdue" not in cell(row_of(html, ">soon</a>"), "overdue")
    assert "overdue" not in cell(row_of(html, ">held</a>"), "overdue")  # a scheduler holds it

    response = admin_client.get(JOBS_URL, {"overdue": "yes"})
    assert [j.id for j in response.context["cl"].result_list] == [late.id]
    response = admin_client.get(JOBS_URL, {"overdue": "no"})
    assert {j.id for j in response.context["cl"].result_list} == {"soon", "held"}


def test_state_and_origin_filters_and_search_by_function(admin_client):
    store_job("sched", jobs.record)
    store_job("paused", jobs.noop, next_run_time=None)
    store_broken_job("broken")
    store_finished_job("done")
    DjangoJob.objects.filter(id="sched").update(declared_in_code=True)

    def ids(**params) -> set[str]:
        response = admin_client.get(JOBS_URL, params)
        assert response.status_code == 200
        return {j.id for j in response.context["cl"].result_list}

    assert ids(state="scheduled") == {"sched"}
    assert ids(state="paused") == {"paused"}
    assert ids(state="broken") == {"broken"}
    assert ids(state="finished") == {"done"}
    assert ids(origin="code") == {"sched"}
    assert ids(origin="runtime") == {"paused", "broken", "done"}
    assert ids(q="jobs:record") == {"sched"}
    assert ids(q="NOOP") == {"paused"}
    assert ids(q="sched") == {"sched"}


# --- actions, permissions, LogEntry --------------------------------------------------------


def test_run_in_scheduler_sets_the_next_run_time_to_now_and_logs_it(admin_client):
    store_job("soon-please", jobs.record)
    before = datetime.now(UTC)
    response = act(admin_client, "run_in_scheduler", "soon-please")
    assert response.status_code == 302
    assert texts(response) == ["Job soon-please runs now in the scheduler."]
    row = DjangoJob.objects.get(id="soon-please")
    assert before - timedelta(seconds=1) <= row.next_run_time <= datetime.now(UTC)
    assert jobs.calls == []  # not run in the web process
    assert log_messages("soon-please") == [(CHANGE, "Asked the schedulers to run it now")]


def test_run_in_scheduler_refuses_a_paused_job_by_name(admin_client):
    store_job("resting", next_run_time=None)
    response = act(admin_client, "run_in_scheduler", "resting")
    [message] = texts(response)
    assert "resting" in message and "paused" in message
    assert DjangoJob.objects.get(id="resting").next_run_time is None
    assert log_messages("resting") == []


def test_run_here_leaves_a_log_entry(admin_client):
    store_job("rec", jobs.record)
    act(admin_client, "run_selected_jobs", "rec")
    assert log_messages("rec") == [(CHANGE, "Ran now in the web process: succeeded")]


def test_pause_note_shows_until_the_job_is_resumed(admin_client):
    store_job("noted", jobs.record)
    response = act(admin_client, "pause_jobs", "noted", note="waiting for <b>the vendor</b>")
    assert texts(response) == ["Paused job noted."]
    assert DjangoJob.objects.get(id="noted").next_run_time is None

    html = admin_client.get(JOBS_URL).content.decode()
    state = cell(row_of(html, ">noted</a>"), "state")
    assert "waiting for &lt;b&gt;the vendor&lt;/b&gt;" in state
    page = admin_client.get(change_url("noted")).content.decode()
    assert "waiting for &lt;b&gt;the vendor&lt;/b&gt;" in page
    assert "<b>the vendor</b>" not in page

    response = act(admin_client, "resume_jobs", "noted")
    [message] = texts(response)
    assert message.startswith("Resumed job noted; next run: ")
    row = DjangoJob.objects.get(id="noted")
    assert row.next_run_time is not None and row.pause_note is None
    html = admin_client.get(JOBS_URL).content.decode()
    assert "the vendor" not in html
    assert "the vendor" not in admin_client.get(change_url("noted")).content.decode()
    assert log_messages("noted") == [
        (CHANGE, "Paused: waiting for <b>the vendor</b>"),
        (CHANGE, "Resumed"),
    ]


def test_a_note_left_by_a_pause_is_not_shown_once_resumed_elsewhere(admin_client):
    store_job("elsewhere", jobs.record)
    console.pause("elsewhere", "maintenance window")
    client.resume_job("elsewhere")  # e.g. from the shell: the note is stale
    html = admin_client.get(JOBS_URL).content.decode()
    assert "maintenance window" not in html


@pytest.mark.parametrize(
    "action, codename",
    [
        ("run_selected_jobs", "run_djangojob"),
        ("run_in_scheduler", "trigger_djangojob"),
        ("pause_jobs", "pause_djangojob"),
        ("resume_jobs", "pause_djangojob"),
        ("delete_selected", "delete_djangojob"),
    ],
)
def test_each_action_needs_its_own_permission(client, action, codename):
    others = {
        "run_djangojob",
        "trigger_djangojob",
        "pause_djangojob",
        "delete_djangojob",
        "change_djangojob",
        "add_djangojob",
    } - {codename}
    client.force_login(staff("view_djangojob", *others))
    store_job("guarded", jobs.record)
    before = DjangoJob.objects.values().get(id="guarded")

    assert f'value="{action}"' not in client.get(JOBS_URL).content.decode()
    act(client, action, "guarded", post="yes")
    assert DjangoJob.objects.values().get(id="guarded") == before
    assert jobs.calls == [] and not LogEntry.objects.exists()

    client.force_login(staff("view_djangojob", codename, name="allowed"))
    assert f'value="{action}"' in client.get(JOBS_URL).content.decode()


def test_view_only_user_sees_everything_and_changes_nothing(client):
    store_job("watched", jobs.record)
    add_run("watched", DjangoJobExecution.SUCCESS, minutes_ago=1)
    client.force_login(staff("view_djangojob", "view_djangojobexecution"))
    before = list(DjangoJob.objects.values())

    listing = client.get(JOBS_URL).content.decode()
    assert ">watched</a>" in listing
    assert 'name="action"' not in listing  # no action bar at all
    assert "addlink" not in listing
    page = client.get(change_url("watched"))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="_save"' not in html and 'name="_preview"' not in html
    assert "dja-operation" not in html  # no buttons on the job's page either
    assert "dja-chart" in html and "tests.jobs:record" in html
    assert client.get(DASHBOARD_URL).status_code == 200

    # Forged POSTs: each action, the add and change forms, the preview, the delete page.
    for action in (
        "run_selected_jobs",
        "run_in_scheduler",
        "pause_jobs",
        "resume_jobs",
        "delete_selected",
    ):
        act(client, action, "watched", post="yes")
    assert client.post(ADD_URL, interval_form("forged")).status_code == 403
    assert client.post(ADD_URL, {**interval_form("forged"), "_preview": "1"}).status_code == 403
    assert client.post(change_url("watched"), interval_form("watched")).status_code == 403
    delete_url = reverse("admin:django_apscheduler_djangojob_delete", args=["watched"])
    assert client.post(delete_url, {"post": "yes"}).status_code == 403
    for operation in ("run-here", "run-in-scheduler", "pause", "resume"):
        assert client.post(operate_url("watched", operation)).status_code == 403

    assert list(DjangoJob.objects.values()) == before
    assert jobs.calls == [] and not LogEntry.objects.exists()


def test_changes_need_csrf(admin_user):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(admin_user)
    store_job("csrf", jobs.record)
    assert act(strict, "pause_jobs", "csrf").status_code == 403
    assert strict.post(ADD_URL, interval_form("no-token")).status_code == 403
    assert DjangoJob.objects.get(id="csrf").next_run_time is not None
    assert not DjangoJob.objects.filter(id="no-token").exists()


# --- declared jobs, removal -----------------------------------------------------------------


def test_declared_job_can_be_paused_and_run_but_not_edited_or_deleted(admin_client):
    store_job("coded", jobs.record)
    DjangoJob.objects.filter(id="coded").update(declared_in_code=True)

    page = admin_client.get(change_url("coded")).content.decode()
    assert "declared in code" in page and "the code owns it" in page
    assert 'name="_save"' not in page and 'name="func"' not in page
    assert admin_client.post(change_url("coded"), interval_form("coded")).status_code == 403
    delete_url = reverse("admin:django_apscheduler_djangojob_delete", args=["coded"])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403

    act(admin_client, "pause_jobs", "coded")
    assert DjangoJob.objects.get(id="coded").next_run_time is None
    act(admin_client, "resume_jobs", "coded")
    assert DjangoJob.objects.get(id="coded").next_run_time is not None
    act(admin_client, "delete_selected", "coded", post="yes")
    assert DjangoJob.objects.get(id="coded").job_state


def test_delete_asks_for_confirmation_and_keeps_the_history(admin_client):
    store_job("old", jobs.record)
    run = add_run("old", DjangoJobExecution.ERROR, minutes_ago=5, exception="gone wrong")
    store_job("fresh", jobs.record)  # no runs: deleted outright

    confirm = act(admin_client, "delete_selected", "old", "fresh")
    assert confirm.status_code == 200
    html = confirm.content.decode()
    assert "Are you sure" in html and "old" in html and "fresh" in html
    assert DjangoJob.objects.get(id="old").job_state  # nothing happened yet

    done = act(admin_client, "delete_selected", "old", "fresh", post="yes")
    assert done.status_code == 302
    assert not DjangoJob.objects.filter(id="fresh").exists()
    kept = DjangoJob.objects.get(id="old")
    assert kept.is_finished and kept.next_run_time is None
    assert DjangoJobExecution.objects.get(pk=run.pk).exception == "gone wrong"
    assert {(e.object_id, e.action_flag) for e in LogEntry.objects.all()} == {
        ("old", DELETION),
        ("fresh", DELETION),
    }

    # The removed job's runs stay listed and filterable.
    response = admin_client.get(EXECUTIONS_URL, {"job__id__exact": "old"})
    assert [e.pk for e in response.context["cl"].result_list] == [run.pk]
    assert client.get_job("old") is None  # no scheduler sees it any more


# --- writes while a scheduler writes ----------------------------------------------------

#: Another process in a write transaction for a moment, as a scheduler's
#: heartbeat or write-back is: it prints "holding" once it holds the write lock.
WRITER = """
import sys, time
import django
django.setup()
from django_apscheduler import backends
from django_apscheduler.models import DjangoJob
with backends.for_alias("default").write_transaction("default"):
    DjangoJob.objects.filter(id="elsewhere").update(version=7)
    print("holding", flush=True)
    time.sleep(float(sys.argv[1]))
"""


@contextmanager
def another_process_writing(seconds: float = 1.5):
    """Inside: another process holds a write transaction (on the job "elsewhere") for ``seconds``.

    On the way out, asserts that it still held it then (so what ran inside
    overlapped it), and that it ended well.
    """
    store_job("elsewhere", jobs.record)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(seconds)],
        env=runapscheduler_env({}),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "holding"
        yield
        assert writer.poll() is None, "the other process let go before the request was made"
    finally:
        assert writer.wait(timeout=60) == 0
    assert DjangoJob.objects.get(id="elsewhere").version == 7


@pytest.mark.parametrize("operation", ["add", "change", "delete", "pause"])
def test_admin_writes_wait_for_a_scheduler_writing_meanwhile(admin_client, operation):
    """A save while another process writes waits for it; no "database is locked" page.

    On SQLite the admin's own transaction read before it wrote, and SQLite
    refuses such a transaction the write lock at once, without waiting, while
    another connection holds it (CI: the browser test's save, with a
    scheduler process running).
    """
    if operation != "add":
        client.add_job(jobs.admin_record, "interval", minutes=5, id="target")
    with another_process_writing():
        if operation == "add":
            response = admin_client.post(ADD_URL, interval_form("target"))
        elif operation == "change":
            data = interval_form("target", minutes="7")
            data.pop("id")
            response = admin_client.post(change_url("target"), data)
        elif operation == "delete":
            response = admin_client.post(
                reverse("admin:django_apscheduler_djangojob_delete", args=["target"]),
                {"post": "yes"},
            )
        else:
            response = act(admin_client, "pause_jobs", "target")
    assert response.status_code == 302, response.content.decode()[:2000]
    job = client.get_job("target")
    if operation == "add":
        assert job is not None and job.trigger.interval == timedelta(minutes=10)
    elif operation == "change":
        assert job.trigger.interval == timedelta(minutes=7)
    elif operation == "delete":
        assert job is None
    else:
        assert job.next_run_time is None


@contextmanager
def database_settings(**changes):
    """The test database's settings with ``changes``, on a new connection; restored after."""
    settings_dict = connection.settings_dict
    saved = {key: settings_dict.get(key) for key in changes}
    connection.close()
    settings_dict.update(changes)
    try:
        yield
    finally:
        connection.close()
        settings_dict.update(saved)


def add_while_another_process_writes(admin_client) -> int | str:
    """POST the add form while another process holds a write transaction: the status, or the error."""
    with another_process_writing():
        try:
            outcome: int | str = admin_client.post(ADD_URL, interval_form("target")).status_code
        except OperationalError as exc:
            outcome = str(exc)
    return outcome


def test_atomic_requests_warning_is_true_and_its_hint_mends_it(admin_client):
    """W003: under ATOMIC_REQUESTS, SQLite refuses a request's late write at once; the hint fixes it.

    Django opens the request's transaction before the view reads, so the
    admin cannot start it with the write lock itself.
    """
    with database_settings(ATOMIC_REQUESTS=True):
        warnings = checks.check_atomic_requests()
        outcome = add_while_another_process_writes(admin_client)
    if connection.vendor != "sqlite":
        assert warnings == [] and outcome == 302, outcome
        return
    [warning] = warnings
    assert warning.id == "django_apscheduler.W003"
    assert "'default'" in warning.msg and "ATOMIC_REQUESTS" in warning.msg
    assert outcome == "database is locked", outcome  # what the warning says
    DjangoJob.objects.all().delete()
    if django.VERSION < (5, 1):
        assert "non_atomic_requests" in warning.hint
        return
    assert '"transaction_mode": "IMMEDIATE"' in warning.hint
    options = {**connection.settings_dict["OPTIONS"], "transaction_mode": "IMMEDIATE"}
    with database_settings(ATOMIC_REQUESTS=True, OPTIONS=options):
        assert checks.check_atomic_requests() == []
        assert add_while_another_process_writes(admin_client) == 302
    assert client.get_job("target") is not None


def test_no_atomic_requests_warning_without_atomic_requests():
    assert not connection.settings_dict.get("ATOMIC_REQUESTS")
    assert checks.check_atomic_requests() == []


# --- the form ------------------------------------------------------------------------------


def test_the_form_offers_only_the_allow_list(admin_client):
    html = admin_client.get(ADD_URL).content.decode()
    offered = set(
        re.findall(r'<option value="([^"]+)"', html.split('name="func"')[1].split("</select>")[0])
    )
    assert {"tests.jobs:admin_record", "tests.jobs:admin_fail"} <= offered
    assert "tests.jobs:record" not in offered  # not on the allow-list

    response = admin_client.post(ADD_URL, interval_form(func="tests.jobs:record"))
    assert response.status_code == 200
    assert "tests.jobs:record" in str(response.context["adminform"].form.errors["func"])
    response = admin_client.post(ADD_URL, interval_form(func="os:system"))
    assert "os:system" in str(response.context["adminform"].form.errors["func"])
    assert not DjangoJob.objects.exists()


def test_preview_shows_the_next_5_fire_times_and_saves_nothing(admin_client):
    data = interval_form(trigger="cron", minutes="", minute="*/15", hour="9")
    response = admin_client.post(ADD_URL, {**data, "_preview": "1"})
    assert response.status_code == 200
    html = response.content.decode()
    fires = re.findall(r"<li>(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z]+)</li>", html)
    assert len(fires) == 5
    assert all(f[11:13] == "09" and f[14:16] in ("00", "15", "30", "45") for f in fires)
    assert "every 15 minutes during hour 9 (UTC)" in html
    assert not DjangoJob.objects.exists() and not LogEntry.objects.exists()


def test_create_goes_through_the_store_and_is_logged(admin_client):
    response = admin_client.post(ADD_URL, interval_form("made"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    job = client.get_job("made")
    assert job is not None
    assert job.func is jobs.admin_record
    assert job.trigger.interval == timedelta(minutes=10)
    assert job.kwargs == {"tag": "from-form"} and job.misfire_grace_time == 30
    assert job.next_run_time is not None
    [(flag, message)] = log_messages("made")
    assert flag == ADDITION and "Added" in message


@pytest.mark.parametrize(
    "changes, field, shown",
    [
        ({"trigger": "cron", "minutes": "", "minute": "*/99"}, "minute", "'*/99'"),
        ({"trigger": "cron", "minutes": "", "day_of_week": "funday"}, "day_of_week", "funday"),
        ({"timezone": "Mars/Olympus"}, "timezone", "Mars/Olympus"),
        ({"kwargs": "[1, 2]"}, "kwargs", "[1, 2]"),
        ({"kwargs": "{not json"}, "kwargs", "JSON"),
        ({"minutes": ""}, "seconds", "interval"),
        ({"trigger": "date", "run_date": "2001-01-01 10:00:00"}, "run_date", "2001-01-01"),
        ({"trigger": "date"}, "run_date", "run date"),
        ({"id": "x" * 256}, "id", "255"),
    ],
)
def test_validation_errors_name_the_field_and_the_value(admin_client, changes, field, shown):
    response = admin_client.post(ADD_URL, interval_form("bad", **changes))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors, errors
    assert shown in " ".join(errors[field])
    assert not DjangoJob.objects.exists()


def test_edit_changes_the_trigger_the_arguments_and_the_next_run_time(admin_client):
    client.add_job(jobs.admin_record, "interval", minutes=5, id="edited", kwargs={"tag": "a"})
    page = admin_client.get(change_url("edited")).content.decode()
    assert 'name="minutes" value="5"' in page
    stored = client.get_job("edited").next_run_time
    shown = re.findall(r"<li>(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) [A-Z]+</li>", page)
    expected = [stored + timedelta(minutes=5 * i) for i in range(5)]
    assert shown == [t.strftime("%Y-%m-%d %H:%M:%S") for t in expected]

    moved = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    data = interval_form(
        "edited", minutes="7", kwargs='{"tag": "b"}', next_run_time="2031-05-06 09:08:09"
    )  # Europe/Berlin, the current zone
    data.pop("id")
    response = admin_client.post(change_url("edited"), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    job = client.get_job("edited")
    assert job.trigger.interval == timedelta(minutes=7)
    assert job.kwargs == {"tag": "b"}
    assert job.next_run_time == moved
    [(flag, message)] = log_messages("edited")
    assert flag == CHANGE and "Changed" in message


def test_editing_a_paused_job_keeps_it_paused(admin_client):
    client.add_job(jobs.admin_record, "interval", minutes=5, id="still")
    client.pause_job("still")
    data = interval_form("still", trigger="cron", minutes="", hour="4")
    data.pop("id")
    response = admin_client.post(change_url("still"), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    job = client.get_job("still")
    assert job.next_run_time is None and str(job.trigger.fields[5]) == "4"


# --- the job page and the dashboard ---------------------------------------------------------


def test_job_page_shows_the_last_50_runs_and_a_chart_of_100(admin_client):
    store_job("history", jobs.record)
    for i in range(120):
        status = DjangoJobExecution.ERROR if i % 10 == 0 else DjangoJobExecution.SUCCESS
        add_run(
            "history",
            status,
            minutes_ago=i + 1,
            duration=f"{i % 7}.25",
            exception="bad <i>thing</i>" if status == DjangoJobExecution.ERROR else None,
            traceback="Traceback: <script>x</script>" if i == 0 else None,
        )
    html = admin_client.get(change_url("history")).content.decode()
    assert html.count('<tr class="dja-run">') == 50
    chart = re.search(r'<svg class="dja-chart".*?</svg>', html, re.S).group(0)
    assert chart.count('<rect class="dja-bar dja-success"') == 90
    assert chart.count('<rect class="dja-bar dja-error"') == 10
    assert "bad &lt;i&gt;thing&lt;/i&gt;" in html and "<i>thing</i>" not in html
    assert "Traceback: &lt;script&gt;x&lt;/script&gt;" in html
    assert "<script>x</script>" not in html


def test_dashboard_shows_instances_hourly_runs_slowest_failing_and_overdue(admin_client):
    now = datetime.now(UTC)
    DjangoSchedulerInstance.objects.create(
        id="box:42:abcd", host="box", pid=42, started=now, last_heartbeat=now
    )
    store_job("slow", jobs.record)
    store_job("flaky", jobs.record)
    store_job("late", jobs.record, next_run_time=now - timedelta(hours=2))
    add_run("slow", DjangoJobExecution.SUCCESS, minutes_ago=30, duration="42.00")
    add_run("flaky", DjangoJobExecution.ERROR, minutes_ago=20, duration="1.00")
    add_run("flaky", DjangoJobExecution.ERROR, minutes_ago=10, duration="1.00")
    add_run("flaky", DjangoJobExecution.SUCCESS, minutes_ago=90, duration="1.00")

    response = admin_client.get(DASHBOARD_URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert "box:42:abcd" in html and "alive" in html
    assert '<svg class="dja-chart"' in html
    assert html.count('<rect class="dja-bar dja-error"') >= 1
    assert [row["job_id"] for row in response.context["slowest"]][0] == "slow"
    assert [(r["job_id"], r["failures"]) for r in response.context["failing"]] == [("flaky", 2)]
    assert response.context["overdue"] == ["late"]
    index = admin_client.get("/admin/django_apscheduler/").content.decode()
    assert DASHBOARD_URL in index


def test_dashboard_needs_the_view_permission(client):
    client.force_login(staff("view_djangojobexecution"))
    assert client.get(DASHBOARD_URL).status_code == 403


def test_html_in_ids_and_exceptions_is_escaped_everywhere(admin_client):
    nasty = '<script>window.__xss=1</script>"x'
    store_job(nasty, jobs.record)
    add_run(
        nasty,
        DjangoJobExecution.ERROR,
        minutes_ago=1,
        exception='<img src=x onerror="window.__xss=2">',
        traceback="<script>t</script>",
    )
    pages = [
        admin_client.get(JOBS_URL).content.decode(),
        admin_client.get(change_url(nasty)).content.decode(),
        admin_client.get(DASHBOARD_URL).content.decode(),
        admin_client.get(EXECUTIONS_URL).content.decode(),
    ]
    for html in pages:
        assert "<script>window.__xss" not in html
        assert "<img src=x" not in html
        assert "<script>t</script>" not in html
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in pages[0]
    assert "&lt;img src=x onerror=" in pages[1]


def test_charts_need_no_script_and_no_inline_style(admin_client):
    """The pages work under a strict Content Security Policy: the SVG has no script or style."""
    store_job("plain", jobs.record)
    add_run("plain", DjangoJobExecution.SUCCESS, minutes_ago=2)
    add_run("plain", DjangoJobExecution.ERROR, minutes_ago=1)
    for url in (change_url("plain"), DASHBOARD_URL):
        html = admin_client.get(url).content.decode()
        svg = re.search(r'<svg class="dja-chart".*?</svg>', html, re.S).group(0)
        assert "<script" not in svg and "style=" not in svg and "on" + "load" not in svg
        assert 'class="dja-bar dja-error"' in svg
        assert "django_apscheduler/console.css" in html


def test_resume_leaves_a_scheduled_job_alone(admin_client):
    row = store_job("running-along", jobs.record)
    response = act(admin_client, "resume_jobs", "running-along")
    assert texts(response) == ["Job running-along is not paused."]
    assert DjangoJob.objects.get(id="running-along").next_run_time == row.next_run_time
    assert log_messages("running-along") == []


def operate_url(job_id: str, operation: str) -> str:
    return reverse("admin:django_apscheduler_djangojob_operate", args=[job_id, operation])


def test_job_page_buttons_run_the_actions_with_their_permissions(client, admin_client):
    store_job("buttons", jobs.record)
    page = admin_client.get(change_url("buttons")).content.decode()
    for operation in ("run-here", "run-in-scheduler", "pause"):
        assert f'action="{operate_url("buttons", operation)}"' in page
    assert operate_url("buttons", "resume") not in page  # not paused

    assert admin_client.get(operate_url("buttons", "pause")).status_code == 405
    assert admin_client.post(operate_url("buttons", "explode")).status_code == 404
    response = admin_client.post(operate_url("buttons", "pause"), {"note": "from the page"})
    assert response.status_code == 302 and response["Location"] == change_url("buttons")
    row = DjangoJob.objects.get(id="buttons")
    assert row.next_run_time is None and row.pause_note == "from the page"
    assert log_messages("buttons") == [(CHANGE, "Paused: from the page")]
    page = admin_client.get(change_url("buttons")).content.decode()
    assert operate_url("buttons", "resume") in page and operate_url("buttons", "pause") not in page

    client.force_login(staff("view_djangojob", "run_djangojob"))
    page = client.get(change_url("buttons")).content.decode()
    assert operate_url("buttons", "run-here") in page
    assert operate_url("buttons", "resume") not in page
    assert client.post(operate_url("buttons", "resume")).status_code == 403
    assert DjangoJob.objects.get(id="buttons").next_run_time is None
