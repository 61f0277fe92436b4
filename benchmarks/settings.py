"""Django settings of the benchmark processes.

``DJA_BENCH_BACKEND`` (sqlite, postgres, mariadb) and ``DJA_BENCH_DB_NAME`` (a
name starting with ``dja_bench``) choose the database; ``DJA_BENCH_SETTINGS``
(JSON) adds settings. Everything else is at its default, as in production.

The Prometheus metrics (the optional extra ``prometheus``) are left out, as
in a default install, unless ``DJA_BENCH_METRICS=1``: the development
environment has ``prometheus-client`` installed, and with it every run is
also counted (``python -m benchmarks --metrics`` measures that).
"""

import json
import os
import sys

from benchmarks.databases import database

if os.environ.get("DJA_BENCH_METRICS") != "1":
    sys.modules.setdefault("prometheus_client", None)  # type: ignore[assignment]

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
