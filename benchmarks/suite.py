"""The benchmarks, as functions of a process where Django is set up on the database to measure.

The command line runs them in one driver process per backend (on a
``dja_bench*`` database); the test suite's smoke test calls them with tiny
numbers on its test database. Every function returns a JSON-able dict.
Scheduler processes are started with :func:`spawn` (``benchmarks.worker``),
on the same database as the calling process.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from django.conf import settings
from django.db import connection, transaction

from benchmarks import jobs

UTC = timezone.utc
ROOT = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCH-RESULT "
SA_TABLE = "dja_bench_sa_jobs"
STORES = ("memory", "sqlalchemy", "django")


# --- helpers -------------------------------------------------------------------------


def vendor_backend() -> str:
    """The benchmark backend name of the current database: sqlite, postgres or mariadb."""
    return {"sqlite": "sqlite", "postgresql": "postgres", "mysql": "mariadb"}[connection.vendor]


def worker_env(
    extra_settings: dict[str, Any] | None = None, database: str | None = None
) -> dict[str, str]:
    """The environment of a worker process on the same database as this process, or ``database``.

    Works with the benchmarks' settings and with the test suite's (which read
    the database name from ``DJANGO_APSCHEDULER_TEST_DB_NAME``). ``database``
    is a benchmark database name (see ``databases``) on the same server.
    """
    from benchmarks import databases

    name = str(connection.settings_dict["NAME"])
    if database is not None and database != name:
        name = str(databases.database(vendor_backend(), database)["NAME"])
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = settings.SETTINGS_MODULE
    env["DJA_BENCH_BACKEND"] = vendor_backend()
    env["DJA_BENCH_DB_NAME"] = name
    env["DJANGO_APSCHEDULER_TEST_DB"] = vendor_backend()
    env["DJANGO_APSCHEDULER_TEST_DB_NAME"] = name
    if extra_settings:
        env["DJA_BENCH_SETTINGS"] = json.dumps(extra_settings)
        env["DJANGO_APSCHEDULER_TEST_SETTINGS"] = json.dumps(extra_settings)
    return env


class Worker:
    """One ``python -m benchmarks.worker TASK PARAMS`` process, its output in a file."""

    def __init__(self, task: str, params: dict[str, Any], directory: Path, env: dict) -> None:
        self.log = directory / f"{task}-{time.monotonic_ns()}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.worker", task, json.dumps(params)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def result(self, timeout: float) -> dict[str, Any]:
        """Wait for the process to end; return what it reported."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"worker timed out:\n{self.output()}") from None
        for line in reversed(self.output().splitlines()):
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX) :])
        raise RuntimeError(
            f"worker exited {self.proc.returncode} without a result:\n{self.output()}"
        )

    def output(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def spawn(task: str, params: dict[str, Any], directory: Path, **settings_: Any) -> Worker:
    return Worker(task, params, directory, worker_env(settings_ or None))


def wait_for(predicate: Any, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def peak_rss_mib() -> float:
    """This process's peak resident memory (``getrusage``; KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between the closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def sqlalchemy_url() -> str:
    """A SQLAlchemy URL for the database Django's default connection uses."""
    from sqlalchemy.engine import URL

    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    driver = {"postgresql": "postgresql+psycopg", "mysql": "mysql+mysqldb"}[connection.vendor]
    query = {"charset": "utf8mb4"} if connection.vendor == "mysql" else {}
    return URL.create(
        driver,
        username=s.get("USER") or None,
        password=s.get("PASSWORD") or None,
        host=s.get("HOST") or None,
        port=int(s["PORT"]) if s.get("PORT") else None,
        database=s["NAME"],
        query=query,
    ).render_as_string(hide_password=False)


def clear_django_tables() -> None:
    """Empty the job and execution tables (raw DELETEs: 100,000 rows must not be collected)."""
    from django_apscheduler.models import DjangoJob, DjangoJobExecution, DjangoSchedulerInstance

    with connection.cursor() as cursor:
        for model in (DjangoJobExecution, DjangoJob, DjangoSchedulerInstance):
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(model._meta.db_table)}")


def _state(
    job_id: str, func: str, trigger: Any, next_run_time: datetime, args: tuple = ()
) -> bytes:
    """The pickled state ``DjangoJobStore`` would store for this job."""
    state = {
        "version": 1,
        "id": job_id,
        "func": func,
        "trigger": trigger,
        "executor": "default",
        "args": args,
        "kwargs": {},
        "name": func.rsplit(":", 1)[-1],
        "misfire_grace_time": None,
        "coalesce": True,
        "max_instances": 1,
        "next_run_time": next_run_time,
    }
    return pickle.dumps(state, pickle.HIGHEST_PROTOCOL)


def insert_jobs(
    prefix: str,
    count: int,
    *,
    due: bool,
    func: str = "benchmarks.jobs:noop",
    args: tuple = (),
    start: int = 0,
) -> None:
    """Bulk-insert ``count`` job rows (the setup of B4 and B5, much faster than add_job).

    Due rows are one-shot date jobs due a second ago; the others repeat daily
    and are next due between one hour and one day from now.
    """
    from django_apscheduler import signing
    from django_apscheduler.models import DjangoJob

    now = datetime.now(UTC).replace(microsecond=0)
    daily = IntervalTrigger(days=1, start_date=now, timezone=UTC)
    batch: list[DjangoJob] = []
    for i in range(start, start + count):
        job_id = f"{prefix}{i:06d}"
        if due:
            when = now - timedelta(seconds=1)
            trigger: Any = DateTrigger(run_date=when, timezone=UTC)
        else:
            when = now + timedelta(hours=1, seconds=i % 82800)
            trigger = daily
        state = _state(job_id, func, trigger, when, args)
        # Signed, as the store signs what it writes: an unsigned row is never run.
        signature = signing.sign(job_id, state)
        batch.append(
            DjangoJob(id=job_id, next_run_time=when, job_state=state, job_signature=signature)
        )
        if len(batch) >= 2000:
            DjangoJob.objects.bulk_create(batch)
            batch = []
    if batch:
        DjangoJob.objects.bulk_create(batch)


class RunCounter:
    """Counts the scheduler's executed (and failed, and missed) events; fires ``done`` at ``expect``."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.executed = self.errors = self.missed = 0
        self.done = threading.Event()
        self._lock = threading.Lock()
        if expect <= 0:
            self.done.set()

    def __call__(self, event: Any) -> None:
        with self._lock:
            if event.code == EVENT_JOB_EXECUTED:
                self.executed += 1
            elif event.code == EVENT_JOB_ERROR:
                self.errors += 1
            else:
                self.missed += 1
            if self.executed + self.errors + self.missed >= self.expect:
                self.done.set()

    def attach(self, scheduler: Any) -> None:
        scheduler.add_listener(self, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)


def logged_runs(prefix: str) -> dict[str, int]:
    """Execution rows of jobs whose id starts with ``prefix``, by status; plus distinct runs."""
    from django.db.models import Count

    from django_apscheduler.models import DjangoJobExecution

    rows = DjangoJobExecution.objects.filter(job__id__startswith=prefix)
    by_status = dict(rows.values_list("status").annotate(n=Count("id")).order_by())
    by_status["distinct_jobs"] = rows.values("job_id").distinct().count()
    return by_status


def make_scheduler(store: Any, threads: int) -> BackgroundScheduler:
    return BackgroundScheduler(
        jobstores={"default": store},
        executors={"default": ThreadPoolExecutor(threads)},
        timezone="UTC",
    )


def dispatch_until_done(
    scheduler: BackgroundScheduler, counter: RunCounter, *, django_log: bool, timeout: float
) -> dict[str, float]:
    """Resume the paused ``scheduler``; time until every run ended (and, with our store, is logged)."""
    from django_apscheduler import executions

    started = time.perf_counter()
    scheduler.resume()
    finished = counter.done.wait(timeout)
    ran = time.perf_counter()
    flushed = executions.recorder.flush(timeout=timeout) if django_log else True
    logged = time.perf_counter()
    if not finished or not flushed:
        raise RuntimeError(
            f"timed out after {timeout} s: {counter.executed}/{counter.expect} runs, "
            f"log flushed: {flushed}"
        )
    return {"run_s": ran - started, "total_s": logged - started}


# --- B1: dispatch throughput --------------------------------------------------------------


def _b1_once(store_kind: str, k: int, threads: int, timeout: float) -> dict[str, Any]:
    from django_apscheduler.jobstores import DjangoJobStore

    if store_kind == "memory":
        store: Any = MemoryJobStore()
    elif store_kind == "sqlalchemy":
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

        store = SQLAlchemyJobStore(url=sqlalchemy_url(), tablename=SA_TABLE)
    else:
        store = DjangoJobStore()
        clear_django_tables()
    scheduler = make_scheduler(store, threads)
    counter = RunCounter(k)
    counter.attach(scheduler)
    scheduler.start(paused=True)
    try:
        if store_kind == "sqlalchemy":
            scheduler.remove_all_jobs()
        due = datetime.now(UTC) - timedelta(seconds=1)
        adding = transaction.atomic() if store_kind == "django" else contextlib.nullcontext()
        with adding:  # one transaction for our store's inserts (setup, not measured)
            for i in range(k):
                scheduler.add_job(
                    jobs.noop, "date", run_date=due, id=f"b1-{i:06d}", misfire_grace_time=None
                )
        times = dispatch_until_done(
            scheduler, counter, django_log=store_kind == "django", timeout=timeout
        )
    finally:
        scheduler.shutdown(wait=True)
    result: dict[str, Any] = {
        "store": store_kind,
        "k": k,
        **times,
        "fires_per_s": k / times["total_s"],
        "executed": counter.executed,
        "errors": counter.errors,
        "missed": counter.missed,
    }
    if store_kind == "django":
        from django_apscheduler.models import DjangoJobExecution

        logged = logged_runs("b1-")
        result["logged"] = logged
        result["all_logged"] = (
            logged.get(DjangoJobExecution.SUCCESS, 0) == k and logged["distinct_jobs"] == k
        )
    if store_kind == "sqlalchemy":
        with contextlib.suppress(Exception):
            store.engine.dispose()
    return result


def bench_dispatch(
    k: int = 1000, threads: int = 10, repeat: int = 5, stores: tuple = STORES, timeout: float = 600
) -> dict[str, Any]:
    """B1: K no-op jobs due at once, a ``threads``-thread pool; fires per second per store.

    The stores take turns within each repetition (the order rotates), so the
    machine's noise hits all of them alike. Ratios are of the medians.
    """
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in stores}
    for rep in range(repeat):
        order = list(stores[rep % len(stores) :]) + list(stores[: rep % len(stores)])
        for store_kind in order:
            runs[store_kind].append(_b1_once(store_kind, k, threads, timeout))
    medians = {s: statistics.median(r["fires_per_s"] for r in runs[s]) for s in stores}
    result: dict[str, Any] = {"k": k, "threads": threads, "repeat": repeat, "runs": runs}
    result["median_fires_per_s"] = medians
    if "django" in stores:
        result["all_logged"] = all(r["all_logged"] for r in runs["django"])
        for ref in ("memory", "sqlalchemy"):
            if ref in stores:
                result[f"ratio_vs_{ref}"] = medians["django"] / medians[ref]
    return result


# --- B2: idle cost --------------------------------------------------------------------------


def bench_idle(window: float = 60, warmup: float = 5, directory: Path | None = None) -> dict:
    """B2: statements per minute of one idle scheduler process (default settings).

    The process (``worker.idle``) counts at its database connections; see there.
    """
    with _directory(directory) as path:
        worker = spawn(
            "idle",
            {"window": window, "warmup": warmup, "sa_url": sqlalchemy_url()},
            path,
        )
        try:
            return worker.result(timeout=window + warmup + 120)
        finally:
            worker.kill()


@contextlib.contextmanager
def _directory(directory: Path | None):
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
    else:
        with tempfile.TemporaryDirectory(prefix="dja_bench_") as name:
            yield Path(name)


# --- B3: cross-process wake-up -------------------------------------------------------------


def _starts(path: Path) -> dict[str, float]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    found = {}
    for line in text.splitlines():
        token, _, t = line.partition(" ")
        if t:
            found[token] = float(t)
    return found


def _latencies(scheduler: Any, starts: Path, samples: int, prefix: str, gap: tuple) -> dict:
    """Add ``samples`` jobs due now, one at a time; latency from the add's commit to the start."""
    latencies, add_times = [], []
    for i in range(samples):
        time.sleep(random.uniform(*gap))  # no phase-locking with the poll interval
        token = f"{prefix}{i:04d}"
        called = time.time()
        scheduler.add_job(
            "benchmarks.jobs:note_start",
            "date",
            run_date=datetime.now(UTC),
            args=[str(starts), token],
            id=token,
            misfire_grace_time=None,
        )
        added = time.time()
        if not wait_for(lambda t=token: t in _starts(starts), timeout=30, interval=0.002):
            raise RuntimeError(f"job {token} did not start within 30 s")
        latencies.append(_starts(starts)[token] - added)
        add_times.append(added - called)
    return {
        "samples": samples,
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies),
        "add_job_p50_s": percentile(add_times, 50),
        "latencies_s": latencies,
    }


