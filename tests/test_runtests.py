"""``scripts/runtests.py``'s plan of shards: the backend that would end last gets one more."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _runtests():
    spec = importlib.util.spec_from_file_location("runtests", ROOT / "scripts" / "runtests.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("runtests", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


runtests = _runtests()


def test_a_backend_far_behind_the_others_gets_one_shard_more():
    # The durations of a run on the 2-core machine: PostgreSQL has tests of its own.
    totals = {"sqlite": 882.0, "postgres": 987.0, "mariadb": 900.0}
    assert runtests.plan_shards(totals, 3) == {"sqlite": 3, "postgres": 4, "mariadb": 3}


def test_backends_about_even_keep_the_same_shards():
    totals = {"sqlite": 900.0, "postgres": 930.0, "mariadb": 900.0}
    assert runtests.plan_shards(totals, 3) == {"sqlite": 3, "postgres": 3, "mariadb": 3}


def test_no_split_and_one_backend_are_left_alone():
    assert runtests.plan_shards({"sqlite": 10.0, "postgres": 100.0}, 1) == {
        "sqlite": 1,
        "postgres": 1,
    }
    assert runtests.plan_shards({"postgres": 100.0}, 3) == {"postgres": 3}


def test_the_committed_durations_know_every_backend():
    """The plan on a fresh clone comes from ``scripts/test-durations.json``."""
    for backend in ("sqlite", "postgres", "mariadb"):
        durations = runtests.load_durations(backend, ROOT / ".cache" / "nonexistent.json")
        assert sum(durations.values()) > 100, backend
