"""Where the test suite's CPU goes: a pytest plugin, and a summary of what it wrote.

The suite is CPU-bound on two cores (its shards and the database servers
keep both busy), so its wall time follows its CPU time, not its waiting.
This measures each test's CPU: the pytest process's own, and that of the
subprocesses it started and reaped (schedulers, workers, commands)::

    PYTHONPATH=scripts PYTEST_CPU_OUT=/tmp/cpu .venv/bin/python scripts/runtests.py -- -p pytest_cpu
    .venv/bin/python scripts/pytest_cpu.py /tmp/cpu        # the files that cost most

Each pytest process writes ``<PYTEST_CPU_OUT>.<pid>`` (JSON: node id ->
[own seconds, children's seconds]). Not used by ``make test``.
"""

from __future__ import annotations

import glob
import json
import os
import resource
import sys
from collections import Counter
from typing import Any, Iterator

import pytest

_cpu_by_test: dict[str, tuple[float, float]] = {}


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: Any, nextitem: Any) -> Iterator[None]:
    before = _cpu()
    yield
    after = _cpu()
    _cpu_by_test[item.nodeid] = (after[0] - before[0], after[1] - before[1])


def pytest_sessionfinish(session: Any) -> None:
    path = os.environ.get("PYTEST_CPU_OUT")
    if path:
        with open(f"{path}.{os.getpid()}", "w") as file:
            json.dump(_cpu_by_test, file)


def summarize(prefix: str, top: int = 25) -> None:
    """Print the CPU seconds of the test files that cost most, over every file ``prefix`` names."""
    own: Counter[str] = Counter()
    children: Counter[str] = Counter()
    tests: Counter[str] = Counter()
    for path in glob.glob(f"{prefix}.*"):
        with open(path) as file:
            for node, (mine, theirs) in json.load(file).items():
                name = node.split("::")[0]
                own[name] += mine
                children[name] += theirs
                tests[name] += 1
    print(f"own {sum(own.values()):.0f} s, subprocesses {sum(children.values()):.0f} s")
    total = {name: own[name] + children[name] for name in own}
    for name, seconds in sorted(total.items(), key=lambda item: -item[1])[:top]:
        print(
            f"{seconds:7.1f} s  own {own[name]:6.1f}  subprocesses {children[name]:6.1f}"
            f"  tests {tests[name]:4d}  {name}"
        )


if __name__ == "__main__":
    summarize(sys.argv[1])
