"""The gateway's ASGI app: the OpenAI surface, health, metrics, and the wiring of its parts.

The completion endpoints are raw ASGI callables reached before Starlette (`GatewayApp`), so the
warm path builds no Request/Response objects and its body chunks go to uvicorn's own `send`
with no middleware wrapper per chunk: authenticate from the in-process cache, resolve the model
from the in-process cache, one Redis round trip to take a slot, then the engine's bytes go to
`send` as they come. Everything else is routed by Starlette.

A client that leaves is watched for (`http.disconnect`) from the moment its body is read: the
request's task is cancelled, which withdraws its ticket or gives its slot back and closes the
engine's response (so the engine aborts the generation).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from queue_gateway.async_mode import AsyncRunner, fetch_async, submit_async
from queue_gateway.auth import KeyCache
from queue_gateway.batch_api import BatchApi
from queue_gateway.batch_api import routes as batch_routes
from queue_gateway.batch_runner import BatchRunner
from queue_gateway.budget import Budgets
from queue_gateway.catalog import Catalog, route_target
from queue_gateway.dispatch import Call, Dispatcher, settle
from queue_gateway.endpoints import ENDPOINTS, Endpoint
from queue_gateway.errors import (
    ClientGone,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    Unavailable,
    error_response,
    json_response,
)
from queue_gateway.external import ExternalRoutes
from queue_gateway.file_dir import FileDir
from queue_gateway.hold import GrantHub, Holder, Lease, ModelWatch
from queue_gateway.limits import KeyLimits
from queue_gateway.metrics import GatewayMetrics
from queue_gateway.openapi import openapi_document
from queue_gateway.progress import failed_comment
from queue_gateway.proxy import Upstreams
from queue_gateway.redis_pipe import HotRouting, RedisPipe
from queue_gateway.request_body import MAX_MULTIPART_BYTES, parse_request
from queue_gateway.settings import GatewayConfig, GatewaySettings
from queue_gateway.sinks import AsgiSink, Sink
from queue_gateway.ui import build_ui_app
from queue_gateway.workflows import Workflows
from queue_gateway.workflows import routes as workflow_routes
from warmpool import pool_load
from warmpool.apikeys import ApiKeyRecord, ApiKeyStore
from warmpool.async_requests import AsyncRequests
from warmpool.batches import Batches
from warmpool.files import FileStore
from warmpool.instance_store import InstanceStore
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.phase import Phase, PhaseBoard
from warmpool.request_limits import ASYNC_HOLDER
from warmpool.routing import Routing
from warmpool.specs import ModelSpec

log = logging.getLogger(__name__)

FIRST_PROGRESS_S = 1.0
"""A held stream's headers wait this long for a grant (so short waits get exact headers)."""
NO_WAIT_HEADERS = [(b"x-slurmless-cold-start", b"false"), (b"x-slurmless-queue-wait-ms", b"0")]
"""Slurmless headers of responses refused before any queueing."""


@dataclass
class Gateway:
    """Everything one gateway process runs on; built at start-up."""

    settings: GatewaySettings
    redis: aioredis.Redis
    keys: Keys
    gateway_id: str
    clock: Callable[[], float]
    metrics: GatewayMetrics
    routing: Routing
    hub: GrantHub
    watch: ModelWatch
    lease: Lease
    upstreams: Upstreams
    dispatcher: Dispatcher
    key_cache: KeyCache
    catalog: Catalog
    limits: KeyLimits
    phases: PhaseBoard
    async_store: AsyncRequests
    async_runner: AsyncRunner
    pipe: RedisPipe | None
    """The warm path's own Redis connection (admit, release); None where unsupported (TLS)."""
    batch_api: BatchApi
    batch_runner: BatchRunner
    workflows: Workflows
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ready: bool = False


