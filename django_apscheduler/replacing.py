"""What re-adding a stored job (``replace_existing=True``) does to its row.

Every process of a deployment typically re-adds the same jobs at start-up,
each with a next run time of its own making, and the sync of the jobs
declared in code re-adds every declaration at every start. Overwriting the
stored row each time would repeat fires another scheduler dispatched, drop
fires that are due, and undo an operator's pause. This module decides, from
the stored row and the job being added, whether the row is kept, kept paused
or replaced; the job store carries the decision out.
"""

from __future__ import annotations

import pickle
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Literal

from apscheduler.job import Job
from apscheduler.triggers.interval import IntervalTrigger

from django_apscheduler import backends, signing
from django_apscheduler.models import DjangoJob

#: What re-adding a job does: leave the row alone, write the new definition
#: without a next run time, or replace the row as APScheduler does.
Decision = Literal["keep", "keep paused", "replace"]
KEEP: Decision = "keep"
KEEP_PAUSED: Decision = "keep paused"
REPLACE: Decision = "replace"

#: Set by :func:`declared_sync` for the thread that syncs declared jobs.
_declared_sync = threading.local()


@contextmanager
def declared_sync() -> Iterator[None]:
    """Within this block, re-adding a job keeps what the operator and the scheduler did to it.

    The sync of the jobs declared in code re-adds every declaration at every
    start. A paused job stays paused (also when its declaration changed), and
    a one-shot job that has finished stays finished unless its new definition
    fires in the future: otherwise every restart within its grace time would
    run it again. Applies to this thread's re-adds only.
    """
    previous = getattr(_declared_sync, "on", False)
    _declared_sync.on = True
    try:
        yield
    finally:
        _declared_sync.on = previous


def in_declared_sync() -> bool:
    """True inside :func:`declared_sync`, in this thread."""
    return getattr(_declared_sync, "on", False)


def decide(job: Job, using: str, protocol: int) -> Decision:
    """What re-adding ``job`` does to its stored row; locks the row until the transaction ends.

    Called inside the store's write transaction. When the stored job has the
    same definition and is scheduled, its row is left alone (:data:`KEEP`),
    next run time included, whether that time is ahead or already past: a
    time ahead may stand past a fire another scheduler dispatched (writing an
    earlier one would repeat that fire), and a time past is a fire that is
    due, which the scheduler now runs within its ``misfire_grace_time`` or logs
    "Missed!" (replacing it would drop the fire without a trace: a ``--burst``
    run would never run the job).

    Inside :func:`declared_sync`, a stored job that is paused stays paused:
    with the same definition the row is left alone, with another one the new
    definition is written without a next run time (:data:`KEEP_PAUSED`).
    Anything else is replaced (:data:`REPLACE`), as APScheduler's
    ``replace_existing`` does.
    """
    rows = DjangoJob.objects.using(using).filter(id=job.id)
    row = (
        backends.for_alias(using)
        .lock_for_write(rows, using)
        .values("job_state", "job_signature", "next_run_time")
        .first()
    )
    if row is None or not row["job_state"]:
        return REPLACE
    # A stored state whose signature is refused is not read: it is replaced.
    checked = signing.check(job.id, row["job_state"], row["job_signature"])
    same = checked.state is not None and same_definition(checked.state, job, protocol)
    if row["next_run_time"] is None:  # paused
        if not in_declared_sync():
            return REPLACE
        return KEEP if same else KEEP_PAUSED
    return KEEP if same else REPLACE


def definition(state: dict[str, Any], protocol: int) -> bytes:
    """The part of a job's state that defines it: all but its next run time.

    An interval trigger made without ``start_date`` gets "now + interval" as
    its start, different in every process that creates it; that start only
    sets the phase, which the stored next run time already fixes, so it is
    left out. The state makes one round trip through pickle first, so equal
    states give equal bytes whatever objects they shared.
    """
    state = pickle.loads(pickle.dumps(state, protocol))
    state.pop("next_run_time", None)
    trigger = state.get("trigger")
    if isinstance(trigger, IntervalTrigger):
        trigger_state = trigger.__getstate__()
        trigger_state.pop("start_date", None)
        state["trigger"] = ("interval", trigger_state)
    return pickle.dumps(state, protocol)


def same_definition(stored_state: signing.Verified, job: Job, protocol: int) -> bool:
    """True if the verified ``stored_state`` describes ``job`` in everything but its next run time."""
    try:
        stored = signing.loads(stored_state)
        return definition(stored, protocol) == definition(job.__getstate__(), protocol)
    except Exception:  # cannot tell: treat as different, so the new definition is written
        return False
