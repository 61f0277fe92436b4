"""WSGI application of the test settings, for the autostart test under gunicorn."""

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
