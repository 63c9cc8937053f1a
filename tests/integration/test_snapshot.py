"""The launcher's one-round-trip snapshot reads what the per-key readers read, and reuses unchanged ones."""

from __future__ import annotations

import redis.asyncio as aioredis

from launcher.history import HistoryStore, ModelHistory
from warmpool.keys import Keys
from warmpool.learnt import LOAD_TIMES
from warmpool.routing import Routing
from warmpool.snapshot import CHUNK, SnapshotReader
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
