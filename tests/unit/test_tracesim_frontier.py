"""Frontiers, the clairvoyant bound, client splits, no-history slices and input errors of `slurmless simulate`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.unit.test_tracesim import trace_dir, write_chunk  # noqa: F401  (the fixture is reused)
from tracesim.arrivals import load_service_times
from tracesim.cli import app
from tracesim.frontier import Point, cold_at_idle, select_clients, slice_days
from tracesim.run import SimConfig, mix_for, run_traces
from tracesim.trace import TraceError, load_trace_dir


def test_a_missing_service_trace_is_an_error_not_a_flat_default(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="not found"):
        load_service_times(tmp_path / "AzureLLMInferenceTrace_conv.csv")


def test_the_cli_says_in_one_line_what_is_wrong(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--trace", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "not found" in result.output
    result = CliRunner().invoke(app, ["--trace", str(tmp_path), "--policies", "slurmless@-1"])
    assert result.exit_code == 2 and "unknown policy" in result.output


def test_policy_names_carry_their_knob() -> None:
    assert mix_for("keepalive-7m").fixed_keepalive_s == 420.0
    assert mix_for("hybrid-p90").keepalive_percentile == 90.0
    assert mix_for("slurmless@0.5").exchange_rate == 0.5
    assert mix_for("clairvoyant@2").keepalive == "oracle"
    assert mix_for("slurmless@0.5").budget_margin is None
    per_model = mix_for("slurmless-budget@1.5:0.1")
    assert (per_model.budget_margin, per_model.exchange_rate) == (1.5, 0.1)
    assert mix_for("slurmless-site@0.8").keepalive == "currency"
    from tracesim.budget import site_share

    assert site_share("slurmless-site@0.8") == 0.8 and site_share("slurmless@0.8") is None
    for bad in ("keepalive-0m", "hybrid-p0", "slurmless@0", "clairvoyant@x", "nope", "slurmless-site@0"):
        with pytest.raises(ValueError, match="unknown policy"):
            mix_for(bad)


def test_splits_are_disjoint_halves(trace_dir: Path) -> None:  # noqa: F811
    for i in range(3, 10):
        write_chunk(trace_dir / f"chunk-{i}-trace.csv", np.full(6, 0.01))
    traces = load_trace_dir(trace_dir)
    names = {t.name for t in traces}
    for a, b in (("even", "odd"), ("randA3", "randB3")):
        left = {t.name for t in select_clients(traces, a)}
        right = {t.name for t in select_clients(traces, b)}
        assert left and right and not left & right and left | right == names
    assert {t.name for t in select_clients(traces, "randA3")} != {t.name for t in select_clients(traces, "randA4")}
    with pytest.raises(TraceError, match="unknown client split"):
        select_clients(traces, "thirds")


def test_a_day_slice_starts_from_no_history(trace_dir: Path) -> None:  # noqa: F811
    traces = load_trace_dir(trace_dir)
    day = slice_days(traces, 1, 1)
    assert {t.name for t in day} == {"0", "1", "2"}
    assert all(t.ts_s[0] == 0.0 and t.end_s == 86_400.0 for t in day)
    with pytest.raises(TraceError):
        slice_days(traces, 0, 0)


def test_the_clairvoyant_bound_trades_like_its_price(trace_dir: Path) -> None:  # noqa: F811
    traces = load_trace_dir(trace_dir)
    config = SimConfig(policies=("keepalive-10m", "clairvoyant@0.001", "clairvoyant@1000"), workers=1, service_csv=None)
    s = run_traces(traces, config).summaries
    cheap, dear, fixed = s["clairvoyant@0.001"], s["clairvoyant@1000"], s["keepalive-10m"]
    # Dear waiting: every gap is held, so only each model's first request meets a cold start.
    assert dear.cold_starts == 3
    assert dear.cold_requests < fixed.cold_requests and dear.idle_gpu_hours > fixed.idle_gpu_hours
    # Cheap waiting: idle time is what it saves.
    assert cheap.idle_gpu_hours < fixed.idle_gpu_hours and cheap.cold_starts > fixed.cold_starts


def test_a_frontier_is_read_at_an_idle_budget_on_its_envelope() -> None:
    pts = [Point("a", "f", 1e-2, 10.0), Point("b", "f", 2e-2, 15.0), Point("c", "f", 1e-3, 20.0)]
    assert cold_at_idle(pts, 5.0) is None
    assert cold_at_idle(pts, 10.0) == pytest.approx(1e-2)
    # "b" is dominated (more cold for more idle): the envelope runs from "a" to "c", log-linearly.
    assert cold_at_idle(pts, 15.0) == pytest.approx(np.sqrt(1e-2 * 1e-3))
    assert cold_at_idle(pts, 99.0) == pytest.approx(1e-3)


def test_an_idle_budget_moves_the_exchange_rate_until_spending_tracks_it(trace_dir: Path) -> None:  # noqa: F811
    from tracesim.budget import run_budget

    traces = load_trace_dir(trace_dir)
    config = SimConfig(workers=2, service_csv=None)
    tight, tight_rates = run_budget(traces, config, 0.5)
    loose, loose_rates = run_budget(traces, config, 200.0)
    assert max(tight_rates) < min(loose_rates)
    (t,) = tight.summaries.values()
    (lo,) = loose.summaries.values()
    assert t.idle_gpu_hours < lo.idle_gpu_hours and t.cold_requests > lo.cold_requests
    with pytest.raises(ValueError, match="positive"):
        run_budget(traces, config, 0.0)


def test_an_idle_budget_is_met_within_a_few_percent(trace_dir: Path) -> None:  # noqa: F811
    from tracesim.budget import run_budget

    traces = load_trace_dir(trace_dir)
    config = SimConfig(workers=1, service_csv=None)
    days = max(t.end_s for t in traces) / 86_400.0
    # Budgets inside what the rates can spend: between the cheapest and the dearest rate's idle.
    ends = run_traces(traces, replace(config, policies=("slurmless@0.0001", "slurmless@1")))
    low, high = (ends.summaries[p].idle_gpu_hours / days for p in ("slurmless@0.0001", "slurmless@1"))
    assert high > 1.5 * low
    for budget in (low + 0.3 * (high - low), low + 0.7 * (high - low)):
        report, _rates = run_budget(traces, config, budget)
        (summary,) = report.summaries.values()
        assert summary.idle_gpu_hours == pytest.approx(budget * days, rel=0.1)


def test_a_share_of_the_ten_minute_keepalive_is_a_budget_that_follows_the_traffic(trace_dir: Path) -> None:  # noqa: F811
    from tracesim.budget import run_budget

    traces = load_trace_dir(trace_dir)
    config = SimConfig(workers=1, service_csv=None)
    small, small_rates = run_budget(traces, config, None, shadow_share=0.3)
    large, large_rates = run_budget(traces, config, None, shadow_share=3.0)
    assert sum(small_rates) < sum(large_rates)
    assert all(s <= lg for s, lg in zip(small_rates, large_rates, strict=True))
    (s,) = small.summaries.values()
    (lg,) = large.summaries.values()
    assert s.idle_gpu_hours < lg.idle_gpu_hours and s.cold_requests >= lg.cold_requests
    with pytest.raises(ValueError, match="either"):
        run_budget(traces, config, 1.0, shadow_share=1.0)
