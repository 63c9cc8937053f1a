"""The simulator's other inference routes, shaped like vLLM's: Responses, rerank, score, (de)tokenize, transcriptions.

They share the completion endpoints' engine (auth, loading, model names, scheduler slots and
counters), so a gateway test sees them held through a load, counted and refused the same way.
Answers are deterministic functions of the input (`enginesim.tokens`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from python_multipart.multipart import parse_options_header
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from enginesim import tokens
from enginesim.app import Engine, _message_text
from enginesim.shapes import ApiError, Completion

JSON = "application/json"
TOKEN_BASE = 1000
"""Simulated token ids are `TOKEN_BASE + n` for the n-th distinct word this engine has seen (one token a word),
so `/detokenize` gives back the words `/tokenize` was given."""


def _error(exc: ApiError) -> Response:
    return Response(exc.body(), status_code=exc.status, media_type=JSON)


async def _payload(engine: Engine, request: Request) -> dict[str, Any]:
    try:
        payload = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"invalid JSON body: {exc}") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return payload


def _responses_messages(value: object) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value:
        out = []
        for item in value:
            if not isinstance(item, dict):
                raise ApiError(400, "'input' items must be objects")
            content = item.get("content")
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            out.append({"role": item.get("role", "user"), "content": _message_text(content)})
        return out
    raise ApiError(400, "'input' must be a string or a non-empty list")


def _response_doc(c: Completion, text: str, status: str, rid: str, msg_id: str) -> dict[str, Any]:
    output = (
        [
            {
                "type": "message",
                "id": msg_id,
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
        if status == "completed"
        else []
    )
    return {
        "id": rid,
        "object": "response",
        "created_at": c.created,
        "status": status,
        "model": c.model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "usage": {
            "input_tokens": c.prompt_tokens,
            "output_tokens": c.num_tokens,
            "total_tokens": c.prompt_tokens + c.num_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        if status == "completed"
        else None,
    }


def _event(kind: str, seq: int, **fields: Any) -> bytes:
    return (
        b"event: "
        + kind.encode()
        + b"\ndata: "
        + orjson.dumps({"type": kind, "sequence_number": seq, **fields})
        + b"\n\n"
    )


class MoreEndpoints:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.vocab: dict[str, int] = {}
        self.words: list[str] = []

    def token_id(self, word: str) -> int:
        tid = self.vocab.get(word)
        if tid is None:
            tid = self.vocab[word] = TOKEN_BASE + len(self.words)
            self.words.append(word)
        return tid

    def word(self, tid: int) -> str:
        n = tid - TOKEN_BASE
        return self.words[n] if 0 <= n < len(self.words) else f"tok{tid}"

    def _check(self, request: Request) -> None:
        denied = self.engine.denial(request.scope)
        if denied is not None:
            raise ApiError(denied[0], orjson.loads(denied[1]).get("error", {}).get("message", "denied"))

    async def responses(self, request: Request) -> Response:
        engine = self.engine
        try:
            self._check(request)
            payload = await _payload(engine, request)
            chat = {
                "model": payload.get("model"),
                "messages": _responses_messages(payload.get("input")),
                "max_tokens": payload.get("max_output_tokens"),
                "stream": payload.get("stream", False),
                "priority": payload.get("priority"),
            }
            c = engine.plan(chat, chat=True)
            if not engine.start_request():
                raise ApiError(503, "the engine hangs")
        except ApiError as exc:
            return _error(exc)
        rid, msg_id = engine.new_id("resp"), engine.new_id("msg")
        if not c.stream:
            await engine.scheduler.acquire(c.priority)
            try:
                await asyncio.sleep(
                    engine.config.first_token_delay_ms / 1000 + engine.config.inter_token_ms / 1000 * c.num_tokens
                )
            finally:
                engine.scheduler.release()
            engine.counters.finish(c.finish_reason, c.prompt_tokens, c.num_tokens)
            text = tokens.completion_text(c.seed, c.num_tokens)
            return Response(orjson.dumps(_response_doc(c, text, "completed", rid, msg_id)), media_type=JSON)
        return StreamingResponse(self._stream(c, rid, msg_id), media_type="text/event-stream")

    async def _stream(self, c: Completion, rid: str, msg_id: str) -> Any:
        engine = self.engine
        seq = 0

        def ev(kind: str, **fields: Any) -> bytes:
            nonlocal seq
            seq += 1
            return _event(kind, seq - 1, **fields)

        yield ev("response.created", response=_response_doc(c, "", "in_progress", rid, msg_id))
        await engine.scheduler.acquire(c.priority)
        generated = 0
        try:
            yield ev("response.in_progress", response=_response_doc(c, "", "in_progress", rid, msg_id))
            item = {"type": "message", "id": msg_id, "status": "in_progress", "role": "assistant", "content": []}
            yield ev("response.output_item.added", output_index=0, item=item)
            part = {"type": "output_text", "text": "", "annotations": []}
            yield ev("response.content_part.added", item_id=msg_id, output_index=0, content_index=0, part=part)
            await asyncio.sleep(engine.config.first_token_delay_ms / 1000)
            for position in range(c.num_tokens):
                delta = tokens.completion_text_range(c.seed, position, 1)
                generated = position + 1
                yield ev("response.output_text.delta", item_id=msg_id, output_index=0, content_index=0, delta=delta)
                await asyncio.sleep(engine.config.inter_token_ms / 1000)
            text = tokens.completion_text(c.seed, c.num_tokens)
            yield ev("response.output_text.done", item_id=msg_id, output_index=0, content_index=0, text=text)
            part = {"type": "output_text", "text": text, "annotations": []}
            yield ev("response.content_part.done", item_id=msg_id, output_index=0, content_index=0, part=part)
            done = _response_doc(c, text, "completed", rid, msg_id)
            yield ev("response.output_item.done", output_index=0, item=done["output"][0])
            yield ev("response.completed", response=done)
        finally:
            engine.scheduler.release()
            engine.counters.finish(
                c.finish_reason if generated == c.num_tokens else "abort", c.prompt_tokens, generated
            )

    async def _simple(self, request: Request) -> tuple[dict[str, Any], str]:
        self._check(request)
        payload = await _payload(self.engine, request)
        model = self.engine.resolve_model(payload.get("model"))
        if not self.engine.start_request():
            raise ApiError(503, "the engine hangs")
        return payload, model

    async def rerank(self, request: Request) -> Response:
        try:
            payload, model = await self._simple(request)
            query, documents = payload.get("query"), payload.get("documents")
            if not isinstance(query, str) or not isinstance(documents, list) or not documents:
                raise ApiError(400, "'query' must be a string and 'documents' a non-empty list")
        except ApiError as exc:
            return _error(exc)
        texts = [
            d if isinstance(d, str) else str(d.get("text", "")) if isinstance(d, dict) else str(d) for d in documents
        ]
        scored = sorted(
            ((i, _similarity(query, t)) for i, t in enumerate(texts)), key=lambda pair: pair[1], reverse=True
        )
        top_n = payload.get("top_n")
        if isinstance(top_n, int) and top_n > 0:
            scored = scored[:top_n]
        n_tokens = tokens.count_tokens(query) * len(texts) + sum(tokens.count_tokens(t) for t in texts)
        self.engine.counters.finish("stop", n_tokens, 0)
        body = {
            "id": self.engine.new_id("rerank"),
            "model": model,
            "usage": {"total_tokens": n_tokens},
            "results": [{"index": i, "document": {"text": texts[i]}, "relevance_score": s} for i, s in scored],
        }
        return Response(orjson.dumps(body), media_type=JSON)

    async def score(self, request: Request) -> Response:
        try:
            payload, model = await self._simple(request)
            left, right = payload.get("text_1"), payload.get("text_2")
            if isinstance(left, str):
                left = [left]
            if isinstance(right, str):
                right = [right]
            if not isinstance(left, list) or not isinstance(right, list) or not left or not right:
                raise ApiError(400, "'text_1' and 'text_2' must be strings or non-empty lists")
            if len(left) == 1:
                left = left * len(right)
            if len(left) != len(right):
                raise ApiError(400, "'text_1' and 'text_2' must have the same length (or text_1 one item)")
        except ApiError as exc:
            return _error(exc)
        n_tokens = sum(
            tokens.count_tokens(str(a)) + tokens.count_tokens(str(b)) for a, b in zip(left, right, strict=True)
        )
        self.engine.counters.finish("stop", n_tokens, 0)
        body = {
            "id": self.engine.new_id("score"),
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": [
                {"index": i, "object": "score", "score": _similarity(str(a), str(b))}
                for i, (a, b) in enumerate(zip(left, right, strict=True))
            ],
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens, "completion_tokens": 0},
        }
        return Response(orjson.dumps(body), media_type=JSON)

    async def tokenize(self, request: Request) -> Response:
        try:
            self._check(request)
            payload = await _payload(self.engine, request)
            self.engine.resolve_model(payload.get("model"))
            if "messages" in payload and isinstance(payload["messages"], list):
                text = "\n".join(_message_text(m.get("content")) for m in payload["messages"] if isinstance(m, dict))
            elif isinstance(payload.get("prompt"), str):
                text = payload["prompt"]
            else:
                raise ApiError(400, "'prompt' (a string) or 'messages' is required")
        except ApiError as exc:
            return _error(exc)
        ids = [self.token_id(w) for w in text.split()]
        body = {"count": len(ids), "max_model_len": self.engine.config.max_model_len, "tokens": ids, "token_strs": None}
        return Response(orjson.dumps(body), media_type=JSON)

    async def detokenize(self, request: Request) -> Response:
        try:
            self._check(request)
            payload = await _payload(self.engine, request)
            self.engine.resolve_model(payload.get("model"))
            ids = payload.get("tokens")
            if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise ApiError(400, "'tokens' must be a list of integers")
        except ApiError as exc:
            return _error(exc)
        return Response(orjson.dumps({"prompt": " ".join(self.word(t) for t in ids)}), media_type=JSON)

    async def transcriptions(self, request: Request) -> Response:
        try:
            self._check(request)
            kind, _ = parse_options_header(request.headers.get("content-type", ""))
            if kind != b"multipart/form-data":
                raise ApiError(400, "the request must be multipart/form-data")
            async with request.form() as form:
                model = self.engine.resolve_model(form.get("model"))
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise ApiError(400, "'file' is required")
                audio = await upload.read()
                stream = str(form.get("stream", "false")).lower() == "true"
            if not self.engine.start_request():
                raise ApiError(503, "the engine hangs")
        except ApiError as exc:
            return _error(exc)
        words = max(1, len(audio) // 1000)
        seed = tokens.prompt_seed(audio[:64].hex())
        text = tokens.completion_text(seed, min(words, 64))
        self.engine.counters.finish("stop", words, min(words, 64))
        if not stream:
            body = {"text": text, "usage": {"type": "duration", "seconds": words}}
            return Response(orjson.dumps(body), media_type=JSON)
        rid, created = self.engine.new_id("trsc"), int(time.time())

        async def chunks() -> Any:
            for word in text.split(" "):
                delta = {"content": word + " "}
                doc = {"id": rid, "object": "transcription.chunk", "created": created, "model": model,
                       "choices": [{"delta": delta}]}  # fmt: skip
                yield b"data: " + orjson.dumps(doc) + b"\n\n"
                await asyncio.sleep(self.engine.config.inter_token_ms / 1000)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")


def _similarity(a: str, b: str) -> float:
    """Word overlap (Jaccard) of two texts, in [0, 1]."""
    wa, wb = set(a.lower().split()), set(b.lower().split())
    return len(wa & wb) / len(wa | wb) if wa | wb else 0.0


def routes(engine: Engine) -> list[Route]:
    more = MoreEndpoints(engine)
    return [
        Route("/v1/responses", more.responses, methods=["POST"]),
        Route("/v1/rerank", more.rerank, methods=["POST"]),
        Route("/v1/score", more.score, methods=["POST"]),
        Route("/tokenize", more.tokenize, methods=["POST"]),
        Route("/detokenize", more.detokenize, methods=["POST"]),
        Route("/v1/audio/transcriptions", more.transcriptions, methods=["POST"]),
    ]
