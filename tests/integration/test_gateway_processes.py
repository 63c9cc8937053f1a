"""Two gateway processes (`python -m queue_gateway`) share one Redis; one dies with kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis
from tests.fixtures.gateway_stack import CLEAN, add_instance, api_key, engine_sim, register_model, settled
from warmpool.async_requests import AsyncRequests
from warmpool.routing import Routing

LEASE_TTL_S = 2.0
START_TIMEOUT_S = 20.0


class GatewayProcess:
    def __init__(self, redis_url: str, tmp: Path, name: str) -> None:
        config = tmp / "slurmless.toml"
        config.write_text("")
        env = {
            **os.environ,
            "SLURMLESS_CONFIG": str(config),
            "SLURMLESS_REDIS__URL": redis_url,
            "SLURMLESS_GATEWAY__LEASE_TTL_S": str(LEASE_TTL_S),
            "SLURMLESS_GATEWAY__PROGRESS_INTERVAL_S": "0.5",
        }
        self.log = (tmp / f"{name}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "queue_gateway", "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed before the app starts; readiness is polled below
        assert line.startswith("queue_gateway listening on "), line
        self.url = line.removeprefix("queue_gateway listening on ").strip()

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        async with httpx.AsyncClient(timeout=2) as h:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await h.get(self.url + "/readyz")).status_code == 200:
                        return
                assert time.monotonic() < deadline, "gateway did not become ready"
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


@pytest.fixture
def processes(redis_server: LocalRedis, tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    try:
        started.extend(GatewayProcess(redis_server.url, tmp_path, n) for n in ("a", "b"))
        yield started
    finally:
        for p in started:
            p.stop()


@pytest.fixture
async def both(processes: list[GatewayProcess], redis_client: aioredis.Redis) -> AsyncIterator[list[GatewayProcess]]:
    await asyncio.gather(*(p.wait_ready() for p in processes))
    yield processes


async def wait_for(check: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_shared_queue_and_kill_9_loses_no_async_request_and_leaks_no_slot(
    redis_client: aioredis.Redis, both: list[GatewayProcess]
) -> None:
    a, b = both
    routing = Routing(redis_client)
    await register_model(redis_client, "cold")
    await register_model(redis_client, "warm")
    key = await api_key(redis_client)
    auth = {"authorization": f"Bearer {key}"}
    async with (
        engine_sim("cold") as cold_sim,
        engine_sim("warm", inter_token_ms=20.0) as warm_sim,
        httpx.AsyncClient(headers=auth, timeout=60) as h,
    ):
        await add_instance(redis_client, "warm", warm_sim, cap=4)
        body = {"model": "cold", "messages": [{"role": "user", "content": "q"}], "max_tokens": 3}
        # Async requests on A, synchronous ones on B, all in the one queue of the cold model.
        rids = []
        for _ in range(5):
            sub = await h.post(a.url + "/v1/chat/completions", json=body, headers={"prefer": "respond-async"})
            assert sub.status_code == 202
            rids.append(sub.json()["id"])
        sync_on_b = [asyncio.create_task(h.post(b.url + "/v1/chat/completions", json=body)) for _ in range(3)]

        async def all_queued() -> bool:
            return await routing.queue_depth("cold") == 8

        await wait_for(all_queued)
        # A also streams from the warm model, holding a slot there, when it dies.
        warm_body = {
            "model": "warm",
            "messages": [{"role": "user", "content": "w"}],
            "stream": True,
            "max_tokens": 3000,
        }
        stream_cm = h.stream("POST", a.url + "/v1/chat/completions", json=warm_body)
        resp = await stream_cm.__aenter__()
        assert resp.status_code == 200
        assert list((await routing.inflight("warm")).values()) == [1]

        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(timeout=10)
        with contextlib.suppress(httpx.HTTPError):
            await stream_cm.__aexit__(None, None, None)

        # B reaps A once its lease lapses: A's tickets leave the queue and its slot is free again.
        async def a_reaped() -> bool:
            return list((await routing.inflight("warm")).values()) == [0]

        await wait_for(a_reaped)
        await add_instance(redis_client, "cold", cold_sim, cap=1)
        results = await asyncio.gather(*sync_on_b)
        assert [r.status_code for r in results] == [200, 200, 200]
        for rid in rids:
            done = await h.get(b.url + f"/v1/async/{rid}", params={"wait_s": 30})
            assert done.status_code == 200, done.text
            assert done.json()["choices"]
        assert await AsyncRequests(redis_client).pending() == 0
    assert await settled(redis_client) == CLEAN
    assert list((await routing.inflight("cold")).values()) == [0]
