"""A spec Slurm refuses cannot flood slurmctld: per-model backoff, and a cap across models.

The launcher ticks on a synthetic clock against `FakeSlurm` (whose `sbatch` refuses every job the
way Slurm refuses a memory request no node can hold) and a real Redis; the figure asserted is the
number of `sbatch` calls over an hour of ticks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from launcher.controller import Launcher
from launcher.settings import LauncherSettings
from slurm.errors import SlurmCommandError
from slurm.fake import FakeSlurm
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.phase import Phase, PhaseBoard
from warmpool.specs import ModelSpec, Policy, Resources

T0 = 1_800_000_000.0
TICK_S = 5.0
HOUR_S = 3600.0
REFUSAL = "sbatch: error: Memory specification can not be satisfied"


def spec(name: str, *, replicas: int) -> ModelSpec:
    return ModelSpec(
        name=name,
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=16_000, time_limit_min=60),
        policy=Policy(min_replicas=replicas, max_replicas=replicas),
    )


def refusing_slurm(count: int = 100_000) -> FakeSlurm:
    fake = FakeSlurm(now_s=T0)
    fake.fail_submissions(count, SlurmCommandError("sbatch", 1, REFUSAL))
    return fake


@pytest.fixture
async def keys(redis_client: aioredis.Redis) -> AsyncIterator[Keys]:
    yield Keys("flood:")


async def walk(launcher: Launcher, fake: FakeSlurm, *, seconds: float) -> list[int]:
    """Tick every `TICK_S` for `seconds`; the sbatch calls made in each tick."""
    per_tick: list[int] = []
    end_s = fake.now_s + seconds
    while fake.now_s < end_s:
        before = fake.calls["submit"]
        await launcher.tick(now_s=fake.now_s)
        per_tick.append(fake.calls["submit"] - before)
        fake.advance(TICK_S)
    return per_tick


async def test_64_replicas_of_a_refused_spec_make_a_bounded_number_of_sbatch_calls(
    redis_client: aioredis.Redis, keys: Keys
) -> None:
    settings = LauncherSettings(failure_backoff_s=10.0, max_backoff_s=600.0, max_failures=5)
    fake = refusing_slurm()
    await ModelStore(redis_client, keys).put(spec("tenant-big", replicas=64))
    launcher = Launcher(redis_client, fake, settings, callback_url="http://127.0.0.1:9", keys=keys)
    try:
        per_tick = await walk(launcher, fake, seconds=HOUR_S)
    finally:
        await launcher.aclose()
    # One failed sbatch per attempt (not one per missing replica), and no more attempts than
    # `max_failures` before the model is marked broken.
    assert max(per_tick) == 1, per_tick[:10]
    assert fake.calls["submit"] == settings.max_failures
    phase = await PhaseBoard(redis_client, keys).get("tenant-big")
    assert phase.phase is Phase.FAILED
    assert phase.detail is not None and "Memory specification can not be satisfied" in phase.detail


async def test_failed_submissions_across_models_are_capped_per_window(redis_client: aioredis.Redis, keys: Keys) -> None:
    cap, window_s = 6, 300.0
    settings = LauncherSettings(
        failure_backoff_s=10.0,
        max_backoff_s=600.0,
        max_failures=5,
        failed_submissions_cap=cap,
        failed_submissions_window_s=window_s,
    )
    fake = refusing_slurm()
    store = ModelStore(redis_client, keys)
    for n in range(20):
        await store.put(spec(f"bad-{n:02d}", replicas=1))
    launcher = Launcher(redis_client, fake, settings, callback_url="http://127.0.0.1:9", keys=keys)
    try:
        per_tick = await walk(launcher, fake, seconds=HOUR_S)
    finally:
        await launcher.aclose()
    ticks_per_window = int(window_s / TICK_S)
    windows = [sum(per_tick[i : i + ticks_per_window]) for i in range(len(per_tick))]
    # Twenty bad models, five tries each, would be 100 refusals; never more than `cap` in any window.
    assert max(windows) <= cap, max(windows)
    assert fake.calls["submit"] <= cap * (HOUR_S / window_s + 1)


async def test_the_cap_never_holds_back_a_model_that_has_served(redis_client: aioredis.Redis, keys: Keys) -> None:
    """Failing newcomers fill the window; a model with observed loads still gets its submission."""
    settings = LauncherSettings(failed_submissions_cap=2, failed_submissions_window_s=300.0)
    fake = refusing_slurm(count=2)
    store = ModelStore(redis_client, keys)
    for n in range(2):
        await store.put(spec(f"bad-{n}", replicas=1))
    launcher = Launcher(redis_client, fake, settings, callback_url="http://127.0.0.1:9", keys=keys)
    try:
        await launcher.tick(now_s=fake.now_s)
        assert fake.calls["submit"] == 2
        await launcher.act.history.observe("proven", "load_times_s", 30.0)
        await store.put(spec("proven", replicas=1))
        await store.put(spec("newcomer", replicas=1))
        fake.advance(TICK_S)
        await launcher.tick(now_s=fake.now_s)
    finally:
        await launcher.aclose()
    submitted = {j.name for j in fake.active()}
    assert any("proven" in name for name in submitted), submitted
    assert not any("newcomer" in name for name in submitted), submitted
