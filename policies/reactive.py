"""Reactive scaling: follow the load that is here now.

Replicas = ceil((in flight + waiting) / target concurrency), at least one as soon as anything waits
(the wake-from-zero fast path). When vLLM's own metrics are available, a replica whose KV cache is
nearly full while requests wait inside it counts as saturated and asks for one more; so does a queue
whose oldest ticket has waited longer than `saturation_wait_s` while replicas are ready.
"""

from __future__ import annotations

import math

from policies.types import LoadSnapshot, ScalingSpec

KV_SATURATED_PERC = 0.9
SATURATION_WAIT_S = 5.0


def reactive_replicas(load: LoadSnapshot, spec: ScalingSpec) -> tuple[int, str]:
    """Replicas the current load asks for, with the reason."""
    demand = load.in_flight + load.queue_depth
    need = math.ceil(demand / spec.target_concurrency - 1e-9) if demand > 0 else 0
    detail = f"{load.in_flight:g} in flight + {load.queue_depth} queued / {spec.target_concurrency:g} per replica"
    if load.queue_depth > 0 and load.ready_replicas == 0:
        need = max(need, 1)
        detail = f"cold: {load.queue_depth} waiting, oldest {load.oldest_wait_s:.0f}s"
    saturated_kv = (
        load.kv_cache_usage_perc is not None
        and load.num_requests_waiting is not None
        and load.kv_cache_usage_perc >= KV_SATURATED_PERC
        and load.num_requests_waiting > 0
    )
    saturated_queue = load.ready_replicas > 0 and load.queue_depth > 0 and load.oldest_wait_s > SATURATION_WAIT_S
    if saturated_kv or saturated_queue:
        need = max(need, load.ready_replicas + 1)
        why = "kv cache full with requests waiting" if saturated_kv else "queue waits past saturation"
        detail = f"{why}: one more than {load.ready_replicas} ready"
    return need, detail


def moving_average_replicas(load: LoadSnapshot, spec: ScalingSpec, service_s: float) -> tuple[int, str]:
    """Chat AI-style moving-average scaling (min 0): ceil(average load / target concurrency).

    `load.recent_rate_per_s` is the arrival rate averaged over the window; with mean service time
    `service_s` it is the average in-flight load (Little's law).
    """
    avg_in_flight = load.recent_rate_per_s * service_s
    need = math.ceil(avg_in_flight / spec.target_concurrency - 1e-9) if avg_in_flight > 0 else 0
    if load.queue_depth > 0:
        need = max(need, 1)
    return need, f"average in flight {avg_in_flight:.2f} / {spec.target_concurrency:g} per replica"
