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
from queue_gateway.request_body import json_object
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


Handler = Callable[[Workflows, ApiKeyRecord, Request], Awaitable[Response]]


async def _body(request: Request) -> dict[str, Any]:
    return json_object(await request.body())


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


Step = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""One model call of a workflow: (model, path, body) -> the engine's JSON answer."""

CHUNKED_PATH = "/v1/slurmless/chunked"
TRIBUNAL_PATH = "/v1/slurmless/tribunal"
WORKFLOW_PATHS = (CHUNKED_PATH, TRIBUNAL_PATH)


@dataclass(frozen=True, slots=True)
class ChunkedArgs:
    model: str
    text: str
    instruction: str
    chunk_tokens: int
    overlap_tokens: int
    combine: str
    reduce_prompt: str
    extra: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TribunalArgs:
    generator: str
    critic: str
    messages: list[dict[str, Any]]
    rounds: int
    extra: dict[str, Any]


def parse_chunked(data: dict[str, Any]) -> ChunkedArgs:
    """A chunked request's fields, or `BadRequest` naming the bad one (also checks batch lines)."""
    model, text, instruction = _string(data, "model"), _string(data, "input"), _string(data, "instruction")
    chunk_tokens = _int(data, "chunk_tokens", 1024, 16, 1_000_000)
    overlap = _int(data, "overlap_tokens", 0, 0, chunk_tokens - 1)
    combine = data.get("combine", "concatenate")
    if combine not in ("concatenate", "reduce"):
        raise BadRequest("'combine' must be `concatenate` or `reduce`.", param="combine", code="invalid_value")
    reduce_prompt = _string(data, "reduce_prompt") if combine == "reduce" else ""
    return ChunkedArgs(model, text, instruction, chunk_tokens, overlap, str(combine), reduce_prompt, _extra(data))


def parse_tribunal(data: dict[str, Any]) -> TribunalArgs:
    generator, critic = _string(data, "generator"), _string(data, "critic")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("'messages' must be a non-empty list of messages.", param="messages")
    return TribunalArgs(generator, critic, messages, _int(data, "rounds", 1, 1, MAX_ROUNDS), _extra(data))


def workflow_model(path: str, data: dict[str, Any]) -> str:
    """The model a workflow request (or batch line) runs on first: chunked's model, tribunal's generator."""
    return parse_chunked(data).model if path == CHUNKED_PATH else parse_tribunal(data).generator


async def _chat(step: Step, model: str, messages: list[dict[str, Any]], extra: dict[str, Any]) -> str:
    answer = await step(model, "/v1/chat/completions", {**extra, "messages": messages})
    return str(answer["choices"][0]["message"]["content"] or "")


async def run_chunked(step: Step, args: ChunkedArgs, *, parallel: int = MAX_PARALLEL) -> dict[str, Any]:
    """Split, process and combine; `parallel` chunks at once (a batch line runs them one by one on its slot)."""
    model, extra = args.model, args.extra
    tokens = (await step(model, "/tokenize", {"prompt": args.text, "add_special_tokens": False}))["tokens"]
    spans = chunk_spans(len(tokens), args.chunk_tokens, args.overlap_tokens)
    if len(spans) > MAX_CHUNKS:
        raise BadRequest(f"The input makes {len(spans)} chunks; at most {MAX_CHUNKS}.", param="input")
    gate = asyncio.Semaphore(parallel)

    async def one(span: tuple[int, int]) -> dict[str, Any]:
        async with gate:
            piece = (await step(model, "/detokenize", {"tokens": tokens[span[0] : span[1]]}))["prompt"]
            messages = [{"role": "user", "content": f"{args.instruction}\n\n{piece}"}]
            output = await _chat(step, model, messages, extra)
            return {"start_token": span[0], "end_token": span[1], "output": output}

    chunks = [{"index": i, **c} for i, c in enumerate(await asyncio.gather(*(one(s) for s in spans)))]
    if args.combine == "concatenate":
        result = "\n\n".join(c["output"] for c in chunks)
    else:
        joined = "\n\n".join(f"[{c['index']}] {c['output']}" for c in chunks)
        result = await _chat(step, model, [{"role": "user", "content": f"{args.reduce_prompt}\n\n{joined}"}], extra)
    return {
        "id": f"chunked-{uuid.uuid4().hex}",
        "object": "slurmless.chunked",
        "model": model,
        "input_tokens": len(tokens),
        "combine": args.combine,
        "chunks": chunks,
        "output": result,
    }


async def run_tribunal(step: Step, args: TribunalArgs) -> dict[str, Any]:
    generator, critic, messages, extra = args.generator, args.critic, args.messages, args.extra
    steps: list[dict[str, Any]] = []
    answer = await _chat(step, generator, messages, extra)
    steps.append({"round": 0, "role": "generate", "model": generator, "content": answer})
    question = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
    for rnd in range(1, args.rounds + 1):
        review = [{"role": "user", "content": f"Question:\n{question}\n\nAnswer:\n{answer}\n\n{CRITIQUE_PROMPT}"}]
        critique = await _chat(step, critic, review, extra)
        steps.append({"round": rnd, "role": "critique", "model": critic, "content": critique})
        revise = [
            *messages,
            {"role": "assistant", "content": answer},
            {"role": "user", "content": f"{REVISE_PROMPT}\n\nCritique:\n{critique}"},
        ]
        answer = await _chat(step, generator, revise, extra)
        steps.append({"round": rnd, "role": "revise", "model": generator, "content": answer})
    return {
        "id": f"tribunal-{uuid.uuid4().hex}",
        "object": "slurmless.tribunal",
        "generator": generator,
        "critic": critic,
        "rounds": args.rounds,
        "steps": steps,
        "output": answer,
    }


def _key_step(wf: Workflows, key: ApiKeyRecord) -> Step:
    async def step(model: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await wf.call(key, model, path, body)

    return step


async def chunked(wf: Workflows, key: ApiKeyRecord, request: Request) -> Response:
    args = parse_chunked(await _body(request))
    return Response(orjson.dumps(await run_chunked(_key_step(wf, key), args)), media_type="application/json")


async def tribunal(wf: Workflows, key: ApiKeyRecord, request: Request) -> Response:
    args = parse_tribunal(await _body(request))
    # Both models must exist for this key before anything runs.
    await wf.catalog.target(args.generator, key)
    await wf.catalog.target(args.critic, key)
    return Response(orjson.dumps(await run_tribunal(_key_step(wf, key), args)), media_type="application/json")


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
        Route(CHUNKED_PATH, wrap(limited(chunked)), methods=["POST"]),
        Route(TRIBUNAL_PATH, wrap(limited(tribunal)), methods=["POST"]),
    ]
