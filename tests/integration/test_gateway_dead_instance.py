"""An instance the gateway cannot connect to (its engine died, the launcher has not noticed yet) is taken
out of routing, and the request waits for a replacement instead of failing with 502."""

from __future__ import annotations

import asyncio
import socket
import struct

import openai
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis
from slurmless.ports import free_port
from tests.fixtures.gateway_stack import CLEAN, Sim, add_instance, api_key, engine_sim, gateway, register_model, settled
from warmpool.redisio import awaited
from warmpool.routing import Routing


async def test_request_to_a_dead_instance_waits_for_its_replacement(
    redis_server: LocalRedis, redis_client: aioredis.Redis
) -> None:
    await register_model(redis_client, "flaky")
    key = await api_key(redis_client)
    # The only routed instance points at a port nobody listens on: its engine was killed.
    dead = Sim(url=f"http://127.0.0.1:{free_port()}", api_key="dead", engine=None)  # type: ignore[arg-type]
    dead_iid = await add_instance(redis_client, "flaky", dead)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe("sl:demand")
    async with gateway(redis_server.url) as gw, engine_sim("flaky") as live:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)
        request = asyncio.create_task(
            client.chat.completions.create(model="flaky", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        )
        routing = Routing(redis_client)
        for _ in range(100):
            if dead_iid not in await routing.inflight("flaky"):
                break
            await asyncio.sleep(0.05)
        assert dead_iid not in await routing.inflight("flaky"), "the dead instance is still routed to"
        assert not request.done(), "the request should wait for a replacement, not fail"
        # The launcher was told at once (a demand signal) and brings up a replacement.
        signals = []
        for _ in range(20):  # get_message answers None for the (ignored) subscribe confirmation too
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if msg is not None:
                signals.append(msg["data"])
        assert b"flaky" in signals
        await add_instance(redis_client, "flaky", live)
        answer = await asyncio.wait_for(request, timeout=20)
        assert answer.choices[0].message.content
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert await settled(redis_client) == CLEAN
    assert await awaited(redis_client.zscore("sl:ready:flaky", dead_iid)) is None


async def test_an_engine_dying_under_a_request_is_unrouted_and_the_request_waits(
    redis_server: LocalRedis, redis_client: aioredis.Redis
) -> None:
    """The engine is killed as the request reaches it: the kernel accepted the connection, the process
    is gone, the connection is reset before any response byte. That is the engine dying, not an answer."""

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close -> RST
        writer.transport.abort()

    dying = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = dying.sockets[0].getsockname()[1]
    await register_model(redis_client, "dying")
    key = await api_key(redis_client)
    dead = Sim(url=f"http://127.0.0.1:{port}", api_key="dead", engine=None)  # type: ignore[arg-type]
    dead_iid = await add_instance(redis_client, "dying", dead)
    async with gateway(redis_server.url) as gw, engine_sim("dying") as live:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)
        request = asyncio.create_task(
            client.chat.completions.create(model="dying", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        )
        routing = Routing(redis_client)
        for _ in range(100):
            if dead_iid not in await routing.inflight("dying") or request.done():
                break
            await asyncio.sleep(0.05)
        assert not request.done(), f"the request should wait for a replacement, not fail: {request}"
        assert dead_iid not in await routing.inflight("dying"), "the dead instance is still routed to"
        await add_instance(redis_client, "dying", live)
        answer = await asyncio.wait_for(request, timeout=20)
        assert answer.choices[0].message.content
    dying.close()
    await dying.wait_closed()
    assert await settled(redis_client) == CLEAN
