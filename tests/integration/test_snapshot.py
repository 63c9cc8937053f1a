"""The launcher's one-round-trip snapshot reads what the per-key readers read, and reuses unchanged ones."""

from __future__ import annotations

from collections.abc import Awaitable

import redis.asyncio as aioredis

from launcher.desired import PolicyInputs
from launcher.history import HistoryStore, ModelHistory
from warmpool.keys import Keys
from warmpool.learnt import LOAD_TIMES, LearntTimes
from warmpool.routing import Routing
from warmpool.snapshot import CHUNK, SnapshotCache, SnapshotReader
from warmpool.specs import ModelSpec
from warmpool.warm import WarmBoard, WarmRequest

NOW_S = 1_800_000_000.0


async def test_snapshot_matches_the_stores_and_reuses_unchanged_models(redis_client: aioredis.Redis) -> None:
    keys = Keys("snap:")
    routing = Routing(redis_client, keys)
    history = HistoryStore(redis_client, keys)
    # "busy": a ready instance with one request in flight and two queued behind it (cap 1);
    # the gaps between its requests are counted by whole minutes.
    await routing.activate("busy", "i1", cap=1)
    for n, at_s in enumerate((NOW_S - 240, NOW_S - 120, NOW_S - 60)):
        await routing.admit("busy", "gw", f"r{n}", now_s=at_s, queue_max=10, global_max=100)
    await history.observe("busy", LOAD_TIMES, 12.5)
    await WarmBoard(redis_client, keys).request(
        WarmRequest(model="busy", replicas=1, until_s=NOW_S + 600, requested_s=NOW_S, requested_by="t")
    )
    models = ["busy", *(f"cold{i}" for i in range(CHUNK + 5))]  # more than one Lua call
    reader = SnapshotReader(redis_client, keys)

    snaps = await reader.read(models)
    busy = snaps["busy"]
    assert busy.inflight == await routing.inflight("busy") == {"i1": 1}
    assert busy.queue_depth == await routing.queue_depth("busy") == 2
    assert busy.oldest_wait_s(NOW_S) == await routing.oldest_ticket_age_s("busy", now_s=NOW_S) == 120.0
    assert ModelHistory.from_fields(busy.stats) == await history.get("busy")
    assert busy.idle_counts == {2: 1, 1: 1}  # gaps of 120 s and 60 s
    assert busy.warm is not None and WarmRequest.model_validate_json(busy.warm).until_s == NOW_S + 600
    cold = snaps["cold3"]
    assert (cold.inflight, cold.queue_depth, cold.oldest_created_s, cold.idle_counts, cold.warm) == (
        {},
        0,
        None,
        {},
        None,
    )
    assert ModelHistory.from_fields(cold.stats) == await history.get("cold3")

    again = await reader.read(models)
    assert all(again[m] is snaps[m] for m in models)
    await history.observe("cold3", LOAD_TIMES, 3.0)
    third = await reader.read(models)
    assert third["cold3"] is not snaps["cold3"] and third["cold3"].stats[LOAD_TIMES] == "[3.0]"
    assert third["busy"] is snaps["busy"]


