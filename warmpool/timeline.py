"""What the status page plots and shows per model: a bounded history, and the last cold start.

The timeline (`Keys.timeline`) holds one `SlotSample` per demand slot (`DEMAND_SLOT_S`, 10 min)
for `KEEP_SLOTS` slots (8 days), folded by the leading launcher from each tick for the models
that hold or want instances or have requests waiting (a cold model writes nothing) and written
every `WRITE_EVERY_S` and when a slot ends. Demand itself
is the gateways' per-slot request count (`Keys.demand`), read beside it.

The last cold start (`Keys.cold_start`) keeps when each phase began: the launcher writes it
when an instance becomes ready while none of its model was, and the gateway that streams the
first answer after it adds `first_token_s` (once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace

import orjson
import redis.asyncio as aioredis

from warmpool.instances import COMING_STATES, InstanceRecord
from warmpool.keys import DEMAND_SLOT_S, Keys
from warmpool.redisio import awaited, text
from warmpool.snapshot import ModelSnapshot
from warmpool.specs import ModelKind, ModelSpec

SLOT_S = DEMAND_SLOT_S
KEEP_SLOTS = 8 * 86_400 // SLOT_S
"""Slots kept per model (8 days): the page plots the last 7 days."""
WRITE_EVERY_S = 30.0
"""How stale the current slot in Redis may be: the launcher folds ticks in memory and writes this often."""
MAX_GAP_S = 60.0
"""Longest interval between two samples counted as idle time (a launcher that was away counts no more)."""

LAST_COLD_START = "last_cold_start_s"
"""In the model's stats hash: how long its last cold start took, requested -> ready."""
LAST_COLD_START_AT = "last_cold_start_at_s"
"""In the model's stats hash: when its last cold start ended (the instance became ready)."""

# Set `first_token_s` once, and only on a cold start the launcher recorded (KEYS[1]: the cold-start hash).
_FIRST_TOKEN = """
if redis.call('HEXISTS', KEYS[1], 'ready_s') == 1 then
  return redis.call('HSETNX', KEYS[1], 'first_token_s', ARGV[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class SlotSample:
    """One model over one slot: sums over the launcher's ticks (averages are sum / ticks)."""

    ticks: int = 0
    desired_sum: float = 0.0
    ready_sum: float = 0.0
    ready_max: int = 0
    coming_max: int = 0
    queue_max: int = 0
    queue_wait_max_s: float = 0.0
    """The longest a waiting request had waited at any tick of the slot."""
    idle_gpu_s: float = 0.0
    """GPU-seconds of ready instances serving nothing."""
    cold_starts: int = 0
    cold_start_s_sum: float = 0.0

    @property
    def desired_avg(self) -> float:
        return self.desired_sum / self.ticks if self.ticks else 0.0

    @property
    def ready_avg(self) -> float:
        return self.ready_sum / self.ticks if self.ticks else 0.0


_SAMPLE_FIELDS = frozenset(f.name for f in fields(SlotSample))


@dataclass(frozen=True, slots=True)
class Observation:
    """One model at one tick."""

    desired: int
    ready: int
    coming: int
    idle_gpus: int
    queue_depth: int
    queue_wait_s: float

    @property
    def active(self) -> bool:
        return bool(self.desired or self.ready or self.coming or self.queue_depth)


def fold(sample: SlotSample, obs: Observation, *, gap_s: float) -> SlotSample:
    """`sample` with one more tick observed `gap_s` after the previous one."""
    return SlotSample(
        ticks=sample.ticks + 1,
        desired_sum=sample.desired_sum + obs.desired,
        ready_sum=sample.ready_sum + obs.ready,
        ready_max=max(sample.ready_max, obs.ready),
        coming_max=max(sample.coming_max, obs.coming),
        queue_max=max(sample.queue_max, obs.queue_depth),
        queue_wait_max_s=max(sample.queue_wait_max_s, round(obs.queue_wait_s, 3)),
        idle_gpu_s=sample.idle_gpu_s + obs.idle_gpus * min(max(gap_s, 0.0), MAX_GAP_S),
        cold_starts=sample.cold_starts,
        cold_start_s_sum=sample.cold_start_s_sum,
    )


def observe(
    spec: ModelSpec, snap: ModelSnapshot | None, records: list[InstanceRecord], desired: int, now_s: float
) -> Observation:
    """One base model's observation from what the launcher's tick read."""
    ready = list(snap.inflight.items()) if snap is not None else []
    gpus = spec.resources.gpus * spec.resources.nodes
    return Observation(
        desired=desired,
        ready=len(ready),
        coming=sum(1 for r in records if r.state in COMING_STATES),
        idle_gpus=gpus * sum(1 for _, inflight in ready if inflight <= 0),
        queue_depth=snap.queue_depth if snap is not None else 0,
        queue_wait_s=snap.oldest_wait_s(now_s) if snap is not None else 0.0,
    )


