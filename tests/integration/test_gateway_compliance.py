"""An independent OpenAI-API compliance checker (llm-comply, from PyPI) gives the same verdicts through slurmless as
against the engine directly, for the chat and the Responses formats.

One difference is by design: a request without `model` is refused by slurmless (400: it cannot know
where to route it) while an engine answers it with its only model, so that check passes through
slurmless and fails against the engine simulator.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis
from tests.fixtures.gateway_stack import Served, Sim, add_instance, api_key, engine_sim, gateway, register_model

STRICTER = {"chat-error-handling", "error-handling"}
"""A request without `model`: refused by slurmless, answered by the engine."""


def _checker() -> str:
    found = shutil.which("llm-comply") or str(Path(sys.executable).with_name("llm-comply"))
    if not Path(found).exists():
        pytest.skip("llm-comply is not installed (a dev dependency)")
    return found


async def _verdicts(base_url: str, key: str, fmt: str) -> dict[str, tuple[str, list[str]]]:
    proc = await asyncio.create_subprocess_exec(
        _checker(),
        "run",
        "--json",
        "--format",
        fmt,
        "-u",
        base_url + "/v1",
        "-k",
        key,
        "-m",
        "m",
        "--timeout",
        "30",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=300)
    assert out, err.decode()[-2000:]
    report: dict[str, Any] = json.loads(out)
    return {r["id"]: (r["status"], r.get("errors") or []) for r in report["results"]}


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    async with engine_sim("m") as s:
        yield s


@pytest.fixture
async def gw(redis_server: LocalRedis) -> AsyncIterator[Served]:
    async with gateway(redis_server.url) as served:
        yield served


@pytest.mark.parametrize("fmt", ["openai-chat", "open-responses"])
async def test_compliance_through_slurmless_matches_the_engine(
    redis_client: aioredis.Redis, gw: Served, sim: Sim, fmt: str
) -> None:
    await register_model(redis_client, "m")
    await add_instance(redis_client, "m", sim)
    key = await api_key(redis_client)
    direct = await _verdicts(sim.url, sim.api_key, fmt)
    via = await _verdicts(gw.url, key, fmt)
    assert set(direct) == set(via) and len(direct) >= 9
    for test_id in direct:
        if test_id in STRICTER:
            assert via[test_id][0] == "passed", via[test_id]
        else:
            assert via[test_id] == direct[test_id], test_id
