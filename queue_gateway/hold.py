"""Holding queued requests until they are granted, and keeping this process's lease alive.

- `GrantHub`: one pubsub subscription per process on its grant channel, resolving a future per
  ticket; a periodic check of the waiting tickets catches a grant whose message was lost (e.g.
  while the pubsub connection reconnected), and tickets reaped behind our back.
- `ModelWatch`: per model with held requests, its phase and ready instances, refreshed once a
  second for the whole process (not per held request).
- `Holder`: the held requests' waits, bounded by the wait budgets, and their progress comments,
  all driven by one ticker per process.
- `Lease`: the heartbeat that keeps this process's tickets and slots, plus the reaper of dead
  processes' ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from queue_gateway.budget import Budgets, retry_after_s, wait_deadline_s
from queue_gateway.errors import Unavailable
from warmpool import pool_load
from warmpool.keys import Keys
from warmpool.phase import ModelPhase, Phase, PhaseBoard
from warmpool.redisio import text
from warmpool.routing import Routing

log = logging.getLogger(__name__)

Progress = Callable[[int | None, ModelPhase], Awaitable[None]]

CHECK_BATCH = 1000
"""Tickets looked up per pipelined round trip of the safety-net sweep."""
CHECK_RATE_PER_S = 2000.0
"""The sweep's pace with many tickets waiting: 10,000 held tickets are checked every 5 s."""


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
        """The safety net: look up every waiting ticket's state (pipelined, `CHECK_BATCH` per round trip)."""
        tids = list(self._waiting)
        for i in range(0, len(tids), CHECK_BATCH):
            await self._check(tids[i : i + CHECK_BATCH])

    async def _check(self, tids: list[str]) -> None:
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
            # Grants come by pubsub; this sweep only catches lost messages and reaped tickets, so
            # with many tickets waiting it runs less often (at most `CHECK_RATE_PER_S` lookups/s).
            await asyncio.sleep(max(self.check_interval_s, len(self._waiting) / CHECK_RATE_PER_S))
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
                pool_load.ask(pipe, self.keys, m)
            rows = await pipe.execute()
        now = self.clock()
        per_model = 1 + pool_load.REPLIES
        for i, m in enumerate(models):
            state = self.models.get(m)
            if state is None:
                continue
            raw, *replies = rows[per_model * i : per_model * (i + 1)]
            load = pool_load.parse(replies)
            state.phase = ModelPhase() if raw is None else ModelPhase.model_validate_json(raw)
            state.ready = load.ready
            state.queue_depth = load.queue_depth
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


FAILED_RETRY_AFTER_S = 60
"""Retry-After of a refusal because the model cannot start (an admin must act, or its backoff run out)."""


def model_failure(model: str, state: ModelState, now_s: float) -> Unavailable | None:
    """The error for requests held for a model that cannot start (broken, or its job refused by Slurm),
    None while it may still come: waiting clients are told at once, not at the end of their budget."""
    if not state.known or state.ready > 0 or state.phase.phase is not Phase.FAILED:
        return None
    why = state.phase.detail or "its starts keep failing"
    return Unavailable(
        f"The model `{model}` cannot start: {why}",
        code="model_failed",
        retry_after_s=FAILED_RETRY_AFTER_S,
    )


@dataclass(eq=False, slots=True)
class _Held:
    """One held request, as the ticker sees it."""

    grant: asyncio.Future[str]
    model: str
    ticket_id: str
    enqueued_s: float
    warm_at_admit: bool
    budgets: Budgets
    state: ModelState
    progress: Progress | None
    next_progress_s: float
    progress_interval_s: float
    due_s: float = 0.0
    writing: asyncio.Task[None] | None = None


TICK_S = 0.25
"""How often the ticker looks at held requests (comments are at most this late)."""
RECHECK_S = 1.0
"""A held request's budget is re-evaluated at least this often: its model may turn warm."""


