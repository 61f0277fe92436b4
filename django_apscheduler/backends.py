"""Everything that differs between database vendors, behind one small interface.

No other module looks at ``connection.vendor``: they ask ``for_alias(using)``
for a :class:`Backend` and call its methods. Supported: PostgreSQL, MySQL /
MariaDB and SQLite; any other vendor gets the portable defaults.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import socket
from contextlib import contextmanager
from datetime import date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar, cast

from django.db import InterfaceError, OperationalError, connections, transaction
from django.db.models import CharField, F, Model, QuerySet
from django.db.models.lookups import Lookup

from django_apscheduler import internals

if TYPE_CHECKING:
    from django.db.backends.sqlite3.base import DatabaseWrapper as SQLiteDatabaseWrapper

#: The model of the rows a locking queryset selects (the lock methods return the same kind).
M = TypeVar("M", bound=Model)

logger = logging.getLogger(__name__)

#: The PostgreSQL channel on which job changes are announced.
CHANNEL = "django_apscheduler"


class Listener:
    """A connection of its own that receives change notifications (PostgreSQL only).

    ``fileno()`` becomes readable when a notification (or the connection's
    end) arrives; ``drain()`` then returns how many arrived and raises if the
    connection is gone, after which the listener is closed and a new one is
    needed.
    """

    def fileno(self) -> int:
        raise NotImplementedError

    def drain(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class RunLockSession:
    """Named locks that live as long as one session (a connection or open files) of this process.

    A run of a job holds one such lock while it runs (see :mod:`runlocks`):
    whatever happens to heartbeats and claims, no other process can take the
    same lock until the run releases it or this process ends. ``try_lock``
    never waits. Locks are not re-entrant across processes but may be within
    one session: callers keep their own count of what this process holds.
    Methods raise a database (or OS) error when the session is lost; the
    caller then closes it and opens a new one.
    """

    def try_lock(self, name: str) -> bool:
        """Take the lock ``name`` if nobody else holds it; return whether it is now held."""
        raise NotImplementedError

    def unlock(self, name: str) -> None:
        """Give up the lock ``name``."""
        raise NotImplementedError

    def try_lock_many(self, names: Sequence[str]) -> list[bool]:
        """:meth:`try_lock` each of ``names``; whether each is now held, in order.

        One round trip where the database can do it (a dispatch round takes
        the locks of all its runs at once).
        """
        return [self.try_lock(name) for name in names]

    def unlock_many(self, names: Sequence[str]) -> None:
        """:meth:`unlock` each of ``names``, in one round trip where the database can."""
        for name in names:
            self.unlock(name)

    def holder(self, name: str) -> str | None:
        """Who holds ``name`` (for messages), if the database can tell."""
        return None

    def ping(self) -> None:
        """Raise if the session is lost (its locks then are too)."""

    def close(self) -> None:
        """End the session, giving up every lock it holds."""

    def forget_in_child(self) -> None:
        """In a forked child: let go of the parent's session without ending it.

        The parent's locks must stay the parent's, whatever the child does or
        however it ends.
        """


class _LocalRunLockSession(RunLockSession):
    """No lock shared with other processes: only this process's own count applies.

    For in-memory SQLite databases (no other process can reach them) and
    vendors without session locks.
    """

    def try_lock(self, name: str) -> bool:
        return True

    def unlock(self, name: str) -> None:
        pass


@functools.lru_cache(maxsize=4096)
def _digest(database: str, name: str) -> bytes:
    """A digest naming lock ``name`` in ``database``'s namespace (cached: a run locks and unlocks)."""
    return hashlib.sha256(f"{database}\x00{name}".encode("utf-8", "surrogatepass")).digest()


