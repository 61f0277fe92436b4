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
def check_atomic_requests(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A warning when requests that change jobs would fail while a scheduler writes.

    With ``ATOMIC_REQUESTS`` every view runs in a transaction Django opens
    before the view reads anything. On SQLite, such a transaction that then
    writes (``add_job``, a pause, the admin's save) is refused at once with
    "database is locked" whenever a scheduler holds the write lock for a
    moment, instead of waiting for it.
    """
    import django
    from django.db import connections, router

    from django_apscheduler import backends
    from django_apscheduler.models import DjangoJob

    using = router.db_for_write(DjangoJob)
    settings_dict = connections.settings.get(using) or {}
    if not settings_dict.get("ATOMIC_REQUESTS"):
        return []
    if not backends.for_alias(using).refuses_late_writers(settings_dict):
        return []
    if django.VERSION >= (5, 1):
        hint = (
            f'Add "transaction_mode": "IMMEDIATE" to DATABASES[{using!r}]["OPTIONS"], so each '
            "transaction waits for the write lock from its start."
        )
    else:
        hint = (
            "Decorate the views that change jobs with @transaction.non_atomic_requests, or turn "
            f"ATOMIC_REQUESTS off for {using!r} (Django 5.1 adds OPTIONS "
            '"transaction_mode": "IMMEDIATE", which fixes this).'
        )
    return [
        checks.Warning(
            f"DATABASES[{using!r}] is SQLite with ATOMIC_REQUESTS: a request that changes a job "
            "while a scheduler writes fails with 'database is locked' instead of waiting.",
            hint=hint,
            id="django_apscheduler.W003",
        )
    ]


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


@checks.register()
def check_declared_tasks(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """One error per ``@scheduled_job`` on a task that cannot be handed off here.

    Its engine (Django Tasks, Celery) is not installed or not configured, or
    its backend or options are invalid: every fire would fail to enqueue.
    """
    from django_apscheduler import declared, handoff

    found: list[checks.CheckMessage] = []
    for declaration in declared.discover().values():
        if not handoff.is_task(declaration.func):
            continue
        ref = handoff.TaskRef(handoff.engine_of(declaration.func).task_path(declaration.func))  # type: ignore[union-attr]
        problem = handoff.task_problem(ref)
        if problem:
            found.append(
                checks.Error(
                    f"@scheduled_job {declaration.id!r}: {problem}",
                    hint="See docs/workers.md for setting up Django Tasks or Celery.",
                    id="django_apscheduler.E012",
                )
            )
    return found


@checks.register(checks.Tags.database)
def check_stored_tasks(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """One warning per stored task job whose task cannot be handed off here.

    Runs only when the checks are asked to use the database (``manage.py
    check --database default``, ``migrate``). Only rows whose state names a
    task reference are unpickled.
    """
    from django.db import DatabaseError, connections, router

    from django_apscheduler import handoff
    from django_apscheduler.models import DjangoJob, classify_job

    using = router.db_for_read(DjangoJob)
    if not databases or using not in databases:
        return []
    try:  # migrate runs the checks before it creates the tables
        if DjangoJob._meta.db_table not in connections[using].introspection.table_names():
            return []
        rows = list(
            DjangoJob.objects.using(using)
            .unfinished()
            .values_list("id", "job_state", "job_signature", "next_run_time")
        )
    except DatabaseError:
        return []
    found: list[checks.CheckMessage] = []
    marker = handoff.REF_PREFIX.encode()
    for job_id, state, signature, next_run_time in rows:
        if marker not in bytes(state):
            continue
        # A broken row (its signature refused included) has no job: the admin
        # and the store report those.
        ref = handoff.job_task_ref(classify_job(job_id, state, signature, next_run_time).job)
        problem = handoff.task_problem(ref) if ref is not None else None
        if problem:
            found.append(
                checks.Warning(
                    f"Stored job {job_id!r}: {problem}; its fires are logged Error!.",
                    hint="See docs/workers.md for setting up Django Tasks or Celery.",
                    id="django_apscheduler.W013",
                )
            )
    return found
