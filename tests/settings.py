"""Settings for the test suite.

The database is chosen with ``DJANGO_APSCHEDULER_TEST_DB``: ``sqlite`` (the
default, a file so that other processes can share it), ``postgres`` or
``mariadb``. ``DJANGO_APSCHEDULER_TEST_DB_SUFFIX`` keeps parallel runs apart.
"""

import importlib.util
import json
import os
import tempfile

from tests.dbsettings import database

BACKEND = os.environ.get("DJANGO_APSCHEDULER_TEST_DB", "sqlite")
SUFFIX = os.environ.get("DJANGO_APSCHEDULER_TEST_DB_SUFFIX", "")
NAME = f"django_apscheduler{SUFFIX}"

if BACKEND == "sqlite":
    _dir = os.environ.get("DJANGO_APSCHEDULER_SQLITE_DIR") or os.path.join(
        tempfile.gettempdir(), f"django_apscheduler_tests{SUFFIX}"
    )
    os.makedirs(_dir, exist_ok=True)
    DATABASES = {"default": database(BACKEND, os.path.join(_dir, "db.sqlite3"))}
    DATABASES["default"]["TEST"] = {"NAME": os.path.join(_dir, "test.sqlite3")}
else:
    DATABASES = {"default": database(BACKEND, NAME)}
    if BACKEND == "mariadb":
        DATABASES["default"]["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}

# The multi-process tests start scheduler processes on the test database
# (whose name pytest-django chose) with some settings of their own.
if os.environ.get("DJANGO_APSCHEDULER_TEST_DB_NAME"):
    DATABASES["default"]["NAME"] = os.environ["DJANGO_APSCHEDULER_TEST_DB_NAME"]

SECRET_KEY = "tests-only"
# The admin tests create a user (and the browser tests log in) in nearly every
# test: with Django's default hasher each password costs 0.2 s of CPU. No test
# is about password hashing.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEBUG = False
# DJANGO_APSCHEDULER_TEST_USE_TZ=0 runs the suite with naive local datetimes.
USE_TZ = os.environ.get("DJANGO_APSCHEDULER_TEST_USE_TZ", "1") != "0"
TIME_ZONE = "Europe/Berlin"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_apscheduler",
]
# The admin's stylesheets (the browser tests and screenshots load them from the live server).
STATIC_URL = "/static/"

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# Fires handed to task workers (docs/workers.md, tests/test_handoff*.py): Django Tasks with
# django-tasks-db's database backend, where installed (Django 5.2+), and Celery on Redis.
# Neither changes anything for jobs that are no tasks.
if importlib.util.find_spec("django_tasks_db") is not None:
    if importlib.util.find_spec("django.tasks") is None:
        INSTALLED_APPS.append("django_tasks")  # the backport (Django < 6)
    INSTALLED_APPS.append("django_tasks_db")
    TASKS = {
        "default": {
            "BACKEND": "django_tasks_db.DatabaseBackend",
            "QUEUES": ["default", "reports"],
        }
    }
elif importlib.util.find_spec("django_tasks") is not None:
    # Django 4.2: the backport without its database backend. Its implicit
    # default backend, with the queue docs/workers.md's example names.
    TASKS = {
        "default": {
            "BACKEND": "django_tasks.backends.immediate.ImmediateBackend",
            "QUEUES": ["default", "reports"],
        }
    }
CELERY_BROKER_URL = os.environ.get("DJANGO_APSCHEDULER_TEST_REDIS", "redis://127.0.0.1:6379/0")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_apscheduler": {"handlers": ["console"], "level": "WARNING"}},
}

# Settings of the scheduler processes that the multi-process tests start.
globals().update(json.loads(os.environ.get("DJANGO_APSCHEDULER_TEST_SETTINGS") or "{}"))
