"""A tenant's idle GPU-hour budget through the admin API: set, refused when invalid, shown in the status.

Runs against the admin API server of `test_admin_api` (a real uvicorn server and a real Redis).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from policies.idle_budget import new_state, record_idle
from tests.integration.test_admin_api import (
    ADMIN_TOKEN,
    AdminServer,
    Clock,
    bearer,
    error_of,
    make_key,
    make_tenant,
    snapshot,
)
from warmpool.idle_budgets import queue_write
from warmpool.keys import SITE_BUDGET, Keys


@pytest.fixture
async def api(admin_server: AdminServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=admin_server.url + "/admin", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as client:
        yield client


async def test_a_tenant_idle_budget_is_set_validated_and_shown(
    api: httpx.AsyncClient, redis_client: aioredis.Redis, clock: Clock
) -> None:
    await make_tenant(api, "chem")
    await make_tenant(api, "bio")
    got = await api.patch("/v1/tenants/chem", json={"idle_gpu_hours_per_day": 12.5})
    assert got.status_code == 200 and got.json()["idle_gpu_hours_per_day"] == 12.5

    before = await snapshot(redis_client)
    for bad in (0, -3, "lots", 1e12, True):
        refused = await api.patch("/v1/tenants/chem", json={"idle_gpu_hours_per_day": bad})
        assert refused.status_code == 400, bad
        assert "idle_gpu_hours_per_day" in error_of(refused)
    assert await snapshot(redis_client) == before

    # What the launcher wrote for the site's budget and chem's: the status shows rate and spending.
    keys = Keys()
    now_s = clock()
    async with redis_client.pipeline(transaction=True) as pipe:
        for name, per_day, idle_s in ((SITE_BUDGET, 100.0, 7200.0), ("chem", 12.5, 3600.0)):
            queue_write(pipe, keys, name, None, record_idle(new_state(0.02, now_s - 600), idle_s), per_day)
        await pipe.execute()
    status = (await api.get("/v1/status")).json()
    shown = {b["budget"]: b for b in status["idle_budgets"]}
    assert set(shown) == {SITE_BUDGET, "chem"}
    assert shown["chem"] == {
        "budget": "chem",
        "exchange_rate": 0.02,
        "idle_gpu_hours_last_day": 1.0,
        "budget_gpu_hours_per_day": 12.5,
        "updated_s": now_s - 600,
    }
    assert shown[SITE_BUDGET]["idle_gpu_hours_last_day"] == 2.0

    # A tenant's own key sees its own budget only.
    key, _kid = await make_key(api, "chem", can_register=True)
    seen = await api.get("/v1/status", headers=bearer(key))
    assert seen.status_code == 200, seen.text
    mine = seen.json()["idle_budgets"]
    assert [b["budget"] for b in mine] == ["chem"]
    key, _kid = await make_key(api, "bio", can_register=True)
    assert (await api.get("/v1/status", headers=bearer(key))).json()["idle_budgets"] == []

    # Back to the site's budget.
    cleared = await api.patch("/v1/tenants/chem", json={"idle_gpu_hours_per_day": None})
    assert cleared.status_code == 200 and cleared.json()["idle_gpu_hours_per_day"] is None
