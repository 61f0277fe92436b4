"""Jobs declared in code for the runner tests; which ones depends on ``DECLARING_VARIANT``.

The tests start processes with different variants to play "the code changed"
(v1 then v2), a job that runs a while ("slow") and many fast fires ("tick").
"""

import os
from datetime import datetime, timezone

from django_apscheduler import scheduled_job
from tests.scheduler_process import log_fire, log_run

VARIANT = os.environ.get("DECLARING_VARIANT", "")
OUTPUT = os.environ.get("DECLARING_OUTPUT", os.devnull)


def declared_a() -> None:
    """A job declared in v1 (every 10 minutes) and v2 (every 20 minutes)."""


def declared_b() -> None:
    """A job declared in v1 only."""


if VARIANT in ("v1", "v2"):
    scheduled_job("interval", minutes=10 if VARIANT == "v1" else 20)(declared_a)
if VARIANT == "v1":
    scheduled_job("cron", hour=3, minute=0, id="declared-b", max_instances=2)(declared_b)
if VARIANT == "slow":
    seconds = float(os.environ.get("DECLARING_SECONDS", "30"))
    scheduled_job("interval", seconds=1, id="slow", args=[OUTPUT, seconds])(log_run)
if VARIANT == "tick":
    start = datetime.fromtimestamp(int(os.environ["DECLARING_START"]), tz=timezone.utc)
    for i in range(5):
        scheduled_job(
            "interval",
            seconds=1,
            start_date=start,
            id=f"tick-{i}",
            args=[OUTPUT, f"tick-{i}"],
            coalesce=False,
            misfire_grace_time=120,
        )(log_fire)
