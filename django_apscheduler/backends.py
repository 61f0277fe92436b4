"""Everything that differs between database vendors, behind one small interface.

No other module looks at ``connection.vendor``: they ask ``for_alias(using)``
for a :class:`Backend` and call its methods. Supported: PostgreSQL, MySQL /
MariaDB and SQLite; any other vendor gets the portable defaults.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

from django.db import InterfaceError, OperationalError, connections, transaction
from django.db.models import QuerySet

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


class Backend:
    """Portable behaviour; subclasses override what their database does differently."""

    vendor = "other"

    @contextmanager
    def write_transaction(self, using: str) -> Iterator[None]:
        """A transaction meant to write, holding the write lock from its first statement."""
        with transaction.atomic(using=using):
            yield

    def is_retryable(self, exc: BaseException) -> bool:
        """True if ``exc`` means "the connection was lost" or "try again later".

        Such errors are worth a reconnect and a retry; errors in the SQL or
        the data (a missing table, a bad value) are not.
        """
        return isinstance(exc, InterfaceError)

    def lock_unclaimed(self, queryset: QuerySet, using: str) -> QuerySet:
        """Lock the rows ``queryset`` selects for writing, skipping rows another transaction holds.

        Used inside :meth:`write_transaction` to claim due jobs: two schedulers
        claiming at once each get rows the other did not lock, instead of
        waiting for each other. Where the database cannot skip locked rows, the
        rows are locked and the second claimer waits.
        """
        if not connections[using].features.has_select_for_update_skip_locked:
            return self.lock_for_write(queryset, using)
        return self.lock_for_write(queryset, using, skip_locked=True)

    def lock_for_write(self, queryset: QuerySet, using: str, skip_locked: bool = False) -> QuerySet:
        """Lock the rows ``queryset`` selects until the commit, to update them.

        The lock does not stop other transactions from adding execution rows
        that refer to these jobs (see :meth:`lock_for_removal`).
        """
        if not connections[using].features.has_select_for_update:
            return queryset
        return queryset.select_for_update(skip_locked=skip_locked)

    def lock_for_removal(self, queryset: QuerySet, using: str) -> QuerySet:
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

    def lock_for_write(self, queryset: QuerySet, using: str, skip_locked: bool = False) -> QuerySet:
        # FOR NO KEY UPDATE, the lock an UPDATE takes: it does not conflict
        # with the key-share locks of the foreign-key checks of executions being
        # logged, so dispatching and logging do not wait for each other.
        return queryset.select_for_update(skip_locked=skip_locked, no_key=True)

    def notify(self, using: str) -> None:
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])

    def listener(self, using: str) -> Listener | None:
        return _PostgreSQLListener(using)


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

        def begin_immediate() -> None:
            conn.cursor().execute("BEGIN IMMEDIATE")

        conn._start_transaction_under_autocommit = begin_immediate  # type: ignore[method-assign]
        try:
            atomic = transaction.atomic(using=using)
            atomic.__enter__()
        finally:
            del conn._start_transaction_under_autocommit
        try:
            yield
        except BaseException as exc:
            if not atomic.__exit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            atomic.__exit__(None, None, None)

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, InterfaceError):
            return True
        if not isinstance(exc, OperationalError):
            return False
        message = str(exc).lower()
        return "locked" in message or "busy" in message or "disk i/o" in message


_BACKENDS: dict[str, Backend] = {
    b.vendor: b for b in (PostgreSQLBackend(), MySQLBackend(), SQLiteBackend())
}
_DEFAULT = Backend()


def for_alias(using: str) -> Backend:
    """Return the :class:`Backend` for database alias ``using``."""
    return _BACKENDS.get(connections[using].vendor, _DEFAULT)
