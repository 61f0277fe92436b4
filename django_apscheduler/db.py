"""Surviving lost database connections: reconnect and retry where that is safe.

A scheduler thread keeps one connection for days. The server may drop it at
any time (a restart, an idle timeout, MySQL's "server has gone away", an
operator's ``pg_terminate_backend``), and SQLite may answer "database is
locked" under load. Every database operation of this app goes through
:func:`run_resiliently`, which closes the broken connection and runs the
operation again on a fresh one, with a growing pause between attempts.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Sequence, TypeVar

from django.db import DatabaseError, connections
from django.db.models import Field, Model
from django.db.models.constants import OnConflict

from django_apscheduler import backends, conf

logger = logging.getLogger(__name__)

T = TypeVar("T")

_FIRST_PAUSE = 0.05
_LONGEST_PAUSE = 2.0


def run_resiliently(
    operation: Callable[[], T],
    *,
    using: str,
    description: str,
    keep_trying: Callable[[], bool] | None = None,
    timeout: float | None = None,
) -> T:
    """Run ``operation`` and return its result, retrying after retryable database errors.

    ``operation`` must be safe to run again after a failure: it runs in its own
    transaction (or is a single statement), so a failed attempt left nothing
    behind, or it checks for the effect of an earlier attempt itself.

    Retries stop after ``timeout`` seconds (default: the
    ``APSCHEDULER_DB_RETRY_TIMEOUT`` setting), unless ``keep_trying`` is given
    and returns True: the scheduler's own loop uses it to keep trying for as
    long as the scheduler runs. Errors that a retry cannot fix (bad SQL, a
    missing table, a constraint violation), and any error inside an enclosing
    transaction, propagate at once.
    """
    backend = backends.for_alias(using)
    limit = conf.db_retry_timeout() if timeout is None else timeout
    started = time.monotonic()
    pause = _FIRST_PAUSE
    attempt = 0
    while True:
        try:
            return operation()
        except DatabaseError as exc:
            connection = connections[using]
            if connection.in_atomic_block or not backend.is_retryable(exc):
                raise
            attempt += 1
            # The connection may be dead or in an unknown state: start afresh.
            try:
                connection.close()
            except DatabaseError:
                pass
            elapsed = time.monotonic() - started
            patient = keep_trying is not None and keep_trying()
            if not patient and elapsed >= limit:
                logger.error(
                    "Database error while trying to %s; gave up after %d attempts in %.1f s: %s",
                    description,
                    attempt,
                    elapsed,
                    exc,
                )
                raise
            log = logger.warning if attempt == 1 or attempt % 20 == 0 else logger.debug
            log(
                "Database error while trying to %s (attempt %d): %s. Reconnecting and retrying.",
                description,
                attempt,
                exc,
            )
            time.sleep(pause)
            pause = min(pause * 2, _LONGEST_PAUSE)


def insert_rows(
    model: type[Model],
    using: str,
    fields: list[str],
    rows: Iterable[Sequence[Any]],
    ignore_conflicts: bool = False,
) -> None:
    """``INSERT`` each of ``rows`` (the values of ``fields``, in order) with one ``executemany``.

    Like ``bulk_create``, without building a model instance per row: the log
    writes one row per run. Every other column gets its field's default.
    With ``ignore_conflicts`` a row that would break a unique constraint is
    left out, as ``bulk_create(ignore_conflicts=True)`` does.
    """
    connection = connections[using]
    meta = model._meta
    quote = connection.ops.quote_name
    given = [_column(model, name) for name in fields]
    defaults = [
        (field, field.get_db_prep_save(field.get_default(), connection))
        for field in meta.concrete_fields
        if field.name not in fields and field.attname not in fields and not field.primary_key
    ]
    on_conflict = OnConflict.IGNORE if ignore_conflicts else None
    columns = [column for _, column in given] + [str(field.column) for field, _ in defaults]
    sql = "{} {} ({}) VALUES ({}){}".format(
        connection.ops.insert_statement(on_conflict=on_conflict),
        quote(meta.db_table),
        ", ".join(quote(column) for column in columns),
        ", ".join(["%s"] * len(columns)),
        " " + suffix
        if (
            suffix := connection.ops.on_conflict_suffix_sql(
                [field for field, _ in given], on_conflict, None, None
            )
        )
        else "",
    )
    tail = [value for _, value in defaults]
    params = [
        [field.get_db_prep_save(value, connection) for (field, _), value in zip(given, row)] + tail
        for row in rows
    ]
    if params:
        with connection.cursor() as cursor:
            cursor.executemany(sql, params)


def update_values(
    model: type[Model], using: str, fields: list[str], rows: Iterable[Sequence[Any]]
) -> int:
    """``UPDATE`` rows by primary key: each of ``rows`` is the key, then the values of ``fields``.

    One parametrised statement with one ``executemany`` (see :func:`update_rows`).
    Returns the number of rows given.
    """
    connection = connections[using]
    meta = model._meta
    quote = connection.ops.quote_name
    columns = [_column(model, name) for name in fields]
    pk = meta.pk
    assert pk is not None and pk.column is not None
    sql = "UPDATE {} SET {} WHERE {} = %s".format(
        quote(meta.db_table),
        ", ".join(f"{quote(column)} = %s" for _, column in columns),
        quote(pk.column),
    )
    params = [
        [field.get_db_prep_save(value, connection) for (field, _), value in zip(columns, row[1:])]
        + [pk.get_db_prep_value(row[0], connection)]
        for row in rows
    ]
    if params:
        with connection.cursor() as cursor:
            cursor.executemany(sql, params)
    return len(params)


def update_rows(model: type[Model], using: str, rows: Iterable[Model], fields: list[str]) -> int:
    """``UPDATE`` each of ``rows`` by primary key, setting ``fields``, with one ``executemany``.

    Django's ``bulk_update`` builds a ``CASE`` expression per field and row in
    Python, which costs more than the database's work for the few dozen rows
    of a dispatch round or a log batch. One parametrised statement, executed
    for every row, is plain SQL on every backend (psycopg pipelines it into
    one round trip). Returns the number of rows given.
    """
    attnames = [_column(model, name)[0].attname for name in fields]
    return update_values(
        model,
        using,
        fields,
        ([row.pk] + [getattr(row, attname) for attname in attnames] for row in rows),
    )


def _column(model: type[Model], name: str) -> tuple[Field[Any, Any], str]:
    """The field ``name`` of ``model`` and its column, for :func:`update_rows`."""
    field = model._meta.get_field(name)
    if not isinstance(field, Field) or field.column is None:
        raise ValueError(
            f"update_rows: {model.__name__}.{name} has no column of its own; "
            "pass only the names of concrete fields."
        )
    return field, field.column
