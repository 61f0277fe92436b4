"""An app for the observability tests: receivers of every signal of django_apscheduler.

When ``$OBSERVING_OUTPUT`` is set, its receivers append one JSON line per
signal received (signal, job, run time, execution id, pid) to that file, so a
test can count, across processes, how often each event was received. One
more receiver of ``job_succeeded`` always raises.
"""
