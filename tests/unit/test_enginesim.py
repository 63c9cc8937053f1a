"""The engine simulator in-process: config parsing, scheduler, and the HTTP surface.

Shapes are checked through ``httpx.ASGITransport``; behaviour that needs a real connection
(client disconnects, the waiting queue, hanging) runs on a real uvicorn server on a free port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import math
import socket
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

import enginesim
from enginesim import tokens
from enginesim.app import build_app, engine_of
from enginesim.config import SimConfig, parse_args, parse_context_length
from enginesim.scheduler import Scheduler

READY = SimConfig(load_time_s=0, served_model_names=("sim",))
TIMEOUT = httpx.Timeout(5.0)


def asgi_client(app: Starlette, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://sim", timeout=TIMEOUT, headers=headers
    )


def chat_body(content: str = "hello simulated world", **extra: Any) -> dict[str, Any]:
    return {"model": "sim", "messages": [{"role": "user", "content": content}], **extra}


def sse_events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(event.startswith("data: ") for event in events)
    return [event[len("data: ") :] for event in events]


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll a condition of the server's state (waiting for an event, not asserting a duration)."""
    async with asyncio.timeout(timeout_s):
        # The server's state has no event to wait on; polling it is the observation.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def real_server(app: Starlette) -> AsyncIterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="off", log_level="warning", access_log=False, http="httptools", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_until(lambda: server.started)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


# -- config -------------------------------------------------------------------------------


def test_parse_args_accepts_a_vllm_command_line_and_ignores_unknown_flags() -> None:
    config = parse_args(
        [
            "--model",
            "/models/llama",
            "--served-model-name",
            "llama",
            "llama-alias",
            "--host",
            "127.0.0.1",
            "--port",
            "9123",
            "--api-key",
            "secret",
            "--tensor-parallel-size",
            "2",
            "--max-model-len",
            "8k",
            "--dtype",
            "bfloat16",
            "--enable-lora",
            "--max-loras",
            "4",
            "--lora-modules",
            "sql=/loras/sql",
            "--gpu-memory-utilization",
            "0.9",
            "--enable-prefix-caching",
            "--disable-log-requests",
        ],
        environ={},
    )
    assert config.model == "/models/llama"
    assert config.model_names == ("llama", "llama-alias")
    assert (config.host, config.port, config.api_key) == ("127.0.0.1", 9123, "secret")
    assert config.max_model_len == 8000
    assert config.enable_lora
    assert config.lora_modules == (("sql", "/loras/sql"),)
    assert config.ignored_args == (
        "--gpu-memory-utilization",
        "0.9",
        "--enable-prefix-caching",
        "--disable-log-requests",
    )


def test_parse_args_simulator_settings_from_env_and_flags_with_flags_winning() -> None:
    environ = {
        "ENGINESIM_LOAD_TIME_S": "7.5",
        "ENGINESIM_INTER_TOKEN_MS": "3",
        "ENGINESIM_CRASH_AFTER": "4",
        "ENGINESIM_MAX_RUNNING": "9",
    }
    config = parse_args(["--sim-load-time-s", "0.5", "--sim-hang-after", "2"], environ=environ)
    assert config.load_time_s == 0.5
    assert config.inter_token_ms == 3.0
    assert config.crash_after == 4
    assert config.hang_after == 2
    assert config.max_running == 9
    assert config.model_names == ("sim-model",)


def test_running_cap_defaults_to_vllm_max_num_seqs() -> None:
    assert parse_args(["--max-num-seqs", "12"], environ={}).max_running == 12
    assert parse_args([], environ={}).max_running == 256
    assert parse_args([], environ={"VLLM_API_KEY": "k"}).api_key == "k"


def test_parse_context_length_follows_vllm_suffixes() -> None:
    assert parse_context_length("4096") == 4096
    assert parse_context_length("1k") == 1000
    assert parse_context_length("1K") == 1024


def test_public_surface_is_pinned() -> None:
    assert enginesim.__all__ == ["Engine", "SimConfig", "build_app", "engine_of", "parse_args"]


