"""Request limits on the OpenAI surface (body, headers, read timeouts, connections), through a real uvicorn server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis
from tests.fixtures.gateway_stack import (
    CLEAN,
    add_instance,
    api_key,
    engine_sim,
    gateway,
    gateway_settings,
    register_model,
    settled,
)

LIMITS = gateway_settings(
    max_body_bytes=100_000, max_header_bytes=4096, header_timeout_s=0.5, body_timeout_s=0.5, max_connections=3
)


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def _raw(url: str, data: bytes, *, then_wait_s: float = 0.0) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it (or 5 s passed)."""
    reader, writer = await asyncio.open_connection(*_host_port(url))
    try:
        writer.write(data)
        await writer.drain()
        if then_wait_s:
            await asyncio.sleep(then_wait_s)
        return await asyncio.wait_for(reader.read(1 << 20), timeout=5)
    finally:
        writer.close()


def _error(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


async def test_a_body_over_the_cap_is_refused_with_413_and_never_proxied(
    redis_server: LocalRedis, redis_client: aioredis.Redis
) -> None:
    await register_model(redis_client, "m")
    key = await api_key(redis_client)
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 200_000}]}

    async def chunked() -> AsyncIterator[bytes]:
        payload = json.dumps(big).encode()
        for i in range(0, len(payload), 16_384):
            yield payload[i : i + 16_384]

    async with (
        engine_sim("m") as sim,
        gateway(redis_server.url, LIMITS) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=10) as h,
    ):
        await add_instance(redis_client, "m", sim)
        auth = {"authorization": f"Bearer {key}"}
        declared = await h.post("/v1/chat/completions", json=big, headers=auth)
        assert declared.status_code == 413, declared.text
        assert declared.json()["error"]["code"] == "request_too_large"
        streamed = await h.post("/v1/chat/completions", content=chunked(), headers=auth)
        assert streamed.status_code == 413, streamed.text
        assert streamed.json()["error"]["type"] == "invalid_request_error"
        assert sim.engine.counters.requests_started == 0
        small = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        assert (await h.post("/v1/chat/completions", json=small, headers=auth)).status_code == 200
        assert await settled(redis_client) == CLEAN


async def test_headers_over_the_cap_get_431(redis_server: LocalRedis, redis_client: aioredis.Redis) -> None:
    async with gateway(redis_server.url, LIMITS) as gw:
        filler = b"".join(b"x-pad-%d: %s\r\n" % (i, b"a" * 200) for i in range(100))
        raw = await _raw(gw.url, b"GET /v1/models HTTP/1.1\r\nhost: x\r\n" + filler + b"\r\n")
        status, error = _error(raw)
        assert status == 431 and error["code"] == "headers_too_large"
        # A head that never ends is cut off too, not buffered.
        endless = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 50_000
        status, _ = _error(await _raw(gw.url, endless))
        assert status == 431


async def test_slow_headers_get_408_and_a_slow_body_is_cut_off(
    redis_server: LocalRedis, redis_client: aioredis.Redis
) -> None:
    await register_model(redis_client, "m")
    key = await api_key(redis_client)
    async with gateway(redis_server.url, LIMITS) as gw:
        status, error = _error(await _raw(gw.url, b"GET /v1/models HTTP/1.1\r\nhost: x\r\n"))
        assert status == 408 and error["code"] == "request_timeout"
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + key.encode() + b'\r\ncontent-length: 500\r\n\r\n{"model": '
        )
        status, error = _error(await _raw(gw.url, head))
        assert status == 408 and error["code"] == "request_timeout"


async def test_connections_beyond_the_cap_are_refused_with_503(
    redis_server: LocalRedis, redis_client: aioredis.Redis
) -> None:
    settings = LIMITS.model_copy(update={"header_timeout_s": 30.0})
    async with gateway(redis_server.url, settings) as gw:
        idle = [await asyncio.open_connection(*_host_port(gw.url)) for _ in range(3)]
        try:
            await asyncio.sleep(0.1)
            status, error = _error(await _raw(gw.url, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"))
            assert status == 503 and error["code"] == "too_many_connections"
        finally:
            for _, writer in idle:
                writer.close()
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=gw.url, timeout=5) as h:
            assert (await h.get("/healthz")).status_code == 200


async def test_a_stream_longer_than_every_timeout_is_not_cut(
    redis_server: LocalRedis, redis_client: aioredis.Redis
) -> None:
    await register_model(redis_client, "m")
    key = await api_key(redis_client)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 30, "stream": True}
    async with (
        engine_sim("m", inter_token_ms=50.0) as sim,
        gateway(redis_server.url, LIMITS) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as h,
    ):
        await add_instance(redis_client, "m", sim)
        async with h.stream("POST", "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}) as r:
            assert r.status_code == 200
            text = "".join([chunk async for chunk in r.aiter_text()])
        assert text.rstrip().endswith("data: [DONE]")
        assert await settled(redis_client) == CLEAN
