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
import threading
import time
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.backends.signals import connection_created
from django.db.models import (
    CharField,
    DateTimeField,
    DecimalField,
    Field,
    ForeignKey,
    Model,
    TextField,
)
from django.db.models.constants import OnConflict

from django_apscheduler import backends, conf

logger = logging.getLogger(__name__)

T = TypeVar("T")

_FIRST_PAUSE = 0.05
_LONGEST_PAUSE = 2.0

# --- the scheduler's own sessions --------------------------------------------------

_serving = threading.local()

#: A scheduler's session idle inside a transaction this many leases is ended
#: by the server (``Backend.bound_idle_transactions``): its process froze
#: long enough to have been taken for dead, and its row locks would keep the
#: jobs from the schedulers that took over. Well above any pause of a live one.
IDLE_TRANSACTION_LEASES = 2


def serve_scheduler(using: str) -> None:
    """Mark the calling thread as one that does only a scheduler's own database work.

    Its sessions, the current one on ``using`` and every one it opens later,
    are ended by the server if they idle inside a transaction for
    :data:`IDLE_TRANSACTION_LEASES` leases. Only threads of the scheduler
    are marked (its dispatch loop, housekeeping and recorder threads), never
    a thread running jobs or serving requests, whose transactions are the
    user's, nor a hand-off thread, which waits for the broker inside a
    transaction.
    """
    if getattr(_serving, "marked", False):
        return
    _serving.marked = True
    connection = connections[using]
    if connection.connection is not None:
        _bound(connection)


def _bound(connection: Any) -> None:
    seconds = IDLE_TRANSACTION_LEASES * conf.lease_time()
    try:
        backends.for_connection(connection).bound_idle_transactions(connection, seconds)
    except DatabaseError:
        # The next statement meets the same problem and is retried as usual.
        logger.warning("Could not limit idle transactions on %r", connection.alias, exc_info=True)


def _on_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    if getattr(_serving, "marked", False):
        _bound(connection)


connection_created.connect(_on_connection_created, dispatch_uid=f"{__name__}.bound")


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


#: Rows per statement of :func:`insert_rows` and :func:`update_values`.
ROWS_PER_STATEMENT = 250


