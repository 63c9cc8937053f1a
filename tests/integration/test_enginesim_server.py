"""The engine simulator as a real process (``python -m enginesim``), driven by the official openai client."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import httpx
import openai
import pytest

API_KEY = "sim-key"
CLIENT_TIMEOUT_S = 10.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@dataclass
class SimProcess:
    proc: subprocess.Popen[str]
    base_url: str
    health_statuses: list[int] = field(default_factory=list)

    @property
    def api_base(self) -> str:
        return self.base_url + "/v1"


def _read_listening_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline() if proc.stdout else ""), daemon=True).start()
    try:
        line = lines.get(timeout=timeout_s)
    except queue.Empty:
        raise AssertionError("enginesim did not print its address in time") from None
    assert line.startswith("enginesim listening on "), line
    return line.removeprefix("enginesim listening on ").strip()


def start_sim(args: list[str], env: Mapping[str, str] | None = None) -> SimProcess:
    """Start the simulator on a free port and return once it printed its address."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "enginesim", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        return SimProcess(proc=proc, base_url=_read_listening_line(proc, START_TIMEOUT_S))
    except BaseException:
        stop_sim(proc)
        raise


def stop_sim(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)
    if proc.stdout is not None:
        proc.stdout.close()


def wait_healthy(sim: SimProcess, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            status = client.get(sim.base_url + "/health").status_code
            sim.health_statuses.append(status)
            if status == 200:
                return
            time.sleep(0.05)
    raise AssertionError(f"enginesim not healthy after {timeout_s} s: {sim.health_statuses[-5:]}")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    process = start_sim(
        [
            "--model",
            "/models/sim-llama",
            "--served-model-name",
            "sim",
            "sim-alias",
            "--api-key",
            API_KEY,
            "--enable-lora",
            "--max-model-len",
            "2048",
            # vLLM flags the simulator has no use for are accepted and ignored.
            "--gpu-memory-utilization",
            "0.9",
            "--tensor-parallel-size",
            "1",
            "--enable-prefix-caching",
            "--sim-load-time-s",
            "1.5",
        ]
    )
    try:
        wait_healthy(process)
        yield process
    finally:
        stop_sim(process.proc)


@pytest.fixture
def client(sim: SimProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.api_base, api_key=API_KEY, max_retries=0, timeout=CLIENT_TIMEOUT_S) as sync_client:
        yield sync_client


def async_client(sim: SimProcess, api_key: str = API_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.api_base, api_key=api_key, max_retries=0, timeout=CLIENT_TIMEOUT_S)


def test_health_is_503_while_loading_then_200(sim: SimProcess) -> None:
    assert sim.health_statuses[0] == 503
    assert sim.health_statuses[-1] == 200


def test_models_lists_served_names(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["sim", "sim-alias"]
    assert all(m.owned_by == "vllm" for m in models.data)


def test_sync_chat_completion(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="sim",
        messages=[{"role": "user", "content": "Say something"}],
        max_completion_tokens=7,
        extra_body={"ignore_eos": True},
    )
    assert response.id.startswith("chatcmpl-")
    assert response.choices[0].finish_reason == "length"
    assert response.choices[0].message.content
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (2, 7)


def test_sync_chat_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="sim-alias",
        messages=[{"role": "user", "content": "Stream please"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    pieces: list[str] = []
    finish_reasons: list[str] = []
    usage = None
    for chunk in stream:
        assert chunk.model == "sim-alias"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            if choice.finish_reason is not None:
                finish_reasons.append(choice.finish_reason)
    assert len("".join(pieces).split()) == 6
    assert finish_reasons == ["length"]
    assert usage is not None
    assert usage.completion_tokens == 6


def test_sync_completion_stops_at_simulated_eos(client: openai.OpenAI) -> None:
    response = client.completions.create(model="sim", prompt="Once upon a time", max_tokens=1000)
    assert response.id.startswith("cmpl-")
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert 0 < response.usage.completion_tokens < 1000


async def test_async_chat_stream_and_completion(sim: SimProcess) -> None:
    async with async_client(sim) as aclient:
        stream = await aclient.chat.completions.create(
            model="sim",
            messages=[{"role": "user", "content": "async"}],
            max_tokens=4,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        contents = [c.choices[0].delta.content async for c in stream if c.choices]
        completion = await aclient.completions.create(
            model="sim", prompt="async prompt", max_tokens=3, extra_body={"ignore_eos": True}
        )
    assert len("".join(c or "" for c in contents).split()) == 4
    assert completion.choices[0].finish_reason == "length"
    assert len(completion.choices[0].text.split()) == 3


async def test_async_completion_stream(sim: SimProcess) -> None:
    async with async_client(sim) as aclient:
        stream = await aclient.completions.create(
            model="sim",
            prompt="stream me",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices).count(" ") == 5
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 2 + 5


async def test_errors_map_to_openai_exceptions(sim: SimProcess) -> None:
    async with async_client(sim, api_key="wrong") as bad_key:
        with pytest.raises(openai.AuthenticationError):
            await bad_key.models.list()
    async with async_client(sim) as aclient:
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            await aclient.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.BadRequestError, match="maximum context length"):
            await aclient.completions.create(model="sim", prompt="x", max_tokens=5000)


def test_embeddings(client: openai.OpenAI) -> None:
    response = client.embeddings.create(model="sim", input=["hello world", "bye"])
    assert [d.index for d in response.data] == [0, 1]
    assert len(response.data[0].embedding) == 16
    as_floats = client.embeddings.create(model="sim", input="hello world", encoding_format="float")
    assert as_floats.data[0].embedding == pytest.approx(response.data[0].embedding, abs=1e-6)


def test_lora_adapter_becomes_a_model(sim: SimProcess, client: openai.OpenAI) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=sim.base_url, headers=headers, timeout=CLIENT_TIMEOUT_S) as http:
        loaded = http.post("/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": "/loras/sql"})
        assert loaded.status_code == 200
        try:
            assert "sql" in [m.id for m in client.models.list().data]
            response = client.chat.completions.create(
                model="sql", messages=[{"role": "user", "content": "select"}], max_tokens=2
            )
            assert response.model == "sql"
        finally:
            assert http.post("/v1/unload_lora_adapter", json={"lora_name": "sql"}).status_code == 200


def test_metrics_are_open_and_count_requests(sim: SimProcess, client: openai.OpenAI) -> None:
    client.completions.create(model="sim", prompt="count me", max_tokens=2)
    text = httpx.get(sim.base_url + "/metrics", timeout=CLIENT_TIMEOUT_S).text
    assert 'vllm:num_requests_running{engine="0",model_name="sim"} 0.0' in text
    assert 'vllm:kv_cache_usage_perc{engine="0",model_name="sim"}' in text
    assert 'vllm:request_success_total{engine="0",model_name="sim",finished_reason="length"}' in text


def test_crash_after_n_requests_kills_the_process() -> None:
    crashing = start_sim(
        ["--served-model-name", "sim"], env={"ENGINESIM_CRASH_AFTER": "1", "ENGINESIM_LOAD_TIME_S": "0"}
    )
    try:
        wait_healthy(crashing)
        with openai.OpenAI(
            base_url=crashing.api_base, api_key="none", max_retries=0, timeout=CLIENT_TIMEOUT_S
        ) as crash_client:
            first = crash_client.completions.create(model="sim", prompt="x", max_tokens=2)
            assert first.choices[0].text
            with pytest.raises(openai.APIConnectionError):
                crash_client.completions.create(model="sim", prompt="x", max_tokens=2)
        assert crashing.proc.wait(timeout=STOP_TIMEOUT_S) == 1
    finally:
        stop_sim(crashing.proc)