class _ConnectionRunLockSession(RunLockSession):
    """Session locks on a connection of its own, outside Django's per-thread connections.

    Shared by the threads of this process (guarded by the caller's mutex), in
    autocommit mode, so the locks it takes outlive every transaction.
    """

    def __init__(self, using: str) -> None:
        self.using = using
        self._wrapper = connections.create_connection(using)
        self._database = str(self._wrapper.settings_dict.get("NAME") or "")
        self._wrapper.inc_thread_sharing()
        try:
            self._wrapper.ensure_connection()
            self._wrapper.set_autocommit(True)
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        pass

    def _query(self, sql: str, params: list[Any]) -> Any:
        with self._wrapper.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        return row[0] if row else None

    def ping(self) -> None:
        self._query("SELECT 1", [])

    def forget_in_child(self) -> None:
        # The child shares the parent's socket: point its copy at /dev/null, so
        # the driver's goodbye when the child drops the connection never
        # reaches the server (it would end the parent's session and locks).
        try:
            fd = self._wrapper.connection.fileno()
            null = os.open(os.devnull, os.O_RDWR)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
        except Exception:  # no socket left to detach
            logger.debug("Could not detach the inherited run-lock connection", exc_info=True)

    def close(self) -> None:
        try:
            self._wrapper.close()
        except Exception:  # already broken: nothing left to close
            logger.debug("Closing the run-lock connection failed", exc_info=True)


class _PostgreSQLRunLockSession(_ConnectionRunLockSession):
    """``pg_try_advisory_lock(bigint)``: session-level advisory locks, per database."""

    def _setup(self) -> None:
        with self._wrapper.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('application_name', %s, false)",
                [f"django_apscheduler {socket.gethostname()[:30]}:{os.getpid()}"],
            )

    def _key(self, name: str) -> int:
        return int.from_bytes(_digest(self._database, name)[:8], "big", signed=True)

    def try_lock(self, name: str) -> bool:
        return bool(self._query("SELECT pg_try_advisory_lock(%s)", [self._key(name)]))

    def unlock(self, name: str) -> None:
        self._query("SELECT pg_advisory_unlock(%s)", [self._key(name)])

    def try_lock_many(self, names: Sequence[str]) -> list[bool]:
        if not names:
            return []
        with self._wrapper.cursor() as cursor:
            cursor.execute(
                "SELECT pg_try_advisory_lock(k::bigint) FROM json_array_elements_text(%s::json) "
                "WITH ORDINALITY AS t(k, i) ORDER BY i",
                [json.dumps([self._key(name) for name in names])],
            )
            return [bool(taken) for (taken,) in cursor.fetchall()]

    def unlock_many(self, names: Sequence[str]) -> None:
        if names:
            self._query(
                "SELECT count(pg_advisory_unlock(k::bigint)) "
                "FROM json_array_elements_text(%s::json) AS t(k)",
                [json.dumps([self._key(name) for name in names])],
            )

    def holder(self, name: str) -> str | None:
        key = self._key(name) & 0xFFFFFFFFFFFFFFFF
        row = self._query(
            "SELECT a.application_name || ' (backend pid ' || a.pid || ')' FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
            "AND l.granted AND l.database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database()) AND l.classid::text::bigint = %s "
            "AND l.objid::text::bigint = %s AND l.objsubid = 1",
            [key >> 32, key & 0xFFFFFFFF],
        )
        return row or None


class _MySQLRunLockSession(_ConnectionRunLockSession):
    """``GET_LOCK(name, 0)``: user-level locks, server-wide, so the name includes the database."""

    def _name(self, name: str) -> str:
        return "django_apscheduler:" + _digest(self._database, name).hex()[:40]  # 59 of 64 chars

    def try_lock(self, name: str) -> bool:
        return self._query("SELECT GET_LOCK(%s, 0)", [self._name(name)]) == 1

    def unlock(self, name: str) -> None:
        self._query("SELECT RELEASE_LOCK(%s)", [self._name(name)])

    #: Locks per statement of the batched calls (one row of that many columns).
    BATCH = 200

    def _each(self, function: str, names: Sequence[str]) -> list[Any]:
        results: list[Any] = []
        for start in range(0, len(names), self.BATCH):
            chunk = [self._name(name) for name in names[start : start + self.BATCH]]
            with self._wrapper.cursor() as cursor:
                cursor.execute("SELECT " + ", ".join([function] * len(chunk)), chunk)
                results.extend(cursor.fetchone())
        return results

    def try_lock_many(self, names: Sequence[str]) -> list[bool]:
        return [taken == 1 for taken in self._each("GET_LOCK(%s, 0)", names)]

    def unlock_many(self, names: Sequence[str]) -> None:
        self._each("RELEASE_LOCK(%s)", names)

    def holder(self, name: str) -> str | None:
        holder = self._query("SELECT IS_USED_LOCK(%s)", [self._name(name)])
        return None if holder is None else f"MySQL connection {holder}"


