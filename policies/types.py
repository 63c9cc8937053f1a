"""The data the warm-pool policies take and give back.

Every policy is a pure function of (state, now_s): no I/O, no clock, no randomness. Times are float
epoch seconds; durations are seconds with `_s` in their names. All shapes are frozen dataclasses so a
runner (the launcher, or the trace simulator) can hold them, replace fields, and pass them around.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

INF_S = math.inf


@dataclass(frozen=True)
class Reason:
    """Why one policy asked for a number of replicas (one line of the events stream)."""

    policy: str
    replicas: int
    detail: str


@dataclass(frozen=True)
class Decision:
    """The desired replicas for one model, with every policy's reason.

    `recheck_at_s` is the earliest instant at which the answer can change if nothing happens (no
    request arrives or ends, no replica changes state), the keep-alive aside. `keepalive_s` is the
    idle-to-zero window holding the model (None when the keep-alive does not hold it): that hold ends
    `keepalive_s` after the last activity, so it moves with every request. A runner may tick more
    often than these instants; it never needs to tick less often.
    """

    replicas: int
    reasons: tuple[Reason, ...]
    recheck_at_s: float = INF_S
    keepalive_s: float | None = None

    def explain(self) -> str:
        """One line an operator reads: which policy asked for what."""
        parts = [f"{r.policy}={r.replicas} ({r.detail})" for r in self.reasons]
        return f"desired={self.replicas}: " + "; ".join(parts)


@dataclass(frozen=True)
class LoadSnapshot:
    """What a model is doing right now, as the gateway and the instances report it.

    `last_activity_s` is the end of the last request (or its arrival while it is in flight); None when
    the model has never served anything. `num_requests_waiting` and `kv_cache_usage_perc` are vLLM's
    metrics summed / averaged over ready instances, None when not scraped.
    """

    queue_depth: int = 0
    oldest_wait_s: float = 0.0
    in_flight: float = 0.0
    ready_replicas: int = 0
    held_replicas: int = 0
    last_activity_s: float | None = None
    num_requests_waiting: float | None = None
    kv_cache_usage_perc: float | None = None
    recent_rate_per_s: float = 0.0


@dataclass(frozen=True)
class ScalingSpec:
    """Per-model settings the policies need, derived from a registered `warmpool.specs.ModelSpec`.

    `expected_cold_start_s` is the mean Slurm queue wait plus load time (it prices a cold start and
    sets the forecast's lead); `cold_start_p99_s` is the lead for schedules, which promise readiness.
    `cold_start_value_s` is how many idle GPU-seconds one avoided cold start is worth: the exchange
    rate the keep-alive and forecast policies trade idle time against cold starts with.
    `cold_request_value_s` prices each request a cold start delays (idle GPU-seconds per delayed
    request); the keep-alive prices a cold start at `keepalive_event_value_s` (default: the above)
    plus that times the requests it would delay, so it spends idle time where cold starts hurt most.
    """

    name: str
    min_replicas: int = 0
    max_replicas: int = 8
    gpus_per_replica: int = 1
    target_concurrency: float = 16.0
    expected_cold_start_s: float = 150.0
    cold_start_p99_s: float = 420.0
    cold_start_value_s: float = 600.0
    cold_request_value_s: float = 0.0
    keepalive_event_value_s: float | None = None
    keepalive_floor_factor: float = 1.0
    default_keepalive_s: float = 600.0
    max_keepalive_s: float = 4 * 3600.0
    mean_service_s: float = 5.0
    reload_idle_s: float = 0.0
    min_keepalive_s: float = 0.0
    """An operator's own lower bound on the keep-alive (the model policy's `keepalive_min_s`); 0: none."""
    """Idle GPU-seconds a cold start costs besides the wait: the replica loads on a GPU it already holds."""

    @property
    def keepalive_floor_s(self) -> float:
        """Never scale to zero sooner than this after the last request: cold starts cost minutes."""
        return self.keepalive_floor_factor * self.expected_cold_start_s


@dataclass(frozen=True)
class IdleHistogram:
    """Idle times between a model's requests, in bins of `bin_s` up to `bins * bin_s`.

    `overflow` counts idle times beyond the range. `keepalive_s` is the keep-alive learnt from the
    histogram (recomputed by `policies.idle.observe_idle`); None while history is too short.
    `hits` sums, per bin, the requests that arrived within one expected cold start after each gap ended:
    the requests a cold start at the end of that gap would have delayed.
    """

    bin_s: float = 60.0
    counts: tuple[int, ...] = (0,) * 240
    overflow: int = 0
    hits: tuple[float, ...] = (0.0,) * 240
    overflow_hits: float = 0.0
    keepalive_s: float | None = None

    @property
    def total(self) -> int:
        return sum(self.counts) + self.overflow


@dataclass(frozen=True)
class SeasonalForecast:
    """A seasonal EWMA per time slot: P(at least one request in the slot) and the request rate.

    Day slots index the time of day, week slots the time of week; `*_seen` count how many times each
    slot was observed so that an unseen slot says "don't know" rather than "no demand".
    `utc_offset_s` shifts epoch time to local time so slots follow the users' day.
    """

    slot_s: float = 600.0
    alpha: float = 0.3
    utc_offset_s: float = 0.0
    day_p: tuple[float, ...] = ()
    day_rate: tuple[float, ...] = ()
    day_seen: tuple[int, ...] = ()
    week_p: tuple[float, ...] = ()
    week_rate: tuple[float, ...] = ()
    week_seen: tuple[int, ...] = ()


@dataclass(frozen=True)
class Occurrence:
    """One scheduled warm window: `replicas` ready from `start_s` until `end_s`."""

    start_s: float
    end_s: float
    replicas: int
    source: str


@dataclass(frozen=True)
class GapHistory:
    """A model's idle gaps and the waiting a cold start at their end would have caused.

    Cells are (time-of-week bucket of the gap's start, gap-length bin); `counts` holds how many gaps
    fell in each cell and `waits_s` the user-seconds of waiting a cold start beginning at each gap's
    end would have caused (every request arriving within one expected cold start of the end waits the
    rest of it). Layout and bins: `policies.currency`. Fixed size, whatever the traffic.
    """

    counts: tuple[float, ...]
    waits_s: tuple[float, ...]


@dataclass(frozen=True)
class PolicyMix:
    """Which policies a model runs. The named configurations live in `policies.combine.POLICY_MIXES`.

    keepalive: "histogram" (learnt), "fixed" (`fixed_keepalive_s`), "avg" (moving-average reactive,
    Chat AI style: warm while the average load over `avg_window_s` is non-zero) or "none" (the floor).
    `prewarm_threshold` defaults (None) to the forecast's break-even probability; `shorten` lets the
    forecast cut a learnt keep-alive short when the slots ahead are not worth their idle time.

    `net_of_forecast` and `price_waits` tell the runner that feeds the idle histogram how to price
    the gaps it observes (see `policies.idle.observe_idle`'s `hits`):
    - net_of_forecast: a gap ending in a slot the forecast pre-warmed gets no hits. Principle: the two
      policies must not both pay for one gap; when the forecast re-warms before the next arrival,
      holding on through the gap buys nothing, so the keep-alive insures only uncovered arrivals.
    - price_waits: each request arriving d seconds into a cold start counts (1 - d / cold start)
      instead of 1. Principle: one idle GPU-second buys one user-second of waiting, and a request
      arriving d seconds into a cold start waits only the rest of it.

    `keepalive_percentile` (with "histogram") replaces the cost-optimal window with that percentile of
    the idle-gap histogram (Shahrad et al.'s rule). keepalive "currency" is `policies.currency`: every
    hold and pre-warm priced at `exchange_rate` idle GPU-seconds per user-second of waiting; keepalive
    "oracle" is the simulator's clairvoyant bound at the same price (the runner supplies the window).
    `budget_margin` (with "currency"), when set, replaces `exchange_rate` by the model's budget rate
    (`policies.currency.budget_rate`): the rate whose expected idle spending is that share of what a
    10-minute keep-alive would spend on the model's gaps.
    """

    keepalive: str = "histogram"
    fixed_keepalive_s: float = 600.0
    avg_window_s: float = 300.0
    forecast: bool = True
    schedules: bool = True
    always_on: bool = False
    prewarm_threshold: float | None = None
    shorten: bool = True
    net_of_forecast: bool = False
    price_waits: bool = False
    keepalive_percentile: float | None = None
    exchange_rate: float = 1.0
    budget_margin: float | None = None


@dataclass(frozen=True)
class ModelState:
    """Everything `policies.combine.decide` reads for one model."""

    spec: ScalingSpec
    load: LoadSnapshot = field(default_factory=LoadSnapshot)
    idle: IdleHistogram = field(default_factory=IdleHistogram)
    forecast: SeasonalForecast | None = None
    occurrences: tuple[Occurrence, ...] = ()
    mix: PolicyMix = field(default_factory=PolicyMix)
    gaps: GapHistory | None = None
