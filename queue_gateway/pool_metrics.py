"""The warm pool's state as Prometheus metrics, read from Redis when scraped.

Every gateway sees the same Redis, so any one of them can answer for the whole deployment; the
launcher's own `/metrics` only describes the process that serves it (and only the leader acts).
`PoolFacts` is what was observed; `render` turns it into the exposition text without I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.phase import ModelPhase, Phase, PhaseBoard
from warmpool.redisio import awaited, text
from warmpool.specs import ModelSpec


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What Redis says about one base model (the unit instances are started for)."""

    model: str
    phase: ModelPhase
    desired: int | None
    """Replicas the launcher's last decision asked for; None before its first decision."""
    policy_replicas: dict[str, int]
    """Replicas each policy asked for in that decision (reactive, forecast, schedule, ...)."""
    ready: int
    inflight: dict[str, int]
    """Ready instance id -> requests in flight."""
    gpus_per_instance: int
    queue_depth: int
    oldest_wait_s: float
    cold_wait_budget_s: float
    last_cold_start_s: float | None


@dataclass(frozen=True, slots=True)
class PoolFacts:
    models: list[ModelFacts]
    leader_present: bool
    instances_by_state: dict[tuple[str, str], int] = field(default_factory=dict)


def _gauge(name: str, doc: str, labels: list[str], rows: Iterable[tuple[list[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


def families(facts: PoolFacts) -> list[Metric]:
    """The metric families of one observation: pure, so tests compare them directly."""
    ms = facts.models
    return [
        _gauge(
            "slurmless_pool_desired_replicas",
            "Replicas the launcher's last decision asked for.",
            ["model"],
            (([m.model], float(m.desired)) for m in ms if m.desired is not None),
        ),
        _gauge(
            "slurmless_pool_ready_replicas",
            "Ready instances a request can be routed to.",
            ["model"],
            (([m.model], float(m.ready)) for m in ms),
        ),
        _gauge(
            "slurmless_pool_coming_replicas",
            "Instances on the way to ready (requested, pending in Slurm, starting, loading).",
            ["model"],
            (([m.model], float(m.phase.coming_instances)) for m in ms),
        ),
        _gauge(
            "slurmless_pool_policy_replicas",
            "Replicas each policy asked for in the last decision: the reasons behind the desired count.",
            ["model", "policy"],
            (([m.model, policy], float(n)) for m in ms for policy, n in sorted(m.policy_replicas.items())),
        ),
        _gauge(
            "slurmless_pool_phase",
            "1 for the phase waiting clients are told (cold, pending, starting, loading, ready, failed), else 0.",
            ["model", "phase"],
            (([m.model, p.value], 1.0 if m.phase.phase is p else 0.0) for m in ms for p in Phase),
        ),
        _gauge(
            "slurmless_pool_ready_gpus",
            "GPUs held by ready instances.",
            ["model"],
            (([m.model], float(m.ready * m.gpus_per_instance)) for m in ms),
        ),
        _gauge(
            "slurmless_pool_idle_gpus",
            "GPUs held by ready instances with no request in flight (avg_over_time of it gives idle GPU-hours).",
            ["model"],
            (([m.model], float(sum(1 for n in m.inflight.values() if n <= 0) * m.gpus_per_instance)) for m in ms),
        ),
        _gauge(
            "slurmless_pool_inflight_requests",
            "Requests in flight on the model's ready instances.",
            ["model"],
            (([m.model], float(sum(max(0, n) for n in m.inflight.values()))) for m in ms),
        ),
        _gauge(
            "slurmless_pool_queue_depth",
            "Tickets waiting in the model's queue (all gateways).",
            ["model"],
            (([m.model], float(m.queue_depth)) for m in ms),
        ),
        _gauge(
            "slurmless_pool_oldest_wait_seconds",
            "How long the oldest queued ticket has waited.",
            ["model"],
            (([m.model], m.oldest_wait_s) for m in ms),
        ),
        _gauge(
            "slurmless_pool_cold_wait_budget_seconds",
            "How long a request may wait while the model is cold before it is refused with 503.",
            ["model"],
            (([m.model], m.cold_wait_budget_s) for m in ms),
        ),
        _gauge(
            "slurmless_pool_last_cold_start_seconds",
            "Duration of the model's last cold start (requested to ready).",
            ["model"],
            (([m.model], m.last_cold_start_s) for m in ms if m.last_cold_start_s is not None),
        ),
        _gauge(
            "slurmless_pool_instances",
            "Instance records by model and state (all launchers' view).",
            ["model", "state"],
            (([model, state], float(n)) for (model, state), n in sorted(facts.instances_by_state.items())),
        ),
        _gauge(
            "slurmless_pool_launcher_leader_present",
            "1 while some launcher holds a leader lease (of any cluster); 0 means nobody starts or stops instances.",
            [],
            [([], 1.0 if facts.leader_present else 0.0)],
        ),
    ]


class _Once(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


def render(facts: PoolFacts) -> bytes:
    """The Prometheus text exposition of `facts`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Once(families(facts)))
    return generate_latest(registry)


def _policy_replicas(raw: object) -> tuple[int | None, dict[str, int]]:
    try:
        value = orjson.loads(raw) if isinstance(raw, bytes | str) else None
    except orjson.JSONDecodeError:
        return None, {}
    if not isinstance(value, dict):
        return None, {}
    replicas = value.get("replicas")
    out: dict[str, int] = {}
    for reason in value.get("reasons") or []:
        if not isinstance(reason, dict):
            continue
        policy, asked = reason.get("policy"), reason.get("replicas")
        if isinstance(policy, str) and isinstance(asked, int):
            # Several reasons of one policy (two schedules): the largest ask is what counts.
            out[policy] = max(out.get(policy, 0), asked)
    return (replicas if isinstance(replicas, int) and not isinstance(replicas, bool) else None), out


async def observe(
    redis: aioredis.Redis,
    keys: Keys,
    specs: list[ModelSpec],
    records: list[InstanceRecord],
    *,
    now_s: float,
    default_cold_budget_s: float,
) -> PoolFacts:
    """Read the facts for every base model in `specs` in a few round trips."""
    bases = sorted((s for s in specs if s.instance_model == s.name), key=lambda s: s.name)
    names = [s.name for s in bases]
    phases = await PhaseBoard(redis, keys).many(names)
    desired_raw = await awaited(redis.hmget(keys.desired, names)) if names else []
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zrange(keys.ready(name), 0, -1, withscores=True)
            pipe.zcard(keys.queue(name))
            pipe.zrange(keys.queue(name), 0, 0)
            pipe.hget(keys.model_stats(name), "last_cold_start_s")
        pipe.exists(keys.leader)
        pipe.hkeys(keys.clusters)
        raw = await pipe.execute()
    *raw, clusters = raw
    if not raw[-1] and clusters:
        # Several clusters: each one's launchers hold a lease of their own.
        raw[-1] = await awaited(redis.exists(*(keys.cluster_leader(text(c)) for c in clusters)))
    heads = [raw[4 * i + 2] for i in range(len(names))]
    async with redis.pipeline(transaction=False) as pipe:
        for head in heads:
            if head:
                pipe.hget(keys.ticket(text(head[0])), "created_s")
            else:
                pipe.echo("")
        created = await pipe.execute()
    models: list[ModelFacts] = []
    for i, spec in enumerate(bases):
        ready_pairs, depth, _, cold = raw[4 * i : 4 * i + 4]
        desired, policy = _policy_replicas(desired_raw[i])
        since = float(created[i]) if created[i] not in (None, b"", "") else None
        budget = spec.policy.cold_wait_budget_s
        models.append(
            ModelFacts(
                model=spec.name,
                phase=phases[spec.name],
                desired=desired,
                policy_replicas=policy,
                ready=len(ready_pairs),
                inflight={text(iid): int(score) for iid, score in ready_pairs},
                gpus_per_instance=spec.resources.gpus * spec.resources.nodes,
                queue_depth=int(depth),
                oldest_wait_s=max(0.0, now_s - since) if since is not None else 0.0,
                cold_wait_budget_s=budget if budget is not None else default_cold_budget_s,
                last_cold_start_s=float(cold) if cold else None,
            )
        )
    by_state: dict[tuple[str, str], int] = {}
    for record in records:
        if record.state is not InstanceState.GONE:
            label = (record.model, record.state.value)
            by_state[label] = by_state.get(label, 0) + 1
    return PoolFacts(models=models, leader_present=bool(raw[-1]), instances_by_state=by_state)


__all__ = ["ModelFacts", "PoolFacts", "families", "observe", "render"]
