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

The server entries come from ``tests/dbsettings.py``, as for the other tests.
"""

import os

from dbsettings import database  # tests/ is on the path of both sides

BACKEND = os.environ.get("DJA_UPGRADE_DB", "sqlite")
NAME = os.environ["DJA_UPGRADE_DB_NAME"]

DATABASES = {"default": database(BACKEND, NAME)}

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