@dataclass
class _GatewayRef:
    """The gateway while it runs (set by the lifespan); the endpoints exist before and after it."""

    gateway: Gateway | None = None

    def get(self) -> Gateway:
        if self.gateway is None:
            raise Unavailable("The gateway is starting or stopping.", code="gateway_starting", retry_after_s=1)
        return self.gateway


def _wire(
    settings: GatewaySettings,
    redis: aioredis.Redis,
    keys: Keys,
    gateway_id: str,
    clock: Callable[[], float],
    metrics: GatewayMetrics,
    redis_timeout_s: float,
) -> Gateway:
    routing = Routing(redis, keys)
    pipe = RedisPipe.for_client(redis, timeout_s=redis_timeout_s)
    hub = GrantHub(redis, keys, gateway_id, check_interval_s=settings.grant_check_interval_s)
    watch = ModelWatch(redis, keys, clock=clock)
    phases = PhaseBoard(redis, keys)
    upstreams = Upstreams(
        InstanceStore(redis, keys),
        connect_timeout_s=settings.upstream_connect_timeout_s,
        read_timeout_s=settings.upstream_read_timeout_s,
        max_connections=settings.upstream_max_connections,
    )
    dispatcher = Dispatcher(
        routing=routing,
        hub=hub,
        holder=Holder(routing, watch, clock=clock),
        phases=phases,
        upstreams=upstreams,
        metrics=metrics,
        gateway_id=gateway_id,
        clock=clock,
        default_budgets=Budgets(cold_s=settings.cold_wait_budget_s, warm_s=settings.warm_wait_budget_s),
        queue_max_per_model=settings.queue_max_per_model,
        queue_max_global=settings.queue_max_global,
        retries=settings.upstream_retries,
        first_progress_s=min(FIRST_PROGRESS_S, settings.progress_interval_s),
        progress_interval_s=settings.progress_interval_s,
        hot=HotRouting(pipe, keys) if pipe is not None else None,
        speculative=settings.speculative_forward,
        external=ExternalRoutes(settings.external, metrics),
    )
    catalog = Catalog(ModelStore(redis, keys), ttl_s=settings.model_cache_ttl_s, clock=clock)
    async_store = AsyncRequests(redis, keys)
    limits = KeyLimits(redis, keys, ttl_s=settings.key_cache_ttl_s)
    runner = AsyncRunner(
        async_store,
        dispatcher,
        catalog,
        metrics,
        gateway_id=gateway_id,
        clock=clock,
        lease_s=settings.lease_ttl_s,
        result_ttl_s=settings.async_result_ttl_s,
        max_running=settings.async_max_running,
        limits=limits,
        max_result_bytes=settings.async_max_result_bytes,
    )
    batch_api = BatchApi(
        settings=settings.batch,
        files=FileStore(redis, keys),
        batches=Batches(redis, keys),
        dir=FileDir(settings.batch.files_dir),
        catalog=catalog,
        clock=clock,
    )
    limits = KeyLimits(redis, keys)
    return Gateway(
        workflows=Workflows(dispatcher, catalog, limits, gateway_id, clock),
        batch_api=batch_api,
        batch_runner=BatchRunner(batch_api, dispatcher, routing, metrics, gateway_id=gateway_id, clock=clock),
        pipe=pipe,
        settings=settings,
        redis=redis,
        keys=keys,
        gateway_id=gateway_id,
        clock=clock,
        metrics=metrics,
        routing=routing,
        hub=hub,
        watch=watch,
        lease=Lease(routing, gateway_id, ttl_s=settings.lease_ttl_s, clock=clock, on_tick=runner.renew),
        upstreams=upstreams,
        dispatcher=dispatcher,
        key_cache=KeyCache(ApiKeyStore(redis, keys), ttl_s=settings.key_cache_ttl_s, clock=clock),
        catalog=catalog,
        limits=limits,
        phases=phases,
        async_store=async_store,
        async_runner=runner,
    )


