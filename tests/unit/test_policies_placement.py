"""Placement: soonest start wins; ties prefer preemptible, then longer limits, then given order."""

from __future__ import annotations

from policies.placement import PlacementOption, pick_placement


def test_soonest_wins() -> None:
    opts = [PlacementOption("gpu", None, 500.0), PlacementOption("gpu-short", None, 20.0)]
    assert pick_placement(opts) == opts[1]


def test_ties_prefer_preemptible_then_longer_limit() -> None:
    opts = [
        PlacementOption("gpu", "normal", 0.0, time_limit_s=3600.0),
        PlacementOption("scavenger", "preempt", 30.0, preemptible=True, time_limit_s=3600.0),
        PlacementOption("scavenger-long", "preempt", 40.0, preemptible=True, time_limit_s=7200.0),
    ]
    assert pick_placement(opts) == opts[2]
    assert pick_placement(opts, tie_window_s=0.0) == opts[0]


def test_a_preemptible_placement_that_starts_much_later_loses() -> None:
    opts = [
        PlacementOption("gpu", "normal", 0.0),
        PlacementOption("scavenger", "preempt", 600.0, preemptible=True),
    ]
    assert pick_placement(opts) == opts[0]


def test_empty() -> None:
    assert pick_placement([]) is None
