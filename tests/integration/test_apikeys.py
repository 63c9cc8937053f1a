from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from warmpool.apikeys import ApiKeyStore
from warmpool.redisio import awaited


async def test_key_stored_hashed_verified_and_revoked(redis_client: aioredis.Redis) -> None:
    store = ApiKeyStore(redis_client)
    plain, record = await store.create(tenant="physics", name="alice", now_s=1.0)
    assert plain.startswith("sk-sl-")
    dump = await awaited(redis_client.hgetall("sl:apikeys"))
    assert plain.encode() not in b"".join(list(dump.keys()) + list(dump.values()))
    verified = await store.verify(plain, now_s=2.0)
    assert verified is not None and verified.tenant == "physics"
    assert await store.verify(plain + "x", now_s=2.0) is None
    assert await store.verify("garbage", now_s=2.0) is None
    assert await store.revoke(record.key_id)
    assert await store.verify(plain, now_s=2.0) is None
    assert [r.revoked for r in await store.list("physics")] == [True]


async def test_key_ids_are_128_bit_and_never_shared(
    redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ApiKeyStore(redis_client)
    _, record = await store.create(tenant="physics", now_s=1.0)
    assert len(record.key_id) == 32 and int(record.key_id, 16) >= 0
    # A random source that repeats itself: the second key must not get the first one's id.
    real = secrets.token_hex
    repeats: Iterator[str] = iter(["0f" * 16, "0f" * 16])

    def token_hex(n: int | None = None) -> str:
        return next(repeats, None) or real(n)

    monkeypatch.setattr(secrets, "token_hex", token_hex)
    first_plain, first = await store.create(tenant="physics", now_s=1.0)
    second_plain, second = await store.create(tenant="physics", now_s=1.0)
    assert first.key_id != second.key_id
    assert await store.revoke(first.key_id)
    assert await store.verify(first_plain, now_s=2.0) is None
    assert await store.verify(second_plain, now_s=2.0) is not None, "revoking one key must not touch another"


async def test_keys_expire(redis_client: aioredis.Redis) -> None:
    store = ApiKeyStore(redis_client)
    plain, record = await store.create(tenant="physics", now_s=100.0, expires_s=160.0)
    assert record.expires_s == 160.0
    assert await store.verify(plain, now_s=159.0) is not None
    assert await store.verify(plain, now_s=160.0) is None
