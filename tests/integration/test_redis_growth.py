"""Redis stays bounded: demand and idle-gap history and idle budgets are trimmed, removing a model removes its keys."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from launcher.idle_budgets import IdleBudgets
from launcher.metrics import LauncherMetrics
from launcher.settings import LauncherSettings
from policies import currency
from policies.types import ScalingSpec
from slurmless.settings import RedisSettings, SettingsError, load_settings
from warmpool.idle_budgets import IDLE_BUDGET_MAX_FIELDS, STEP_FIELD_MAX_FLOATS
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import DEMAND_RETENTION_SLOTS, DEMAND_SLOT_S, IDLE_HIST_MAX_MIN, SITE_BUDGET, Keys
from warmpool.models import ModelStore
from warmpool.redisio import awaited, text
from warmpool.routing import Routing
from warmpool.specs import ModelSpec

NOW_S = 1_750_000_000.0
VIEW = ScalingSpec(name="m")
KEYS = Keys()


async def _admit(redis: aioredis.Redis, model: str, rid: str, now_s: float) -> None:
    await Routing(redis).admit(model, "gw-1", rid, now_s=now_s, queue_max=100, global_max=100, signal_demand=False)


async def test_demand_history_is_trimmed_to_its_retention(redis_client: aioredis.Redis) -> None:
    slot = int(NOW_S // DEMAND_SLOT_S)
    old = {str(slot - DEMAND_RETENTION_SLOTS - 1 - i): 1 for i in range(DEMAND_RETENTION_SLOTS + 200)}
    kept = {str(slot - i): 1 for i in range(1, 10)}
    await awaited(redis_client.hset(KEYS.demand("m"), mapping=old | kept))
    await _admit(redis_client, "m", "r1", NOW_S)
    fields = {int(f) for f in await awaited(redis_client.hkeys(KEYS.demand("m")))}
    assert fields == {slot, *(int(s) for s in kept)}
    assert len(fields) <= DEMAND_RETENTION_SLOTS + 144


async def test_idle_gaps_beyond_a_day_share_one_bucket(redis_client: aioredis.Redis) -> None:
    await _admit(redis_client, "m", "r1", NOW_S)
    await _admit(redis_client, "m", "r2", NOW_S + 400 * 86_400)
    await _admit(redis_client, "m", "r3", NOW_S + 800 * 86_400)
    idle = await awaited(redis_client.hgetall(KEYS.idle_hist("m")))
    assert idle == {str(IDLE_HIST_MAX_MIN).encode(): b"2"}


async def test_removing_a_model_removes_its_history(redis_client: aioredis.Redis) -> None:
    store = ModelStore(redis_client)
    await store.put(ModelSpec(name="m", source="/models/m"))
    await _admit(redis_client, "m", "r1", NOW_S)
    await _admit(redis_client, "m", "r2", NOW_S + 120)
    await redis_client.set(KEYS.phase("m"), "{}")
    await awaited(redis_client.hset(KEYS.desired, "m", "{}"))
    assert await redis_client.exists(KEYS.gaps("m"))
    await store.remove("m")
    for key in (KEYS.demand("m"), KEYS.idle_hist("m"), KEYS.gaps("m"), KEYS.model_stats("m"), KEYS.phase("m")):
        assert not await redis_client.exists(key), key
    assert not await awaited(redis_client.hexists(KEYS.desired, "m"))


def test_sentinel_urls_are_refused_with_one_line_and_tls_urls_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURMLESS_REDIS__URL", "redis+sentinel://sentinel:26379/mymaster")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "\n" not in str(refused.value) and "redis.url" in str(refused.value)
    assert "not supported" in str(refused.value)
    assert RedisSettings(url="rediss://redis.example:6380/0").url.startswith("rediss://")
    with pytest.raises(ValueError, match="must start with"):
        RedisSettings(url="http://redis.example/")


async def test_an_idle_budget_keeps_a_bounded_window(redis_client: aioredis.Redis) -> None:
    """Three days of ticks with an instance held idle and gaps recorded all along: the budget's hash holds
    one day of hourly step curves, never more, and no field grows."""
    keys = Keys("growth-ib:")
    settings = LauncherSettings(idle_budget_gpu_hours_per_day=10.0)
    budgets = IdleBudgets(redis_client, keys, settings, LauncherMetrics())
    specs = {"m": ModelSpec(name="m", source="/models/m")}
    held = [InstanceRecord(id="i1", model="m", state=InstanceState.READY)]
    start_s = NOW_S - NOW_S % 3600
    hist = currency.empty_history()
    sizes: list[int] = []
    longest: list[int] = []
    for minute in range(0, 3 * 24 * 60, 10):
        hist = currency.observe(hist, [minute % currency.CELLS], [1.0], [30.0])  # a gap every 10 minutes
        priced = [("m", hist, VIEW)]
        await budgets.rates(specs, held, {"m": {"i1": 0}}, start_s + 60.0 * minute, priced.copy)
        key = keys.idle_budget(SITE_BUDGET)
        sizes.append(int(await awaited(redis_client.hlen(key))))
        fields = [text(f) for f in await awaited(redis_client.hkeys(key))]
        longest.append(max([int(await awaited(redis_client.hstrlen(key, f))) for f in fields]))
    assert max(sizes) <= IDLE_BUDGET_MAX_FIELDS
    assert sizes[-1] == IDLE_BUDGET_MAX_FIELDS  # the bound is reached, not merely respected by a new budget
    assert max(longest) <= STEP_FIELD_MAX_FLOATS * 25  # a repr'd float is at most 24 characters and a space
    assert budgets.states[SITE_BUDGET].steps[-1].curve_s[-1] > 0  # the gaps were priced
