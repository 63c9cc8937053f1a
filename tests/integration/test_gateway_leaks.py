"""What unauthenticated callers and failed requests learn: no internal addresses, no private model names."""

from __future__ import annotations

import httpx
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis
from slurmless.ports import free_port
from tests.fixtures.gateway_stack import (
    METRICS_AUTH,
    Sim,
    add_instance,
    api_key,
    engine_sim,
    gateway,
    gateway_settings,
    register_model,
)


async def test_a_502_names_no_engine_address(redis_server: LocalRedis, redis_client: aioredis.Redis) -> None:
    await register_model(redis_client, "m")
    key = await api_key(redis_client)
    ports = [free_port(), free_port()]
    async with engine_sim("m") as live, gateway(redis_server.url, gateway_settings(cold_wait_budget_s=1.0)) as gw:
        for i, port in enumerate(ports):
            await add_instance(redis_client, "m", Sim(f"http://127.0.0.1:{port}", "k", live.engine), iid=f"dead-{i}")
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as h:
            failed = await h.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
    assert failed.status_code in (502, 503), failed.text
    assert "127.0.0.1" not in failed.text and not any(str(p) in failed.text for p in ports), failed.text


async def test_readyz_hides_the_redis_address_and_metrics_need_a_token(
    redis_client: aioredis.Redis, redis_server: LocalRedis
) -> None:
    await register_model(redis_client, "secret-project", visibility={"public": False, "tenants": ["physics"]})
    async with gateway(redis_server.url) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as h:
        assert (await h.get("/readyz")).status_code == 200
        anonymous = await h.get("/metrics")
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"
        assert "secret-project" not in anonymous.text
        assert (await h.get("/metrics", headers={"authorization": "Bearer wrong"})).status_code == 401
        scraped = await h.get("/metrics", headers=METRICS_AUTH)
        assert scraped.status_code == 200 and 'model="secret-project"' in scraped.text
    own = LocalRedis()
    own.start()
    try:
        async with gateway(own.url) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as h:
            own.stop()  # Redis goes away under a running gateway
            ready = await h.get("/readyz")
            assert ready.status_code == 503
            assert str(own.port) not in ready.text and "127.0.0.1" not in ready.text, ready.text
    finally:
        own.stop()
    public = gateway_settings(metrics_public=True)
    async with gateway(redis_server.url, public) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as h:
        assert (await h.get("/metrics")).status_code == 200