@dataclass(frozen=True, slots=True)
class ColdStart:
    """A model's last cold start: when each phase began (epoch seconds)."""

    instance: str
    requested_s: float
    ready_s: float
    job_start_s: float | None = None
    loading_s: float | None = None
    first_token_s: float | None = None

    @property
    def total_s(self) -> float:
        return self.ready_s - self.requested_s

    @property
    def slurm_wait_s(self) -> float | None:
        """Submission to the job running (Slurm's queue)."""
        return None if self.job_start_s is None else max(0.0, self.job_start_s - self.requested_s)

    @property
    def load_s(self) -> float:
        """The job running to the engine answering health checks (start-up and weights)."""
        start = self.job_start_s if self.job_start_s is not None else self.requested_s
        return max(0.0, self.ready_s - start)

    @property
    def first_token_after_s(self) -> float | None:
        """Ready to the first byte streamed to a client that waited for this start."""
        return None if self.first_token_s is None else max(0.0, self.first_token_s - self.ready_s)

    @classmethod
    def from_fields(cls, f: Mapping[str, str]) -> ColdStart | None:
        try:
            return cls(
                instance=f["instance"],
                requested_s=float(f["requested_s"]),
                ready_s=float(f["ready_s"]),
                job_start_s=_opt_float(f.get("job_start_s")),
                loading_s=_opt_float(f.get("loading_s")),
                first_token_s=_opt_float(f.get("first_token_s")),
            )
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    slot_start_s: float
    sample: SlotSample
    requests: int
    """Requests that arrived in the slot (the gateways' demand count)."""


