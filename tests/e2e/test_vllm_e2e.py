"""Real vLLM (CPU build) launched by the real launcher through the local Slurm cluster, requested
through the gateway with the official openai client. The tests run in file order and share one stack:
cold start, warm, non-streaming, async, then idle back to zero."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.conftest import E2E, KEEPALIVE_S, MODEL

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

COLD_START_BUDGET_S = 600.0
"""vLLM on 2 shared cores becomes healthy in about 100 s; leave room for a loaded CI machine."""
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello, who are you?"}]


def client(e2e: E2E, timeout_s: float = COLD_START_BUDGET_S) -> openai.OpenAI:
    return openai.OpenAI(base_url=e2e.base_url + "/v1", api_key=e2e.key, max_retries=0, timeout=timeout_s)


def slurmless_jobs(e2e: E2E) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %j %T"],
        env={**os.environ, **e2e.slurm_env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if "slurmless-" in line]


def test_cold_request_waits_with_progress_then_streams(e2e: E2E) -> None:
    assert slurmless_jobs(e2e) == [], "the model must start cold"
    comments: list[str] = []

    def watch_raw_stream() -> None:
        # A second, raw client on the same cold model sees the SSE comments the openai client skips.
        with httpx.stream(
            "POST",
            e2e.base_url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {e2e.key}"},
            json={"model": MODEL, "stream": True, "max_tokens": 4, "messages": MESSAGES},
            timeout=COLD_START_BUDGET_S,
        ) as resp:
            for line in resp.iter_lines():
                if line.startswith(":"):
                    comments.append(line)

    watcher = threading.Thread(target=watch_raw_stream)
    watcher.start()
    started = time.monotonic()
    stream = client(e2e).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, max_tokens=16)
    text = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
    cold_s = time.monotonic() - started
    watcher.join(timeout=COLD_START_BUDGET_S)
    print(f"cold start to end of stream: {cold_s:.1f} s; {len(comments)} progress comments")
    assert text, "no tokens streamed"
    assert any(c.startswith(": slurmless queue") for c in comments), comments
    phases = {part.split("=", 1)[1] for c in comments for part in c.split() if part.startswith("phase=")}
    assert phases & {"pending", "starting", "loading", "cold"}, phases
    assert len(slurmless_jobs(e2e)) == 1


def test_second_request_is_served_warm(e2e: E2E) -> None:
    started = time.monotonic()
    raw = client(e2e, timeout_s=60).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=8,
    )
    elapsed = time.monotonic() - started
    completion = raw.parse()
    assert raw.headers["x-slurmless-cold-start"] == "false"
    assert completion.choices[0].message.content is not None
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert elapsed < 30, f"a warm request took {elapsed:.1f} s"


def test_completions_and_async_mode(e2e: E2E) -> None:
    completion = client(e2e, timeout_s=60).completions.create(model=MODEL, prompt="Slurm is", max_tokens=5)
    assert completion.choices[0].text is not None
    headers = {"Authorization": f"Bearer {e2e.key}", "Prefer": "respond-async"}
    body = {"model": MODEL, "max_tokens": 5, "messages": MESSAGES}
    submitted = httpx.post(e2e.base_url + "/v1/chat/completions", headers=headers, json=body, timeout=30)
    assert submitted.status_code == 202, submitted.text
    rid = submitted.json()["id"]
    deadline = time.monotonic() + 120
    while True:
        polled = httpx.get(f"{e2e.base_url}/v1/async/{rid}", params={"wait_s": 10}, headers=headers, timeout=30)
        if polled.status_code != 202:
            break
        assert time.monotonic() < deadline, "async request never finished"
    assert polled.status_code == 200, polled.text
    answer = json.loads(polled.content)
    assert answer["choices"][0]["message"]["content"] is not None


def test_other_routes_workflows_and_a_batch_on_real_vllm(e2e: E2E) -> None:
    auth = {"Authorization": f"Bearer {e2e.key}"}
    with httpx.Client(base_url=e2e.base_url, headers=auth, timeout=120) as h:
        tokens = h.post("/tokenize", json={"model": MODEL, "prompt": "Slurm schedules jobs"})
        assert tokens.status_code == 200, tokens.text
        ids = tokens.json()["tokens"]
        text = h.post("/detokenize", json={"model": MODEL, "tokens": ids})
        assert text.status_code == 200 and "Slurm" in text.json()["prompt"]
        long_input = " ".join(f"word{i}" for i in range(200))
        body = {"model": MODEL, "input": long_input, "instruction": "Summarise:", "chunk_tokens": 128}
        chunked = h.post("/v1/slurmless/chunked", json={**body, "overlap_tokens": 16, "max_tokens": 4})
        assert chunked.status_code == 200, chunked.text
        doc = chunked.json()
        assert len(doc["chunks"]) >= 2 and doc["chunks"][-1]["end_token"] == doc["input_tokens"]
        tribunal = h.post(
            "/v1/slurmless/tribunal",
            json={"generator": MODEL, "critic": MODEL, "rounds": 1, "max_tokens": 4, "messages": MESSAGES},
        )
        assert tribunal.status_code == 200, tribunal.text
        assert [s["role"] for s in tribunal.json()["steps"]] == ["generate", "critique", "revise"]
    c = client(e2e, timeout_s=120)
    response = c.responses.create(model=MODEL, input="Hello", max_output_tokens=4)
    # 4 tokens end it early: "incomplete" (max_output_tokens), as vLLM reports it.
    assert response.status in ("completed", "incomplete") and response.output
    lines = [
        {
            "custom_id": f"e2e-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": MESSAGES, "max_tokens": 4},
        }
        for i in range(5)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = c.files.create(file=("batch.jsonl", data), purpose="batch")
    batch = c.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 120
    while (batch := c.batches.retrieve(batch.id)).status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.5)
    assert batch.status == "completed" and batch.output_file_id is not None
    out = [json.loads(x) for x in c.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(r["custom_id"] for r in out) == [f"e2e-{i}" for i in range(5)]
    assert all(r["response"]["status_code"] == 200 for r in out)
    # The lines went with vLLM priority 10 (`gateway.batch.line_priority`) to an engine the launcher started
    # with `--scheduling-policy priority`; an interactive request (priority 0) on the same engine is served.
    job_id = slurmless_jobs(e2e)[0].split()[0]
    script = subprocess.run(
        ["scontrol", "write", "batch_script", job_id, "-"],
        env={**os.environ, **e2e.slurm_env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "--scheduling-policy priority" in script
    interactive = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    assert interactive.choices[0].message.content is not None
    with httpx.Client(base_url=e2e.base_url, headers=auth, timeout=120) as h:
        jump = h.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "priority": -1})
        assert jump.status_code == 400 and jump.json()["error"]["param"] == "priority"


def test_idle_model_scales_to_zero(e2e: E2E) -> None:
    deadline = time.monotonic() + KEEPALIVE_S + 180
    while slurmless_jobs(e2e):
        assert time.monotonic() < deadline, f"job still in squeue: {slurmless_jobs(e2e)}"
        time.sleep(2)
    models = httpx.get(e2e.base_url + "/v1/models", headers={"Authorization": f"Bearer {e2e.key}"}, timeout=10).json()
    state = {m["id"]: m["slurmless"]["state"] for m in models["data"]}
    assert state[MODEL] == "cold", state
