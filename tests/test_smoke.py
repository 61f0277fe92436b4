from datetime import datetime, timedelta, timezone

import pytest

from django_apscheduler import executions
from django_apscheduler.models import DjangoJob, DjangoJobExecution
from tests import jobs
from tests.helpers import wait_until


@pytest.mark.django_db(transaction=True)
def test_interval_job_runs_and_is_logged(make_scheduler):
    scheduler = make_scheduler()
    scheduler.add_job(
        jobs.record, "interval", seconds=1, id="tick", next_run_time=datetime.now(timezone.utc)
    )
    wait_until(lambda: len(jobs.calls) >= 2)
    executions.recorder.flush(10)
    rows = list(DjangoJobExecution.objects.filter(job_id="tick"))
    assert len(rows) >= 2
    assert {r.status for r in rows} <= {DjangoJobExecution.SUCCESS, DjangoJobExecution.SENT}
    assert any(r.status == DjangoJobExecution.SUCCESS and r.duration is not None for r in rows)
    assert DjangoJob.objects.get(id="tick").next_run_time > datetime.now(timezone.utc) - timedelta(
        seconds=2
    )
