from __future__ import annotations

import redis.asyncio as aioredis

from warmpool.apikeys import ApiKeyStore
from warmpool.redisio import awaited


async def test_key_stored_hashed_verified_and_revoked(redis_client: aioredis.Redis) -> None:
    store = ApiKeyStore(redis_client)
    plain, record = await store.create(tenant="physics", name="alice", now_s=1.0)
    assert plain.startswith("sk-sl-")
    dump = await awaited(redis_client.hgetall("sl:apikeys"))
    assert plain.encode() not in b"".join(list(dump.keys()) + list(dump.values()))
    verified = await store.verify(plain)
    assert verified is not None and verified.tenant == "physics"
    assert await store.verify(plain + "x") is None
    assert await store.verify("garbage") is None
    assert await store.revoke(record.key_id)
    assert await store.verify(plain) is None
    assert [r.revoked for r in await store.list("physics")] == [True]
