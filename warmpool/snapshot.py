"""Everything the launcher's scaling step reads per model, for many models in few round trips.

With 1,000 registered models, reading a model's stats, ready instances, queue and idle gaps one
command at a time cost ~11 round trips per model per tick (3.5 s a tick); a redis-py pipeline of
the same 5,000 commands still costs ~60 ms of client CPU packing and parsing them. One Lua call
per `CHUNK` models returns them all as nested arrays, parsed by hiredis in C, and Redis is busy for
at most one chunk at a time, so gateways' admits interleave. The queue is looked at only for models
in `Keys.queued_models`.

The keys are built from the prefix in Lua like `warmpool.routing`'s scripts build them; the
layouts are those of `Keys.model_stats`, `Keys.ready`, `Keys.queue`, `Keys.ticket` and
`Keys.idle_hist`, `Keys.warm` and `Keys.gaps`. `SnapshotCache` reads again only the models marked
changed (`Keys.dirty_models`) and a rolling share of the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from policies.types import GapHistory
from warmpool.gaps import gap_history
from warmpool.keys import Keys
from warmpool.redisio import text

REFRESH_TICKS = 12
"""`SnapshotCache` re-reads every model at least once per this many ticks (one minute at `tick_s` 5),
whether or not it was marked changed: a safety net for a change written without its mark."""
CHUNK = 100
"""Models per Lua call: bounds how long one call keeps Redis from serving gateways (~1 ms). The calls
for all chunks go in one pipelined round trip; Redis serves other clients between them."""

# ARGV: prefix, model... Per model: {stats hash, ready zset with scores, queue length, head ticket's
# created_s, idle hash, warm request (nil when none), instances of the batch lines in flight, gap hash}.
_GATHER = """
local prefix = ARGV[1]
local queued = {}
for _, m in ipairs(redis.call('SMEMBERS', prefix .. 'qmodels')) do queued[m] = true end
local out = {}
for i = 2, #ARGV do
  local m = ARGV[i]
  local queue = prefix .. 'q:' .. m
  local depth = 0
  if queued[m] then depth = redis.call('ZCARD', queue) end
  local created = ''
  if depth > 0 then
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    created = redis.call('HGET', prefix .. 't:' .. head, 'created_s') or ''
  end
  out[i - 1] = {
    redis.call('HGETALL', prefix .. 'mstat:' .. m),
    redis.call('ZRANGE', prefix .. 'ready:' .. m, 0, -1, 'WITHSCORES'),
    depth,
    created,
    redis.call('HGETALL', prefix .. 'idle:' .. m),
    redis.call('GET', prefix .. 'warm:' .. m),
    redis.call('HVALS', prefix .. 'bflight:' .. m),
    redis.call('HGETALL', prefix .. 'gaps:' .. m),
  }
end
return out
"""


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    """One model's routing and history state as read in one go."""

    stats: dict[str, str] = field(default_factory=dict)
    """The model's stats hash (`Keys.model_stats`): the launcher's history and the gateways' last request."""
    inflight: dict[str, int] = field(default_factory=dict)
    """Ready (routed) instances and their interactive requests in flight (batch lines left out: batch work
    uses idle capacity and never makes the launcher add or keep an instance)."""
    batch_in_flight: int = 0
    """Batch lines in flight on the model's instances."""
    queue_depth: int = 0
    oldest_created_s: float | None = None
    """When the ticket at the head of the queue was created (None without a queue)."""
    idle_counts: dict[int, int] = field(default_factory=dict)
    """Idle gaps before a request, by whole minutes (`Keys.idle_hist`)."""
    warm: bytes | None = None
    """The model's `slurmless models warm` request as stored (`Keys.warm`), if any."""
    gaps: GapHistory | None = None
    """Idle gaps and their waits (`Keys.gaps`, `warmpool.gaps`); None before the first gap."""

    def oldest_wait_s(self, now_s: float) -> float:
        return max(0.0, now_s - self.oldest_created_s) if self.oldest_created_s is not None else 0.0


