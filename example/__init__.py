"""A small Django project that runs django-apscheduler's demo scheduler."""
