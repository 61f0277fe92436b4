"""``python -m benchmarks``: run the benchmarks, print the table, write the JSON.

The full run (``make bench``) takes about a quarter of an hour; ``--quick``
about three minutes. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import databases, report

RESULT_PREFIX = "BENCH-RESULT "
ALL = ("b1", "b2", "b3", "b4", "b5")
B5_BACKENDS = ("postgres",)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="sqlite,postgres,mariadb", help="comma-separated")
    p.add_argument("--only", default=",".join(ALL), help="benchmarks to run, e.g. b1,b3")
    p.add_argument("--quick", action="store_true", help="smaller numbers, one repetition less")
    p.add_argument("--k", type=int, help="B1: jobs due at once (default 1000)")
    p.add_argument("--repeat", type=int, help="repetitions of B1, B4, B5 (default 5, 3, 3)")
    p.add_argument("--threads", type=int, default=10, help="executor threads (default 10)")
    p.add_argument("--idle-seconds", type=float, help="B2 window (default 60)")
    p.add_argument("--samples", type=int, help="B3 samples per backend (default 30)")
    p.add_argument("--large", type=int, help="B4: stored jobs of the large case (1000000)")
    p.add_argument("--b5-jobs", type=int, help="B5: jobs (default 2000)")
    p.add_argument("--json", default="benchmarks/results/latest.json", help="where to write")
    p.add_argument("--keep", action="store_true", help="keep the dja_bench databases")
    p.add_argument(
        "--metrics",
        action="store_true",
        help="with the Prometheus metrics on (the extra 'prometheus'); default: a default install",
    )
    return p.parse_args(argv)


def plan(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    q = args.quick
    k = args.k or (300 if q else 1000)
    return {
        "b1": {"k": k, "threads": args.threads, "repeat": args.repeat or (3 if q else 5)},
        "b2": {"window": args.idle_seconds or (20 if q else 60), "warmup": 5},
        "b3": {"samples": args.samples or (10 if q else 30)},
        "b4": {
            "small": 1000,
            "large": args.large or (20_000 if q else 1_000_000),
            "due": 1000,
            "threads": args.threads,
            "repeat": args.repeat or (2 if q else 3),
        },
        "b5": {
            "counts": [1, 2, 4],
            "jobs_": args.b5_jobs or (600 if q else 2000),
            "sleep": 0.05,
            "threads": args.threads,
            "repeat": args.repeat or (2 if q else 3),
        },
    }


def run_driver(
    backend: str, name: str, benches: list[str], params: dict, directory: Path
) -> dict[str, Any]:
    """One driver process on ``name``: the benchmarks ``benches`` of ``backend``."""
    databases.create(backend, name)
    config = {"benchmarks": benches, "directory": str(directory / f"{backend}-{name}"), **params}
    log = directory / f"{backend}-{name}.log"
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.worker", "driver", json.dumps(config)],
            cwd=databases.ROOT,
            env=databases.settings_env(backend, name),
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    text = log.read_text()
    for line in reversed(text.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = "\n".join(text.splitlines()[-30:])
    raise RuntimeError(f"{backend} driver failed (exit {proc.returncode}):\n{tail}")


def machine() -> dict[str, Any]:
    import apscheduler
    import django

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "apscheduler": apscheduler.__version__,
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
        with open("/proc/meminfo") as f:
            kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
            info["ram_gib"] = round(kib / 1024 / 1024, 1)
    except (OSError, StopIteration):
        pass
    try:
        import sqlalchemy

        info["sqlalchemy"] = sqlalchemy.__version__
    except ImportError:
        info["sqlalchemy"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # Read by benchmarks.settings in every process (drivers and workers inherit it).
    os.environ["DJA_BENCH_METRICS"] = "1" if args.metrics else "0"
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    params = plan(args)
    started = time.monotonic()
    results: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "servers": {b: databases.server_version(b) for b in backends},
        "params": params,
        "metrics": args.metrics,
        "backends": {b: {} for b in backends},
    }
    names: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="dja_bench_") as tmp:
        directory = Path(tmp)
        # B2 counts, it does not time: the idle schedulers of all backends run
        # at once, each on a database of its own, before anything else.
        if "b2" in only:
            print(f"B2: idle schedulers for {params['b2']['window']:.0f} s...", flush=True)
            with concurrent.futures.ThreadPoolExecutor(len(backends)) as pool:
                futures = {}
                for b in backends:
                    names.append((b, "dja_bench_idle"))
                    futures[b] = pool.submit(
                        run_driver, b, "dja_bench_idle", ["b2"], {"b2": params["b2"]}, directory
                    )
                for b, future in futures.items():
                    try:
                        results["backends"][b].update(future.result())
                    except Exception as exc:
                        print(exc, file=sys.stderr)
                        results["backends"][b]["error"] = str(exc)
        for b in backends:
            benches = [x for x in ("b1", "b3", "b4", "b5") if x in only]
            if b not in B5_BACKENDS and "b5" in benches:
                benches.remove("b5")
            if not benches:
                continue
            print(f"{b}: {', '.join(benches)}...", flush=True)
            names.append((b, "dja_bench"))
            try:
                results["backends"][b].update(
                    run_driver(b, "dja_bench", benches, params, directory)
                )
            except Exception as exc:
                print(exc, file=sys.stderr)
                results["backends"][b]["error"] = str(exc)
        if not args.keep:
            for b, name in names:
                try:
                    databases.drop(b, name)
                except Exception as exc:
                    print(f"could not drop {b} {name}: {exc}", file=sys.stderr)
    results["wall_s"] = time.monotonic() - started
    print()
    print(report.table(results))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n{results['wall_s']:.0f} s; results written to {out}")
    failed = any("error" in r for r in results["backends"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
