"""The warm path's own wire clients: the engine connection pool and the Redis pipe, against real servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis

from queue_gateway.engine_http import EngineConnectError, EnginePool, EngineTimeout
from queue_gateway.redis_pipe import HotRouting, RedisPipe
from slurmless.localredis import LocalRedis
from warmpool.keys import Keys
from warmpool.routing import AdmitOutcome, Routing

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def http_server(handler: Handler) -> AsyncIterator[tuple[int, list[int]]]:
    """A loopback server running `handler` per connection; yields (port, requests served per connection)."""
    served: list[int] = []

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(0)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], served
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    if not head:
        return None
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    return await reader.readexactly(length)


CHUNKED = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def request(body: bytes = b"{}") -> bytes:
    return b"POST /v1/x HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def pool(**kw: float) -> EnginePool:
    return EnginePool(
        connect_timeout_s=kw.get("connect_timeout_s", 2.0),
        read_timeout_s=kw.get("read_timeout_s", 5.0),
        max_idle_per_host=8,
        idle_expiry_s=kw.get("idle_expiry_s", 4.0),
    )


async def test_chunked_body_is_dechunked_and_the_connection_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (body := await read_request(reader)) is not None:
            writer.write(CHUNKED + chunk(b"data: " + body + b"\n\n") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()

    async with http_server(handler) as (port, conns):
        p = pool()
        for i in range(3):
            resp = await p.request("127.0.0.1", port, request(b'{"i":%d}' % i))
            assert resp.status_code == 200
            assert (b"content-type", b"text/event-stream") in resp.headers
            assert await resp.aread() == b'data: {"i":%d}\n\ndata: [DONE]\n\n' % i
            resp.close()
        assert len(conns) == 1
        p.close()


async def test_a_response_closed_early_closes_its_connection() -> None:
    saw_eof = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED + chunk(b"data: 1\n\n"))
        await writer.drain()
        if await reader.read(1) == b"":
            saw_eof.set()

    async with http_server(handler) as (port, conns):
        p = pool()
        resp = await p.request("127.0.0.1", port, request())
        assert await resp.read() == b"data: 1\n\n"
        resp.close()  # the client left mid-stream
        await asyncio.wait_for(saw_eof.wait(), timeout=5)
        resp2 = await p.request("127.0.0.1", port, request())
        assert await resp2.read() == b"data: 1\n\n"
        resp2.close()
        assert len(conns) == 2
        p.close()


async def test_an_idle_connection_closed_by_the_engine_is_replaced() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        # ... and then close the kept-alive connection, as an engine's keep-alive timeout does.

    async with http_server(handler) as (port, conns):
        p = pool()
        for _ in range(2):
            resp = await p.request("127.0.0.1", port, request())
            assert await resp.aread() == b"ok"
            resp.close()
            await asyncio.sleep(0.05)
        assert len(conns) == 2
        p.close()


async def test_connect_and_read_failures_are_named() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with http_server(silent) as (port, _):
        with pytest.raises(EngineTimeout):
            await pool(read_timeout_s=0.2).request("127.0.0.1", port, request())
    with pytest.raises(EngineConnectError):
        await pool().request("127.0.0.1", port, request())


async def test_hot_routing_admits_and_releases_like_routing(
    redis_server: LocalRedis, redis_client: aioredis.Redis
) -> None:
    keys = Keys()
    pipe = RedisPipe.for_client(redis_client, timeout_s=2.0)
    assert pipe is not None
    hot = HotRouting(pipe, keys)
    routing = Routing(redis_client, keys)
    await routing.activate("m", "i1", cap=1)
    await redis_client.script_flush()  # EVALSHA misses once, then EVAL loads the script
    adm = await hot.admit("m", "gw-a", "r1", now_s=100.0, queue_max=10, global_max=100)
    assert (adm.outcome, adm.instance_id, adm.ready_instances) == (AdmitOutcome.SLOT, "i1", 1)
    assert (adm.load, adm.cap) == (1, 1)  # what the gateway's speculative forwarding goes by
    both = await asyncio.gather(
        hot.admit("m", "gw-a", "r2", now_s=100.5, queue_max=10, global_max=100),
        routing.admit("m", "gw-a", "r3", now_s=100.5, queue_max=10, global_max=100),
    )
    assert [a.outcome for a in both] == [AdmitOutcome.QUEUED, AdmitOutcome.QUEUED]
    assert await hot.release("gw-a", "r1") == 1  # the slot went to the head of the queue
    assert await hot.release("gw-a", "nope") == -1
    assert await routing.queue_depth("m") == 1
    pipe.close()
    # A closed pipe reconnects on the next call.
    assert await hot.release("gw-a", "nope") == -1
    pipe.close()
