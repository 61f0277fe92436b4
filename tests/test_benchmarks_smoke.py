"""A tiny run of every benchmark (issue 5), on the suite's backend, so the benchmark code cannot rot.

The same functions ``make bench`` runs (``benchmarks.suite``), with tiny
numbers and one repetition, on the test database. Only sanity is asserted
(positive numbers, every run executed and logged), never speed: the targets
are for the full run, reported in docs/benchmarks.md.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import report, suite

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_b1_dispatch_all_stores():
    result = suite.bench_dispatch(k=20, threads=4, repeat=1, timeout=120)
    for store in suite.STORES:
        (run,) = result["runs"][store]
        assert run["executed"] == 20 and run["errors"] == 0 and run["missed"] == 0
        assert run["fires_per_s"] > 0
    assert result["all_logged"]
    assert result["ratio_vs_memory"] > 0 and result["ratio_vs_sqlalchemy"] > 0


def test_b2_idle_counts_statements():
    result = suite.bench_idle(window=4, warmup=1)
    # The housekeeping thread polls every 2 s: something is counted, from that thread.
    assert result["sql_statements"] > 0
    assert "django_apscheduler-coordinator" in result["by_thread"]
    assert result["per_minute"] > 0
    assert result["sqlalchemy_reference"]["per_minute"] >= 0


def test_b3_wakeup_latency(tmp_path):
    result = suite.bench_wakeup(samples=2, gap=(0.05, 0.1), directory=tmp_path)
    ours = result["django"]
    assert ours["samples"] == 2
    assert 0 < ours["p50_s"] <= ours["p99_s"] < 30
    assert result["memory_in_process"]["p50_s"] > 0


def test_b4_scale_and_memory(tmp_path):
    result = suite.bench_scale(small=30, large=80, due=20, threads=4, repeat=1, directory=tmp_path)
    assert result["all_logged"]
    for case in ("small", "large"):
        (run,) = result["runs"][case]
        assert run["executed"] == 20 and run["per_fire_ms"] > 0
        assert run["peak_rss_mib"] >= run["base_rss_mib"] > 0
    assert result["cost_ratio"] > 0 and result["memory_ratio"] > 0


def test_b5_processes(tmp_path):
    result = suite.bench_processes(
        counts=(1, 2), jobs_=20, sleep=0.01, threads=4, repeat=1, directory=tmp_path
    )
    assert result["all_logged"]
    for n in ("1", "2"):
        (run,) = result["runs"][n]
        assert run["fires_per_s"] > 0 and sum(run["executed_per_process"]) == 20


def test_report_table_from_results(tmp_path):
    """The table and the JSON of the command line, from a result of the functions above."""
    b1 = suite.bench_dispatch(k=5, threads=2, repeat=1, stores=suite.STORES, timeout=60)
    results = {"backends": {suite.vendor_backend(): {"b1": b1}}}
    text = report.table(results)
    assert "B1 dispatch" in text and suite.vendor_backend() in text
    assert "| B1 dispatch |" in report.table(results, markdown=True)
    json.dumps(results)
