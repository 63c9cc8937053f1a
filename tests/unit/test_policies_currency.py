"""policies.currency: one exchange rate prices keep-alive and pre-warm; history shrinks toward a prior."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from policies import currency
from policies.combine import POLICY_MIXES, decide
from policies.forecast import new_forecast, observe_slot
from policies.types import GapHistory, LoadSnapshot, ModelState, ScalingSpec

SPEC = ScalingSpec(name="m", expected_cold_start_s=155.0, reload_idle_s=93.0)
WEEKDAY_NOON = 4 * 86_400.0 + 12 * 3600.0  # 1970-01-05 was a Monday
WEEKDAY_NIGHT = 4 * 86_400.0 + 1 * 3600.0


def history(gaps: list[tuple[float, float, float]]) -> GapHistory:
    """(start, gap, wait) triples folded in."""
    hist = currency.empty_history()
    return currency.observe(
        hist,
        [currency.cell(s, g) for s, g, _ in gaps],
        [1.0] * len(gaps),
        [w for _, _, w in gaps],
    )


def test_cells_agree_between_scalar_and_bulk_paths() -> None:
    rng = np.random.default_rng(0)
    starts = rng.uniform(0, 30 * 86_400.0, 2_000)
    gaps = np.exp(rng.uniform(np.log(60.0), np.log(10 * 86_400.0), 2_000))
    bulk = currency.history_cells(starts, gaps)
    assert [currency.cell(float(s), float(g)) for s, g in zip(starts, gaps, strict=True)] == bulk.tolist()
    assert bulk.min() >= 0 and bulk.max() < currency.CELLS


def test_weekend_and_time_of_day_have_their_own_buckets() -> None:
    saturday = 2 * 86_400.0  # 1970-01-03
    assert currency.bucket(saturday + 3600) >= currency.DAY_BLOCKS
    assert currency.bucket(WEEKDAY_NOON) < currency.DAY_BLOCKS
    assert currency.bucket(WEEKDAY_NOON) != currency.bucket(WEEKDAY_NIGHT)


def test_gaps_worth_their_wait_are_held_and_cheap_waits_are_not() -> None:
    # Gaps of ~10 minutes, each ending in a burst that a cold start would make wait 20 x 155 s.
    hist = history([(WEEKDAY_NOON + k * 60, 600.0, 20 * 155.0) for k in range(50)])
    held_s, why = currency.keepalive_s(hist, SPEC, 1.0, WEEKDAY_NOON)
    assert held_s > 600.0
    assert "rate 1," in why
    cheap_s, _ = currency.keepalive_s(hist, SPEC, 0.001, WEEKDAY_NOON)
    assert cheap_s == currency.GAP_MIN_S


def test_keepalive_never_shrinks_as_waiting_gets_dearer() -> None:
    rng = np.random.default_rng(1)
    gaps = np.exp(rng.uniform(np.log(60.0), np.log(20_000.0), 300))
    hist = history([(WEEKDAY_NOON, float(g), float(rng.uniform(100, 2_000))) for g in gaps])
    windows = [currency.keepalive_s(hist, SPEC, rate, WEEKDAY_NOON)[0] for rate in (0.001, 0.01, 0.1, 1.0, 10.0)]
    assert windows == sorted(windows)
    assert windows[0] < windows[-1]


def test_keepalive_follows_the_bucket_the_gap_starts_in() -> None:
    # Short gaps at noon, day-long gaps at night: holding pays at noon only.
    noon = [(WEEKDAY_NOON, 300.0, 5 * 155.0)] * 200
    night = [(WEEKDAY_NIGHT, 50_000.0, 5 * 155.0)] * 200
    hist = history(noon + night)
    assert currency.keepalive_s(hist, SPEC, 1.0, WEEKDAY_NOON)[0] >= 300.0
    assert currency.keepalive_s(hist, SPEC, 1.0, WEEKDAY_NIGHT)[0] < 300.0


def test_little_history_borrows_from_the_prior_and_much_history_does_not() -> None:
    prior_s, _ = currency.keepalive_s(None, SPEC, 1.0, WEEKDAY_NOON)
    assert prior_s == currency.keepalive_s(currency.empty_history(), SPEC, 1.0, WEEKDAY_NOON)[0]
    own = [(WEEKDAY_NOON, 3_000.0, 50 * 155.0)]
    one = currency.keepalive_s(history(own), SPEC, 1.0, WEEKDAY_NOON)[0]
    many = currency.keepalive_s(history(own * 500), SPEC, 1.0, WEEKDAY_NOON)[0]
    assert many > 3_000.0
    # One gap moves the window less than five hundred of the same.
    assert abs(one - prior_s) <= abs(many - prior_s)


def test_prewarm_threshold_falls_as_the_rate_rises() -> None:
    hist = history([(WEEKDAY_NOON, 2_000.0, 3 * 155.0)] * 40)
    thresholds = [currency.prewarm_threshold(hist, SPEC, rate, 600.0) for rate in (0.01, 0.1, 1.0, 10.0)]
    assert thresholds == sorted(thresholds, reverse=True)
    assert thresholds[-1] < 0.5
    assert thresholds[0] > 1.0  # so cheap a wait that no slot is worth warming


def test_decide_holds_with_the_currency_window_and_says_why() -> None:
    hist = history([(WEEKDAY_NOON, 900.0, 30 * 155.0)] * 100)
    mix = POLICY_MIXES["slurmless"]
    load = LoadSnapshot(held_replicas=1, ready_replicas=1, last_activity_s=WEEKDAY_NOON)
    state = ModelState(spec=SPEC, load=load, mix=mix, gaps=hist)
    window_s, _ = currency.keepalive_s(hist, SPEC, mix.exchange_rate, WEEKDAY_NOON)
    holding = decide(state, WEEKDAY_NOON + window_s - 1)
    assert holding.replicas == 1 and holding.keepalive_s == window_s
    assert any("currency keep-alive" in r.detail for r in holding.reasons)
    assert decide(state, WEEKDAY_NOON + window_s + 1).replicas == 0


def test_decide_prewarms_a_slot_the_forecast_expects_when_the_rate_pays_for_it() -> None:
    fc = new_forecast(600.0)
    for day in range(7):
        fc = observe_slot(fc, day * 86_400.0 + 9 * 3600.0, 50.0)
    hist = history([(WEEKDAY_NIGHT, 30_000.0, 40 * 155.0)] * 30)
    state_at = 4 * 86_400.0 + 9 * 3600.0 + 10.0
    dear = ModelState(spec=SPEC, mix=POLICY_MIXES["slurmless"].__class__(
        keepalive="currency", forecast=True, exchange_rate=1.0), forecast=fc, gaps=hist)  # fmt: skip
    cheap = ModelState(spec=SPEC, mix=dear.mix.__class__(keepalive="currency", forecast=True, exchange_rate=1e-4),
                       forecast=fc, gaps=hist)  # fmt: skip
    assert decide(dear, state_at).replicas == 1
    assert decide(cheap, state_at).replicas == 0


def test_observe_rejects_cells_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        currency.observe(currency.empty_history(), [currency.CELLS], [1.0], [1.0])


def test_a_ten_minute_shadow_holds_short_gaps_and_pays_window_and_reload_for_long_ones() -> None:
    counts = np.zeros(currency.NBINS)
    short, long = currency.gap_bin(120.0), currency.gap_bin(3 * 3600.0)
    counts[short], counts[long] = 2.0, 1.0
    expected = 2 * currency.MIDS_S[short] + currency.SHADOW_KEEPALIVE_S + SPEC.reload_idle_s
    assert currency.shadow_spend_s(counts, SPEC) == pytest.approx(expected)


def test_rate_for_budget_is_the_largest_rate_within_it() -> None:
    rates = np.asarray([0.01, 0.1, 1.0])
    assert currency.rate_for_budget(np.asarray([10.0, 20.0, 30.0]), 25.0, rates) == 0.1
    assert currency.rate_for_budget(np.asarray([10.0, 20.0, 30.0]), 30.0, rates) == 1.0
    assert currency.rate_for_budget(np.asarray([10.0, 20.0, 30.0]), 5.0, rates) == 0.01


def test_the_vectorised_windows_are_the_single_rate_windows() -> None:
    rng = np.random.default_rng(3)
    hist = history(
        [
            (float(rng.uniform(0, 7 * 86_400)), float(g), float(rng.uniform(0, 3_000)))
            for g in rng.exponential(2_000, 400) + 60
        ]
    )
    c, w = currency._tables(hist, SPEC.expected_cold_start_s)
    table = currency._windows(c, w, SPEC, currency.RATE_GRID)
    for k, rate in enumerate(currency.RATE_GRID[::7]):
        assert currency._compute_priced(hist, SPEC, float(rate))[0] == tuple(table[:, 7 * k])


def test_the_budget_rate_spends_at_most_its_share_of_a_ten_minute_keepalive() -> None:
    rng = np.random.default_rng(4)
    # A model whose gaps of 5 to 60 minutes end in bursts: holding them is worth something.
    gaps = [(WEEKDAY_NOON, float(g), 15 * 155.0) for g in np.exp(rng.uniform(np.log(300), np.log(3_600), 200))]
    hist = history(gaps)
    c, _w = currency._tables(hist, SPEC.expected_cold_start_s)
    shadow = currency.shadow_spend_s(c, SPEC)
    curve = currency.spend_curve_s(hist, SPEC)
    rates = []
    for margin in (0.5, 1.0, 3.0):
        rate = currency.budget_rate(hist, SPEC, margin)
        k = int(np.flatnonzero(rate == currency.RATE_GRID)[0])
        assert curve[k] <= margin * shadow
        # The next rate of the grid would overspend: the budget is used, not only respected.
        assert k == currency.RATE_GRID.size - 1 or curve[k + 1] > margin * shadow
        rates.append(rate)
    assert rates[0] <= rates[1] <= rates[2] and rates[0] < rates[2]


def test_a_model_budget_never_plans_more_idle_than_a_ten_minute_keepalive() -> None:
    # Gaps of 15 minutes, each ending in a burst a cold start would make wait 200 x 155 s: at the default
    # rate alone worth holding, but holding costs more than a 10-minute keep-alive would spend on them.
    hist = history([(WEEKDAY_NOON, 900.0, 200 * 155.0)] * 100)
    mix = replace(POLICY_MIXES["slurmless"], budget_margin=1.0)
    assert currency.MIDS_S[currency.gap_bin(900.0)] > 600.0 + SPEC.reload_idle_s
    assert currency.keepalive_s(hist, SPEC, mix.exchange_rate, WEEKDAY_NOON)[0] > 900.0
    load = LoadSnapshot(held_replicas=1, ready_replicas=1, last_activity_s=WEEKDAY_NOON)
    decision = decide(ModelState(spec=SPEC, load=load, mix=mix, gaps=hist), WEEKDAY_NOON + 1)
    assert decision.keepalive_s is not None and decision.keepalive_s < 600.0


def test_the_site_rate_lets_busy_models_outspend_ten_minutes_where_their_bursts_pay() -> None:
    # One model's 15-minute gaps end in bursts (worth holding), another's 15-minute gaps end in one
    # request each (not worth it). Alone the bursty one could not hold within a 10-minute budget; with
    # the quiet model's unspent budget, the site's one rate holds the bursty model's gaps.
    bursty = history([(WEEKDAY_NOON, 900.0, 200 * 155.0)] * 100)
    quiet = history([(WEEKDAY_NOON, 900.0, 155.0)] * 100)
    assert currency.keepalive_s(bursty, SPEC, currency.budget_rate(bursty, SPEC, 1.0), WEEKDAY_NOON)[0] < 900.0
    rate = currency.site_rate([(bursty, SPEC), (quiet, SPEC)], 1.0)
    assert currency.keepalive_s(bursty, SPEC, rate, WEEKDAY_NOON)[0] > 900.0
    assert currency.keepalive_s(quiet, SPEC, rate, WEEKDAY_NOON)[0] < 900.0
    # And the site's planned spending stays within its share of the 10-minute keep-alive's.
    terms = [currency.budget_terms(h, SPEC) for h in (bursty, quiet)]
    k = int(np.flatnonzero(rate == currency.SITE_RATES)[0])
    assert sum(c[k] for c, _ in terms) <= sum(s for _, s in terms)
    # Nothing recorded anywhere yet: nothing to ration, the rate is the highest a site may choose.
    assert currency.site_rate([(None, SPEC)], 1.0) == currency.SITE_RATES[-1]
