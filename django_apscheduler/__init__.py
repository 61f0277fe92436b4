"""Persist APScheduler 3 jobs in the Django database and record every run."""

__version__ = "0.8.0"

from django_apscheduler.declared import scheduled_job  # noqa: E402

__all__ = ["scheduled_job"]

# Django < 3.2 used this to find the AppConfig; kept because 0.7.0 exposed it.
default_app_config = "django_apscheduler.apps.DjangoApschedulerConfig"
