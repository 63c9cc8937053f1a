"""Tenant isolation through the admin API: site limits, LoRA adapters of other tenants, alias squatting, key expiry.

Runs against the admin API server of `test_admin_api` (a real uvicorn server and a real Redis).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

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
from warmpool.keys import Keys

LLAMA = "llama-8b"


@pytest.fixture
async def api(admin_server: AdminServer, redis_client: aioredis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=admin_server.url + "/admin", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as client:
        yield client


async def _tenant_key(api: httpx.AsyncClient, tenant: str, **quota: object) -> str:
    response = await api.post("/v1/tenants", json={"name": tenant, **quota})
    assert response.status_code == 201, response.text
    key, _ = await make_key(api, tenant, can_register=True)
    return key


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"policy": {"min_replicas": 64, "max_replicas": 64}}, "policy.min_replicas"),
        ({"policy": {"max_replicas": 64}}, "policy.max_replicas"),
        ({"policy": {"keepalive_max_s": 1e9}}, "policy.keepalive_max_s"),
        ({"policy": {"keepalive_min_s": 86400}}, "policy.keepalive_min_s"),
        ({"policy": {"cold_wait_budget_s": 1e9}}, "policy.cold_wait_budget_s"),
        ({"policy": {"warm_wait_budget_s": 1e9}}, "policy.warm_wait_budget_s"),
        ({"policy": {"queue_max": 10_000_000}}, "policy.queue_max"),
        ({"resources": {"gpus": 4, "nodes": 1, "time_limit_min": 60}}, "resources.gpus"),
        ({"resources": {"gpus": 1, "time_limit_min": 60 * 24 * 14}}, "resources.time_limit_min"),
        ({"resources": {"gpus": 1, "partitions": ["gpu"]}}, "resources.partitions"),
        ({"resources": {"gpus": 1, "account": "someone-elses-grant"}}, "resources.account"),
        ({"resources": {"gpus": 1, "qos": ["high"]}}, "resources.qos"),
    ],
)
async def test_a_tenant_cannot_exceed_site_limits_and_a_refusal_writes_nothing(
    api: httpx.AsyncClient, redis_client: aioredis.Redis, model_root: Path, change: dict[str, object], param: str
) -> None:
    key = await _tenant_key(api, "physics")
    # Set apart from creation, so that only the limit itself is new here; checked by the gpus case below.
    await api.patch("/v1/tenants/physics", json={"limits": {"max_gpus_per_instance": 2}})
    before = await snapshot(redis_client)
    body = {"name": "mine", "source": f"{model_root}/{LLAMA}", **change}
    refused = await api.post("/v1/models", json=body, headers=bearer(key))
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["param"] == param
    assert "physics" in error_of(refused)
    assert await snapshot(redis_client) == before
    # An admin is not bound by tenant limits.
    admin = await api.post("/v1/models", json=body | {"owner_tenant": "physics"})
    assert admin.status_code == 201, admin.text


async def test_tenant_allow_lists_and_caps_are_set_per_tenant(
    api: httpx.AsyncClient, redis_client: aioredis.Redis, model_root: Path
) -> None:
    key = await _tenant_key(api, "physics")
    body = {"name": "mine", "source": f"{model_root}/{LLAMA}", "resources": {"gpus": 1, "partitions": ["gpu"]}}
    assert (await api.post("/v1/models", json=body, headers=bearer(key))).status_code == 403
    raised = await api.patch("/v1/tenants/physics", json={"limits": {"partitions": ["gpu"], "max_replicas": 4}})
    assert raised.status_code == 200, raised.text
    assert raised.json()["limits"]["partitions"] == ["gpu"]
    ok = await api.post("/v1/models", json=body | {"policy": {"max_replicas": 4}}, headers=bearer(key))
    assert ok.status_code == 201, ok.text
    too_far = await api.patch("/v1/models/mine", json={"policy": {"max_replicas": 5}}, headers=bearer(key))
    assert too_far.status_code == 403 and too_far.json()["error"]["param"] == "policy.max_replicas"
    long_warm = await api.post("/v1/models/mine/warm", json={"duration_s": 7 * 86400}, headers=bearer(key))
    assert long_warm.status_code == 403 and long_warm.json()["error"]["param"] == "duration_s"


async def test_another_tenants_private_adapter_is_not_listed_under_a_shared_base(
    api: httpx.AsyncClient, model_root: Path
) -> None:
    assert (await api.post("/v1/models", json={"name": LLAMA, "source": f"{model_root}/{LLAMA}"})).status_code == 201
    physics = await _tenant_key(api, "physics")
    chem = await _tenant_key(api, "chem")
    adapter = {"name": "phys-tutor", "source": f"{model_root}/tutor", "kind": "lora", "base_model": LLAMA}
    assert (await api.post("/v1/models", json=adapter, headers=bearer(physics))).status_code == 201
    assert (await api.get(f"/v1/models/{LLAMA}", headers=bearer(chem))).json()["adapters"] == []
    assert (await api.get(f"/v1/models/{LLAMA}", headers=bearer(physics))).json()["adapters"] == ["phys-tutor"]
    assert (await api.get(f"/v1/models/{LLAMA}")).json()["adapters"] == ["phys-tutor"]


async def test_a_short_warm_through_an_adapter_does_not_cut_an_admins_long_warm(
    api: httpx.AsyncClient, redis_client: aioredis.Redis, model_root: Path, clock: Clock
) -> None:
    base = {"name": LLAMA, "source": f"{model_root}/{LLAMA}", "policy": {"max_replicas": 2}}
    assert (await api.post("/v1/models", json=base)).status_code == 201
    physics = await _tenant_key(api, "physics")
    adapter = {"name": "phys-tutor", "source": f"{model_root}/tutor", "kind": "lora", "base_model": LLAMA}
    assert (await api.post("/v1/models", json=adapter, headers=bearer(physics))).status_code == 201
    week = 7 * 86400
    assert (await api.post(f"/v1/models/{LLAMA}/warm", json={"duration_s": week})).status_code == 202
    short = await api.post("/v1/models/phys-tutor/warm", json={"duration_s": 1, "replicas": 2}, headers=bearer(physics))
    assert short.status_code == 202, short.text
    stored = json.loads(await redis_client.get(Keys().warm(LLAMA)))
    assert stored["until_s"] == pytest.approx(clock.now_s + week)
    assert stored["replicas"] == 2
    assert await redis_client.ttl(Keys().warm(LLAMA)) > week - 60


async def test_model_names_and_aliases_cannot_squat_each_other(api: httpx.AsyncClient, model_root: Path) -> None:
    physics = await _tenant_key(api, "physics")
    squat = {"name": "squat", "source": f"{model_root}/{LLAMA}", "aliases": ["llama-70b"]}
    assert (await api.post("/v1/models", json=squat, headers=bearer(physics))).status_code == 201
    later = await api.post("/v1/models", json={"name": "llama-70b", "source": f"{model_root}/llama-70b"})
    assert later.status_code == 409, later.text
    assert "alias of model 'squat'" in error_of(later)
    served = {"name": "served", "source": f"{model_root}/{LLAMA}", "served_name": "squat"}
    assert (await api.post("/v1/models", json=served, headers=bearer(physics))).status_code == 409


async def test_keys_created_with_an_expiry_stop_working(api: httpx.AsyncClient, model_root: Path, clock: Clock) -> None:
    await make_tenant(api, "physics")
    created = await api.post("/v1/keys", json={"tenant": "physics", "can_register": True, "expires_in_s": 60})
    assert created.status_code == 201, created.text
    record = created.json()["record"]
    assert record["expires_s"] == pytest.approx(clock.now_s + 60) and len(record["key_id"]) == 32
    key = created.json()["key"]
    assert (await api.get("/v1/models", headers=bearer(key))).status_code == 200
    clock.now_s += 61
    try:
        expired = await api.get("/v1/models", headers=bearer(key))
        assert expired.status_code == 401
    finally:
        clock.now_s -= 61


async def test_a_tenants_slurm_account_must_be_one_the_site_allows(
    api: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    before = await snapshot(redis_client)
    # The site allows no account by default: a tenant's own account must be listed first.
    refused = await api.post("/v1/tenants", json={"name": "chem", "account": "chem-lab"})
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["param"] == "account"
    assert "'chem-lab' is not allowed for tenant chem" in error_of(refused)
    bad = await api.post("/v1/tenants", json={"name": "chem", "account": "-p debug"})
    assert bad.status_code == 400 and "account" in error_of(bad)
    assert await snapshot(redis_client) == before
    listed = {"name": "chem", "account": "chem-lab", "limits": {"accounts": ["chem-lab"]}}
    created = await api.post("/v1/tenants", json=listed)
    assert created.status_code == 201, created.text
    assert created.json()["account"] == "chem-lab"