class Timeline:
    """The launcher's writer (`sample`, `cold_start`), the gateway's `first_token`, and the page's readers."""

    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self._open: dict[str, tuple[int, SlotSample]] = {}
        self._last_s: float | None = None
        self._written_s: dict[str, float] = {}
        self._first_token = redis.register_script(_FIRST_TOKEN)

    # --- writers ------------------------------------------------------------------------------

    async def sample(
        self,
        now_s: float,
        specs: Iterable[ModelSpec],
        snaps: Mapping[str, ModelSnapshot],
        records: Iterable[InstanceRecord],
        desired: Mapping[str, int],
    ) -> None:
        """Fold one tick into every active base model's current slot; write a slot when it ends and every
        `WRITE_EVERY_S` meanwhile (one round trip, and none for a tick with nothing due)."""
        gap_s = 0.0 if self._last_s is None else now_s - self._last_s
        self._last_s = now_s
        by_model: dict[str, list[InstanceRecord]] = {}
        for record in records:
            by_model.setdefault(record.model, []).append(record)
        slot = int(now_s // SLOT_S)
        due: dict[tuple[str, int], SlotSample] = {}
        observed: dict[str, Observation] = {}
        # Every registered model, but a quiet one with no slot open is skipped after a few lookups (the
        # launcher hands over all specs; the timeline keeps no registry of its own).
        for spec in specs:
            if spec.kind is not ModelKind.BASE:
                continue
            snap = snaps.get(spec.name)
            if (
                spec.name not in self._open
                and not desired.get(spec.name)
                and spec.name not in by_model
                and (snap is None or not (snap.inflight or snap.queue_depth))
            ):
                # Quiet and no slot open: `observe` would find it inactive (most models, most ticks).
                continue
            obs = observe(spec, snap, by_model.get(spec.name, []), desired.get(spec.name, 0), now_s)
            opened = self._open.get(spec.name)
            if opened is not None and opened[0] != slot:
                due[(spec.name, opened[0])] = opened[1]  # the slot ended: its last state
                if not obs.active:
                    del self._open[spec.name]
                    continue
            if obs.active or (opened is not None and opened[0] == slot):
                # A model that went quiet is sampled to the end of its slot (its averages count the quiet ticks).
                observed[spec.name] = obs
        fresh = [m for m in observed if self._open.get(m, (None,))[0] != slot]
        await self._seed(fresh, slot)
        for model, obs in observed.items():
            self._open[model] = (slot, fold(self._open[model][1], obs, gap_s=gap_s))
            if model in fresh or now_s - self._written_s.get(model, float("-inf")) >= WRITE_EVERY_S:
                due[(model, slot)] = self._open[model][1]
                self._written_s[model] = now_s
        if due:
            async with self.redis.pipeline(transaction=False) as pipe:
                for (model, at), sample in due.items():
                    pipe.hset(self.keys.timeline(model), str(at), orjson.dumps(sample).decode())
                await pipe.execute()

    async def cold_start(self, record: InstanceRecord, *, now_s: float) -> ColdStart | None:
        """Call when `record` becomes ready, before it is routed to: recorded if no instance of its model was ready.

        Writes the phases (`Keys.cold_start`), the duration and time into the model's stats hash
        (`slurmless status`), and one more cold start into the timeline's current slot.
        """
        if int(await awaited(self.redis.zcard(self.keys.ready(record.model)))) > 0:
            return None
        ts = record.timestamps
        cold = ColdStart(
            instance=record.id,
            requested_s=record.created_s or ts.get("requested", now_s),
            ready_s=now_s,
            job_start_s=ts.get("job_start", ts.get("starting")),
            loading_s=ts.get("loading"),
        )
        phases = {"instance": cold.instance, "requested_s": repr(cold.requested_s), "ready_s": repr(cold.ready_s)}
        for name in ("job_start_s", "loading_s"):
            value = getattr(cold, name)
            if value is not None:
                phases[name] = repr(value)
        slot = int(now_s // SLOT_S)
        await self._seed([record.model] if self._open.get(record.model, (None,))[0] != slot else [], slot)
        old = self._open[record.model][1]
        self._open[record.model] = (
            slot,
            replace(old, cold_starts=old.cold_starts + 1, cold_start_s_sum=old.cold_start_s_sum + cold.total_s),
        )
        key = self.keys.cold_start(record.model)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=phases)
            pipe.hset(
                self.keys.model_stats(record.model),
                mapping={LAST_COLD_START: repr(round(cold.total_s, 3)), LAST_COLD_START_AT: repr(now_s)},
            )
            pipe.hset(self.keys.timeline(record.model), str(slot), orjson.dumps(self._open[record.model][1]).decode())
            await pipe.execute()
        return cold

    async def first_token(self, model: str, *, now_s: float) -> bool:
        """The first byte after a cold start went to a client: kept once per recorded cold start."""
        return bool(await self._first_token(keys=[self.keys.cold_start(model)], args=[repr(now_s)]))

    async def _seed(self, models: list[str], slot: int) -> None:
        """Start each model's slot from what is stored (a launcher that took over mid-slot adds to it)."""
        if not models:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.hget(self.keys.timeline(model), str(slot))
            raws = await pipe.execute()
        for model, raw in zip(models, raws, strict=True):
            self._open[model] = (slot, _sample(raw) or SlotSample())
        await self._prune(models, slot)

    async def _prune(self, models: list[str], slot: int) -> None:
        """Drop slots older than `KEEP_SLOTS` (run when a model's slot rolls over, so rarely)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.hkeys(self.keys.timeline(model))
            fields = await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            for model, names in zip(models, fields, strict=True):
                old = [text(n) for n in names if _int(text(n)) <= slot - KEEP_SLOTS]
                if old:
                    pipe.hdel(self.keys.timeline(model), *old)
            await pipe.execute()

    # --- readers ------------------------------------------------------------------------------

    async def series(self, model: str, *, now_s: float, span_s: float) -> list[SeriesPoint]:
        """Every slot of the last `span_s` (the current one included), oldest first; quiet slots are zeros."""
        last = int(now_s // SLOT_S)
        slots = list(range(last - max(1, int(span_s // SLOT_S)) + 1, last + 1))
        names = [str(s) for s in slots]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.timeline(model), names)
            pipe.hmget(self.keys.demand(model), names)
            samples, demand = await pipe.execute()
        return [
            SeriesPoint(slot * SLOT_S, _sample(raw) or SlotSample(), _int(text(req)) if req is not None else 0)
            for slot, raw, req in zip(slots, samples, demand, strict=True)
        ]

    async def last_cold_starts(self, models: list[str]) -> dict[str, ColdStart | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.hgetall(self.keys.cold_start(model))
            raws = await pipe.execute()
        return {
            m: ColdStart.from_fields({text(k): text(v) for k, v in raw.items()})
            for m, raw in zip(models, raws, strict=True)
        }

    async def forget(self, model: str) -> None:
        """A model was removed: its history goes with it."""
        self._open.pop(model, None)
        await awaited(self.redis.delete(self.keys.timeline(model), self.keys.cold_start(model)))


def _sample(raw: object) -> SlotSample | None:
    if not isinstance(raw, (bytes, str)):
        return None
    try:
        data = orjson.loads(raw)
        return SlotSample(**{k: v for k, v in data.items() if k in _SAMPLE_FIELDS})
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return None


def _int(value: str) -> int:
    try:
        return int(float(value))
    except ValueError:
        return 0


def _opt_float(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None
