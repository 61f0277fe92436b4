"""Job functions scheduled by the benchmarks (referenced as ``benchmarks.jobs:<name>``)."""

from __future__ import annotations

import time


def noop() -> None:
    """Does nothing: the dispatch benchmarks measure the scheduler, not the work."""


def sleep(seconds: float) -> None:
    """Work that takes time without CPU (B5: execution matters)."""
    time.sleep(seconds)


def note_start(path: str, token: str) -> None:
    """Append ``token`` and the epoch time of this run's start to ``path`` (B3)."""
    started = time.time()
    with open(path, "a") as file:
        file.write(f"{token} {started!r}\n")
