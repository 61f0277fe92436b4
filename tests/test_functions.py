"""The admin's allow-list of schedulable functions (django_apscheduler.functions)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_apscheduler import declared, functions
from tests import jobs


def test_schedulable_functions_are_on_the_list_with_their_labels():
    allowed = functions.allowed()
    assert allowed["tests.jobs:admin_record"].func is jobs.admin_record
    assert allowed["tests.jobs:admin_record"].label == "Record a call (tests)"
    assert allowed["tests.jobs:admin_fail"].label == "tests.jobs:admin_fail"
    assert not allowed["tests.jobs:admin_fail"].declared
    assert "tests.jobs:record" not in allowed  # neither declared nor decorated


def test_declared_functions_are_on_the_list(monkeypatch):
    declaration = declared.Declaration("nightly", jobs.record, "interval", {"hours": 1})
    monkeypatch.setattr(declared, "discover", lambda: {"nightly": declaration})
    entry = functions.allowed()["tests.jobs:record"]
    assert entry.func is jobs.record and entry.declared


def test_the_decorator_returns_the_function_unchanged(monkeypatch):
    monkeypatch.setattr(functions, "_registered", dict(functions._registered))
    monkeypatch.setattr(functions, "_labels", dict(functions._labels))
    assert functions.schedulable(jobs.noop) is jobs.noop
    assert functions.schedulable(label="x")(jobs.sleep) is jobs.sleep
    assert functions.allowed()["tests.jobs:sleep"].label == "x"


def test_a_function_defined_inside_another_is_refused_by_name():
    def local() -> None: ...

    with pytest.raises(ImproperlyConfigured, match="local must be defined at module level"):
        functions.schedulable(local)
