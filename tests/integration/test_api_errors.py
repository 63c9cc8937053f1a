"""`/v1` and `/admin` answer the same refusal the same way: one error hierarchy, one encoder."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis
from slurmless.settings import MetricsSettings, Settings
from tests.fixtures.gateway_stack import METRICS_TOKEN, Served, api_key, gateway, gateway_settings

ADMIN_TOKEN = "errors-admin-token-0123456789"


@pytest.fixture
async def gw(redis_server: LocalRedis, redis_client: aioredis.Redis) -> AsyncIterator[Served]:
    settings = gateway_settings()
    root = Settings(gateway=settings, admin_token=ADMIN_TOKEN, metrics=MetricsSettings(token=METRICS_TOKEN))
    async with gateway(redis_server.url, settings, root_settings=root) as served:
        yield served


def shape(response: httpx.Response) -> tuple[int, str, str, object]:
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    return response.status_code, error["type"], error["code"], error["param"]


async def test_an_unknown_model_is_the_same_404_on_both_apis(redis_client: aioredis.Redis, gw: Served) -> None:
    key = await api_key(redis_client)
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        user = {"authorization": f"Bearer {key}"}
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        v1 = await http.get("/v1/models/nope", headers=user)
        adm = await http.get("/admin/v1/models/nope", headers=admin)
        assert shape(v1)[:3] == shape(adm)[:3] == (404, "invalid_request_error", "model_not_found")
        paths = [await http.get("/v1/nowhere", headers=user), await http.get("/admin/v1/nowhere", headers=admin)]
        assert {shape(r) for r in paths} == {(404, "invalid_request_error", "unknown_url", None)}
        methods = [await http.put("/v1/models", headers=user), await http.put("/admin/v1/models", headers=admin)]
        assert {shape(r) for r in methods} == {(405, "invalid_request_error", "method_not_allowed", None)}
        bad = {"authorization": "Bearer sk-sl-not-a-key"}
        refused = [await http.get("/v1/models", headers=bad), await http.get("/admin/v1/models", headers=bad)]
        assert {shape(r)[:2] for r in refused} == {(401, "invalid_request_error")}
        assert all(r.headers["www-authenticate"] == "Bearer" for r in refused)
