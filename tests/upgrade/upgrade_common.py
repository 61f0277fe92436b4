"""What both sides of the 0.7.0 upgrade test record about the database.

Loaded in the 0.7.0 environment and in ours, after ``django.setup()``. It
reads the tables with plain SQL and the jobs with plain APScheduler, never
through ``django_apscheduler``, so both sides describe the database in exactly
the same way and the descriptions can be compared as they are.
"""

import pickle
from datetime import date, datetime
from decimal import Decimal

from apscheduler.job import Job
from django.db import connection

APP = "django_apscheduler"
JOB_TABLE = "django_apscheduler_djangojob"
EXECUTION_TABLE = "django_apscheduler_djangojobexecution"
TABLES = (JOB_TABLE, EXECUTION_TABLE)


def plain(value):
    """``value`` as JSON-friendly data that compares equal across processes."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _query(sql, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [list(row) for row in cursor.fetchall()]


def _vendor_ddl():
    """The tables as the database itself describes them."""
    vendor = connection.vendor
    if vendor == "sqlite":
        return _query(
            "SELECT type, name, tbl_name, sql FROM sqlite_master "
            "WHERE tbl_name IN (%s, %s) ORDER BY type, name",
            TABLES,
        )
    if vendor == "postgresql":
        return {
            "columns": _query(
                "SELECT table_name, ordinal_position, column_name, data_type, "
                "character_maximum_length, numeric_precision, numeric_scale, is_nullable, "
                "column_default, is_identity, identity_generation "
                "FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name IN (%s, %s) "
                "ORDER BY table_name, ordinal_position",
                TABLES,
            ),
            "constraints": _query(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                "FROM pg_constraint WHERE conrelid::regclass::text IN (%s, %s) "
                "ORDER BY 1, 2",
                TABLES,
            ),
            "indexes": _query(
                "SELECT tablename, indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = current_schema() AND tablename IN (%s, %s) "
                "ORDER BY 1, 2",
                TABLES,
            ),
            "sequences": _query(
                "SELECT sequence_name, data_type, start_value, increment "
                "FROM information_schema.sequences "
                "WHERE sequence_schema = current_schema() AND sequence_name LIKE %s "
                "ORDER BY 1",
                (APP + "%",),
            ),
        }
    if vendor == "mysql":
        # The AUTO_INCREMENT counter is part of this text; nothing is written
        # between the two snapshots, so it must not move either.
        return [_query(f"SHOW CREATE TABLE {table}")[0] for table in TABLES]
    return None


def schema_snapshot():
    """Columns, constraints, indexes and sequences of both tables."""
    import django

    # "ddl" is the database's own description and must match exactly. Django's
    # introspection is recorded as well, but its shape depends on the Django
    # version, so it is only comparable between runs of the same version.
    snapshot = {
        "vendor": connection.vendor,
        "ddl": plain(_vendor_ddl()),
        "django": "{}.{}".format(*django.VERSION[:2]),
    }
    introspection = connection.introspection
    with connection.cursor() as cursor:
        for table in TABLES:
            snapshot[table] = {
                "columns": plain(
                    [tuple(info) for info in introspection.get_table_description(cursor, table)]
                ),
                "constraints": plain(introspection.get_constraints(cursor, table)),
                "sequences": plain(introspection.get_sequences(cursor, table)),
            }
    snapshot["content_types"] = _query(
        "SELECT id, app_label, model FROM django_content_type WHERE app_label = %s ORDER BY id",
        (APP,),
    )
    snapshot["permissions"] = _query(
        "SELECT p.id, p.codename, p.name, p.content_type_id FROM auth_permission p "
        "JOIN django_content_type c ON c.id = p.content_type_id "
        "WHERE c.app_label = %s ORDER BY p.id",
        (APP,),
    )
    return snapshot


def recorded_migrations():
    """Names of the app's migrations recorded in ``django_migrations``, in order."""
    rows = _query("SELECT name FROM django_migrations WHERE app = %s ORDER BY id", (APP,))
    return [name for (name,) in rows]


def execution_rows():
    """Every execution row, all columns, in id order."""
    rows = _query(
        "SELECT id, job_id, status, run_time, duration, finished, exception, traceback "
        f"FROM {EXECUTION_TABLE} ORDER BY id"
    )
    keys = ("id", "job_id", "status", "run_time", "duration", "finished", "exception", "traceback")
    return [dict(zip(keys, plain(row))) for row in rows]


def job_rows():
    """Every job row: id, next run time and the stored state (with its pickle header)."""
    rows = _query(f"SELECT id, next_run_time, job_state FROM {JOB_TABLE} ORDER BY id")
    return [
        {
            "id": job_id,
            "next_run_time": plain(next_run_time),
            "state": plain(state),
            "pickle_header": bytes(state)[:2].hex(),
        }
        for job_id, next_run_time, state in rows
    ]


def describe_job(job):
    """What identifies an APScheduler job and its schedule."""
    trigger = job.trigger
    return {
        "id": job.id,
        "name": job.name,
        "func_ref": job.func_ref,
        "args": plain(job.args),
        "kwargs": plain(job.kwargs),
        "trigger_class": f"{type(trigger).__module__}.{type(trigger).__qualname__}",
        "trigger": str(trigger),
        "trigger_repr": repr(trigger),
        "executor": job.executor,
        "misfire_grace_time": job.misfire_grace_time,
        "coalesce": job.coalesce,
        "max_instances": job.max_instances,
        "next_run_time": plain(job.next_run_time),
    }


def describe_state(job_state):
    """``describe_job`` for a stored ``job_state``, restored by APScheduler alone."""
    job = Job.__new__(Job)
    job.__setstate__(pickle.loads(bytes(job_state)))
    return describe_job(job)


def stored_jobs():
    """``describe_state`` of every job row that has a state, by id."""
    rows = _query(f"SELECT id, job_state FROM {JOB_TABLE} ORDER BY id")
    return {job_id: describe_state(state) for job_id, state in rows if state and bytes(state)}