@functools.lru_cache(maxsize=4096)
def _lock_file(directory: str, name: str) -> str:
    """The file of lock ``name`` in ``directory`` (cached: a run locks it, another looks it up)."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return os.path.join(directory, f"{digest}.lock")


class _FileRunLockSession(RunLockSession):
    """``fcntl.flock`` on one file per lock, in a directory beside the SQLite database.

    The OS drops the lock when the file is closed, at the latest when the
    process ends, however it ends. Each lock file names its holder.
    """

    def __init__(self, directory: str) -> None:
        import fcntl

        self._fcntl = fcntl
        self._directory = directory
        os.makedirs(directory, exist_ok=True)
        self._files: dict[str, int] = {}
        self._holder, self._holder_pid = b"", 0

    def _path(self, name: str) -> str:
        return _lock_file(self._directory, name)

    #: Bytes of the holder's name at the start of a lock file (padded: no truncation needed).
    HOLDER_BYTES = 200

    def _holder_text(self) -> bytes:
        """This process's name for the lock files, padded to :attr:`HOLDER_BYTES` (made once per pid)."""
        pid = os.getpid()
        if self._holder_pid != pid:
            text = f"process {pid} on {socket.gethostname()}".encode()[: self.HOLDER_BYTES]
            self._holder, self._holder_pid = text.ljust(self.HOLDER_BYTES), pid
        return self._holder

    def try_lock(self, name: str) -> bool:
        fd = os.open(self._path(name), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            self._fcntl.flock(fd, self._fcntl.LOCK_EX | self._fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        # One write over the whole name field (a dispatch round locks hundreds of files).
        os.pwrite(fd, self._holder_text(), 0)
        self._files[name] = fd
        return True

    def unlock(self, name: str) -> None:
        fd = self._files.pop(name, None)
        if fd is not None:
            os.close(fd)  # closing the file drops the lock

    def holder(self, name: str) -> str | None:
        try:
            with open(self._path(name)) as file:
                return file.read(self.HOLDER_BYTES).strip() or None
        except OSError:
            return None

    def close(self) -> None:
        for name in list(self._files):
            self.unlock(name)

    def forget_in_child(self) -> None:
        # A lock lives until every copy of its file descriptor is closed: the
        # child closes its copies, and the parent's close alone releases it.
        for fd in self._files.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._files.clear()


#: Python types whose JSON text PostgreSQL casts back to the same value.
_JSON_PLAIN = (str, int, bool)


def _json_value(value: Any) -> Any:
    """``value`` as JSON text PostgreSQL reads back exactly; TypeError for any other type."""
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)  # psycopg's Int4 and the like, as Django prepares integers
    if type(value).__name__ == "Binary":
        # How Django prepares a BinaryField's value: psycopg 3's Binary keeps
        # the bytes as ``obj``, psycopg2's as ``adapted``.
        value = getattr(value, "obj", getattr(value, "adapted", value))
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()  # a naive time is read in the session's time zone, as psycopg's
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()  # bytea's hex input format
    if isinstance(value, float):
        return repr(value)
    raise TypeError(type(value).__name__)


def _rows_source(types: Sequence[str], rows: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
    """A ``SELECT`` of ``rows`` as columns of ``types``, and its parameters.

    One JSON parameter whatever the number of rows, encoded in C
    (``json.dumps``), where psycopg would quote each element of an array in
    Python; one array per column (``unnest``) if a value has no exact JSON
    form. Either way each column is cast to its type without a length
    (:func:`_unbounded`): NULL stays NULL, and a value too long for its
    column is refused when assigned, as an ``INSERT`` of it would be.
    """
    try:
        ready = [
            [v if v is None or type(v) in _JSON_PLAIN else _json_value(v) for v in row]
            for row in rows
        ]
    except TypeError:
        arrays = ", ".join(f"%s::{_unbounded(sql_type)}[]" for sql_type in types)
        return f"SELECT * FROM unnest({arrays})", [list(column) for column in zip(*rows)]
    columns = ", ".join(
        f"(r->>{index})::{_unbounded(sql_type)}" for index, sql_type in enumerate(types)
    )
    return (
        f"SELECT {columns} FROM json_array_elements(%s::json) AS r",
        [json.dumps(ready, ensure_ascii=False)],
    )


#: Types whose length an explicit cast would silently cut to, and their unbounded forms.
_BOUNDED = re.compile(
    r"^\s*(varchar|character varying|char|character|bpchar|bit|bit varying|varbit|numeric|decimal)"
    r"\s*\(\s*\d+(\s*,\s*\d+)?\s*\)\s*$",
    re.IGNORECASE,
)
_UNBOUNDED = {
    "varchar": "varchar",
    "character varying": "varchar",
    "char": "bpchar",
    "character": "bpchar",
    "bpchar": "bpchar",
    "bit": "varbit",
    "bit varying": "varbit",
    "varbit": "varbit",
    "numeric": "numeric",
    "decimal": "numeric",
}


def _unbounded(sql_type: str) -> str:
    """``sql_type`` without the length an explicit cast would cut values to (``varchar(255)``).

    ``char(4)`` becomes ``bpchar``, not ``char`` (which means ``char(1)``);
    any other type is left as it is.
    """
    match = _BOUNDED.match(sql_type)
    return _UNBOUNDED[match[1].lower()] if match else sql_type


class _InStrings(Lookup):  # type: ignore[type-arg]
    """``column IN (%s, ...)`` of strings passed as they are (see ``Backend.with_keys``)."""

    lookup_name = "django_apscheduler_in_strings"  # never registered: used as an expression
    prepare_rhs = False

    def as_sql(self, compiler: Any, connection: Any) -> Any:
        lhs, params = self.process_lhs(compiler, connection)
        return f"{lhs} IN ({', '.join(['%s'] * len(self.rhs))})", (*params, *self.rhs)


class _AnyOfJSON(Lookup):  # type: ignore[type-arg]
    """``column = ANY(<the strings of one JSON array>)``: an index scan, one parameter."""

    lookup_name = "django_apscheduler_any_of_json"  # never registered: used as an expression
    prepare_rhs = False

    def as_sql(self, compiler: Any, connection: Any) -> Any:
        lhs, params = self.process_lhs(compiler, connection)
        sql = f"{lhs} = ANY(ARRAY(SELECT json_array_elements_text(%s::json)))"
        return sql, (*params, json.dumps(self.rhs, ensure_ascii=False))


class Backend:
    """Portable behaviour; subclasses override what their database does differently."""

    vendor = "other"

    @contextmanager
    def write_transaction(self, using: str) -> Iterator[None]:
        """A transaction meant to write, holding the write lock from its first statement."""
        with transaction.atomic(using=using):
            yield

    @contextmanager
    def writing_transactions(self, using: str) -> Iterator[None]:
        """While inside, every transaction this thread starts on ``using`` is a write transaction.

        For code whose transactions are opened by someone else (Django's
        admin wraps a save in ``atomic()``) and read before they write: on a
        database that refuses such a transaction the write lock at once when
        another connection holds it, each then waits for the lock from the
        start instead. Nothing changes where row locks make that moot.
        """
        yield

    def refuses_late_writers(self, settings_dict: dict[str, Any]) -> bool:
        """True if, with these database settings, a transaction that read first is refused the
        write lock at once (no waiting) while another connection writes.

        A request under ``ATOMIC_REQUESTS`` that changes a job is such a
        transaction (``checks.check_atomic_requests``).
        """
        return False

    def bound_idle_transactions(self, wrapper: Any, seconds: float) -> None:
        """Have the server end this session once it idles ``seconds`` inside a transaction.

        A scheduler process that freezes (SIGSTOP, a paused VM or container)
        in the middle of a transaction keeps its row locks: the jobs it was
        claiming or writing back could then not be taken over by any other
        scheduler, which skips locked rows, until it woke up. Ending such a
        session frees them; a database without such a limit does nothing.
        Only the scheduler's own connections get this (``db.serve_scheduler``).
        """

    def is_retryable(self, exc: BaseException) -> bool:
        """True if ``exc`` means "the connection was lost" or "try again later".

        Such errors are worth a reconnect and a retry; errors in the SQL or
        the data (a missing table, a bad value) are not.
        """
        return isinstance(exc, InterfaceError)

    def heartbeat(
        self, instances: QuerySet[M], instance_id: str, now: datetime, dead_before: datetime
    ) -> tuple[bool, bool | None]:
        """Write ``instance_id``'s heartbeat ``now``; return (row found, any other instance dead).

        "Dead" means a heartbeat older than ``dead_before``. Where one
        statement can say both, the caller needs no query of its own to look
        for dead instances (an idle scheduler's cost); elsewhere the second
        value is None: unknown.
        """
        found = instances.filter(pk=instance_id).update(last_heartbeat=now)
        return bool(found), None

    def insert_many(
        self,
        cursor: Any,
        head: str,
        types: Sequence[str],
        rows: Sequence[Sequence[Any]],
        suffix: str,
    ) -> None:
        """Run ``head`` (``INSERT INTO t (columns)``) for ``rows``, then ``suffix``, in one statement.

        ``types`` are the columns' SQL types (for databases that need them).
        Portable: a ``VALUES`` list of all the rows; a column that is NULL in
        every row is written ``NULL``, not a parameter per row (MySQLdb
        quotes each parameter in Python).
        """
        null = [all(row[index] is None for row in rows) for index in range(len(types))]
        one = "({})".format(", ".join("NULL" if empty else "%s" for empty in null))
        cursor.execute(
            f"{head} VALUES {', '.join([one] * len(rows))}{suffix}",
            [value for row in rows for value, empty in zip(row, null) if not empty],
        )

    def update_many(
        self,
        cursor: Any,
        table: str,
        key: str,
        columns: Sequence[str],
        types: Sequence[str],
        rows: Sequence[Sequence[Any]],
    ) -> None:
        """``UPDATE table`` by ``key``: each of ``rows`` is the key, then the values of ``columns``.

        ``types`` are the SQL types of the key and the columns. Portable: a
        column that gets one value in all rows is set to it, any other to a
        ``CASE`` on the key (cast where the database needs it, as Django's
        ``bulk_update`` does).
        """
        cast = cursor.db.features.requires_casted_case_in_updates
        sets: list[str] = []
        params: list[Any] = []
        for index, column in enumerate(columns, start=1):
            values = [row[index] for row in rows]
            if all(value == values[0] for value in values):
                sets.append(f"{column} = %s")
                params.append(values[0])
                continue
            then = f"CAST(%s AS {types[index]})" if cast else "%s"
            sets.append(
                f"{column} = CASE {key} " + " ".join([f"WHEN %s THEN {then}"] * len(rows)) + " END"
            )
            for row, value in zip(rows, values):
                params.extend((row[0], value))
        params.extend(row[0] for row in rows)
        cursor.execute(
            "UPDATE {} SET {} WHERE {} IN ({})".format(
                table, ", ".join(sets), key, ", ".join(["%s"] * len(rows))
            ),
            params,
        )

    def with_keys(self, queryset: QuerySet[M], keys: list[Any]) -> QuerySet[M]:
        """``queryset`` narrowed to the rows whose primary key is one of ``keys``.

        Portable: ``IN``, a parameter per key; string keys of a plain
        ``CharField`` go as they are, without ``pk__in``'s preparation of
        each one by the field (which leaves a string unchanged).
        """
        pk = queryset.model._meta.pk
        if keys and type(pk) is CharField and all(type(key) is str for key in keys):
            return queryset.filter(_InStrings(F(pk.name), keys))
        return queryset.filter(pk__in=keys)

    def lock_unclaimed(self, queryset: QuerySet[M], using: str) -> QuerySet[M]:
        """Lock the rows ``queryset`` selects for writing, skipping rows another transaction holds.

        Used inside :meth:`write_transaction` to claim due jobs: two schedulers
        claiming at once each get rows the other did not lock, instead of
        waiting for each other. Where the database cannot skip locked rows, the
        rows are locked and the second claimer waits.
        """
        if not connections[using].features.has_select_for_update_skip_locked:
            return self.lock_for_write(queryset, using)
        return self.lock_for_write(queryset, using, skip_locked=True)

    def lock_for_write(
        self, queryset: QuerySet[M], using: str, skip_locked: bool = False
    ) -> QuerySet[M]:
        """Lock the rows ``queryset`` selects until the commit, to update them.

        The lock does not stop other transactions from adding execution rows
        that refer to these jobs (see :meth:`lock_for_removal`).
        """
        if not connections[using].features.has_select_for_update:
            return queryset
        return queryset.select_for_update(skip_locked=skip_locked)

    def locked_keys(self, queryset: QuerySet[M], using: str, *, skip_locked: bool) -> list[Any]:
        """Lock the rows ``queryset`` selects; return their primary keys.

        With ``skip_locked``, rows another transaction holds are left out
        (see :meth:`lock_unclaimed`): the caller never waits for them.
        """
        lock = self.lock_unclaimed if skip_locked else self.lock_for_write
        return list(lock(queryset, using).values_list("pk", flat=True))

    def lock_for_write_back(self, queryset: QuerySet[M], using: str) -> QuerySet[M]:
        """Lock dispatched rows to write them back, skipping rows other sessions hold.

        Skipped rows are written back in a later round (a view inside a long
        ``atomic()`` must not stall dispatch).
        """
        return self.lock_unclaimed(queryset, using)

    def lock_for_removal(self, queryset: QuerySet[M], using: str) -> QuerySet[M]:
        """Lock the rows ``queryset`` selects, to delete them, against everything else.

        Rows referring to them that other transactions add meanwhile then fail
        their foreign-key check once this commits, instead of making the
        deletion fail; the execution log drops such rows.
        """
        if not connections[using].features.has_select_for_update:
            return queryset
        return queryset.select_for_update()

    def notify(self, using: str) -> None:
        """Announce that jobs changed, to schedulers listening (no-op where nobody can listen).

        Called inside the transaction that made the change: the announcement
        goes out when that transaction commits, and not at all if it rolls back.
        """

    def listener(self, using: str) -> Listener | None:
        """Open a :class:`Listener` for job-change announcements, or None if unsupported."""
        return None

    def run_lock_session(self, using: str) -> RunLockSession:
        """Open a :class:`RunLockSession`: locks that live while this process holds them.

        Without session locks in the database, locks are process-local.
        """
        return _LocalRunLockSession()


class PostgreSQLBackend(Backend):
    vendor = "postgresql"

    # SQLSTATE classes and codes after which a retry on a new connection can succeed:
    # connection exceptions (08), "too many connections" (53300), the server ending the
    # session (57P01 admin shutdown / pg_terminate_backend, 57P02 crash shutdown,
    # 57P03 cannot connect now, 57P05 idle_session_timeout, 25P03
    # idle_in_transaction_session_timeout), serialization failure and deadlock
    # (40001, 40P01), lock not available (55P03).
    _RETRY_CLASSES = ("08",)
    _RETRY_CODES = frozenset(
        {"53300", "57P01", "57P02", "57P03", "57P05", "25P03", "40001", "40P01", "55P03"}
    )

    def bound_idle_transactions(self, wrapper: Any, seconds: float) -> None:
        with wrapper.cursor() as cursor:  # set_config: a parameter, whatever the binding
            cursor.execute(
                "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                [str(max(1, round(seconds * 1000)))],
            )

    def insert_many(
        self,
        cursor: Any,
        head: str,
        types: Sequence[str],
        rows: Sequence[Sequence[Any]],
        suffix: str,
    ) -> None:
        # All the rows in one parameter (see _rows_source): psycopg parses a
        # statement of thousands of parameters in Python.
        source, params = _rows_source(types, rows)
        cursor.execute(f"{head} {source}{suffix}", params)

    def update_many(
        self,
        cursor: Any,
        table: str,
        key: str,
        columns: Sequence[str],
        types: Sequence[str],
        rows: Sequence[Sequence[Any]],
    ) -> None:
        names = ", ".join(f"c{index}" for index in range(len(types)))
        sets = ", ".join(f"{column} = v.c{index}" for index, column in enumerate(columns, start=1))
        source, params = _rows_source(types, rows)
        cursor.execute(
            f"UPDATE {table} SET {sets} FROM ({source}) AS v({names}) WHERE {key} = v.c0", params
        )

    def with_keys(self, queryset: QuerySet[M], keys: list[Any]) -> QuerySet[M]:
        # One JSON parameter for the dispatch's hundreds of ids: each key of
        # ``pk__in`` is prepared by its field and quoted by psycopg in Python.
        if not keys or not all(type(key) is str for key in keys):
            return super().with_keys(queryset, keys)
        pk = queryset.model._meta.pk
        assert pk is not None
        return queryset.filter(_AnyOfJSON(F(pk.name), keys))

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, InterfaceError):
            return True
        if not isinstance(exc, OperationalError):
            return False
        cause = exc.__cause__
        sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if sqlstate is None:
            # Raised by the driver itself: the connection broke with no server answer.
            return True
        if sqlstate.startswith(self._RETRY_CLASSES) or sqlstate in self._RETRY_CODES:
            return True
        # A FATAL (or PANIC) error always ends the session, whatever its code: the
        # server dropped the connection, so a new one may well succeed.
        diag = getattr(cause, "diag", None)
        severity = getattr(diag, "severity_nonlocalized", None) or getattr(diag, "severity", None)
        return severity in ("FATAL", "PANIC")

    def lock_for_write(
        self, queryset: QuerySet[M], using: str, skip_locked: bool = False
    ) -> QuerySet[M]:
        # FOR NO KEY UPDATE, the lock an UPDATE takes: it does not conflict
        # with the key-share locks of the foreign-key checks of executions being
        # logged, so dispatching and logging do not wait for each other.
        return queryset.select_for_update(skip_locked=skip_locked, no_key=True)

    def heartbeat(
        self, instances: QuerySet[M], instance_id: str, now: datetime, dead_before: datetime
    ) -> tuple[bool, bool | None]:
        meta = instances.model._meta
        connection = connections[instances.db]
        quote = connection.ops.quote_name
        pk_column = cast(str, meta.pk.column)  # type: ignore[union-attr]
        beat_column = cast(str, meta.get_field("last_heartbeat").column)  # type: ignore[union-attr]
        table, pk, beat = quote(meta.db_table), quote(pk_column), quote(beat_column)
        # The subquery reads the snapshot from before the update; it leaves this row out.
        sql = (
            f"UPDATE {table} SET {beat} = %s WHERE {pk} = %s RETURNING "
            f"EXISTS (SELECT 1 FROM {table} other WHERE other.{beat} < %s AND other.{pk} <> %s)"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [now, instance_id, dead_before, instance_id])
            row = cursor.fetchone()
        if row is None:
            return False, None
        return True, bool(row[0])

    def notify(self, using: str) -> None:
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])

    def listener(self, using: str) -> Listener | None:
        return _PostgreSQLListener(using)

    def run_lock_session(self, using: str) -> RunLockSession:
        return _PostgreSQLRunLockSession(using)


