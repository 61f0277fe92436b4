"""``DATABASES`` entries for the three test servers, shared by every settings module of the tests.

Imports nothing but the standard library, so the 0.7.0 side of the upgrade
test (another virtual environment) can load it too. Server addresses come
from ``PGHOST``/``PGPORT``/``PGUSER``/``PGPASSWORD`` and
``MYSQL_HOST``/``MYSQL_PORT``/``MYSQL_USER``/``MYSQL_PASSWORD``.
"""

from __future__ import annotations

import os


def database(backend: str, name: str) -> dict:
    """The ``DATABASES["default"]`` entry for ``backend`` with database ``name``.

    For SQLite ``name`` is the file's path.
    """
    if backend == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": name, "OPTIONS": {"timeout": 20}}
    if backend == "postgres":
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": os.environ.get("PGUSER", "postgres"),
            "PASSWORD": os.environ.get("PGPASSWORD", ""),
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
        }
    if backend == "mariadb":
        return {
            "ENGINE": "django.db.backends.mysql",
            "NAME": name,
            "USER": os.environ.get("MYSQL_USER", "root"),
            "PASSWORD": os.environ.get("MYSQL_PASSWORD", ""),
            "HOST": os.environ.get("MYSQL_HOST", "127.0.0.1"),
            "PORT": os.environ.get("MYSQL_PORT", "3306"),
            "OPTIONS": {"charset": "utf8mb4"},
        }
    raise RuntimeError(f"database backend {backend!r}: use 'sqlite', 'postgres' or 'mariadb'")
