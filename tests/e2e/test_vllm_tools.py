"""A tenant registers a model with tool calling through the admin API, and real vLLM serves tool calls
through slurmless (runs after test_vllm_e2e.py on the same stack)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
import redis.asyncio as aioredis
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from slurmless.demo_model import VLLM_ENGINE_ARGS
from tests.e2e.conftest import E2E
from warmpool.apikeys import ApiKeyStore
from warmpool.tenants import TenantSpec, TenantStore

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

COLD_START_BUDGET_S = 600.0
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "pick_unit",
            "description": "Pick a temperature unit.",
            "parameters": {
                "type": "object",
                "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["unit"],
                "additionalProperties": False,
            },
        },
    }
]
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Which unit?"}]


async def _tenant_key(redis_url: str) -> str:
    client = aioredis.Redis.from_url(redis_url)
    try:
        await TenantStore(client).create(TenantSpec(name="chem", max_models=2))
        key, _ = await ApiKeyStore(client).create(tenant="chem", can_register=True, now_s=time.time())
        return key
    finally:
        await client.aclose()


def test_a_tenant_registers_tool_calling_and_gets_a_tool_call(e2e: E2E) -> None:
    key = asyncio.run(_tenant_key(e2e.redis_url))
    engine_args = {
        **{k.removeprefix("--"): v for k, v in VLLM_ENGINE_ARGS.items()},
        "enable_auto_tool_choice": True,
        "tool_call_parser": "pythonic",
        "structured_outputs_config.backend": "xgrammar",
    }
    registered = httpx.post(
        e2e.base_url + "/admin/v1/models",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "name": "tools",
            "source": str(e2e.source),
            "engine_args": engine_args,
            "resources": {"gpus": 1, "cpus": 2, "mem_mb": 4000, "time_limit_min": 60},
            "policy": {"max_replicas": 1, "keepalive_min_s": 30, "keepalive_max_s": 60},
        },
        timeout=30,
    )
    assert registered.status_code == 201, registered.text
    assert registered.json()["model"]["engine_args"]["--tool-call-parser"] == "pythonic"
    # The same key may not point the engine at a file: one line, nothing stored.
    refused = httpx.post(
        e2e.base_url + "/admin/v1/models",
        headers={"Authorization": f"Bearer {key}"},
        json={"name": "leaky", "source": str(e2e.source), "engine_args": {"chat_template": "/proc/self/environ"}},
        timeout=30,
    )
    assert refused.status_code == 403 and "admins only" in refused.json()["error"]["message"]

    client = openai.OpenAI(base_url=e2e.base_url + "/v1", api_key=key, max_retries=0, timeout=COLD_START_BUDGET_S)
    # "auto" is refused by vLLM unless the engine runs with --enable-auto-tool-choice and a parser.
    auto = client.chat.completions.create(
        model="tools", messages=MESSAGES, tools=TOOLS, tool_choice="auto", max_tokens=8
    )
    assert auto.choices and auto.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # A named tool choice: the tiny model's random weights still produce a valid call (structured outputs).
    named = client.chat.completions.create(
        model="tools",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "pick_unit"}},
        max_tokens=64,
    )
    calls = named.choices[0].message.tool_calls
    print(f"tool call through slurmless: {calls}")
    assert calls and calls[0].type == "function" and calls[0].function.name == "pick_unit"
    assert json.loads(calls[0].function.arguments)["unit"] in ("celsius", "fahrenheit")
