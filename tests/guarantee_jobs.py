"""Job functions of ``tests/test_guarantees.py``; importable by reference from every process."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

_lock = threading.Lock()

#: (tag, raw DB-API connection, error text or None) per call of :func:`use_connection`,
#: in this process. The connection objects are kept, so their ids are never reused.
connection_uses: list[tuple[str, Any, str | None]] = []


def run_while(path: str, flag: str) -> None:
    """Append a "start" line (pid, time) to ``path``, run while the file ``flag`` exists, then "end"."""
    _append(path, {"event": "start", "pid": os.getpid(), "t": time.time()})
    deadline = time.monotonic() + 120  # never outlive a test that failed to remove the flag
    while os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.05)
    _append(path, {"event": "end", "pid": os.getpid(), "t": time.time()})


def use_connection(tag: str) -> None:
    """Query the Django database, then note which raw connection served it (or the error)."""
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        with _lock:
            connection_uses.append((tag, connection.connection, f"{type(exc).__name__}: {exc}"))
        raise
    with _lock:
        connection_uses.append((tag, connection.connection, None))


def _append(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as file:
        file.write(json.dumps(record) + "\n")
