"""Every model's status at a glance, read in a few round trips: what the status page shows.

Phase and ETA (`PhaseBoard`), the warm pool's decision and its reasons (`Keys.desired`), ready
instances and queue depth, the last cold start (`Timeline`), a live warm request, and the recent
scaling decisions from the events stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from warmpool import pool_load
from warmpool.events import Event, EventLog
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.phase import ModelPhase, PhaseBoard
from warmpool.redisio import awaited, text
from warmpool.specs import ModelKind, ModelSpec
from warmpool.timeline import ColdStart, Timeline
from warmpool.warm import WarmRequest

DECISION_KINDS = frozenset({"scale.decision", "model.broken", "model.learnt_reset"})
"""Events shown as the warm pool's decisions."""
EVENTS_SCANNED = 500


@dataclass(frozen=True, slots=True)
class Desired:
    replicas: int
    why: str = ""
    reasons: list[dict[str, Any]] = field(default_factory=list)
    at_s: float | None = None


@dataclass(frozen=True, slots=True)
class ModelStatus:
    spec: ModelSpec
    phase: ModelPhase
    desired: Desired | None
    ready: int
    queue_depth: int
    cold_start: ColdStart | None
    warm_until_s: float | None
    decisions: list[Event]
    """The newest decisions about the model, newest first."""


class StatusBoard:
    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self.models = ModelStore(redis, self.keys, local_only=True)
        self.phases = PhaseBoard(redis, self.keys)
        self.timeline = Timeline(redis, self.keys)
        self.events = EventLog(redis, self.keys)

    async def read(self, *, now_s: float, decisions_per_model: int = 5) -> list[ModelStatus]:
        """Base models (LoRA adapters ride on their base's instances), by name."""
        specs = [s for s in await self.models.all() if s.kind is ModelKind.BASE]
        names = [s.name for s in specs]
        phases = await self.phases.many(names)
        colds = await self.timeline.last_cold_starts(names)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.desired)
            for name in names:
                pool_load.ask(pipe, self.keys, name)
                pipe.get(self.keys.warm(name))
            desired_raw, *rest = await pipe.execute()
        per_model = pool_load.REPLIES + 1
        desired = {text(k): _desired(v) for k, v in desired_raw.items()}
        recent = [e for e in await self.events.recent(count=EVENTS_SCANNED) if e.kind in DECISION_KINDS]
        by_model: dict[str, list[Event]] = {}
        for event in reversed(recent):
            kept = by_model.setdefault(event.model, [])
            if len(kept) < decisions_per_model:
                kept.append(event)
        out: list[ModelStatus] = []
        for i, spec in enumerate(specs):
            *replies, warm_raw = rest[per_model * i : per_model * (i + 1)]
            load = pool_load.parse(replies)
            warm = WarmRequest.model_validate_json(warm_raw) if warm_raw else None
            out.append(
                ModelStatus(
                    spec=spec,
                    phase=phases[spec.name],
                    desired=desired.get(spec.name),
                    ready=load.ready,
                    queue_depth=load.queue_depth,
                    cold_start=colds[spec.name],
                    warm_until_s=warm.until_s if warm is not None and warm.until_s > now_s else None,
                    decisions=by_model.get(spec.name, []),
                )
            )
        return out

    async def model(self, name: str) -> ModelSpec | None:
        return await self.models.get(name)

    async def ping(self) -> bool:
        return bool(await awaited(self.redis.ping()))


def _desired(raw: bytes) -> Desired | None:
    try:
        value = orjson.loads(raw)
        return Desired(
            replicas=int(value["replicas"]),
            why=str(value.get("why", "")),
            reasons=list(value.get("reasons", [])),
            at_s=value.get("at_s"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
