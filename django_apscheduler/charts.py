"""Charts for the admin, drawn on the server as inline SVG.

No JavaScript and no external resource: the pages work offline and under a
strict Content Security Policy (no inline script, no inline style: the
colours come from classes that ``static/django_apscheduler/console.css`` styles,
with lighter shades in the admin's dark mode). Every text in a chart (job ids,
statuses, tooltips) is escaped, and labels go through gettext.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext as _

from django_apscheduler import util
from django_apscheduler.models import DjangoJobExecution

#: The outcome classes, in stacking and legend order.
OUTCOMES = ("success", "error", "interrupted", "missed", "running", "other")


def outcome_of(status: str) -> str:
    """The chart class of a run status: success, error, interrupted, missed, running or other."""
    return {
        DjangoJobExecution.SUCCESS: "success",
        DjangoJobExecution.ERROR: "error",
        DjangoJobExecution.INTERRUPTED: "interrupted",
        DjangoJobExecution.MISSED: "missed",
        DjangoJobExecution.MAX_INSTANCES: "missed",
        DjangoJobExecution.SENT: "running",
    }.get(status, "other")


def outcome_label(outcome: str) -> str:
    return {
        "success": _("succeeded"),
        "error": _("failed"),
        "interrupted": _("interrupted"),
        "missed": _("missed or skipped"),
        "running": _("running"),
        "other": _("other"),
    }[outcome]


@dataclass(frozen=True)
class Run:
    """One bar of the duration chart."""

    run_time: datetime
    status: str
    duration: Decimal | float | None


WIDTH = 720
HEIGHT = 180
LEFT = 48  # room for the axis labels
BOTTOM = 22
TOP = 10


def _svg(label: str, body: list[str], legend: Sequence[str]) -> SafeString:
    items = "".join(
        f'<g class="dja-legend-item"><rect class="dja-bar dja-legend dja-{o}" x="{LEFT + i * 130}" '
        f'y="{HEIGHT - 10}" width="10" height="10"/><text class="dja-text" '
        f'x="{LEFT + i * 130 + 14}" y="{HEIGHT - 1}">{escape(outcome_label(o))}</text></g>'
        for i, o in enumerate(legend)
    )
    return mark_safe(
        f'<svg class="dja-chart" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'viewBox="0 0 {WIDTH} {HEIGHT + 4}" width="{WIDTH}" height="{HEIGHT + 4}" '
        f'aria-label="{escape(label)}"><title>{escape(label)}</title>'
        f"{''.join(body)}{items}</svg>"
    )


def _axis(top_value: str, plot_height: int) -> list[str]:
    return [
        f'<line class="dja-axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_height}"/>',
        f'<line class="dja-axis" x1="{LEFT}" y1="{TOP + plot_height}" x2="{WIDTH}" '
        f'y2="{TOP + plot_height}"/>',
        f'<text class="dja-text" x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">'
        f"{escape(top_value)}</text>",
        f'<text class="dja-text" x="{LEFT - 4}" y="{TOP + plot_height}" text-anchor="end">0</text>',
    ]


def duration_chart(runs: Sequence[Run]) -> SafeString:
    """Bars of each run's duration, oldest left, coloured by outcome.

    A run without a duration (missed, still running) is a short bar of its
    colour, so it still shows. Each bar's tooltip names its run time, status
    and duration.
    """
    label = _("Duration of the last %(count)d runs, coloured by outcome") % {"count": len(runs)}
    plot_height = HEIGHT - BOTTOM - TOP
    durations = [float(r.duration) for r in runs if r.duration is not None]
    top = max(durations, default=0.0) or 1.0
    body = _axis(_("%(seconds)s s") % {"seconds": f"{top:.2f}"}, plot_height)
    if not runs:
        body.append(
            f'<text class="dja-text" x="{WIDTH // 2}" y="{TOP + plot_height // 2}" '
            f'text-anchor="middle">{escape(_("No runs recorded yet"))}</text>'
        )
    slot = (WIDTH - LEFT - 4) / max(len(runs), 1)
    bar = max(slot * 0.8, 1.0)
    present = []
    for i, run in enumerate(runs):
        outcome = outcome_of(run.status)
        if outcome not in present:
            present.append(outcome)
        value = float(run.duration) if run.duration is not None else None
        height = max(plot_height * (value or 0.0) / top, 2.0)
        x = LEFT + 2 + i * slot
        y = TOP + plot_height - height
        shown = (
            _("no duration") if value is None else _("%(seconds)s s") % {"seconds": f"{value:.2f}"}
        )
        tip = f"{util.get_local_dt_format(run.run_time)}: {run.status}, {shown}"
        body.append(
            f'<rect class="dja-bar dja-{outcome}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
            f'height="{height:.1f}"><title>{escape(tip)}</title></rect>'
        )
    legend = [o for o in OUTCOMES if o in present]
    return _svg(label, body, legend)


def hourly_chart(hours: Sequence[tuple[datetime, dict[str, int]]]) -> SafeString:
    """Runs per hour, each hour's bar stacked by outcome (``hours``: oldest first)."""
    label = _("Runs per hour over the last %(count)d hours, stacked by outcome") % {
        "count": len(hours)
    }
    plot_height = HEIGHT - BOTTOM - TOP - 12
    top = max((sum(counts.values()) for _, counts in hours), default=0) or 1
    body = _axis(str(top), plot_height)
    slot = (WIDTH - LEFT - 4) / max(len(hours), 1)
    bar = max(slot * 0.8, 1.0)
    present: set[str] = set()
    for i, (hour, counts) in enumerate(hours):
        x = LEFT + 2 + i * slot
        y = float(TOP + plot_height)
        for outcome in OUTCOMES:
            count = counts.get(outcome, 0)
            if not count:
                continue
            present.add(outcome)
            height = plot_height * count / top
            y -= height
            tip = f"{hour.strftime('%H:00')}: {count} {outcome_label(outcome)}"
            body.append(
                f'<rect class="dja-bar dja-{outcome}" x="{x:.1f}" y="{y:.1f}" '
                f'width="{bar:.1f}" height="{height:.1f}"><title>{escape(tip)}</title></rect>'
            )
        if i % 3 == 0:
            body.append(
                f'<text class="dja-text" x="{x + bar / 2:.1f}" y="{TOP + plot_height + 11}" '
                f'text-anchor="middle">{hour.strftime("%H")}</text>'
            )
    return _svg(label, body, [o for o in OUTCOMES if o in present])