# -- scheduler ----------------------------------------------------------------------------


async def test_scheduler_caps_running_and_grants_fifo() -> None:
    scheduler = Scheduler(max_running=1)
    await scheduler.acquire()
    order: list[str] = []

    async def take(name: str) -> None:
        await scheduler.acquire()
        order.append(name)

    first, second = asyncio.create_task(take("first")), asyncio.create_task(take("second"))
    await wait_until(lambda: scheduler.waiting == 2)
    assert scheduler.running == 1
    scheduler.release()
    await first
    scheduler.release()
    await second
    assert order == ["first", "second"]
    scheduler.release()
    assert (scheduler.running, scheduler.waiting) == (0, 0)


@pytest.mark.parametrize(
    ("by_priority", "expected"), [(True, ["interactive", "batch"]), (False, ["batch", "interactive"])]
)
async def test_scheduler_priority_policy_admits_a_lower_priority_value_first(
    by_priority: bool, expected: list[str]
) -> None:
    # vLLM's --scheduling-policy priority: a later interactive request (0) is admitted before a queued
    # batch line (10); first-come-first-served ignores the field.
    scheduler = Scheduler(max_running=1, by_priority=by_priority)
    await scheduler.acquire()
    order: list[str] = []

    async def take(name: str, priority: int) -> None:
        await scheduler.acquire(priority)
        order.append(name)
        scheduler.release()

    batch = asyncio.create_task(take("batch", 10))
    await wait_until(lambda: scheduler.waiting == 1)
    interactive = asyncio.create_task(take("interactive", 0))
    await wait_until(lambda: scheduler.waiting == 2)
    scheduler.release()
    await asyncio.gather(batch, interactive)
    assert order == expected
    assert (scheduler.running, scheduler.waiting) == (0, 0)


async def test_scheduler_cancelled_waiter_leaves_the_queue() -> None:
    scheduler = Scheduler(max_running=1)
    await scheduler.acquire()
    waiter = asyncio.create_task(scheduler.acquire())
    await wait_until(lambda: scheduler.waiting == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert scheduler.waiting == 0
    scheduler.release()
    assert scheduler.running == 0


async def test_scheduler_slot_granted_to_a_cancelled_waiter_is_passed_on() -> None:
    scheduler = Scheduler(max_running=1)
    await scheduler.acquire()
    doomed = asyncio.create_task(scheduler.acquire())
    heir = asyncio.create_task(scheduler.acquire())
    await wait_until(lambda: scheduler.waiting == 2)
    scheduler.release()  # grants the slot to ``doomed`` ...
    doomed.cancel()  # ... which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await heir
    assert (scheduler.running, scheduler.waiting) == (1, 0)


# -- HTTP surface (ASGI) ------------------------------------------------------------------


async def test_models_lists_served_names_like_vllm() -> None:
    app = build_app(SimConfig(load_time_s=0, model="/m/llama", served_model_names=("a", "b")))
    async with asgi_client(app) as client:
        response = await client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["a", "b"]
    assert all(m["object"] == "model" and m["owned_by"] == "vllm" for m in body["data"])
    assert body["data"][0]["max_model_len"] == 4096
    assert body["data"][0]["root"] == "/m/llama"


async def test_chat_completion_honours_max_tokens_and_max_completion_tokens() -> None:
    app = build_app(READY)
    async with asgi_client(app) as client:
        by_max_tokens = await client.post("/v1/chat/completions", json=chat_body(max_tokens=3, ignore_eos=True))
        by_completion_tokens = await client.post(
            "/v1/chat/completions", json=chat_body(max_tokens=50, max_completion_tokens=2, ignore_eos=True)
        )
    body = by_max_tokens.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "sim"
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length"
    assert len(choice["message"]["content"].split()) == 3
    assert body["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 3,
        "total_tokens": 6,
        "prompt_tokens_details": None,
    }
    assert by_completion_tokens.json()["usage"]["completion_tokens"] == 2


async def test_eos_is_deterministic_from_the_prompt_unless_ignore_eos() -> None:
    prompt = "tell me a story about a simulator"
    expected_eos = tokens.eos_position(tokens.prompt_seed(prompt))
    app = build_app(READY)
    async with asgi_client(app) as client:
        stopped = (await client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1000})).json()
        again = (await client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1000})).json()
        ignored = (
            await client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 300, "ignore_eos": True})
        ).json()
    assert stopped["id"].startswith("cmpl-")
    assert stopped["object"] == "text_completion"
    assert stopped["model"] == "sim"  # no model in the request: the first served name
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] == expected_eos
    assert again["choices"][0]["text"] == stopped["choices"][0]["text"]
    assert ignored["choices"][0]["finish_reason"] == "length"
    assert ignored["usage"]["completion_tokens"] == 300


