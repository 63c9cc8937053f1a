"""A model's learnt start times are dropped when its engine, source or engine arguments change (real Redis)."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from warmpool.events import EventLog
from warmpool.keys import Keys
from warmpool.learnt import LEARNT_FOR, LOAD_TIMES, QUEUE_WAITS, LearntTimes
from warmpool.models import ModelStore
from warmpool.redisio import awaited
from warmpool.specs import ModelSpec

SIM = ["python3", "-m", "enginesim"]
VLLM = ["python3", "-m", "vllm.entrypoints.openai.api_server"]


async def _learn(redis: aioredis.Redis, model: str) -> None:
    await awaited(redis.hset(Keys().model_stats(model), mapping={LOAD_TIMES: "[5.0, 5.1]", QUEUE_WAITS: "[1.0]"}))


async def _loads(redis: aioredis.Redis, model: str) -> list[float]:
    raw = await awaited(redis.hget(Keys().model_stats(model), LOAD_TIMES))
    return [] if raw is None else list(orjson.loads(raw))


async def test_samples_survive_while_nothing_changes_and_go_when_the_source_does(redis_client: aioredis.Redis) -> None:
    store, learnt = ModelStore(redis_client), LearntTimes(redis_client)
    await store.put(ModelSpec(name="m", source="/models/a"))
    await _learn(redis_client, "m")
    # Samples from before the engine was recorded are kept, and stamped.
    assert await learnt.forget_changed(await store.all(), SIM, now_s=1.0) == set()
    assert await _loads(redis_client, "m") == [5.0, 5.1]
    assert await awaited(redis_client.hget(Keys().model_stats("m"), LEARNT_FOR)) is not None
    assert await learnt.forget_changed(await store.all(), SIM, now_s=2.0) == set()

    await store.put(ModelSpec(name="m", source="/models/b"), replace=True)
    assert await learnt.forget_changed(await store.all(), SIM, now_s=3.0) == {"m"}
    assert await _loads(redis_client, "m") == []
    assert await awaited(redis_client.hget(Keys().model_stats("m"), QUEUE_WAITS)) is None
    events = await EventLog(redis_client).recent(kind="model.learnt_reset")
    assert [(e.model, e.at_s) for e in events] == [("m", 3.0)]


async def test_engine_arguments_and_engine_command_count_the_rest_does_not(redis_client: aioredis.Redis) -> None:
    store = ModelStore(redis_client)
    await store.put(ModelSpec(name="m", source="/models/a"))
    await LearntTimes(redis_client).forget_changed(await store.all(), SIM, now_s=1.0)

    await _learn(redis_client, "m")
    await store.put(ModelSpec(name="m", source="/models/a", aliases=["friendly"]), replace=True)
    # A fresh process (a restarted launcher) compares against what Redis says, not its memory.
    assert await LearntTimes(redis_client).forget_changed(await store.all(), SIM, now_s=2.0) == set()
    assert await _loads(redis_client, "m") == [5.0, 5.1]

    await store.put(ModelSpec(name="m", source="/models/a", engine_args={"--max-model-len": 4096}), replace=True)
    assert await LearntTimes(redis_client).forget_changed(await store.all(), SIM, now_s=3.0) == {"m"}

    await _learn(redis_client, "m")
    assert await LearntTimes(redis_client).forget_changed(await store.all(), VLLM, now_s=4.0) == {"m"}
    assert await _loads(redis_client, "m") == []
