"""What the launcher learns per model: observed cold-start phases, failed starts, accounting holds.

Kept in the model's stats hash (`Keys.model_stats`) next to the gateway's `last_request_s`, so a
restarted or standby launcher knows them too. Only the leader writes here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import orjson
import redis.asyncio as aioredis

from warmpool.keys import Keys
from warmpool.learnt import LOAD_TIMES, QUEUE_WAITS
from warmpool.redisio import awaited, text

SAMPLES_KEPT = 50
FAILURES = "start_failures"
RETRY_AT = "retry_at_s"
BROKEN = "broken_reason"
HOLDS = "limit_holds"
"""Submissions refused in a row by an accounting limit (`MaxSubmitJobs`): they back off, never break."""
HELD = "held_reason"
REFUSED = "refused_reason"
"""Why Slurm refused the model's last submission outright; cleared by the next accepted one."""
LAST_REQUEST = "last_request_s"
LAST_DEMAND = "last_demand_s"
"""When the launcher last got a demand signal for the model (a gateway's first queued ticket)."""
LAST_GRANT = "last_grant_s"
"""When a replica becoming ready last granted requests that had waited for it: they are served from
then on, so the model is active then although no request arrived (the simulator counts a cold
request's activity from the end of its wait, too)."""


def p95(samples: list[float]) -> float | None:
    """The 95th percentile (nearest rank), None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def backoff_delay_s(failures: int, *, base_s: float, max_s: float) -> float:
    """Wait before the next start after `failures` failed starts in a row: base_s, 2x, 4x... at most max_s."""
    if failures <= 0 or base_s <= 0:
        return 0.0
    # The exponent is capped so a long failure streak cannot overflow the float.
    return min(max_s, base_s * 2.0 ** min(failures - 1, 60))


@dataclass(frozen=True, slots=True)
class ModelHistory:
    load_times_s: list[float]
    queue_waits_s: list[float]
    start_failures: int
    retry_at_s: float
    broken_reason: str | None
    last_request_s: float | None
    last_demand_s: float | None = None
    held_reason: str | None = None
    """Why the last submission waits (an accounting limit refused it), until a job is accepted."""
    last_grant_s: float | None = None
    refused_reason: str | None = None
    """Why Slurm refused the last submission outright (not a limit), until a job is accepted."""
    load_p95_s: float | None = field(init=False, default=None)
    """p95 of `load_times_s` (None without samples), computed once: the tick asks for it per model."""
    queue_wait_p95_s: float | None = field(init=False, default=None)
    """p95 of `queue_waits_s`, likewise."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "load_p95_s", p95(self.load_times_s))
        object.__setattr__(self, "queue_wait_p95_s", p95(self.queue_waits_s))

    @classmethod
    def from_fields(cls, f: dict[str, str]) -> ModelHistory:
        """A history from the model's stats hash, decoded."""
        return cls(
            load_times_s=_floats(f.get(LOAD_TIMES)),
            queue_waits_s=_floats(f.get(QUEUE_WAITS)),
            start_failures=int(f.get(FAILURES) or 0),
            retry_at_s=float(f.get(RETRY_AT) or 0.0),
            broken_reason=f.get(BROKEN) or None,
            last_request_s=float(f[LAST_REQUEST]) if f.get(LAST_REQUEST) else None,
            last_demand_s=float(f[LAST_DEMAND]) if f.get(LAST_DEMAND) else None,
            held_reason=f.get(HELD) or None,
            last_grant_s=float(f[LAST_GRANT]) if f.get(LAST_GRANT) else None,
            refused_reason=f.get(REFUSED) or None,
        )

    @property
    def last_activity_s(self) -> float | None:
        """The latest of the last request, the last demand signal and the last grant of waiting requests."""
        seen = [t for t in (self.last_request_s, self.last_demand_s, self.last_grant_s) if t is not None]
        return max(seen) if seen else None

    def may_start(self, now_s: float) -> bool:
        """False while the model is broken or backing off after a failed start."""
        return self.broken_reason is None and now_s >= self.retry_at_s


class HistoryStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def get(self, model: str) -> ModelHistory:
        raw = await awaited(self.redis.hgetall(self.keys.model_stats(model)))
        return ModelHistory.from_fields({text(k): text(v) for k, v in raw.items()})

    async def observe(self, model: str, field: str, value_s: float) -> None:
        """Append one observed phase duration, keeping the newest `SAMPLES_KEPT`."""
        key = self.keys.model_stats(model)
        samples = _floats(text(await awaited(self.redis.hget(key, field))))
        samples = [*samples, round(value_s, 3)][-SAMPLES_KEPT:]
        await self._write(model, {field: orjson.dumps(samples).decode()})

    async def start_failed(
        self, model: str, *, now_s: float, backoff_s: float, max_backoff_s: float, max_failures: int, reason: str
    ) -> int:
        """Count a failed start and set when the next may be tried; mark the model broken past the limit."""
        key = self.keys.model_stats(model)
        failures = int(await awaited(self.redis.hincrby(key, FAILURES, 1)))
        delay_s = backoff_delay_s(failures, base_s=backoff_s, max_s=max_backoff_s)
        mapping: dict[str, str] = {RETRY_AT: repr(now_s + delay_s)}
        if failures >= max_failures:
            mapping[BROKEN] = f"{failures} failed starts in a row, last: {reason}"
        await self._write(model, mapping)
        return failures

    async def limit_held(self, model: str, *, now_s: float, backoff_s: float, max_backoff_s: float, reason: str) -> int:
        """An accounting limit refused a submission: retry later (backing off), never mark the model broken."""
        holds = int(await awaited(self.redis.hincrby(self.keys.model_stats(model), HOLDS, 1)))
        delay_s = backoff_delay_s(holds, base_s=backoff_s, max_s=max_backoff_s)
        await self._write(model, {RETRY_AT: repr(now_s + delay_s), HELD: reason})
        return holds

    async def submission_accepted(self, model: str) -> None:
        """Slurm took a job: an accounting hold or an outright refusal, if any, is over."""
        if await awaited(self.redis.hdel(self.keys.model_stats(model), HOLDS, HELD, REFUSED)):
            await awaited(self.redis.sadd(self.keys.dirty_models, model))

    async def mark_broken(self, model: str, reason: str) -> None:
        """The model cannot start at all (its job cannot be rendered): no retry until an admin resets it."""
        await self._write(model, {BROKEN: reason})

    async def refused(self, model: str, reason: str) -> None:
        """Slurm refused the model's job outright (`reason`); `submission_accepted` clears it."""
        await self._write(model, {REFUSED: reason})

    async def demanded(self, model: str, now_s: float) -> None:
        """A gateway signalled demand for the model (its queue got a first ticket)."""
        await self._write(model, {LAST_DEMAND: repr(now_s)})

    async def granted(self, model: str, now_s: float) -> None:
        """A replica that became ready granted requests that had waited for it."""
        await self._write(model, {LAST_GRANT: repr(now_s)})

    async def start_succeeded(self, model: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.model_stats(model), FAILURES, RETRY_AT, BROKEN, REFUSED)
            pipe.sadd(self.keys.dirty_models, model)
            await pipe.execute()

    async def reset(self, model: str) -> None:
        """An admin's "try again": forget failed starts and the broken mark."""
        await self.start_succeeded(model)

    async def _write(self, model: str, mapping: dict[str, str]) -> None:
        """Set fields of the model's stats and mark it changed for the launcher's next tick, atomically."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.model_stats(model), mapping=mapping)
            pipe.sadd(self.keys.dirty_models, model)
            await pipe.execute()


def _floats(raw: str | None) -> list[float]:
    if not raw:
        return []
    try:
        return [float(x) for x in orjson.loads(raw)]
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return []
