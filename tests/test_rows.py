"""Many rows per statement (``db.insert_rows``, ``db.update_values``), in each backend's SQL.

The execution log and the write-back use them for every fire (issue 10,
item 7): on PostgreSQL all the rows as one JSON parameter (or one array per
column through ``unnest``), elsewhere a ``VALUES`` list and a ``CASE``
update.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from django_apscheduler import db
from django_apscheduler.models import DjangoJob, DjangoJobExecution

pytestmark = pytest.mark.django_db(transaction=True)

UTC = timezone.utc
AT = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def jobs_():
    DjangoJob.objects.bulk_create(
        [DjangoJob(id=f"j{i}", job_state=b"s", next_run_time=AT) for i in range(3)]
    )


def test_update_values_sets_each_rows_own_values_and_shared_ones(jobs_):
    count = db.update_values(
        DjangoJob,
        "default",
        ["next_run_time", "job_state", "acquired_by", "version"],
        [
            ["j0", AT + timedelta(seconds=1), b"zero", None, 7],
            ["j2", None, b"two", None, 7],
        ],
    )
    assert count == 2
    rows = {row.id: row for row in DjangoJob.objects.all()}
    assert rows["j0"].next_run_time == AT + timedelta(seconds=1)
    assert bytes(rows["j0"].job_state) == b"zero" and rows["j0"].version == 7
    assert rows["j2"].next_run_time is None and bytes(rows["j2"].job_state) == b"two"
    assert rows["j1"].next_run_time == AT and bytes(rows["j1"].job_state) == b"s"
    assert rows["j1"].version is None or rows["j1"].version != 7


def test_update_values_goes_in_chunks(jobs_, monkeypatch):
    monkeypatch.setattr(db, "ROWS_PER_STATEMENT", 2)
    db.update_values(
        DjangoJob, "default", ["job_state"], [[f"j{i}", f"new{i}".encode()] for i in range(3)]
    )
    assert {r.id: bytes(r.job_state) for r in DjangoJob.objects.all()} == {
        "j0": b"new0",
        "j1": b"new1",
        "j2": b"new2",
    }


def _run(job_id, status, **more):
    return [job_id, AT, "instance", status, *more.get("rest", [None, None, None, None])]


FIELDS = ["job", "run_time", "instance", "status", "finished", "duration", "exception", "traceback"]


def _insert(rows, **how):
    db.insert_rows(DjangoJobExecution, "default", FIELDS, rows, **how)


def test_insert_rows_ignores_conflicts_or_updates_them(jobs_):
    done = DjangoJobExecution.SUCCESS
    sent = DjangoJobExecution.SENT
    _insert([_run("j0", sent), _run("j1", sent)], ignore_conflicts=True)
    # A second start of j0 is left out; j2's is new.
    _insert([_run("j0", sent), _run("j2", sent)], ignore_conflicts=True)
    assert DjangoJobExecution.objects.count() == 3
    # The end of j1's run replaces its row's status and times; j0 stays as it was.
    _insert(
        [_run("j1", done, rest=[Decimal("1700000000.25"), Decimal("0.50"), None, None])],
        update_fields=["status", "finished", "duration", "exception", "traceback"],
        unique_fields=["job", "run_time"],
    )
    rows = {r.job_id: r for r in DjangoJobExecution.objects.all()}
    assert len(rows) == 3
    assert rows["j1"].status == done and rows["j1"].duration == Decimal("0.50")
    assert rows["j1"].finished == Decimal("1700000000.25")
    assert rows["j0"].status == DjangoJobExecution.SENT and rows["j0"].finished is None
    assert all(r.instance == "instance" and r.task_id is None for r in rows.values())


class ShoutingField(DjangoJobExecution._meta.get_field("status").__class__):
    """A text field that prepares its values its own way: never taken as stored unchanged."""

    def get_prep_value(self, value):
        return None if value is None else str(value).upper()


def _wrapped(value):
    """The bytes a driver's Binary wraps (psycopg 3: ``obj``, psycopg2: ``adapted``), else the value."""
    return getattr(value, "obj", getattr(value, "adapted", value))


def test_each_value_is_prepared_as_its_field_would_prepare_it(settings):
    """The row writers' shortcuts (text, decimals, datetimes) give what Django's preparation gives."""
    import warnings

    from django.db import connection
    from django.db.models import CharField, DateTimeField, DecimalField, TextField
    from django.utils.functional import lazy

    lazy_text = lazy(lambda: "lazy", str)()
    naive = datetime(2030, 1, 1, 12, 30)
    values = [
        "text",
        "",
        lazy_text,
        None,
        7,
        2.5,
        Decimal("1.50"),
        Decimal("1E+2"),
        Decimal("NaN"),
        AT,
        naive,
    ]
    values += [AT.astimezone(timezone(timedelta(hours=5))), b"bytes"]
    fields = [f for model in (DjangoJob, DjangoJobExecution) for f in model._meta.concrete_fields]
    kinds = {f.get_internal_type() for f in fields}
    assert {"CharField", "TextField", "ForeignKey", "DecimalField", "DateTimeField"} <= kinds
    for use_tz in (True, False):
        settings.USE_TZ = use_tz
        for field in [*fields, ShoutingField(max_length=9)]:
            for saving in (True, False):
                prepare = db._preparer(field, connection, saving=saving)
                django_prep = field.get_db_prep_save if saving else field.get_db_prep_value
                for value in values:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # naive datetimes with USE_TZ
                        try:
                            expected = None if value is None else django_prep(value, connection)
                        except Exception as exc:
                            expected = type(exc)
                        try:
                            got = prepare(value)
                        except Exception as exc:
                            got = type(exc)
                    # (psycopg's Binary has no equality of its own: compared by what it wraps,
                    # by repr for Decimal("NaN"), which equals nothing.)
                    same = got == expected or repr(_wrapped(got)) == repr(_wrapped(expected))
                    assert same and type(got) is type(expected), (field, value, got)
    assert db._preparer(ShoutingField(max_length=9), connection)("quiet") == "QUIET"
    # The shortcuts are taken for the log's and the write-back's fields.
    kinds = {
        name: db._own_kind(model._meta.get_field(name))
        for model, names in (
            (DjangoJob, ["id", "next_run_time", "acquired_by"]),
            (DjangoJobExecution, ["job", "status", "run_time", "duration", "traceback"]),
        )
        for name in names
    }
    assert kinds == {
        "id": CharField,
        "next_run_time": DateTimeField,
        "acquired_by": CharField,
        "job": CharField,
        "status": CharField,
        "run_time": DateTimeField,
        "duration": DecimalField,
        "traceback": TextField,
    }
    assert db._own_kind(ShoutingField(max_length=9)) is None