def bench_wakeup(
    samples: int = 30, gap: tuple = (0.1, 0.6), directory: Path | None = None
) -> dict[str, Any]:
    """B3: a job added in this process, due now, started by a scheduler in another process.

    This process adds with a paused scheduler (the "web process" pattern of
    docs/multiple-schedulers.md). Reference: the same with APScheduler's
    MemoryJobStore and the scheduler in this process (the floor: a direct wake-up).
    """
    from django_apscheduler import executions
    from django_apscheduler.jobstores import DjangoJobStore

    clear_django_tables()
    with _directory(directory) as path:
        starts, ready, stop = path / "b3-starts.txt", path / "b3-ready", path / "b3-stop"
        worker = spawn("scheduler", {"ready": str(ready), "stop": str(stop), "threads": 10}, path)
        try:
            if not wait_for(ready.exists, timeout=120, interval=0.05):
                raise RuntimeError(f"scheduler process not ready:\n{worker.output()}")
            adder = BackgroundScheduler(timezone="UTC")
            adder.add_jobstore(DjangoJobStore(), "default")
            adder.start(paused=True)
            try:
                ours = _latencies(adder, starts, samples, "b3-", gap)
            finally:
                adder.shutdown()
            stop.touch()
            worker.result(timeout=60)
        finally:
            worker.kill()
        executions.recorder.flush(timeout=30)

        ref_starts = path / "b3-ref-starts.txt"
        local = make_scheduler(MemoryJobStore(), 10)
        local.start()
        try:
            reference = _latencies(local, ref_starts, min(samples, 20), "ref-", (0.01, 0.05))
        finally:
            local.shutdown()
    return {"django": ours, "memory_in_process": reference}


