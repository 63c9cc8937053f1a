"""Least privilege in Redis: role ACL users enforced by a real redis-server, and a gateway working under one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError

from queue_gateway.batch_settings import BatchSettings
from slurmless.localredis import LocalRedis
from slurmless.settings import RedisSettings, Settings
from tests.fixtures.gateway_stack import add_instance, api_key, engine_sim, gateway, gateway_settings
from warmpool.acl import role_users, url_for
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.redisio import awaited
from warmpool.snapshot import SnapshotReader
from warmpool.specs import ModelSpec

PASSWORDS = {"gateway": "gw-secret", "launcher": "launcher-secret", "admin": "admin-secret"}
KEYS = Keys()


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[LocalRedis]:
    server = LocalRedis(users=[u.acl_line() for u in role_users(KEYS.prefix, PASSWORDS)], password="root-secret")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _client(server: LocalRedis, role: str) -> aioredis.Redis:
    client: aioredis.Redis = aioredis.Redis.from_url(url_for(server.url, role, PASSWORDS[role]), socket_timeout=5)
    return client


async def test_a_gateway_cannot_write_instances_registry_or_keys(acl_redis: LocalRedis) -> None:
    gw = _client(acl_redis, "gateway")
    try:
        writes: list[Awaitable[object]] = [
            awaited(gw.hset(KEYS.models, "evil", "{}")),
            awaited(gw.hset(KEYS.aliases, "llama", "evil")),
            awaited(gw.hset(KEYS.instance("i-1"), "host", "attacker.example")),
            awaited(gw.hset(KEYS.api_keys, "digest", "{}")),
            awaited(gw.hset(KEYS.tenants, "evil", "{}")),
            gw.set(KEYS.warm("m"), "{}"),
            gw.flushdb(),
        ]
        for write in writes:
            with pytest.raises(NoPermissionError):
                await write
        # Nor through a script: Redis checks each command a script runs against the caller's user.
        with pytest.raises(ResponseError, match="can't access"):
            await awaited(gw.eval("return redis.call('HSET', ARGV[1] .. 'inst:i-1', 'host', 'evil')", 0, KEYS.prefix))
        assert await awaited(gw.hget(KEYS.models, "m")) is None, "reading the registry is allowed"
    finally:
        await gw.aclose()


async def test_the_launcher_cannot_read_prompts_or_keys(acl_redis: LocalRedis) -> None:
    launcher = _client(acl_redis, "launcher")
    try:
        with pytest.raises(NoPermissionError):
            await awaited(launcher.hgetall(KEYS.async_request("async-1")))
        with pytest.raises(NoPermissionError):
            await awaited(launcher.hgetall(KEYS.api_keys))
        await awaited(launcher.hset(KEYS.instance("i-1"), "state", '"pending"'))
        assert await awaited(launcher.hexists(KEYS.instance("i-1"), "state"))
        await launcher.delete(KEYS.instance("i-1"))
    finally:
        await launcher.aclose()


async def test_a_gateway_serves_warm_queued_and_async_requests_as_its_acl_user(acl_redis: LocalRedis) -> None:
    admin, launcher = _client(acl_redis, "admin"), _client(acl_redis, "launcher")
    root = Settings(
        redis=RedisSettings(
            url=url_for(acl_redis.url, "gateway", PASSWORDS["gateway"]),
            admin_url=url_for(acl_redis.url, "admin", PASSWORDS["admin"]),
        ),
        admin_token="acl-admin-token",
        model_roots=[Path("/models")],
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    try:
        root_client = aioredis.Redis.from_url(acl_redis.url)
        await root_client.flushdb()
        await root_client.aclose()
        key = await api_key(admin)
        settings = gateway_settings()
        async with (
            engine_sim("m") as sim,
            gateway(root.redis.url, settings, root_settings=root) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=30, headers={"authorization": f"Bearer {key}"}) as h,
        ):
            # The admin API mounted in the gateway writes the registry over its own connection.
            registered = await h.post(
                "/admin/v1/models",
                json={"name": "m", "source": "/models/m"},
                headers={"authorization": "Bearer acl-admin-token"},
            )
            assert registered.status_code == 201, registered.text
            queued = await h.post("/v1/chat/completions", json=body, headers={"prefer": "respond-async"})
            assert queued.status_code == 202
            await add_instance(launcher, "m", sim)  # the launcher's user writes instances and routing
            assert (await h.post("/v1/chat/completions", json=body)).status_code == 200
            async with h.stream("POST", "/v1/chat/completions", json=body | {"stream": True}) as r:
                assert r.status_code == 200
                await r.aread()
            done = await h.get(f"/v1/async/{queued.json()['id']}", params={"wait_s": 10})
            assert done.status_code == 200, done.text
            assert [m["id"] for m in (await h.get("/v1/models")).json()["data"]] == ["m"]
            # The status page (sessions in Redis, the launcher's state read) works as the gateway's user too.
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as ui:
                login = await ui.post(
                    "/ui/login", data={"key": "acl-admin-token"}, headers={"Sec-Fetch-Site": "same-origin"}
                )
                assert login.status_code in (200, 303), login.text
                state = await ui.get("/ui/state")
                assert state.status_code == 200, state.text
    finally:
        await admin.aclose()
        await launcher.aclose()


async def test_a_batch_runs_as_the_gateways_user_and_the_launcher_reads_batch_load(
    acl_redis: LocalRedis, tmp_path: Path
) -> None:
    admin, launcher = _client(acl_redis, "admin"), _client(acl_redis, "launcher")
    try:
        root_client = aioredis.Redis.from_url(acl_redis.url)
        await root_client.flushdb()
        await root_client.aclose()
        await ModelStore(admin).put(ModelSpec(name="m", source="/models/m"))
        key = await api_key(admin)
        settings = gateway_settings(batch=BatchSettings(files_dir=tmp_path, poll_s=0.05))
        line = {"method": "POST", "url": "/v1/chat/completions"}
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        data = b"".join(orjson.dumps({**line, "custom_id": f"c{i}", "body": body}) + b"\n" for i in range(6))
        async with (
            engine_sim("m") as sim,
            gateway(url_for(acl_redis.url, "gateway", PASSWORDS["gateway"]), settings) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=30, headers={"authorization": f"Bearer {key}"}) as h,
        ):
            await add_instance(launcher, "m", sim)
            fid = (await h.post("/v1/files", files={"file": ("b.jsonl", data)}, data={"purpose": "batch"})).json()["id"]
            created = await h.post(
                "/v1/batches",
                json={"input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
            )
            assert created.status_code == 200, created.text
            # The launcher's snapshot reads the batch lines in flight as the launcher's user.
            assert "m" in await SnapshotReader(launcher).read(["m"])
            for _ in range(200):
                doc = (await h.get(f"/v1/batches/{created.json()['id']}")).json()
                if doc["status"] == "completed":
                    break
                await asyncio.sleep(0.05)
            assert doc["status"] == "completed" and doc["request_counts"]["completed"] == 6, doc
    finally:
        await admin.aclose()
        await launcher.aclose()
