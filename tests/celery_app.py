"""The Celery app of the hand-off tests: its settings are ``CELERY_*`` in tests/settings.py.

A worker is started as ``celery -A tests.celery_app worker``; importing
``tests.handoff_tasks`` anywhere makes this the current app, so its
``@shared_task`` tasks publish to the test broker.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

app = Celery("django_apscheduler_tests", include=["tests.handoff_tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
app.set_current()
app.set_default()

# A test counts the database connections its worker opens: one line per connection.
if os.environ.get("DJANGO_APSCHEDULER_TEST_CONNECTIONS_LOG"):
    from django.db.backends.signals import connection_created

    def _log_connection(sender, connection, **kwargs):
        with open(os.environ["DJANGO_APSCHEDULER_TEST_CONNECTIONS_LOG"], "a") as out:
            out.write(f"{os.getpid()} {connection.alias}\n")

    connection_created.connect(_log_connection, weak=False)
