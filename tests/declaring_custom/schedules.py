"""Declared jobs found only when ``APSCHEDULER_JOBS_MODULE`` is ``"schedules"``."""

from django_apscheduler import scheduled_job
from tests.jobs import noop

scheduled_job("interval", hours=6, id="from-custom-module")(noop)
