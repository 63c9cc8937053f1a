"""External routes: a model name forwarded to a second OpenAI-compatible server (an engine simulator
standing for a provider) with the site's key, read from a file; the key never shows anywhere."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis
from slurmless.settings import ExternalSettings, MetricsSettings, RedisSettings, Settings
from tests.fixtures.gateway_stack import (
    CLEAN,
    METRICS_TOKEN,
    Served,
    Sim,
    api_key,
    engine_sim,
    gateway,
    gateway_settings,
    register_model,
)
from tests.fixtures.gateway_stack import settled as settled_state
from warmpool.models import ModelStore
from warmpool.tenants import TenantSpec, TenantStore

ADMIN_TOKEN = "admin-" + "x" * 24
PROVIDER_MODEL = "provider/big-model"


@dataclass
class Stack:
    gw: Served
    provider: Sim
    secret: str
    admin: dict[str, str]


@pytest.fixture
async def stack(redis_server: LocalRedis, redis_client: aioredis.Redis, tmp_path: Path) -> AsyncIterator[Stack]:
    secret = "sk-" + secrets.token_hex(16)
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "provider").write_text(secret + "\n")
    (keys_dir / "wrong").write_text("sk-not-the-right-one\n")
    settings = gateway_settings(external=ExternalSettings(keys_dir=keys_dir, allow_http_loopback=True))
    root = Settings(
        redis=RedisSettings(url=redis_server.url),
        gateway=settings,
        admin_token=ADMIN_TOKEN,
        metrics=MetricsSettings(token=METRICS_TOKEN),
    )
    for tenant in ("physics", "biology"):
        await TenantStore(redis_client).create(TenantSpec(name=tenant))
    # The provider wants the site's key: an answer proves the key was sent.
    async with (
        engine_sim(PROVIDER_MODEL, api_key=secret) as provider,
        gateway(redis_server.url, settings, root_settings=root) as gw,
    ):
        yield Stack(gw, provider, secret, {"authorization": f"Bearer {ADMIN_TOKEN}"})


def _external(stack: Stack, **over: object) -> dict[str, object]:
    return {
        "name": "ext",
        "served_name": "gpt-ext",
        "external": {"url": stack.provider.url + "/v1", "model": PROVIDER_MODEL, "key_name": "provider"},
        "visibility": {"public": False, "tenants": ["physics"]},
        **over,
    }


async def test_external_model_answers_through_the_openai_sdk_and_never_shows_its_key(
    redis_client: aioredis.Redis, stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await register_model(redis_client, "local")  # a cluster model beside it, for the listing
    seen: list[str] = []
    async with httpx.AsyncClient(base_url=stack.gw.url, headers=stack.admin, timeout=30) as admin:
        created = await admin.post("/admin/v1/models", json=_external(stack))
        assert created.status_code == 201, created.text
        seen.append(created.text)
        for path in ("/admin/v1/models", "/admin/v1/models/ext", "/admin/v1/status", "/admin/v1/events"):
            r = await admin.get(path)
            assert r.status_code == 200, (path, r.text)
            seen.append(r.text)
        assert created.json()["model"]["external"]["key_name"] == "provider"

    key = await api_key(redis_client, tenant="physics")
    client = openai.OpenAI(base_url=stack.gw.url + "/v1", api_key=key, max_retries=0)

    def use() -> tuple[str, str, list[str]]:
        chat = client.chat.completions.create(
            model="gpt-ext", messages=[{"role": "user", "content": "hello"}], max_tokens=5
        )
        pieces = [
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model="gpt-ext", messages=[{"role": "user", "content": "hello"}], max_tokens=5, stream=True
            )
            if c.choices
        ]
        listing = client.models.list()
        one = client.models.retrieve("gpt-ext")
        seen.extend([listing.model_dump_json(), one.model_dump_json()])
        ext = next(m for m in listing.data if m.id == "gpt-ext")
        local = next(m for m in listing.data if m.id == "local")
        return str(chat.model), ext.owned_by + "|" + local.owned_by, pieces

    model, owners, pieces = await asyncio.to_thread(use)
    assert model == PROVIDER_MODEL  # the provider's own name for it
    assert owners == "external:127.0.0.1|slurmless"
    assert len([p for p in pieces if p]) == 5
    assert stack.provider.engine.counters.requests_started == 2
    async with httpx.AsyncClient(base_url=stack.gw.url, timeout=30) as h:
        listed = (await h.get("/v1/models", headers={"authorization": f"Bearer {key}"})).json()
    ext_entry = next(m for m in listed["data"] if m["id"] == "gpt-ext")
    assert ext_entry["slurmless"]["external"] is True and ext_entry["slurmless"]["state"] == "external"
    assert next(m for m in listed["data"] if m["id"] == "local")["slurmless"]["external"] is False
    for text in seen:
        assert stack.secret not in text
    assert stack.secret not in caplog.text
    # No queue, no slot, no demand: nothing for the launcher.
    assert await settled_state(redis_client) == CLEAN
    assert not [k async for k in redis_client.scan_iter("sl:dem*")]


async def test_external_model_is_visible_and_limited_per_tenant_like_a_local_one(
    redis_client: aioredis.Redis, stack: Stack
) -> None:
    async with httpx.AsyncClient(base_url=stack.gw.url, timeout=30) as h:
        assert (await h.post("/admin/v1/models", json=_external(stack), headers=stack.admin)).status_code == 201
        body = {"model": "gpt-ext", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        other = await api_key(redis_client, tenant="biology")
        hidden = await h.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {other}"})
        assert hidden.status_code == 404
        listing = (await h.get("/v1/models", headers={"authorization": f"Bearer {other}"})).json()
        assert "gpt-ext" not in [m["id"] for m in listing["data"]]
        limited = await api_key(redis_client, tenant="physics", rpm_limit=1)
        auth = {"authorization": f"Bearer {limited}"}
        first = await h.post("/v1/chat/completions", json=body, headers=auth)
        second = await h.post("/v1/chat/completions", json=body, headers=auth)
        assert (first.status_code, second.status_code) == (200, 429)
    assert stack.provider.engine.counters.requests_started == 1


async def test_a_refused_site_key_is_a_502_that_does_not_quote_it(redis_client: aioredis.Redis, stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gw.url, timeout=30) as h:
        bad = _external(stack, name="wrongkey", served_name="gpt-wrong")
        bad["external"] = {**bad["external"], "key_name": "wrong"}  # type: ignore[dict-item]
        assert (await h.post("/admin/v1/models", json=bad, headers=stack.admin)).status_code == 201
        key = await api_key(redis_client, tenant="physics")
        body = {"model": "gpt-wrong", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        r = await h.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "external_key"
    assert "sk-not-the-right-one" not in r.text


@pytest.mark.parametrize(
    ("external", "status", "words"),
    [
        ({"url": "http://example.org/v1"}, 400, "loopback"),
        ({"url": "ftp://127.0.0.1/v1"}, 400, "https"),
        ({"url": "https://user:pw@example.org/v1"}, 400, "credentials"),
        ({"url": "https://example.org/v1?x=1"}, 400, "query"),
        ({"url": "https://example.org/v1", "key_name": "../provider"}, 400, "file name"),
        ({"url": "https://example.org/v1", "key_name": "missing"}, 400, "no key file"),
    ],
)
async def test_registration_refuses_bad_endpoints_and_keys(
    redis_client: aioredis.Redis, stack: Stack, external: dict[str, str], status: int, words: str
) -> None:
    async with httpx.AsyncClient(base_url=stack.gw.url, timeout=30) as h:
        r = await h.post("/admin/v1/models", json={"name": "ext", "external": external}, headers=stack.admin)
    assert r.status_code == status, r.text
    assert words in r.text
    assert await ModelStore(redis_client).get("ext") is None


async def test_only_an_admin_registers_an_external_model(redis_client: aioredis.Redis, stack: Stack) -> None:
    own = await api_key(redis_client, tenant="physics", can_register=True)
    async with httpx.AsyncClient(base_url=stack.gw.url, timeout=30) as h:
        body = _external(stack)
        body.pop("visibility")
        r = await h.post("/admin/v1/models", json=body, headers={"authorization": f"Bearer {own}"})
        assert r.status_code == 403, r.text
        assert (await h.post("/admin/v1/models", json=_external(stack), headers=stack.admin)).status_code == 201
        warm = await h.post("/admin/v1/models/ext/warm", json={"duration_s": 60}, headers=stack.admin)
        assert warm.status_code == 400 and "external" in warm.text
