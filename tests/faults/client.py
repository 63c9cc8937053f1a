"""What a client sees: one streamed chat completion, classified, and async requests polled.

Every call is bounded: a client that waits longer than its `timeout_s` records `hung`, which the
fault tests assert never happens.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson


@dataclass
class StreamOutcome:
    """One streaming request as its client saw it."""

    status: int = 0
    error: dict[str, Any] | None = None
    """OpenAI's error object: the JSON body of a refusal, or a `data: {"error": ...}` event mid-stream."""
    chunks: int = 0
    done: bool = False
    """`data: [DONE]` arrived."""
    comments: int = 0
    broke: str | None = None
    """Why the stream ended without `[DONE]` or an error event: `closed` (connection dropped) or `hung`."""
    elapsed_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and self.error is None and self.broke is None

    @property
    def kind(self) -> str:
        """`ok`, `http <status> <code>` (refused), `event <code>` (cut with an error event), `closed`, `hung`."""
        if self.broke is not None:
            return self.broke
        code = None if self.error is None else self.error.get("code")
        if self.status != 200:
            return f"http {self.status} {code}"
        if self.error is not None:
            return f"event {code}"
        return "ok" if self.done else "ended without [DONE]"


def chat_body(model: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "stream": True,
        "max_tokens": max_tokens,
        "ignore_eos": True,  # vLLM's extension: exactly max_tokens tokens, so a long stream stays long
        "messages": [{"role": "user", "content": "tell me a long story"}],
    }


async def stream_chat(
    client: httpx.AsyncClient,
    base_url: str,
    key: str,
    model: str,
    *,
    max_tokens: int = 16,
    timeout_s: float = 60.0,
    started: asyncio.Event | None = None,
    started_after_chunks: int = 5,
) -> StreamOutcome:
    """Stream one chat completion; `started` is set once `started_after_chunks` content chunks arrived."""
    out = StreamOutcome()
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            await _stream_into(client, base_url, key, model, max_tokens, out, started, started_after_chunks)
    except TimeoutError:
        out.broke = "hung"
    except httpx.HTTPError:
        # The connection closed (or reset) before the response ended.
        out.broke = "closed"
    out.elapsed_s = time.monotonic() - t0
    return out


async def _stream_into(
    client: httpx.AsyncClient,
    base_url: str,
    key: str,
    model: str,
    max_tokens: int,
    out: StreamOutcome,
    started: asyncio.Event | None,
    started_after_chunks: int,
) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    body = chat_body(model, max_tokens)
    async with client.stream("POST", f"{base_url}/v1/chat/completions", json=body, headers=headers) as resp:
        out.status = resp.status_code
        out.headers = dict(resp.headers)
        if resp.status_code != 200:
            raw = await resp.aread()
            out.error = _error_of(raw)
            return
        async for line in resp.aiter_lines():
            if line.startswith(":"):
                out.comments += 1
            elif line == "data: [DONE]":
                out.done = True
            elif line.startswith("data: "):
                data = orjson.loads(line.removeprefix("data: "))
                if isinstance(data, dict) and "error" in data:
                    out.error = data["error"]
                else:
                    out.chunks += 1
                    if started is not None and out.chunks >= started_after_chunks:
                        started.set()


def _error_of(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"message": raw.decode("utf-8", "replace")[:300], "code": None}
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return dict(data["error"])
    return {"message": str(data)[:300], "code": None}


async def submit_async(client: httpx.AsyncClient, base_url: str, key: str, model: str, *, max_tokens: int) -> str:
    """Submit a non-streaming request in async mode; returns its id."""
    body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}
    resp = await client.post(
        f"{base_url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}", "Prefer": "respond-async"},
    )
    assert resp.status_code == 202, (resp.status_code, resp.text)
    rid = resp.json()["id"]
    assert isinstance(rid, str)
    return rid


async def poll_async(
    client: httpx.AsyncClient, base_url: str, key: str, rid: str, *, timeout_s: float
) -> httpx.Response:
    """Long-poll an async request until it is no longer 202; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"async request {rid} still pending after {timeout_s}s"
        wait_s = max(1, min(10, int(left)))
        try:
            resp = await client.get(
                f"{base_url}/v1/async/{rid}",
                params={"wait_s": wait_s},
                headers={"Authorization": f"Bearer {key}"},
                timeout=wait_s + 10,
            )
        except httpx.HTTPError:
            # The gateway polled may be the one being restarted; poll again.
            await asyncio.sleep(0.5)
            continue
        if resp.status_code != 202:
            return resp
