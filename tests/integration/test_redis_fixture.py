"""The Redis fixture starts a real server of our own and stops exactly it."""

from __future__ import annotations

import os

import redis
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis


async def test_spawned_server_answers(redis_client: aioredis.Redis, redis_server: LocalRedis) -> None:
    await redis_client.set("k", "v")
    assert await redis_client.get("k") == b"v"
    info = await redis_client.info("server")
    assert int(info["tcp_port"]) == redis_server.port
    assert redis_server.port != 6379


def test_stop_kills_server_and_removes_dir() -> None:
    server = LocalRedis()
    server.start()
    pid, base = server.pid, server.base_dir
    assert pid is not None
    assert redis.Redis(port=server.port).ping()
    server.stop()
    assert not base.exists()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError(f"redis-server {pid} still running after stop()")


def test_aof_survives_restart() -> None:
    with LocalRedis(appendonly=True) as server:
        client = redis.Redis(port=server.port)
        client.set("durable", "1")
        server.kill()
        server.start()
        client = redis.Redis(port=server.port)
        assert client.get("durable") == b"1"
        client.close()