# --- B4: scale ------------------------------------------------------------------------------


def _large_database() -> str:
    """The name of B4's second database, beside the current one (unique to it)."""
    import hashlib

    current = str(connection.settings_dict["NAME"])
    return "dja_bench_b4_" + hashlib.sha256(current.encode()).hexdigest()[:10]


def bench_scale(
    small: int = 1000,
    large: int = 100_000,
    due: int = 1000,
    threads: int = 10,
    repeat: int = 3,
    directory: Path | None = None,
) -> dict[str, Any]:
    """B4: dispatch cost per fire, and peak memory, with ``small`` versus ``large`` stored jobs.

    ``due`` of them are due at once in both cases; the others are due in an
    hour to a day. The two cases live in two databases (this one, and a
    second one filled once), so their repetitions alternate (small, large,
    then large, small...) and the machine's drift hits both alike. Each
    measurement is a fresh scheduler process (so its peak memory is its own,
    ``worker.dispatch``), after a separate process reset the case's due jobs
    and log (``worker.prepare``).
    """
    from benchmarks import databases

    backend = vendor_backend()
    other = _large_database()
    cases: dict[str, list[dict[str, Any]]] = {"small": [], "large": []}
    names = {"small": str(connection.settings_dict["NAME"]), "large": other}
    databases.create(backend, other)
    try:
        with _directory(directory) as path:
            for case, stored in (("small", small), ("large", large)):
                fill = Worker(
                    "fill",
                    {"prefix": "b4-later-", "count": stored - due},
                    path,
                    worker_env(database=names[case]),
                )
                fill.result(timeout=3600)
            for rep in range(repeat):
                order = ("small", "large") if rep % 2 == 0 else ("large", "small")
                for case in order:
                    env = worker_env(database=names[case])
                    Worker("prepare", {"prefix": "b4-due-", "count": due}, path, env).result(600)
                    worker = Worker(
                        "dispatch",
                        {"expect": due, "threads": threads, "prefix": "b4-due-"},
                        path,
                        env,
                    )
                    try:
                        run = worker.result(timeout=900)
                    finally:
                        worker.kill()
                    run["stored"] = {"small": small, "large": large}[case]
                    run["per_fire_ms"] = 1000 * run["total_s"] / due
                    cases[case].append(run)
    finally:
        databases.drop(backend, other)
    med = {
        case: {
            "per_fire_ms": statistics.median(r["per_fire_ms"] for r in runs),
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
            "base_rss_mib": statistics.median(r["base_rss_mib"] for r in runs),
        }
        for case, runs in cases.items()
    }
    return {
        "small": small,
        "large": large,
        "due": due,
        "repeat": repeat,
        "runs": cases,
        "median": med,
        "cost_ratio": med["large"]["per_fire_ms"] / med["small"]["per_fire_ms"],
        "memory_ratio": med["large"]["peak_rss_mib"] / med["small"]["peak_rss_mib"],
        "all_logged": all(r["all_logged"] for runs in cases.values() for r in runs),
    }


