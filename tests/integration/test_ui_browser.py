"""The status page in headless Chromium, during a real cold start: real Redis, real Slurm, the real
launcher and gateway, the engine simulator. The page is watched going cold -> pending -> loading ->
ready, with a screenshot per state (`SLURMLESS_SCREENSHOTS_DIR` keeps them; the directory is printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from playwright.async_api import BrowserContext, Page

from slurm.localcluster import LocalCluster
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import RunningLauncher, launcher_env, slurm_for, wait_for
from tests.fixtures.browser import screenshot_dir
from tests.fixtures.gateway_stack import gateway
from warmpool.apikeys import ApiKeyStore
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec, Policy, Resources

pytestmark = pytest.mark.slurm

LOAD_TIME_S = 6.0


@pytest.fixture
async def env(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, tmp_path: Path
) -> AsyncIterator[tuple[Settings, aioredis.Redis]]:
    async with launcher_env(slurm_cluster, redis_server, tmp_path, load_time_s=LOAD_TIME_S) as pair:
        yield pair


async def _shot(page: Page, out: Path, name: str) -> Path:
    path = out / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def _phase_seen(page: Page, model: str, phase: str, timeout_s: float) -> None:
    await page.wait_for_selector(f'tr[data-model="{model}"][data-phase="{phase}"]', timeout=timeout_s * 1000)


async def _blocker(settings: Settings, gpus: int) -> int:
    """A job of this test that holds `gpus` of the cluster's GPUs until cancelled."""
    script = (
        "#!/bin/bash\n"
        f"#SBATCH --job-name={settings.launcher.job_name_prefix}blocker\n"
        f"#SBATCH --gres=gpu:{gpus}\n#SBATCH --cpus-per-task=1\n#SBATCH --mem=64\n#SBATCH --time=10\n"
        f"#SBATCH --output={settings.launcher.job_output_dir}/blocker.out\n"
        "sleep 600\n"
    )
    return await slurm_for(settings).submit(script)


async def test_status_page_follows_a_real_cold_start(
    env: tuple[Settings, aioredis.Redis], browser: BrowserContext, tmp_path: Path
) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    # Four GPUs: with one held by another job, Slurm keeps the model's job pending (Resources).
    await ModelStore(client, keys).put(
        ModelSpec(
            name="demo",
            source="org/demo-8b",
            resources=Resources(gpus=4, cpus=1, mem_mb=256, time_limit_min=60),
            policy=Policy(max_replicas=1),
        )
    )
    store = ApiKeyStore(client, keys)
    operator, _ = await store.create(tenant="ops", now_s=time.time(), operator=True)
    user, _ = await store.create(tenant="physics", now_s=time.time())
    out = screenshot_dir(tmp_path, "cold-start")
    shots: dict[str, Path] = {}
    launcher = RunningLauncher(settings)
    request: asyncio.Task[list[str]] | None = None
    try:
        async with gateway(settings.redis.url, keys=keys) as gw:
            page = await browser.new_page()
            await page.goto(gw.url + "/ui/")
            assert page.url.endswith("/ui/login"), "no session: the page sends the browser to the login form"
            # A user key may not look.
            await page.fill("#key", user)
            await page.click("button[type=submit]")
            assert "admin or operator role" in (await page.inner_text(".error"))
            shots["login"] = await _shot(page, out, "0-login-refused")

            await page.fill("#key", operator)
            await page.click("button[type=submit]")
            await _phase_seen(page, "demo", "cold", 15)
            assert operator not in page.url
            cookie = next(c for c in await browser.cookies() if c["name"] == "slurmless_ui")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert operator not in cookie["value"]
            assert "signed in as key:" in await page.inner_text("header")
            shots["cold"] = await _shot(page, out, "1-cold")

            blocker = await _blocker(settings, 1)
            slurm = slurm_for(settings)

            async def blocker_running() -> bool | None:
                job = await slurm.job(blocker)
                return True if job is not None and job.state.value == "RUNNING" else None

            await wait_for(blocker_running, timeout_s=30, what="the blocker job running")

            async def ask() -> list[str]:
                body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
                lines: list[str] = []
                async with (
                    httpx.AsyncClient(timeout=120) as http,
                    http.stream(
                        "POST", gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {user}"}
                    ) as response,
                ):
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        lines.append(line)
                return lines

            request = asyncio.create_task(ask())
            await _phase_seen(page, "demo", "pending", 30)
            row = page.locator('tr[data-model="demo"]')
            # Slurm's pending reason, as the launcher's next squeue reports it.
            await page.wait_for_function(
                """() => /Slurm: \\w+/.test(document.querySelector('tr[data-model="demo"]').innerText)""",
                timeout=15_000,
            )
            assert (await row.locator("td").nth(3).inner_text()).strip() == "1", "one request waits"
            shots["pending"] = await _shot(page, out, "2-pending")

            await slurm.cancel(blocker)
            await _phase_seen(page, "demo", "loading", 30)
            assert (await row.locator(".eta").inner_text()).startswith(("in ", "unknown"))
            shots["loading"] = await _shot(page, out, "3-loading")

            await _phase_seen(page, "demo", "ready", 30)
            lines = await asyncio.wait_for(request, timeout=60)
            assert any("phase=pending" in line for line in lines)
            assert "data: [DONE]" in lines
            # The cold start with its phases, first token included, once the answer went out.
            await page.wait_for_function(
                """() => { const c = document.querySelector('tr[data-model="demo"] td.cold');
                           return c && /first token \\d/.test(c.innerText); }""",
                timeout=15_000,
            )
            cold_text = await row.locator("td.cold").inner_text()
            assert "Slurm wait" in cold_text and "load" in cold_text
            decisions = await page.inner_text('[data-detail="demo"]')
            assert "0 \u2192 1 replicas" in decisions
            assert await page.locator('[data-detail="demo"] svg.chart').count() == 4
            shots["ready"] = await _shot(page, out, "4-ready")

            # Sign out: the session ends on the server, so the old cookie no longer reads the page.
            sid = cookie["value"]
            async with httpx.AsyncClient(timeout=10, cookies={"slurmless_ui": sid}) as http:
                assert (await http.get(gw.url + "/ui/state")).status_code == 200
            await page.click("header button[type=submit]")
            await page.wait_for_url("**/ui/login")
            async with httpx.AsyncClient(timeout=10, cookies={"slurmless_ui": sid}) as http:
                gone = await http.get(gw.url + "/ui/state")
            assert gone.status_code == 401
        for state, path in shots.items():
            print(f"{state}: {path}")
            assert path.stat().st_size > 10_000
    finally:
        if request is not None and not request.done():
            request.cancel()
            with contextlib.suppress(BaseException):
                await request
        await launcher.close()
