from django.apps import AppConfig


class DemoConfig(AppConfig):
    """Holds the demo jobs and the ``runapscheduler`` command; it has no models."""

    name = "example.demo"
    label = "demo"
    verbose_name = "Demo"
