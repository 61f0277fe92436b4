"""An app whose jobs are declared in ``schedules.py`` (``APSCHEDULER_JOBS_MODULE = "schedules"``)."""