AWKWARD_TEXTS = [
    "quotes \" and ' and a backslash \\ and \\x41",
    "ünïcödé ✓ 日本 \U0001f600",
    '{"looks": ["like", null, "json"]}',
    "NULL",
    "",
    "tab\tnew\nline\r",
]


def test_awkward_values_come_back_as_they_went_in(jobs_, rows_form):
    """Whatever the SQL carries the rows in (PostgreSQL: one JSON parameter), no value changes."""
    states = [bytes(range(256)), b"\\x41", b""]
    db.update_values(
        DjangoJob,
        "default",
        ["job_state", "pause_note", "next_run_time"],
        [
            [f"j{i}", state, text, AT + timedelta(microseconds=123456 * i)]
            for i, (state, text) in enumerate(zip(states, AWKWARD_TEXTS))
        ],
    )
    rows = {r.id: r for r in DjangoJob.objects.all()}
    for i, (state, text) in enumerate(zip(states, AWKWARD_TEXTS)):
        assert bytes(rows[f"j{i}"].job_state) == state
        assert rows[f"j{i}"].pause_note == text
        assert rows[f"j{i}"].next_run_time == AT + timedelta(microseconds=123456 * i)
    _insert(
        [
            [
                "j0",
                AT + timedelta(seconds=i),
                "instance",
                DjangoJobExecution.ERROR,
                Decimal("1700000000.25"),
                Decimal("0.01") * i,
                text,
                text * 3,
            ]
            for i, text in enumerate(AWKWARD_TEXTS)
        ]
    )
    logged = {
        r.run_time: r for r in DjangoJobExecution.objects.filter(job_id="j0").order_by("run_time")
    }
    assert len(logged) == len(AWKWARD_TEXTS)
    for i, text in enumerate(AWKWARD_TEXTS):
        row = logged[AT + timedelta(seconds=i)]
        assert (row.exception, row.traceback) == (text, text * 3)
        assert row.duration == Decimal("0.01") * i and row.finished == Decimal("1700000000.25")


@pytest.fixture(params=["json", "arrays"])
def rows_form(request, monkeypatch):
    """PostgreSQL's two forms of many rows: one JSON parameter, or (a value JSON cannot carry
    exactly) one array per column. Elsewhere both run the same SQL."""
    from django_apscheduler import backends

    if request.param == "arrays":
        unusable = backends._json_value

        def refuse_some(value):
            if isinstance(value, str):
                raise TypeError("str")
            return unusable(value)

        monkeypatch.setattr(backends, "_JSON_PLAIN", ())
        monkeypatch.setattr(backends, "_json_value", refuse_some)
    return request.param


def test_a_value_too_long_for_its_column_is_never_cut_short(jobs_, rows_form):
    """As with an ``INSERT`` of the value: the database refuses it, or (SQLite) keeps it whole."""
    from django.db import DatabaseError, connection, transaction

    if connection.vendor == "mysql":  # as Django recommends (check mysql.W002)
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_TRANS_TABLES')")
    long_note = "n" * 1001  # pause_note holds 1000
    try:
        with transaction.atomic():
            db.update_values(DjangoJob, "default", ["pause_note"], [["j0", long_note]])
    except DatabaseError:
        assert connection.vendor != "sqlite"
        assert DjangoJob.objects.get(id="j0").pause_note is None
    else:
        assert connection.vendor == "sqlite"
        assert DjangoJob.objects.get(id="j0").pause_note == long_note


def test_each_writer_is_one_statement_and_on_postgresql_carries_its_rows_as_json(jobs_):
    """Django's prepared values (psycopg's Binary, Int4) go in the JSON too, not an array each."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        db.update_values(
            DjangoJob,
            "default",
            ["next_run_time", "job_state", "version"],
            [[f"j{i}", AT, b"state", 3] for i in range(3)],
        )
        _insert([_run(f"j{i}", DjangoJobExecution.SENT) for i in range(3)], ignore_conflicts=True)
    statements = [q["sql"] for q in queries if q["sql"].startswith(("UPDATE", "INSERT"))]
    assert len(statements) == 2
    if connection.vendor == "postgresql":
        assert all("json_array_elements" in sql for sql in statements), statements
    assert {bytes(r.job_state) for r in DjangoJob.objects.all()} == {b"state"}
    assert {r.version for r in DjangoJob.objects.all()} == {3}
