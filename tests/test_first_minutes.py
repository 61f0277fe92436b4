"""The first ten minutes of a new user: the version, discovery that finds nothing, typos in settings."""

from __future__ import annotations

import pytest
from django.core.checks import Warning, run_checks
from django.test.utils import override_settings

from django_apscheduler import __version__, conf, declared

# Django 6.1's own system checks query the database, so the tests that run them may use it.
pytestmark = pytest.mark.django_db


def test_version_is_matched_by_a_requirement_of_at_least_0_8():
    """``django-apscheduler>=0.8`` selects this release (a ``.dev0`` version matched nothing)."""
    from packaging.specifiers import SpecifierSet

    assert __version__ in SpecifierSet(">=0.8")
    assert __version__ not in SpecifierSet("<0.8")


def test_nothing_declared_names_the_modules_searched():
    """No ``@scheduled_job`` found: the message names every module looked for and the fix."""
    with override_settings(APSCHEDULER_JOBS_MODULE="no_such_jobs"):
        message = declared.nothing_declared_message()
    assert "django_apscheduler.no_such_jobs" in message
    assert "django.contrib.auth.no_such_jobs" in message
    assert "None of them exists" in message
    assert "INSTALLED_APPS" in message
    assert "APSCHEDULER_JOBS_MODULE" in message


def test_nothing_declared_names_a_jobs_module_that_declares_nothing(settings):
    """A ``jobs`` module that exists but declares nothing is named as found."""
    settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "tests.declaring"]
    found = dict(declared.searched_modules())
    assert found["tests.declaring.jobs"] is True
    assert found["django_apscheduler.jobs"] is False
    assert "Found tests.declaring.jobs, but none declares a job" in (
        declared.nothing_declared_message()
    )


def _warnings() -> list[Warning]:
    return [m for m in run_checks() if m.id == "django_apscheduler.W001"]


def test_a_misspelled_setting_is_a_warning_with_did_you_mean(settings):
    """``APSCHEDULER_THREAD`` (no S) is reported, with the setting it probably means."""
    settings.APSCHEDULER_THREAD = 4
    settings.APSCHEDULER_XYZZY = 1
    found = {m.msg.split()[0]: m for m in _warnings()}
    assert sorted(found) == ["APSCHEDULER_THREAD", "APSCHEDULER_XYZZY"]
    assert isinstance(found["APSCHEDULER_THREAD"], Warning)
    assert "is not a django-apscheduler setting" in found["APSCHEDULER_THREAD"].msg
    assert found["APSCHEDULER_THREAD"].hint.startswith("Did you mean APSCHEDULER_THREADS?")
    assert "Did you mean" not in found["APSCHEDULER_XYZZY"].hint
    assert conf.unknown_settings() == [
        ("APSCHEDULER_THREAD", "APSCHEDULER_THREADS"),
        ("APSCHEDULER_XYZZY", None),
    ]


def test_every_known_setting_passes_the_unknown_name_check(settings):
    """The settings this app reads are never reported as unknown."""
    for name, default in conf.DEFAULTS.items():
        setattr(settings, name, default)
    assert _warnings() == []
