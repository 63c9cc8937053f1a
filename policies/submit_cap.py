"""A cap on failed submissions across every model: at most `cap` in any window of `window_s`.

Each model backs off on its own (`launcher.history.backoff_delay_s`), but a hundred tenants with
a spec Slurm refuses would still send a hundred refused `sbatch` calls per backoff step to a
controller the whole site shares. The cap holds back submissions of unproven models (ones that
failed to start, or never served) while the window is full; a model that served before is never
held back by other models' failures. Pure: the caller passes the time and the failures it saw.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["may_submit", "recent_failures"]


def recent_failures(failed_at_s: Sequence[float], now_s: float, window_s: float) -> list[float]:
    """The failures still inside the window ending at `now_s`, oldest first."""
    return sorted(t for t in failed_at_s if now_s - t < window_s)


def may_submit(failed_at_s: Sequence[float], now_s: float, *, window_s: float, cap: int, proven: bool) -> bool:
    """Whether a submission may go out now: always for a proven model, else while the window has room."""
    return proven or len(recent_failures(failed_at_s, now_s, window_s)) < cap