# --- B5: many processes ---------------------------------------------------------------------


def bench_processes(
    counts: tuple = (1, 2, 4),
    jobs_: int = 2000,
    sleep: float = 0.05,
    threads: int = 10,
    repeat: int = 3,
    directory: Path | None = None,
) -> dict[str, Any]:
    """B5: ``jobs_`` jobs that sleep ``sleep`` s, all due, run by 1, 2, 4 scheduler processes.

    The processes start paused and resume together (a "go" file with the start
    time); the run ends when every job's run is logged "Executed" (polled in
    this process every 50 ms). Fires per second = jobs / (end - start).
    """
    from django_apscheduler.models import DjangoJobExecution

    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    with _directory(directory) as path:
        for rep in range(repeat):
            for n in counts:
                clear_django_tables()
                insert_jobs("b5-", jobs_, due=True, func="benchmarks.jobs:sleep", args=(sleep,))
                tag = f"{rep}-{n}"
                go, stop = path / f"b5-go-{tag}", path / f"b5-stop-{tag}"
                readies = [path / f"b5-ready-{tag}-{i}" for i in range(n)]
                workers = [
                    spawn(
                        "scheduler",
                        {"ready": str(r), "go": str(go), "stop": str(stop), "threads": threads},
                        path,
                    )
                    for r in readies
                ]
                try:
                    if not wait_for(lambda rs=readies: all(r.exists() for r in rs), 120, 0.05):
                        raise RuntimeError("scheduler processes not ready")
                    start = time.time() + 0.2
                    go.write_text(repr(start))
                    done = DjangoJobExecution.objects.filter(
                        job__id__startswith="b5-", status=DjangoJobExecution.SUCCESS
                    )
                    if not wait_for(lambda d=done: d.count() >= jobs_, timeout=600, interval=0.05):
                        raise RuntimeError(f"only {done.count()} of {jobs_} runs logged")
                    elapsed = time.time() - start
                    stop.touch()
                    per_process = [w.result(timeout=120) for w in workers]
                finally:
                    for w in workers:
                        w.kill()
                logged = logged_runs("b5-")
                runs[n].append(
                    {
                        "processes": n,
                        "seconds": elapsed,
                        "fires_per_s": jobs_ / elapsed,
                        "logged": logged,
                        "all_logged": logged.get(DjangoJobExecution.SUCCESS, 0) == jobs_
                        and logged["distinct_jobs"] == jobs_
                        and sum(logged.get(s, 0) for s in logged if s != "distinct_jobs") == jobs_,
                        "executed_per_process": [p["executed"] for p in per_process],
                    }
                )
    med = {n: statistics.median(r["fires_per_s"] for r in runs[n]) for n in counts}
    return {
        "jobs": jobs_,
        "sleep_s": sleep,
        "threads": threads,
        "repeat": repeat,
        "runs": {str(n): r for n, r in runs.items()},
        "median_fires_per_s": {str(n): v for n, v in med.items()},
        "ratio_vs_1": {str(n): med[n] / med[counts[0]] for n in counts},
        "all_logged": all(r["all_logged"] for rs in runs.values() for r in rs),
    }


# --- one backend, as the driver process runs it -------------------------------------------


def run_backend(params: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmarks named in ``params["benchmarks"]`` with their parameters."""
    directory = Path(params["directory"])
    results: dict[str, Any] = {"backend": vendor_backend()}
    for name in params["benchmarks"]:
        started = time.monotonic()
        args = params.get(name, {})
        if name == "b1":
            results[name] = bench_dispatch(**args)
        elif name == "b2":
            results[name] = bench_idle(directory=directory, **args)
        elif name == "b3":
            results[name] = bench_wakeup(directory=directory, **args)
        elif name == "b4":
            results[name] = bench_scale(directory=directory, **args)
        elif name == "b5":
            results[name] = bench_processes(directory=directory, **args)
        else:
            raise ValueError(f"unknown benchmark {name!r}")
        results[name]["wall_s"] = time.monotonic() - started
        print(
            f"[{results['backend']}] {name} done in {time.monotonic() - started:.0f} s", flush=True
        )
    return results
