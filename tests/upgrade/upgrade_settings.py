"""Django settings for the database of the 0.7.0 upgrade test.

Both sides load this module: the throwaway virtual environment with the real
django-apscheduler 0.7.0 (which creates the database) and our environment
(which upgrades it). It must therefore not import ``django_apscheduler``.

Environment variables, set by ``tests/test_upgrade_070.py``:

``DJA_UPGRADE_DB``
    ``sqlite``, ``postgres`` or ``mariadb``.
``DJA_UPGRADE_DB_NAME``
    The database name, or the path of the SQLite file.
``DJA_UPGRADE_SQL_LOG``
    Optional: a file that receives every SQL statement Django runs.

The server settings (``PGHOST``, ``MYSQL_HOST``, ...) are read as in
``tests/settings.py``.
"""

import os

BACKEND = os.environ.get("DJA_UPGRADE_DB", "sqlite")
NAME = os.environ["DJA_UPGRADE_DB_NAME"]

if BACKEND == "sqlite":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": NAME,
            "OPTIONS": {"timeout": 20},
        }
    }
elif BACKEND == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": NAME,
            "USER": os.environ.get("PGUSER", "postgres"),
            "PASSWORD": os.environ.get("PGPASSWORD", ""),
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
        }
    }
elif BACKEND == "mariadb":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "NAME": NAME,
            "USER": os.environ.get("MYSQL_USER", "root"),
            "PASSWORD": os.environ.get("MYSQL_PASSWORD", ""),
            "HOST": os.environ.get("MYSQL_HOST", "127.0.0.1"),
            "PORT": os.environ.get("MYSQL_PORT", "3306"),
            "OPTIONS": {"charset": "utf8mb4"},
        }
    }
else:
    raise RuntimeError(f"DJA_UPGRADE_DB={BACKEND!r}: use 'sqlite', 'postgres' or 'mariadb'")

SECRET_KEY = "upgrade-test-only"
USE_TZ = True
TIME_ZONE = "Europe/Berlin"

# A typical project: the app next to contenttypes and auth, so that the
# upgrade also has to keep the content types and permissions 0.7.0 left.
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_apscheduler",
]

SQL_LOG = os.environ.get("DJA_UPGRADE_SQL_LOG")
# Django logs queries only with DEBUG on; turn it on just to record them.
DEBUG = bool(SQL_LOG)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"sql": {"format": "%(name)s: %(message)s"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler"},
        **(
            {"sql": {"class": "logging.FileHandler", "filename": SQL_LOG, "formatter": "sql"}}
            if SQL_LOG
            else {}
        ),
    },
    "loggers": {
        "django_apscheduler": {"handlers": ["console"], "level": "WARNING"},
        "apscheduler": {"handlers": ["console"], "level": "WARNING"},
        **(
            {"django.db.backends": {"handlers": ["sql"], "level": "DEBUG", "propagate": False}}
            if SQL_LOG
            else {}
        ),
    },
}
