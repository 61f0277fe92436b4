"""An existing django-apscheduler 0.7.0 database upgrades in place.

The real django-apscheduler 0.7.0 from PyPI, installed in a throwaway virtual
environment (cached under ``.cache/``), creates a database on the backend
under test (``DJANGO_APSCHEDULER_TEST_DB``): it runs its migrations, stores
jobs through its DjangoJobStore and logs executions, from a real scheduler and
through ``atomic_update_or_create``. Then our package takes that database
over: ``django-admin migrate`` may only add what 0.8.0's one new migration
adds (columns, indexes and a table for coordinating several schedulers),
every job must load, run and be logged, and every old execution row must
still be there, unchanged.

The scripts that run in the two environments live in ``tests/upgrade/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import OLD_MIGRATIONS, SQUASHED

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "upgrade"
CACHE = REPO / ".cache" / "upgrade-070"

BACKEND = os.environ.get("DJANGO_APSCHEDULER_TEST_DB", "sqlite")
SUFFIX = os.environ.get("DJANGO_APSCHEDULER_TEST_DB_SUFFIX", "")

#: What the throwaway environment installs: one environment, with the drivers of
#: every backend, serves the runs on all of them (built once, not once per backend).
REQUIREMENTS = ["django-apscheduler==0.7.0", "Django>=5.2,<5.3", "APScheduler>=3.11,<3.12"]
DRIVERS = {"sqlite": [], "postgres": ["psycopg[binary]>=3.1"], "mariadb": ["mysqlclient>=2.1"]}


#: The jobs legacy_create.py stores, and the ones it leaves paused.
JOB_IDS = {"interval", "cron", "with_args", "failing", "date_future", "paused", "protocol_2"}
PAUSED = {"paused"}

#: What our migrations after the squash add; all of it is new columns, indexes and a table.
NEW_MIGRATIONS = [
    "0010_coordination",
    "0011_djangojob_declared_in_code",
    "0012_djangoschedulerinstance_declared_ids",
    "0013_djangojob_job_signature",
    "0014_djangojob_pause_note",
    "0015_observability",
    "0016_handoff",
]
ADDED = (
    "acquired_by",
    "acquired_until",
    "version",
    "instance",
    "djangoschedulerinstance",
    "declared_in_code",
    "job_signature",
    "pause_note",
    # 0014: the admin's own permissions for its actions
    "run_djangojob",
    "trigger_djangojob",
    "pause_djangojob",
    "overdue_reported",
    "alert_open_since",
    # 0016: runs handed to task workers
    "task_backend",
    "task_id",
    "handed_off_at",
    "task_call",
    "dja_execution_handoff",
)

#: Bounds on the subprocesses (not speed checks).
VENV_TIMEOUT = 900
STEP_TIMEOUT = 300


# --- subprocesses ------------------------------------------------------------------


def _run(cmd, *, timeout: float = STEP_TIMEOUT, check: bool = True, **kwargs):
    """Run ``cmd``; show its output, and fail with it when it fails."""
    cmd = [str(part) for part in cmd]
    shown = " ".join(cmd)
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"timed out after {timeout} s: {shown}\n"
            f"--- stdout\n{exc.stdout}\n--- stderr\n{exc.stderr}"
        ) from None
    print(
        f"$ {shown}  [rc={proc.returncode}, {time.monotonic() - started:.1f} s]\n"
        f"--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit code {proc.returncode}: {shown}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def _clean_env(**extra: str) -> dict[str, str]:
    """Our environment without anything that would leak into another interpreter."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"):
        env.pop(name, None)
    env["PYTHONNOUSERSITE"] = "1"
    env.update(extra)
    return env


# --- the cached 0.7.0 environment ---------------------------------------------------


def _bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


