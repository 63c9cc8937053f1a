"""The simulated engine's HTTP surface: a Starlette app shaped like vLLM's OpenAI server.

Completion endpoints are raw ASGI callables (the simulator is the "direct" baseline of the
gateway benchmarks, so the hot path builds bytes and calls ``send`` itself); the rest are
ordinary Starlette endpoints.

A client that goes away is a normal outcome: a watcher task waits for ``http.disconnect``
and cancels the request, which leaves the waiting queue or stops generating, gives its
running slot back and is counted with ``finished_reason="abort"``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from enginesim import tokens
from enginesim.config import SimConfig
from enginesim.metrics import PROMETHEUS_CONTENT_TYPE, EngineCounters, render_metrics
from enginesim.scheduler import Scheduler
from enginesim.shapes import ApiError, Completion, StreamFraming, completion_body, error_body

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")],
}
UNAUTHORIZED_BODY = orjson.dumps({"error": "Unauthorized"})
CRASH_EXIT_CODE = 1


def _exit_process() -> None:
    print("enginesim: simulated crash", file=sys.stderr, flush=True)
    os._exit(CRASH_EXIT_CODE)


@dataclass(slots=True)
class _Progress:
    """Shared between a request and its disconnect watcher."""

    generated: int = 0
    done: bool = False
    disconnected: bool = False


async def _send_body(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None when the client left before sending all of it."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _wait_for_disconnect(receive: Receive) -> None:
    """Never answer: wait until the client gives up (a hung engine)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any], progress: _Progress) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    # After a complete response the server also reports a disconnect; that one is not an abort.
    if not progress.done:
        progress.disconnected = True
        task.cancel()


def _message_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict) and "text" in part)
    return ""


def _prompt_text(payload: dict[str, Any], chat: bool) -> str:
    if chat:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list")
        return "\n".join(_message_text(m.get("content")) for m in messages if isinstance(m, dict))
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) for p in prompt):
            # Token ids: one "word" per id so the count matches the ids sent.
            return " ".join(str(p) for p in prompt)
        # A batch of prompts is answered as one choice (a simplification of vLLM).
        return "\n".join(p if isinstance(p, str) else " ".join(map(str, p)) for p in prompt)
    raise ApiError(400, "'prompt' must be a string or a list")


def _optional_int(payload: dict[str, Any], key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, f"'{key}' must be an integer")
    return value


