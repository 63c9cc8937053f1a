"""The ETA told to waiting clients stays honest when a start outlasts what was learnt."""

from __future__ import annotations

import pytest

from policies.eta import ready_eta_s, remaining_s
from queue_gateway.progress import queue_comment
from warmpool.phase import ModelPhase, Phase

NOW = 1_000_000.0


def test_remaining_is_the_p95_of_the_longer_past_loads() -> None:
    samples = [5.0] * 18 + [60.0, 65.0]
    assert remaining_s(samples, 0.0, default_s=300) == 60.0  # p95 of all twenty
    assert remaining_s(samples, 4.0, default_s=300) == 56.0
    # Past the short loads only the long ones describe this start: the estimate grows.
    assert remaining_s(samples, 10.0, default_s=300) == 55.0
    assert remaining_s(samples, 64.0, default_s=300) == 1.0


def test_past_every_learnt_load_the_eta_is_unknown() -> None:
    assert remaining_s([5.0, 5.0, 5.0], 6.0, default_s=300) is None
    assert remaining_s([], 299.0, default_s=300) == 1.0
    assert remaining_s([], 301.0, default_s=300) is None


def test_a_load_slower_than_anything_learnt_never_promises_an_eta_in_the_past() -> None:
    """The simulator taught 5 s; the real engine takes 65 s: walk its load second by second."""
    started = NOW
    for t in range(66):
        now = started + t
        eta = ready_eta_s(now_s=now, load_samples_s=[5.0] * 10, default_load_s=300, loading_since_s=started)
        assert eta is None or eta > now, (t, eta)
    assert (
        ready_eta_s(now_s=started + 6, load_samples_s=[5.0] * 10, default_load_s=300, loading_since_s=started) is None
    )


@pytest.mark.parametrize(
    ("since", "est", "expected"),
    [
        (NOW - 5, NOW + 100, NOW + 100 + 20),  # Slurm's estimate ahead: its start plus the whole load
        (NOW - 5, NOW - 1, NOW + 20),  # Slurm's estimate passed: it starts any moment
        (NOW - 5, None, NOW + 25 + 20),  # no estimate: the queue waits learnt, given 5 s waited
        (NOW - 40, None, None),  # waited longer than any learnt queue wait
    ],
)
def test_pending_eta(since: float, est: float | None, expected: float | None) -> None:
    eta = ready_eta_s(
        now_s=NOW,
        load_samples_s=[20.0],
        default_load_s=300,
        queue_samples_s=[30.0],
        default_queue_s=60,
        queued_since_s=since,
        est_start_s=est,
    )
    assert eta == expected


def test_progress_comment_says_unknown_rather_than_zero() -> None:
    late = ModelPhase(phase=Phase.LOADING, eta_s=NOW - 3)
    assert queue_comment(0, late, now_s=NOW) == b": slurmless queue position=0 phase=loading eta=unknown\n\n"
    unknown = ModelPhase(phase=Phase.PENDING, eta_s=None, slurm_reason="Priority")
    assert b"eta=unknown" in queue_comment(2, unknown, now_s=NOW)
    soon = ModelPhase(phase=Phase.LOADING, eta_s=NOW + 0.2)
    assert b"eta_s=1" in queue_comment(0, soon, now_s=NOW)
    assert b"eta" not in queue_comment(0, ModelPhase(phase=Phase.READY), now_s=NOW)