class SnapshotReader:
    """Reads snapshots; a model whose state is byte for byte what it was gets the same object again.

    Callers may therefore test `snapshot is previous` to skip work for a model nothing happened to
    (most of 1,000 registered models, most of the time).
    """

    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.keys = keys or Keys()
        self._redis = redis
        self._gather = redis.register_script(_GATHER)
        self._last: dict[str, tuple[list[object], ModelSnapshot]] = {}

    async def read(self, models: Sequence[str]) -> dict[str, ModelSnapshot]:
        """Every model's snapshot, one Lua call per `CHUNK` models."""
        out: dict[str, ModelSnapshot] = {}
        chunks = [list(models[start : start + CHUNK]) for start in range(0, len(models), CHUNK)]
        if not chunks:
            return out
        async with self._redis.pipeline(transaction=False) as pipe:
            for chunk in chunks:
                await self._gather(args=[self.keys.prefix, *chunk], client=pipe)
            replies = await pipe.execute()
        for chunk, rows in zip(chunks, replies, strict=True):
            for model, row in zip(chunk, rows, strict=True):
                seen = self._last.get(model)
                snap = seen[1] if seen is not None and seen[0] == row else _snapshot(row)
                out[model] = snap
                self._last[model] = (row, snap)
        return out

    def forget(self, keep: set[str]) -> None:
        """Drop what is remembered of models not in `keep` (no longer registered)."""
        for model in [m for m in self._last if m not in keep]:
            del self._last[model]

    async def take_changed(self) -> set[str]:
        """The models marked changed (`Keys.dirty_models`) since the last call, clearing the mark."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.smembers(self.keys.dirty_models)
            pipe.delete(self.keys.dirty_models)
            members, _ = await pipe.execute()
        return {text(m) for m in members}


class SnapshotCache:
    """Every model's latest snapshot, re-reading only what may have changed.

    Each `refresh` reads the models marked changed since the last one (gateways and the launcher
    mark a model in the same step that changes its queue, load, demand or history), models never
    read, and the next `1/refresh_ticks` of all models in turn. With 1,000 registered models and a
    handful busy, a tick reads ~100 snapshots instead of 1,000.
    """

    def __init__(self, reader: SnapshotReader, *, refresh_ticks: int = REFRESH_TICKS) -> None:
        self.reader = reader
        self.refresh_ticks = max(1, refresh_ticks)
        self.reads = 0
        """Snapshots read so far (for the benchmark)."""
        self._snaps: dict[str, ModelSnapshot] = {}
        self._cursor = 0
        self.read_since_refresh: set[str] = set()
        """The models read by the last `refresh` and by `reread` since: the only snapshots that may be new
        objects (an unchanged model's snapshot is the very object it was)."""

    async def refresh(self, models: Sequence[str]) -> dict[str, ModelSnapshot]:
        """The snapshot of each of `models` already read, after re-reading those that may have changed.

        While `models` are the models already read (the registry did not change), this costs the
        marked and rolling models only, not a pass over every model, and hands back the cache itself.
        """
        changed = await self.reader.take_changed()
        share = -(-len(models) // self.refresh_ticks)
        start = self._cursor % len(models) if models else 0
        rolling = {*models[start : start + share], *models[: max(0, start + share - len(models))]}
        self._cursor = start + share
        self.read_since_refresh = set()
        if len(self._snaps) == len(models):  # the same models (`forget` keeps only registered ones)
            wanted = sorted({m for m in changed if m in self._snaps} | rolling)
            await self.reread(wanted)
            return self._snaps
        wanted = [m for m in models if m in changed or m in rolling or m not in self._snaps]
        await self.reread(wanted)
        return {m: self._snaps[m] for m in models}

    async def reread(self, models: Sequence[str]) -> dict[str, ModelSnapshot]:
        """Read `models` now (the launcher's own steps changed them)."""
        fresh = await self.reader.read(models)
        self.reads += len(models)
        self._snaps.update(fresh)
        self.read_since_refresh.update(models)
        return fresh

    def forget(self, keep: set[str]) -> None:
        """Drop models no longer registered."""
        self.reader.forget(keep)
        for model in [m for m in self._snaps if m not in keep]:
            del self._snaps[model]


def _pairs(flat: list[bytes]) -> list[tuple[str, str]]:
    return [(text(flat[i]), text(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]


def _snapshot(row: list[object]) -> ModelSnapshot:
    stats_flat, ready_flat, depth, created, idle_flat, *rest = row
    warm = rest[0] if rest else None
    batch_flat = rest[1] if len(rest) > 1 else []
    gaps_flat = rest[2] if len(rest) > 2 and isinstance(rest[2], list) else []
    assert isinstance(stats_flat, list) and isinstance(ready_flat, list) and isinstance(idle_flat, list)
    assert isinstance(batch_flat, list)
    batch: dict[str, int] = {}
    for iid in batch_flat:
        batch[text(iid)] = batch.get(text(iid), 0) + 1
    created_s = text(created)
    return ModelSnapshot(
        stats=dict(_pairs(stats_flat)),
        inflight={iid: max(0, int(float(score)) - batch.get(iid, 0)) for iid, score in _pairs(ready_flat)},
        batch_in_flight=len(batch_flat),
        queue_depth=int(str(depth)),
        oldest_created_s=float(created_s) if created_s else None,
        idle_counts={int(k): int(v) for k, v in _pairs(idle_flat)},
        warm=warm if isinstance(warm, bytes) else None,
        gaps=gap_history(dict(_pairs(gaps_flat))),
    )
