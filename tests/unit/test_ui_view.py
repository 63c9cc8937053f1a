"""The status page's pure parts: SVG charts, durations, what a row says about a model."""

from __future__ import annotations

import pytest

from queue_gateway.ui.charts import Series, chart, nice_max
from queue_gateway.ui.view import charts, duration, eta_text, row
from warmpool.events import Event
from warmpool.overview import Desired, ModelStatus
from warmpool.phase import ModelPhase, Phase
from warmpool.specs import ModelSpec
from warmpool.timeline import SLOT_S, ColdStart, SeriesPoint, SlotSample

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("value", "expected"), [(0, 1.0), (0.07, 0.08), (3, 4.0), (5, 6.0), (9.5, 10.0), (130, 200.0)])
def test_axis_tops_divide_into_readable_quarters(value: float, expected: float) -> None:
    assert nice_max(value) == pytest.approx(expected)


def test_chart_escapes_its_labels_and_scales_bars() -> None:
    svg = str(chart("<script>", NOW, 600, bars=Series("a&b", "#000", [0, 2, 4]), chart_id='x"y'))
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "a&amp;b" in svg and 'id="x&#34;y"' in svg
    assert svg.count("<rect") == 2 + 1  # two non-zero bars and the legend's swatch


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "-"), (0.246, "246 ms"), (4.17, "4.2 s"), (65, "1 min 05 s"), (3900, "1 h 05 min")]
)
def test_durations(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def _status(phase: ModelPhase, **kw: object) -> ModelStatus:
    fields: dict[str, object] = {
        "spec": ModelSpec(name="m", source="/models/m"),
        "phase": phase,
        "desired": Desired(1, "reactive=1"),
        "ready": 0,
        "queue_depth": 1,
        "cold_start": None,
        "warm_until_s": None,
        "decisions": [],
    }
    fields.update(kw)
    return ModelStatus(**fields)  # type: ignore[arg-type]


def test_eta_is_unknown_once_passed_and_absent_when_ready() -> None:
    assert eta_text(_status(ModelPhase(phase=Phase.LOADING, eta_s=NOW + 90)), NOW) == "in 1 min 30 s"
    assert eta_text(_status(ModelPhase(phase=Phase.LOADING, eta_s=NOW - 1)), NOW) == "unknown"
    assert eta_text(_status(ModelPhase(phase=Phase.PENDING)), NOW) == "unknown"
    assert eta_text(_status(ModelPhase(phase=Phase.READY)), NOW) == "-"


def test_row_shows_the_cold_start_phases_and_decisions() -> None:
    cold = ColdStart("i1", requested_s=NOW - 100, ready_s=NOW - 5, job_start_s=NOW - 70, first_token_s=NOW - 4.5)
    decision = Event("1-0", NOW - 60, "scale.decision", "m", "", {"replicas": 1, "previous": 0, "why": "reactive=1"})
    r = row(_status(ModelPhase(phase=Phase.READY), cold_start=cold, decisions=[decision]), NOW)
    assert [(p.name, p.seconds) for p in r.cold_phases] == [("Slurm wait", 30.0), ("load", 65.0), ("first token", 0.5)]
    assert r.cold_total == "1 min 35 s" and r.cold_when == "5.0 s ago"
    assert r.decisions == [("22:12:20", "0 \u2192 1 replicas", "reactive=1")]
    assert "<rect" in str(r.cold_bar)


def test_a_week_is_plotted_by_the_hour() -> None:
    points = [SeriesPoint(NOW + i * SLOT_S, SlotSample(ticks=1, ready_sum=1, cold_starts=1), 6) for i in range(1008)]
    plots = charts(points, step_s=3600, model="m")
    assert len(plots) == 4
    # 168 hourly bars of 6 requests per 10 minutes, besides the legend's three swatches.
    assert str(plots[0]).count("<rect") == 168 + 3
