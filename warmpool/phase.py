"""What clients waiting for a model are told: its phase, Slurm's reason and an ETA.

The launcher writes it whenever it learns something; gateways read it every few seconds per model
(not per held request) to write SSE progress comments.
"""

from __future__ import annotations

from enum import StrEnum

import redis.asyncio as aioredis
from pydantic import BaseModel

from warmpool.keys import Keys
from warmpool.redisio import awaited


class Phase(StrEnum):
    COLD = "cold"
    """No instance and none coming."""
    PENDING = "pending"
    """A job waits in Slurm's queue."""
    STARTING = "starting"
    """The job runs; the engine has not registered yet."""
    LOADING = "loading"
    """The engine registered and loads weights."""
    READY = "ready"
    FAILED = "failed"
    """Starts keep failing: the model is marked broken until an admin acts."""


class ModelPhase(BaseModel):
    phase: Phase = Phase.COLD
    slurm_reason: str | None = None
    est_start_s: float | None = None
    """Slurm's estimated start of the pending job."""
    eta_s: float | None = None
    """Expected time (epoch s) the model answers."""
    ready_instances: int = 0
    coming_instances: int = 0
    detail: str | None = None
    ended_by: str | None = None
    """How the model's last instance ended, while no instance is ready, when clients should know ("preempted")."""
    updated_s: float = 0.0

    def visible(self) -> tuple[object, ...]:
        """Everything clients are told but when it was written: equal means nothing new to tell."""
        return tuple(getattr(self, name) for name in _VISIBLE)


class PhaseBoard:
    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()

    async def set(self, model: str, phase: ModelPhase) -> None:
        await awaited(self.redis.set(self.keys.phase(model), phase.model_dump_json()))

    async def get(self, model: str) -> ModelPhase:
        raw = await awaited(self.redis.get(self.keys.phase(model)))
        return ModelPhase() if raw is None else ModelPhase.model_validate_json(raw)

    async def many(self, models: list[str]) -> dict[str, ModelPhase]:
        if not models:
            return {}
        raws = await self.redis.mget([self.keys.phase(m) for m in models])
        return {
            m: ModelPhase() if raw is None else ModelPhase.model_validate_json(raw)
            for m, raw in zip(models, raws, strict=True)
        }


_VISIBLE = tuple(name for name in ModelPhase.model_fields if name != "updated_s")
