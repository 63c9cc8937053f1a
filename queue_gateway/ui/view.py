"""What the status page shows, as plain values for its templates: rows, cold-start phases, decisions, charts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

from queue_gateway.ui.charts import Series, chart
from warmpool.overview import ModelStatus, StatusBoard
from warmpool.phase import Phase
from warmpool.timeline import SLOT_S, SeriesPoint, Timeline

RANGES: dict[str, tuple[float, float]] = {
    "6h": (6 * 3600.0, SLOT_S),
    "24h": (86_400.0, SLOT_S),
    "7d": (7 * 86_400.0, 3600.0),
}
"""Plot ranges offered: span and the width of one plotted step."""
DETAIL_MODELS = 12
"""Models given a detail card (plots, decisions): the busiest first."""
COMING = frozenset({Phase.PENDING, Phase.STARTING, Phase.LOADING})

BLUE, GREEN, ORANGE, PURPLE, RED = "#3b6fd4", "#2f9e6a", "#e08a1e", "#7a55c7", "#d14343"


def duration(seconds: float | None) -> str:
    """`1 h 05 min`, `2 min 03 s`, `4.2 s`, `35 ms`; `-` for nothing."""
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def ago(at_s: float | None, now_s: float) -> str:
    if at_s is None:
        return "-"
    return "just now" if now_s - at_s < 5 else f"{duration(now_s - at_s)} ago"


def clock(at_s: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at_s))


@dataclass(frozen=True, slots=True)
class ColdPhase:
    name: str
    seconds: float | None
    color: str


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    source: str
    phase: str
    phase_note: str
    desired: str
    ready: int
    coming: int
    queue: int
    eta: str
    warm_until: str
    cold_when: str
    cold_total: str
    cold_phases: list[ColdPhase]
    cold_bar: Markup
    decisions: list[tuple[str, str, str]]
    """(time, what, why), newest first."""
    active: bool


def eta_text(status: ModelStatus, now_s: float) -> str:
    phase = status.phase
    if phase.phase not in COMING:
        return "-"
    if phase.eta_s is None or phase.eta_s <= now_s:
        return "unknown"
    return f"in {duration(phase.eta_s - now_s)}"


def phase_note(status: ModelStatus, now_s: float) -> str:
    phase = status.phase
    parts: list[str] = []
    if phase.slurm_reason:
        parts.append(f"Slurm: {phase.slurm_reason}")
    if phase.est_start_s is not None and phase.est_start_s > now_s:
        parts.append(f"starts in {duration(phase.est_start_s - now_s)}")
    if phase.detail:
        parts.append(phase.detail)
    return ", ".join(parts)


def cold_bar(phases: Sequence[ColdPhase]) -> Markup:
    """The cold start's phases as one proportional bar (SVG: the page allows no inline styles)."""
    total = sum(p.seconds or 0.0 for p in phases)
    if total <= 0:
        return Markup("")
    x = 0.0
    parts = ['<svg class="coldbar" viewBox="0 0 100 8" preserveAspectRatio="none" aria-hidden="true">']
    for p in phases:
        w = 100 * (p.seconds or 0.0) / total
        if w > 0:
            parts.append(f'<rect x="{x:.2f}" y="0" width="{w:.2f}" height="8" fill="{p.color}"/>')
        x += w
    parts.append("</svg>")
    return Markup("".join(parts))


