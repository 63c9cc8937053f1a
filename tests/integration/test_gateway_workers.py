"""`python -m queue_gateway --workers 2`: two processes on one port, both serving, one /metrics, a drained stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from slurmless.localredis import LocalRedis
from tests.fixtures.gateway_stack import CLEAN, add_instance, api_key, engine_sim, register_model, settled
from warmpool.keys import Keys
from warmpool.routing import Routing

START_TIMEOUT_S = 30.0
STREAM_TOKENS = 40
INTER_TOKEN_MS = 25.0


@pytest.fixture
def gateway_process(redis_server: LocalRedis, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    config = tmp_path / "slurmless.toml"
    config.write_text("")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLURMLESS_")},
        "SLURMLESS_CONFIG": str(config),
        "SLURMLESS_REDIS__URL": redis_server.url,
        "SLURMLESS_GATEWAY__LEASE_TTL_S": "3",
        "SLURMLESS_GATEWAY__METRICS_PUBLIC": "true",
    }
    log = (tmp_path / "gateway.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "queue_gateway", "--host", "127.0.0.1", "--port", "0", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("queue_gateway listening on "), line
        yield proc, line.removeprefix("queue_gateway listening on ").strip()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


async def _until(check: object, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if await check():  # type: ignore[operator]
                return
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def one_client_per_worker(url: str, auth: dict[str, str]) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """A client (one keep-alive connection) on each worker: new connections until both gateway ids answered."""
    by_worker: dict[str, httpx.AsyncClient] = {}
    try:
        for _ in range(100):
            client = httpx.AsyncClient(base_url=url, headers=auth, timeout=30, limits=httpx.Limits(max_connections=1))
            gateway_id = (await client.get("/healthz")).json()["gateway_id"]
            if gateway_id in by_worker:
                await client.aclose()
                continue
            by_worker[gateway_id] = client
            if len(by_worker) == 2:
                break
        yield by_worker
    finally:
        for client in by_worker.values():
            await client.aclose()


def requests_total(metrics_text: str, model: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "slurmless_gateway_requests_total" and sample.labels.get("model") == model
    )


async def test_two_workers_serve_on_one_port_report_one_metrics_and_drain_on_sigterm(
    gateway_process: tuple[subprocess.Popen[str], str], redis_client: aioredis.Redis
) -> None:
    proc, url = gateway_process
    routing = Routing(redis_client)
    await register_model(redis_client, "m")
    key = await api_key(redis_client)
    auth = {"authorization": f"Bearer {key}"}
    async with engine_sim("m", inter_token_ms=INTER_TOKEN_MS) as sim:
        await add_instance(redis_client, "m", sim, cap=16)

        async def ready() -> bool:
            async with httpx.AsyncClient(timeout=2) as h:
                return (await h.get(url + "/readyz")).status_code == 200

        await _until(ready)

        async def two_leases() -> bool:
            return int(await redis_client.zcard(Keys().gateways)) == 2

        await _until(two_leases)
        async with one_client_per_worker(url, auth) as by_worker:
            assert len(by_worker) == 2, "every connection went to one worker"
            leases = {m.decode() for m in await redis_client.zrange(Keys().gateways, 0, -1)}
            assert leases == set(by_worker), "each worker holds its own lease"

            short = {"model": "m", "messages": [{"role": "user", "content": "q"}], "max_tokens": 3}
            for client in by_worker.values():
                answer = await client.post("/v1/chat/completions", json=short)
                assert answer.status_code == 200, answer.text
            # Whichever worker answers /metrics counts both workers' requests.
            for client in by_worker.values():

                async def both_counted(client: httpx.AsyncClient = client) -> bool:
                    # A request is counted just after its last byte went out.
                    return requests_total((await client.get("/metrics")).text, "m") == 2

                await _until(both_counted, timeout_s=5)

            # A long stream on each worker; SIGTERM while both run: both finish, then the process exits.
            long = short | {"stream": True, "max_tokens": STREAM_TOKENS}
            streams = [await Stream.start(client, long) for client in by_worker.values()]
            assert sum((await routing.inflight("m")).values()) == 2
            proc.send_signal(signal.SIGTERM)
            bodies = await asyncio.gather(*(s.finish() for s in streams))
            for body in bodies:
                assert '"finish_reason":"stop"' in body or '"finish_reason":"length"' in body
                assert body.rstrip().endswith("data: [DONE]")
        assert await asyncio.to_thread(proc.wait, 20) == 0
    assert int(await redis_client.zcard(Keys().gateways)) == 0, "both workers left their lease"
    assert await settled(redis_client) == CLEAN


class Stream:
    """A streaming request whose first event has arrived (so it is in flight on its worker)."""

    def __init__(self, response: httpx.Response, first: str, rest: AsyncIterator[str]) -> None:
        self.response, self.text, self._rest = response, first, rest

    @classmethod
    async def start(cls, client: httpx.AsyncClient, body: dict[str, object]) -> Stream:
        response = await client.send(client.build_request("POST", "/v1/chat/completions", json=body), stream=True)
        assert response.status_code == 200
        chunks = response.aiter_text()
        return cls(response, await anext(chunks), chunks)

    async def finish(self) -> str:
        async for chunk in self._rest:
            self.text += chunk
        await self.response.aclose()
        return self.text