class Engine:
    """The simulated engine behind the app: settings, scheduler, counters, loaded adapters.

    ``clock`` (monotonic seconds) decides when loading ends; ``on_crash`` replaces the hard
    process exit of ``crash_after`` (tests pass a recorder).
    """

    def __init__(self, config: SimConfig, clock: Callable[[], float], on_crash: Callable[[], None]) -> None:
        self.config = config
        self.clock = clock
        self.on_crash = on_crash
        self.ready_at = clock() + config.load_time_s
        self._ready = config.load_time_s <= 0
        self.scheduler = Scheduler(config.max_running, by_priority=config.scheduling_policy == "priority")
        self.counters = EngineCounters()
        self.loras: dict[str, str] = dict(config.lora_modules)
        self.created = int(time.time())
        self.metrics_model_name = config.model_names[0]
        self._auth = f"Bearer {config.api_key}".encode() if config.api_key else None
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count()
        self._first_token_delay_s = config.first_token_delay_ms / 1000.0
        self._chunk_gap_s = config.inter_token_ms / 1000.0 * config.tokens_per_chunk
        self._inter_token_s = config.inter_token_ms / 1000.0

    # -- state ---------------------------------------------------------------------------

    @property
    def loading(self) -> bool:
        """True until ``load_time_s`` has passed since the app was built."""
        if not self._ready and self.clock() >= self.ready_at:
            self._ready = True
        return not self._ready

    @property
    def hung(self) -> bool:
        """True once ``hang_after`` inference requests have started."""
        hang_after = self.config.hang_after
        return hang_after is not None and self.counters.requests_started >= hang_after

    def new_id(self, prefix: str) -> str:
        """A process-unique id like vLLM's (``chatcmpl-…``, ``cmpl-…``)."""
        return f"{prefix}-{self._id_prefix}{next(self._ids):012x}"

    def resolve_model(self, name: object) -> str:
        """The served name a request addresses; the first served name when it names none."""
        if name is None:
            return self.config.model_names[0]
        if isinstance(name, str) and (name in self.config.model_names or name in self.loras):
            return name
        raise ApiError(404, f"The model `{name}` does not exist.", "NotFoundError")

    def denial(self, scope: Scope) -> tuple[int, bytes] | None:
        """Why a ``/v1/*`` request may not proceed (401 without the key, 503 while loading)."""
        if self._auth is not None:
            auth = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            if auth != self._auth:
                return 401, UNAUTHORIZED_BODY
        if self.loading:
            return 503, error_body(503, "The model is still loading.", "ServiceUnavailableError")
        return None

    def start_request(self) -> bool:
        """Count an inference request; False when the engine hangs and must not answer it."""
        crash_after = self.config.crash_after
        if crash_after is not None and self.counters.requests_started >= crash_after:
            self.on_crash()
            raise ApiError(500, "simulated crash", "InternalServerError")
        if self.hung:
            return False
        self.counters.requests_started += 1
        return True

    # -- completions (raw ASGI, the hot path) ---------------------------------------------

    def plan(self, payload: object, chat: bool) -> Completion:
        """Decide the whole answer to a completion request from its payload."""
        if not isinstance(payload, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = self.resolve_model(payload.get("model"))
        text = _prompt_text(payload, chat)
        prompt_tokens = tokens.count_tokens(text)
        max_model_len = self.config.max_model_len
        if prompt_tokens >= max_model_len:
            raise ApiError(
                400,
                f"This model's maximum context length is {max_model_len} tokens. "
                f"However, your request has {prompt_tokens} input tokens.",
            )
        max_tokens = _optional_int(payload, "max_completion_tokens") if chat else None
        if max_tokens is None:
            max_tokens = _optional_int(payload, "max_tokens")
        if max_tokens is None:
            max_tokens = min(self.config.default_max_tokens, max_model_len - prompt_tokens)
        elif max_tokens < 1:
            raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}.")
        elif prompt_tokens + max_tokens > max_model_len:
            raise ApiError(
                400,
                f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion.",
            )
        seed = tokens.prompt_seed(text)
        num_tokens, finish_reason = max_tokens, "length"
        if not payload.get("ignore_eos", False):
            eos = max(tokens.eos_position(seed), _optional_int(payload, "min_tokens") or 0)
            if eos < max_tokens:
                num_tokens, finish_reason = eos, "stop"
        stream = bool(payload.get("stream", False))
        options = payload.get("stream_options")
        include_usage = stream and isinstance(options, dict) and bool(options.get("include_usage"))
        return Completion(
            request_id=self.new_id("chatcmpl" if chat else "cmpl"),
            created=int(time.time()),
            model=model,
            chat=chat,
            prompt_tokens=prompt_tokens,
            seed=seed,
            num_tokens=num_tokens,
            finish_reason=finish_reason,
            stream=stream,
            include_usage=include_usage,
            priority=_optional_int(payload, "priority") or 0,
        )

    async def handle_completion(self, scope: Scope, receive: Receive, send: Send, chat: bool) -> None:
        """Serve ``/v1/chat/completions`` (``chat``) or ``/v1/completions``."""
        denied = self.denial(scope)
        if denied is not None:
            await _send_body(send, denied[0], denied[1], JSON_HEADERS)
            return
        body = await _read_body(receive)
        if body is None:
            return
        try:
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise ApiError(400, f"invalid JSON body: {exc}") from None
            completion = self.plan(payload, chat)
            if not self.start_request():
                await _wait_for_disconnect(receive)
                return
        except ApiError as exc:
            await _send_body(send, exc.status, exc.body(), JSON_HEADERS)
            return
        priorities = self.counters.priorities
        priorities[completion.priority] = priorities.get(completion.priority, 0) + 1
        await self._run(completion, receive, send)

    async def _run(self, completion: Completion, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        progress = _Progress()
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, task, progress))
        acquired = False
        finish_reason = "abort"
        try:
            if completion.stream:
                # vLLM starts a streaming response before the request is scheduled.
                await send(SSE_START)
            await self.scheduler.acquire(completion.priority)
            acquired = True
            if completion.stream:
                await self._stream(completion, send, progress)
            else:
                await self._respond(completion, send, progress)
            finish_reason = completion.finish_reason
        except asyncio.CancelledError:
            if not progress.disconnected:
                raise
            task.uncancel()
        finally:
            watcher.cancel()
            if acquired:
                self.scheduler.release()
            self.counters.finish(finish_reason, completion.prompt_tokens, progress.generated)

    async def _respond(self, completion: Completion, send: Send, progress: _Progress) -> None:
        n = completion.num_tokens
        delay_s = self._first_token_delay_s + self._inter_token_s * (n - 1)
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        body = completion_body(completion, tokens.completion_text(completion.seed, n))
        progress.generated = n
        progress.done = True
        await _send_body(send, 200, body, JSON_HEADERS)

    async def _stream(self, completion: Completion, send: Send, progress: _Progress) -> None:
        framing = StreamFraming.for_completion(completion)
        prefix, suffix, seed = framing.prefix, framing.suffix, completion.seed
        n, per_chunk, gap_s = completion.num_tokens, self.config.tokens_per_chunk, self._chunk_gap_s
        if self._first_token_delay_s > 0:
            await asyncio.sleep(self._first_token_delay_s)
        head = framing.head
        position = 0
        while True:
            take = min(per_chunk, n - position)
            text = tokens.chunk_json(seed, position, take)
            position += take
            progress.generated = position
            if position >= n:
                progress.done = True
                last = head + prefix + text + framing.last_suffix + framing.tail
                await send({"type": "http.response.body", "body": last, "more_body": False})
                return
            await send({"type": "http.response.body", "body": head + prefix + text + suffix, "more_body": True})
            head = b""
            # Even without pacing, yield per chunk so other streams and disconnects get a turn.
            await asyncio.sleep(gap_s if gap_s > 0 else 0)

    # -- other endpoints ------------------------------------------------------------------

    def _denied_response(self, request: Request) -> Response | None:
        denied = self.denial(request.scope)
        if denied is None:
            return None
        return Response(denied[1], status_code=denied[0], media_type="application/json")

    async def health(self, request: Request) -> Response:
        """200 when ready, 503 while loading; never answers once the engine hangs."""
        if self.hung:
            await _wait_for_disconnect(request.receive)
        if self.loading:
            return Response(status_code=503)
        return Response(status_code=200)

    async def metrics(self, request: Request) -> Response:
        """Prometheus text with vLLM's gauges and counters."""
        text = render_metrics(self.metrics_model_name, self.scheduler, self.counters)
        return PlainTextResponse(text, headers={"content-type": PROMETHEUS_CONTENT_TYPE})

    async def models(self, request: Request) -> Response:
        """The served names and loaded LoRA adapters, as vLLM's ``/v1/models``."""
        if (denied := self._denied_response(request)) is not None:
            return denied
        data: list[dict[str, Any]] = [
            {
                "id": name,
                "object": "model",
                "created": self.created,
                "owned_by": "vllm",
                "root": self.config.model,
                "parent": None,
                "max_model_len": self.config.max_model_len,
            }
            for name in self.config.model_names
        ]
        data.extend(
            {
                "id": name,
                "object": "model",
                "created": self.created,
                "owned_by": "vllm",
                "root": path,
                "parent": self.config.model_names[0],
                "max_model_len": None,
            }
            for name, path in self.loras.items()
        )
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    async def embeddings(self, request: Request) -> Response:
        """Deterministic small vectors, as floats or base64 float32 like the OpenAI API."""
        if (denied := self._denied_response(request)) is not None:
            return denied
        try:
            payload = await self._json(request)
            model = self.resolve_model(payload.get("model"))
            inputs = payload.get("input")
            if isinstance(inputs, str):
                inputs = [inputs]
            if not isinstance(inputs, list) or not inputs:
                raise ApiError(400, "'input' must be a string or a non-empty list")
            if not self.start_request():
                await _wait_for_disconnect(request.receive)
                return Response(status_code=500)
        except ApiError as exc:
            return Response(exc.body(), status_code=exc.status, media_type="application/json")
        as_base64 = payload.get("encoding_format") == "base64"
        data: list[dict[str, Any]] = []
        prompt_tokens = 0
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            prompt_tokens += tokens.count_tokens(text)
            vector = tokens.embedding(text)
            encoded: object = base64.b64encode(tokens.embedding_base64_bytes(vector)).decode() if as_base64 else vector
            data.append({"index": index, "object": "embedding", "embedding": encoded})
        self.counters.finish("stop", prompt_tokens, 0)
        body = {
            "id": self.new_id("embd"),
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": data,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0},
        }
        return Response(orjson.dumps(body), media_type="application/json")

    async def load_lora_adapter(self, request: Request) -> Response:
        """Load a LoRA adapter (``{"lora_name", "lora_path"}``); it is then servable by name."""
        if (denied := self._denied_response(request)) is not None:
            return denied
        try:
            if not self.config.enable_lora:
                raise ApiError(400, "LoRA is not enabled (start with --enable-lora).")
            payload = await self._json(request)
            name, path = payload.get("lora_name"), payload.get("lora_path")
            if not isinstance(name, str) or not isinstance(path, str) or not name or not path:
                raise ApiError(400, "Both 'lora_name' and 'lora_path' must be provided.")
            if name in self.loras:
                raise ApiError(400, f"The lora adapter '{name}' has already been loaded.")
        except ApiError as exc:
            return Response(exc.body(), status_code=exc.status, media_type="application/json")
        self.loras[name] = path
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_lora_adapter(self, request: Request) -> Response:
        """Unload a LoRA adapter (``{"lora_name"}``)."""
        if (denied := self._denied_response(request)) is not None:
            return denied
        try:
            payload = await self._json(request)
            name = payload.get("lora_name")
            if not isinstance(name, str) or name not in self.loras:
                raise ApiError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        except ApiError as exc:
            return Response(exc.body(), status_code=exc.status, media_type="application/json")
        del self.loras[name]
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        try:
            payload = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"invalid JSON body: {exc}") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return payload


