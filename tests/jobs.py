"""Job functions used by the tests; importable by reference from every process."""

import threading
import time

calls: list[tuple[str, float]] = []
_lock = threading.Lock()


def noop() -> None:
    """Does nothing."""


def record(tag: str = "ran") -> None:
    """Notes that it ran (in this process)."""
    with _lock:
        calls.append((tag, time.time()))


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def fail(message: str = "boom") -> None:
    raise ValueError(message)


async def async_record(tag: str = "async") -> None:
    with _lock:
        calls.append((tag, time.time()))
