"""The admin pages and the "Run the selected django jobs" action, through real HTTP requests."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from django.contrib import admin, messages
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.contrib.messages.storage.cookie import CookieStorage
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_apscheduler.admin import DjangoJobAdmin, DjangoJobExecutionAdmin, StatusListFilter
from django_apscheduler.models import DjangoJob, DjangoJobExecution, DjangoSchedulerInstance
from django_apscheduler.run_now import run_jobs_now
from tests import jobs
from tests.helpers import wait_until
from tests.test_run_now import FUTURE, store_broken_job, store_finished_job, store_job

UTC = timezone.utc
JOBS_URL = "/admin/django_apscheduler/djangojob/"
EXECUTIONS_URL = "/admin/django_apscheduler/djangojobexecution/"
LEGACY_STATUSES = ["Added", "Max instances reached!", "Modified!", "Removed!"]
ALL_STATUSES = [
    DjangoJobExecution.SUCCESS,
    DjangoJobExecution.SENT,
    DjangoJobExecution.ERROR,
    DjangoJobExecution.MISSED,
    DjangoJobExecution.MAX_INSTANCES,
    DjangoJobExecution.INTERRUPTED,
    *LEGACY_STATUSES,
]

pytestmark = pytest.mark.django_db(transaction=True)


def add_execution(
    job_id: str,
    status: str = DjangoJobExecution.SUCCESS,
    *,
    minutes_ago: int = 1,
    duration: Decimal | str | None = None,
) -> DjangoJobExecution:
    """An execution row as any version of the app may have left it (legacy statuses too)."""
    return DjangoJobExecution.objects.create(
        job_id=job_id,
        status=status,
        run_time=datetime(2025, 6, 1, 12, 0, tzinfo=UTC) - timedelta(minutes=minutes_ago),
        duration=None if duration is None else Decimal(duration),
    )


def row_of(html: str, text: str) -> str:
    """The changelist table row (``<tr>...</tr>``) that contains ``text``."""
    rows = [row for row in re.findall(r"<tr[^>]*>.*?</tr>", html, re.S) if text in row]
    assert len(rows) == 1, f"{len(rows)} rows contain {text!r}"
    return rows[0]


def cell(row: str, column: str) -> str:
    """The inner HTML of the ``field-<column>`` cell of a changelist row."""
    match = re.search(rf'<t[dh] class="field-{column}[^"]*"[^>]*>(.*?)</t[dh]>', row, re.S)
    assert match, f"no {column} cell in {row}"
    return match.group(1)


def run_action(client, *job_ids: str):
    return client.post(
        JOBS_URL,
        {"action": "run_selected_jobs", "_selected_action": list(job_ids), "index": "0"},
    )


def sent_messages(response) -> list[tuple[int, str]]:
    return [(m.level, m.message) for m in get_messages(response.wsgi_request)]


def user_with(*codenames: str) -> User:
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="django_apscheduler", codename__in=codenames
        )
    )
    return user


# --- the jobs page ------------------------------------------------------------------


def test_jobs_page_shows_state_next_run_time_and_average_duration(admin_client, settings):
    settings.APSCHEDULER_DATETIME_FORMAT = "Y-m-d H:i:s"
    store_job("sched")
    add_execution("sched", duration="1.00", minutes_ago=1)
    add_execution("sched", duration="2.50", minutes_ago=2)
    add_execution("sched", DjangoJobExecution.SENT, minutes_ago=3)  # no duration: not averaged
    store_job("zero")
    add_execution("zero", duration="0")
    store_job("paused-job", next_run_time=None)
    store_finished_job("done")
    add_execution("done", duration="4.00")
    store_broken_job("broken")

    response = admin_client.get(JOBS_URL)
    assert response.status_code == 200
    html = response.content.decode()
    for header in ("Id", "State", "Local run time", "Average Duration (sec)"):
        assert f">{header}<" in html

    sched = row_of(html, ">sched</a>")
    assert "scheduled" in cell(sched, "state")
    # 12:00 UTC shown in the current time zone (Europe/Berlin) and the configured format.
    assert cell(sched, "local_run_time") == "2030-01-01 13:00:00"
    assert cell(sched, "average_duration") == "1.75"

    assert cell(row_of(html, ">zero</a>"), "average_duration") == "0.00"

    paused = row_of(html, ">paused-job</a>")
    assert "paused" in cell(paused, "state")
    assert cell(paused, "local_run_time") == "(paused)"
    assert cell(paused, "average_duration") == "None"

    done = row_of(html, ">done</a>")
    assert ">finished<" in cell(done, "state")
    assert cell(done, "local_run_time") == "(finished)"
    assert cell(done, "average_duration") == "4.00"

    broken = row_of(html, ">broken</a>")
    state = cell(broken, "state")
    assert "broken: " in state and "no_such_function" in state
    assert "color: red" in state
    # Showing a broken row does not delete it.
    assert DjangoJob.objects.filter(id="broken").exists()


def test_jobs_page_search_and_default_date_format(admin_client):
    store_job("alpha")
    store_job("beta")
    response = admin_client.get(JOBS_URL, {"q": "alp"})
    assert response.status_code == 200
    assert [job.id for job in response.context["cl"].result_list] == ["alpha"]
    # 0.7.0's default format "N j, Y, f:s a" in Europe/Berlin ("f" drops zero minutes).
    assert cell(row_of(response.content.decode(), ">alpha</a>"), "local_run_time") == (
        "Jan. 1, 2030, 1:00 p.m."
    )


def test_jobs_page_lists_next_to_run_first_and_jobs_without_next_run_last(admin_client):
    store_finished_job("done")
    store_job("later", next_run_time=FUTURE + timedelta(days=1))
    store_job("paused-job", next_run_time=None)
    store_job("sooner", next_run_time=FUTURE)
    response = admin_client.get(JOBS_URL)
    assert [job.id for job in response.context["cl"].result_list] == [
        "sooner",
        "later",
        "done",
        "paused-job",
    ]


def test_jobs_page_sorts_by_average_duration(admin_client):
    for job_id, duration in (("b-fast", "1"), ("a-slow", "9"), ("c-mid", "5")):
        store_job(job_id)
        add_execution(job_id, duration=duration)
    # "o" counts the columns of the page, the selection checkbox first.
    column = ["action_checkbox", *DjangoJobAdmin.list_display].index("average_duration")
    response = admin_client.get(JOBS_URL, {"o": f"-{column}"})
    assert response.status_code == 200
    assert [job.id for job in response.context["cl"].result_list] == ["a-slow", "c-mid", "b-fast"]


def test_jobs_page_query_count_does_not_grow_with_rows(admin_client):
    def queries_for_page() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(JOBS_URL).status_code == 200
        return len(captured)

    store_job("j0")
    add_execution("j0", duration="1")
    few = queries_for_page()
    for i in range(1, 8):
        store_job(f"j{i}")
        add_execution(f"j{i}", duration="1", minutes_ago=1)
        add_execution(f"j{i}", duration="2", minutes_ago=2)
    assert queries_for_page() == few


# --- the executions page ------------------------------------------------------------


def test_executions_page_colours_every_status_including_legacy_ones(admin_client):
    store_job("job")
    for minutes, status in enumerate(ALL_STATUSES, start=1):
        add_execution("job", status, minutes_ago=minutes)

    response = admin_client.get(EXECUTIONS_URL)
    assert response.status_code == 200
    html = response.content.decode()
    for header in ("Id", "Job", "Status", "Local run time", "Duration (sec)"):
        assert f">{header}<" in html
    expected_colour = dict(DjangoJobExecutionAdmin.status_color_mapping)
    for execution in DjangoJobExecution.objects.all():
        row = row_of(html, f">{execution.id}</a>")
        colour = expected_colour.get(execution.status, "gray")
        assert cell(row, "html_status") == (
            f'<span style="color: {colour};">{execution.status}</span>'
        )
    assert expected_colour[DjangoJobExecution.SUCCESS] == "green"
    assert expected_colour[DjangoJobExecution.ERROR] == "red"
    assert expected_colour[DjangoJobExecution.INTERRUPTED] == "darkred"


def test_executions_page_shows_zero_duration_as_zero_and_missing_as_na(admin_client):
    store_job("job")
    zero = add_execution("job", duration="0", minutes_ago=1)
    missing = add_execution("job", DjangoJobExecution.SENT, minutes_ago=2)
    some = add_execution("job", duration="12.5", minutes_ago=3)

    html = admin_client.get(EXECUTIONS_URL).content.decode()
    assert cell(row_of(html, f">{zero.id}</a>"), "duration_text") == "0.00"
    assert cell(row_of(html, f">{missing.id}</a>"), "duration_text") == "N/A"
    assert cell(row_of(html, f">{some.id}</a>"), "duration_text") == "12.50"


def test_executions_page_shows_job_and_local_run_time(admin_client, settings):
    settings.APSCHEDULER_DATETIME_FORMAT = "Y-m-d H:i"
    store_job("job")
    execution = add_execution("job", minutes_ago=0)  # 12:00 UTC = 14:00 in Berlin in June

    row = row_of(admin_client.get(EXECUTIONS_URL).content.decode(), f">{execution.id}</a>")
    assert cell(row, "local_run_time") == "2025-06-01 14:00"
    assert cell(row, "job").startswith("job (next run at: ")


def test_status_filter_offers_every_status_present(admin_client):
    store_job("job")
    for minutes, status in enumerate(ALL_STATUSES, start=1):
        add_execution("job", status, minutes_ago=minutes)

    response = admin_client.get(EXECUTIONS_URL)
    [status_filter] = [
        spec for spec in response.context["cl"].filter_specs if isinstance(spec, StatusListFilter)
    ]
    offered = [value for value, _ in status_filter.lookup_choices]
    assert offered[:6] == [
        DjangoJobExecution.SUCCESS,
        DjangoJobExecution.SENT,
        DjangoJobExecution.ERROR,
        DjangoJobExecution.MISSED,
        DjangoJobExecution.MAX_INSTANCES,
        DjangoJobExecution.INTERRUPTED,
    ]
    assert sorted(offered[6:]) == sorted(LEGACY_STATUSES)
    html = response.content.decode()
    assert "?status__exact=Missed%21" in html
    assert "?status__exact=Max+instances%21" in html

    for status in (DjangoJobExecution.MISSED, DjangoJobExecution.MAX_INSTANCES, "Removed!"):
        response = admin_client.get(EXECUTIONS_URL, {"status__exact": status})
        assert response.status_code == 200
        assert [e.status for e in response.context["cl"].result_list] == [status]


def test_status_filter_offers_only_statuses_present(admin_client):
    store_job("job")
    add_execution("job", DjangoJobExecution.ERROR)
    response = admin_client.get(EXECUTIONS_URL)
    [status_filter] = [
        spec for spec in response.context["cl"].filter_specs if isinstance(spec, StatusListFilter)
    ]
    assert [value for value, _ in status_filter.lookup_choices] == [DjangoJobExecution.ERROR]


def test_job_and_run_time_filters(admin_client):
    store_job("a")
    store_job("b")
    recent = add_execution("a", minutes_ago=1)
    old = DjangoJobExecution.objects.create(
        job_id="a", status=DjangoJobExecution.SUCCESS, run_time=datetime(2020, 1, 1, tzinfo=UTC)
    )
    other = add_execution("b", minutes_ago=1)

    response = admin_client.get(EXECUTIONS_URL, {"job__id": "a"})
    assert response.status_code == 200
    assert {e.id for e in response.context["cl"].result_list} == {recent.id, old.id}

    response = admin_client.get(
        EXECUTIONS_URL,
        {"run_time__gte": "2025-01-01 00:00:00+00:00", "run_time__lt": "2026-01-01 00:00:00+00:00"},
    )
    assert response.status_code == 200
    assert {e.id for e in response.context["cl"].result_list} == {recent.id, other.id}


def test_executions_page_query_count_does_not_grow_with_rows(admin_client):
    def queries_for_page() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(EXECUTIONS_URL).status_code == 200
        return len(captured)

    store_job("j0")
    add_execution("j0", DjangoJobExecution.ERROR)
    few = queries_for_page()
    for i in range(1, 6):
        store_job(f"j{i}")
        for minutes in range(1, 4):
            add_execution(f"j{i}", DjangoJobExecution.ERROR, minutes_ago=minutes)
    assert queries_for_page() == few


# --- the action -----------------------------------------------------------------------


def test_action_runs_the_job_and_reports_success(admin_client):
    store_job("rec", jobs.record, args=("from-admin",))
    response = run_action(admin_client, "rec")

    assert response.status_code == 302
    assert sent_messages(response) == [(messages.INFO, "Executed job 'rec'!")]
    assert [tag for tag, _ in jobs.calls] == ["from-admin"]
    [row] = DjangoJobExecution.objects.filter(job_id="rec")
    assert row.status == DjangoJobExecution.SUCCESS
    assert row.duration is not None
    # The stored schedule is left as it was.
    assert DjangoJob.objects.get(id="rec").next_run_time == FUTURE


def test_action_reports_each_error_with_its_exception(admin_client):
    store_job("bad", jobs.fail, args=("disk full",))
    store_job("good", jobs.noop)
    store_job("async", jobs.async_record, args=("async-admin",))
    response = run_action(admin_client, "bad", "good", "async")

    assert sorted(sent_messages(response)) == sorted(
        [
            (messages.INFO, "Executed job 'async'!"),
            (messages.ERROR, "Job 'bad' raised an error: ValueError: disk full"),
            (messages.INFO, "Executed job 'good'!"),
        ]
    )
    statuses = dict(DjangoJobExecution.objects.values_list("job_id", "status"))
    assert statuses == {
        "bad": DjangoJobExecution.ERROR,
        "good": DjangoJobExecution.SUCCESS,
        "async": DjangoJobExecution.SUCCESS,
    }
    assert DjangoJobExecution.objects.get(job_id="bad").exception == "disk full"


def test_action_timeout_names_pending_jobs_and_still_reports_successes(admin_client, settings):
    settings.APSCHEDULER_RUN_NOW_TIMEOUT = 0.5
    store_job("slow", jobs.sleep, args=(3,))
    store_job("quick", jobs.record, args=("quick",))
    response = run_action(admin_client, "slow", "quick")

    assert sent_messages(response) == [
        (messages.INFO, "Executed job 'quick'!"),
        (
            messages.ERROR,
            "Maximum runtime of 0.5 seconds exceeded! Not all jobs could be completed "
            "successfully. Pending jobs: slow. They keep running in the background; their "
            "executions are recorded when they end.",
        ),
    ]
    assert DjangoJobExecution.objects.get(job_id="slow").status == DjangoJobExecution.SENT
    # The slow run ends in the background and records its final status.
    wait_until(
        lambda: DjangoJobExecution.objects.get(job_id="slow").status == DjangoJobExecution.SUCCESS
    )


def test_action_skips_finished_and_broken_rows(admin_client):
    store_finished_job("done")
    store_broken_job("broken")
    response = run_action(admin_client, "done", "broken")

    found = sent_messages(response)
    assert (
        messages.WARNING,
        "Job 'done' has finished (a one-shot job that has run for the last time) and cannot "
        "run again! Skipping execution...",
    ) in found
    [(level, text)] = [m for m in found if "'broken'" in m[1]]
    assert level == messages.ERROR
    assert text.startswith("Job 'broken' cannot be restored from the database (")
    assert "no_such_function" in text
    assert not DjangoJobExecution.objects.exists()


def test_missing_job_is_reported_with_the_0_7_0_message(admin_user, rf):
    # A job deleted between the page and the action: the rows are read again by run_now.
    request = rf.post(JOBS_URL)
    request.user = admin_user
    request._messages = CookieStorage(request)
    model_admin = admin.site._registry[DjangoJob]
    model_admin.message_outcomes(request, run_jobs_now(["gone"]), 15)

    assert [(m.level, m.message) for m in request._messages] == [
        (messages.WARNING, "Could not find job gone in the database! Skipping execution...")
    ]


def test_action_keeps_no_per_request_state_on_the_model_admins(admin_client, settings):
    settings.APSCHEDULER_RUN_NOW_TIMEOUT = 0.5
    job_admin = admin.site._registry[DjangoJob]
    execution_admin = admin.site._registry[DjangoJobExecution]
    before = {id(a): dict(vars(a)) for a in (job_admin, execution_admin)}
    store_job("rec", jobs.record)
    store_job("bad", jobs.fail)
    store_job("slow", jobs.sleep, args=(2,))
    add_execution("rec", duration="1")

    assert admin_client.get(JOBS_URL).status_code == 200
    assert run_action(admin_client, "rec", "bad", "slow").status_code == 302
    assert admin_client.get(EXECUTIONS_URL).status_code == 200
    assert admin_client.get(EXECUTIONS_URL, {"status__exact": "Error!"}).status_code == 200

    for model_admin in (job_admin, execution_admin):
        after = vars(model_admin)
        assert after.keys() == before[id(model_admin)].keys()
        for name, value in before[id(model_admin)].items():
            assert after[name] is value, name
    wait_until(
        lambda: DjangoJobExecution.objects.get(job_id="slow").status == DjangoJobExecution.SUCCESS
    )


# --- permissions ------------------------------------------------------------------------


def test_view_only_staff_can_see_the_pages_but_not_run_jobs(client):
    client.force_login(user_with("view_djangojob", "view_djangojobexecution"))
    store_job("rec", jobs.record)

    response = client.get(JOBS_URL)
    assert response.status_code == 200
    assert "run_selected_jobs" not in response.content.decode()
    assert client.get(EXECUTIONS_URL).status_code == 200

    response = run_action(client, "rec")
    assert response.status_code in (200, 302, 403)
    assert not any("Executed job" in text for _, text in sent_messages(response))
    assert jobs.calls == []
    assert not DjangoJobExecution.objects.exists()


def test_staff_with_the_run_permission_can_run_jobs(client):
    client.force_login(user_with("view_djangojob", "run_djangojob"))
    store_job("rec", jobs.record)

    assert 'value="run_selected_jobs"' in client.get(JOBS_URL).content.decode()
    response = run_action(client, "rec")
    assert sent_messages(response) == [(messages.INFO, "Executed job 'rec'!")]
    assert len(jobs.calls) == 1


def test_the_change_permission_alone_does_not_run_jobs(client):
    """Each action has its own permission: changing jobs is not running them."""
    client.force_login(user_with("view_djangojob", "change_djangojob"))
    store_job("rec", jobs.record)

    assert 'value="run_selected_jobs"' not in client.get(JOBS_URL).content.decode()
    run_action(client, "rec")
    assert jobs.calls == []


def test_anonymous_users_are_sent_to_the_login_page(client):
    store_job("rec", jobs.record)
    response = run_action(client, "rec")
    assert response.status_code == 302
    assert "/login/" in response["Location"]
    assert jobs.calls == []


def test_execution_change_page_shows_the_traceback(admin_client):
    store_job("bad", jobs.fail, args=("shown on the change page",))
    run_jobs_now(["bad"], timeout=30)
    execution = DjangoJobExecution.objects.get(job_id="bad")

    response = admin_client.get(f"{EXECUTIONS_URL}{execution.id}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "shown on the change page" in html
    assert "raise ValueError(message)" in html


def test_a_row_that_is_not_a_restorable_job_cannot_be_edited_in_the_admin(admin_client):
    """A broken row's schedule cannot be read back: its page is read-only, never a desync."""
    DjangoJob.objects.create(id="hand", next_run_time=None, job_state=b"x")
    page = admin_client.get(reverse("admin:django_apscheduler_djangojob_change", args=["hand"]))
    assert page.status_code == 200
    assert b'name="next_run_time' not in page.content
    assert b'name="_save"' not in page.content


def test_instances_page_lists_schedulers_and_whether_they_are_alive(admin_client):
    now = datetime.now(timezone.utc)
    DjangoSchedulerInstance.objects.create(
        id="web1:101:aaaa", host="web1", pid=101, started=now, last_heartbeat=now
    )
    DjangoSchedulerInstance.objects.create(
        id="web2:202:bbbb",
        host="web2",
        pid=202,
        started=now - timedelta(hours=1),
        last_heartbeat=now - timedelta(minutes=5),
    )
    url = "/admin/django_apscheduler/djangoschedulerinstance/"
    html = admin_client.get(url).content.decode()
    alive = row_of(html, "web1:101:aaaa")
    dead = row_of(html, "web2:202:bbbb")
    assert 'alt="True"' in alive and 'alt="False"' in dead
    assert admin_client.get(url + "add/").status_code == 403
    change = admin_client.get(url + "web1:101:aaaa/change/")
    assert change.status_code == 200 and b'name="_save"' not in change.content
