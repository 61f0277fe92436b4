"""Ignored when ``APSCHEDULER_JOBS_MODULE`` is ``"schedules"``: only that module is looked up."""

from django_apscheduler import scheduled_job
from tests.jobs import noop

scheduled_job("interval", hours=6, id="from-default-module")(noop)
