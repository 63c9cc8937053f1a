"""How long a cold start takes: Slurm queue wait, then loading the model.

Defaults, and why:
- Queue wait: lognormal, median 45 s, sigma 0.8 (mean ~62 s, p99 ~290 s). Queue waits on a shared
  cluster are heavy-tailed and well fitted by lognormals; a serving partition or a high-priority QOS
  with backfill (`--time-min`) typically starts a 1-GPU job within a minute, with occasional
  multi-minute waits when the partition is full.
- Load time: lognormal, median 90 s, sigma 0.25 (~60-140 s). A 7-8B model is ~15 GB in bf16; reading it
  from a shared parallel filesystem at 0.3-1 GB/s takes 15-50 s, and vLLM's start-up (CUDA init,
  weight placement, KV-cache profiling, CUDA-graph capture) adds 30-60 s.
The GPU is held from the end of the queue wait (the job runs) until the replica is released.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ColdStartModel:
    """A cold start = lognormal queue wait + lognormal load time."""

    queue_median_s: float = 45.0
    queue_sigma: float = 0.8
    load_median_s: float = 90.0
    load_sigma: float = 0.25

    def sample(self, rng: np.random.Generator) -> tuple[float, float]:
        """One (queue wait, load time) draw."""
        q = self.queue_median_s * float(np.exp(self.queue_sigma * rng.standard_normal()))
        ld = self.load_median_s * float(np.exp(self.load_sigma * rng.standard_normal()))
        return q, ld

    def mean_s(self) -> float:
        """Expected total cold start (lognormal means add)."""
        return float(
            self.queue_median_s * np.exp(self.queue_sigma**2 / 2) + self.load_median_s * np.exp(self.load_sigma**2 / 2)
        )

    def mean_load_s(self) -> float:
        """Expected load time: the idle GPU-seconds of a cold start (the queue wait holds no GPU)."""
        return float(self.load_median_s * np.exp(self.load_sigma**2 / 2))

    def quantile_s(self, q: float, n: int = 200_000) -> float:
        """A quantile of the total, by a fixed-seed Monte Carlo (the sum has no closed form)."""
        rng = np.random.default_rng(12345)
        total = self.queue_median_s * np.exp(self.queue_sigma * rng.standard_normal(n)) + self.load_median_s * np.exp(
            self.load_sigma * rng.standard_normal(n)
        )
        return float(np.quantile(total, q))
