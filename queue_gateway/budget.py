"""The two wait budgets and Retry-After, as pure functions of the time.

Rule for a request that waits through a cold start: the cold budget counts from when it was
queued, as long as no instance of its model is ready. From the moment the request first sees the
model ready (or from when it was queued, if the model was warm then) the warm budget counts
instead, so a request that waited minutes for a cold start still gets the full warm budget to be
served once the model is up, and never more.
"""

from __future__ import annotations

from dataclasses import dataclass

WARM_RETRY_AFTER_S = 2.0
"""Retry-After of a 429 (queue full while warm): slots free up within seconds."""
COLD_RETRY_AFTER_S = 30.0
"""Retry-After of a 503 while cold when the launcher gave no ETA."""


@dataclass(frozen=True, slots=True)
class Budgets:
    """The wait budgets in effect for one model."""

    cold_s: float
    warm_s: float


def wait_deadline_s(enqueued_s: float, budgets: Budgets, warm_since_s: float | None) -> float:
    """The instant a queued request gives up; `warm_since_s` is None while the model is cold."""
    if warm_since_s is None:
        return enqueued_s + budgets.cold_s
    return max(enqueued_s, warm_since_s) + budgets.warm_s


def retry_after_s(*, now_s: float, warm: bool, eta_s: float | None) -> float:
    """What to put in Retry-After: soon when warm, the phase's ETA (epoch s) when cold and known."""
    if warm:
        return WARM_RETRY_AFTER_S
    if eta_s is not None and eta_s > now_s:
        return eta_s - now_s
    return COLD_RETRY_AFTER_S
