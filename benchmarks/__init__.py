"""Benchmarks of django-apscheduler (issue 5). Not part of the test suite.

Run them with ``make bench`` or ``python -m benchmarks --help``; what each one
measures, and the last full run, are in ``docs/benchmarks.md``.

Layout:

- ``__main__``: the command line. It creates the benchmark databases
  (names starting with ``dja_bench``), runs one *driver* process per backend,
  prints the table and writes the JSON.
- ``suite``: the benchmarks themselves, as functions that run in a process
  where Django is set up on the database to measure (the driver, or the test
  suite's smoke test). They start scheduler processes (``worker``) as needed.
- ``worker``: the processes the benchmarks start (``python -m benchmarks.worker``).
- ``databases``, ``settings``: the benchmark databases and their Django settings.
- ``jobs``: the job functions the benchmarks schedule.
- ``report``: statistics, targets, the table.
"""