class _PostgreSQLListener(Listener):
    """``LISTEN`` on a dedicated connection, outside Django's per-thread connections."""

    def __init__(self, using: str) -> None:
        self._wrapper = connections.create_connection(using)
        try:
            self._wrapper.ensure_connection()
            self._wrapper.set_autocommit(True)
            with self._wrapper.cursor() as cursor:
                cursor.execute(f'LISTEN "{CHANNEL}"')
        except BaseException:
            self.close()
            raise
        self._raw: Any = self._wrapper.connection

    def fileno(self) -> int:
        return self._raw.fileno()

    def drain(self) -> int:
        pgconn = getattr(self._raw, "pgconn", None)
        if pgconn is not None:  # psycopg 3: read the notifications straight from libpq
            pgconn.consume_input()
            count = 0
            while pgconn.notifies() is not None:
                count += 1
            if pgconn.status != 0:  # CONNECTION_OK
                raise OperationalError("the LISTEN connection was closed")
            return count
        self._raw.poll()  # psycopg2
        count = len(self._raw.notifies)
        del self._raw.notifies[:]
        return count

    def close(self) -> None:
        try:
            self._wrapper.close()
        except Exception:  # already broken: nothing left to close
            logger.debug("Closing the LISTEN connection failed", exc_info=True)


