"""The targets of issue 5, and the table of a run's results."""

from __future__ import annotations

from typing import Any

# Targets (issue 5).
B1_VS_SQLALCHEMY = 3.0  # at least 3x SQLAlchemyJobStore ...
B1_VS_MEMORY = 0.25  # ... and at least 25% of MemoryJobStore (SQLite and PostgreSQL)
B2_MAX_PER_MINUTE = 60
#: Issue 10: on PostgreSQL, where NOTIFY carries the changes, at most 20 a minute.
B2_MAX_PER_MINUTE_BY_BACKEND = {"postgres": 20}
B3_MAX_P50_S = 0.2  # PostgreSQL
B4_MAX_COST_RATIO = 1.2
B4_MAX_MEMORY_RATIO = 1.10  # "memory flat": at most 10% more peak RSS
B1_TARGET_BACKENDS = ("sqlite", "postgres", "mariadb")  # issue 10, item 7: all three
B3_TARGET_BACKENDS = ("postgres",)


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


def rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """One row per figure: benchmark, backend, figure, reference, ratio, target, verdict."""
    out: list[dict[str, str]] = []

    def add(bench, backend, figure, reference, ratio, target, ok):
        out.append(
            {
                "benchmark": bench,
                "backend": backend,
                "figure": figure,
                "reference": reference,
                "ratio": ratio,
                "target": target,
                "verdict": _verdict(ok),
            }
        )

    for backend, res in results.get("backends", {}).items():
        if "error" in res:
            add("all", backend, f"error: {res['error'][:60]}", "", "", "", False)
            continue
        b1 = res.get("b1")
        if b1:
            med = b1["median_fires_per_s"]
            targeted = backend in B1_TARGET_BACKENDS
            logged = "all runs logged" if b1["all_logged"] else "RUNS MISSING FROM THE LOG"
            r_sa, r_mem = b1.get("ratio_vs_sqlalchemy"), b1.get("ratio_vs_memory")
            add(
                "B1 dispatch",
                backend,
                f"{med['django']:.0f} fires/s ({logged})",
                f"SQLAlchemyJobStore {med['sqlalchemy']:.0f}/s" if r_sa else "",
                f"{r_sa:.2f}x" if r_sa else "",
                ">= 3x" if targeted else "(no target)",
                (r_sa >= B1_VS_SQLALCHEMY and b1["all_logged"]) if targeted and r_sa else None,
            )
            add(
                "B1 dispatch",
                backend,
                "",
                f"MemoryJobStore {med['memory']:.0f}/s" if r_mem else "",
                f"{100 * r_mem:.0f}%" if r_mem else "",
                ">= 25%" if targeted else "(no target)",
                (r_mem >= B1_VS_MEMORY and b1["all_logged"]) if targeted and r_mem else None,
            )
        b2 = res.get("b2")
        if b2:
            ref = b2.get("sqlalchemy_reference")
            most = B2_MAX_PER_MINUTE_BY_BACKEND.get(backend, B2_MAX_PER_MINUTE)
            add(
                "B2 idle",
                backend,
                f"{b2['per_minute']:.0f} statements/min ({b2['sql_per_minute']:.0f} SQL"
                f" + transaction control)",
                f"SQLAlchemyJobStore {ref['per_minute']:.0f}/min" if ref else "",
                "",
                f"<= {most}/min",
                b2["per_minute"] <= most,
            )
        b3 = res.get("b3")
        if b3:
            ours, ref = b3["django"], b3["memory_in_process"]
            targeted = backend in B3_TARGET_BACKENDS
            add(
                "B3 wake-up",
                backend,
                f"p50 {ours['p50_s']:.3f} s, p99 {ours['p99_s']:.3f} s (n={ours['samples']})",
                f"in-process MemoryJobStore p50 {ref['p50_s'] * 1000:.1f} ms",
                f"{ours['p50_s'] / ref['p50_s']:.0f}x" if ref["p50_s"] > 0 else "",
                "p50 <= 0.2 s" if targeted else "(no target)",
                ours["p50_s"] <= B3_MAX_P50_S if targeted else None,
            )
        b4 = res.get("b4")
        if b4:
            med = b4["median"]
            add(
                "B4 scale",
                backend,
                f"{med['large']['per_fire_ms']:.2f} ms/fire with {b4['large']:,} stored",
                f"{med['small']['per_fire_ms']:.2f} ms/fire with {b4['small']:,} stored",
                f"{b4['cost_ratio']:.2f}x",
                f"<= {B4_MAX_COST_RATIO}x",
                b4["cost_ratio"] <= B4_MAX_COST_RATIO and b4["all_logged"],
            )
            add(
                "B4 scale",
                backend,
                f"peak RSS {med['large']['peak_rss_mib']:.0f} MiB with {b4['large']:,}",
                f"{med['small']['peak_rss_mib']:.0f} MiB with {b4['small']:,}",
                f"{b4['memory_ratio']:.2f}x",
                f"flat (<= {B4_MAX_MEMORY_RATIO}x)",
                b4["memory_ratio"] <= B4_MAX_MEMORY_RATIO,
            )
        b5 = res.get("b5")
        if b5:
            med, ratio = b5["median_fires_per_s"], b5["ratio_vs_1"]
            keys = list(med)
            grows = all(med[a] < med[b] for a, b in zip(keys, keys[1:]))
            add(
                "B5 processes",
                backend,
                ", ".join(f"{n} proc: {med[n]:.0f}/s" for n in keys)
                + ("" if b5["all_logged"] else " (RUNS MISSING)"),
                f"1 process {med[keys[0]]:.0f}/s",
                " / ".join(f"{ratio[n]:.2f}x" for n in keys),
                "grows with processes",
                grows and b5["all_logged"],
            )
    return out


COLUMNS = ("benchmark", "backend", "figure", "reference", "ratio", "target", "verdict")


def table(results: dict[str, Any], markdown: bool = False) -> str:
    data = rows(results)
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in data]
        return "\n".join(lines)
    widths = {c: max([len(c)] + [len(r[c]) for r in data]) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines.append("  ".join("-" * widths[c] for c in COLUMNS))
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS) for r in data]
    return "\n".join(lines)
