"""A request's way to an engine: take a slot (or queue and hold), proxy, give the slot back.

Warm path: one `Routing.admit` round trip takes a slot on the least-loaded ready instance, then
the engine's bytes are forwarded as they come. When the last admit left the model's only ready
instance at most half full (less than `SPECULATION_HINT_S` ago), the request is sent to that
instance before the admit, which then runs while the engine works (0.3 ms of the ~0.6 ms the
gateway added to the time to first token at one stream, bench/README.md); its answer is used
only if the admit gave that same instance the slot, else its connection is closed (the engine
aborts it) and the request goes where the admit says.

When no slot is free, the ticket is held (`hold.Holder`) until granted FIFO or until its wait
budget runs out. A failure of the engine before its first byte reached the client is retried on
another slot (`upstream_retries` times). An engine that dies (its connection breaks) with a request
that has produced nothing yet is taken out of routing and the request goes back to the head of the
model's queue: the replacement serves it, within the model's wait budgets (at-least-once for requests
without output; a stream that has sent tokens ends with an SSE error event, at-most-once). The
response's status and headers go out with its first byte, so until then nothing is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

from redis.exceptions import RedisError

from queue_gateway.budget import Budgets, retry_after_s
from queue_gateway.catalog import Target
from queue_gateway.endpoints import JSON_TYPE
from queue_gateway.engine_http import EngineError, EngineResponse
from queue_gateway.errors import (
    EngineRejected,
    GatewayError,
    QueueFull,
    Unavailable,
    UpstreamFailed,
)
from queue_gateway.external import ExternalRoutes
from queue_gateway.hold import GrantHub, Holder, TicketLost
from queue_gateway.metrics import GatewayMetrics
from queue_gateway.progress import granted_comment, queue_comment
from queue_gateway.proxy import Speculation, Upstreams, UpstreamUnreachable, forward_headers
from queue_gateway.sinks import Sink
from warmpool.phase import ModelPhase, PhaseBoard
from warmpool.routing import Admission, AdmitOutcome, Routing
from warmpool.timeline import Timeline

log = logging.getLogger(__name__)

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
SPECULATION_HINT_S = 1.0
"""How long the last admit's view of a model's instance is trusted for a speculative send."""


@dataclass(slots=True)
class _Hint:
    """What the last admit said about a model's only ready instance."""

    instance_id: str
    until_s: float
    budget: int
    """Speculative sends left until the next admit answers: half the cap less the load it saw."""


@dataclass(slots=True)
class Call:
    """One request on its way to an engine, and what it went through."""

    path: str
    body: bytes
    target: Target
    stream: bool
    arrived_s: float
    arrived_perf: float
    request_id: str
    progress: bool = False
    """Send SSE progress comments while held (streaming requests of a live client)."""
    cold_start: bool = False
    queue_wait_ms: int = 0
    held_start: bool = False
    """The response's headers went out while the request was still queued."""
    first_byte_sent: bool = False
    requeued: bool = False
    """Its engine died before answering: the next admit queues it at the head of the model's queue."""
    granted_said: bool = False
    """The `: slurmless granted` comment went out (once, even if the request is retried)."""
    content_type: bytes = b"application/json"

    @property
    def metrics_model(self) -> str:
        return self.target.spec.name

    def headers(self, queue_wait_ms: int | None = None) -> list[tuple[bytes, bytes]]:
        """Headers every response carries: whether it waited for a cold start and how long."""
        wait_ms = self.queue_wait_ms if queue_wait_ms is None else queue_wait_ms
        h = [
            (b"x-slurmless-cold-start", b"true" if self.cold_start else b"false"),
            (b"x-slurmless-queue-wait-ms", str(wait_ms).encode()),
            (b"x-slurmless-request-id", self.request_id.encode()),
        ]
        if self.held_start:
            # The final figures follow in the `: slurmless granted ...` comment.
            h.append((b"x-slurmless-held", b"true"))
        return h


class _Retry(Exception):
    def __init__(self, final: GatewayError) -> None:
        super().__init__(final.message)
        self.final = final


