"""The GPU budget evicts in the currency: the replica whose release causes least waiting per GPU gives way.

Real launcher tick, real Redis, `FakeSlurm` (the fake clock decides when jobs start). Two models are warm
and held (an operator's keep-alive minimum keeps both); their learnt gaps differ: one's requests come in
bursts minutes apart, the other's hours apart. A third model wakes with the two GPUs of the budget taken:
the sparse model gives way, though it sorts first by name and both saw the same demand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from launcher.controller import Launcher
from launcher.settings import LauncherSettings
from policies import currency
from policies.types import GapHistory
from slurmless.localredis import LocalRedis
from testing.fakecluster import FakeCluster
from warmpool.gaps import gap_fields
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.redisio import awaited
from warmpool.routing import AdmitOutcome, Routing
from warmpool.specs import ModelSpec, Policy, Resources

S = InstanceState
MONDAY_S = 2_800 * 7 * 86_400.0 + 4 * 86_400.0 + 10 * 3600.0
"""A Monday, 10:00 UTC."""


def history(gaps_s: list[float], wait_per_gap_s: float) -> GapHistory:
    cells = [currency.cell(MONDAY_S - 3600.0, g) for g in gaps_s]
    return currency.observe(currency.empty_history(), cells, [1.0] * len(cells), [wait_per_gap_s] * len(cells))


def spec(name: str, keepalive_min_s: float | None = None) -> ModelSpec:
    return ModelSpec(
        name=name,
        source=f"org/{name}",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=600),
        policy=Policy.model_validate({"max_replicas": 1, "keepalive_min_s": keepalive_min_s}),
    )


@pytest.fixture
async def client(redis_server: LocalRedis) -> AsyncIterator[aioredis.Redis]:
    redis: aioredis.Redis = aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
    yield redis
    await redis.aclose()


async def test_the_budget_evicts_the_replica_whose_release_costs_least_waiting(client: aioredis.Redis) -> None:
    keys = Keys("evict:")
    settings = LauncherSettings(
        job_name_prefix="ev-", gpu_budget=2, default_queue_wait_s=45.0, default_load_s=110.0, pending_cancel_grace_s=5.0
    )
    cluster = FakeCluster(now_s=MONDAY_S, job_name_prefix="ev-")
    launcher = Launcher(
        client, cluster.slurm, settings, callback_url="http://127.0.0.1:9", keys=keys, prober=cluster.prober()
    )
    models = ModelStore(client, keys)
    for name in ("a-sparse", "b-bursty"):
        await models.put(spec(name, keepalive_min_s=1800.0))
    await models.put(spec("c-new"))
    await awaited(
        client.hset(keys.gaps("a-sparse"), mapping=gap_fields(history([6 * 3600.0, 20 * 3600.0] * 20, 150.0)))
    )
    await awaited(client.hset(keys.gaps("b-bursty"), mapping=gap_fields(history([90.0, 150.0, 240.0] * 20, 400.0))))
    routing = Routing(client, keys)
    store = InstanceStore(client, keys)
    try:
        await launcher.tick(now_s=MONDAY_S)

        async def request(model: str, rid: str, at_s: float) -> None:
            cluster.clock(at_s)
            got = await routing.admit(model, "gw", rid, now_s=at_s, queue_max=10, global_max=100)
            assert got.outcome is AdmitOutcome.QUEUED
            assert await launcher.on_demand(model, now_s=at_s) is not None

        # The two models wake, become ready and serve their one request each.
        await request("a-sparse", "r1", MONDAY_S + 1)
        await request("b-bursty", "r2", MONDAY_S + 1)
        cluster.clock(MONDAY_S + 10)
        for record in await store.all():
            assert record.job_id is not None
            await cluster.start(launcher, record.id, int(record.job_id), record.model, ready_at_s=MONDAY_S + 60)
        cluster.clock(MONDAY_S + 60)
        await launcher.tick(now_s=MONDAY_S + 60)
        for rid, model in (("r1", "a-sparse"), ("r2", "b-bursty")):
            assert await routing.cancel(model, "gw", rid) == "released"
        cluster.clock(MONDAY_S + 120)
        await launcher.tick(now_s=MONDAY_S + 120)
        assert sorted(r.model for r in await store.all() if r.state is S.READY) == ["a-sparse", "b-bursty"]

        # A third model wakes: the budget's two GPUs are taken, and the cheaper release gives way.
        await request("c-new", "r3", MONDAY_S + 300)
        cluster.clock(MONDAY_S + 301)
        report = await launcher.tick(now_s=MONDAY_S + 301)
        states = {r.model: r.state for r in await store.all()}
        assert states == {"a-sparse": S.DRAINING, "b-bursty": S.READY, "c-new": S.PENDING}
        assert report.desired == {"a-sparse": 0, "b-bursty": 1, "c-new": 1}
        cut = launcher.act.board.last("a-sparse")
        assert [r.policy for r in cut.reasons if r.policy == "budget"] == ["budget"]
        assert "user-s of waiting per GPU" in cut.explain()
    finally:
        await launcher.aclose()