class MySQLBackend(Backend):
    vendor = "mysql"

    # 1040 too many connections, 1053 server shutdown, 1205 lock wait timeout,
    # 1213 deadlock, 1927 connection killed (MariaDB), 2002/2003 cannot connect,
    # 2006 server has gone away, 2013 lost connection during query, 2055 lost
    # connection (system error), 4031 disconnected for inactivity (MySQL 8).
    _RETRY_CODES = frozenset({1040, 1053, 1205, 1213, 1927, 2002, 2003, 2006, 2013, 2055, 4031})

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, InterfaceError):
            return True
        if not isinstance(exc, OperationalError):
            return False
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        return code is None or code in self._RETRY_CODES

    def bound_idle_transactions(self, wrapper: Any, seconds: float) -> None:
        # MariaDB 10.3 and later; MySQL has no such limit (its lock waits end
        # after innodb_lock_wait_timeout, but a claim skips locked rows).
        if not wrapper.mysql_is_mariadb or wrapper.mysql_version < (10, 3):
            return
        with wrapper.cursor() as cursor:
            cursor.execute(
                "SET SESSION idle_transaction_timeout = %s", [max(1, math.ceil(seconds))]
            )

    def run_lock_session(self, using: str) -> RunLockSession:
        return _MySQLRunLockSession(using)


