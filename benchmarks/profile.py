"""Where B1's time goes: ``python -m benchmarks.profile --backend sqlite --k 1000``.

Runs B1's DjangoJobStore measurement once on a fresh ``dja_bench_profile``
database with two kinds of instrumentation (this process only; the library
is not changed):

- wall time and SQL statements of each store method the scheduler thread
  calls (``get_due_jobs``, ``remove_job``/``update_job``, ``get_next_run_time``)
  and of the recorder's batch writes, plus statements per thread;
- optionally (``--py-spy``) a py-spy sampling profile of every thread, summed
  per thread and per function (own time and with callees).

Counted from ``resume()`` until every run is logged (not the setup): SQL
statements, round trips (statements, commits and rollbacks, PostgreSQL's
``BEGIN``, MySQL's autocommit switches) and the process's CPU time, each per
fire.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import signal
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


def _pyspy_summary(path: Path, top: int = 25) -> dict[str, Any]:
    """Sum py-spy's raw (collapsed) stacks per thread, per function (self and inclusive)."""
    per_thread: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
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
        "per_thread": per_thread.most_common(),
        "own": own.most_common(top),
        "inclusive": inclusive.most_common(top),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="sqlite")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=10)
    parser.add_argument("--py-spy", action="store_true", help="also sample with py-spy")
    parser.add_argument("--out", default="benchmarks/results/profile")
    args = parser.parse_args()

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
                "--idle",
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
    window: dict[str, Any] = {}
    dispatch_until_done = suite.dispatch_until_done

    def counted(*a: Any, **kw: Any) -> Any:
        counter.start()
        cpu = time.process_time()
        try:
            return dispatch_until_done(*a, **kw)
        finally:
            window["cpu_s"] = time.process_time() - cpu
            window["counts"] = counter.stop()

    suite.dispatch_until_done = counted  # type: ignore[assignment]
    result = suite.bench_dispatch(k=args.k, threads=args.threads, repeat=1, stores=("django",))
    suite.dispatch_until_done = dispatch_until_done  # type: ignore[assignment]
    counts = window["counts"]
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    run = result["runs"]["django"][0]
    report = {
        "backend": args.backend,
        "k": args.k,
        "run_s": run["run_s"],
        "total_s": run["total_s"],
        "fires_per_s": run["fires_per_s"],
        "all_logged": run["all_logged"],
        "cpu_us_per_fire": round(1e6 * window["cpu_s"] / args.k, 1),
        "statements_per_fire": round(counts["sql_statements"] / args.k, 3),
        # psycopg sends a BEGIN of its own before each transaction's first statement.
        "round_trips_per_fire": round(
            (
                counts["sql_statements"]
                + counts["tx_ends"] * (2 if args.backend == "postgres" else 1)
                + counts["autocommit_switches"]
            )
            / args.k,
            3,
        ),
        "timings_s": {k: round(v, 3) for k, v in timings.seconds.most_common()},
        "calls": dict(timings.calls),
        "statements": counts,
    }
    if spy is not None and raw.exists():
        report["py_spy"] = _pyspy_summary(raw)
    databases.drop(args.backend, name)
    path = out / f"b1-{args.backend}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "py_spy"}, indent=1))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
