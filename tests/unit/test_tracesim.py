"""The trace simulator on small synthetic traces: arrivals, fairness invariants, JSON, lecture, plot."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from policies.combine import POLICY_MIXES
from policies.types import ScalingSpec
from tracesim.arrivals import Arrivals, generate_arrivals
from tracesim.cli import app
from tracesim.coldstart import ColdStartModel
from tracesim.engine import _Replay, prepare
from tracesim.lecture import run_lecture
from tracesim.plot import plot_report
from tracesim.run import BASELINES, SimConfig, run_simulation, weighted_quantile
from tracesim.trace import TraceError, load_model_trace, load_trace_dir

DATA = Path(__file__).parents[1] / "data"
WINDOWS = 2 * 144  # two days of 10-minute windows


def write_chunk(path: Path, rates: np.ndarray, dist: str = "Gamma", shape: float = 0.5) -> None:
    lines = []
    for w, r in enumerate(rates):
        if r > 0:
            lines.append(f"{w * 600},{r},1.0,{dist},{shape},{1.0 / r / shape}")
        else:
            lines.append(f"{w * 600},0,0,,0,0")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def trace_dir(tmp_path: Path) -> Path:
    # Model 0: busy 09:00-17:00 every day. Model 1: one request every ~20 minutes at night.
    # Model 2: a heavy client (more requests per window than the sampling cap).
    day = np.zeros(WINDOWS)
    for d in range(2):
        day[d * 144 + 54 : d * 144 + 102] = 0.05
    sparse = np.zeros(WINDOWS)
    sparse[::2] = 1 / 600.0
    heavy = np.full(WINDOWS, 2.0)
    write_chunk(tmp_path / "chunk-0-trace.csv", day)
    write_chunk(tmp_path / "chunk-1-trace.csv", sparse, dist="Weibull", shape=1.0)
    write_chunk(tmp_path / "chunk-2-trace.csv", heavy)
    return tmp_path


def test_load_and_generate(trace_dir: Path) -> None:
    traces = load_trace_dir(trace_dir)
    assert [t.name for t in traces] == ["0", "1", "2"]
    rng = np.random.default_rng(0)
    arr = generate_arrivals(traces[2], rng, np.asarray([5.0]), cap=64)
    assert arr.times_s.size == WINDOWS * 64
    assert np.all(np.diff(arr.times_s) >= 0)
    assert arr.weights.sum() == pytest.approx(WINDOWS * 1200)
    w = (arr.times_s // 600).astype(int)
    assert np.all(np.bincount(w, minlength=WINDOWS) == 64)
    arr1 = generate_arrivals(traces[1], np.random.default_rng(0), np.asarray([5.0]))
    assert arr1.times_s.size == WINDOWS // 2
    assert np.all(arr1.weights == 1.0)


def test_bad_trace(tmp_path: Path) -> None:
    with pytest.raises(TraceError):
        load_trace_dir(tmp_path)
    bad = tmp_path / "chunk-9-trace.csv"
    bad.write_text("0,1,1,Lognormal,1,1\n")
    with pytest.raises(TraceError):
        load_model_trace(bad)


def test_simulation_invariants(trace_dir: Path) -> None:
    report = run_simulation(trace_dir, seed=3, workers=1, record_models=["0"])
    s = report.summaries
    assert set(s) == set(BASELINES)
    assert s["always-on"].cold_start_fraction == 0.0
    assert s["always-on"].gpu_hours >= 3 * 48.0 - 1e-6
    # Longer fixed keep-alives trade idle time for fewer cold starts.
    assert s["keepalive-60m"].cold_requests <= s["keepalive-10m"].cold_requests <= s["keepalive-5m"].cold_requests
    assert s["keepalive-60m"].idle_gpu_hours >= s["keepalive-5m"].idle_gpu_hours
    # A sparse client meets a cold start with every request under a 5-minute keep-alive.
    assert s["keepalive-5m"].cold_start_fraction_p75 > 0.5
    for name, summary in s.items():
        assert 0.0 <= summary.cold_start_fraction <= 1.0, name
        assert 0.0 <= summary.idle_gpu_hours <= summary.gpu_hours + 1e-9, name
        if summary.cold_requests:
            assert 0.0 < summary.cold_wait_p50_s <= summary.cold_wait_p99_s, name
    assert set(report.recorded["0"]) == set(BASELINES)
    assert report.recorded["0"]["keepalive-10m"].timeline


def test_same_seed_same_figures(trace_dir: Path) -> None:
    a = run_simulation(trace_dir, seed=7, workers=1, policies=["keepalive-10m", "slurmless"])
    b = run_simulation(trace_dir, seed=7, workers=2, policies=["keepalive-10m", "slurmless"])
    assert a.as_json() == b.as_json()


def test_json_and_plot_from_the_cli(trace_dir: Path, tmp_path: Path) -> None:
    png = tmp_path / "out" / "replicas.png"
    result = CliRunner().invoke(
        app,
        ["--trace", str(trace_dir), "--json", "--seed", "1", "--plot", str(png), "--models", "0,1", "--workers", "1"],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(doc["policies"]) == set(BASELINES)
    keys = {
        "cold_start_fraction",
        "cold_start_fraction_p75",
        "cold_wait_p50_s",
        "cold_wait_p99_s",
        "gpu_hours",
        "idle_gpu_hours",
    }
    assert keys <= set(doc["policies"]["slurmless"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_report_directly(trace_dir: Path, tmp_path: Path) -> None:
    report = run_simulation(trace_dir, seed=0, workers=1, policies=["slurmless"], record_models=["1"])
    out = plot_report(report, tmp_path / "p.png")
    assert out.stat().st_size > 1000


def test_lecture_timetable_means_no_cold_start_at_lecture_start() -> None:
    outcomes = {o.policy: o for o in run_lecture(DATA / "lecture.ics", seed=0)}
    with_tt = outcomes["slurmless + timetable"]
    assert with_tt.lectures == 6
    assert with_tt.cold_at_start == 0.0
    assert outcomes["slurmless (no timetable)"].cold_at_start > 0.0
    assert outcomes["keepalive-10m"].cold_at_start > 0.0


def test_cold_start_model_and_quantiles() -> None:
    cold = ColdStartModel()
    assert 140.0 < cold.mean_s() < 170.0
    assert cold.quantile_s(0.5) < cold.mean_s() < cold.quantile_s(0.99)
    assert weighted_quantile(np.asarray([1.0, 2.0, 3.0]), np.asarray([1.0, 1.0, 8.0]), 0.5) == 3.0
    assert np.isnan(weighted_quantile(np.zeros(0), np.zeros(0), 0.5))


def _arrivals(times_s: list[float]) -> Arrivals:
    n = len(times_s)
    counts = np.zeros(int(max(times_s) // 600.0) + 1)
    for t in times_s:
        counts[int(t // 600.0)] += 1
    return Arrivals(
        times_s=np.asarray(times_s),
        weights=np.ones(n),
        service_s=np.full(n, 1.0),
        window_counts=counts,
    )


def test_wait_priced_hits_weigh_each_request_by_the_wait_it_would_suffer() -> None:
    spec = ScalingSpec(name="m", expected_cold_start_s=100.0)
    prep = prepare(_arrivals([1000.0, 1050.0, 1099.0, 1200.0]), 1800.0, spec, 64)
    # From the arrival at 1000 s: itself (waits it all), one half-way in, one at the very end.
    assert prep.gap_hits[0] == 3.0
    assert prep.gap_wait_hits[0] == pytest.approx(1.0 + 0.5 + 0.01)
    assert prep.gap_wait_hits[-1] == 1.0


def test_keepalive_learnt_net_of_the_forecast_skips_covered_gaps() -> None:
    # One request at 10:00 every day: the forecast learns that slot, and every 24-h gap ends in it.
    day_s = 86_400.0
    times = [d * day_s + 36_000.0 for d in range(12)]
    spec = SimConfig().spec("m", 1.0)
    prep = prepare(_arrivals(times), 12 * day_s, spec, 64)
    plain = POLICY_MIXES["slurmless-hist"]
    for mix, covered in ((plain, True), (replace(plain, net_of_forecast=False), False)):
        replay = _Replay("m", "x", prep, mix, spec, ColdStartModel(), np.random.default_rng(0), (), False)
        replay._learn_until(12 * day_s)
        assert replay.hist.total == 11
        assert (sum(replay.hist.hits) + replay.hist.overflow_hits == 0.0) is covered
