"""The incremental tick decides exactly as a full pass would, while looking at far fewer models.

Two launchers, each with its own key prefix in one real Redis and its own `FakeSlurm` on one clock,
see the same registry and the same gateway traffic (tickets queued and cancelled through
`Routing.admit`/`cancel`, which mark the model changed as a gateway does). One plans every model on
every tick (`ScaleStep.incremental = False`), the other only the models `ScaleStep._due` picks. The
timeline crosses a demand slot's end (a full pass for both) and runs past keep-alives and the
no-waiters grace, so quiet models wake by their plan's own `until_s` as well as by traffic.
"""

from __future__ import annotations

import random
from pathlib import Path

import redis.asyncio as aioredis

from launcher.controller import Launcher
from launcher.report import TickReport
from launcher.settings import LauncherSettings
from slurm.fake import FakeSlurm
from warmpool.instance_store import InstanceStore
from warmpool.keys import DEMAND_SLOT_S, Keys
from warmpool.models import ModelStore
from warmpool.routing import Routing
from warmpool.specs import ModelSpec, Policy, Resources

MODELS = 40
TICK_S = 5.0
T0 = (1_800_000_000 // DEMAND_SLOT_S + 1) * DEMAND_SLOT_S - 120.0  # two minutes before a slot ends


async def make(redis: aioredis.Redis, name: str, tmp: Path) -> tuple[Launcher, FakeSlurm, Keys]:
    keys = Keys(f"{name}:")
    fake = FakeSlurm(now_s=T0, job_name_prefix=f"{name}-")
    settings = LauncherSettings(
        job_name_prefix=f"{name}-",
        job_output_dir=tmp / name,
        callback_port=0,
        default_keepalive_s=60.0,
        pending_cancel_grace_s=5.0,
    )
    launcher = Launcher(
        redis, fake, settings, callback_url="http://127.0.0.1:9", keys=keys, model_roots=[Path("/models")]
    )
    store = ModelStore(redis, keys)
    for i in range(MODELS):
        policy = Policy(min_replicas=1 if i < 2 else 0, max_replicas=2)
        await store.put(
            ModelSpec(name=f"m{i:02d}", source=f"/models/m{i:02d}", resources=Resources(gpus=1), policy=policy)
        )
    return launcher, fake, keys


async def summary(redis: aioredis.Redis, keys: Keys, report: TickReport) -> dict[str, object]:
    """What a tick decided, by model (instance ids are random per launcher)."""
    by_id = {r.id: r.model for r in await InstanceStore(redis, keys).all()}
    return {
        "desired": report.desired,
        "submitted": sorted(by_id.get(i, "?") for i in report.submitted),
        "draining": sorted(by_id.get(i, "?") for i in report.draining),
        "cancelled": sorted(by_id.get(i, "?") for i in report.cancelled),
    }


async def test_the_incremental_tick_decides_as_a_full_pass_would(redis_client: aioredis.Redis, tmp_path: Path) -> None:
    full, full_slurm, full_keys = await make(redis_client, "full", tmp_path)
    full.scale.incremental = False
    inc, inc_slurm, inc_keys = await make(redis_client, "inc", tmp_path)
    routings = [Routing(redis_client, full_keys), Routing(redis_client, inc_keys)]
    rng = random.Random(17)
    queued: list[tuple[str, str]] = []
    for routing in routings:
        await routing.heartbeat("gw", now_s=T0, ttl_s=3600)
    try:
        for k in range(80):
            now_s = T0 + k * TICK_S
            # The same gateway traffic for both: a ticket now and then, cancelled a few ticks later.
            if k % 4 == 1:
                model, ticket = f"m{rng.randrange(2, MODELS):02d}", f"t{k}"
                for routing in routings:
                    await routing.admit(model, "gw", ticket, now_s=now_s, queue_max=100, global_max=1000)
                queued.append((model, ticket))
            if k % 4 == 3 and queued:
                model, ticket = queued.pop(0)
                for routing in routings:
                    await routing.cancel(model, "gw", ticket)
            full_slurm.now_s = inc_slurm.now_s = now_s
            want = await summary(redis_client, full_keys, await full.tick(now_s=now_s))
            got = await summary(redis_client, inc_keys, await inc.tick(now_s=now_s))
            assert got == want, f"tick {k} at +{k * TICK_S:.0f} s"
        assert full.scale.looked_at == 80 * MODELS
        assert inc.scale.looked_at < full.scale.looked_at / 2, inc.scale.looked_at
    finally:
        await full.aclose()
        await inc.aclose()
