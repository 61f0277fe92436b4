"""The example's URLs: only the admin, where jobs and their runs can be seen."""

from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]