class _CompletionEndpoint:
    """A raw ASGI endpoint (Starlette routes a non-function endpoint to it unwrapped)."""

    def __init__(self, engine: Engine, chat: bool) -> None:
        self.engine = engine
        self.chat = chat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.engine.handle_completion(scope, receive, send, self.chat)


def build_app(
    config: SimConfig,
    *,
    clock: Callable[[], float] = time.monotonic,
    on_crash: Callable[[], None] = _exit_process,
) -> Starlette:
    """The simulator as a Starlette app; loading starts now (``config.load_time_s`` from ``clock()``).

    ``on_crash`` runs when ``crash_after`` is reached; the default exits the process at once.
    The engine behind the app is ``engine_of(app)``.
    """
    engine = Engine(config, clock=clock, on_crash=on_crash)
    routes = [
        Route("/health", engine.health, methods=["GET"]),
        Route("/metrics", engine.metrics, methods=["GET"]),
        Route("/v1/models", engine.models, methods=["GET"]),
        Route("/v1/chat/completions", _CompletionEndpoint(engine, chat=True), methods=["POST"]),
        Route("/v1/completions", _CompletionEndpoint(engine, chat=False), methods=["POST"]),
        Route("/v1/embeddings", engine.embeddings, methods=["POST"]),
        Route("/v1/load_lora_adapter", engine.load_lora_adapter, methods=["POST"]),
        Route("/v1/unload_lora_adapter", engine.unload_lora_adapter, methods=["POST"]),
    ]
    from enginesim.more_endpoints import routes as more_routes  # it builds on this module's Engine

    routes.extend(more_routes(engine))
    app = Starlette(routes=routes)
    app.state.engine = engine
    return app


def engine_of(app: Starlette) -> Engine:
    """The ``Engine`` behind an app made by ``build_app`` (its scheduler and counters)."""
    return cast(Engine, app.state.engine)
