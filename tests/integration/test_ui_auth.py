"""Who may see the status page, and how the session is kept: a real gateway (uvicorn) and a real Redis."""

from __future__ import annotations

import re
import time

import httpx
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis
from slurmless.settings import GatewaySettings, Settings
from tests.fixtures.gateway_stack import gateway, gateway_settings, register_model
from warmpool.apikeys import ApiKeyStore

ADMIN_TOKEN = "bootstrap-admin-token-for-tests-0123456789"
SAME_SITE = {"Sec-Fetch-Site": "same-origin"}


def _root() -> Settings:
    settings: GatewaySettings = gateway_settings()
    return Settings(gateway=settings, admin_token=ADMIN_TOKEN)


async def _login(http: httpx.AsyncClient, key: str) -> httpx.Response:
    return await http.post("/ui/login", data={"key": key}, headers=SAME_SITE)


async def test_login_keeps_only_a_session_id_in_a_strict_httponly_cookie(
    redis_client: aioredis.Redis, redis_server: LocalRedis
) -> None:
    url = redis_server.url
    await register_model(redis_client, "demo")
    async with gateway(url, root_settings=_root()) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        first = await http.get("/ui/")
        assert first.status_code == 303 and first.headers["location"] == "/ui/login"
        assert (await http.get("/ui/state")).status_code == 401

        answer = await _login(http, ADMIN_TOKEN)
        assert answer.status_code == 303
        cookie = answer.headers["set-cookie"]
        assert re.search(r"(?i)httponly", cookie) and re.search(r"(?i)samesite=strict", cookie)
        assert "path=/ui" in cookie.lower() and ADMIN_TOKEN not in cookie
        page = await http.get("/ui/")
        assert page.status_code == 200 and 'data-model="demo"' in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert ADMIN_TOKEN not in page.text
        # Nothing in Redis holds the token or the session id in the clear.
        sid = http.cookies["slurmless_ui"]
        for key in await redis_client.keys("*"):
            blob = str(await redis_client.dump(key))
            assert ADMIN_TOKEN not in blob and sid not in blob

        # Logging out needs the page's CSRF token.
        refused = await http.post("/ui/logout", data={"csrf": "guess"}, headers=SAME_SITE)
        assert refused.status_code == 403
        assert (await http.get("/ui/state")).status_code == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        out = await http.post("/ui/logout", data={"csrf": csrf.group(1)}, headers=SAME_SITE)
        assert out.status_code == 303
        http.cookies.set("slurmless_ui", sid)
        assert (await http.get("/ui/state")).status_code == 401, "the session ended on the server"


async def test_cross_site_and_unprivileged_logins_are_refused_and_revocation_ends_sessions(
    redis_client: aioredis.Redis, redis_server: LocalRedis
) -> None:
    url = redis_server.url
    store = ApiKeyStore(redis_client)
    user, _ = await store.create(tenant="physics", now_s=time.time())
    async with gateway(url, root_settings=_root()) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        # An operator key, made through the admin API.
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert (await http.post("/admin/v1/tenants", json={"name": "ops"}, headers=admin)).status_code == 201
        made = await http.post("/admin/v1/keys", json={"tenant": "ops", "operator": True}, headers=admin)
        assert made.status_code == 201 and made.json()["record"]["operator"] is True
        operator, key_id = made.json()["key"], made.json()["record"]["key_id"]
        assert (await http.get("/admin/v1/status", headers={"Authorization": f"Bearer {operator}"})).status_code == 403
        cross = await http.post("/ui/login", data={"key": ADMIN_TOKEN}, headers={"Sec-Fetch-Site": "cross-site"})
        assert cross.status_code == 403 and "slurmless_ui" not in http.cookies
        elsewhere = await http.post("/ui/login", data={"key": ADMIN_TOKEN}, headers={"Origin": "https://evil.example"})
        assert elsewhere.status_code == 403
        assert (await _login(http, user)).status_code == 401
        assert (await _login(http, "sk-sl-nope-nope")).status_code == 401
        assert (await http.get("/ui/login?key=" + ADMIN_TOKEN)).status_code == 200  # a key in a URL logs nobody in
        assert "slurmless_ui" not in http.cookies

        assert (await _login(http, operator)).status_code == 303
        assert (await http.get("/ui/state")).status_code == 200
        assert await store.revoke(key_id)
        assert (await http.get("/ui/state")).status_code == 401, "a revoked key's sessions end at once"
