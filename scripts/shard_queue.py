"""A pytest plugin: the shards of one backend take their tests from one shared queue.

``scripts/runtests.py`` starts every shard of a backend with
``-p scripts.shard_queue --shard-queue=FILE``. ``FILE`` holds the node ids
of all the backend's tests in the order they are to start (JSON:
``{"nodes": [...]}``); ``FILE.next`` counts how many have been taken. Each
shard collects every test, then, whenever it is free, takes the next test
of the queue (under a file lock) and runs it: every test runs exactly once,
in one of the shards, and a shard that got quick tests simply takes more.
The shards end within about one test of each other however the machine's
load changes their tests' durations, where a split made in advance left
one shard running for a minute or more after the others.

Without ``--shard-queue`` the plugin does nothing.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shard-queue",
        default=None,
        help="take tests from this queue file shared with other pytest runs (scripts/runtests.py)",
    )


class Queue:
    def __init__(self, path: Path) -> None:
        self.nodes: list[str] = json.loads(path.read_text(encoding="utf-8"))["nodes"]
        self.counter = path.with_name(path.name + ".next")

    def take(self) -> str | None:
        """The next node id nobody has taken yet, or None when all are taken."""
        with open(self.counter, "a+", encoding="utf-8") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            try:
                file.seek(0)
                taken = int(file.read().strip() or 0)
                if taken >= len(self.nodes):
                    return None
                file.seek(0)
                file.truncate()
                file.write(str(taken + 1))
                file.flush()
                return self.nodes[taken]
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)

    def after(self, node: str) -> str | None:
        """The node id that follows ``node`` in the queue (the likely next test), or None."""
        index = self.nodes.index(node) + 1
        return self.nodes[index] if index < len(self.nodes) else None


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    option = session.config.getoption("shard_queue")
    if not option or session.config.option.collectonly:
        return None
    if session.testsfailed and not session.config.option.continue_on_collection_errors:
        raise session.Interrupted(f"{session.testsfailed} errors during collection")
    queue = Queue(Path(option))
    items = {item.nodeid: item for item in session.items}
    unknown = sorted(set(queue.nodes) - set(items))
    if unknown or len(queue.nodes) != len(items):
        raise session.Failed(
            f"the shard queue {option} does not match the collected tests "
            f"({len(queue.nodes)} queued, {len(items)} collected; not collected: {unknown[:5]})"
        )
    setupstate = session._setupstate
    node = queue.take()
    while node is not None:
        item = items[node]
        # Fixtures of wider scope (the session's test database, a module's
        # browser) are kept up for the test that most likely comes next; when
        # another comes, what it does not share is torn down before it starts.
        likely = queue.after(node)
        item.config.hook.pytest_runtest_protocol(
            item=item, nextitem=items[likely] if likely is not None else None
        )
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)
        node = queue.take()
        if node is not None and node != likely:
            setupstate.teardown_exact(items[node])
    return True
