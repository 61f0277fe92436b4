"""Where B1's time goes: ``python -m benchmarks.profile --backend sqlite --k 1000``.

Runs B1's DjangoJobStore measurement once on a fresh ``dja_bench_profile``
database with two kinds of instrumentation (this process only; the library
is not changed):

- wall time and SQL statements of each store method the scheduler thread
  calls (``get_due_jobs``, ``remove_job``/``update_job``, ``get_next_run_time``)
  and of the recorder's batch writes, plus statements per thread;
- optionally (``--py-spy``) a py-spy sampling profile of every thread, summed
  per thread and per function (own time and with callees); with ``--gil``
  only the samples of threads holding the GIL, of the dispatch's threads
  (the scheduler's loop, the pool, the recorder, the run-lock releaser, the
  housekeeping), summed per role as well: where the process's Python time
  goes, when the GIL is what limits B1.

Counted from ``resume()`` until every run is logged (not the setup): SQL
statements, round trips (statements, commits and rollbacks, PostgreSQL's
``BEGIN``, MySQL's autocommit switches), the process's CPU time and, on
Linux, the database server's (its local processes'), each per fire.
``--repeat N`` measures N times in the same process: the CPU figures are
medians, as one repetition's spread widely.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import databases


class Timings:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)
        timings = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                with timings.lock:
                    timings.seconds[label] += time.perf_counter() - started
                    timings.calls[label] += 1

        setattr(owner, name, timed)


#: The dispatch's threads, by a frame each of their stacks has (``--gil``).
ROLES = {
    "scheduler loop": "BlockingScheduler._main_loop",
    "pool threads": "_worker (concurrent/futures/thread.py",
    "recorder": "ExecutionRecorder._run",
    "run-lock releaser": "RunLocks._release_loop",
    "housekeeping": "Coordinator._housekeep",
}


def _role(stack: str) -> str | None:
    return next((role for role, frame in ROLES.items() if frame in stack), None)


def _pyspy_summary(path: Path, top: int = 25, dispatch_only: bool = False) -> dict[str, Any]:
    """Sum py-spy's raw (collapsed) stacks per thread, per function (self and inclusive).

    ``dispatch_only``: only the stacks of the dispatch's threads (:data:`ROLES`),
    also summed per role; the setup's (the main thread adding jobs) are left out.
    """
    per_thread: collections.Counter[str] = collections.Counter()
    per_role: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        role = _role(stack)
        if dispatch_only and role is None:
            continue
        per_role[role or "other"] += n
        frames = stack.split(";")
        thread = frames[0]
        total += n
        per_thread[thread] += n
        names = [f.split(" (")[0] + " (" + f.split(" (")[-1] for f in frames[1:]] or ["?"]
        own[names[-1]] += n
        for name in set(names):
            inclusive[name] += n
    return {
        "samples": total,
        "per_role": per_role.most_common(),
        "per_thread": per_thread.most_common(),
        "own": own.most_common(top),
        "inclusive": inclusive.most_common(top),
    }


def _server_cpu_s() -> float | None:
    """CPU seconds used so far by this machine's PostgreSQL and MariaDB/MySQL processes (Linux)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    ticks = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "comm").read_text().startswith(("postgres", "mariadbd", "mysqld")):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _summed(counts: list[dict[str, Any]]) -> dict[str, Any]:
    """The statement counts of several measurements, added up (``by_*`` dictionaries too)."""
    total: dict[str, Any] = {}
    for one in counts:
        for key, value in one.items():
            if isinstance(value, dict):
                inner = total.setdefault(key, {})
                for name, n in value.items():
                    inner[name] = inner.get(name, 0) + n
            else:
                total[key] = total.get(key, 0) + value
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="sqlite")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=10)
    parser.add_argument("--py-spy", action="store_true", help="also sample with py-spy")
    parser.add_argument(
        "--gil",
        action="store_true",
        help="with --py-spy: only samples holding the GIL, of the dispatch's threads",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="measurements in one process (CPU: the median)"
    )
    parser.add_argument("--out", default="benchmarks/results/profile")
    args = parser.parse_args()
    if args.gil and not args.py_spy:
        parser.error("--gil selects py-spy's samples: give --py-spy too")
    if args.repeat < 1:
        parser.error(f"--repeat: at least 1 (got {args.repeat})")

    name = "dja_bench_profile"
    databases.create(args.backend, name)
    os.environ.update(databases.settings_env(args.backend, name))
    import django

    django.setup()

    from benchmarks import suite
    from benchmarks.worker import StatementCounter
    from django_apscheduler import executions
    from django_apscheduler.jobstores import DjangoJobStore

    counter = StatementCounter()
    counter.install()
    timings = Timings()
    for method in ("get_due_jobs", "remove_job", "update_job", "get_next_run_time"):
        timings.wrap(DjangoJobStore, method, f"store.{method}")
    timings.wrap(executions, "_write", "recorder: executions._write (one batch)")
    timings.wrap(executions, "instrument", "executions.instrument")

    # Warm-up run (imports, connections), then the measured one.
    suite.bench_dispatch(k=50, threads=args.threads, repeat=1, stores=("django",))
    timings.seconds.clear()
    timings.calls.clear()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spy = None
    raw = out / f"pyspy-{args.backend}.txt"
    if args.py_spy:
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(os.getpid()),
                "--threads",
                "--gil" if args.gil else "--idle",
                "--rate",
                "200",
                "--format",
                "raw",
                "-o",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
    # Counted from resume() until every run is logged: the dispatch, not the setup.
    cpu_s: list[float] = []
    server_s: list[float] = []
    totals: list[dict[str, Any]] = []
    dispatch_until_done = suite.dispatch_until_done

    def counted(*a: Any, **kw: Any) -> Any:
        counter.start()
        server = _server_cpu_s()
        cpu = time.process_time()
        try:
            return dispatch_until_done(*a, **kw)
        finally:
            cpu_s.append(time.process_time() - cpu)
            after = _server_cpu_s()
            if server is not None and after is not None:
                server_s.append(after - server)
            totals.append(counter.stop())

    suite.dispatch_until_done = counted  # type: ignore[assignment]
    result = suite.bench_dispatch(
        k=args.k, threads=args.threads, repeat=args.repeat, stores=("django",)
    )
    suite.dispatch_until_done = dispatch_until_done  # type: ignore[assignment]
    counts = _summed(totals)
    fires = args.k * len(totals)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    runs = result["runs"]["django"]
    report = {
        "backend": args.backend,
        "k": args.k,
        "repeat": len(runs),
        "run_s": statistics.median(run["run_s"] for run in runs),
        "total_s": statistics.median(run["total_s"] for run in runs),
        "fires_per_s": statistics.median(run["fires_per_s"] for run in runs),
        "fires_per_s_runs": [round(run["fires_per_s"]) for run in runs],
        "all_logged": all(run["all_logged"] for run in runs),
        "cpu_us_per_fire": round(1e6 * statistics.median(cpu_s) / args.k, 1),
        "cpu_us_per_fire_runs": [round(1e6 * c / args.k, 1) for c in cpu_s],
        "server_cpu_us_per_fire": (
            round(1e6 * statistics.median(server_s) / args.k, 1) if server_s else None
        ),
        "statements_per_fire": round(counts["sql_statements"] / fires, 3),
        # psycopg sends a BEGIN of its own before each transaction's first statement.
        "round_trips_per_fire": round(
            (
                counts["sql_statements"]
                + counts["tx_ends"] * (2 if args.backend == "postgres" else 1)
                + counts["autocommit_switches"]
            )
            / fires,
            3,
        ),
        "timings_s": {k: round(v, 3) for k, v in timings.seconds.most_common()},
        "calls": dict(timings.calls),
        "statements": counts,
    }
    if spy is not None and raw.exists():
        report["py_spy"] = _pyspy_summary(raw, dispatch_only=args.gil)
    databases.drop(args.backend, name)
    path = out / f"b1-{args.backend}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "py_spy"}, indent=1))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
