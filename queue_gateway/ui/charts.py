"""Server-side SVG charts for the status page: no script, no fetched asset, nothing to build.

A chart is bars on the left axis and lines on the right (or the left, when there are no bars),
over a time axis; every label is escaped, every coordinate a number.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 460, 170
PAD_L, PAD_R, PAD_T, PAD_B = 44, 44, 26, 24


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    color: str
    """A CSS colour (a constant of this module's callers, never user input)."""
    values: Sequence[float]
    unit: str = ""


def nice_max(value: float) -> float:
    """The smallest 1, 2, 4, 6 or 8 times a power of ten at or above `value` (1 for nothing): quarters read well."""
    if value <= 0:
        return 1.0
    base = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 4, 6, 8, 10):
        if step * base >= value - 1e-9:
            return float(step * base)
    return float(10 * base)


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _time_label(t_s: float, span_s: float) -> str:
    tm = time.gmtime(t_s)
    return time.strftime("%a %d" if span_s > 2 * 86_400 else "%H:%M", tm)


def chart(
    title: str,
    start_s: float,
    step_s: float,
    *,
    bars: Series | None = None,
    lines: Sequence[Series] = (),
    chart_id: str = "",
) -> Markup:
    """One chart of `len(values)` slots of `step_s` from `start_s`."""
    n = max([len(s.values) for s in ([bars] if bars else []) + list(lines)] + [1])
    span_s = n * step_s
    inner_w, inner_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
    slot_w = inner_w / n
    out: list[str] = [
        f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{PAD_L}" y="14" class="ct">{escape(title)}</text>',
    ]
    left_max = nice_max(max(bars.values, default=0.0)) if bars else None
    right_max = nice_max(max((v for s in lines for v in s.values), default=0.0)) if lines else None
    # Grid and the left axis's labels.
    for i in range(5):
        y: float = PAD_T + inner_h * i / 4
        out.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{WIDTH - PAD_R}" y2="{y:.1f}" class="grid"/>')
        if left_max is not None:
            out.append(f'<text x="{PAD_L - 6}" y="{y + 3:.1f}" class="ax" text-anchor="end">')
            out.append(f"{_fmt(left_max * (4 - i) / 4)}</text>")
        if right_max is not None:
            rx, ranchor = (WIDTH - PAD_R + 6, "start") if bars else (PAD_L - 6, "end")
            out.append(f'<text x="{rx}" y="{y + 3:.1f}" class="ax" text-anchor="{ranchor}">')
            out.append(f"{_fmt(right_max * (4 - i) / 4)}</text>")
    for i in range(5):
        t = start_s + span_s * i / 4
        tx = PAD_L + inner_w * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        out.append(f'<text x="{tx:.1f}" y="{HEIGHT - 6}" class="ax" text-anchor="{anchor}">')
        out.append(f"{escape(_time_label(t, span_s))}</text>")
    if bars is not None and left_max is not None:
        for i, v in enumerate(bars.values):
            if v <= 0:
                continue
            h = inner_h * v / left_max
            x = PAD_L + i * slot_w + slot_w * 0.1
            out.append(
                f'<rect x="{x:.1f}" y="{PAD_T + inner_h - h:.1f}" width="{max(slot_w * 0.8, 1):.1f}" '
                f'height="{h:.1f}" fill="{bars.color}"><title>{escape(_fmt(v))} {escape(bars.unit)}</title></rect>'
            )
    for s in lines:
        assert right_max is not None
        pts = []
        for i, v in enumerate(s.values):
            y = PAD_T + inner_h - inner_h * v / right_max
            pts.append(f"{PAD_L + i * slot_w:.1f},{y:.1f} {PAD_L + (i + 1) * slot_w:.1f},{y:.1f}")
        if pts:
            out.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{s.color}" stroke-width="2"/>')
    # Legend, top right.
    legend = ([bars] if bars else []) + list(lines)
    lx: float = WIDTH - PAD_R
    for s in reversed(legend):
        label = f"{s.name}" + (f" ({s.unit})" if s.unit else "")
        width = 5.6 * len(label) + 20
        lx -= width
        out.append(f'<rect x="{lx:.1f}" y="6" width="10" height="10" rx="2" fill="{s.color}"/>')
        out.append(f'<text x="{lx + 14:.1f}" y="14" class="lg">{escape(label)}</text>')
    out.append("</svg>")
    return Markup("".join(out))