class Holder:
    """Holds queued requests until granted, within their wait budgets, writing their progress.

    One process-wide ticker (`loop`, one step: `tick(now)`) serves every held request: it fails
    the ones whose budget ran out and writes the due progress comments, looking up the queue
    positions of all of them in one pipelined round trip. A held request itself only awaits its
    grant; it costs no timer and no wake-up of its own while it waits.
    """

    def __init__(
        self, routing: Routing, watch: ModelWatch, *, clock: Callable[[], float], tick_s: float = TICK_S
    ) -> None:
        self.routing = routing
        self.watch = watch
        self.clock = clock
        self.tick_s = tick_s
        self._due: list[tuple[float, int, _Held]] = []
        self._seq = 0

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
        held = _Held(
            grant=grant,
            model=model,
            ticket_id=ticket_id,
            enqueued_s=enqueued_s,
            warm_at_admit=warm_at_admit,
            budgets=budgets,
            state=self.watch.enter(model),
            progress=progress,
            next_progress_s=enqueued_s + first_progress_s,
            progress_interval_s=progress_interval_s,
        )
        try:
            self._schedule(held, self._next_due(held, enqueued_s))
            try:
                return await grant
            finally:
                if held.writing is not None and not held.writing.done():
                    # The model's stream must not interleave with a comment being written.
                    await asyncio.wait((held.writing,))
        finally:
            self.watch.leave(model)

    def _deadline(self, held: _Held) -> float:
        state = held.state
        if state.known:
            warm_since = None if state.warm_since_s is None else max(held.enqueued_s, state.warm_since_s)
        else:
            warm_since = held.enqueued_s if held.warm_at_admit else None
        return wait_deadline_s(held.enqueued_s, held.budgets, warm_since)

    def _next_due(self, held: _Held, now: float) -> float:
        due = min(self._deadline(held), now + RECHECK_S)
        if held.progress is not None:
            due = min(due, held.next_progress_s)
        return due

    def _schedule(self, held: _Held, due_s: float) -> None:
        held.due_s = due_s
        self._seq += 1
        heapq.heappush(self._due, (due_s, self._seq, held))

    async def tick(self, now: float) -> None:
        """One step: fail the held requests past their budget, write the due progress comments."""
        writes: list[_Held] = []
        while self._due and self._due[0][0] <= now:
            _, _, held = heapq.heappop(self._due)
            if held.grant.done():
                continue
            failure = model_failure(held.model, held.state, now)
            if failure is not None:
                held.grant.set_exception(failure)
                continue
            deadline = self._deadline(held)
            if now >= deadline:
                warm = held.state.warm_since_s is not None if held.state.known else held.warm_at_admit
                budget = held.budgets.warm_s if warm else held.budgets.cold_s
                held.grant.set_exception(
                    Unavailable(
                        f"The model `{held.model}` could not take the request within the "
                        f"{'warm' if warm else 'cold-start'} wait budget of {budget:g} s.",
                        code="wait_budget_exceeded",
                        retry_after_s=retry_after_s(now_s=now, warm=warm, eta_s=held.state.phase.eta_s),
                    )
                )
                continue
            if held.progress is not None and now >= held.next_progress_s:
                held.next_progress_s = now + held.progress_interval_s
                if held.writing is None or held.writing.done():
                    writes.append(held)
            self._schedule(held, self._next_due(held, now))
        if writes:
            await self._write_progress(writes)

    async def _write_progress(self, writes: list[_Held]) -> None:
        if any(not h.state.known for h in writes):
            with contextlib.suppress(RedisError, OSError, ValueError):
                await self.watch.refresh_now()
        positions: list[int | None]
        try:
            positions = await self._positions(writes)
        except (RedisError, OSError) as exc:
            log.warning("queue positions unavailable: %s", exc)
            positions = [None] * len(writes)
        loop = asyncio.get_running_loop()
        for held, position in zip(writes, positions, strict=True):
            if held.grant.done() or held.progress is None:
                continue
            # A task per comment: one slow client must not hold up the others' comments.
            held.writing = loop.create_task(_write_one(held, held.progress, position))

    async def _positions(self, writes: list[_Held]) -> list[int | None]:
        """Tickets ahead of each (None: no longer queued), in one pipelined round trip."""
        keys = self.routing.keys
        async with self.routing.redis.pipeline(transaction=False) as pipe:
            for h in writes:
                pipe.zrank(keys.queue(h.model), h.ticket_id)
            ranks = await pipe.execute()
        return [None if r is None else int(r) for r in ranks]

    async def loop(self) -> None:
        """Run the ticker forever."""
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.tick(self.clock())
            except Exception:
                log.exception("held-request ticker failed")


async def _write_one(held: _Held, progress: Progress, position: int | None) -> None:
    try:
        await progress(position, effective_phase(held.state))
    except Exception as exc:
        # The write failed (the client is gone or the sink broke): the request ends with it.
        if not held.grant.done():
            held.grant.set_exception(exc)


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
