"""What clients and operators see of the launcher: each model's phase, instance counts, desired replicas.

A model's phase (`model_phase`) is a pure function of its instance records and history: ready if
one instance is, failed if the model is broken (or Slurm refused its last job and none is coming),
otherwise the most advanced instance on its way says how long a client should expect to wait.
`PhasePublisher` writes phases to Redis (only those that changed, or were last written
`PHASE_REFRESH_S` ago) and the instance gauge; `DecisionBoard`
writes each model's desired replicas and a `scale.decision` event when the number or the policies
behind it change. Both are the launcher's published views, written from what was decided; neither
decides anything about an instance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import orjson
import redis.asyncio as aioredis

from launcher.desired import desired_record, drivers
from launcher.history import ModelHistory
from launcher.metrics import LauncherMetrics
from launcher.settings import LauncherSettings
from policies.eta import ready_eta_s
from policies.types import Decision
from slurm.limits import pending_limit
from warmpool.events import EventLog
from warmpool.instances import COMING_STATES, InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.phase import ModelPhase, Phase
from warmpool.redisio import awaited
from warmpool.specs import ModelSpec

S = InstanceState

PHASE_REFRESH_S = 60.0
"""A model's published phase is rewritten at least this often even when unchanged (a Redis that lost
it, a stale `updated_s`); otherwise only when it changes."""
_LEAD_ORDER = {S.LOADING: 0, S.STARTING: 1, S.PENDING: 2, S.REQUESTED: 3}


def model_phase(
    records: Sequence[InstanceRecord], hist: ModelHistory, now_s: float, settings: LauncherSettings
) -> ModelPhase:
    """The phase a client waiting for the model sees, from its instances and history."""
    ready = [r for r in records if r.state is S.READY]
    coming = [r for r in records if r.state in COMING_STATES]
    load_s = hist.load_p95_s or settings.default_load_s
    queue_s = hist.queue_wait_p95_s or settings.default_queue_wait_s
    base: dict[str, Any] = {"ready_instances": len(ready), "coming_instances": len(coming), "updated_s": now_s}
    if ready:
        return ModelPhase(phase=Phase.READY, **base)
    base["ended_by"] = _ended_by(records)
    if hist.broken_reason:
        return ModelPhase(phase=Phase.FAILED, detail=hist.broken_reason, **base)
    if not coming and hist.refused_reason:
        # Nothing is coming because Slurm refused the job: waiting clients are told at once.
        return ModelPhase(phase=Phase.FAILED, detail=hist.refused_reason, **base)
    if not coming:
        if hist.held_reason and now_s < hist.retry_at_s + settings.tick_s:
            # An accounting limit refused the last submission; it is retried after its backoff.
            return ModelPhase(phase=Phase.PENDING, detail=hist.held_reason, **base)
        return ModelPhase(phase=Phase.COLD, **base)
    lead = min(coming, key=lambda r: _LEAD_ORDER.get(r.state, 9))
    eta = partial(ready_eta_s, now_s=now_s, load_samples_s=hist.load_times_s, default_load_s=load_s)
    if lead.state in (S.LOADING, S.STARTING):
        since = lead.timestamps.get(lead.state.value, now_s)
        return ModelPhase(phase=Phase(lead.state.value), eta_s=eta(loading_since_s=since), **base)
    return ModelPhase(
        phase=Phase.PENDING,
        slurm_reason=lead.slurm_reason,
        detail=pending_limit(lead.slurm_reason, account=lead.account, qos=lead.qos),
        est_start_s=lead.est_start_s,
        eta_s=eta(
            queue_samples_s=hist.queue_waits_s,
            default_queue_s=queue_s,
            queued_since_s=lead.created_s,
            est_start_s=lead.est_start_s,
        ),
        **base,
    )


def _ended_by(records: Sequence[InstanceRecord]) -> str | None:
    """ "preempted" when the instance that stopped serving last was preempted (draining or gone)."""
    ended = [r for r in records if r.state in (S.DRAINING, S.GONE)]
    last = max(ended, key=lambda r: r.state_since_s, default=None)
    if last is not None and (last.reason or "").startswith("preempted"):
        return "preempted"
    return None


def instance_counts(records: Sequence[InstanceRecord]) -> dict[tuple[str, str], int]:
    """Instances per (model, state), the instance gauge's labels."""
    counts: dict[tuple[str, str], int] = {}
    for record in records:
        label = (record.model, record.state.value)
        counts[label] = counts.get(label, 0) + 1
    return counts


