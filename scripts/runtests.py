"""Run the project's checks and its test suite once per database backend.

``make test`` calls this with the virtual environment's Python::

    python scripts/runtests.py [--backends sqlite,postgres] [--require] [--parallel]
                               [--timeout SECONDS] [-- PYTEST ARGS...]

1. ``ruff check``, ``mypy django_apscheduler`` and ``makemigrations --check --dry-run``;
2. pytest once per backend, with ``DJANGO_APSCHEDULER_TEST_DB`` set to it.

A PostgreSQL or MariaDB server that does not accept connections is skipped
with the reason, unless ``--require`` is given: then it is a failure (CI).
``--parallel`` runs the backends at the same time, each into a log file that
is printed when all are done. A summary and a total line close the output; the
exit status is non-zero if anything failed, including a pytest run that
collected no tests. Standard library only (it runs before anything is checked).
"""

from __future__ import annotations

import argparse
import hashlib
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


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DJANGO_APSCHEDULER_TEST_DB_SUFFIX", default_suffix())
    env["PYTHONDONTWRITEBYTECODE"] = "1"
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
    parser.add_argument("--parallel", action="store_true", help="run the backends at the same time")
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
    if sys.stdout.isatty() and not args.parallel:
        pytest.append("--color=yes")
    pytest += args.pytest_args

    started: list[tuple[Step, Run | None]] = []
    for backend in backends:
        step = Step(backend)
        problem = server_problem(backend)
        if problem:
            step.status = "FAILED" if args.require else "SKIPPED"
            step.detail = problem
            hint = "" if args.require else " (REQUIRE_BACKENDS=1 makes this an error)"
            print(f"\n{step.status} {backend}: {problem}{hint}", flush=True)
            started.append((step, None))
            continue
        run_env = dict(env, DJANGO_APSCHEDULER_TEST_DB=backend)
        log = logs / f"pytest-{backend}.log"
        if not args.parallel:
            print(f"\n=== pytest on {backend} ===", flush=True)
        run = Run(pytest, run_env, log, echo=not args.parallel)
        if args.parallel:
            print(f"\nStarted pytest on {backend} (log: {log})", flush=True)
            started.append((step, run))
        else:
            code, seconds = wait_interruptibly(run, args.timeout)
            finish_backend(step, code, seconds, log, args.timeout)
            started.append((step, None))

    if args.parallel:
        running = [(step, run) for step, run in started if run is not None]
        for step, run in running:
            code, seconds = wait_interruptibly(run, args.timeout, others=[r for _, r in running])
            finish_backend(step, code, seconds, run.log, args.timeout)
        for step, run in running:
            print(f"\n=== pytest on {step.name}: {step.status} (log: {run.log}) ===")
            sys.stdout.write(run.log.read_text(encoding="utf-8", errors="replace"))
    steps += [step for step, _ in started]
    return report(steps)


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