def row(status: ModelStatus, now_s: float) -> Row:
    cold = status.cold_start
    phases = (
        [
            ColdPhase("Slurm wait", cold.slurm_wait_s, BLUE),
            ColdPhase("load", cold.load_s, ORANGE),
            ColdPhase("first token", cold.first_token_after_s, GREEN),
        ]
        if cold is not None
        else []
    )
    decisions = []
    for e in status.decisions:
        d = e.detail
        if e.kind == "scale.decision":
            before, after = d.get("previous", "?"), d.get("replicas", "?")
            what = f"{before} \u2192 {after} replicas" if before != after else f"stays at {after}: reasons changed"
            why = str(d.get("why", ""))
        else:
            what = e.kind.removeprefix("model.").replace("_", " ")
            why = str(d.get("reason") or d.get("why") or "")
        decisions.append((clock(e.at_s), what, why))
    phase = status.phase
    return Row(
        name=status.spec.name,
        source=status.spec.source,
        phase=phase.phase.value,
        phase_note=phase_note(status, now_s),
        desired="-" if status.desired is None else str(status.desired.replicas),
        ready=status.ready,
        coming=phase.coming_instances,
        queue=status.queue_depth,
        eta=eta_text(status, now_s),
        warm_until=ago(status.warm_until_s, now_s).replace(" ago", "") if status.warm_until_s else "",
        cold_when=ago(cold.ready_s, now_s) if cold is not None else "never",
        cold_total=duration(cold.total_s) if cold is not None else "",
        cold_phases=phases,
        cold_bar=cold_bar(phases),
        decisions=decisions,
        active=phase.phase is not Phase.COLD or status.queue_depth > 0 or bool(status.decisions),
    )


def _steps(points: list[SeriesPoint], step_s: float) -> list[list[SeriesPoint]]:
    per = max(1, int(step_s // SLOT_S))
    return [points[i : i + per] for i in range(0, len(points), per)]


def charts(points: list[SeriesPoint], *, step_s: float, model: str) -> list[Markup]:
    """The four plots of one model: demand vs replicas, cold starts, idle GPU-hours, queue waits."""
    groups = _steps(points, step_s)
    start_s = points[0].slot_start_s if points else 0.0
    per_min = step_s / 60
    demand = [sum(p.requests for p in g) / per_min for g in groups]
    replicas = [sum(p.sample.ready_avg for p in g) / len(g) for g in groups]
    desired = [sum(p.sample.desired_avg for p in g) / len(g) for g in groups]
    cold = [float(sum(p.sample.cold_starts for p in g)) for g in groups]
    idle = [sum(p.sample.idle_gpu_s for p in g) / 3600 for g in groups]
    wait = [max((p.sample.queue_wait_max_s for p in g), default=0.0) for g in groups]
    return [
        chart(
            "Demand vs replicas",
            start_s,
            step_s,
            bars=Series("requests", BLUE, demand, "/min"),
            lines=[Series("ready", GREEN, replicas), Series("desired", PURPLE, desired)],
            chart_id=f"demand-{model}",
        ),
        chart("Cold starts", start_s, step_s, bars=Series("cold starts", ORANGE, cold), chart_id=f"cold-{model}"),
        chart("Idle GPU-hours", start_s, step_s, bars=Series("idle", RED, idle, "GPU-h"), chart_id=f"idle-{model}"),
        chart(
            "Longest queue wait", start_s, step_s, lines=[Series("wait", PURPLE, wait, "s")], chart_id=f"wait-{model}"
        ),
    ]


async def page_context(board: StatusBoard, timeline: Timeline, *, now_s: float, span: str) -> dict[str, object]:
    statuses = await board.read(now_s=now_s)
    rows = [row(s, now_s) for s in statuses]
    span_s, step_s = RANGES[span]
    busy = sorted(rows, key=lambda r: (not r.active, r.name))[:DETAIL_MODELS]
    details = []
    for r in busy:
        points = await timeline.series(r.name, now_s=now_s, span_s=span_s)
        details.append((r, charts(points, step_s=step_s, model=r.name)))
    return {
        "rows": rows,
        "details": details,
        "span": span,
        "ranges": list(RANGES),
        "now": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now_s)),
        "totals": {
            "models": len(rows),
            "ready": sum(r.ready for r in rows),
            "coming": sum(r.coming for r in rows),
            "queued": sum(r.queue for r in rows),
        },
    }
