"""Prometheus service discovery, the engine metrics proxy and the pool metrics, on a real gateway and Redis.

The engines here are small servers that require their per-instance key on `/metrics` too, so a scrape
that passes shows the gateway added the key (Prometheus never holds it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from queue_gateway.admin_routes import openapi_document
from slurmless.localredis import LocalRedis
from slurmless.settings import MetricsSettings, Settings
from tests.fixtures.gateway_stack import Served, api_key, gateway, gateway_settings, register_model, serve
from warmpool.apikeys import ApiKeyStore
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.phase import ModelPhase, Phase, PhaseBoard
from warmpool.redisio import awaited
from warmpool.routing import Routing
from warmpool.tenants import TenantSpec, TenantStore

ADMIN = "admin-token-for-sd-tests-0123456789"
METRICS = "metrics-token-for-sd-tests-0123456"
ENGINE_BODY = '# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine="0",model_name="m"} 3.0\n'


@asynccontextmanager
async def keyed_engine(key: str) -> AsyncIterator[Served]:
    """An engine whose /metrics answers only with its key."""

    async def metrics(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {key}":
            return Response("no", status_code=401)
        return Response(ENGINE_BODY, media_type="text/plain; version=0.0.4")

    async with serve(Starlette(routes=[Route("/metrics", metrics)]), lifespan="off") as served:
        yield served


def record(iid: str, model: str, state: InstanceState, url: str | None, key: str | None) -> InstanceRecord:
    host, port = url.removeprefix("http://").split(":") if url else (None, None)
    return InstanceRecord(
        id=iid,
        model=model,
        state=state,
        job_id=f"1{len(iid)}",
        host=host,
        port=int(port) if port else None,
        node="node7" if state is InstanceState.READY else None,
        api_key=key,
    )


@pytest.fixture
async def stack(redis_server: LocalRedis, redis_client: aioredis.Redis) -> AsyncIterator[tuple[Served, aioredis.Redis]]:
    settings = Settings(admin_token=ADMIN, metrics=MetricsSettings(token=METRICS, cluster="testcluster"))
    async with gateway(redis_server.url, gateway_settings(), root_settings=settings) as served:
        yield served, redis_client


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_sd_lists_ready_engines_with_labels_and_the_proxy_path(stack: tuple[Served, aioredis.Redis]) -> None:
    served, redis = stack
    store = InstanceStore(redis)
    async with keyed_engine("key-a") as a, keyed_engine("key-b") as b:
        await store.put(record("inst1", "alpha", InstanceState.READY, a.url, "key-a"))
        await store.put(record("inst2", "beta", InstanceState.READY, b.url, "key-b"))
        await store.put(record("inst3", "beta", InstanceState.LOADING, b.url, "key-b"))
        await store.put(record("inst4", "beta", InstanceState.PENDING, None, None))
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
            resp = await http.get("/admin/v1/sd/engines", headers=auth(METRICS))
            assert resp.status_code == 200, resp.text
            groups = resp.json()
            address = served.url.removeprefix("http://")
            assert groups == [
                {
                    "targets": [address],
                    "labels": {
                        "__scheme__": "http",
                        "__metrics_path__": f"/admin/v1/engines/{iid}/metrics",
                        "model": model,
                        "instance": iid,
                        "job_id": "15",
                        "node": "node7",
                        "cluster": "testcluster",
                    },
                }
                for iid, model in (("inst1", "alpha"), ("inst2", "beta"))
            ]
            # The proxy path answers the engine's own text: the gateway added the engine's key.
            for group in groups:
                scraped = await http.get(group["labels"]["__metrics_path__"], headers=auth(METRICS))
                assert scraped.status_code == 200, scraped.text
                assert scraped.text == ENGINE_BODY
                assert scraped.headers["content-type"].startswith("text/plain")
            # Neither the engine's address nor its key is in anything Prometheus sees.
            assert a.url.removeprefix("http://") not in resp.text
            assert "key-a" not in resp.text
            # An engine that stopped answering is a 502 that does not say where it was.
            await store.put(record("inst5", "gamma", InstanceState.READY, "http://127.0.0.1:9", "key-x"))
            dead = await http.get("/admin/v1/engines/inst5/metrics", headers=auth(METRICS))
            assert dead.status_code == 502
            assert "127.0.0.1" not in dead.text
            assert dead.json()["error"]["message"].startswith("engine inst5 did not answer")


async def test_sd_and_proxy_refuse_without_the_metrics_token_or_an_admin(
    stack: tuple[Served, aioredis.Redis],
) -> None:
    served, redis = stack
    await TenantStore(redis).create(TenantSpec(name="physics"))
    self_service = await api_key(redis, "physics", can_register=True)
    plain_user = await api_key(redis, "physics")
    admin_key, _ = await ApiKeyStore(redis).create(tenant="physics", now_s=0.0, admin=True)
    async with keyed_engine("key-a") as a:
        await InstanceStore(redis).put(record("inst1", "alpha", InstanceState.READY, a.url, "key-a"))
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
            for path in ("/admin/v1/sd/engines", "/admin/v1/engines/inst1/metrics", "/admin/v1/metrics"):
                assert (await http.get(path)).status_code == 401, path
                assert (await http.get(path, headers=auth("wrong-token"))).status_code == 401, path
                assert (await http.get(path, headers=auth(self_service))).status_code == 403, path
                assert (await http.get(path, headers=auth(plain_user))).status_code == 403, path
                for good in (METRICS, ADMIN, admin_key):
                    assert (await http.get(path, headers=auth(good))).status_code == 200, (path, good)
            # The metrics token reads metrics and nothing else.
            assert (await http.get("/admin/v1/models", headers=auth(METRICS))).status_code == 401
            assert (await http.get("/admin/v1/keys", headers=auth(METRICS))).status_code == 401


async def test_proxy_refuses_unknown_ids_and_engines_that_do_not_listen(stack: tuple[Served, aioredis.Redis]) -> None:
    served, redis = stack
    store = InstanceStore(redis)
    await store.put(record("pend1", "alpha", InstanceState.PENDING, None, None))
    await store.put(record("gone1", "alpha", InstanceState.GONE, "http://127.0.0.1:9", "k"))
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
        for iid in ("nosuch", "pend1", "gone1"):
            resp = await http.get(f"/admin/v1/engines/{iid}/metrics", headers=auth(METRICS))
            assert resp.status_code == 404, iid
            assert resp.json()["error"]["code"] == "instance_not_found"
        bad = await http.get("/admin/v1/engines/a%20b/metrics", headers=auth(METRICS))
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "instance"


async def test_sd_uses_the_configured_gateway_url(redis_server: LocalRedis, redis_client: aioredis.Redis) -> None:
    settings = Settings(
        admin_token=ADMIN,
        metrics=MetricsSettings(token=METRICS, gateway_url="https://slurmless.example.org:8443/llm"),
    )
    async with gateway(redis_server.url, gateway_settings(), root_settings=settings) as served:
        await InstanceStore(redis_client).put(
            record("inst1", "alpha", InstanceState.READY, "http://10.0.0.7:1234", "k")
        )
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
            (group,) = (await http.get("/admin/v1/sd/engines", headers=auth(METRICS))).json()
    assert group["targets"] == ["slurmless.example.org:8443"]
    assert group["labels"]["__scheme__"] == "https"
    assert group["labels"]["__metrics_path__"] == "/llm/admin/v1/engines/inst1/metrics"
    assert group["labels"]["cluster"] == "slurm"


async def test_pool_metrics_read_the_warm_pool_from_redis(stack: tuple[Served, aioredis.Redis]) -> None:
    served, redis = stack
    keys = Keys()
    await register_model(redis, "alpha", resources={"gpus": 2}, policy={"cold_wait_budget_s": 120.0})
    await register_model(redis, "beta")
    await register_model(redis, "alpha-lora", kind="lora", base_model="alpha")
    routing = Routing(redis)
    await routing.activate("alpha", "i1", cap=8)
    await routing.activate("alpha", "i2", cap=8)
    await redis.zincrby(keys.ready("alpha"), 3, "i2")  # i2 has 3 requests in flight, i1 none
    desired = {
        "replicas": 2,
        "reasons": [
            {"policy": "reactive", "replicas": 1, "detail": ""},
            {"policy": "schedule", "replicas": 2, "detail": ""},
        ],
    }
    await awaited(redis.hset(keys.desired, "alpha", orjson.dumps(desired).decode()))
    await PhaseBoard(redis).set("beta", ModelPhase(phase=Phase.FAILED))
    await PhaseBoard(redis).set("alpha", ModelPhase(phase=Phase.READY, ready_instances=2, coming_instances=1))
    await awaited(redis.hset(keys.model_stats("alpha"), "last_cold_start_s", "95.5"))
    await InstanceStore(redis).put(record("i1", "alpha", InstanceState.READY, "http://127.0.0.1:9", "k"))
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
        resp = await http.get("/admin/v1/metrics", headers=auth(METRICS))
    assert resp.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }

    def get(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    assert get("slurmless_pool_desired_replicas", model="alpha") == 2
    assert get("slurmless_pool_desired_replicas", model="beta") is None  # no decision yet
    assert get("slurmless_pool_ready_replicas", model="alpha") == 2
    assert get("slurmless_pool_coming_replicas", model="alpha") == 1
    assert get("slurmless_pool_policy_replicas", model="alpha", policy="schedule") == 2
    assert get("slurmless_pool_policy_replicas", model="alpha", policy="reactive") == 1
    assert get("slurmless_pool_ready_gpus", model="alpha") == 4
    assert get("slurmless_pool_idle_gpus", model="alpha") == 2  # i1 idle, 2 GPUs
    assert get("slurmless_pool_inflight_requests", model="alpha") == 3
    assert get("slurmless_pool_phase", model="beta", phase="failed") == 1
    assert get("slurmless_pool_phase", model="beta", phase="cold") == 0
    assert get("slurmless_pool_cold_wait_budget_seconds", model="alpha") == 120
    assert get("slurmless_pool_cold_wait_budget_seconds", model="beta") == gateway_settings().cold_wait_budget_s
    assert get("slurmless_pool_last_cold_start_seconds", model="alpha") == 95.5
    assert get("slurmless_pool_instances", model="alpha", state="ready") == 1
    assert get("slurmless_pool_launcher_leader_present") == 0
    # Adapters run on their base's instances: they are not pool members of their own.
    assert get("slurmless_pool_ready_replicas", model="alpha-lora") is None


def test_openapi_documents_the_observability_routes() -> None:
    paths = openapi_document()["paths"]
    assert {"/v1/sd/engines", "/v1/engines/{instance}/metrics", "/v1/metrics"} <= set(paths)