class PhasePublisher:
    """Writes models' phases and the instance gauge, skipping what has not changed since it was written."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, settings: LauncherSettings, metrics: LauncherMetrics) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.metrics = metrics
        self._published: dict[str, tuple[tuple[object, ...], float]] = {}
        self._counted: dict[tuple[str, str], int] = {}
        self._hist_seen: dict[str, ModelHistory] = {}

    async def all(
        self,
        specs: Mapping[str, ModelSpec],
        records: Sequence[InstanceRecord],
        hists: Mapping[str, ModelHistory],
        now_s: float,
    ) -> None:
        """Every registered model's phase (an adapter's is its base's) and the instance gauge."""
        counts = instance_counts(records)
        # Only changed counts touch the gauge (a label lookup costs ~10 us: 2 ms a tick at 200 instances).
        for label in [k for k in self._counted if k not in counts]:
            self.metrics.instances.remove(*label)
        for label, count in counts.items():
            if self._counted.get(label) != count:
                self.metrics.instances.labels(*label).set(count)
        self._counted = counts
        by_model: dict[str, list[InstanceRecord]] = {}
        for record in records:
            by_model.setdefault(record.model, []).append(record)
        phases: dict[str, ModelPhase] = {}
        seen: dict[str, ModelHistory] = {}
        empty = ModelHistory.from_fields({})
        # Every registered model, adapters included, on every tick: a quiet one costs two lookups and an
        # identity test, and this pass is what refreshes each phase every `PHASE_REFRESH_S` (readers treat
        # an older phase as stale). Iterating only changed models would need a refresh schedule of its own.
        for spec in specs.values():
            base = spec.instance_model
            hist = hists.get(base) or empty
            model_records = by_model.get(base)
            if not model_records:
                # No instance now nor at the last tick, and the same history: cold or broken exactly as then.
                seen[spec.name] = hist
                last = self._published.get(spec.name)
                if self._hist_seen.get(spec.name) is hist and last is not None and now_s - last[1] < PHASE_REFRESH_S:
                    continue
            phases[spec.name] = model_phase(model_records or [], hist, now_s, self.settings)
        self._hist_seen = seen
        await self.write(phases, now_s)
        for gone in [m for m in self._published if m not in specs]:
            del self._published[gone]

    async def write(self, phases: Mapping[str, ModelPhase], now_s: float, *, force: bool = False) -> None:
        """Write the phases that changed (or were last written `PHASE_REFRESH_S` ago), in one round trip."""
        changed: dict[str, str] = {}
        for model, phase in phases.items():
            seen = phase.visible()
            last = self._published.get(model)
            if force or last is None or last[0] != seen or now_s - last[1] >= PHASE_REFRESH_S:
                changed[self.keys.phase(model)] = phase.model_dump_json()
                self._published[model] = (seen, now_s)
        if changed:
            await awaited(self.redis.mset(changed))


class DecisionBoard:
    """Each model's desired replicas (`Keys.desired`) and a `scale.decision` event when they change."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, events: EventLog) -> None:
        self.redis = redis
        self.keys = keys
        self.events = events
        self._seen: dict[str, tuple[int, tuple[str, ...]]] = {}
        self._recorded: dict[str, Decision] = {}

    def last(self, model: str) -> Decision:
        """The decision last recorded for `model` (KeyError before the first)."""
        return self._recorded[model]

    def recorded(self, model: str, decision: Decision) -> bool:
        """Whether this very decision was the last one recorded for `model` (nothing new to write)."""
        return self._recorded.get(model) is decision

    async def recall(self, models: Sequence[str]) -> None:
        """What a predecessor launcher last decided for models this one has not decided yet (one HMGET)."""
        unseen = [m for m in models if m not in self._seen]
        if not unseen:
            return
        raws = await awaited(self.redis.hmget(self.keys.desired, unseen))
        for model, raw in zip(unseen, raws, strict=True):
            stored = orjson.loads(raw) if raw else {}
            if isinstance(stored, dict) and "replicas" in stored:
                self._seen[model] = (int(stored["replicas"]), tuple(sorted(stored.get("drivers", []))))

    async def record(self, model: str, decision: Decision, now_s: float) -> None:
        """Write `Keys.desired` and an event whenever the number or the policies behind it change."""
        self._recorded[model] = decision
        seen = (decision.replicas, tuple(sorted({r.policy for r in drivers(decision)})))
        # On first sight since this launcher started, what its predecessor wrote (`recall`).
        previous = self._seen.get(model)
        self._seen[model] = seen
        if previous == seen:
            return
        value = desired_record(decision, now_s)
        await awaited(self.redis.hset(self.keys.desired, model, orjson.dumps(value).decode()))
        if previous is None and seen == (0, ()):
            return  # a model first seen cold, for no particular reason: nothing changed
        await self.events.record(
            "scale.decision",
            now_s=now_s,
            model=model,
            replicas=decision.replicas,
            previous=previous[0] if previous is not None else 0,
            why=value["why"],
            reasons=[f"{r.policy}={r.replicas} ({r.detail})" for r in decision.reasons],
        )
