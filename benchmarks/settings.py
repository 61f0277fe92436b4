"""Django settings of the benchmark processes.

``DJA_BENCH_BACKEND`` (sqlite, postgres, mariadb) and ``DJA_BENCH_DB_NAME`` (a
name starting with ``dja_bench``) choose the database; ``DJA_BENCH_SETTINGS``
(JSON) adds settings. Everything else is at its default, as in production.
"""

import json
import os

from benchmarks.databases import database

DATABASES = {
    "default": database(
        os.environ.get("DJA_BENCH_BACKEND", "sqlite"),
        os.environ.get("DJA_BENCH_DB_NAME", "dja_bench"),
    )
}

SECRET_KEY = "benchmarks-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_apscheduler"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_apscheduler": {"handlers": ["console"], "level": "WARNING"},
        "apscheduler": {"handlers": ["console"], "level": "ERROR"},
    },
}

globals().update(json.loads(os.environ.get("DJA_BENCH_SETTINGS") or "{}"))
