"""Settings of the example project: django-apscheduler on SQLite, with the admin.

The database file is ``example/db.sqlite3`` unless ``EXAMPLE_DB_PATH`` names
another one (the tests use a throwaway file). Not meant for production: the
secret key is public and DEBUG is on.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("EXAMPLE_SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_apscheduler",
    "example.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example.urls"
WSGI_APPLICATION = "example.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DB_PATH") or BASE_DIR / "db.sqlite3",
        # The scheduler writes from several threads; wait for a lock instead of failing.
        "OPTIONS": {"timeout": 20},
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
USE_I18N = True
USE_TZ = True
# The scheduler's time zone too, unless APSCHEDULER_TIMEZONE says otherwise.
TIME_ZONE = "UTC"

STATIC_URL = "static/"

# django-apscheduler's settings, shown with their default values.
APSCHEDULER_DATETIME_FORMAT = "N j, Y, f:s a"  # how the admin shows datetimes
APSCHEDULER_RUN_NOW_TIMEOUT = 15  # seconds the admin's "run now" action waits
APSCHEDULER_DB_RETRY_TIMEOUT = 30  # seconds a store operation retries a lost connection
APSCHEDULER_LEASE_TIME = 10  # seconds before a dead scheduler's jobs are taken over
APSCHEDULER_HEARTBEAT_INTERVAL = 4  # seconds between two heartbeats of a scheduler
APSCHEDULER_POLL_INTERVAL = 2  # seconds between two checks for jobs changed elsewhere
APSCHEDULER_THREADS = 10  # threads running jobs in each scheduler
APSCHEDULER_EXECUTION_LOG = "all"  # or "failures", or "none"
APSCHEDULER_SHUTDOWN_TIMEOUT = 30  # seconds a stopping runapscheduler waits for running jobs
APSCHEDULER_AUTOSTART = False  # True: a scheduler in each web process (docs/deployment.md)

# Not a default: delete logged runs after a week (None keeps them).
APSCHEDULER_EXECUTION_RETENTION = 7 * 24 * 3600

# Show what the scheduler does: APScheduler's and django-apscheduler's INFO messages.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "plain",
        },
    },
    "loggers": {
        "apscheduler": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "django_apscheduler": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "example": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
