"""Django system checks for the ``APSCHEDULER_*`` settings.

A misconfigured setting is reported by ``manage.py check`` (and before every
management command) with the setting's name and value, instead of surfacing
as a crash inside a scheduler thread.
"""

from __future__ import annotations

from typing import Any

from django.core import checks

from django_apscheduler import conf


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """One error per misconfigured ``APSCHEDULER_*`` setting."""
    return [
        checks.Error(message, hint=hint or None, id=code) for code, message, hint in conf.problems()
    ]


@checks.register()
def check_unknown_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """One warning per ``APSCHEDULER_*`` setting this app does not know (a typo is ignored)."""
    found: list[checks.CheckMessage] = []
    for name, suggestion in conf.unknown_settings():
        hint = f"Did you mean {suggestion}? " if suggestion else ""
        found.append(
            checks.Warning(
                f"{name} is not a django-apscheduler setting: it is ignored.",
                hint=hint + "docs/settings.md lists the settings.",
                id="django_apscheduler.W001",
            )
        )
    return found


@checks.register()
def check_declared_executors(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """One error per ``@scheduled_job`` whose executor this app's schedulers do not have.

    Such a job would be stored and never run (every scheduler leaves it to one
    that has the executor).
    """
    from django_apscheduler import declared

    found: list[checks.CheckMessage] = []
    for declaration in declared.discover().values():
        problem = conf.executor_problem(
            declaration.id, declaration.options.get("executor", "default")
        )
        if problem:
            found.append(
                checks.Error(
                    f"@scheduled_job: {problem}",
                    hint="Change the executor= argument of the declaration.",
                    id="django_apscheduler.E011",
                )
            )
    return found


@checks.register(checks.Tags.database)
def check_signed_jobs(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A warning naming the stored jobs whose signature is missing or wrong (never unpickled).

    A database check (``manage.py check --database default``, and ``migrate``):
    it reads every stored state to verify its signature. Nothing is reported
    while the signature column does not exist yet (before ``migrate``).
    """
    from django.db import DatabaseError, router

    from django_apscheduler.models import DjangoJob

    databases = kwargs.get("databases") or []
    using = router.db_for_read(DjangoJob)
    if using not in databases:
        return []
    try:
        untrusted = DjangoJob.objects.using(using).untrusted()
    except DatabaseError:  # not migrated yet
        return []
    if not untrusted:
        return []
    shown = ", ".join(f"{job_id!r} ({problem})" for job_id, problem in untrusted[:20])
    more = f" and {len(untrusted) - 20} more" if len(untrusted) > 20 else ""
    return [
        checks.Warning(
            f"{len(untrusted)} stored jobs are not signed with SECRET_KEY or "
            f"SECRET_KEY_FALLBACKS and never run: {shown}{more}.",
            hint="If these rows are trusted (a backup made under another SECRET_KEY), sign "
            "them: `manage.py apscheduler sign JOB_ID ...` (or --all); otherwise remove them. "
            "See docs/security.md.",
            id="django_apscheduler.W002",
        )
    ]