async def test_every_step_that_changes_a_snapshot_marks_its_model(redis_client: aioredis.Redis) -> None:
    """Routing, demand, history and warm requests each mark the model they change in `Keys.dirty_models`."""
    keys = Keys("dirty:")
    reader = SnapshotReader(redis_client, keys)
    routing = Routing(redis_client, keys)
    history = HistoryStore(redis_client, keys)
    warm = WarmBoard(redis_client, keys)

    async def marked_by(step: Awaitable[object]) -> set[str]:
        await reader.take_changed()
        await step
        return await reader.take_changed()

    assert await marked_by(routing.activate("a", "i1", cap=1)) == {"a"}
    assert await marked_by(routing.admit("a", "gw", "r1", now_s=NOW_S, queue_max=9, global_max=99)) == {"a"}
    assert await marked_by(routing.admit("a", "gw", "r2", now_s=NOW_S, queue_max=9, global_max=99)) == {"a"}
    assert await marked_by(routing.cancel("a", "gw", "r2")) == {"a"}
    assert await marked_by(routing.release("gw", "r1")) == {"a"}
    assert await marked_by(routing.deactivate("a", "i1")) == {"a"}
    assert await marked_by(routing.admit("b", "gw2", "r3", now_s=NOW_S, queue_max=9, global_max=99)) == {"b"}
    await redis_client.zadd(keys.gateways, {"gw2": NOW_S - 1})
    assert await marked_by(routing.reap(now_s=NOW_S)) == {"b"}
    assert await marked_by(history.observe("c", LOAD_TIMES, 1.0)) == {"c"}
    assert await marked_by(history.demanded("d", NOW_S)) == {"d"}
    assert await marked_by(history.mark_broken("e", "invalid job")) == {"e"}
    assert await marked_by(history.reset("e")) == {"e"}
    request = WarmRequest(model="f", replicas=1, until_s=NOW_S + 60, requested_s=NOW_S, requested_by="t")
    assert await marked_by(warm.request(request)) == {"f"}
    assert await marked_by(warm.cancel("f")) == {"f"}
    # The launcher's own writes of what the policies read: the cold start waits are priced with, the grant
    # of waiting requests (activity), learnt durations dropped when a model's engine changed.
    inputs = PolicyInputs(redis_client, keys)
    assert await marked_by(inputs.record_gap_cold({"g": 150.0, "h": 90.0})) == {"g", "h"}
    assert await marked_by(inputs.record_gap_cold({"g": 151.0})) == set()  # unchanged within tolerance: no write
    assert await marked_by(history.granted("i", NOW_S)) == {"i"}
    learnt = LearntTimes(redis_client, keys)
    spec = ModelSpec(name="j", source="/models/j")
    await learnt.forget_changed([spec], ["vllm"], now_s=NOW_S)
    await history.observe("j", LOAD_TIMES, 1.0)
    assert await marked_by(learnt.forget_changed([spec], ["other-engine"], now_s=NOW_S)) == {"j"}
    # Reading what did not change marks nothing.
    assert await marked_by(reader.read(["a", "b"])) == set()


async def test_a_new_cold_start_price_reaches_the_next_tick(redis_client: aioredis.Redis) -> None:
    """The cache re-reads a model whose `gap_cold_s` the launcher rewrote, not only at its rolling turn."""
    keys = Keys("gcold:")
    models = [f"m{i:02d}" for i in range(40)]
    cache = SnapshotCache(SnapshotReader(redis_client, keys), refresh_ticks=40)
    await cache.refresh(models)
    await PolicyInputs(redis_client, keys).record_gap_cold({"m39": 222.0})
    snaps = await cache.refresh(models)
    assert snaps["m39"].stats.get("gap_cold_s") == "222.0"


async def test_the_cache_rereads_marked_models_and_a_rolling_share(redis_client: aioredis.Redis) -> None:
    keys = Keys("roll:")
    models = [f"m{i:02d}" for i in range(40)]
    cache = SnapshotCache(SnapshotReader(redis_client, keys), refresh_ticks=4)
    first = await cache.refresh(models)
    assert cache.reads == 40  # first sight: everything
    routing = Routing(redis_client, keys)
    await routing.admit("m33", "gw", "r1", now_s=NOW_S, queue_max=9, global_max=99)
    second = await cache.refresh(models)
    # A quarter of the models in turn, and the one a gateway changed, read at once wherever the turn is.
    assert cache.reads == 40 + 10 + 1
    assert second["m33"].queue_depth == 1 and second["m33"] is not first["m33"]
    assert all(second[m] is first[m] for m in models if m != "m33")
    for _ in range(3):
        await cache.refresh(models)
    assert cache.reads == 40 + 11 + 30  # every model re-read within `refresh_ticks` refreshes
