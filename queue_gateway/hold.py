"""Holding queued requests until they are granted, and keeping this process's lease alive.

- `GrantHub`: one pubsub subscription per process on its grant channel, resolving a future per
  ticket; a periodic check of the waiting tickets catches a grant whose message was lost (e.g.
  while the pubsub connection reconnected), and tickets reaped behind our back.
- `ModelWatch`: per model with held requests, its phase and ready instances, refreshed once a
  second for the whole process (not per held request).
- `Holder.wait`: one request's wait, bounded by the wait budgets, writing progress if asked.
- `Lease`: the heartbeat that keeps this process's tickets and slots, plus the reaper of dead
  processes' ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from queue_gateway.budget import Budgets, retry_after_s, wait_deadline_s
from queue_gateway.errors import Unavailable
from warmpool.keys import Keys
from warmpool.phase import ModelPhase, Phase, PhaseBoard
from warmpool.redisio import text
from warmpool.routing import Routing

log = logging.getLogger(__name__)

Progress = Callable[[int | None, ModelPhase], Awaitable[None]]


class TicketLost(Exception):
    """The ticket vanished while queued: this process's lease lapsed and it was reaped."""


class GrantHub:
    """Grants for this gateway process's tickets, delivered to futures by ticket id."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, gateway_id: str, *, check_interval_s: float = 1.0) -> None:
        self.redis = redis
        self.keys = keys
        self.gateway_id = gateway_id
        self.check_interval_s = check_interval_s
        self.subscribed = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._seen: set[str] = set()
        """Waiting tickets whose hash was seen queued: if it disappears, the ticket was reaped."""

    def expect(self, ticket_id: str) -> asyncio.Future[str]:
        """Register before `admit`, so a grant arriving before admit returns is not missed."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[ticket_id] = fut
        return fut

    def forget(self, ticket_id: str) -> None:
        self._seen.discard(ticket_id)
        fut = self._waiting.pop(ticket_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _resolve(self, ticket_id: str, instance_id: str) -> None:
        self._seen.discard(ticket_id)
        fut = self._waiting.pop(ticket_id, None)
        if fut is not None and not fut.done():
            fut.set_result(instance_id)

    async def listen(self) -> None:
        """Run forever: the subscription, re-established after any connection error."""
        channel = self.keys.gw_channel(self.gateway_id)
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                self.subscribed.set()
                await self.check()  # grants sent while we were not subscribed
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        tid, _, iid = text(msg["data"]).partition("|")
                        self._resolve(tid, iid)
            except Exception as exc:  # a background loop must never die
                self.subscribed.clear()
                log.warning("grant subscription lost (%r); resubscribing", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def check(self) -> None:
        """The safety net: look up every waiting ticket's state (one pipelined round trip)."""
        tids = list(self._waiting)
        if not tids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for tid in tids:
                pipe.hmget(self.keys.ticket(tid), ["state", "iid", "gw"])
            rows = await pipe.execute()
        for tid, (state, iid, gw) in zip(tids, rows, strict=True):
            fut = self._waiting.get(tid)
            if fut is None or fut.done():
                continue
            if state is None:
                # Queued tickets always have a hash; none means it was reaped (or never written yet
                # if admit is still in flight: only fail those whose hash was seen before).
                if tid in self._seen:
                    self._seen.discard(tid)
                    self._waiting.pop(tid, None)
                    fut.set_exception(TicketLost(tid))
            elif text(state) == "granted" and text(gw) == self.gateway_id:
                self._resolve(tid, text(iid))
            else:
                self._seen.add(tid)

    async def check_loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            try:
                await self.check()
            except Exception as exc:  # a background loop must never die
                log.warning("ticket check failed: %r", exc)


@dataclass(slots=True)
class ModelState:
    phase: ModelPhase = field(default_factory=ModelPhase)
    ready: int = 0
    queue_depth: int = 0
    warm_since_s: float | None = None
    known: bool = False
    interest: int = 0


class ModelWatch:
    """Phase, ready instances and queue depth of the models this process holds requests for."""

    def __init__(
        self, redis: aioredis.Redis, keys: Keys, *, clock: Callable[[], float], refresh_s: float = 1.0
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.clock = clock
        self.refresh_s = refresh_s
        self.phases = PhaseBoard(redis, keys)
        self.models: dict[str, ModelState] = {}
        self._refreshing: asyncio.Task[None] | None = None

    async def refresh_now(self) -> None:
        """Refresh at once, sharing one round trip among all callers that ask meanwhile."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self.refresh())
        await asyncio.shield(self._refreshing)

    def enter(self, model: str) -> ModelState:
        state = self.models.setdefault(model, ModelState())
        state.interest += 1
        return state

    def leave(self, model: str) -> None:
        state = self.models.get(model)
        if state is not None:
            state.interest -= 1
            if state.interest <= 0:
                del self.models[model]

    async def refresh(self) -> None:
        models = list(self.models)
        if not models:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in models:
                pipe.get(self.keys.phase(m))
                pipe.zcard(self.keys.ready(m))
                pipe.zcard(self.keys.queue(m))
            rows = await pipe.execute()
        now = self.clock()
        for i, m in enumerate(models):
            state = self.models.get(m)
            if state is None:
                continue
            raw, ready, depth = rows[3 * i : 3 * i + 3]
            state.phase = ModelPhase() if raw is None else ModelPhase.model_validate_json(raw)
            state.ready = int(ready)
            state.queue_depth = int(depth)
            if state.ready > 0 and state.warm_since_s is None:
                state.warm_since_s = now
            elif state.ready == 0:
                state.warm_since_s = None
            state.known = True

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh_now()
            except Exception as exc:  # a background loop must never die
                log.warning("model watch refresh failed: %r", exc)


def effective_phase(state: ModelState) -> ModelPhase:
    """What to tell a client: `ready` as soon as an instance is routed to, whatever the launcher wrote."""
    if state.ready > 0 and state.phase.phase is not Phase.READY:
        return state.phase.model_copy(update={"phase": Phase.READY, "ready_instances": state.ready})
    return state.phase


class Holder:
    """Waits for one ticket's grant within the wait budgets."""

    def __init__(self, routing: Routing, watch: ModelWatch, *, clock: Callable[[], float]) -> None:
        self.routing = routing
        self.watch = watch
        self.clock = clock

    async def wait(
        self,
        grant: asyncio.Future[str],
        *,
        model: str,
        ticket_id: str,
        enqueued_s: float,
        warm_at_admit: bool,
        budgets: Budgets,
        progress: Progress | None = None,
        first_progress_s: float = 1.0,
        progress_interval_s: float = 5.0,
    ) -> str:
        """The granted instance id; raises `Unavailable` when the budget runs out (ticket withdrawn by the caller)."""
        state = self.watch.enter(model)
        try:
            next_progress = enqueued_s + first_progress_s
            while True:
                if grant.done():
                    return grant.result()
                now = self.clock()
                if state.known:
                    warm_since = None if state.warm_since_s is None else max(enqueued_s, state.warm_since_s)
                else:
                    warm_since = enqueued_s if warm_at_admit else None
                deadline = wait_deadline_s(enqueued_s, budgets, warm_since)
                if now >= deadline:
                    warm = warm_since is not None
                    budget = budgets.warm_s if warm else budgets.cold_s
                    raise Unavailable(
                        f"The model `{model}` could not take the request within the "
                        f"{'warm' if warm else 'cold-start'} wait budget of {budget:g} s.",
                        code="wait_budget_exceeded",
                        retry_after_s=retry_after_s(now_s=now, warm=warm, eta_s=state.phase.eta_s),
                    )
                until = deadline
                if progress is not None:
                    until = min(until, next_progress)
                # Re-evaluate at least every second: the model may turn warm, switching budgets.
                timeout = max(0.0, min(until - now, 1.0))
                await asyncio.wait((grant,), timeout=timeout)
                if grant.done():
                    return grant.result()
                now = self.clock()
                if progress is not None and now >= next_progress:
                    next_progress = now + progress_interval_s
                    if not state.known:
                        with contextlib.suppress(RedisError, OSError, ValueError):
                            await self.watch.refresh_now()
                    position = await self.routing.position(model, ticket_id)
                    await progress(position, effective_phase(state))
        finally:
            self.watch.leave(model)


class Lease:
    """This process's lease on its tickets and slots, and the reaper of dead processes."""

    def __init__(
        self,
        routing: Routing,
        gateway_id: str,
        *,
        ttl_s: float,
        clock: Callable[[], float],
        on_tick: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.routing = routing
        self.gateway_id = gateway_id
        self.ttl_s = ttl_s
        self.clock = clock
        self.on_tick = on_tick

    async def tick(self) -> int:
        """Renew, then reclaim what dead processes held; returns the number reaped."""
        now = self.clock()
        await self.routing.heartbeat(self.gateway_id, now_s=now, ttl_s=self.ttl_s)
        reaped = await self.routing.reap(now_s=now)
        if self.on_tick is not None:
            await self.on_tick()
        return reaped

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                reaped = await self.tick()
                if reaped:
                    log.info("reclaimed the tickets and slots of %d dead gateway(s)", reaped)
            except Exception as exc:
                # Never let this loop die: a live process whose lease lapses has its tickets reaped.
                # Redis errors are not the only ones seen while Redis restarts (EOFError mid-read).
                log.warning("lease renewal failed: %r", exc)
