"""The registry's read cache: every reader sees every change, whoever made it."""

from __future__ import annotations

import redis.asyncio as aioredis

from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec, Resources


def spec(name: str) -> ModelSpec:
    return ModelSpec(name=name, source=f"org/{name}", resources=Resources(gpus=1))


async def test_cached_specs_follow_changes_by_other_stores_and_a_flush(redis_client: aioredis.Redis) -> None:
    keys = Keys("store:")
    reader, writer = ModelStore(redis_client, keys), ModelStore(redis_client, keys)
    await writer.put(spec("a"))
    first = await reader.all()
    assert [s.name for s in first] == ["a"]
    again = await reader.all()
    assert again[0] is first[0]  # unchanged: the same parsed spec, not read again
    await writer.put(spec("b"))
    assert [s.name for s in await reader.all()] == ["a", "b"]
    await writer.remove("a")
    assert [s.name for s in await reader.all()] == ["b"]
    # A flushed (or restored) Redis must not bring back a cached registry, even after as many changes.
    await redis_client.flushdb()
    await writer.put(spec("c"))
    await writer.put(spec("d"))
    await writer.remove("c")
    assert [s.name for s in await reader.all()] == ["d"]
