"""The status page's history in real Redis: slots folded from ticks, bounded; the last cold start and its phases."""

from __future__ import annotations

import redis.asyncio as aioredis

from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.redisio import awaited
from warmpool.routing import Routing
from warmpool.snapshot import ModelSnapshot
from warmpool.specs import ModelSpec, Resources
from warmpool.timeline import KEEP_SLOTS, LAST_COLD_START, LAST_COLD_START_AT, SLOT_S, WRITE_EVERY_S, Timeline

T0 = 1_700_000_400.0  # the start of a slot
SPEC = ModelSpec(name="m", source="/models/m", resources=Resources(gpus=2))
QUIET = ModelSpec(name="q", source="/models/q")


def loading(iid: str = "i1") -> InstanceRecord:
    return InstanceRecord(id=iid, model="m", state=InstanceState.LOADING, created_s=T0)


async def test_ticks_fold_into_one_slot_and_quiet_models_write_nothing(redis_client: aioredis.Redis) -> None:
    tl = Timeline(redis_client)
    busy = ModelSnapshot(inflight={"i1": 0, "i2": 3}, queue_depth=4, oldest_created_s=T0 - 30)
    for at in (T0, T0 + 5, T0 + 10):
        await tl.sample(at, [SPEC, QUIET], {"m": busy, "q": ModelSnapshot()}, [loading()], {"m": 3})
    stored = await Timeline(redis_client).series("m", now_s=T0 + 10, span_s=SLOT_S)
    assert stored[-1].sample.ticks == 1, "folded in memory, written every WRITE_EVERY_S"
    await tl.sample(T0 + WRITE_EVERY_S, [SPEC, QUIET], {"m": busy, "q": ModelSnapshot()}, [loading()], {"m": 3})
    points = await Timeline(redis_client).series("m", now_s=T0 + 30, span_s=3 * SLOT_S)
    assert [p.slot_start_s for p in points] == [T0 - 2 * SLOT_S, T0 - SLOT_S, T0]
    sample = points[-1].sample
    assert (sample.ticks, sample.desired_avg, sample.ready_avg, sample.ready_max) == (4, 3.0, 2.0, 2)
    assert (sample.coming_max, sample.queue_max) == (1, 4)
    assert sample.queue_wait_max_s == 60.0
    # One idle instance of 2 GPUs over the 30 s after the first tick.
    assert sample.idle_gpu_s == 2 * 30.0
    assert not await awaited(redis_client.exists(Keys().timeline("q")))
    # The slot's last state is written when the next slot begins, even for a model gone quiet.
    await tl.sample(T0 + 40, [SPEC], {"m": ModelSnapshot()}, [], {})
    await tl.sample(T0 + SLOT_S, [SPEC], {"m": ModelSnapshot()}, [], {})
    last = (await Timeline(redis_client).series("m", now_s=T0 + SLOT_S, span_s=2 * SLOT_S))[0].sample
    assert (last.ticks, last.ready_max) == (5, 2)


async def test_a_launcher_taking_over_mid_slot_adds_to_it_and_old_slots_are_dropped(
    redis_client: aioredis.Redis,
) -> None:
    snap = ModelSnapshot(inflight={"i1": 1})
    stale = str(int(T0 // SLOT_S) - KEEP_SLOTS - 1)
    await awaited(redis_client.hset(Keys().timeline("m"), stale, "{}"))
    await Timeline(redis_client).sample(T0, [SPEC], {"m": snap}, [], {"m": 1})
    await Timeline(redis_client).sample(T0 + 5, [SPEC], {"m": snap}, [], {"m": 1})
    points = await Timeline(redis_client).series("m", now_s=T0 + 5, span_s=SLOT_S)
    assert points[-1].sample.ticks == 2
    assert not await awaited(redis_client.hexists(Keys().timeline("m"), stale))


async def test_cold_start_is_recorded_with_its_phases_and_first_token_once(redis_client: aioredis.Redis) -> None:
    tl = Timeline(redis_client)
    record = loading()
    record.timestamps = {"requested": T0, "job_start": T0 + 30, "starting": T0 + 30, "loading": T0 + 32}
    cold = await tl.cold_start(record, now_s=T0 + 95)
    assert cold is not None
    assert (cold.total_s, cold.slurm_wait_s, cold.load_s) == (95.0, 30.0, 65.0)
    stats = await awaited(redis_client.hgetall(Keys().model_stats("m")))
    assert float(stats[LAST_COLD_START.encode()]) == 95.0
    assert float(stats[LAST_COLD_START_AT.encode()]) == T0 + 95
    assert await tl.first_token("m", now_s=T0 + 95.4)
    assert not await tl.first_token("m", now_s=T0 + 99), "only the first answer after the start counts"
    read = await tl.last_cold_starts(["m", "q"])
    assert read["q"] is None
    assert read["m"] is not None and read["m"].first_token_after_s is not None
    assert abs(read["m"].first_token_after_s - 0.4) < 1e-6
    points = await tl.series("m", now_s=T0 + 100, span_s=SLOT_S)
    assert (points[-1].sample.cold_starts, points[-1].sample.cold_start_s_sum) == (1, 95.0)


async def test_a_second_replica_is_no_cold_start_and_nothing_is_recorded_without_one(
    redis_client: aioredis.Redis,
) -> None:
    tl = Timeline(redis_client)
    assert not await tl.first_token("m", now_s=T0), "no cold start recorded: nothing to attach a first token to"
    assert not await awaited(redis_client.exists(Keys().cold_start("m")))
    await Routing(redis_client).activate("m", "i0", cap=4)
    assert await tl.cold_start(loading("i1"), now_s=T0 + 10) is None
    assert not await awaited(redis_client.hexists(Keys().model_stats("m"), LAST_COLD_START))


async def test_removing_a_model_removes_its_history(redis_client: aioredis.Redis) -> None:
    store = ModelStore(redis_client)
    await store.put(SPEC)
    tl = Timeline(redis_client)
    await tl.sample(T0, [SPEC], {"m": ModelSnapshot(queue_depth=1)}, [], {})
    await tl.cold_start(loading(), now_s=T0 + 1)
    assert await store.remove("m")
    assert not await awaited(redis_client.exists(Keys().timeline("m"), Keys().cold_start("m")))
