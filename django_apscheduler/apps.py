from django.apps import AppConfig


class DjangoApschedulerConfig(AppConfig):
    """The ``django_apscheduler`` app: job and execution tables, admin, commands."""

    name = "django_apscheduler"
    verbose_name = "Django APScheduler"