async def test_chat_stream_is_sse_with_usage_chunk_and_done() -> None:
    app = build_app(READY)
    async with asgi_client(app) as client:
        plain = await client.post("/v1/chat/completions", json=chat_body(max_tokens=5, ignore_eos=True))
        streamed = await client.post(
            "/v1/chat/completions",
            json=chat_body(max_tokens=5, ignore_eos=True, stream=True, stream_options={"include_usage": True}),
        )
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_events(streamed.text)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "sim" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content_chunks = chunks[1:-1]
    assert len(content_chunks) == 5
    assert [c["choices"][0]["finish_reason"] for c in content_chunks] == [None] * 4 + ["length"]
    text = "".join(c["choices"][0]["delta"]["content"] for c in content_chunks)
    assert text == plain.json()["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 5


async def test_completion_stream_without_usage_and_with_tokens_per_chunk() -> None:
    app = build_app(SimConfig(load_time_s=0, tokens_per_chunk=4))
    async with asgi_client(app) as client:
        streamed = await client.post(
            "/v1/completions", json={"prompt": "p q r", "max_tokens": 10, "ignore_eos": True, "stream": True}
        )
    events = sse_events(streamed.text)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert len(chunks) == math.ceil(10 / 4)
    assert all("usage" not in c for c in chunks)
    assert all(c["object"] == "text_completion" for c in chunks)
    assert len("".join(c["choices"][0]["text"] for c in chunks).split()) == 10
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_errors_are_openai_shaped() -> None:
    app = build_app(SimConfig(load_time_s=0, served_model_names=("sim",), max_model_len=100))
    async with asgi_client(app) as client:
        unknown = await client.post("/v1/chat/completions", json=chat_body() | {"model": "nope"})
        too_long = await client.post("/v1/chat/completions", json=chat_body(max_tokens=200))
        bad_json = await client.post("/v1/completions", content=b"{not json")
        no_messages = await client.post("/v1/chat/completions", json={"model": "sim"})
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": {"message": "The model `nope` does not exist.", "type": "NotFoundError", "param": None, "code": 404}
    }
    assert too_long.status_code == 400
    assert "maximum context length is 100 tokens" in too_long.json()["error"]["message"]
    assert bad_json.status_code == 400
    assert no_messages.status_code == 400


async def test_api_key_guards_v1_but_not_health_or_metrics() -> None:
    app = build_app(SimConfig(load_time_s=0, api_key="s3cret"))
    async with asgi_client(app) as client:
        missing = await client.get("/v1/models")
        wrong = await client.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": "Bearer nope"})
        right = await client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        health = await client.get("/health")
        metrics = await client.get("/metrics")
    assert (missing.status_code, missing.json()) == (401, {"error": "Unauthorized"})
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert health.status_code == 200
    assert metrics.status_code == 200


