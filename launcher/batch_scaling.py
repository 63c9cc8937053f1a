"""Batch backlogs as a scaling input of their own: how many instances a model's pending batch lines ask for.

Batch work runs in idle capacity and never delays interactive requests. With
`launcher.batch_cold_starts` on, a backlog also asks for instances of its own, one per
`batch_lines_per_instance_hour` pending lines, at most `batch_max_instances` (and the model's
`max_replicas`), in the GPUs the interactive decisions leave under `gpu_budget`. Those jobs are
batch jobs (`InstanceRecord.batch`): preemptible when the site has a preemptible partition or QOS,
fitted by backfill (`--time-min`), never renewed: they take lines until their walltime or
preemption, and the lines in flight then are retried.

The backlog is its own class: it never enters the demand history the pre-warm and keep-alive
policies learn from, so it never starts an instance ahead of time by itself. While a model has
pending lines its ready instances are busy: the interactive decision may cancel jobs still coming,
never drain one that runs lines.

Everything here is pure; `launcher.scaling.model_actions` merges a `BatchNeed` into a model's actions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from launcher.desired import gpus_per_replica
from launcher.settings import LauncherSettings
from policies.types import Decision, Reason
from warmpool.batches import BatchBacklog
from warmpool.specs import ModelSpec

if TYPE_CHECKING:
    from launcher.scaling import ScalePlan

BATCH = "batch"
"""The policy name of a batch backlog's reason in a decision."""


@dataclass(frozen=True, slots=True)
class BatchNeed:
    """What a model's batch backlog asks for this tick: instances (after the caps and the budget), and the
    lines still to do (0 when batch jobs are off: the backlog then keeps nothing)."""

    replicas: int = 0
    pending: int = 0


NO_BATCH = BatchNeed()


def pending_by_model(rows: Iterable[BatchBacklog], specs: Mapping[str, ModelSpec]) -> dict[str, int]:
    """Pending lines per base model. A batch none of whose lines ran yet names the client's model (a name,
    a served name or an alias; an adapter's lines run on its base); names no spec answers to drop."""
    base_of: dict[str, str] = {}
    for spec in specs.values():
        for name in (*spec.aliases, spec.client_name, spec.name):
            base_of[name] = spec.instance_model
    out: dict[str, int] = {}
    for row in rows:
        model = row.model if row.resolved else base_of.get(row.model)
        if model is not None and row.pending > 0:
            out[model] = out.get(model, 0) + row.pending
    return out


def batch_replicas(spec: ModelSpec, pending: int, settings: LauncherSettings) -> int:
    """Instances `pending` lines ask for: one per `batch_lines_per_instance_hour`, within the caps."""
    if pending <= 0 or not settings.batch_cold_starts:
        return 0
    want = math.ceil(pending / settings.batch_lines_per_instance_hour)
    return min(want, settings.batch_max_instances, spec.policy.max_replicas)


@dataclass(frozen=True, slots=True)
class BatchAsk:
    """One model's batch want against what it holds or was granted for interactive work anyway."""

    spec: ModelSpec
    pending: int
    replicas: int
    """What the backlog asks for (`batch_replicas`)."""
    held: int
    """Replicas the model keeps without the batch: max(its fitted interactive decision, its capacity)."""


def fit_batch(asks: Sequence[BatchAsk], free_gpus: int | None) -> dict[str, BatchNeed]:
    """Each model's `BatchNeed` once batch instances beyond `held` fit into `free_gpus` (None: no limit).

    Batch work is the lowest class: it gets the GPUs the fitted interactive decisions leave, models
    with the larger backlog first.
    """
    out: dict[str, BatchNeed] = {}
    left = free_gpus
    for ask in sorted(asks, key=lambda a: (-a.pending, a.spec.name)):
        extra = max(0, ask.replicas - ask.held)
        if left is not None:
            per = gpus_per_replica(ask.spec)
            extra = min(extra, left // per if per > 0 else extra)
            left -= extra * per
        out[ask.spec.name] = BatchNeed(replicas=min(ask.replicas, ask.held + extra), pending=ask.pending)
    return out


def free_gpus(budget_gpus: int | None, held_gpus: Iterable[int]) -> int | None:
    """GPUs of the budget that nothing holds or was granted (None: no budget)."""
    if budget_gpus is None:
        return None
    return max(0, budget_gpus - sum(held_gpus))


def batch_needs(
    plans: Sequence[ScalePlan],
    fitted: Mapping[str, Decision],
    pending: Mapping[str, int],
    settings: LauncherSettings,
) -> dict[str, BatchNeed]:
    """Each model's `BatchNeed` given its pending lines, once the interactive decisions are `fitted`."""
    by_name = {p.spec.name: p for p in plans}
    asks = [
        BatchAsk(p.spec, lines, batch_replicas(p.spec, lines, settings), held)
        for model, lines in pending.items()
        if (p := by_name.get(model)) is not None
        for held in [max(fitted[model].replicas, len(p.capacity))]
    ]
    held_gpus = (gpus_per_replica(p.spec) * max(fitted[p.spec.name].replicas, len(p.capacity)) for p in plans)
    return fit_batch(asks, free_gpus(settings.gpu_budget, held_gpus))


BATCH_SERVE_FACTOR = 4.0
"""A batch job should serve at least this many times as long as it loads (3/4 of its life serving)."""


def batch_time_min_min(spec: ModelSpec, load_p95_s: float | None, settings: LauncherSettings) -> int:
    """`--time-min` of a batch job: the shortest limit worth starting, so that backfill may fit it into short gaps.

    Slurm's limits are whole minutes and backfill gives a job the longest whole number of minutes that
    fits before the next reservation, at least its `--time-min`: the smaller that is, the more of a
    gap's tail a follow-up job can use. The model's own `--time-min` or `batch_time_min_min`, lowered to
    `BATCH_SERVE_FACTOR` times the model's observed load time (at least a minute) once there is one.
    """
    res = spec.resources
    time_min = min(res.time_min_min or settings.batch_time_min_min, settings.batch_time_min_min, res.time_limit_min)
    if load_p95_s is not None:
        time_min = min(time_min, max(1, math.ceil(BATCH_SERVE_FACTOR * load_p95_s / 60)))
    return time_min


def with_batch(decision: Decision, need: BatchNeed, settings: LauncherSettings) -> Decision:
    """`decision` raised to what the backlog asks for, with the backlog among its reasons."""
    if need.replicas <= decision.replicas:
        return decision
    detail = f"batch lines pending, {settings.batch_lines_per_instance_hour:.0f} lines per instance-hour"
    return replace(decision, replicas=need.replicas, reasons=(*decision.reasons, Reason(BATCH, need.replicas, detail)))
