"""The last-hour chart of the overview, drawn on the server as inline SVG.

No script, no library: bars for leads added and dead-lettered per minute, each
with a ``<title>`` (a tooltip, read by screen readers), and the page repeats the
figures as a table for those who cannot see the chart.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

from dispatcher.store.activity import Minute

__all__ = ["activity_svg"]

_W, _H = 760, 170
_LEFT, _BOTTOM, _TOP = 40, 22, 10


def _hhmm(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M")


def activity_svg(minutes: Sequence[Minute]) -> Markup:
    n = max(len(minutes), 1)
    slot = (_W - _LEFT - 8) / n
    bar = max(1.0, slot / 2 - 1)
    height = _H - _BOTTOM - _TOP
    peak = max([1, *(m.added or 0 for m in minutes), *(m.dead or 0 for m in minutes)])
    added = sum(m.added or 0 for m in minutes)
    dead = sum(m.dead or 0 for m in minutes)
    parts: list[str] = [
        f'<svg class="chart" role="img" aria-labelledby="chart-title chart-desc" '
        f'viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" xmlns="http://www.w3.org/2000/svg">',
        '<title id="chart-title">Leads added and dead-lettered per minute, last hour</title>',
        f'<desc id="chart-desc">{added} added and {dead} dead-lettered in the last '
        f"{len(minutes)} minutes; the busiest minute had {peak}.</desc>",
        f'<line class="axis" x1="{_LEFT}" y1="{_TOP + height}" x2="{_W - 4}" '
        f'y2="{_TOP + height}"/>',
        f'<text x="{_LEFT - 6}" y="{_TOP + 9}" text-anchor="end">{peak}</text>',
        f'<text x="{_LEFT - 6}" y="{_TOP + height}" text-anchor="end">0</text>',
    ]
    for i, m in enumerate(minutes):
        x = _LEFT + i * slot
        label = escape(
            f"{_hhmm(m.start)} UTC: "
            + (
                "no sample (no worker running)"
                if m.added is None
                else f"{m.added} added, {m.dead} dead-lettered"
            )
        )
        parts.append("<g>")
        parts.append(f"<title>{label}</title>")
        if m.added is None or m.dead is None:
            parts.append(
                f'<rect class="unknown" x="{x:.1f}" y="{_TOP + height - 4}" '
                f'width="{slot - 1:.1f}" height="4"/>'
            )
        else:
            for offset, value, cls in ((0.0, m.added, "added"), (bar + 1, m.dead, "dead")):
                h = round(height * value / peak, 1)
                if value and h < 1.5:
                    h = 1.5
                parts.append(
                    f'<rect class="{cls}" x="{x + offset:.1f}" y="{_TOP + height - h:.1f}" '
                    f'width="{bar:.1f}" height="{h:.1f}"/>'
                )
        parts.append("</g>")
        if i % 10 == 0 or i == n - 1:
            # The last label ends at the right edge instead of running past it.
            last = i == n - 1
            parts.append(
                f'<text x="{x + slot if last else x:.1f}" y="{_H - 6}" '
                f'text-anchor="{"end" if last else "start"}">{escape(_hhmm(m.start))}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))
