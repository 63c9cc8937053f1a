"""Workflows of several model calls, as synchronous extensions: `/v1/slurmless/chunked`, `/v1/slurmless/tribunal`.

Each step is an ordinary request through the queue (`Dispatcher.run`: admitted, held through a cold
start, proxied), so a workflow gets interactive priority and waits for its models like any client.

- chunked: the input is split by the model's own tokenizer (the engine's `/tokenize` and
  `/detokenize`) into chunks of `chunk_tokens` with `overlap_tokens` shared between neighbours;
  each chunk is sent with the instruction (at most `MAX_PARALLEL` at once); the answers are
  concatenated, or reduced by one more call with `reduce_prompt`.
- tribunal: model A answers, model B critiques the answer, A revises it with the critique, for
  `rounds` rounds; every step is returned.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from queue_gateway.catalog import Catalog, Target
from queue_gateway.dispatch import Call, Dispatcher, settle
from queue_gateway.errors import BadRequest, EngineRejected
from queue_gateway.limits import KeyLimits
from queue_gateway.sinks import BufferSink
from warmpool.apikeys import ApiKeyRecord

MAX_PARALLEL = 8
"""Chunks of one chunked request sent at once."""
MAX_CHUNKS = 256
MAX_ROUNDS = 5
CRITIQUE_PROMPT = (
    "Critique the answer below to the question above it: point out errors, omissions and unclear parts. "
    "Do not rewrite it."
)
REVISE_PROMPT = "Revise your answer using this critique. Answer with the revised text only."


@dataclass
class Workflows:
    dispatcher: Dispatcher
    catalog: Catalog
    limits: KeyLimits
    gateway_id: str
    clock: Callable[[], float]

    async def call(self, key: ApiKeyRecord, model: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One request through the queue; its JSON answer (engine refusals and failures raise)."""
        target: Target = await self.catalog.target(model, key)
        call = Call(
            path=path,
            body=orjson.dumps({**body, "model": target.upstream_name}),
            target=target,
            stream=False,
            arrived_s=self.clock(),
            arrived_perf=time.perf_counter(),
            request_id=uuid.uuid4().hex,
        )
        sink = BufferSink()
        await self.dispatcher.run(call, sink)
        if sink.status >= 400:
            raise EngineRejected(sink.status, sink.body)
        answer: dict[str, Any] = orjson.loads(sink.body)
        return answer

    async def chat(self, key: ApiKeyRecord, model: str, messages: list[dict[str, Any]], extra: dict[str, Any]) -> str:
        answer = await self.call(key, model, "/v1/chat/completions", {**extra, "messages": messages})
        return str(answer["choices"][0]["message"]["content"] or "")


Handler = Callable[[Workflows, ApiKeyRecord, Request], Awaitable[Response]]


async def _body(request: Request) -> dict[str, Any]:
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    return data


