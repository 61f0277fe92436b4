"""The scheduler runner: schedulers configured from settings, started safely.

Used by ``manage.py runapscheduler`` (a scheduler in a process of its own,
with graceful stop on SIGTERM/SIGINT and a ``--burst`` mode) and by autostart
(a background scheduler in each web process, ``APSCHEDULER_AUTOSTART``).
Both sync the jobs declared in code before dispatching anything, and both are
safe to run in any number of processes at once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

from apscheduler.executors.pool import ProcessPoolExecutor, ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from django.utils import timezone

from django_apscheduler import conf, declared, executions, internals, util
from django_apscheduler.jobstores import DjangoJobStore

logger = logging.getLogger(__name__)

#: The job store alias of the runner's own housekeeping jobs (never logged).
INTERNAL_STORE = "django_apscheduler_internal"

#: Seconds between two prunes of the execution log when a retention is set.
PRUNE_INTERVAL = 3600


def recheck_interval() -> float:
    """Seconds between two looks for declared jobs that no live release declares any more.

    Three lease times: an instance of the old release that died is taken for
    dead after one, so its jobs go within a few lease times of its end.
    """
    return 3 * conf.lease_time()


def prune_executions() -> int:
    """Delete logged runs older than ``APSCHEDULER_EXECUTION_RETENTION``; return how many."""
    from django_apscheduler.models import DjangoJobExecution

    retention = conf.execution_retention()
    if retention is None:
        return 0
    deleted = DjangoJobExecution.objects.delete_old_job_executions(int(retention))
    if deleted:
        logger.info("Deleted %d logged runs older than %g s", deleted, retention)
    return deleted


def _closing_connections(func: Callable[..., Any], *args: Any) -> Any:
    """Run a housekeeping job, then close the database connections of its pool thread.

    The executor's threads live on between runs; a connection left open there
    would idle until the next run (or be found broken by it).
    """
    from django.db import connections

    try:
        return func(*args)
    finally:
        connections.close_all()


class Runner:
    """One scheduler built from settings, with its ``DjangoJobStore``.

    :param scheduler_class: APScheduler scheduler class; a background
        scheduler by default (the caller's thread stays free).
    """

    def __init__(self, scheduler_class: type = BackgroundScheduler) -> None:
        executors: dict[str, Any] = {"default": ThreadPoolExecutor(conf.threads())}
        processes = conf.processes()
        if processes:
            executors["processpool"] = ProcessPoolExecutor(processes)
        self.scheduler = scheduler_class(
            timezone=conf.timezone_name(),
            executors=executors,
            job_defaults=conf.job_defaults(),
        )
        self.store = DjangoJobStore()
        self.declarations: dict[str, declared.Declaration] = {}
        self._contested: set[str] = set()
        self.scheduler.add_jobstore(self.store, "default")
        self.scheduler.add_jobstore(MemoryJobStore(), INTERNAL_STORE)

    def start(self, *, paused: bool = False) -> declared.SyncReport:
        """Start the scheduler, syncing the jobs declared in code before any dispatch.

        Unless ``paused``, the scheduler instance registers first, with the
        ids its code declares, so that a sync by another release running at
        the same time (a rolling deploy) keeps them; then the sync runs, and
        then dispatching starts. What is due (stored times in the past
        included) is run within its grace time, or logged "Missed!".
        """
        self.scheduler.start(paused=True)
        self.declarations = declared.discover()
        self.store.declared_ids = declared.fingerprints(self.declarations)
        if not paused:
            self.store.register_instance()
        report = declared.sync(self.scheduler, declarations=self.declarations)
        self._contested = set(report.contested)
        self.scheduler.add_job(
            _closing_connections,
            "interval",
            seconds=recheck_interval(),
            args=[self.recheck_declared],
            id="django_apscheduler.recheck_declared",
            jobstore=INTERNAL_STORE,
            replace_existing=True,
        )
        if conf.execution_retention() is not None:
            self.scheduler.add_job(
                _closing_connections,
                "interval",
                args=[prune_executions],
                seconds=PRUNE_INTERVAL,
                next_run_time=timezone.now(),
                id="django_apscheduler.prune_executions",
                jobstore=INTERNAL_STORE,
                replace_existing=True,
            )
        if not paused:
            self.scheduler.resume()
        return report

    def recheck_declared(self) -> declared.SyncReport:
        """Apply what other releases held back: removals, and declarations they declare otherwise.

        Runs every :func:`recheck_interval` seconds. A declared job that no
        live instance declares any more is removed; a declaration left as
        stored because a live instance of another release declared it
        differently is written once that instance is gone.
        """
        report = declared.sync(self.scheduler, declarations=self.declarations, only=self._contested)
        self._contested = set(report.contested)
        return report

    def running_jobs(self) -> int:
        """Runs of this scheduler's jobs still executing (or queued in an executor)."""
        executors = list(internals.executors(self.scheduler).values())
        return sum(sum(internals.running_instances(executor).values()) for executor in executors)

    def due_left(self, due_by: Any) -> bool:
        """True while a job that was due by ``due_by`` is still waiting to be dispatched here."""
        if self.store.instance_id is None:  # not a single dispatch round yet
            return True
        earliest = self.store.earliest_due()
        return earliest is not None and util.utc(earliest) <= util.utc(util.stored_instant(due_by))

    def stop(self, timeout: float) -> int:
        """Stop taking fires, wait up to ``timeout`` s for running jobs, shut down.

        Returns the number of runs still going at the end; the store marks
        them "Interrupted" as it shuts down.
        """
        if self.scheduler.running:
            self.scheduler.pause()
        deadline = time.monotonic() + timeout
        while self.running_jobs() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.running_jobs()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        return left


def run_until_stopped(
    *,
    burst: bool = False,
    seconds: float | None = None,
    write: Callable[[str], None] = print,
) -> int:
    """Run a scheduler in this process until SIGTERM/SIGINT (or ``--burst``/``seconds``).

    The first signal stops taking new fires and waits up to
    ``APSCHEDULER_SHUTDOWN_TIMEOUT`` seconds for running jobs; runs still going
    then are marked "Interrupted". A second signal exits at once. Returns the
    process exit code (0 for a graceful stop).
    """
    stopping = threading.Event()
    signals_seen = 0

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            stopping.set()
            return
        write("Second signal: exiting at once.")
        _flush_and_exit(1)

    handled = [signal.SIGINT, signal.SIGTERM]
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, on_signal) for signum in handled}
    runner = Runner()
    started_at = timezone.now()
    try:
        report = runner.start()
        write(
            f"Scheduler instance started ({len(report.declared)} jobs declared in code"
            + (f", {len(report.removed)} removed" if report.removed else "")
            + (f", {len(report.kept)} kept for other releases" if report.kept else "")
            + ")."
            + ("" if burst else " Stop it with Ctrl-C or SIGTERM.")
        )
        if not report.declared:
            write(declared.nothing_declared_message())
        began = time.monotonic()
        while not stopping.wait(0.1):
            if seconds is not None and time.monotonic() - began >= seconds:
                break
            if burst and not runner.running_jobs() and not runner.due_left(started_at):
                break
        timeout = conf.shutdown_timeout()
        if stopping.is_set():
            write(
                f"Stopping: no new fires; waiting up to {timeout:g} s for running jobs "
                "(signal again to exit at once)."
            )
        left = runner.stop(timeout)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if left:
        write(f"Stopped with {left} runs unfinished; they are marked Interrupted.")
        # Their threads cannot be stopped, and would keep the interpreter alive.
        _flush_and_exit(0)
    write("Scheduler stopped.")
    return 0


