"""The benchmark databases: connection settings, creation, migration, removal.

Standard library plus the database drivers only (the command line uses it
before Django is set up). Server addresses come from the same variables as
the test suite's: ``PGHOST``/``PGPORT``/``PGUSER``/``PGPASSWORD`` and
``MYSQL_HOST``/``MYSQL_PORT``/``MYSQL_USER``/``MYSQL_PASSWORD``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("sqlite", "postgres", "mariadb")
SQLITE_DIR = Path(tempfile.gettempdir()) / "dja_bench"


def _pg() -> dict[str, str]:
    return {
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
    }


def _my() -> dict[str, str]:
    return {
        "HOST": os.environ.get("MYSQL_HOST", "127.0.0.1"),
        "PORT": os.environ.get("MYSQL_PORT", "3306"),
        "USER": os.environ.get("MYSQL_USER", "root"),
        "PASSWORD": os.environ.get("MYSQL_PASSWORD", ""),
    }


def sqlite_path(name: str) -> str:
    return str(SQLITE_DIR / f"{name}.sqlite3")


def database(backend: str, name: str) -> dict:
    """The ``DATABASES["default"]`` entry of benchmark database ``name`` on ``backend``."""
    if backend == "sqlite":
        path = name if os.sep in name else sqlite_path(name)
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": path, "OPTIONS": {"timeout": 20}}
    if backend == "postgres":
        return {"ENGINE": "django.db.backends.postgresql", "NAME": name, **_pg()}
    if backend == "mariadb":
        return {
            "ENGINE": "django.db.backends.mysql",
            "NAME": name,
            **_my(),
            "OPTIONS": {"charset": "utf8mb4"},
        }
    raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")


def _check_name(name: str) -> None:
    if not name.startswith("dja_bench") or not name.replace("_", "").isalnum():
        raise ValueError(f"benchmark database names start with 'dja_bench': {name!r}")


def _on_server(backend: str, sql: str) -> None:
    """Run ``sql`` on the server of ``backend``, outside any benchmark database."""
    if backend == "postgres":
        import psycopg

        p = _pg()
        with psycopg.connect(
            host=p["HOST"],
            port=p["PORT"],
            user=p["USER"],
            password=p["PASSWORD"] or None,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(sql)
    elif backend == "mariadb":
        import MySQLdb

        m = _my()
        conn = MySQLdb.connect(
            host=m["HOST"], port=int(m["PORT"]), user=m["USER"], password=m["PASSWORD"]
        )
        try:
            conn.cursor().execute(sql)
        finally:
            conn.close()
    else:
        raise ValueError(f"unknown backend {backend!r}")


def drop(backend: str, name: str) -> None:
    """Remove benchmark database ``name`` if it exists."""
    _check_name(name)
    if backend == "sqlite":
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(sqlite_path(name) + suffix).unlink(missing_ok=True)
    elif backend == "postgres":
        _on_server(backend, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        _on_server(backend, f"DROP DATABASE IF EXISTS `{name}`")


def create(backend: str, name: str) -> None:
    """Create benchmark database ``name`` afresh (dropping an old one) and migrate it."""
    drop(backend, name)
    if backend == "sqlite":
        SQLITE_DIR.mkdir(parents=True, exist_ok=True)
    elif backend == "postgres":
        _on_server(backend, f'CREATE DATABASE "{name}"')
    else:
        _on_server(
            backend, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=settings_env(backend, name),
        check=True,
    )


def settings_env(backend: str, name: str) -> dict[str, str]:
    """The environment of a process whose Django uses benchmark database ``name``."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    env["DJA_BENCH_BACKEND"] = backend
    env["DJA_BENCH_DB_NAME"] = name
    return env


def server_version(backend: str) -> str:
    """The database server's (or SQLite library's) version, for the report."""
    try:
        if backend == "sqlite":
            import sqlite3

            return f"SQLite {sqlite3.sqlite_version}"
        if backend == "postgres":
            import psycopg

            p = _pg()
            with psycopg.connect(
                host=p["HOST"],
                port=p["PORT"],
                user=p["USER"],
                password=p["PASSWORD"] or None,
                dbname="postgres",
            ) as conn:
                return "PostgreSQL " + conn.execute("SHOW server_version").fetchone()[0]
        if backend == "mariadb":
            import MySQLdb

            m = _my()
            conn = MySQLdb.connect(
                host=m["HOST"], port=int(m["PORT"]), user=m["USER"], password=m["PASSWORD"]
            )
            try:
                cursor = conn.cursor()
                cursor.execute("SELECT VERSION()")
                return "MariaDB " + cursor.fetchone()[0]
            finally:
                conn.close()
    except Exception as exc:  # unreachable server: reported, not fatal here
        return f"unavailable ({type(exc).__name__}: {exc})"
    return "?"