def legacy_python() -> Path:
    """The Python of a virtual environment with django-apscheduler 0.7.0 installed.

    Made with the interpreter running the tests and cached under ``.cache/``,
    keyed by what it installs and by that interpreter; the same environment
    (with every backend's driver) serves every backend. A file lock makes
    concurrent test processes build it once (``scripts/runtests.py`` starts
    the build before the tests); a marker written last tells a finished
    environment from one whose build was interrupted.
    """
    fcntl = pytest.importorskip("fcntl")
    requirements = REQUIREMENTS + [req for backend in sorted(DRIVERS) for req in DRIVERS[backend]]
    key = hashlib.sha256(
        json.dumps(
            {
                "requirements": requirements,
                "python": sys.version,
                "base_prefix": sys.base_prefix,
                "layout": 2,
            }
        ).encode()
    ).hexdigest()[:16]
    venv = CACHE / f"py{sys.version_info[0]}{sys.version_info[1]}-{key}"
    python = _bin(venv, "python")
    complete = venv / ".complete"
    if complete.exists():
        return python

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{venv.name}.lock", "w") as lock:
        deadline = time.monotonic() + VENV_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{venv} is still being built elsewhere") from None
                time.sleep(0.5)
        try:
            if complete.exists():  # another process built it meanwhile
                return python
            if venv.exists():  # an interrupted build
                shutil.rmtree(venv)
            env = _clean_env()
            _run([sys.executable, "-m", "venv", venv], env=env, timeout=VENV_TIMEOUT)
            _run(
                [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
                + requirements,
                env=env,
                timeout=VENV_TIMEOUT,
            )
            freeze = _run([python, "-m", "pip", "freeze"], env=env).stdout
            complete.write_text(json.dumps({"requirements": requirements, "freeze": freeze}))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return python


# --- the dedicated database ---------------------------------------------------------


def _server_connection():
    """An autocommit connection to the server (not to a database) under test."""
    if BACKEND == "postgres":
        import psycopg

        return psycopg.connect(
            host=os.environ.get("PGHOST", "127.0.0.1"),
            port=int(os.environ.get("PGPORT", "5432")),
            user=os.environ.get("PGUSER", "postgres"),
            password=os.environ.get("PGPASSWORD", ""),
            dbname="postgres",
            autocommit=True,
        )
    import MySQLdb

    conn = MySQLdb.connect(
        host=os.environ.get("MYSQL_HOST", "127.0.0.1"),
        port=int(os.environ.get("MYSQL_PORT", "3306")),
        user=os.environ.get("MYSQL_USER", "root"),
        password=os.environ.get("MYSQL_PASSWORD", ""),
    )
    conn.autocommit(True)
    return conn


def _drop_database(conn, name: str) -> None:
    cursor = conn.cursor()
    if BACKEND == "postgres":
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def database(tmp_path):
    """The name of an empty database of its own (the file path for SQLite)."""
    if BACKEND == "sqlite":
        yield str(tmp_path / "upgrade.sqlite3")
        return
    assert re.fullmatch(r"\w*", SUFFIX), f"unsafe DJANGO_APSCHEDULER_TEST_DB_SUFFIX {SUFFIX!r}"
    name = f"dja_upgrade{SUFFIX}"
    conn = _server_connection()
    try:
        _drop_database(conn, name)
        if BACKEND == "postgres":
            conn.cursor().execute(f'CREATE DATABASE "{name}"')
        else:
            conn.cursor().execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
        yield name
    finally:
        try:
            _drop_database(conn, name)
        finally:
            conn.close()


# --- the test -----------------------------------------------------------------------


def _sql_statements(log: str) -> list[str]:
    """The statements in a ``django.db.backends`` log (each may span lines)."""
    return [chunk for chunk in re.split(r"^(?=django\.db\.backends)", log, flags=re.M) if chunk]


def _by_id(rows: list[dict]) -> dict:
    return {row["id"]: row for row in rows}


@pytest.mark.slow
@pytest.mark.skipif(BACKEND not in DRIVERS, reason=f"unknown backend {BACKEND!r}")
def test_070_database_upgrades_in_place(tmp_path, database):
    python070 = legacy_python()
    db_env = {
        "DJA_UPGRADE_DB": BACKEND,
        "DJA_UPGRADE_DB_NAME": database,
        "DJANGO_SETTINGS_MODULE": "upgrade_settings",
    }
    legacy_markers = tmp_path / "markers-070"
    our_markers = tmp_path / "markers-ours"
    legacy_markers.mkdir()
    our_markers.mkdir()

    # 1. django-apscheduler 0.7.0 builds the database. Only tests/upgrade is on
    #    its path (not the repository), so it cannot see our package.
    legacy_env = _clean_env(
        **db_env,
        PYTHONPATH=os.pathsep.join([str(SCRIPTS), str(SCRIPTS.parent)]),
        DJA_UPGRADE_MARKERS=str(legacy_markers),
    )
    # 0.7.0 itself writes SQLite in deferred transactions, whose lock upgrade
    # fails with "database is locked" at once when two of its threads collide
    # (one of the defects this project fixes): on a loaded machine, build its
    # database again from scratch instead of failing on 0.7.0's flakiness.
    for attempt in range(3):
        created = _run(
            [python070, SCRIPTS / "legacy_create.py", tmp_path / "legacy.json"],
            env=legacy_env,
            cwd=tmp_path,
            check=False,
        )
        locked = "database is locked" in created.stderr
        if created.returncode == 0 or BACKEND != "sqlite" or not locked or attempt == 2:
            break
        for path in tmp_path.glob("upgrade.sqlite3*"):
            path.unlink()
        shutil.rmtree(legacy_markers)
        legacy_markers.mkdir()
    assert created.returncode == 0, f"0.7.0 could not build its database:\n{created.stderr}"
    legacy = json.loads((tmp_path / "legacy.json").read_text())
    _check_legacy(legacy, legacy_markers)

    # 2. Our `django-admin migrate`, with every SQL statement logged.
    sql_log = tmp_path / "migrate.sql.log"
    our_env = _clean_env(
        **db_env,
        PYTHONPATH=os.pathsep.join([str(SCRIPTS), str(SCRIPTS.parent), str(REPO)]),
        DJA_UPGRADE_MARKERS=str(our_markers),
    )
    migrate = _run(
        [sys.executable, "-m", "django", "migrate", "--no-input", "-v", "2"],
        env={**our_env, "DJA_UPGRADE_SQL_LOG": str(sql_log)},
        cwd=tmp_path,
    )
    applied = re.findall(r"Applying django_apscheduler\.(\w+)", migrate.stdout)
    assert applied == NEW_MIGRATIONS, migrate.stdout
    statements = _sql_statements(sql_log.read_text())
    assert any("django_migrations" in s for s in statements), "the SQL log stayed empty"
    touching = [
        s
        for s in statements
        if re.search(r"django_apscheduler_djangojob(execution)?\b", s)
        and re.search(r"\b(ALTER|CREATE|DROP|DELETE|UPDATE|INSERT|TRUNCATE|RENAME)\b", s)
    ]
    additive = re.compile(r"(ALTER TABLE \S+ ADD COLUMN|CREATE INDEX) ", re.IGNORECASE)
    # 0013 signs the existing rows: an UPDATE of the new signature column alone.
    signs = re.compile(
        r"\bUPDATE \S+ SET \S*job_signature\S* = '[0-9a-f]{64}' WHERE ", re.IGNORECASE
    )
    destructive = [s for s in touching if not additive.search(s) and not signs.search(s)]
    assert not destructive, "migrate did more than add to the 0.7.0 tables:\n" + "\n".join(
        destructive
    )
    recorded = [s for s in statements if "INSERT INTO" in s and "django_migrations" in s]
    assert len(recorded) == 1 + len(NEW_MIGRATIONS), recorded
    for name in [SQUASHED, *NEW_MIGRATIONS]:
        assert any(name in r for r in recorded), (name, recorded)

    # 3. Our package takes the database over and runs every job.
    check_out = tmp_path / "ours.json"
    proc = _run(
        [sys.executable, SCRIPTS / "check_upgraded.py", check_out],
        env=our_env,
        cwd=tmp_path,
        check=False,
    )
    ours = json.loads(check_out.read_text()) if check_out.exists() else {}
    assert proc.returncode == 0, (
        f"check_upgraded.py failed (exit code {proc.returncode}); what it recorded:\n"
        + json.dumps(ours, indent=1)[:20000]
    )
    _check_ours(legacy, ours)


def _check_legacy(legacy: dict, markers: Path) -> None:
    """What 0.7.0 made is what the rest of the test relies on."""
    assert legacy["django_apscheduler"]["version"] == "0.7.0"
    assert not legacy["django_apscheduler"]["file"].startswith(str(REPO / "django_apscheduler"))
    assert legacy["migrations"] == OLD_MIGRATIONS

    rows = {row["id"]: row for row in legacy["job_rows"]}
    assert set(rows) == JOB_IDS
    assert set(legacy["jobs"]) == JOB_IDS
    assert {i for i, row in rows.items() if row["next_run_time"] is None} == PAUSED
    assert rows["protocol_2"]["pickle_header"] == "8002"
    assert rows["interval"]["pickle_header"] == "8005"

    executions = legacy["executions"]
    statuses = {(row["job_id"], row["status"]) for row in executions}
    for job_id, status in legacy["run_now"].items():
        assert (job_id, status) in statuses, f"0.7.0 did not log {job_id}: {executions}"
    for expected in [
        ("cron", "Started execution"),
        ("paused", "Missed!"),
        ("with_args", "Max instances!"),
    ]:
        assert expected in statuses
    errors = [row for row in executions if row["status"] == "Error!"]
    assert {row["exception"] for row in errors} == {"legacy boom", "older boom"}
    live_error = next(row for row in errors if row["exception"] == "legacy boom")
    assert "in fail" in live_error["traceback"]  # APScheduler gives the frames only
    ran = {marker["tag"] for marker in _read_markers(markers)}
    assert ran == set(legacy["run_now"]), "0.7.0 ran other jobs than the ones made due"


def _without_added(schema: dict) -> dict:
    """``schema`` (see upgrade_common.schema_snapshot) minus what migration 0010 added.

    Applied to both sides, so both get the same normalisation (MySQL's
    trailing commas).
    """

    def mentions_added(value) -> bool:
        return any(name in json.dumps(value) for name in ADDED)

    def is_row(value) -> bool:
        return isinstance(value, list) and not any(isinstance(x, (list, dict)) for x in value)

    def strip(value, key: str = ""):
        if isinstance(value, str):
            # SQLite writes ALTER TABLE ... ADD COLUMN into the table's SQL text;
            # MySQL's SHOW CREATE TABLE has one line per column and key.
            value = re.sub(
                r', "(acquired_by|acquired_until|version|instance|declared_in_code'
                r"|job_signature|pause_note|overdue_reported|alert_open_since"
                r'|task_backend|task_id|handed_off_at|task_call)" '
                r'.*?(?=, "|, CONSTRAINT |\)$)',
                "",
                value,
            )
            lines = [line for line in value.split("\n") if not mentions_added(line)]
            return "\n".join(line.rstrip(",") for line in lines)
        if isinstance(value, list):
            # A row naming an added column, index, constraint or model goes; a
            # row holding a whole table's DDL text only loses the added parts.
            kept = [
                item
                for item in value
                if not (
                    is_row(item)
                    and any(isinstance(x, str) and len(x) < 200 and mentions_added(x) for x in item)
                )
            ]
            return [strip(item) for item in kept]
        if isinstance(value, dict):
            return {
                k: strip(v, k)
                for k, v in value.items()
                if not mentions_added(k) and not (key == "constraints" and mentions_added(v))
            }
        return value

    return strip(dict(schema))


def _read_markers(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def _check_ours(legacy: dict, ours: dict) -> None:
    our_package = str(REPO / "django_apscheduler")
    assert ours["django_apscheduler"]["file"].startswith(our_package)

    # The migrations: counted as applied, nothing left, no model changes.
    # (Django records the squash once the migrations after it are applied.)
    assert ours["migrations"][: len(OLD_MIGRATIONS)] == OLD_MIGRATIONS
    assert sorted(ours["migrations"][len(OLD_MIGRATIONS) :]) == [SQUASHED, *NEW_MIGRATIONS]
    shown = ours["showmigrations"]
    assert shown["code"] == 0
    lines = [line.strip() for line in shown["stdout"].splitlines()[1:] if line.strip()]
    assert lines[0].startswith(f"[X] {SQUASHED}"), shown["stdout"]
    assert lines[1:] == [f"[X] {name}" for name in NEW_MIGRATIONS], shown["stdout"]
    assert ours["migrate_check"]["code"] == 0, ours["migrate_check"]
    makemigrations = ours["makemigrations_check"]
    assert makemigrations["code"] == 0, makemigrations
    assert "No changes detected" in makemigrations["stdout"], makemigrations

    # The tables as 0.7.0 left them, plus only what 0010 adds; every row unchanged.
    ours_schema, legacy_schema = _without_added(ours["schema"]), _without_added(legacy["schema"])
    if ours_schema.pop("django") != legacy_schema.pop("django"):
        # Different Django versions introspect differently (the CI matrix runs
        # our side on 4.2 and 6.x); the database's own DDL still must not change.
        for table in ("django_apscheduler_djangojob", "django_apscheduler_djangojobexecution"):
            ours_schema.pop(table)
            legacy_schema.pop(table)
    assert ours_schema["ddl"] == legacy_schema["ddl"]
    assert ours_schema == legacy_schema
    assert ours["executions_before"] == legacy["executions"]
    assert [row[:3] for row in ours["orm_executions"]] == [
        [row["id"], row["job_id"], row["status"]] for row in legacy["executions"]
    ]
    assert len(ours["orm_jobs"]) == len(JOB_IDS)

    # `migrate` signed every row 0.7.0 left (0013), and every row stays signed.
    assert ours["signatures_after_migrate"] == {job_id: "ok" for job_id in JOB_IDS}
    assert ours["signatures_after"] == {job_id: "ok" for job_id in JOB_IDS}

    # Every job loads (through get_jobs and through lookup) as 0.7.0 stored it.
    loaded = {job["id"]: job for job in ours["loaded"]}
    assert len(ours["loaded"]) == len(JOB_IDS)
    assert loaded == legacy["jobs"]
    assert ours["looked_up"] == legacy["jobs"]
    assert set(ours["paused"]) == PAUSED
    assert set(ours["active"]) == JOB_IDS - PAUSED

    # Phase 1 ran every active job, with its arguments, under our package;
    # the paused job stayed paused.
    phase1 = ours["phase1"]
    assert set(phase1["markers"]) == JOB_IDS - PAUSED
    assert phase1["paused_next_run_times"] == {job_id: None for job_id in PAUSED}
    assert all(row["next_run_time"] is None for row in phase1["job_rows"] if row["id"] in PAUSED)
    markers = ours["markers"]
    assert set(markers) == JOB_IDS
    for job_id, runs in markers.items():
        job = legacy["jobs"][job_id]
        for run in runs:
            assert run["args"] == job["args"][1:]  # the first argument is the tag
            assert run["kwargs"] == job["kwargs"]
            assert run["django_apscheduler"].startswith(our_package), run
    with_args = markers["with_args"][0]
    assert with_args["args"] == [1, "two", [3, 4.5]]
    assert with_args["kwargs"] == {"flag": True, "nested": {"a": None, "b": [1, 2]}}

    # Every old execution row is still there, unchanged; every job got new ones.
    before = _by_id(legacy["executions"])
    after = _by_id(ours["executions_after"])
    missing = sorted(set(before) - set(after))
    assert not missing, f"execution rows lost in the upgrade: {missing}"
    changed = [(before[i], after[i]) for i in before if before[i] != after[i]]
    assert not changed, f"execution rows changed: {changed}"
    new = [row for i, row in after.items() if i not in before]
    assert all(row["id"] > max(before) for row in new)
    for job_id in JOB_IDS:
        expected = "Error!" if job_id == "failing" else "Executed"
        statuses = [row["status"] for row in new if row["job_id"] == job_id]
        assert expected in statuses, f"no new {expected!r} execution for {job_id}: {new}"
    error = next(row for row in new if row["status"] == "Error!")
    assert error["exception"] == "legacy boom"
    assert "in fail" in error["traceback"]