def _begin_immediate(conn: Any) -> Callable[[], None]:
    """Start a transaction on the SQLite connection ``conn`` holding the write lock."""

    def begin() -> None:
        conn.cursor().execute("BEGIN IMMEDIATE")

    return begin


class SQLiteBackend(Backend):
    vendor = "sqlite"

    @contextmanager
    def write_transaction(self, using: str) -> Iterator[None]:
        """``BEGIN IMMEDIATE``: take the write lock first, waiting for it up to the busy timeout.

        A plain ``BEGIN`` reads first and upgrades to a write lock later, and
        SQLite answers "database is locked" at once, without waiting, when two
        connections try that upgrade together.
        """
        conn = connections[using]
        if conn.in_atomic_block:
            with transaction.atomic(using=using):
                yield
            return
        with internals.sqlite_transaction_start(conn, _begin_immediate(conn)):
            atomic = transaction.atomic(using=using)
            atomic.__enter__()
        try:
            yield
        except BaseException as exc:
            # Atomic.__exit__ never suppresses an exception (it returns None).
            atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        else:
            atomic.__exit__(None, None, None)

    def refuses_late_writers(self, settings_dict: dict[str, Any]) -> bool:
        """Unless Django (5.1+) begins every transaction ``IMMEDIATE`` or ``EXCLUSIVE``."""
        mode = str((settings_dict.get("OPTIONS") or {}).get("transaction_mode") or "")
        return mode.upper() not in ("IMMEDIATE", "EXCLUSIVE")

    @contextmanager
    def writing_transactions(self, using: str) -> Iterator[None]:
        """Each transaction started inside begins with ``BEGIN IMMEDIATE`` (see :meth:`write_transaction`)."""
        conn = connections[using]
        if conn.in_atomic_block:
            yield  # the transaction under way was started as it was
            return
        with internals.sqlite_transaction_start(conn, _begin_immediate(conn)):
            yield

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, InterfaceError):
            return True
        if not isinstance(exc, OperationalError):
            return False
        message = str(exc).lower()
        return "locked" in message or "busy" in message or "disk i/o" in message

    def run_lock_session(self, using: str) -> RunLockSession:
        """File locks beside the database file; process-local for an in-memory database."""
        conn = cast("SQLiteDatabaseWrapper", connections[using])
        name = str(conn.settings_dict.get("NAME") or "")
        if conn.is_in_memory_db() or not name:
            return _LocalRunLockSession()
        if name.startswith("file:"):
            name = name[len("file:") :].split("?", 1)[0]
        return _FileRunLockSession(os.path.abspath(name) + ".runlocks")


_BACKENDS: dict[str, Backend] = {
    b.vendor: b for b in (PostgreSQLBackend(), MySQLBackend(), SQLiteBackend())
}
_DEFAULT = Backend()


def for_alias(using: str) -> Backend:
    """Return the :class:`Backend` for database alias ``using``."""
    return for_connection(connections[using])


def for_connection(wrapper: Any) -> Backend:
    """Return the :class:`Backend` for the Django connection ``wrapper`` (of any alias)."""
    return _BACKENDS.get(wrapper.vendor, _DEFAULT)