def _flush_and_exit(code: int) -> None:
    executions.recorder.flush(timeout=5)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# --- Autostart -------------------------------------------------------------------

_autostarted: Runner | None = None
_autostart_lock = threading.Lock()

#: Management commands that serve requests; every other command never autostarts.
SERVING_COMMANDS = frozenset({"runserver"})


def autostart_wanted(argv: list[str] | None = None, environ: Any = None) -> bool:
    """True if this process should run an autostarted scheduler.

    Not under management commands other than ``runserver``; under
    ``runserver``, only in the process that serves requests (not the
    autoreloader's watcher); not under pytest. Any other process (gunicorn,
    uwsgi, daphne, uvicorn workers) does.
    """
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    program = os.path.basename(argv[0]) if argv else ""
    if program.startswith(("pytest", "py.test")) or "PYTEST_CURRENT_TEST" in environ:
        return False
    is_django_cli = program in ("manage.py", "django-admin", "django-admin.py") or (
        program == "__main__.py" and os.sep + "django" + os.sep in argv[0]
    )
    if not is_django_cli:
        return True
    command = argv[1] if len(argv) > 1 else ""
    if command not in SERVING_COMMANDS:
        return False
    return "--noreload" in argv or environ.get("RUN_MAIN") == "true"


#: Seconds before the first retry of an autostart that found the database not ready;
#: each retry waits twice as long, up to AUTOSTART_MAX_DELAY.
AUTOSTART_FIRST_DELAY = 1.0
AUTOSTART_MAX_DELAY = 60.0

