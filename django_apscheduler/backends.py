"""Everything that differs between database vendors, behind one small interface.

No other module looks at ``connection.vendor``: they ask ``for_alias(using)``
for a :class:`Backend` and call its methods. Supported: PostgreSQL, MySQL /
MariaDB and SQLite; any other vendor gets the portable defaults.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from django.db import InterfaceError, OperationalError, connections, transaction


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
