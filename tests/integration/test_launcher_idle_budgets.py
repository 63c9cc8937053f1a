"""Idle GPU-hour budgets in the launcher: one rate per budget, moved hourly so spending tracks it.

Real launcher tick, real Redis, `FakeSlurm` on a fake clock. Two models are held idle for hours by their
`min_replicas` and get a request every 20 minutes (gaps the gateway records); one belongs to a tenant with
a small idle budget, the other is priced by the site's generous one. At each whole hour each budget's rate
is chosen again from the step curves of its own models' gaps (`policies.idle_budget`) and moves its own
way; each model's decision is priced at its budget's rate; the state the admin status and Prometheus show
is in Redis (bounded) and in the launcher's metrics, and a standby launcher carries on with it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis.asyncio as aioredis

from launcher.controller import Launcher
from launcher.settings import LauncherSettings
from policies.currency import DEFAULT_RATE
from policies.idle_budget import RATES, BudgetState
from slurmless.localredis import LocalRedis
from testing.fakecluster import FakeCluster
from warmpool.idle_budgets import IDLE_BUDGET_MAX_FIELDS, decode, read_views
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceState
from warmpool.keys import SITE_BUDGET, Keys
from warmpool.models import ModelStore
from warmpool.redisio import awaited, text
from warmpool.routing import AdmitOutcome, Routing
from warmpool.specs import ModelSpec, Policy, Resources
from warmpool.tenants import TenantSpec, TenantStore

T0 = 1_800_000_000.0 - 1_800_000_000.0 % 3600
TICK_S = 30.0
REQUEST_EVERY_S = 1200.0


def spec(name: str, owner: str | None) -> ModelSpec:
    return ModelSpec(
        name=name,
        source=f"org/{name}",
        owner_tenant=owner,
        resources=Resources(gpus=2, cpus=1, mem_mb=256, time_limit_min=60 * 24),
        policy=Policy.model_validate({"min_replicas": 1, "max_replicas": 1}),
    )


@pytest.fixture
async def client(redis_server: LocalRedis) -> AsyncIterator[aioredis.Redis]:
    redis: aioredis.Redis = aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
    yield redis
    await redis.aclose()


async def stored_state(client: aioredis.Redis, keys: Keys, name: str) -> BudgetState:
    raw = await awaited(client.hgetall(keys.idle_budget(name)))
    got = decode({text(k): text(v) for k, v in raw.items()})
    assert got is not None
    return got[0]


def gauge(text: str, name: str, budget: str) -> float:
    found = re.search(rf'^{name}{{budget="{budget}"}} (\S+)$', text, re.MULTILINE)
    assert found is not None, (name, budget)
    return float(found.group(1))


async def test_each_budget_moves_its_own_rate_and_prices_its_models(client: aioredis.Redis) -> None:
    keys = Keys("ibud:")
    settings = LauncherSettings(job_name_prefix="ib-", idle_budget_gpu_hours_per_day=1000.0)
    await TenantStore(client, keys).create(TenantSpec(name="lab", idle_gpu_hours_per_day=0.5))
    await TenantStore(client, keys).create(TenantSpec(name="other"))  # no budget of its own: the site's
    models = ModelStore(client, keys)
    await models.put(spec("lab-model", "lab"))
    await models.put(spec("other-model", "other"))
    cluster = FakeCluster(now_s=T0, job_name_prefix="ib-")
    launcher = Launcher(
        client, cluster.slurm, settings, callback_url="http://127.0.0.1:9", keys=keys, prober=cluster.prober()
    )
    store = InstanceStore(client, keys)
    try:
        await launcher.tick(now_s=T0)  # min_replicas: both submitted
        cluster.clock(T0 + 10)
        for record in await store.all():
            assert record.job_id is not None
            await cluster.start(launcher, record.id, int(record.job_id), record.model, ready_at_s=T0 + 20)
        cluster.clock(T0 + 25)
        await launcher.tick(now_s=T0 + 25)
        routing = Routing(client, keys)
        now_s = T0 + 25
        while now_s < T0 + 2.5 * 3600:
            if (now_s - T0 - 25) % REQUEST_EVERY_S < TICK_S:  # the keep-alive prices its hold after each
                for model in ("lab-model", "other-model"):
                    rid = f"r-{model}-{now_s:.0f}"
                    got = await routing.admit(model, "gw", rid, now_s=now_s + 1, queue_max=10, global_max=100)
                    assert got.outcome is AdmitOutcome.SLOT
                    await routing.release("gw", rid)
            now_s += TICK_S
            cluster.clock(now_s)
            await launcher.tick(now_s=now_s)
        assert {r.model for r in await store.all() if r.state is InstanceState.READY} == {"lab-model", "other-model"}

        # Two GPUs idle for 2.5 hours: 5 GPU-h against 0.5 a day (overspent, idle is dearer: the rate fell
        # to the grid's floor) and against 1000 a day (underspent: the rate rose to its top). Two hourly
        # steps each, each pricing the gaps of its hour.
        views = {v.budget: v for v in await read_views(client, keys, [SITE_BUDGET, "lab", "other"], now_s)}
        assert set(views) == {SITE_BUDGET, "lab"}
        lab, site = views["lab"], views[SITE_BUDGET]
        assert lab.rate < DEFAULT_RATE * 0.9 < DEFAULT_RATE * 1.1 < site.rate
        assert lab.idle_gpu_h_last_day == pytest.approx(5.0, rel=0.05)
        assert site.idle_gpu_h_last_day == pytest.approx(5.0, rel=0.05)
        assert (lab.budget_gpu_h_per_day, site.budget_gpu_h_per_day) == (0.5, 1000.0)
        assert lab.rate == float(RATES[0]) and site.rate == float(RATES[-1])
        stored = {name: await stored_state(client, keys, name) for name in (SITE_BUDGET, "lab")}
        for name, state in stored.items():
            assert await awaited(client.hlen(keys.idle_budget(name))) <= IDLE_BUDGET_MAX_FIELDS
            assert [s.end_s // 3600 for s in state.steps] == [T0 // 3600 + 1, T0 // 3600 + 2]  # whole hours
            assert all(s.end_s % 3600 <= TICK_S for s in state.steps)  # at the first tick of each
            first, second = (np.asarray(s.curve_s) for s in state.steps)
            # The gaps of each hour since the launcher started: two in the first, three in the second.
            assert 0 < first[-1] < second[-1]
            # Three 20-minute gaps of its one model, held longer as idle gets cheaper: each budget prices
            # its own model's gaps only (two models would double it).
            assert 0 < second[0] <= second[-1] <= 3 * (1200 + 60)
            # The residual: the hour's idle measured beyond its gaps' cost at the rate in force (chosen at
            # the first step: the floor for lab, the top for the site).
            in_force = second[0] if name == "lab" else second[-1]
            hour = state.steps[1]
            assert hour.idle_s == pytest.approx(2 * 3600.0, rel=0.02)
            assert hour.residual_s == pytest.approx(hour.idle_s - in_force)

        # Each model's decision is priced at its own budget's rate.
        for model, rate in (("lab-model", lab.rate), ("other-model", site.rate)):
            decision = launcher.act.board.last(model)
            assert f"rate {rate:g}," in decision.explain(), decision.explain()

        text = launcher.metrics.render().decode()
        assert gauge(text, "slurmless_launcher_exchange_rate", "lab") == pytest.approx(lab.rate)
        assert gauge(text, "slurmless_launcher_exchange_rate", SITE_BUDGET) == pytest.approx(site.rate)
        assert gauge(text, "slurmless_launcher_idle_gpu_hours", "lab") == pytest.approx(5.0, rel=0.05)
        assert gauge(text, "slurmless_launcher_idle_budget_gpu_hours", "lab") == 0.5

        # A standby launcher that takes over carries on with the stored rates.
        successor = Launcher(client, cluster.slurm, settings, callback_url="http://127.0.0.1:9", keys=keys)
        try:
            cluster.clock(now_s + TICK_S)
            await successor.tick(now_s=now_s + TICK_S)
            carried = successor.idle_budgets.states["lab"]
            assert carried.rate == pytest.approx(lab.rate)
            assert carried.steps == stored["lab"].steps
        finally:
            await successor.aclose()
    finally:
        await launcher.aclose()
