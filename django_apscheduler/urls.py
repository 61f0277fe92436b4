"""URLs of django-apscheduler: the Prometheus metrics view (extra ``prometheus``).

::

    # urls.py
    from django.urls import include, path

    urlpatterns = [path("scheduler/", include("django_apscheduler.urls"))]  # /scheduler/metrics/

The view has no access control of its own: protect it as you would the admin
(network policy, a reverse proxy), or wrap :func:`metrics.metrics_view` in your
own view.
"""

from django.urls import path

from django_apscheduler import metrics

app_name = "django_apscheduler"
urlpatterns = [path("metrics/", metrics.metrics_view, name="metrics")]