async def test_loading_answers_503_until_load_time_passes() -> None:
    now_s = [1000.0]
    app = build_app(SimConfig(load_time_s=30), clock=lambda: now_s[0])
    async with asgi_client(app) as client:
        assert (await client.get("/health")).status_code == 503
        loading = await client.post("/v1/chat/completions", json=chat_body() | {"model": "sim-model"})
        assert loading.status_code == 503
        assert loading.json()["error"]["type"] == "ServiceUnavailableError"
        now_s[0] += 29.9
        assert (await client.get("/health")).status_code == 503
        now_s[0] += 0.1
        assert (await client.get("/health")).status_code == 200
        ready = await client.post("/v1/chat/completions", json=chat_body() | {"model": "sim-model"})
        assert ready.status_code == 200


async def test_metrics_are_valid_prometheus_with_vllm_names_and_labels() -> None:
    app = build_app(READY)
    async with asgi_client(app) as client:
        await client.post("/v1/chat/completions", json=chat_body(max_tokens=4, ignore_eos=True))
        await client.post("/v1/completions", json={"prompt": "one two", "max_tokens": 1000})
        response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    labels = (("engine", "0"), ("model_name", "sim"))
    assert samples[("vllm:num_requests_running", labels)] == 0.0
    assert samples[("vllm:num_requests_waiting", labels)] == 0.0
    assert samples[("vllm:kv_cache_usage_perc", labels)] == 0.0
    assert samples[("vllm:prompt_tokens_total", labels)] == 3 + 2
    success = "vllm:request_success_total"
    assert samples[(success, tuple(sorted((*labels, ("finished_reason", "length")))))] == 1.0
    assert samples[(success, tuple(sorted((*labels, ("finished_reason", "stop")))))] == 1.0
    assert engine_of(app).counters.requests_started == 2


async def test_embeddings_float_and_base64() -> None:
    app = build_app(READY)
    async with asgi_client(app) as client:
        floats = (await client.post("/v1/embeddings", json={"model": "sim", "input": ["a b", "c"]})).json()
        packed = (await client.post("/v1/embeddings", json={"input": "a b", "encoding_format": "base64"})).json()
    assert floats["object"] == "list"
    assert [d["index"] for d in floats["data"]] == [0, 1]
    vector = floats["data"][0]["embedding"]
    assert len(vector) == tokens.EMBEDDING_DIM
    assert math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-9)
    assert floats["usage"]["prompt_tokens"] == 3
    raw = base64.b64decode(packed["data"][0]["embedding"])
    decoded = struct.unpack(f"<{tokens.EMBEDDING_DIM}f", raw)
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(decoded, vector, strict=True))


async def test_lora_adapters_load_serve_and_unload() -> None:
    app = build_app(SimConfig(load_time_s=0, served_model_names=("base",), enable_lora=True))
    adapter = {"lora_name": "sql", "lora_path": "/loras/sql"}
    async with asgi_client(app) as client:
        assert (await client.post("/v1/load_lora_adapter", json=adapter)).status_code == 200
        assert (await client.post("/v1/load_lora_adapter", json=adapter)).status_code == 400
        models = (await client.get("/v1/models")).json()["data"]
        assert {"id": "sql", "parent": "base", "root": "/loras/sql"}.items() <= models[1].items()
        served = await client.post("/v1/chat/completions", json=chat_body() | {"model": "sql"})
        assert (served.status_code, served.json()["model"]) == (200, "sql")
        assert (await client.post("/v1/unload_lora_adapter", json={"lora_name": "sql"})).status_code == 200
        assert (await client.post("/v1/unload_lora_adapter", json={"lora_name": "sql"})).status_code == 404
        gone = await client.post("/v1/chat/completions", json=chat_body() | {"model": "sql"})
        assert gone.status_code == 404


async def test_lora_loading_needs_enable_lora() -> None:
    app = build_app(READY)
    async with asgi_client(app) as client:
        response = await client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/x"})
    assert response.status_code == 400


async def test_crash_after_n_requests_calls_the_crash_hook() -> None:
    crashes: list[int] = []
    app = build_app(SimConfig(load_time_s=0, crash_after=2), on_crash=lambda: crashes.append(1))
    async with asgi_client(app) as client:
        for _ in range(2):
            assert (await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})).status_code == 200
        assert crashes == []
        crashed = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert crashes == [1]
    assert crashed.status_code == 500