class SlotRouting(Protocol):
    """The two warm-path steps of `warmpool.routing.Routing` (also `redis_pipe.HotRouting`)."""

    async def admit(
        self,
        model: str,
        gateway_id: str,
        request_id: str,
        *,
        now_s: float,
        queue_max: int,
        global_max: int,
        signal_demand: bool = True,
    ) -> Admission: ...

    async def release(self, gateway_id: str, request_id: str) -> int: ...


Release = Callable[[], Awaitable[object]]
T = TypeVar("T")


async def settle(aw: Awaitable[T]) -> T:
    """Finish a clean-up step even if the caller is cancelled meanwhile (then re-raise)."""
    fut = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await fut
        raise


class Dispatcher:
    """Admission, holding and proxying for one gateway process."""

    def __init__(
        self,
        *,
        routing: Routing,
        hub: GrantHub,
        holder: Holder,
        phases: PhaseBoard,
        upstreams: Upstreams,
        metrics: GatewayMetrics,
        gateway_id: str,
        clock: Callable[[], float],
        default_budgets: Budgets,
        queue_max_per_model: int,
        queue_max_global: int,
        retries: int,
        first_progress_s: float,
        progress_interval_s: float,
        hot: SlotRouting | None = None,
        speculative: bool = True,
        external: ExternalRoutes | None = None,
    ) -> None:
        self.routing = routing
        self.hot: SlotRouting = hot or routing
        self.hub = hub
        self.holder = holder
        self.phases = phases
        self.upstreams = upstreams
        self.metrics = metrics
        self.gateway_id = gateway_id
        self.clock = clock
        self.default_budgets = default_budgets
        self.queue_max_per_model = queue_max_per_model
        self.queue_max_global = queue_max_global
        self.retries = retries
        self.first_progress_s = first_progress_s
        self.progress_interval_s = progress_interval_s
        self.speculative = speculative
        self.external = external
        self._hints: dict[str, _Hint] = {}
        self.timeline = Timeline(routing.redis, routing.keys)

    def budgets(self, target: Target) -> Budgets:
        policy = target.spec.policy
        return Budgets(
            cold_s=policy.cold_wait_budget_s or self.default_budgets.cold_s,
            warm_s=policy.warm_wait_budget_s or self.default_budgets.warm_s,
        )

    async def run(self, call: Call, sink: Sink) -> None:
        """Serve `call` into `sink`; raises `GatewayError` for refusals and engine failures."""
        external = call.target.spec.external
        if external is not None:
            if self.external is None:
                raise Unavailable("External models are not served by this process.", code="external_unavailable")
            call.first_byte_sent = await self.external.run(
                external, call.path, call.body, call.content_type, sink, call.metrics_model,
                call.headers(), call.arrived_perf,
            )  # fmt: skip
            return
        attempts = 0
        failed: Release | None = None
        spec = self._speculate(call)
        try:
            while True:
                try:
                    iid, release = await self._acquire(call, sink, spec)
                finally:
                    # The failed instance's slot is kept until the retry took its own, so that the
                    # least-loaded choice steers the retry to another instance when there is one.
                    if failed is not None:
                        await settle(failed())
                        failed = None
                try:
                    opened: EngineResponse | None = None
                    if spec is not None:
                        sent = spec
                        spec = None
                        opened = await self._confirm(call, sent, iid)
                    await self._proxy(call, sink, iid, opened)
                except _Retry as exc:
                    attempts += 1
                    committed = call.first_byte_sent or (sink.started and not call.held_start)
                    if attempts > self.retries or committed:
                        await settle(release())
                        raise exc.final from None
                    self.metrics.retries.labels(call.metrics_model).inc()
                    failed = release
                    continue
                except BaseException:
                    await settle(release())
                    raise
                await settle(release())
                return
        finally:
            if spec is not None:
                spec.abandon()

    async def run_on(self, call: Call, sink: Sink, instance_id: str) -> None:
        """Proxy `call` on a slot the caller already holds on `instance_id` (batch lines take theirs with
        `warmpool.batches.Batches.take`); an engine failure raises its `GatewayError`, with no retry."""
        try:
            await self._proxy(call, sink, instance_id)
        except _Retry as exc:
            raise exc.final from None

    def _speculate(self, call: Call) -> Speculation | None:
        """Send the request to the engine before the admit answers, when the last admit makes a slot
        on the same instance near certain: the model's only ready instance, at most half full then,
        less than `SPECULATION_HINT_S` ago."""
        if not self.speculative or call.content_type != JSON_TYPE:
            return None
        hint = self._hints.get(call.target.instance_model)
        if hint is None or hint.budget <= 0 or hint.until_s <= self.clock():
            return None
        spec = self.upstreams.speculate(hint.instance_id, call.path, call.body)
        if spec is not None:
            hint.budget -= 1
        return spec

    def _observe(self, model: str, adm: Admission, now: float) -> None:
        if (
            adm.outcome is AdmitOutcome.SLOT
            and adm.instance_id is not None
            and adm.ready_instances == 1
            and 2 * adm.load <= adm.cap
        ):
            self._hints[model] = _Hint(adm.instance_id, now + SPECULATION_HINT_S, adm.cap // 2 - adm.load)
        elif self._hints:
            self._hints.pop(model, None)

    async def _confirm(self, call: Call, spec: Speculation, iid: str) -> EngineResponse | None:
        """The speculative request's response if its instance got the slot (None: send it anew)."""
        if spec.abandoned:
            return None
        response = await spec.response(iid)
        outcome = "used" if response is not None else ("abandoned" if iid != spec.instance_id else "failed")
        self.metrics.speculation.labels(call.metrics_model, outcome).inc()
        return response

    async def _acquire(self, call: Call, sink: Sink, spec: Speculation | None = None) -> tuple[str, Release]:
        model = call.target.instance_model
        gw = self.gateway_id
        tid = uuid.uuid4().hex
        grant = self.hub.expect(tid)
        now = self.clock()
        queue_max = call.target.spec.policy.queue_max or self.queue_max_per_model
        try:
            if call.requeued:
                adm = await self.routing.admit(
                    model, gw, tid, now_s=now, queue_max=queue_max, global_max=self.queue_max_global, head=True
                )
            else:
                adm = await self.hot.admit(
                    model, gw, tid, now_s=now, queue_max=queue_max, global_max=self.queue_max_global
                )
        except BaseException:
            self.hub.forget(tid)
            raise
        if self.speculative:
            self._observe(model, adm, now)
            if spec is not None and (adm.outcome is not AdmitOutcome.SLOT or adm.instance_id != spec.instance_id):
                spec.abandon()
                self.metrics.speculation.labels(call.metrics_model, "abandoned").inc()
        if adm.outcome is AdmitOutcome.SLOT:
            self.hub.forget(tid)
            assert adm.instance_id is not None
            return adm.instance_id, partial(self.hot.release, gw, tid)
        warm = adm.ready_instances > 0
        if adm.outcome is not AdmitOutcome.QUEUED:
            self.hub.forget(tid)
            if warm and adm.outcome is AdmitOutcome.FULL:
                raise QueueFull(
                    f"The queue of model `{call.target.spec.client_name}` is full; retry shortly.",
                    retry_after_s=retry_after_s(now_s=now, warm=True, eta_s=None),
                )
            phase = await self.phases.get(model)
            what = "All queues are" if adm.outcome is AdmitOutcome.FULL_GLOBAL else "The model's queue is"
            raise Unavailable(
                f"{what} full while model `{call.target.spec.client_name}` starts; retry later.",
                code="queue_full",
                retry_after_s=retry_after_s(now_s=now, warm=warm, eta_s=phase.eta_s),
            )
        call.cold_start = call.cold_start or not warm
        held = self.metrics.held.labels(call.metrics_model)
        held.inc()
        try:
            iid = await self.holder.wait(
                grant,
                model=model,
                ticket_id=tid,
                enqueued_s=now,
                warm_at_admit=warm,
                budgets=self.budgets(call.target),
                progress=partial(self._progress, call, sink) if call.progress else None,
                first_progress_s=self.first_progress_s,
                progress_interval_s=self.progress_interval_s,
            )
        except BaseException as exc:
            self.hub.forget(tid)
            await settle(self.routing.cancel(model, gw, tid))
            if isinstance(exc, TicketLost):
                raise Unavailable("The request's queue ticket was lost; retry.", retry_after_s=1) from None
            raise
        finally:
            held.dec()
        waited_s = max(0.0, self.clock() - now)
        call.queue_wait_ms += int(waited_s * 1000)
        self.metrics.queue_wait.labels(call.metrics_model, str(not warm).lower()).observe(waited_s)
        if not warm:
            self.metrics.cold_start_wait.labels(call.metrics_model).observe(waited_s)
        # Finishing with `cancel` deletes the ticket's hash as well as giving the slot back.
        return iid, partial(self.routing.cancel, model, gw, tid)

    async def _progress(self, call: Call, sink: Sink, position: int | None, phase: ModelPhase) -> None:
        if not sink.started:
            call.held_start = True
            so_far_ms = call.queue_wait_ms + int(max(0.0, self.clock() - call.arrived_s) * 1000)
            await sink.start(200, SSE_HEADERS + call.headers(so_far_ms))
        await sink.write(queue_comment(position, phase, now_s=self.clock()))

    async def _unroute(self, model: str, iid: str) -> None:
        """Stop routing to an instance that refuses connections (its engine or node died), and tell the
        launcher at once. The retry then waits in the queue, within the wait budgets, for another
        instance instead of failing; the launcher puts the instance back if it proves healthy."""
        await settle(self.routing.deactivate(model, iid))
        await settle(self.routing.redis.publish(self.routing.keys.demand_channel, model))

    async def _engine_died(self, call: Call, iid: str) -> None:
        """The engine broke a request off before its first byte: unroute it and queue the request first."""
        self.upstreams.forget(iid)
        with contextlib.suppress(RedisError, OSError):
            # Unrouting only spares the next requests a try on the dead engine; the retry must not wait on it.
            await self._unroute(call.target.instance_model, iid)
        call.requeued = True
        self.metrics.requeued.labels(call.metrics_model).inc()

    async def _proxy(self, call: Call, sink: Sink, iid: str, opened: EngineResponse | None = None) -> None:
        model = call.metrics_model
        try:
            response = opened or await self.upstreams.open(iid, call.path, call.body, call.content_type)
        except UpstreamUnreachable as exc:
            self.metrics.upstream_errors.labels(model, "connect").inc()
            await self._unroute(call.target.instance_model, iid)
            raise _Retry(exc) from None
        except UpstreamFailed as exc:
            # The connection broke before the engine answered: it died with the request (kill, node
            # loss, scancel). Nothing reached the client, so the request is served elsewhere.
            self.metrics.upstream_errors.labels(model, "broken").inc()
            await self._engine_died(call, iid)
            raise _Retry(exc) from None
        except GatewayError:
            self.metrics.upstream_errors.labels(model, "timeout").inc()
            raise
        in_flight = self.metrics.in_flight.labels(model)
        in_flight.inc()
        try:
            status = response.status_code
            if status >= 400:
                try:
                    raw = await response.aread()
                except EngineError as exc:
                    raw = str(exc).encode()
                self.metrics.upstream_errors.labels(model, "status").inc()
                if status >= 500 or status in (401, 403):
                    detail = EngineRejected(status, raw).message
                    raise _Retry(UpstreamFailed(f"The engine failed with status {status}: {detail}"))
                raise EngineRejected(status, raw)
            try:
                # One piece per socket read: chunks that arrived together go out in one write.
                chunk = await response.read()
                if sink.started:
                    if not call.granted_said:
                        call.granted_said = True
                        await sink.write(granted_comment(cold_start=call.cold_start, queue_wait_ms=call.queue_wait_ms))
                else:
                    await sink.start(status, forward_headers(response) + call.headers())
                if chunk:
                    call.first_byte_sent = True
                    self.metrics.ttfb.labels(model).observe(time.perf_counter() - call.arrived_perf)
                    if call.cold_start:
                        # The status page's "first token" phase; a lost write must not cost the answer.
                        with contextlib.suppress(RedisError, OSError):
                            await self.timeline.first_token(call.target.instance_model, now_s=self.clock())
                while chunk:
                    await sink.write(chunk)
                    chunk = await response.read()
            except EngineError as exc:
                self.metrics.upstream_errors.labels(model, "stream").inc()
                log.warning("engine response of %s broke off: %s", call.request_id, exc)
                failure = UpstreamFailed("The engine's response broke off.")
                if call.first_byte_sent:
                    raise failure from exc
                await self._engine_died(call, iid)
                raise _Retry(failure) from exc
            await sink.end()
        finally:
            in_flight.dec()
            response.close()
