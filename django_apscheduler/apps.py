from django.apps import AppConfig


class DjangoApschedulerConfig(AppConfig):
    """The ``django_apscheduler`` app: job and execution tables, admin, commands."""

    name = "django_apscheduler"
    verbose_name = "Django APScheduler"

    def ready(self) -> None:
        from django_apscheduler import checks, conf, handoff, runner  # noqa: F401 (checks registers)

        # Workers (Django Tasks, Celery) have this app installed: their runs of
        # handed-off fires are recorded through the engines' signals.
        handoff.connect_worker_signals()

        if conf.alert_after_failures() is not None:
            from django_apscheduler import alerts

            alerts.connect()
        from django_apscheduler import metrics

        if metrics.available():
            metrics.enable()  # counters only: no query, no thread
        if conf.autostart() and runner.autostart_wanted():
            runner.autostart()
