"""What the launcher learnt about a model's starts is kept only while it describes the model.

Load and queue times measured with one engine or one source say nothing about another: a model
first served by the simulator (5 s loads) and then by real vLLM (65 s) would be promised an
answer a minute too early. Each model's stats hash (`Keys.model_stats`) records which engine the
samples were learnt for (`LEARNT_FOR`: a digest of the launcher's engine command and the model's
source, engine arguments and GPUs); when that changes (a registry update, a new engine command),
the samples are dropped and learning starts over.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import orjson
import redis.asyncio as aioredis

from warmpool.events import EventLog
from warmpool.keys import Keys
from warmpool.redisio import text
from warmpool.specs import ModelKind, ModelSpec

LOAD_TIMES = "load_times_s"
QUEUE_WAITS = "queue_waits_s"
START_TIMES = "start_times_s"
LEARNT_FOR = "learnt_for"
LEARNT_FIELDS = (LOAD_TIMES, QUEUE_WAITS, START_TIMES)
"""The stats-hash fields that hold learnt durations (the launcher's `ModelHistory`)."""


def engine_fingerprint(engine_command: Sequence[str], spec: ModelSpec) -> str:
    """A digest of everything that decides how a model's engine starts."""
    what = {
        "command": list(engine_command),
        "source": spec.source,
        "engine_args": spec.engine_args,
        "gpus": [spec.resources.gpus, spec.resources.nodes],
    }
    return hashlib.sha256(orjson.dumps(what, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class LearntTimes:
    """Drops a model's learnt durations when its engine changed; cheap when nothing did."""

    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self.events = EventLog(redis, self.keys)
        self._confirmed: dict[str, tuple[ModelSpec, tuple[str, ...], str]] = {}

    async def forget_changed(
        self, specs: Iterable[ModelSpec], engine_command: Sequence[str], *, now_s: float
    ) -> set[str]:
        """The models whose learnt times were dropped now. Specs seen unchanged since the last call cost nothing.

        A model with samples but no `LEARNT_FOR` (learnt before it was recorded) keeps them and is stamped.
        """
        command = tuple(engine_command)
        todo: dict[str, tuple[ModelSpec, str]] = {}
        for spec in specs:
            if spec.kind is not ModelKind.BASE:
                continue
            seen = self._confirmed.get(spec.name)
            if seen is not None and seen[0] is spec and seen[1] == command:
                continue
            todo[spec.name] = (spec, engine_fingerprint(command, spec))
        if not todo:
            return set()
        names = list(todo)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(self.keys.model_stats(name), LEARNT_FOR)
            stored = [None if raw is None else text(raw) for raw in await pipe.execute()]
        reset: set[str] = set()
        async with self.redis.pipeline(transaction=True) as pipe:
            for name, old in zip(names, stored, strict=True):
                spec, digest = todo[name]
                self._confirmed[name] = (spec, command, digest)
                if old == digest:
                    continue
                if old is not None:
                    pipe.hdel(self.keys.model_stats(name), *LEARNT_FIELDS)
                    pipe.sadd(self.keys.dirty_models, name)
                    reset.add(name)
                pipe.hset(self.keys.model_stats(name), LEARNT_FOR, digest)
            await pipe.execute()
        for name in sorted(reset):
            await self.events.record("model.learnt_reset", now_s=now_s, model=name, why="engine or source changed")
        return reset
