"""What one tick did (`TickReport`) and how long each of its steps took (`Stopwatch`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class TickReport:
    """What one tick did, for tests and logs."""

    submitted: list[str] = field(default_factory=list)
    ready: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    draining: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    desired: dict[str, int] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    """Models whose instances, routing or history the tick changed (their snapshot is read again)."""
    slurm_error: str | None = None
    steps_ms: dict[str, float] = field(default_factory=dict)
    """Wall time of each step of the tick (for the benchmark and slow-tick diagnosis)."""

    def changed(self) -> bool:
        """Whether the tick changed any instance (otherwise the records it read are still current)."""
        return bool(self.submitted or self.ready or self.failed or self.draining or self.cancelled or self.gone)


class Stopwatch:
    """Records the wall time since the previous call under each step's name (a measurement, not a decision)."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into = into
        self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.into[name] = (now - self.last) * 1000
        self.last = now
