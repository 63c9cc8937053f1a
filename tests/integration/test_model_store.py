"""The stores' read caches: every reader sees every change, whoever made it, and nothing it did not."""

from __future__ import annotations

import redis.asyncio as aioredis

from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceRecord, InstanceState
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


async def test_instance_records_read_again_are_independent_copies(redis_client: aioredis.Redis) -> None:
    """The store remembers decoded records; what it hands out may be mutated without touching the next read."""
    store = InstanceStore(redis_client, Keys("inst:"))
    await store.put(InstanceRecord(id="i1", model="m", state=InstanceState.READY, timestamps={"ready": 1.0}))
    (first,) = await store.all()
    first.timestamps["job_start"] = 2.0
    first.loaded_loras.append("tutor")
    first.state = InstanceState.DRAINING
    (second,) = await store.all()
    assert (second.state, second.timestamps, second.loaded_loras) == (InstanceState.READY, {"ready": 1.0}, [])
    await store.transition(second, InstanceState.DRAINING, now_s=3.0)
    (third,) = await store.all()
    assert third.state is InstanceState.DRAINING and third.timestamps == {"ready": 1.0, "draining": 3.0}
    # Every mutable field gets a fresh container per read: a new list or dict field must be added there.
    mutable = {n for n, f in InstanceRecord.model_fields.items() if str(f.annotation).startswith(("dict", "list"))}
    assert mutable == {"timestamps", "loaded_loras"}