def _chunks(rows: Iterable[Sequence[Any]]) -> Iterator[list[Sequence[Any]]]:
    chunk: list[Sequence[Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == ROWS_PER_STATEMENT:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def insert_rows(
    model: type[Model],
    using: str,
    fields: list[str],
    rows: Iterable[Sequence[Any]],
    *,
    ignore_conflicts: bool = False,
    update_fields: list[str] | None = None,
    unique_fields: list[str] | None = None,
) -> None:
    """``INSERT`` ``rows`` (each the values of ``fields``, in order), many rows per statement.

    Like ``bulk_create``, without building a model instance or an expression
    per row: the log writes a row per run. Every other column gets its
    field's default. As with ``bulk_create``, ``ignore_conflicts`` leaves
    out a row that would break a unique constraint, and ``update_fields``
    (with ``unique_fields`` naming the constraint) updates the existing row
    instead, in Django's own SQL for each backend.
    """
    connection = connections[using]
    meta = model._meta
    quote = connection.ops.quote_name
    given = [_column(model, name)[0] for name in fields]
    defaults = [
        (field, field.get_db_prep_save(field.get_default(), connection))
        for field in meta.concrete_fields
        if field.name not in fields and field.attname not in fields and not field.primary_key
    ]
    on_conflict = (
        OnConflict.UPDATE if update_fields else OnConflict.IGNORE if ignore_conflicts else None
    )
    every = given + [field for field, _ in defaults]
    suffix = connection.ops.on_conflict_suffix_sql(
        given,
        on_conflict,
        [_column(model, name)[1] for name in update_fields or ()],
        [_column(model, name)[1] for name in unique_fields or ()],
    )
    head = "{} {} ({})".format(
        connection.ops.insert_statement(on_conflict=on_conflict),
        quote(meta.db_table),
        ", ".join(quote(str(field.column)) for field in every),
    )
    types = [str(field.cast_db_type(connection)) for field in every]
    tail = [value for _, value in defaults]
    preparers = [_preparer(field, connection) for field in given]
    backend = backends.for_alias(using)
    with connection.cursor() as cursor:
        for chunk in _chunks(rows):
            prepared = [
                [prepare(value) for prepare, value in zip(preparers, row)] + tail for row in chunk
            ]
            backend.insert_many(cursor, head, types, prepared, " " + suffix if suffix else "")


def update_values(
    model: type[Model], using: str, fields: list[str], rows: Iterable[Sequence[Any]]
) -> int:
    """``UPDATE`` rows by primary key: each of ``rows`` is the key, then the values of ``fields``.

    Many rows per statement, in SQL of the backend's (:meth:`backends.Backend.update_many`);
    Django's ``bulk_update`` builds an expression per row and field in
    Python, which costs more than the database's work. Returns the number
    of rows given.
    """
    connection = connections[using]
    meta = model._meta
    quote = connection.ops.quote_name
    columns = [_column(model, name)[0] for name in fields]
    pk = meta.pk
    assert pk is not None and pk.column is not None
    types = [str(field.cast_db_type(connection)) for field in [pk, *columns]]
    key = _preparer(pk, connection, saving=False)
    preparers = [_preparer(field, connection) for field in columns]
    backend = backends.for_alias(using)
    count = 0
    with connection.cursor() as cursor:
        for chunk in _chunks(rows):
            count += len(chunk)
            prepared = [
                [key(row[0])] + [prepare(value) for prepare, value in zip(preparers, row[1:])]
                for row in chunk
            ]
            backend.update_many(
                cursor,
                quote(meta.db_table),
                quote(pk.column),
                [quote(str(field.column)) for field in columns],
                types,
                prepared,
            )
    return count


def _preparer(field: Field[Any, Any], connection: Any, saving: bool = True) -> Callable[[Any], Any]:
    """A function of a value to what the database takes for ``field``; NULL stays NULL, at no cost.

    The row writers prepare every value of every row (the log writes a row
    per run). Where Django's own field prepares a value of the usual type in
    one known step (a string for a text field: itself; a finite ``Decimal``
    and a datetime of the right awareness: the backend's adaptation), that
    step is taken directly. Any other field (a subclass that prepares
    differently) or value (a lazy string, a float) is prepared by the field.
    """
    prep = field.get_db_prep_save if saving else field.get_db_prep_value
    kind = _own_kind(field)
    if not saving and kind is not CharField and kind is not TextField:
        kind = None  # the shortcuts below are those of saving a value
    ops = connection.ops

    if kind is DecimalField:
        digits, places = field.max_digits, field.decimal_places  # type: ignore[attr-defined]

        def prepared_decimal(value: Any) -> Any:
            if value is None:
                return None
            if type(value) is Decimal and value.is_finite():
                return ops.adapt_decimalfield_value(value, digits, places)
            return prep(value, connection)

        return prepared_decimal
    if kind is DateTimeField:
        aware = bool(settings.USE_TZ)

        def prepared_datetime(value: Any) -> Any:
            if value is None:
                return None
            if type(value) is datetime and (value.utcoffset() is not None) is aware:
                return ops.adapt_datetimefield_value(value)
            return prep(value, connection)

        return prepared_datetime
    if kind is CharField or kind is TextField:

        def prepared_text(value: Any) -> Any:
            if value is None or (type(value) is str and value):
                return value
            return prep(value, connection)

        return prepared_text

    def prepared(value: Any) -> Any:
        return None if value is None else prep(value, connection)

    return prepared


#: The fields whose preparation :func:`_preparer` shortens, and the methods it relies on.
_KNOWN_KINDS = (CharField, TextField, DecimalField, DateTimeField)
_PREPARING = ("get_db_prep_save", "get_db_prep_value", "get_prep_value", "to_python")


def _own_kind(field: Field[Any, Any]) -> type | None:
    """The one of :data:`_KNOWN_KINDS` that prepares ``field``'s values, by its own methods only.

    A foreign key prepares as its target does. None for any other field, and
    for a subclass that overrides any step of the preparation.
    """
    kind = type(field)
    if isinstance(field, ForeignKey):
        target = field.target_field
        if (
            kind.get_db_prep_save is ForeignKey.get_db_prep_save
            and kind.get_db_prep_value is ForeignKey.get_db_prep_value
            and isinstance(target, Field)
        ):
            return _own_kind(target)
        return None
    base = next((b for b in _KNOWN_KINDS if issubclass(kind, b)), None)
    if base is None or not all(getattr(kind, name) is getattr(base, name) for name in _PREPARING):
        return None
    return base


def _column(model: type[Model], name: str) -> tuple[Field[Any, Any], str]:
    """The field ``name`` of ``model`` and its column, for the row writers above."""
    field = model._meta.get_field(name)
    if not isinstance(field, Field) or field.column is None:
        raise ValueError(
            f"{model.__name__}.{name} has no column of its own; "
            "pass only the names of concrete fields."
        )
    return field, field.column