def _string(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    return value


def _int(data: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = data.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"'{name}' must be an integer from {low} to {high}.", param=name, code="invalid_value")
    return value


def _extra(data: dict[str, Any]) -> dict[str, Any]:
    """Sampling fields passed to every step."""
    return {k: data[k] for k in ("max_tokens", "temperature", "top_p", "seed") if k in data}


def chunk_spans(n_tokens: int, chunk_tokens: int, overlap_tokens: int) -> list[tuple[int, int]]:
    """[start, end) token spans covering `n_tokens`, each `chunk_tokens` long, neighbours sharing `overlap_tokens`."""
    if n_tokens <= 0:
        return []
    step = chunk_tokens - overlap_tokens
    spans = []
    start = 0
    while True:
        end = min(n_tokens, start + chunk_tokens)
        spans.append((start, end))
        if end >= n_tokens:
            return spans
        start += step


async def chunked(wf: Workflows, key: ApiKeyRecord, request: Request) -> Response:
    data = await _body(request)
    model, text, instruction = _string(data, "model"), _string(data, "input"), _string(data, "instruction")
    chunk_tokens = _int(data, "chunk_tokens", 1024, 16, 1_000_000)
    overlap = _int(data, "overlap_tokens", 0, 0, chunk_tokens - 1)
    combine = data.get("combine", "concatenate")
    if combine not in ("concatenate", "reduce"):
        raise BadRequest("'combine' must be `concatenate` or `reduce`.", param="combine", code="invalid_value")
    reduce_prompt = _string(data, "reduce_prompt") if combine == "reduce" else ""
    extra = _extra(data)
    tokens = (await wf.call(key, model, "/tokenize", {"prompt": text, "add_special_tokens": False}))["tokens"]
    spans = chunk_spans(len(tokens), chunk_tokens, overlap)
    if len(spans) > MAX_CHUNKS:
        raise BadRequest(f"The input makes {len(spans)} chunks; at most {MAX_CHUNKS}.", param="input")
    gate = asyncio.Semaphore(MAX_PARALLEL)

    async def one(span: tuple[int, int]) -> dict[str, Any]:
        async with gate:
            piece = (await wf.call(key, model, "/detokenize", {"tokens": tokens[span[0] : span[1]]}))["prompt"]
            messages = [{"role": "user", "content": f"{instruction}\n\n{piece}"}]
            output = await wf.chat(key, model, messages, extra)
            return {"start_token": span[0], "end_token": span[1], "output": output}

    chunks = [{"index": i, **c} for i, c in enumerate(await asyncio.gather(*(one(s) for s in spans)))]
    if combine == "concatenate":
        result = "\n\n".join(c["output"] for c in chunks)
    else:
        joined = "\n\n".join(f"[{c['index']}] {c['output']}" for c in chunks)
        result = await wf.chat(key, model, [{"role": "user", "content": f"{reduce_prompt}\n\n{joined}"}], extra)
    return Response(
        orjson.dumps(
            {
                "id": f"chunked-{uuid.uuid4().hex}",
                "object": "slurmless.chunked",
                "model": model,
                "input_tokens": len(tokens),
                "combine": combine,
                "chunks": chunks,
                "output": result,
            }
        ),
        media_type="application/json",
    )


async def tribunal(wf: Workflows, key: ApiKeyRecord, request: Request) -> Response:
    data = await _body(request)
    generator, critic = _string(data, "generator"), _string(data, "critic")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("'messages' must be a non-empty list of messages.", param="messages")
    rounds = _int(data, "rounds", 1, 1, MAX_ROUNDS)
    extra = _extra(data)
    # Both models must exist for this key before anything runs.
    await wf.catalog.target(generator, key)
    await wf.catalog.target(critic, key)
    steps: list[dict[str, Any]] = []
    answer = await wf.chat(key, generator, messages, extra)
    steps.append({"round": 0, "role": "generate", "model": generator, "content": answer})
    question = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
    for rnd in range(1, rounds + 1):
        review = [{"role": "user", "content": f"Question:\n{question}\n\nAnswer:\n{answer}\n\n{CRITIQUE_PROMPT}"}]
        critique = await wf.chat(key, critic, review, extra)
        steps.append({"round": rnd, "role": "critique", "model": critic, "content": critique})
        revise = [
            *messages,
            {"role": "assistant", "content": answer},
            {"role": "user", "content": f"{REVISE_PROMPT}\n\nCritique:\n{critique}"},
        ]
        answer = await wf.chat(key, generator, revise, extra)
        steps.append({"round": rnd, "role": "revise", "model": generator, "content": answer})
    return Response(
        orjson.dumps(
            {
                "id": f"tribunal-{uuid.uuid4().hex}",
                "object": "slurmless.tribunal",
                "generator": generator,
                "critic": critic,
                "rounds": rounds,
                "steps": steps,
                "output": answer,
            }
        ),
        media_type="application/json",
    )


def limited(handler: Handler) -> Handler:
    """A workflow counts as one request against its key's limits (per minute, concurrent)."""

    async def run(wf: Workflows, key: ApiKeyRecord, request: Request) -> Response:
        rid = uuid.uuid4().hex
        booked = await wf.limits.acquire(key, wf.gateway_id, rid, now_s=wf.clock())
        try:
            return await handler(wf, key, request)
        finally:
            if booked:
                await settle(wf.limits.release(key, wf.gateway_id, rid))

    return run


def routes(wrap: Callable[[Handler], Callable[[Request], Awaitable[Response]]]) -> list[Route]:
    return [
        Route("/v1/slurmless/chunked", wrap(limited(chunked)), methods=["POST"]),
        Route("/v1/slurmless/tribunal", wrap(limited(tribunal)), methods=["POST"]),
    ]
