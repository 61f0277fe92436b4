"""The functions the admin may schedule: an allow-list, never an import path typed in a form.

Two kinds of functions are on it:

- every function declared with ``@scheduled_job`` (the code already runs it);
- every function decorated with :func:`schedulable`, for functions the admin
  may schedule but the code does not::

      from django_apscheduler.functions import schedulable

      @schedulable
      def send_report(recipient: str) -> None:
          ...

Both are found by importing each installed app's jobs module
(``APSCHEDULER_JOBS_MODULE``, ``jobs`` by default), as ``@scheduled_job``
declarations are. The admin's form offers the allow-list as choices, keyed by
the function's reference (``"myapp.jobs:send_report"``), and passes the
function object itself, from this list, to ``add_job``: a reference that is
not on the list is refused, and nothing typed into a form is ever imported.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, overload

from django.core.exceptions import ImproperlyConfigured

F = TypeVar("F", bound=Callable[..., Any])

_registered: dict[str, Callable[..., Any]] = {}
_labels: dict[str, str] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Schedulable:
    """One function on the allow-list: its reference, a label for people, the function."""

    ref: str
    label: str
    func: Callable[..., Any]
    #: True for a function declared with ``@scheduled_job``.
    declared: bool


def reference(func: Callable[..., Any]) -> str:
    """``"module:qualname"``, the form APScheduler stores a job's function in."""
    return f"{func.__module__}:{func.__qualname__}"


@overload
def schedulable(func: F) -> F: ...


@overload
def schedulable(func: None = None, *, label: str | None = None) -> Callable[[F], F]: ...


def schedulable(func: Any = None, *, label: str | None = None) -> Any:
    """Put the decorated function on the admin's allow-list; return it unchanged.

    ``label`` is what the admin's form shows (the reference by default). The
    function must be defined at module level, so schedulers in other
    processes can import it.
    """

    def register(f: F) -> F:
        if "<locals>" in f.__qualname__ or not f.__module__:
            raise ImproperlyConfigured(
                f"@schedulable: {f.__qualname__} must be defined at module level, so "
                "schedulers in other processes can import it."
            )
        ref = reference(f)
        with _lock:
            _registered[ref] = f
            if label:
                _labels[ref] = label
        return f

    if func is not None:
        return register(func)
    return register


def allowed() -> dict[str, Schedulable]:
    """Every function the admin may schedule, by reference, sorted by reference."""
    from django_apscheduler import declared

    found: dict[str, Schedulable] = {}
    for declaration in declared.discover().values():
        ref = reference(declaration.func)
        found[ref] = Schedulable(ref, ref, declaration.func, declared=True)
    with _lock:
        registered = dict(_registered)
        labels = dict(_labels)
    for ref, func in registered.items():
        if ref not in found:
            found[ref] = Schedulable(ref, labels.get(ref, ref), func, declared=False)
    return dict(sorted(found.items()))
