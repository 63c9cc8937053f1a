"""Instance records in Redis: written by the launcher, read by the gateway and the CLI."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.redisio import awaited, text


class InstanceStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()

    async def put(self, record: InstanceRecord) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.instance(record.id), mapping=record.to_redis())
            pipe.sadd(self.keys.instances, record.id)
            pipe.sadd(self.keys.model_instances(record.model), record.id)
            await pipe.execute()

    async def get(self, iid: str) -> InstanceRecord | None:
        raw = await awaited(self.redis.hgetall(self.keys.instance(iid)))
        return InstanceRecord.from_redis(raw) if raw else None

    async def update(self, iid: str, **fields: object) -> None:
        """Set some fields of a record (JSON-encoded, like `to_redis`)."""
        mapping = {k: orjson.dumps(v).decode() for k, v in fields.items()}
        await awaited(self.redis.hset(self.keys.instance(iid), mapping=mapping))

    async def transition(self, record: InstanceRecord, state: InstanceState, *, now_s: float, **fields: object) -> None:
        """Move an instance to `state`, stamping when it got there."""
        record.state = state
        record.state_since_s = now_s
        record.timestamps.setdefault(state.value, now_s)
        for key, value in fields.items():
            setattr(record, key, value)
        await self.update(
            record.id,
            state=state.value,
            state_since_s=now_s,
            timestamps=record.timestamps,
            **fields,
        )

    async def ids(self, model: str | None = None) -> list[str]:
        key = self.keys.instances if model is None else self.keys.model_instances(model)
        return sorted(text(i) for i in await awaited(self.redis.smembers(key)))

    async def all(self, model: str | None = None) -> list[InstanceRecord]:
        ids = await self.ids(model)
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for iid in ids:
                pipe.hgetall(self.keys.instance(iid))
            raws = await pipe.execute()
        return [InstanceRecord.from_redis(raw) for raw in raws if raw]

    async def purge(self, record: InstanceRecord) -> None:
        """Forget an instance that is gone or failed (after its events were recorded)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.instance(record.id))
            pipe.srem(self.keys.instances, record.id)
            pipe.srem(self.keys.model_instances(record.model), record.id)
            await pipe.execute()