async def read_body(receive: Receive, *, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body, or `PayloadTooLarge` past `max_bytes` (chunked bodies declare no length),
    `RequestTimeout` when it has not arrived within `timeout_s`."""
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"Request body too large: at most {max_bytes} bytes.")
                parts.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(parts)
    except TimeoutError:
        raise RequestTimeout(f"The request's body did not arrive within {timeout_s:g} s.") from None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _wants_async(scope: Scope) -> bool:
    prefer = _header(scope, b"prefer")
    return prefer is not None and b"respond-async" in prefer.lower()


async def write_error(sink: Sink, exc: GatewayError, call: Call | None, stream: bool) -> None:
    """Send a refusal: a JSON error if nothing was sent yet, else an SSE error event on a stream."""
    body = exc.body()
    if not sink.started:
        headers = exc.headers() + (call.headers() if call is not None else NO_WAIT_HEADERS)
        headers.append((b"content-length", str(len(body)).encode()))
        await sink.start(exc.status, headers)
        await sink.end(body)
    elif stream:
        if exc.code == "model_failed":
            # Held streams read the reason in a comment too, like the progress comments before it.
            await sink.write(failed_comment(exc.message))
        # OpenAI's clients raise an APIError for a `data:` event carrying an "error" object.
        await sink.end(b"data: " + body + b"\n\n")


class CompletionEndpoint:
    """Every inference route (`endpoints.ENDPOINTS`: chat, completions, embeddings, responses, ...) as raw ASGI."""

    def __init__(self, ref: _GatewayRef, endpoint: Endpoint) -> None:
        self.ref = ref
        self.path = endpoint.path
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        perf0 = time.perf_counter()
        sink = AsgiSink(send)
        call: Call | None = None
        model_label = "-"
        stream = False
        status = 500
        key: ApiKeyRecord | None = None
        limited = False
        request_id = uuid.uuid4().hex
        task = asyncio.current_task()
        assert task is not None
        gone = False
        watcher: asyncio.Task[None] | None = None
        lease_holder = ""

        async def watch_disconnect() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if not sink.finished:
                gone = True
                task.cancel()

        try:
            gw = self.ref.get()
            key = await gw.key_cache.authenticate(_header(scope, b"authorization"))
            max_bytes = gw.settings.max_body_bytes
            if self.endpoint.multipart:
                max_bytes = max(max_bytes, MAX_MULTIPART_BYTES)
            body = await read_body(receive, max_bytes=max_bytes, timeout_s=gw.settings.body_timeout_s)
            parsed = await parse_request(body, self.endpoint, _header(scope, b"content-type"))
            model, stream = parsed.model, parsed.stream
            target = await gw.catalog.target(model, key)
            model_label = target.spec.name
            body, content_type = parsed.body(target.upstream_name)
            now = gw.clock()
            if not stream and not parsed.multipart and _wants_async(scope):
                # The async request holds its slot under its own id until it is done (the runner releases it).
                rid = f"async-{uuid.uuid4().hex}"
                limited = await gw.limits.acquire(key, ASYNC_HOLDER, rid, now_s=now)
                lease_holder = ASYNC_HOLDER
                request_id = rid
                status = await submit_async(
                    gw.async_store, gw.async_runner, sink, rid=rid, key=key, target=target, client_model=model,
                    path=self.path, body=body, now_s=now, lease_s=gw.settings.lease_ttl_s,
                    pending_ttl_s=gw.settings.cold_wait_budget_s + gw.settings.async_result_ttl_s,
                )  # fmt: skip
                limited = False
                return
            limited = await gw.limits.acquire(key, gw.gateway_id, request_id, now_s=now)
            call = Call(
                path=self.path,
                body=body,
                target=target,
                stream=stream,
                arrived_s=now,
                arrived_perf=perf0,
                request_id=request_id,
                progress=stream,
                content_type=content_type,
            )
            watcher = asyncio.get_running_loop().create_task(watch_disconnect())
            await gw.dispatcher.run(call, sink)
            status = sink.status
        except GatewayError as exc:
            status = exc.status
            if not gone:
                await write_error(sink, exc, call, stream)
        except ClientGone:
            status = 499
        except (RedisError, OSError) as exc:
            log.warning("state store error: %s", exc)
            status = 503
            if not gone:
                await write_error(
                    sink, Unavailable("Slurmless's state store is unavailable.", retry_after_s=5), call, stream
                )
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
            status = 499
        except Exception as exc:
            # No middleware stands in front of this endpoint: a bug still answers in OpenAI's shape.
            log.exception("internal error on %s", self.path)
            status = 500
            if not gone:
                failure = GatewayError(f"Internal error: {type(exc).__name__}.")
                with contextlib.suppress(Exception):
                    await write_error(sink, failure, call, stream)
        finally:
            if watcher is not None:
                watcher.cancel()
            if gone and self.ref.gateway is not None:
                where = "streaming" if call is not None and call.first_byte_sent else "queued"
                self.ref.gateway.metrics.disconnects.labels(model_label, where).inc()
            if limited and key is not None and self.ref.gateway is not None:
                gw_ = self.ref.gateway
                await settle(gw_.limits.release(key, lease_holder or gw_.gateway_id, request_id))
            if self.ref.gateway is not None:
                self.ref.gateway.metrics.requests.labels(model_label, str(status), self.path).inc()


class GatewayApp:
    """The ASGI app: the completion endpoints by exact path first, Starlette for everything else."""

    def __init__(self, app: Starlette, hot: dict[str, CompletionEndpoint]) -> None:
        self.app = app
        self.hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.hot.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _api(
    ref: _GatewayRef, handler: Callable[[Gateway, ApiKeyRecord, Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    """An authenticated JSON endpoint with OpenAI-shaped errors."""

    async def endpoint(request: Request) -> Response:
        try:
            gw = ref.get()
            key = await gw.key_cache.authenticate(request.headers.get("authorization", "").encode("latin-1"))
            return await handler(gw, key, request)
        except GatewayError as exc:
            return error_response(exc)

    return endpoint


async def _model_states(gw: Gateway, models: list[str]) -> dict[str, dict[str, Any]]:
    """Per instance model: state (cold, starting, warm), phase, ready instances, queue depth, ETA."""
    if not models:
        return {}
    phases = await gw.phases.many(models)
    loads = await pool_load.read(gw.redis, gw.keys, models)
    out: dict[str, dict[str, Any]] = {}
    for m in models:
        phase = phases[m]
        ready, depth = loads[m].ready, loads[m].queue_depth
        if ready > 0:
            state = "warm"
        elif phase.phase in (Phase.PENDING, Phase.STARTING, Phase.LOADING):
            state = "starting"
        else:
            state = "cold"
        out[m] = {
            "state": state,
            "phase": Phase.READY.value if ready > 0 else phase.phase.value,
            "ready_instances": ready,
            "queue_depth": depth,
            "eta_s": phase.eta_s,
            "slurm_reason": phase.slurm_reason,
        }
    return out


EXTERNAL_STATE = {"state": "external", "phase": "external", "ready_instances": 0, "queue_depth": 0}
"""What /v1/models says of an external model's (absent) instances."""


def _model_entry(spec: ModelSpec, state: dict[str, Any]) -> dict[str, Any]:
    """One model in OpenAI's shape; external ones are `owned_by: "external:<host>"` with `slurmless.external`."""
    extra: dict[str, Any] = {"name": spec.name, "kind": spec.kind.value, "external": spec.external is not None}
    owner = spec.owner_tenant or "slurmless"
    if spec.external is not None:
        owner = f"external:{spec.external.host}"
        extra["provider"] = spec.external.host
    return {
        "id": spec.client_name,
        "object": "model",
        "created": int(spec.created_s),
        "owned_by": owner,
        "slurmless": {**state, **extra},
    }


async def _list_models(gw: Gateway, key: ApiKeyRecord, request: Request) -> Response:
    specs = await gw.catalog.listing(key)
    targets = [route_target(s) for s in specs]
    states = await _model_states(gw, sorted({t.instance_model for t in targets if t.spec.external is None}))
    data = [
        _model_entry(t.spec, EXTERNAL_STATE if t.spec.external is not None else states[t.instance_model])
        for t in targets
    ]
    for entry, t in zip(data, targets, strict=True):
        entry["slurmless"] |= {"base_model": t.spec.base_model, "aliases": t.spec.aliases}
    return json_response({"object": "list", "data": data})


async def _get_model(gw: Gateway, key: ApiKeyRecord, request: Request) -> Response:
    target = await gw.catalog.target(request.path_params["model"], key)
    if target.spec.external is not None:
        return json_response(_model_entry(target.spec, EXTERNAL_STATE))
    states = await _model_states(gw, [target.instance_model])
    return json_response(_model_entry(target.spec, states[target.instance_model]))


async def _get_async(gw: Gateway, key: ApiKeyRecord, request: Request) -> Response:
    return await fetch_async(gw.async_store, request, key, clock=gw.clock)


def build_app(
    settings: GatewaySettings,
    redis: str | aioredis.Redis,
    *,
    keys: Keys | None = None,
    clock: Callable[[], float] = time.time,
    gateway_id: str | None = None,
    root_settings: GatewayConfig | None = None,
    redis_socket_timeout_s: float = 5.0,
) -> GatewayApp:
    """The gateway app. Background work (grant subscription, lease, reaper, async runner) runs in its lifespan.

    `redis` is a URL or a client (used from the server's event loop only); `gateway_id` names this
    process's lease (random by default); `root_settings` is passed to the admin API mounted at `/admin`.
    """
    keys = keys or Keys()
    gateway_id = gateway_id or f"gw-{uuid.uuid4().hex[:12]}"
    owns_redis = isinstance(redis, str)
    client: aioredis.Redis = (
        aioredis.Redis.from_url(
            redis,
            socket_timeout=redis_socket_timeout_s,
            socket_connect_timeout=redis_socket_timeout_s,
            health_check_interval=30,
        )
        if isinstance(redis, str)
        else redis
    )
    metrics = GatewayMetrics()
    ref = _GatewayRef()
    closers: list[Callable[[], Awaitable[None]]] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gw = _wire(settings, client, keys, gateway_id, clock, metrics, redis_socket_timeout_s)
        await gw.lease.tick()  # the lease must exist before this process queues anything
        jobs = (
            gw.hub.listen(),
            gw.hub.check_loop(),
            gw.watch.loop(),
            gw.dispatcher.holder.loop(),
            gw.lease.loop(),
            gw.async_runner.loop(),
            *((gw.batch_runner.loop(), gw.batch_runner.renew_loop()) if settings.batch.runner else ()),
        )
        for job in jobs:
            gw.tasks.append(asyncio.get_running_loop().create_task(job))
        await asyncio.wait_for(gw.hub.subscribed.wait(), timeout=10)
        ref.gateway = gw
        gw.ready = True
        try:
            yield
        finally:
            gw.ready = False
            await _stop(gw.tasks)
            with contextlib.suppress(RedisError, OSError):
                await gw.async_runner.shutdown()
            with contextlib.suppress(RedisError, OSError):
                await gw.batch_runner.shutdown()
            with contextlib.suppress(RedisError, OSError):
                await gw.routing.leave(gateway_id, now_s=clock())
            await gw.upstreams.aclose()
            if gw.dispatcher.external is not None:
                await gw.dispatcher.external.aclose()
            if gw.pipe is not None:
                gw.pipe.close()
            ref.gateway = None
            if owns_redis:
                await client.aclose()
            for close in closers:
                await close()

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok", "gateway_id": gateway_id})

    async def readyz(request: Request) -> Response:
        gw = ref.gateway
        if gw is None or not gw.ready or not gw.hub.subscribed.is_set():
            return json_response({"status": "starting"}, status=503)
        try:
            await asyncio.wait_for(client.ping(), timeout=2)
        except (RedisError, OSError, TimeoutError) as exc:
            # The detail (Redis's address) goes to the log only: /readyz answers anyone.
            log.warning("readiness: Redis unavailable: %s", exc)
            return json_response({"status": "redis unavailable"}, status=503)
        return json_response({"status": "ready", "gateway_id": gateway_id})

    root = root_settings
    metrics_tokens = [t.encode() for t in (root.metrics.token, root.admin_token) if t] if root is not None else []

    async def metrics_endpoint(request: Request) -> Response:
        # Model names (private ones too) are labels here: only Prometheus, with its token, reads them.
        if not settings.metrics_public:
            header = request.headers.get("authorization", "").encode("latin-1")
            token = header[7:].strip() if header[:7].lower() == b"bearer " else b""
            if not token or not any(hmac.compare_digest(token, t) for t in metrics_tokens):
                return error_response(Unauthorized("/metrics needs metrics.token: 'Authorization: Bearer <token>'."))
        gw = ref.gateway
        if gw is not None:
            with contextlib.suppress(RedisError, OSError):
                models = sorted({s.instance_model for s in await gw.catalog.store.all()})
                for m, load in (await pool_load.read(client, keys, models)).items():
                    metrics.queue_depth.labels(m).set(load.queue_depth)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return json_response(openapi_document())

    async def not_found(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            return error_response(MethodNotAllowed("Method not allowed."))
        return error_response(NotFound(f"Unknown path {request.url.path}.", code="unknown_url"))

    hot = {e.path: CompletionEndpoint(ref, e) for e in ENDPOINTS}
    routes: list[BaseRoute] = [
        # Reached only by other methods (POST is dispatched by `GatewayApp`): Starlette answers 405.
        *(Route(path, endpoint, methods=["POST"]) for path, endpoint in hot.items()),
        Route("/v1/models", _api(ref, _list_models), methods=["GET"]),
        Route("/v1/models/{model:path}", _api(ref, _get_model), methods=["GET"]),
        Route("/v1/async/{rid}", _api(ref, _get_async), methods=["GET"]),
        *batch_routes(lambda handler: _api(ref, lambda gw, key, request: handler(gw.batch_api, key, request))),
        *workflow_routes(lambda handler: _api(ref, lambda gw, key, request: handler(gw.workflows, key, request))),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    admin_url = root_settings.redis.admin_url if root_settings is not None else None
    admin_client = (
        aioredis.Redis.from_url(
            admin_url, socket_timeout=redis_socket_timeout_s, socket_connect_timeout=redis_socket_timeout_s
        )
        if admin_url and settings.serve_admin
        else None
    )
    admin = _admin_app(admin_client or client, settings, keys, clock, root_settings) if settings.serve_admin else None
    if admin is not None:
        routes.append(Mount("/admin", app=admin))
    routes.append(Mount("/ui", app=build_ui_app(client, keys, root_settings)))
    if admin_client is not None:
        closers.append(admin_client.aclose)
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
    return GatewayApp(app, hot)


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel background loops until they ended.

    Cancelled again while pending: a cancellation that lands as a timeout inside a library call
    can surface as a `TimeoutError` that a loop logs and survives.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    for t in tasks:
        if not t.cancelled() and t.exception() is not None:
            log.warning("background task %s ended with %r", t.get_name(), t.exception())


def _admin_app(
    client: aioredis.Redis,
    settings: GatewaySettings,
    keys: Keys,
    clock: Callable[[], float],
    root_settings: GatewayConfig | None,
) -> Starlette | None:
    try:
        from queue_gateway.admin_routes import build_admin_app
    except ImportError:
        return None
    if root_settings is None:
        root_settings = GatewayConfig(gateway=settings)
        root_settings.redis.key_prefix = keys.prefix
    return build_admin_app(client, root_settings, clock=clock)
