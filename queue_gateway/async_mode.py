"""Async mode for non-streaming clients: `Prefer: respond-async` gives 202 and an id; then
`GET /v1/async/{id}` (optionally long-polling with `?wait_s=N`, at most 60) returns 202 while the
request is pending and the engine's answer, status and body as they were, once it is done.

Requests and results live in Redis (`warmpool.async_requests`), so they survive a restart of any
gateway: the submitting process runs the request under a claim renewed by its heartbeat; if it
dies, another process claims the request once the claim lapses and runs it again. The prompt is
deleted when the answer is stored; the answer expires after `async_result_ttl_s`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response

from queue_gateway.catalog import Catalog, Target
from queue_gateway.dispatch import Call, Dispatcher
from queue_gateway.errors import GatewayError, NotFound
from queue_gateway.limits import KeyLimits
from queue_gateway.metrics import GatewayMetrics
from queue_gateway.sinks import BufferSink, Sink
from warmpool.apikeys import ApiKeyRecord
from warmpool.async_requests import AsyncRecord, AsyncRequests, AsyncState
from warmpool.request_limits import ASYNC_HOLDER

log = logging.getLogger(__name__)

MAX_LONG_POLL_S = 60.0
POLL_STEP_S = 0.2
CLAIM_EVERY_S = 0.5


def _url(rid: str) -> str:
    return f"/v1/async/{rid}"


def _status_doc(rec: AsyncRecord, *, model: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "id": rec.id,
            "object": "slurmless.async_request",
            "status": "queued" if rec.state is AsyncState.QUEUED else "in_progress",
            "created": int(rec.created_s),
            "model": model or rec.model,
            "url": _url(rec.id),
            "attempts": rec.attempts,
        }
    )


async def submit_async(
    store: AsyncRequests,
    runner: AsyncRunner,
    sink: Sink,
    *,
    rid: str,
    key: ApiKeyRecord,
    target: Target,
    client_model: str,
    path: str,
    body: bytes,
    now_s: float,
    lease_s: float,
    pending_ttl_s: float,
) -> int:
    """Store the request under `rid`, start running it here, and answer 202 with its id."""
    await store.submit(
        rid,
        runner.gateway_id,
        path=path,
        body=body,
        model=client_model,
        tenant=key.tenant,
        key_id=key.key_id,
        admin=key.admin,
        now_s=now_s,
        lease_s=lease_s,
        pending_ttl_s=pending_ttl_s,
    )
    runner.metrics.async_requests.labels("submitted").inc()
    runner.start(rid)
    doc = _status_doc(AsyncRecord(id=rid, state=AsyncState.QUEUED, created_s=now_s, model=client_model, attempts=1))
    await sink.start(
        202,
        [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(doc)).encode()),
            (b"location", _url(rid).encode()),
            (b"retry-after", b"1"),
            (b"preference-applied", b"respond-async"),
            (b"x-slurmless-cold-start", b"false"),
            (b"x-slurmless-queue-wait-ms", b"0"),
        ],
    )
    await sink.end(doc)
    return 202


async def fetch_async(
    store: AsyncRequests, request: Request, key: ApiKeyRecord, *, clock: Callable[[], float]
) -> Response:
    """`GET /v1/async/{rid}[?wait_s=N]`: 202 with the status while pending, else the stored answer."""
    rid = request.path_params["rid"]
    try:
        wait_s = min(MAX_LONG_POLL_S, max(0.0, float(request.query_params.get("wait_s", "0"))))
    except ValueError:
        wait_s = 0.0
    # Polls read the state alone; the answer (never the prompt) once, when it is there.
    rec = await store.get(rid, prompt=False, result=False)
    if rec is None or (rec.tenant != key.tenant and not key.admin):
        raise NotFound(f"No async request `{rid}`.", code="async_request_not_found")
    state: AsyncState | None = rec.state
    deadline = time.monotonic() + wait_s
    while state is not AsyncState.DONE and time.monotonic() < deadline:
        if await request.is_disconnected():
            break
        await asyncio.sleep(min(POLL_STEP_S, max(0.0, deadline - time.monotonic())))
        state = await store.state(rid)
        if state is None:
            raise NotFound(f"No async request `{rid}`.", code="async_request_not_found")
    if state is AsyncState.DONE:
        rec = await store.get(rid, prompt=False) or rec
        return Response(
            rec.result or b"",
            status_code=rec.status or 200,
            media_type=rec.content_type,
            headers={
                "x-slurmless-async-status": "done",
                "x-slurmless-cold-start": "true" if rec.cold_start else "false",
                "x-slurmless-queue-wait-ms": str(rec.queue_wait_ms),
            },
        )
    return Response(
        _status_doc(rec),
        status_code=202,
        media_type="application/json",
        headers={"retry-after": "1", "location": _url(rid), "x-slurmless-async-status": "pending"},
    )


class AsyncRunner:
    """Runs this process's async requests and claims orphaned ones (their claim lapsed)."""

    def __init__(
        self,
        store: AsyncRequests,
        dispatcher: Dispatcher,
        catalog: Catalog,
        metrics: GatewayMetrics,
        *,
        gateway_id: str,
        clock: Callable[[], float],
        lease_s: float,
        result_ttl_s: float,
        max_running: int,
        limits: KeyLimits,
        max_result_bytes: int,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.catalog = catalog
        self.metrics = metrics
        self.gateway_id = gateway_id
        self.clock = clock
        self.lease_s = lease_s
        self.result_ttl_s = result_ttl_s
        self.max_running = max_running
        self.limits = limits
        self.max_result_bytes = max_result_bytes
        self.running: dict[str, asyncio.Task[None]] = {}

    def start(self, rid: str) -> None:
        if rid not in self.running:
            self.running[rid] = asyncio.get_running_loop().create_task(self._run(rid))

    async def claim_once(self) -> int:
        """Claim what nobody runs, up to the free capacity; returns how many were claimed."""
        room = self.max_running - len(self.running)
        if room <= 0:
            return 0
        rids = await self.store.claim(self.gateway_id, now_s=self.clock(), lease_s=self.lease_s, limit=room)
        for rid in rids:
            self.metrics.async_requests.labels("claimed").inc()
            self.start(rid)
        return len(rids)

    async def renew(self) -> None:
        """Extend the claims of running requests (called with the lease heartbeat)."""
        lost = await self.store.renew(self.gateway_id, list(self.running), now_s=self.clock(), lease_s=self.lease_s)
        for rid in lost:
            task = self.running.pop(rid, None)
            if task is not None:
                task.cancel()

    async def loop(self) -> None:
        while True:
            try:
                await self.claim_once()
            except Exception as exc:  # a background loop must never die
                log.warning("claiming async requests failed: %r", exc)
            await asyncio.sleep(CLAIM_EVERY_S)

    async def shutdown(self) -> None:
        """Stop running; hand unfinished requests back so another gateway takes them at once."""
        tasks = list(self.running.values())
        rids = list(self.running)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.store.abandon(self.gateway_id, rids)

    async def _run(self, rid: str) -> None:
        try:
            rec = await self.store.get(rid)
            if rec is None or rec.state is AsyncState.DONE or rec.body is None or rec.owner != self.gateway_id:
                return
            await self.store.mark_running(rid, self.gateway_id)
            sink = BufferSink(max_bytes=self.max_result_bytes)
            call: Call | None = None
            try:
                key = ApiKeyRecord(key_id=rec.key_id, tenant=rec.tenant, admin=rec.admin)
                target = await self.catalog.target(rec.model, key)
                now = self.clock()
                call = Call(
                    path=rec.path,
                    body=rec.body,
                    target=target,
                    stream=False,
                    arrived_s=now,
                    arrived_perf=time.perf_counter(),
                    request_id=rid,
                )
                await self.dispatcher.run(call, sink)
                status, content_type, result = sink.status, sink.content_type, sink.body
            except GatewayError as exc:
                status, content_type, result = exc.status, "application/json", exc.body()
            done = await self.store.finish(
                rid,
                self.gateway_id,
                status=status,
                content_type=content_type,
                result=result,
                cold_start=call.cold_start if call else False,
                queue_wait_ms=call.queue_wait_ms if call else 0,
                now_s=self.clock(),
                result_ttl_s=math.ceil(self.result_ttl_s),
            )
            self.metrics.async_requests.labels("done" if status < 400 else "failed").inc()
            if done:
                await self.limits.release(key, ASYNC_HOLDER, rid)
            else:
                log.info("async request %s was taken over by another gateway", rid)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("async request %s failed", rid)
        finally:
            task = self.running.get(rid)
            if task is asyncio.current_task():
                self.running.pop(rid, None)
