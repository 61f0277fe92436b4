"""Run the project's checks and its test suite once per database backend.

``make test`` calls this with the virtual environment's Python::

    python scripts/runtests.py [--backends sqlite,postgres] [--require]
                               [--sequential] [--shards N]
                               [--timeout SECONDS] [-- PYTEST ARGS...]

1. ``ruff check``, ``mypy django_apscheduler`` and ``makemigrations --check --dry-run``;
2. pytest on every backend, with ``DJANGO_APSCHEDULER_TEST_DB`` set to it.

A PostgreSQL or MariaDB server that does not accept connections is skipped
with the reason, unless ``--require`` is given: then it is a failure (CI).

By default the backends run at the same time, and each backend's tests are
run by ``--shards`` pytest runs (shards) that also run at the same time, each
on a test database of its own; a backend with far more tests than the others
gets one shard more (:func:`plan_shards`), so it does not end last. The
shards of a backend take their tests from one shared queue
(``scripts/shard_queue.py``): whenever a shard is free it runs the next
test, so they end within about one test of each other however the load
changes the tests' durations. The queue spreads the heavy,
multi-process tests out (each backend's from another point of its list) and
ends with light tests. It is ordered by how long each test took the last
time (``.cache/test-durations/``, learned from every run) or, on a fresh
clone, by ``scripts/test-durations.json``. Most of the suite's time is
spent on real scheduler processes, and the two cores are kept busy by the
shards of all backends at once. Each shard writes a log file; they are
printed when all are done. A run given test paths or node ids in its pytest
arguments is not split. ``--sequential`` runs one backend after another,
unsplit, with the output on the terminal.

Every process of a run keeps its bytecode in ``.cache/pycache``. The upgrade
test's 0.7.0 environment is built (when missing or stale) while the checks
run.

A summary and a total line close the output; the exit status is non-zero if
anything failed, including a pytest run that collected no tests. Standard
library only (it runs before anything is checked).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("sqlite", "postgres", "mariadb")

# Where tests/settings.py connects, from the same environment variables.
SERVERS = {
    "postgres": (("PGHOST", "127.0.0.1"), ("PGPORT", "5432")),
    "mariadb": (("MYSQL_HOST", "127.0.0.1"), ("MYSQL_PORT", "3306")),
}

PYTEST_NO_TESTS = 5
SUMMARY_LINE = re.compile(r"^=*\s*(?P<counts>.*?)\s+in\s+[\d.]+s\b.*$")
COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
COLLECTED = re.compile(r"^(\d+)(?:/\d+)? tests? collected\b", re.MULTILINE)


@dataclass
class Step:
    name: str
    status: str = "not run"  # ok | passed | FAILED | SKIPPED
    seconds: float = 0.0
    detail: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "FAILED"


def server_problem(backend: str) -> str | None:
    """Why the server of ``backend`` cannot be used, or None if it accepts connections."""
    if backend not in SERVERS:
        return None
    (host_var, host_default), (port_var, port_default) = SERVERS[backend]
    host = os.environ.get(host_var) or host_default
    port = os.environ.get(port_var) or port_default
    if host.startswith("/"):  # a Unix socket directory (PostgreSQL)
        path = Path(host, f".s.PGSQL.{port}")
        return None if path.exists() else f"no server socket at {path}"
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return None
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc}"


def default_suffix() -> str:
    """A database-name suffix unique to this checkout and environment.

    Test runs from other checkouts or virtual environments on the same
    database servers then use other databases.
    """
    key = f"{ROOT}\0{sys.prefix}".encode()
    return "_" + hashlib.sha256(key).hexdigest()[:8]


#: Where every process of a run keeps its bytecode (PYTHONPYCACHEPREFIX): the
#: project's and the tests' modules are compiled once, not again in each of the
#: hundreds of subprocesses the tests start, and the checkout gets no __pycache__.
PYCACHE = ROOT / ".cache" / "pycache"


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DJANGO_APSCHEDULER_TEST_DB_SUFFIX", default_suffix())
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env.pop("DJANGO_SETTINGS_MODULE", None)  # pytest takes it from setup.cfg
    return env


def parse_counts(log_text: str) -> dict[str, int]:
    for line in reversed(ANSI.sub("", log_text).splitlines()):
        match = SUMMARY_LINE.match(line.strip())
        if match and (COUNT.search(match["counts"]) or "no tests ran" in match["counts"]):
            counts: dict[str, int] = {}
            for number, word in COUNT.findall(match["counts"]):
                word = "errors" if word.startswith("error") else word
                counts[word] = counts.get(word, 0) + int(number)
            return counts
    return {}


class Run:
    """One command whose output goes to a log file, and to the terminal if ``echo``."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path, echo: bool) -> None:
        self.log = log
        self.started = time.monotonic()
        self._file: IO[str] = log.open("w", encoding="utf-8", errors="replace")
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # so that a timeout can end the run and its children
        )
        self._reader = threading.Thread(target=self._copy, args=(echo,), daemon=True)
        self._reader.start()
        self.code: int | None = None
        self.ended: float | None = None
        self._waiter = threading.Thread(target=self._wait, daemon=True)
        self._waiter.start()

    def _wait(self) -> None:
        self.code = self.proc.wait()
        self.ended = time.monotonic()

    def _copy(self, echo: bool) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._file.write(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()

    def signal(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    def wait(self, deadline: float | None) -> tuple[int | None, float]:
        """Wait for the end (or the deadline); return (exit status or None, seconds)."""
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
        self._waiter.join(timeout)
        timed_out = self._waiter.is_alive()
        self.signal(signal.SIGKILL)  # on timeout the run, else children it left behind
        self._waiter.join()
        self._reader.join(timeout=10)
        self._file.close()
        ended = self.ended if self.ended is not None else time.monotonic()
        return (None if timed_out else self.code), ended - self.started


def run_check(name: str, command: list[str], env: dict[str, str], logs: Path) -> Step:
    print(f"\n=== {name} ===", flush=True)
    code, seconds = Run(command, env, logs / f"{name.split()[0]}.log", echo=True).wait(None)
    return Step(name, "ok" if code == 0 else "FAILED", seconds, "" if code == 0 else f"exit {code}")


def finish_backend(
    step: Step, code: int | None, seconds: float, log: Path, timeout: float | None
) -> None:
    step.seconds = seconds
    step.counts = parse_counts(log.read_text(encoding="utf-8", errors="replace"))
    if code is None:
        step.status, step.detail = "FAILED", f"timed out after {timeout:g} s"
    elif code == PYTEST_NO_TESTS:
        step.status, step.detail = "FAILED", "no tests ran"
    elif code != 0:
        step.status, step.detail = "FAILED", f"pytest exit {code}"
    else:
        step.status = "passed"


DURATIONS_FILE = ROOT / "scripts" / "test-durations.json"
DEFAULT_SECONDS = 0.5  # a test no durations file knows about
# Three pytest runs per backend (nine at once) keep two cores busy: about 5.5
# minutes when nothing else runs, where one per backend took about 11. The hand-off storm, which
# under that load used to fire fewer than 19 times in its fixed 20 s, now runs
# until every job has fired 20 times. --shards 1: one pytest run per backend.
DEFAULT_SHARDS = 3  # per backend; one with far more tests gets one more (plan_shards)


#: A backend expected to take this much longer per shard than the next one gets a shard more.
UNEVEN = 1.05


def plan_shards(totals: dict[str, float], shards: int) -> dict[str, int]:
    """How many shards each backend gets: ``shards`` each, and one more for a backend far behind.

    ``totals`` are each backend's expected test seconds. The run lasts as
    long as its slowest backend: one with more tests than the others
    (PostgreSQL has tests of its own) would end well after them, so it gets
    an extra shard when its expected time per shard exceeds the next
    backend's by more than :data:`UNEVEN`. The others are unchanged.
    """
    counts = {name: shards for name in totals}
    if shards < 2 or len(totals) < 2:
        return counts
    ranked = sorted(totals, key=lambda name: totals[name], reverse=True)
    heaviest, next_one = ranked[0], ranked[1]
    if totals[heaviest] > UNEVEN * totals[next_one]:
        counts[heaviest] += 1
    return counts


def collect(
    pytest: list[str], env: dict[str, str], log: Path, timeout: float | None
) -> list[str] | None:
    """The node ids pytest would run with these arguments, or None if collecting failed.

    A failed collection is not reported here: the unsplit run that follows
    shows its error in full.
    """
    command = [*pytest, "--collect-only", "--verbosity=-1"]  # whatever -q or -v it was given
    run = Run(command, env, log, echo=False)
    code, _ = run.wait(None if timeout is None else run.started + timeout)
    if code != 0:
        return None
    text = log.read_text(encoding="utf-8", errors="replace")
    nodes = [line.strip() for line in text.splitlines() if "::" in line]
    # Split only what is sure to be every test: the count must match pytest's.
    counted = COLLECTED.search(text)
    if counted is None or int(counted[1]) != len(nodes):
        return None
    return nodes


def load_durations(backend: str, cache: Path) -> dict[str, float]:
    """Seconds per node id on ``backend``: the committed file's, then this checkout's last runs'."""
    durations: dict[str, float] = {}
    for path, key in ((DURATIONS_FILE, backend), (cache, None)):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        durations.update(data.get(key, {}) if key else data)
    return durations


def write_durations(backends: Sequence[str], cache_dir: Path) -> None:
    """Store this checkout's learned durations as the committed defaults (--write-durations)."""
    try:
        data = json.loads(DURATIONS_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    for backend in backends:
        data[backend] = load_durations(backend, cache_dir / f"{backend}.json")
    DURATIONS_FILE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"Wrote the test durations of {', '.join(backends)} to {DURATIONS_FILE}")


#: Tests that took at least this long (seconds) are the queue's heavy tests.
HEAVY_SECONDS = 2.0


def by_progress(streams: list[list[str]], durations: dict[str, float]) -> list[str]:
    """The nodes of ``streams`` merged so that each stream advances at the same pace.

    A node's key is the fraction of its stream's total duration before it;
    the merged list takes nodes in the order of their keys.
    """
    keyed = []
    for number, stream in enumerate(streams):
        total = sum(durations.get(node, DEFAULT_SECONDS) for node in stream) or 1.0
        elapsed = 0.0
        for position, node in enumerate(stream):
            keyed.append((elapsed / total, number, position, node))
            elapsed += durations.get(node, DEFAULT_SECONDS)
    return [node for *_, node in sorted(keyed)]


def queue_order(
    nodes: list[str], durations: dict[str, float], shards: int, offset: float
) -> list[str]:
    """The order in which the ``shards`` shards of one backend take ``nodes`` from their queue.

    Each shard takes the next test whenever it is free (scripts/shard_queue.py),
    so they all end within about one test of each other. The heavy tests
    (multi-process, timing-bound) are spread out: they are cut, from
    ``offset`` (a fraction of their total duration; each backend has its
    own, so that the backends' storms do not all come at once), into one
    part per shard, and the parts advance side by side, with the light tests
    mixed in. The last light tests, at least ``shards`` times the longest
    test's duration of them, come last: the shards that finish first have
    them to run while the others finish their last heavy test.
    """
    heavy = [node for node in nodes if durations.get(node, DEFAULT_SECONDS) >= HEAVY_SECONDS]
    light = [node for node in nodes if durations.get(node, DEFAULT_SECONDS) < HEAVY_SECONDS]
    longest = max((durations.get(node, DEFAULT_SECONDS) for node in nodes), default=0.0)
    tail: list[str] = []
    while light and sum(durations.get(n, DEFAULT_SECONDS) for n in tail) < shards * longest:
        tail.insert(0, light.pop())
    heavy = stagger(heavy, durations, offset)
    parts: list[list[str]] = [[] for _ in range(shards)]
    total = sum(durations.get(node, DEFAULT_SECONDS) for node in heavy) or 1.0
    elapsed = 0.0
    for node in heavy:
        parts[min(int(shards * elapsed / total), shards - 1)].append(node)
        elapsed += durations.get(node, DEFAULT_SECONDS)
    return by_progress([*parts, light], durations) + tail


def stagger(group: list[str], durations: dict[str, float], fraction: float) -> list[str]:
    """``group`` started ``fraction`` of its total duration in, the tests before that last."""
    total = sum(durations.get(node, DEFAULT_SECONDS) for node in group)
    elapsed = 0.0
    for index, node in enumerate(group):
        if elapsed >= fraction * total:
            return group[index:] + group[:index]
        elapsed += durations.get(node, DEFAULT_SECONDS)
    return group


def junit_durations(path: Path, nodes: list[str]) -> dict[str, float]:
    """Seconds per node id (setup, call and teardown) from a pytest JUnit XML report."""
    by_key = {}
    for node in nodes:
        file, *parts = node.split("::")
        classname = ".".join([file[: -len(".py")].replace("/", "."), *parts[:-1]])
        by_key[(classname, parts[-1])] = node
    try:
        tree = ElementTree.parse(path)
    except (OSError, ElementTree.ParseError):
        return {}
    found = {}
    for case in tree.iter("testcase"):
        node = by_key.get((case.get("classname", ""), case.get("name", "")))
        if node is not None:
            found[node] = round(float(case.get("time") or 0), 1)
    return found


def explicit_paths(pytest_args: Sequence[str]) -> bool:
    """Whether the pytest arguments name tests (files, directories or node ids)."""
    return any(
        "::" in arg or arg.endswith(".py") or (not arg.startswith("-") and (ROOT / arg).exists())
        for arg in pytest_args
    )


@dataclass
class Shard:
    name: str
    step: Step
    run: Run
    nodes: list[str]
    junit: Path | None


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Checks, then the test suite once per database backend."
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated, from: %(default)s",
    )
    parser.add_argument(
        "--require",
        action="store_true",
        help="an unreachable database server fails instead of being skipped",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--parallel",
        action="store_true",
        help="run the backends (and shards) at the same time: the default",
    )
    mode.add_argument(
        "--sequential",
        action="store_true",
        help="one backend after another, unsplit, output on the terminal",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=DEFAULT_SHARDS,
        help="pytest runs per backend when parallel (default %(default)s; 1: no split)",
    )
    parser.add_argument(
        "--write-durations",
        action="store_true",
        help=f"after the run, store the learned test durations in {DURATIONS_FILE.name}",
    )
    parser.add_argument(
        "--no-checks", action="store_true", help="skip ruff, mypy and makemigrations"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds a pytest run may take at most"
    )
    parser.add_argument(
        "--logs", type=Path, default=None, help="log directory (default .cache/test-logs/<venv>)"
    )
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (put them after --)")
    args = parser.parse_args()
    parallel = not args.sequential
    if args.shards < 1:
        parser.error(f"--shards: at least 1 (got {args.shards})")

    backends = [b.strip() for b in args.backends.replace(" ", ",").split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown or not backends:
        parser.error(f"--backends: use some of {', '.join(BACKENDS)} (got {args.backends!r})")

    logs = args.logs or ROOT / ".cache" / "test-logs" / Path(sys.prefix).name
    logs.mkdir(parents=True, exist_ok=True)
    env = base_env()
    import django  # installed in the environment under test; only to report its version

    print(
        f"Python {sys.version.split()[0]}, Django {django.get_version()}; "
        f"backends: {', '.join(backends)}"
        f"{' (all required)' if args.require else ''}; "
        f"database suffix {env['DJANGO_APSCHEDULER_TEST_DB_SUFFIX']!r}; logs in {logs}",
        flush=True,
    )

    prebuild = start_prebuild(args.pytest_args, env, logs)
    try:
        return run_steps(args, env, logs, backends, parallel)
    finally:
        if prebuild is not None:  # long done after the tests; ended if they were interrupted
            prebuild.wait(time.monotonic() if sys.exc_info()[0] is not None else None)


def start_prebuild(pytest_args: Sequence[str], env: dict[str, str], logs: Path) -> Run | None:
    """Start building the upgrade test's django-apscheduler 0.7.0 environment, or None.

    tests/test_upgrade_070.py builds it under a file lock when it is missing
    or stale (it is cached in .cache/, keyed by what it installs). Started
    here, the build (seconds with pip's cache, a minute or more without it)
    runs while the checks run and the shards start, and the backends' runs
    of the test wait for it instead of each building one. Not for runs that
    name or select tests.
    """
    if explicit_paths(pytest_args) or any(arg.startswith(("-k", "-m")) for arg in pytest_args):
        return None
    command = [
        sys.executable,
        "-c",
        "from tests.test_upgrade_070 import legacy_python; print(legacy_python())",
    ]
    return Run(command, env, logs / "upgrade-070-env.log", echo=False)


def run_steps(
    args: argparse.Namespace,
    env: dict[str, str],
    logs: Path,
    backends: list[str],
    parallel: bool,
) -> int:
    steps: list[Step] = []
    if not args.no_checks:
        steps.append(
            run_check("ruff check", [sys.executable, "-m", "ruff", "check", "."], env, logs)
        )
        # The django-stubs plugin imports tests.settings: on SQLite, no server is needed.
        steps.append(
            run_check(
                "mypy",
                [sys.executable, "-m", "mypy", "django_apscheduler"],
                dict(env, DJANGO_APSCHEDULER_TEST_DB="sqlite"),
                logs,
            )
        )
        steps.append(
            run_check(
                "makemigrations --check",
                [
                    sys.executable,
                    "-m",
                    "django",
                    "makemigrations",
                    "--check",
                    "--dry-run",
                    "--settings=tests.settings",
                ],
                dict(env, DJANGO_APSCHEDULER_TEST_DB="sqlite"),
                logs,
            )
        )

    pytest = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    if sys.stdout.isatty() and not parallel:
        pytest.append("--color=yes")
    pytest += args.pytest_args

    usable: list[str] = []
    backend_steps: list[Step] = []
    for backend in backends:
        step = Step(backend)
        backend_steps.append(step)
        problem = server_problem(backend)
        if problem:
            step.status = "FAILED" if args.require else "SKIPPED"
            step.detail = problem
            hint = "" if args.require else " (REQUIRE_BACKENDS=1 makes this an error)"
            print(f"\n{step.status} {backend}: {problem}{hint}", flush=True)
        else:
            usable.append(backend)

    if not parallel:
        for step in backend_steps:
            if step.name not in usable:
                continue
            print(f"\n=== pytest on {step.name} ===", flush=True)
            log = logs / f"pytest-{step.name}.log"
            run = Run(pytest, dict(env, DJANGO_APSCHEDULER_TEST_DB=step.name), log, echo=True)
            code, seconds = wait_interruptibly(run, args.timeout)
            finish_backend(step, code, seconds, log, args.timeout)
    else:
        run_parallel([s for s in backend_steps if s.name in usable], pytest, env, logs, args)
    if args.write_durations:
        write_durations(usable, ROOT / ".cache" / "test-durations")
    return report(steps + backend_steps)


def run_parallel(
    steps: list[Step],
    pytest: list[str],
    env: dict[str, str],
    logs: Path,
    args: argparse.Namespace,
) -> None:
    """Run every backend's shards at the same time; fill in each backend's step."""
    shards_wanted = 1 if explicit_paths(args.pytest_args) else args.shards
    suffix = env["DJANGO_APSCHEDULER_TEST_DB_SUFFIX"]
    cache_dir = ROOT / ".cache" / "test-durations"
    for old in [*logs.glob("pytest-*.log"), *logs.glob("junit-*.xml"), *logs.glob("queue-*")]:
        old.unlink()

    # The node ids of each backend, collected at the same time (a second or two).
    collected: dict[str, list[str] | None] = {}
    if shards_wanted > 1:
        threads = []
        for step in steps:
            run_env = dict(env, DJANGO_APSCHEDULER_TEST_DB=step.name)
            log = logs / f"collect-{step.name}.log"

            def work(name: str = step.name, e: dict[str, str] = run_env, lg: Path = log) -> None:
                collected[name] = collect(pytest, e, lg, args.timeout)

            threads.append(threading.Thread(target=work))
            threads[-1].start()
        for thread in threads:
            thread.join()

    durations_of = {
        step.name: load_durations(step.name, cache_dir / f"{step.name}.json") for step in steps
    }
    totals = {
        name: sum(durations_of[name].get(node, DEFAULT_SECONDS) for node in nodes)
        for name, nodes in collected.items()
        if nodes
    }
    planned = plan_shards(totals, shards_wanted)
    shards: list[Shard] = []
    for number, step in enumerate(steps):
        nodes = collected.get(step.name)
        count = min(planned.get(step.name, shards_wanted), len(nodes)) if nodes else 1
        queue = None
        if nodes and count > 1:
            durations = durations_of[step.name]
            order = queue_order(nodes, durations, count, number / (len(steps) * count))
            queue = logs / f"queue-{step.name}.json"
            queue.write_text(json.dumps({"nodes": order}), encoding="utf-8")
            queue.with_name(queue.name + ".next").unlink(missing_ok=True)
        for index in range(count):
            run_env = dict(env, DJANGO_APSCHEDULER_TEST_DB=step.name)
            name = step.name
            command = list(pytest)
            junit = None
            if queue is not None:
                name = f"{step.name}-{index + 1}"
                run_env["DJANGO_APSCHEDULER_TEST_DB_SUFFIX"] = f"{suffix}_{index + 1}"
                junit = logs / f"junit-{name}.xml"
                command += ["-p", "scripts.shard_queue", f"--shard-queue={queue}"]
                command += [f"--junitxml={junit}"]
            log = logs / f"pytest-{name}.log"
            run = Run(command, run_env, log, echo=False)
            tests = f", one of {count} taking {len(nodes)} tests from {queue.name}" if queue else ""
            print(f"\nStarted pytest on {name}{tests} (log: {log})", flush=True)
            shards.append(Shard(name, step, run, nodes or [], junit))

    runs = [shard.run for shard in shards]
    results = []
    for shard in shards:
        code, seconds = wait_interruptibly(shard.run, args.timeout, others=runs)
        part = Step(shard.step.name)
        finish_backend(part, code, seconds, shard.run.log, args.timeout)
        results.append((shard, part))

    learned: dict[str, dict[str, float]] = {}
    for shard, part in results:
        status = part.status if not part.detail else f"{part.status}, {part.detail}"
        print(f"\n=== pytest on {shard.run.log.stem[len('pytest-') :]}: {status} ===")
        sys.stdout.write(shard.run.log.read_text(encoding="utf-8", errors="replace"))
        if shard.junit is not None:
            learned.setdefault(shard.step.name, {}).update(
                junit_durations(shard.junit, shard.nodes)
            )

    for step in steps:
        parts = [(shard.name, part) for shard, part in results if shard.step is step]
        merge_parts(step, parts)
        if learned.get(step.name) and not step.failed:
            path = cache_dir / f"{step.name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            known = load_durations(step.name, path) if path.exists() else {}
            known.update(learned[step.name])
            path.write_text(json.dumps(known, indent=0, sort_keys=True), encoding="utf-8")


def merge_parts(step: Step, parts: list[tuple[str, Step]]) -> None:
    """One backend's result from its shards': summed counts, the longest time, any failure."""
    step.seconds = max(part.seconds for _, part in parts)
    for _, part in parts:
        for word, number in part.counts.items():
            if word == "deselected":  # every shard of a queue deselects the same tests
                step.counts[word] = max(step.counts.get(word, 0), number)
            else:
                step.counts[word] = step.counts.get(word, 0) + number
    failures = [f"{name}: {part.detail}" for name, part in parts if part.failed]
    step.status = "FAILED" if failures else "passed"
    if len(parts) > 1:
        failures.insert(0, f"{len(parts)} shards")
    step.detail = (
        "; ".join(failures)
        if len(parts) > 1
        else "; ".join(part.detail for _, part in parts if part.failed)
    )


def wait_interruptibly(
    run: Run, timeout: float | None, others: Sequence[Run] = ()
) -> tuple[int | None, float]:
    deadline = None if timeout is None else run.started + timeout
    try:
        return run.wait(deadline)
    except KeyboardInterrupt:
        for each in {run, *others}:
            each.signal(signal.SIGINT)
        for each in {run, *others}:
            each.wait(time.monotonic() + 30)
        raise


def report(steps: list[Step]) -> int:
    total = {"passed": 0, "failed": 0, "skipped": 0}
    print("\n=== Summary ===")
    for step in steps:
        counts = ", ".join(f"{n} {w}" for w, n in step.counts.items())
        details = "; ".join(x for x in (counts, step.detail) if x)
        seconds = f"{step.seconds:7.1f} s" if step.seconds else " " * 9
        print(f"  {step.name:<24} {step.status:<8} {seconds}  {details}".rstrip())
        total["passed"] += step.counts.get("passed", 0)
        total["failed"] += step.counts.get("failed", 0) + step.counts.get("errors", 0)
        total["skipped"] += step.counts.get("skipped", 0)
    failed = [step.name for step in steps if step.failed]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    # Last, and alone on its line: CI reads the totals from it.
    print(f"Total: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
