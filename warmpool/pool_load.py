"""How loaded a model's pool is: its ready instances and the requests waiting in its queue.

The one read of these two counts. They live under the *instance* model (`ModelSpec.instance_model`,
the base for a LoRA adapter: the gateway queues an adapter's requests in its base's queue and its
base's instances serve them), so callers pass instance models; `for_specs` maps registered models.
Reads go into a caller's pipeline (`ask`, then `parse` its replies), so a caller that reads more
about the model keeps one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from warmpool.keys import Keys
from warmpool.specs import ModelSpec

REPLIES = 2
"""Replies `ask` adds to a pipeline."""


@dataclass(frozen=True, slots=True)
class PoolLoad:
    ready: int
    """Instances in the model's ready set."""
    queue_depth: int
    """Requests waiting in the model's queue."""


def ask(pipe: Any, keys: Keys, instance_model: str) -> None:
    """Queue the reads of one model's load on `pipe` (`REPLIES` replies)."""
    pipe.zcard(keys.ready(instance_model))
    pipe.zcard(keys.queue(instance_model))


def parse(replies: Sequence[Any]) -> PoolLoad:
    """The load from the `REPLIES` replies of one `ask`."""
    ready, depth = replies
    return PoolLoad(ready=int(ready), queue_depth=int(depth))


async def read(redis: aioredis.Redis, keys: Keys, instance_models: Sequence[str]) -> dict[str, PoolLoad]:
    """The load of each instance model, in one round trip."""
    models = list(dict.fromkeys(instance_models))
    if not models:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for model in models:
            ask(pipe, keys, model)
        replies = await pipe.execute()
    return {m: parse(replies[REPLIES * i : REPLIES * (i + 1)]) for i, m in enumerate(models)}


async def for_specs(redis: aioredis.Redis, keys: Keys, specs: Sequence[ModelSpec]) -> dict[str, PoolLoad]:
    """The load each registered model sees, by its name: an adapter sees its base's."""
    loads = await read(redis, keys, [s.instance_model for s in specs])
    return {s.name: loads[s.instance_model] for s in specs}


__all__ = ["REPLIES", "PoolLoad", "ask", "for_specs", "parse", "read"]