# -- HTTP surface (real uvicorn) ----------------------------------------------------------


async def test_waiting_queue_and_client_disconnect_mid_stream_release_the_slot() -> None:
    app = build_app(SimConfig(load_time_s=0, served_model_names=("sim",), max_running=1, inter_token_ms=20))
    engine = engine_of(app)
    long_stream = chat_body(max_tokens=2000, ignore_eos=True, stream=True)
    async with real_server(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client:
        async with client.stream("POST", "/v1/chat/completions", json=long_stream) as holder:
            lines = holder.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            assert engine.scheduler.running == 1

            queued = asyncio.create_task(
                client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3, "ignore_eos": True})
            )
            await wait_until(lambda: engine.scheduler.waiting == 1)
            metrics = (await client.get("/metrics")).text
            assert 'vllm:num_requests_waiting{engine="0",model_name="sim"} 1.0' in metrics
            assert 'vllm:num_requests_running{engine="0",model_name="sim"} 1.0' in metrics
            # Leaving the block closes the connection mid-stream.

        answer = await queued
        assert answer.status_code == 200
        await wait_until(lambda: engine.scheduler.running == 0)
    assert engine.counters.finished["abort"] == 1
    assert engine.counters.finished["length"] == 1
    assert 0 < engine.counters.generation_tokens < 2000 + 3


async def test_priority_policy_serves_a_queued_interactive_request_before_queued_batch_lines() -> None:
    config = parse_args(["--scheduling-policy", "priority", "--served-model-name", "sim", "--max-num-seqs", "1"])
    app = build_app(dataclasses.replace(config, load_time_s=0, inter_token_ms=5))
    engine = engine_of(app)
    done: list[str] = []

    async def post(client: httpx.AsyncClient, name: str, max_tokens: int = 4, **extra: Any) -> None:
        body = chat_body(max_tokens=max_tokens, ignore_eos=True, **extra)
        answer = await client.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200
        done.append(name)

    async with real_server(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client:
        holder = asyncio.create_task(post(client, "holder", max_tokens=40))
        await wait_until(lambda: engine.scheduler.running == 1)
        lines = [asyncio.create_task(post(client, f"line{i}", priority=10)) for i in range(3)]
        await wait_until(lambda: engine.scheduler.waiting == 3)
        interactive = asyncio.create_task(post(client, "interactive"))
        await wait_until(lambda: engine.scheduler.waiting == 4)
        await asyncio.gather(holder, interactive, *lines)
    assert done[:2] == ["holder", "interactive"]


async def test_client_leaving_the_waiting_queue_is_an_abort_without_a_slot() -> None:
    app = build_app(SimConfig(load_time_s=0, max_running=1, inter_token_ms=20))
    engine = engine_of(app)
    async with real_server(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client:
        holder = asyncio.create_task(
            client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2000, "ignore_eos": True})
        )
        await wait_until(lambda: engine.scheduler.running == 1)
        waiter = asyncio.create_task(client.post("/v1/completions", json={"prompt": "y", "max_tokens": 2}))
        await wait_until(lambda: engine.scheduler.waiting == 1)
        waiter.cancel()
        await wait_until(lambda: engine.scheduler.waiting == 0 and engine.counters.finished["abort"] == 1)
        assert engine.scheduler.running == 1
        holder.cancel()
        await wait_until(lambda: engine.scheduler.running == 0)
    assert engine.counters.finished["abort"] == 2
    with contextlib.suppress(asyncio.CancelledError):
        await holder
    with contextlib.suppress(asyncio.CancelledError):
        await waiter


async def test_hang_after_n_requests_stops_answering_but_metrics_stay_up() -> None:
    app = build_app(SimConfig(load_time_s=0, hang_after=1))
    short = httpx.Timeout(0.3)
    async with real_server(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client:
        assert (await client.get("/health")).status_code == 200
        first = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert first.status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=short)
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/health", timeout=short)
        assert (await client.get("/metrics")).status_code == 200
    assert engine_of(app).hung
