"""From warmpool's state to the policies' inputs, and their decision back.

The launcher reads queue depth, in-flight requests and demand history from Redis, builds the pure
`policies.types.ModelState`, and asks `policies.combine.decide` for the desired replicas. Forecast
and schedules are left out until their state is kept in Redis (a hook: `extra_occurrences`).
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.combine import decide
from policies.idle import learnt_keepalive_s
from policies.types import Decision, IdleHistogram, LoadSnapshot, ModelState, Occurrence, PolicyMix
from policies.types import ModelSpec as PolicySpec
from warmpool.specs import ModelSpec

IDLE_BINS = 240
IDLE_BIN_S = 60.0
DEFAULT_MAX_KEEPALIVE_S = 4 * 3600.0
MIX = PolicyMix(keepalive="histogram", forecast=False, schedules=False)


@dataclass(frozen=True, slots=True)
class ModelLoad:
    """What the launcher observed for one model this tick."""

    queue_depth: int
    oldest_wait_s: float
    in_flight: int
    ready: int
    held: int
    last_request_s: float | None
    idle_counts: dict[int, int]


def policy_spec(spec: ModelSpec, *, expected_cold_start_s: float, default_keepalive_s: float) -> PolicySpec:
    """The policies' view of a registered model; its keep-alive bounds come from the model's policy."""
    floor_s = spec.policy.keepalive_min_s if spec.policy.keepalive_min_s is not None else expected_cold_start_s
    max_s = spec.policy.keepalive_max_s if spec.policy.keepalive_max_s is not None else DEFAULT_MAX_KEEPALIVE_S
    max_s = max(max_s, floor_s)
    cold_s = max(expected_cold_start_s, 1e-3)
    return PolicySpec(
        name=spec.name,
        min_replicas=spec.policy.min_replicas,
        max_replicas=spec.policy.max_replicas,
        gpus_per_replica=spec.resources.gpus,
        target_concurrency=float(spec.policy.max_concurrency),
        expected_cold_start_s=cold_s,
        cold_start_p99_s=cold_s * 2,
        keepalive_floor_factor=floor_s / cold_s,
        default_keepalive_s=min(max(default_keepalive_s, floor_s), max_s),
        max_keepalive_s=max_s,
    )


def idle_histogram(counts: dict[int, int], spec: PolicySpec) -> IdleHistogram:
    """The gateway's idle-gap buckets (minutes -> count) as the policies' histogram, with its learnt keep-alive."""
    bins = [0] * IDLE_BINS
    overflow = 0
    for minute, count in counts.items():
        if 0 <= minute < IDLE_BINS:
            bins[minute] += count
        else:
            overflow += count
    hist = IdleHistogram(bin_s=IDLE_BIN_S, counts=tuple(bins), overflow=overflow)
    return IdleHistogram(
        bin_s=hist.bin_s, counts=hist.counts, overflow=overflow, keepalive_s=learnt_keepalive_s(hist, spec)
    )


def desired_replicas(
    spec: ModelSpec,
    load: ModelLoad,
    now_s: float,
    *,
    expected_cold_start_s: float,
    default_keepalive_s: float,
    extra_occurrences: tuple[Occurrence, ...] = (),
) -> Decision:
    """The policies' decision for one model at `now_s`."""
    pspec = policy_spec(spec, expected_cold_start_s=expected_cold_start_s, default_keepalive_s=default_keepalive_s)
    state = ModelState(
        spec=pspec,
        load=LoadSnapshot(
            queue_depth=load.queue_depth,
            oldest_wait_s=load.oldest_wait_s,
            in_flight=float(load.in_flight),
            ready_replicas=load.ready,
            held_replicas=load.held,
            last_activity_s=load.last_request_s,
        ),
        idle=idle_histogram(load.idle_counts, pspec),
        occurrences=extra_occurrences,
        mix=PolicyMix(keepalive=MIX.keepalive, forecast=False, schedules=bool(extra_occurrences)),
    )
    return decide(state, now_s)
