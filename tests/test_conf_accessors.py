"""The typed accessors of the ``APSCHEDULER_*`` settings (``conf.lease_time()``...).

The library reads its settings through them, not through ``conf.get`` (which
returns ``Any``): each accessor returns its declared type, reads the setting
at call time (``override_settings`` works), and a value it cannot convert
fails with an error that names the setting and the value.
"""

from __future__ import annotations

import ast
from datetime import timezone as dt_timezone
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test.utils import override_settings

from django_apscheduler import conf

PACKAGE = Path(conf.__file__).resolve().parent

FLOATS = {
    "APSCHEDULER_RUN_NOW_TIMEOUT": conf.run_now_timeout,
    "APSCHEDULER_DB_RETRY_TIMEOUT": conf.db_retry_timeout,
    "APSCHEDULER_LEASE_TIME": conf.lease_time,
    "APSCHEDULER_HEARTBEAT_INTERVAL": conf.heartbeat_interval,
    "APSCHEDULER_POLL_INTERVAL": conf.poll_interval,
    "APSCHEDULER_LISTEN_POLL_INTERVAL": conf.listen_poll_interval,
    "APSCHEDULER_SHUTDOWN_TIMEOUT": conf.shutdown_timeout,
}
INTS = {
    "APSCHEDULER_DISPATCH_BATCH_SIZE": conf.dispatch_batch_size,
    "APSCHEDULER_THREADS": conf.threads,
    "APSCHEDULER_PROCESSES": conf.processes,
}


@pytest.mark.parametrize("name", sorted(FLOATS))
def test_number_settings_are_floats_read_at_call_time(name):
    accessor = FLOATS[name]
    with override_settings(**{name: 7}):
        value = accessor()
        assert type(value) is float and value == 7.0
    with override_settings(**{name: 0.25}):
        assert accessor() == 0.25
    assert accessor() == float(conf.get(name))


@pytest.mark.parametrize("name", sorted(INTS))
def test_count_settings_are_ints_read_at_call_time(name):
    accessor = INTS[name]
    with override_settings(**{name: 3}):
        value = accessor()
        assert type(value) is int and value == 3
    assert accessor() == int(conf.get(name))


@pytest.mark.parametrize("name", sorted(FLOATS) + sorted(INTS))
def test_an_unconvertible_value_names_the_setting_and_the_value(name):
    accessor = {**FLOATS, **INTS}[name]
    with override_settings(**{name: "soon"}):
        with pytest.raises(ImproperlyConfigured) as caught:
            accessor()
    message = str(caught.value)
    assert name in message and "'soon'" in message and "manage.py check" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("all", "all"), ("failures", "failures"), ("none", "none"), ("sometimes", "all")],
)
def test_execution_log_is_one_of_its_choices(value, expected):
    """An unknown value logs every run, as the library did before (check E003 reports it)."""
    with override_settings(APSCHEDULER_EXECUTION_LOG=value):
        assert conf.execution_log() == expected
        assert conf.execution_log() in conf.EXECUTION_LOG_CHOICES


def test_execution_retention_is_none_or_a_float():
    with override_settings(APSCHEDULER_EXECUTION_RETENTION=None):
        assert conf.execution_retention() is None
    with override_settings(APSCHEDULER_EXECUTION_RETENTION=3600):
        retention = conf.execution_retention()
        assert type(retention) is float and retention == 3600.0


@pytest.mark.parametrize(("value", "expected"), [(True, True), (False, False), (1, False)])
def test_autostart_is_true_only_for_true(value, expected):
    """As before: only ``True`` itself starts a scheduler (check E005 reports other values)."""
    with override_settings(APSCHEDULER_AUTOSTART=value):
        assert conf.autostart() is expected


def test_string_settings_and_time_zone():
    with override_settings(APSCHEDULER_DATETIME_FORMAT="Y-m-d", APSCHEDULER_JOBS_MODULE="tasks"):
        assert conf.datetime_format() == "Y-m-d"
        assert conf.jobs_module() == "tasks"
    with override_settings(APSCHEDULER_TIMEZONE=None, TIME_ZONE="Europe/Paris"):
        assert conf.timezone_name() == "Europe/Paris"
    with override_settings(APSCHEDULER_TIMEZONE=dt_timezone.utc):
        assert conf.timezone_name() is dt_timezone.utc


def test_job_defaults_apply_the_setting_over_ours():
    with override_settings(APSCHEDULER_JOB_DEFAULTS={"coalesce": False}):
        assert conf.job_defaults() == {**conf.JOB_DEFAULTS, "coalesce": False}
    with override_settings(APSCHEDULER_JOB_DEFAULTS=["coalesce"]):
        with pytest.raises(ImproperlyConfigured, match="APSCHEDULER_JOB_DEFAULTS must be a dict"):
            conf.job_defaults()


def test_every_setting_has_an_accessor():
    """Each ``APSCHEDULER_*`` setting is read by some typed accessor of ``conf``."""
    source = Path(conf.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    read: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name not in ("get", "problems", "_number"):
            read |= {
                n.value
                for n in ast.walk(node)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
            }
    assert set(conf.DEFAULTS) - read == set()


def test_the_library_reads_settings_through_the_accessors():
    """No module but ``conf`` calls ``conf.get``, whose value is ``Any`` to a type checker."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "conf.py" or "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "conf"
            ):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def test_a_setting_is_read_again_whenever_settings_change(settings):
    """Values are kept between reads, and dropped on every ``setting_changed``."""
    assert conf.lease_time() == conf.DEFAULTS["APSCHEDULER_LEASE_TIME"]
    assert "APSCHEDULER_LEASE_TIME" in conf._values  # kept, not read again at each call
    settings.APSCHEDULER_LEASE_TIME = 33
    assert conf.lease_time() == 33
    with override_settings(APSCHEDULER_LEASE_TIME=44):
        assert conf.lease_time() == 44
    assert conf.lease_time() == 33
    settings.APSCHEDULER_LEASE_TIME = conf.DEFAULTS["APSCHEDULER_LEASE_TIME"]
    assert conf.lease_time() == conf.DEFAULTS["APSCHEDULER_LEASE_TIME"]
