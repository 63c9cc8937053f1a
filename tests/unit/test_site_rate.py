"""The launcher's default rate (`launcher.site_rate.SiteRate`): the site's rate, chosen once an hour."""

from __future__ import annotations

from launcher.site_rate import HOUR_S, SiteRate
from policies import currency
from policies.types import GapHistory, ScalingSpec
from tests.unit.test_policies_currency import SPEC, WEEKDAY_NOON, history

BURSTY = history([(WEEKDAY_NOON, 900.0, 200 * 155.0)] * 100)
QUIET = history([(WEEKDAY_NOON, 900.0, 155.0)] * 100)


def test_no_share_means_the_fixed_rate() -> None:
    assert SiteRate(None, 0.03).at(0.0, lambda: [(BURSTY, SPEC)]) is None


def test_the_fixed_rate_until_a_gap_is_recorded_then_the_sites_rate_each_hour() -> None:
    seen: list[GapHistory | None] = [None]
    reads: list[float] = []

    def models() -> list[tuple[GapHistory | None, ScalingSpec]]:
        reads.append(1.0)
        return [(seen[0], SPEC)]

    rate = SiteRate(0.9, 0.03)
    start = 10 * HOUR_S + 5.0
    assert rate.at(start, models) == 0.03  # nothing recorded yet: where the simulator starts too
    seen[0] = BURSTY
    assert rate.at(start + 60.0, models) == 0.03  # the same hour: not chosen again, histories not read
    assert len(reads) == 1
    expected = currency.site_rate([(BURSTY, SPEC)], 0.9)
    assert rate.at(11 * HOUR_S, models) == expected
    seen[0] = QUIET
    assert rate.at(11 * HOUR_S + 3599.0, models) == expected
    assert rate.at(12 * HOUR_S, models) == currency.site_rate([(QUIET, SPEC)], 0.9) != expected


def test_a_launcher_starting_on_recorded_gaps_prices_them_at_once() -> None:
    rate = SiteRate(0.9, 0.03)
    assert rate.at(5.0, lambda: [(BURSTY, SPEC), (QUIET, SPEC)]) == currency.site_rate(
        [(BURSTY, SPEC), (QUIET, SPEC)], 0.9
    )