#: Set to give up autostart retries (tests; a process that knows better).
autostart_cancelled = threading.Event()


def autostart() -> None:
    """Start this process's background scheduler once the app registry is ready.

    Called from ``AppConfig.ready()`` when ``APSCHEDULER_AUTOSTART`` is on. The
    scheduler starts in a thread of its own (the database is not touched
    while apps load). Under gunicorn with ``--preload`` that is the master
    process, once for the whole server; without it, each worker.

    A web server started before ``migrate`` (or before its database is up)
    keeps trying: the thread retries with a growing pause (up to
    ``AUTOSTART_MAX_DELAY`` seconds), logging a warning that names what is
    missing, and starts the scheduler once the tables are there.
    """
    thread = threading.Thread(target=_autostart_when_ready, name="django_apscheduler-autostart")
    thread.daemon = True
    thread.start()


def unapplied_migrations() -> list[str]:
    """The migrations of this app that the database lacks (``"0012_..."``), in order."""
    from django.db import connections, router
    from django.db.migrations.executor import MigrationExecutor

    from django_apscheduler.models import DjangoJob

    connection = connections[router.db_for_write(DjangoJob)]
    executor = MigrationExecutor(connection)
    targets = [
        node for node in executor.loader.graph.leaf_nodes() if node[0] == "django_apscheduler"
    ]
    plan = executor.migration_plan(targets)
    return [migration.name for migration, backwards in plan if not backwards]


def _autostart_when_ready() -> None:
    from django.apps import apps
    from django.db import DatabaseError, connections

    while not apps.ready:
        time.sleep(0.05)
    delay = AUTOSTART_FIRST_DELAY
    while not autostart_cancelled.is_set():
        try:
            missing = unapplied_migrations()
            if not missing:
                _autostart_once()
                return
            problem = (
                f"the database lacks the django_apscheduler migrations {', '.join(missing)} "
                "(run `manage.py migrate`)"
            )
        except DatabaseError as exc:
            problem = f"the database is not ready ({type(exc).__name__}: {exc})"
        except Exception:
            logger.exception("Could not autostart the scheduler (APSCHEDULER_AUTOSTART)")
            return
        finally:
            connections.close_all()  # this thread's connections; never left idle between tries
        logger.warning(
            "Cannot autostart the scheduler (APSCHEDULER_AUTOSTART) yet: %s; retrying in %g s",
            problem,
            delay,
        )
        if autostart_cancelled.wait(delay):
            return
        delay = min(delay * 2, AUTOSTART_MAX_DELAY)


def _autostart_once() -> None:
    """Build and start the scheduler, once per process; a failed start is shut down again."""
    global _autostarted
    with _autostart_lock:
        if _autostarted is not None:
            return
        runner = Runner()
        try:
            runner.start()
        except BaseException:
            if runner.scheduler.running:
                runner.scheduler.shutdown(wait=False)
            raise
        _autostarted = runner
        _stop_at_exit(runner)
    logger.info("Autostarted a scheduler in process %d", os.getpid())


def _stop_at_exit(runner: Runner) -> None:
    """Shut the scheduler down when the interpreter exits, before the thread pools refuse work.

    A worker that exits (gunicorn on SIGTERM, max_requests) would otherwise go
    on dispatching while its executors refuse new runs: those fires would be
    taken from the database and lost. ``threading``'s exit hooks run in reverse
    order of registration, so this one runs before ``concurrent.futures``'.
    """

    def stop() -> None:
        try:
            if runner.scheduler.running:
                runner.scheduler.shutdown(wait=False)
        except Exception:
            logger.exception("Could not shut the autostarted scheduler down at exit")

    internals.register_thread_exit_hook(stop)


def autostarted() -> Runner | None:
    """The scheduler autostarted in this process, if any."""
    return _autostarted
